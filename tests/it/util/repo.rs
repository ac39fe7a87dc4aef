//! Temporary model repositories and the config files that serve them: the one place a test
//! config's text is written, and the demo models exactly as config.toml configures them.

use std::path::{Path, PathBuf};

use wick::config::Config;

use super::demo_model;

/// The `simple` demo model (PyTorch's `nn.Linear(10, 1)` tutorial model).
pub const SIMPLE: &str = r#"
[[models]]
name = "simple"
architecture = "linear"
config = { in_features = 10, out_features = 1 }
"#;

/// The `digits` demo model: an MLP trained on scikit-learn's digits, saved as a training
/// checkpoint that config.toml maps with `strip_prefix` and `ignore`.
pub const DIGITS: &str = r#"
[[models]]
name = "digits"
architecture = "mlp"
config = { in_features = 64, hidden = [128, 64], out_features = 10, activation = "relu", layer_names = ["fc1", "fc2", "fc3"] }
load = { strip_prefix = "model.", ignore = ["optimizer.*"] }
"#;

/// Both demo models, `simple` and `digits`.
pub fn demo_models() -> String {
    format!("{SIMPLE}{DIGITS}")
}

/// `simple` with a `batching` table (a TOML inline table, e.g. `{ max_batch_size = 4 }`).
pub fn simple_with(batching: &str) -> String {
    format!("{SIMPLE}batching = {batching}\n")
}

/// A config file's text: a `[server]` section that listens on port 0 and polls `repository`
/// every 100 ms, with `extra_server` lines, then `models` (`[[models]]` tables).
pub fn config_text(repository: &Path, extra_server: &str, models: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nrepository = {:?}\npoll_interval_ms = 100\n{extra_server}\n{models}",
        repository.display().to_string()
    )
}

/// A temporary model repository.
pub struct Repo {
    pub dir: tempfile::TempDir,
}

impl Repo {
    pub fn new() -> Repo {
        Repo {
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// A repository holding the demo models' version 1.
    pub fn demo() -> Repo {
        let repo = Repo::new();
        repo.install("simple", 1, &demo_model("simple", 1));
        repo.install("digits", 1, &demo_model("digits", 1));
        repo
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn version_dir(&self, model: &str, version: u64) -> PathBuf {
        self.path().join(model).join(version.to_string())
    }

    /// Publishes `file` as `model/version` the way the README says: write elsewhere, rename.
    pub fn install(&self, model: &str, version: u64, file: &Path) {
        self.install_files(model, version, &[("model.safetensors", file)]);
    }

    /// Publishes a version folder holding several files (`(path in the folder, source)`), e.g.
    /// `model.safetensors`, `tokenizer.json` and `1_Pooling/config.json`, with the same
    /// write-elsewhere-then-rename.
    pub fn install_files(&self, model: &str, version: u64, files: &[(&str, &Path)]) {
        let staging = self.path().join(format!(".staging-{model}-{version}"));
        std::fs::create_dir_all(&staging).unwrap();
        for (name, source) in files {
            let target = staging.join(name);
            std::fs::create_dir_all(target.parent().unwrap()).unwrap();
            std::fs::copy(source, target).unwrap_or_else(|e| panic!("{}: {e}", source.display()));
        }
        std::fs::create_dir_all(self.path().join(model)).unwrap();
        std::fs::rename(&staging, self.version_dir(model, version)).unwrap();
    }

    /// The config serving this repository (see [`config_text`]), parsed.
    pub fn config(&self, extra_server: &str, models: &str) -> Config {
        let text = config_text(self.path(), extra_server, models);
        Config::parse(&text, Path::new("test.toml"), self.path(), &|_| None).expect("test config")
    }

    /// The same config written to `.wick.toml`, a file beside the model folders, by renaming it
    /// into place as editors and ConfigMaps do (a watcher never sees it half-written). Returns
    /// its path.
    pub fn write_config(&self, extra_server: &str, models: &str) -> PathBuf {
        let path = self.path().join(".wick.toml");
        let tmp = self.path().join(".wick.toml.tmp");
        std::fs::write(&tmp, config_text(self.path(), extra_server, models)).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        path
    }
}
