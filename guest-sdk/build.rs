//! Embeds the WIT contract into the export macros.
//!
//! `wit_bindgen::generate!` resolves `path` against the crate that expands it, which is the
//! plugin, not this SDK. So the macros carry the contract inline: this script writes them with
//! the text of `wit/plugin.wit` as a string literal.

use std::{env, fs, path::PathBuf};

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    // Inside the workspace the contract lives at the root; a packaged SDK carries its own copy.
    let candidates = [manifest_dir.join("../wit/plugin.wit"), manifest_dir.join("wit/plugin.wit")];
    let wit_path =
        candidates.iter().find(|p| p.exists()).expect("jetfold-guest: wit/plugin.wit not found");
    println!("cargo:rerun-if-changed={}", wit_path.display());
    let wit = fs::read_to_string(wit_path).unwrap();
    assert!(!wit.contains("\"###"), "plugin.wit must not contain the raw-string terminator");

    let template = fs::read_to_string(manifest_dir.join("src/export.rs.in")).unwrap();
    println!("cargo:rerun-if-changed=src/export.rs.in");
    let code = template.replace("@WIT@", &format!("r###\"{wit}\"###"));
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("export.rs");
    fs::write(out, code).unwrap();
}
