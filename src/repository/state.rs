//! `state_dir`: what the server must remember across restarts when the repository itself may be
//! read-only. Today that is one thing: the versions a rollout rolled back, so a restart does not
//! serve them again while their files are unchanged.
//!
//! Each entry names the model, the version, the weights' sha256 (for people reading the file)
//! and the identity of the version's files (inode, size, mtime of the weights, its assets and
//! its golden file: [`VersionFiles`]), the same identity that keeps a refused file from being
//! retried while the server runs (docs/hot-reload.md). At startup the entries become failure
//! records of their model ([`StateDir::seed`]), so the reload plan skips those files exactly as
//! if the rollback had just happened; new files for the version (a new identity) load as usual,
//! and a successful load of the version drops its entry. The file is rewritten whole through a
//! temporary file and a rename, so a crash leaves the old or the new file, never half of one.
//! Without a `state_dir` the entries live in memory only and a restart forgets them: the
//! version then loads as any version does (strict checks, warm-up, golden gate).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::scan::VersionFiles;
use super::{lock, Failed, LoadFailure, ModelSlot, Repository};

/// The file in `state_dir`.
pub const STATE_FILE: &str = "rolled_back.json";

/// A state file bigger than this is refused (it holds a few entries per model).
const MAX_STATE_BYTES: u64 = 16 << 20;

/// One rolled-back version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub model: String,
    pub version: u64,
    pub sha256: String,
    pub files: VersionFiles,
    pub reason: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateFile {
    rolled_back: Vec<Entry>,
}

/// The opened `state_dir`.
#[derive(Debug)]
pub struct StateDir {
    path: PathBuf,
    entries: Mutex<Vec<Entry>>,
}

fn invalid(path: &Path, what: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("state_dir {}: {what}", path.display()),
    )
}

impl StateDir {
    /// Creates the directory if needed, checks that it is writable and reads what it holds.
    /// An unreadable or malformed state file stops the server: starting without it could serve
    /// a version that was rolled back.
    pub fn open(dir: &Path) -> std::io::Result<StateDir> {
        std::fs::create_dir_all(dir).map_err(|e| invalid(dir, format!("cannot create it: {e}")))?;
        let path = dir.join(STATE_FILE);
        let entries = match std::fs::metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(invalid(&path, e)),
            Ok(meta) if meta.len() > MAX_STATE_BYTES => {
                return Err(invalid(
                    &path,
                    format!("larger than {MAX_STATE_BYTES} bytes"),
                ))
            }
            Ok(_) => {
                let bytes = std::fs::read(&path).map_err(|e| invalid(&path, e))?;
                let file: StateFile =
                    serde_json::from_slice(&bytes).map_err(|e| invalid(&path, e))?;
                file.rolled_back
            }
        };
        let state = StateDir {
            path,
            entries: Mutex::new(entries),
        };
        // Fail at startup, not at the first rollback, when the directory is not writable.
        state.write(&lock(&state.entries))?;
        Ok(state)
    }

    /// Marks the remembered versions of `slot` as failed with their files, before its first
    /// sync: the plan does not load them while their files are unchanged.
    pub(crate) fn seed(&self, slot: &ModelSlot) {
        let entries = lock(&self.entries);
        let mut st = lock(&slot.state);
        for e in entries.iter().filter(|e| e.model == slot.name) {
            tracing::info!(model = %e.model, version = e.version, sha256 = %e.sha256,
                reason = %e.reason, "remembering a rolled-back version (state_dir)");
            st.versions.entry(e.version).or_default().failed = Some(Failed {
                files: e.files.clone(),
                failure: Arc::new(LoadFailure::RolledBackEarlier {
                    reason: e.reason.clone(),
                }),
            });
        }
    }

    /// Adds (or replaces) the entry of `entry.model` version `entry.version` and writes the file.
    fn remember(&self, entry: Entry) -> std::io::Result<()> {
        let mut entries = lock(&self.entries);
        entries.retain(|e| !(e.model == entry.model && e.version == entry.version));
        entries.push(entry);
        self.write(&entries)
    }

    /// Drops the entry of `model` version `version`, if there is one, and writes the file.
    fn forget(&self, model: &str, version: u64) -> std::io::Result<()> {
        let mut entries = lock(&self.entries);
        let before = entries.len();
        entries.retain(|e| !(e.model == model && e.version == version));
        if entries.len() == before {
            return Ok(());
        }
        self.write(&entries)
    }

    /// The entries as they are now.
    pub fn entries(&self) -> Vec<Entry> {
        lock(&self.entries).clone()
    }

    fn write(&self, entries: &[Entry]) -> std::io::Result<()> {
        let file = StateFile {
            rolled_back: entries.to_vec(),
        };
        let text = serde_json::to_vec_pretty(&file).map_err(|e| invalid(&self.path, e))?;
        let tmp = self.path.with_extension("json.tmp");
        std::fs::write(&tmp, text).map_err(|e| invalid(&tmp, e))?;
        std::fs::rename(&tmp, &self.path).map_err(|e| invalid(&self.path, e))
    }
}

