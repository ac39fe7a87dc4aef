//! Version discovery: which `<repository>/<model>/<version>/model.safetensors` exist right now,
//! and the identity of every file a version is made of (its weights and the assets its
//! architecture reads, such as `tokenizer.json`): a change to any of them is a new version of
//! the files, reloaded like a new checkpoint.
//!
//! Versions are positive integers without leading zeros; any other entry is reported once so the
//! caller can warn about it. Paths follow symlinks (`stat`, not `lstat`), so a Kubernetes-style
//! `..data` symlink swap, or a model directory that is itself a symlink, resolves to what a
//! reader would see.

use std::path::{Path, PathBuf};

use crate::model::naming::parse_version;
use crate::state_dict::FileIdentity;

/// The weights file of every version.
pub const WEIGHTS_FILE: &str = "model.safetensors";

/// The identity of a version's files: its weights and, in the architecture's order, each
/// asset it reads (`None` where the asset is absent).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct VersionFiles {
    pub weights: FileIdentity,
    pub assets: Vec<Option<FileIdentity>>,
}

/// One version directory with its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub version: u64,
    pub dir: PathBuf,
    /// `None` while the directory exists but has no readable weights file yet.
    pub files: Option<VersionFiles>,
}

/// What a model's directory holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scan {
    /// The model directory could not be read (missing, unreadable, not a directory).
    pub unreadable: bool,
    pub versions: Vec<Found>,
    /// Entries that are not version directories (reported once by the caller).
    pub ignored: Vec<String>,
}

impl Scan {
    /// Versions whose weights file exists.
    pub fn complete(&self) -> impl Iterator<Item = &Found> {
        self.versions.iter().filter(|f| f.files.is_some())
    }
}

/// Lists the versions of model `name` under `root`, with the identity of the weights and of
/// each of `assets` (paths relative to the version directory).
pub fn scan_model(root: &Path, name: &str, assets: &[&str]) -> Scan {
    let dir = root.join(name);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(_) => {
            return Scan {
                unreadable: true,
                ..Scan::default()
            };
        }
    };
    let mut scan = Scan::default();
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(text) = file_name.to_str() else {
            scan.ignored.push(file_name.to_string_lossy().into_owned());
            continue;
        };
        // Dot entries are publishers' temporary files (`.tmp-3`) or Kubernetes' `..data`
        // machinery: never versions, never worth a warning.
        if text.starts_with('.') {
            continue;
        }
        let path = entry.path();
        let Some(version) = parse_version(text) else {
            scan.ignored.push(text.to_string());
            continue;
        };
        if !std::fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
            scan.ignored.push(text.to_string());
            continue;
        }
        let files = FileIdentity::stat(&path.join(WEIGHTS_FILE))
            .ok()
            .map(|weights| VersionFiles {
                weights,
                assets: assets
                    .iter()
                    .map(|asset| FileIdentity::stat(&path.join(asset)).ok())
                    .collect(),
            });
        scan.versions.push(Found {
            version,
            dir: path,
            files,
        });
    }
    scan.versions.sort_by_key(|f| f.version);
    scan.ignored.sort();
    scan
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_versions_and_ignores_the_rest() {
        let root = tempfile::tempdir().unwrap();
        let m = root.path().join("m");
        for dir in ["1", "2", "10", "01", "0", "v3", ".tmp-4", "..data"] {
            std::fs::create_dir_all(m.join(dir)).unwrap();
        }
        for v in ["1", "10", "01"] {
            std::fs::write(m.join(v).join(WEIGHTS_FILE), b"x").unwrap();
        }
        std::fs::write(m.join("5"), b"a file, not a directory").unwrap();
        let scan = scan_model(root.path(), "m", &[]);
        assert!(!scan.unreadable);
        let versions: Vec<(u64, bool)> = scan
            .versions
            .iter()
            .map(|f| (f.version, f.files.is_some()))
            .collect();
        assert_eq!(versions, vec![(1, true), (2, false), (10, true)]);
        assert_eq!(scan.ignored, vec!["0", "01", "5", "v3"]);
        assert_eq!(scan.complete().count(), 2);
        assert!(scan_model(root.path(), "absent", &[]).unreadable);
    }

    #[test]
    fn an_asset_is_part_of_the_version_s_identity() {
        let root = tempfile::tempdir().unwrap();
        let v1 = root.path().join("m/1");
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::write(v1.join(WEIGHTS_FILE), b"x").unwrap();
        let assets = ["tokenizer.json", "1_Pooling/config.json"];
        let before = scan_model(root.path(), "m", &assets).versions[0]
            .files
            .clone();
        assert_eq!(
            before.as_ref().map(|f| f.assets.clone()),
            Some(vec![None, None])
        );
        std::fs::write(v1.join("tokenizer.json"), b"{}").unwrap();
        let after = scan_model(root.path(), "m", &assets).versions[0]
            .files
            .clone();
        assert_ne!(before, after);
        assert!(after.is_some_and(|f| f.assets[0].is_some() && f.assets[1].is_none()));
    }

    #[test]
    fn follows_symlinks() {
        let root = tempfile::tempdir().unwrap();
        let real = root.path().join("store/v1");
        std::fs::create_dir_all(&real).unwrap();
        std::fs::write(real.join(WEIGHTS_FILE), b"x").unwrap();
        std::fs::create_dir_all(root.path().join("m")).unwrap();
        std::os::unix::fs::symlink(&real, root.path().join("m/1")).unwrap();
        let scan = scan_model(root.path(), "m", &[]);
        assert_eq!(scan.complete().count(), 1);
    }
}
