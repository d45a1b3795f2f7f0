//! The layout of a plugin's directory beyond its manifest: the versions the registry stages
//! beside it (a shadow version, the version a promoted one replaces, a promotion sequence).
//! Below the daemon and the registry, which both read it.

use anyhow::Context as _;

/// The directory beside a manifest that holds a shadow version.
pub const SHADOW_DIR: &str = "shadow";

/// The directory beside a manifest that holds the version a promoted one replaces.
pub const PREVIOUS_DIR: &str = "previous";

/// The file beside a manifest that holds a version's promotion sequence.
pub const AT_SEQ_FILE: &str = "promote-at-seq";

/// The promotion sequence in a plugin directory's [`AT_SEQ_FILE`], if it has one.
pub fn read_at_seq(dir: &std::path::Path) -> anyhow::Result<Option<u64>> {
    let path = dir.join(AT_SEQ_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(
            text.trim()
                .parse::<u64>()
                .with_context(|| format!("{}: not a stream sequence: {text:?}", path.display()))?,
        )),
        Err(_) => Ok(None),
    }
}
