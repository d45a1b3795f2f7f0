//! The README says what is true: its ten-line plugin is the event-counter plugin.

use crate::support::root;

#[test]
fn the_readme_plugin_is_the_event_counter_source() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let source = std::fs::read_to_string(root().join("plugins/event-counter/src/lib.rs")).unwrap();
    assert!(
        readme.contains(&source),
        "README.md must quote plugins/event-counter/src/lib.rs verbatim"
    );
    let body = source.lines().filter(|l| !l.trim().is_empty() && !l.starts_with("use ")).count();
    assert!(body <= 10, "the README plugin is {body} lines besides imports");
}