impl Repository {
    /// Remembers a rolled-back version in the `state_dir`, if there is one. A failed write is
    /// logged: the rollback itself has happened and holds until the next restart.
    pub(crate) fn remember_rollback(
        &self,
        model: &str,
        version: u64,
        sha256: &str,
        files: &VersionFiles,
        reason: &str,
    ) {
        let Some(state) = &self.state else {
            return;
        };
        let entry = Entry {
            model: model.to_string(),
            version,
            sha256: sha256.to_string(),
            files: files.clone(),
            reason: reason.to_string(),
        };
        if let Err(e) = state.remember(entry) {
            tracing::error!(model, version, error = %e,
                "cannot remember the rollback in state_dir; a restart would load this version again");
        }
    }

    /// Forgets a remembered rollback of `model` version `version` (its files loaded again).
    pub(crate) fn forget_rollback(&self, model: &str, version: u64) {
        if let Some(state) = &self.state {
            if let Err(e) = state.forget(model, version) {
                tracing::error!(model, version, error = %e, "cannot update state_dir");
            }
        }
    }

    /// The `state_dir`, if configured.
    pub fn state_dir(&self) -> Option<&StateDir> {
        self.state.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state_dict::FileIdentity;

    fn entry(model: &str, version: u64) -> Entry {
        let id = FileIdentity {
            dev: 1,
            ino: 2,
            size: 3,
            mtime_ns: 1_700_000_000_123_456_789,
        };
        Entry {
            model: model.to_string(),
            version,
            sha256: "ab".repeat(32),
            files: VersionFiles {
                weights: id,
                assets: vec![None, Some(id)],
            },
            reason: "rolled back from its shadow: ...".to_string(),
        }
    }

    #[test]
    fn entries_survive_a_reopen_and_are_replaced_and_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::open(&dir.path().join("nested")).unwrap();
        state.remember(entry("a", 2)).unwrap();
        state.remember(entry("b", 3)).unwrap();
        let mut again = entry("a", 2);
        again.reason = "later".to_string();
        state.remember(again.clone()).unwrap();
        let reopened = StateDir::open(&dir.path().join("nested")).unwrap();
        assert_eq!(reopened.entries(), vec![entry("b", 3), again]);
        reopened.forget("b", 3).unwrap();
        reopened.forget("b", 9).unwrap();
        let reopened = StateDir::open(&dir.path().join("nested")).unwrap();
        assert_eq!(reopened.entries().len(), 1);
    }

    #[test]
    fn a_malformed_state_file_stops_the_server() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(STATE_FILE), b"{\"rolled_back\": [1]}").unwrap();
        let err = StateDir::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains(STATE_FILE), "{err}");
    }
}
