//! `jetfold test`: golden files, --update, diffs, exit codes, fixture errors.

use std::path::Path;

use crate::support::{jetfold, plugin, plugin_copy};

fn golden_passes(name: &str) {
    let dir = plugin(name);
    let expected = dir.join("fixtures/expected.json");
    let run = jetfold([Path::new("test"), &dir, Path::new("--expect"), &expected]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(run.stderr.contains("ok: matches"), "{}", run.all());
}

/// A component met for the first time is compiled, which takes a while for Python: `jetfold
/// test` says so rather than staying silent, and says nothing once it is cached.
#[test]
fn the_first_run_of_a_new_build_says_it_compiles() {
    let cache = tempfile::tempdir().unwrap();
    let dir = plugin("event-counter");
    let args = [Path::new("--cache-dir"), cache.path(), Path::new("test"), &dir];
    let first = jetfold(args);
    assert_eq!(first.code, 0, "{}", first.all());
    assert!(
        first.stderr.contains("compiling ") && first.stderr.contains("event_counter.wasm"),
        "{}",
        first.all()
    );
    assert!(first.stderr.contains("once per build, then cached"), "{}", first.all());
    let again = jetfold(args);
    assert_eq!(again.code, 0, "{}", again.all());
    assert!(!again.stderr.contains("compiling "), "{}", again.all());
}

/// An event without a payload reaches a Rust plugin that takes any JSON as `null`, as it
/// reaches Python and JavaScript ones: it folds, it is not an invalid payload.
#[test]
fn an_event_without_a_payload_folds_in_a_plugin_that_takes_any_json() {
    let tmp = plugin_copy("event-counter");
    let events = tmp.path().join("bare.jsonl");
    std::fs::write(
        &events,
        "{\"subject\":\"demo.resource.r-1.Created\",\"time\":\"2026-01-05T09:00:00Z\"}\n",
    )
    .unwrap();
    let run = jetfold([Path::new("test"), tmp.path(), Path::new("--events"), &events]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(run.stdout.contains("line 1 · #1 Created [r-1] → 1 effect"), "{}", run.all());
}

#[test]
fn compute_resource_matches_its_golden_file() {
    golden_passes("compute-resource");
    // By default the run is compared with fixtures/expected.json, and matches.
    let run = jetfold([Path::new("test"), &plugin("compute-resource")]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(run.stderr.contains("ok: matches"), "{}", run.all());
    // Events named explicitly are not compared with it.
    let events = plugin("compute-resource").join("fixtures/events.jsonl");
    let run =
        jetfold([Path::new("test"), &plugin("compute-resource"), Path::new("--events"), &events]);
    // Shown to the user: effects per event, rejections with their codes, queries, final state.
    assert!(run.stdout.contains("upsert compute_resources[r-1]"), "{}", run.all());
    assert!(
        run.stdout.contains(
            "invalid-transition: resource r-2 cannot go from Provisioning to Maintenance"
        )
    );
    assert!(run.stdout.contains("already-registered"));
    assert!(run.stdout.contains(r#"= {"Decommissioned":1,"Provisioning":1}"#), "{}", run.all());
    assert!(run.stdout.contains("final state (2 keys)"));
    // Without a golden file, rejected events make the run fail.
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(run.stderr.contains("5 steps failed"), "{}", run.all());
}

#[test]
fn person_archive_matches_its_golden_file() {
    golden_passes("person-archive");
    let run = jetfold([Path::new("test"), &plugin("person-archive")]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(
        run.stdout.contains("command ArchivePerson → people.commands.linus.ArchivePerson"),
        "{}",
        run.all()
    );
    assert!(run.stdout.contains("command ArchivePerson → people.commands.ada.ArchivePerson"));
    assert!(!run.stdout.contains("people.commands.grace"), "grace stayed active: {}", run.all());
}

#[test]
fn resource_upcaster_matches_its_golden_file() {
    golden_passes("resource-upcaster");
    let dir = plugin("resource-upcaster");
    let run = jetfold([Path::new("test"), &dir, Path::new("--format"), Path::new("json")]);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let first = &report["steps"][0]["upcast"];
    assert_eq!(first["schema_version"], 2);
    assert_eq!(first["payload"]["region"], "eu-west-1");
    assert_eq!(report["steps"][3]["error"]["code"], "unsupported-version");
}

#[test]
fn event_counter_matches_its_golden_file() {
    golden_passes("event-counter");
}

#[test]
fn a_changed_outcome_fails_with_a_readable_diff_and_update_rewrites_it() {
    let tmp = plugin_copy("event-counter");
    let expected = tmp.path().join("fixtures/expected.json");
    let run = jetfold([
        Path::new("test"),
        tmp.path(),
        Path::new("--expect"),
        &expected,
        Path::new("--update"),
    ]);
    assert_eq!(run.code, 0, "{}", run.all());
    let golden = std::fs::read_to_string(&expected).unwrap();
    assert!(golden.contains("\"r-1\": 2"), "{golden}");

    std::fs::write(&expected, golden.replace("\"r-1\": 2", "\"r-1\": 3")).unwrap();
    let run = jetfold([Path::new("test"), tmp.path(), Path::new("--expect"), &expected]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.stderr.contains(
            "final state [r-1]:\n    - expected 3\n    + actual   2\n\
             0 of 3 steps differ; the final state of 1 key differs\n"
        ),
        "{}",
        run.all()
    );

    // A step that differs is named by its fixture line, event and key, its part shown.
    let row = "\"row\": {\n            \"events\": 1\n          }";
    assert_eq!(golden.matches(row).count(), 2, "{golden}");
    std::fs::write(&expected, golden.replacen(row, &row.replace('1', "5"), 2)).unwrap();
    let run = jetfold([Path::new("test"), tmp.path(), Path::new("--expect"), &expected]);
    assert_eq!(run.code, 1, "{}", run.all());
    let wanted = "step 2 of 3, line 2 · #2 ResourceRegistered [r-2]:\n  effects[0]:\n    \
        - expected {\"effect\":\"upsert\",\"key\":\"r-2\",\"row\":{\"events\":5},\"table\":\"event_counts\"}\n    \
        + actual   {\"effect\":\"upsert\",\"key\":\"r-2\",\"row\":{\"events\":1},\"table\":\"event_counts\"}\n";
    assert!(run.stderr.contains(wanted), "{}", run.all());
    assert!(run.stderr.contains("2 of 3 steps differ\n"), "{}", run.all());

    // Numbers are compared by value: 2.0 is 2 (a port to another language shares the file).
    std::fs::write(&expected, golden.replace("\"r-1\": 2", "\"r-1\": 2.0")).unwrap();
    let run = jetfold([Path::new("test"), tmp.path(), Path::new("--expect"), &expected]);
    assert_eq!(run.code, 0, "{}", run.all());

    let run = jetfold([
        Path::new("test"),
        tmp.path(),
        Path::new("--expect"),
        &expected,
        Path::new("--update"),
    ]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert_eq!(std::fs::read_to_string(&expected).unwrap(), golden);
}

#[test]
fn json_output_is_the_golden_format() {
    let dir = plugin("event-counter");
    let run = jetfold([Path::new("test"), &dir, Path::new("--format"), Path::new("json")]);
    assert_eq!(run.code, 0, "{}", run.all());
    let actual: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("fixtures/expected.json")).unwrap())
            .unwrap();
    assert_eq!(actual, golden);
}

#[test]
fn command_line_queries_see_the_final_state() {
    let dir = plugin("compute-resource");
    let run = jetfold([
        Path::new("test"),
        &dir,
        Path::new("--query"),
        Path::new(r#"{"resource":{"id":"r-2"}}"#),
        Path::new("--key"),
        Path::new("r-2"),
        Path::new("--format"),
        Path::new("json"),
    ]);
    let report: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let last = report["steps"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["step"], "query");
    assert_eq!(last["key"], "r-2");
    assert_eq!(last["response"]["name"], "db-1");
    // A quick look is not compared with the golden file, nor written into it unless named.
    assert_eq!(run.code, 0, "{}", run.all());
    let golden = std::fs::read_to_string(dir.join("fixtures/expected.json")).unwrap();
    let query = Path::new(r#"{"count_by_status":{}}"#);
    let text = jetfold([Path::new("test"), &dir, Path::new("--query"), query]);
    assert_eq!(text.code, 0, "{}", text.all());
    assert!(text.stdout.contains("--query {\"count_by_status\":{}}"), "{}", text.all());
    assert!(!text.stdout.contains("line 0"), "{}", text.all());
    let update =
        jetfold([Path::new("test"), &dir, Path::new("--query"), query, Path::new("--update")]);
    assert_eq!(update.code, 2, "{}", update.all());
    assert!(update.stderr.contains("give --expect FILE"), "{}", update.all());
    assert_eq!(std::fs::read_to_string(dir.join("fixtures/expected.json")).unwrap(), golden);
    // --key alone shows that key's final state only.
    let one = jetfold([
        Path::new("test"),
        &dir,
        Path::new("--key"),
        Path::new("r-2"),
        Path::new("--format"),
        Path::new("json"),
    ]);
    assert_eq!(one.code, 0, "{}", one.all());
    let report: serde_json::Value = serde_json::from_str(&one.stdout).unwrap();
    let keys: Vec<&String> = report["state"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["r-2"], "{}", one.all());

    let run = jetfold([Path::new("test"), &dir, Path::new("--query"), Path::new("{not json")]);
    assert_eq!(run.code, 2, "{}", run.all());
    assert!(run.stderr.contains("--query #1 is not JSON"), "{}", run.all());

    // A key with no state is named, with or without a query; a failed query fails the look.
    let nope = [Path::new("--key"), Path::new("nope")];
    for args in [&[][..], &[Path::new("--query"), query][..]] {
        let run =
            jetfold([Path::new("test"), &dir].into_iter().chain(args.iter().copied()).chain(nope));
        assert!(
            run.stderr.contains("no key `nope` has a state after these events (keys: r-1, r-2"),
            "{}",
            run.all()
        );
    }
    let failed =
        jetfold([Path::new("test"), &dir, Path::new("--query"), Path::new(r#"{"no_such":{}}"#)]);
    assert_eq!(failed.code, 1, "{}", failed.all());
    assert!(failed.stderr.contains("1 query failed\n"), "{}", failed.all());
    assert!(!failed.stderr.contains("golden"), "{}", failed.all());
}

/// Two things an author does to a plugin with a golden file: add a fixture line (one step
/// not expected, the later ones the same at other lines), and leave a table out of
/// `[allow]` (one failure shown once, the rest named on a line each, and a hint to fix the
/// manifest rather than record the failures).
#[test]
fn a_golden_diff_stays_short_for_an_added_line_and_a_missing_table() {
    let tmp = plugin_copy("event-counter");
    let golden = plugin("event-counter").join("fixtures/expected.json");
    std::fs::copy(golden, tmp.path().join("fixtures/expected.json")).unwrap();
    let fixture = tmp.path().join("fixtures/events.jsonl");
    let lines = std::fs::read_to_string(&fixture).unwrap();
    let first = lines.lines().next().unwrap().to_string();
    let added = first.replace("r-1", "r-9");
    assert_ne!(added, first, "{first}");
    std::fs::write(&fixture, format!("{first}\n{added}\n{}", &lines[first.len() + 1..])).unwrap();
    let run = jetfold([Path::new("test"), tmp.path()]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(run.stderr.contains("step 2 of 4, line 2 · #2 "), "{}", run.all());
    assert!(run.stderr.contains("[r-9]: not expected\n"), "{}", run.all());
    assert!(
        run.stderr
            .contains("1 of 4 steps differs; 2 steps are the same but from other fixture lines"),
        "{}",
        run.all()
    );
    std::fs::write(&fixture, lines).unwrap();

    let manifest = tmp.path().join("plugin.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    let tables = "tables = [\"event_counts\"]";
    assert!(text.contains(tables), "{text}");
    std::fs::write(&manifest, text.replace(tables, "tables = [\"counts\"]")).unwrap();
    let run = jetfold([Path::new("test"), tmp.path()]);
    assert_eq!(run.code, 1, "{}", run.all());
    let out = run.all();
    assert!(
        out.contains(
            "table `event_counts` is not declared in the manifest's allow.tables (declared: counts)"
        ),
        "{out}"
    );
    assert!(run.stderr.contains(": fails as step 1 does\n"), "{out}");
    assert!(
        run.stderr.contains(
            "3 more steps fail than the golden file expects: fix the plugin or its manifest"
        ),
        "{out}"
    );
    assert!(!run.stderr.contains("if the new behaviour is right"), "{out}");
    assert!(
        run.stderr.lines().count() <= 20,
        "{} lines:\n{}",
        run.stderr.lines().count(),
        run.stderr
    );
}

#[test]
fn a_line_that_is_not_an_event_names_file_and_line() {
    let tmp = plugin_copy("event-counter");
    let events = tmp.path().join("bad.jsonl");
    let cases = [
        ("{\"subject\":\"a.b.c.D\",\"time\":\"2026-01-01T00:00:00Z\"}\n{oops\n", ":2: not JSON"),
        ("{\"subject\":\"a.b.c.D\"}\n", ":1: not an event: missing field `time`"),
        (
            "\n\n{\"subject\":\"a.b.c.D\",\"time\":\"2026-01-01T00:00:00Z\",\"color\":1}\n",
            ":3: not an event: unknown field `color`",
        ),
        (
            "{\"subject\":\"ab\",\"time\":\"2026-01-01T00:00:00Z\"}\n",
            ":1: not an event: no `aggregate_id`",
        ),
        ("[1,2]\n", ":1: not an event"),
        (
            "{\"subject\":\"a.b.c.D\",\"time\":\"yesterday\"}\n",
            ":1: not an event: `time` \"yesterday\" is not an RFC 3339 time such as \"2026-03-01T12:00:00Z\"",
        ),
        (
            "{\"subject\":\"a.b.c.D\",\"time\":1767603600}\n",
            ":1: not an event: `time` 1767603600 is not an RFC 3339 time such as \"2026-03-01T12:00:00Z\" (a string)",
        ),
    ];
    for (text, wanted) in cases {
        std::fs::write(&events, text).unwrap();
        let run = jetfold([Path::new("test"), tmp.path(), Path::new("--events"), &events]);
        assert_eq!(run.code, 2, "{text}: {}", run.all());
        assert!(run.stderr.contains(&format!("bad.jsonl{wanted}")), "{text}: {}", run.all());
    }
    let run = jetfold([
        Path::new("test"),
        tmp.path(),
        Path::new("--events"),
        &tmp.path().join("missing.jsonl"),
    ]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.contains("missing.jsonl") && run.stderr.contains("cannot read"),
        "{}",
        run.all()
    );
}

#[test]
fn a_payload_that_is_not_json_reaches_the_plugin_which_decides() {
    let tmp = plugin_copy("compute-resource");
    let events = tmp.path().join("raw.jsonl");
    std::fs::write(
        &events,
        "{\"subject\":\"infra.resource.r-1.ResourceRegistered\",\"time\":\"2026-01-01T00:00:00Z\",\
         \"payload_base64\":\"AAEC\",\"content_type\":\"application/octet-stream\"}\n",
    )
    .unwrap();
    let run = jetfold([Path::new("test"), tmp.path(), Path::new("--events"), &events]);
    assert_eq!(run.code, 1, "{}", run.all());
    assert!(
        run.stdout.contains("invalid-payload: cannot decode a `ResourceRegistered` payload"),
        "{}",
        run.all()
    );
}

#[test]
fn upcasters_chain_from_schema_v0_to_v2_before_the_projection() {
    golden_passes("legacy-resource-upcaster");
    let (legacy, v1) = (plugin("legacy-resource-upcaster"), plugin("resource-upcaster"));
    let compute = plugin("compute-resource");
    let chain = |upcasters: &[&Path]| {
        let mut args = vec![
            Path::new("test").to_path_buf(),
            compute.clone(),
            "--events".into(),
            compute.join("fixtures/legacy-events.jsonl"),
            "--expect".into(),
            compute.join("fixtures/legacy-expected.json"),
        ];
        for u in upcasters {
            args.push("--upcaster".into());
            args.push(u.to_path_buf());
        }
        jetfold(args)
    };
    let run = chain(&[&legacy, &v1]);
    assert_eq!(run.code, 0, "{}", run.all());
    assert!(run.stderr.contains("ok: matches"), "{}", run.all());
    // Without the first link, the v0 events never reach the projection's schema.
    let short = chain(&[&v1]);
    assert_eq!(short.code, 1, "{}", short.all());
    // Only upcasters can be links.
    let wrong = chain(&[&compute]);
    assert_eq!(wrong.code, 2, "{}", wrong.all());
    assert!(wrong.stderr.contains("is a projection, not an upcaster"), "{}", wrong.all());
}

#[test]
fn health_maintenance_matches_its_golden_file() {
    golden_passes("health-maintenance");
}

/// `jetfold test … | head -2`: the reader goes away after two lines; jetfold stops quietly
/// (exit 0, nothing on stderr), not with a panic.
#[test]
fn a_reader_that_closes_the_pipe_ends_the_run_quietly() {
    let dir = plugin("event-counter");
    let tmp = tempfile::tempdir().unwrap();
    let events = tmp.path().join("many.jsonl");
    // Far more output than a pipe holds, so jetfold is still writing when `head` exits.
    let lines: String = (0..5_000)
        .map(|i| format!("{{\"subject\":\"infra.resource.r-{i}.Pinged\",\"time\":\"2026-01-01T00:00:00Z\",\"payload\":{{}}}}\n"))
        .collect();
    std::fs::write(&events, lines).unwrap();
    let command = format!(
        "{} test {} --events {} | head -2 > /dev/null",
        env!("CARGO_BIN_EXE_jetfold"),
        dir.display(),
        events.display()
    );
    let run = std::process::Command::new("bash")
        .args(["-o", "pipefail", "-c", &command])
        .env("JETFOLD_CACHE_DIR", crate::support::cache_dir())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(0), "{stderr}");
    assert_eq!(stderr, "", "nothing said about the closed pipe");
}

/// `plugin keygen` writes the private key for its owner only, and never over a file.
#[test]
fn keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites() {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("release.key");
    let key_arg = key.display().to_string();
    let made = jetfold(["plugin", "keygen", &key_arg]);
    assert_eq!(made.code, 0, "{}", made.all());
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "mode {mode:o}");
    let before = std::fs::read(&key).unwrap();
    let again = jetfold(["plugin", "keygen", &key_arg]);
    assert_eq!(again.code, 2, "{}", again.all());
    assert!(
        again.stderr.contains(&format!("{key_arg} exists: not overwritten")),
        "{}",
        again.all()
    );
    assert_eq!(std::fs::read(&key).unwrap(), before, "the key is untouched");
}
