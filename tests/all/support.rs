//! Shared helpers: building plugins once per run, running the `jetfold` binary.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{Mutex, OnceLock},
};

use jetfold_host::builder::{BuildOptions, build_plugin};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Cargo's target directory of this test run (the test binary lives in `<target>/debug/deps`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors().nth(3).unwrap().to_path_buf()
}

/// The precompiled-component cache shared by this run's tests.
pub fn cache_dir() -> PathBuf {
    target_dir().join("jetfold-test-cache")
}

/// Builds `plugins/<name>` once per test binary and returns its directory.
pub fn plugin(name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    let mut built = BUILT.get_or_init(Default::default).lock().unwrap_or_else(|e| e.into_inner());
    if let Some(dir) = built.get(name) {
        return dir.clone();
    }
    let dir = root().join("plugins").join(name);
    // A target directory of its own: the outer `cargo test` holds the lock on the main one.
    let options =
        BuildOptions { target_dir: Some(target_dir().join("jetfold-guests")), debug: false };
    let out =
        build_plugin(&dir, &options).unwrap_or_else(|e| panic!("building plugin {name}: {e:#}"));
    assert!(out.wasm.exists());
    built.insert(name.to_string(), dir.clone());
    dir
}

/// Copies a built plugin's manifest and component into a fresh temporary directory.
pub fn plugin_copy(name: &str) -> tempfile::TempDir {
    let src = plugin(name);
    let tmp = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let keep = path.extension().is_some_and(|e| e == "wasm")
            || path.file_name().unwrap() == "plugin.toml";
        if keep {
            std::fs::copy(&path, tmp.path().join(path.file_name().unwrap())).unwrap();
        }
    }
    std::fs::create_dir(tmp.path().join("fixtures")).unwrap();
    if let Ok(events) = std::fs::read(src.join("fixtures/events.jsonl")) {
        std::fs::write(tmp.path().join("fixtures/events.jsonl"), events).unwrap();
    }
    tmp
}

/// The result of running `jetfold`.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Both streams, for assertion messages.
    pub fn all(&self) -> String {
        format!("exit {}\n--- stdout\n{}\n--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

/// Runs the `jetfold` binary with `args`.
pub fn jetfold<I, S>(args: I) -> Run
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let Output { status, stdout, stderr } = Command::new(env!("CARGO_BIN_EXE_jetfold"))
        .args(args)
        .env("JETFOLD_CACHE_DIR", cache_dir())
        .output()
        .expect("run jetfold");
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}
