//! `jetfold new`: for every language and kind, the scaffold builds with its own build script
//! and passes `jetfold test` against its golden file, as made; and the golden file is the
//! same whichever language folds the events.

use std::{path::Path, process::Command};

use crate::support::{jetfold, target_dir};

/// Runs the scaffold's `build.sh` as its author would, with this build's `jetfold` on PATH.
fn build_script(dir: &Path) -> (bool, String) {
    let bin = Path::new(env!("CARGO_BIN_EXE_jetfold")).parent().unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let out = Command::new(dir.join("build.sh"))
        .env("PATH", path)
        .env("CARGO_TARGET_DIR", target_dir().join("jetfold-guests"))
        .env("JETFOLD_CACHE_DIR", crate::support::cache_dir())
        .output()
        .unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Scaffolds, builds and tests one plugin; its golden file's text.
fn scaffold_build_test(root: &Path, lang: &str, kind: &str) -> String {
    let name = format!("new-{lang}-{kind}");
    let dir = root.join(&name);
    let made = jetfold(
        ["new", &name, "--lang", lang, "--kind", kind, "--dir"]
            .map(String::from)
            .into_iter()
            .chain([dir.display().to_string()]),
    );
    assert_eq!(made.code, 0, "{}", made.all());
    let (built, log) = build_script(&dir);
    assert!(built, "{lang} {kind} does not build:\n{log}");
    let tested = jetfold(["test".to_string(), dir.display().to_string()]);
    assert_eq!(tested.code, 0, "{lang} {kind}: {}", tested.all());
    assert!(tested.stderr.contains("ok: matches"), "{}", tested.all());
    // A change in behaviour is caught: the golden file no longer matches.
    let golden = dir.join("fixtures/expected.json");
    let text = std::fs::read_to_string(&golden).unwrap();
    std::fs::write(&golden, text.replace("\"r-2\"", "\"r-9\"")).unwrap();
    let differs = jetfold(["test".to_string(), dir.display().to_string()]);
    assert_eq!(differs.code, 1, "{}", differs.all());
    std::fs::write(&golden, &text).unwrap();
    text.replace(&name, "NAME").replace(&name.replace('-', "_"), "TABLE")
}

#[test]
fn rust_scaffolds_build_and_pass_their_golden_files() {
    let root = tempfile::tempdir().unwrap();
    scaffold_build_test(root.path(), "rust", "projection");
    scaffold_build_test(root.path(), "rust", "policy");
}

#[test]
fn a_scaffold_refuses_a_bad_name_and_a_non_empty_directory() {
    let root = tempfile::tempdir().unwrap();
    let bad = jetfold(["new", "Bad_Name", "--lang", "rust", "--kind", "projection"]);
    assert_eq!(bad.code, 2, "{}", bad.all());
    assert!(bad.stderr.contains("not a plugin name"), "{}", bad.all());
    std::fs::write(root.path().join("keep.txt"), "mine").unwrap();
    let dir = root.path().display().to_string();
    let taken = jetfold(["new", "p", "--lang", "rust", "--kind", "policy", "--dir", &dir]);
    assert_eq!(taken.code, 2, "{}", taken.all());
    assert!(taken.stderr.contains("not empty"), "{}", taken.all());
    assert_eq!(std::fs::read_to_string(root.path().join("keep.txt")).unwrap(), "mine");
}

#[test]
fn python_scaffolds_build_and_pass_their_golden_files() {
    let root = tempfile::tempdir().unwrap();
    let projection = scaffold_build_test(root.path(), "python", "projection");
    let policy = scaffold_build_test(root.path(), "python", "policy");
    // The same events give the same report as the Rust scaffolds' (shared golden files).
    let rust = tempfile::tempdir().unwrap();
    let made = jetfold(
        ["new", "new-rust-projection", "--lang", "rust", "--kind", "projection", "--dir"]
            .map(String::from)
            .into_iter()
            .chain([rust.path().join("p").display().to_string()]),
    );
    assert_eq!(made.code, 0, "{}", made.all());
    let golden = std::fs::read_to_string(rust.path().join("p/fixtures/expected.json")).unwrap();
    assert_eq!(
        projection,
        golden.replace("new-rust-projection", "NAME").replace("new_rust_projection", "TABLE")
    );
    assert!(policy.contains("commands.r-1.Quarantine"), "{policy}");
}

#[test]
fn javascript_scaffolds_build_and_pass_their_golden_files() {
    let root = tempfile::tempdir().unwrap();
    let projection = scaffold_build_test(root.path(), "js", "projection");
    let policy = scaffold_build_test(root.path(), "js", "policy");
    assert!(projection.contains("\"TABLE\""), "{projection}");
    assert!(policy.contains("commands.r-1.Quarantine"), "{policy}");
}
