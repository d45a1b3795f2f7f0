//! A plugin's `jetfold.toml` and a daemon's config file, as anyone may write them. Never
//! panics; a manifest that parses names a valid plugin and has usable limits, and the
//! `[limits]` of a config merge with it without panicking either.
#![no_main]

use std::path::{Path, PathBuf};

use jetfold_contract::{
    config::Config,
    manifest::{Limits, Manifest, is_identifier, is_name},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(m) = Manifest::parse(text, Path::new("jetfold.toml"), PathBuf::from("/plugins/x")) {
        assert!(is_name(&m.name), "accepted plugin name {:?}", m.name);
        assert!(m.limits.fuel > 0 && m.limits.memory_mib > 0);
        for table in &m.allow.tables {
            assert!(is_identifier(table), "accepted table {table:?}");
        }
        let _ = m.wasm_path();
        let _ = m.config_json();
    }
    if let Ok(config) = Config::parse(text, PathBuf::from("/etc/jetfold"), |_| None) {
        assert!(is_name(&config.name));
        assert!(config.batch_size > 0);
    }
    if let Ok(table) = toml::from_str::<toml::Table>(text) {
        let _ = Limits::merged(&table, &toml::Table::new());
        let _ = Limits::merged(&toml::Table::new(), &table);
    }
});
