//! Comparing a `jetfold test` run with its golden file: by value (a number is the same number
//! however it is written, `18` or `18.0`, so a port of a plugin to another language can share
//! its golden file), and a diff by step that names the fixture line, event type and key of
//! each step that differs, the expected and actual value of each part that does, then a count.

use std::fmt::Write as _;

use serde_json::Value;

use crate::fold::{event_title, query_title};

/// Whether two JSON documents are the same, numbers compared by value.
pub fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => match (integer(x), integer(y)) {
            (Some(x), Some(y)) => x == y,
            _ => x.as_f64() == y.as_f64(),
        },
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

fn integer(n: &serde_json::Number) -> Option<i128> {
    n.as_i64().map(i128::from).or_else(|| n.as_u64().map(i128::from))
}

/// How many steps of a report (as its golden file holds it) failed.
pub fn failing_steps(report: &Value) -> usize {
    steps(report).iter().filter(|s| s.get("error").is_some()).count()
}

/// The most final states a diff shows; the rest are counted.
const STATES_SHOWN: usize = 3;

/// How `actual` differs from `expected` (two reports as golden files hold them), step by step:
/// empty if they are [`same`]. Steps are matched by what they are, not by where they are, so a
/// fixture line added or removed shows as one step more or missing, not as every later step
/// differing; a step that fails as an earlier one did is named on one line.
pub fn diff(expected: &Value, actual: &Value) -> String {
    let mut out = String::new();
    let (expected_steps, actual_steps) = (steps(expected), steps(actual));
    let total = expected_steps.len().max(actual_steps.len());
    let mut differing = 0;
    let mut moved = 0;
    // The failures shown so far, by their step number, so a repeat is named on one line.
    let mut failures: Vec<(Value, usize)> = Vec::new();
    for pair in align(&expected_steps, &actual_steps) {
        match pair {
            Pair::Both(i, j) => {
                let (e, a) = (&expected_steps[i], &actual_steps[j]);
                if same(e, a) {
                    continue;
                }
                let (placeless_e, placeless_a) = (placeless(e), placeless(a));
                if same(&placeless_e, &placeless_a) {
                    moved += 1;
                    continue;
                }
                differing += 1;
                let _ = write!(out, "step {} of {total}, {}:", j + 1, title(a));
                let error = a.get("error").filter(|err| e.get("error") != Some(*err));
                if let Some(&(_, first)) =
                    error.and_then(|err| failures.iter().find(|(f, _)| f == err))
                {
                    let _ = writeln!(out, " fails as step {first} does");
                    continue;
                }
                out.push('\n');
                if let Some(err) = error {
                    failures.push((err.clone(), j + 1));
                }
                if what(e) != what(a) {
                    let _ = writeln!(out, "  expected the step {}", title(e));
                }
                // Where each came from is in the titles; the parts say what differs.
                parts(&mut out, &placeless_e, &placeless_a);
            }
            Pair::Expected(i) => {
                differing += 1;
                let e = &expected_steps[i];
                let _ = writeln!(out, "step {} of {total}, {}: missing", i + 1, title(e));
                let _ = writeln!(out, "  - {}", compact(e));
            }
            Pair::Actual(j) => {
                differing += 1;
                let a = &actual_steps[j];
                let _ = writeln!(out, "step {} of {total}, {}: not expected", j + 1, title(a));
                let _ = writeln!(out, "  + {}", compact(a));
            }
        }
    }
    let empty = serde_json::Map::new();
    let state = |v: &Value| v.get("state").and_then(Value::as_object).unwrap_or(&empty).clone();
    let (expected_state, actual_state) = (state(expected), state(actual));
    let mut keys: Vec<&String> = expected_state.keys().chain(actual_state.keys()).collect();
    keys.sort();
    keys.dedup();
    let mut states = 0;
    for key in keys {
        let (e, a) = (expected_state.get(key), actual_state.get(key));
        if e.zip(a).is_some_and(|(e, a)| same(e, a)) {
            continue;
        }
        states += 1;
        if states <= STATES_SHOWN {
            let _ = writeln!(out, "final state [{key}]:");
            side_by_side(&mut out, e, a);
        }
    }
    if states > STATES_SHOWN {
        let _ = writeln!(out, "final state: {} more keys differ", states - STATES_SHOWN);
    }
    for field in ["plugin", "kind"] {
        let (e, a) = (expected.get(field), actual.get(field));
        if e != a {
            let _ = writeln!(out, "{field}:");
            side_by_side(&mut out, e, a);
        }
    }
    if out.is_empty() && moved == 0 {
        return out;
    }
    let _ = write!(out, "{differing} of {total} step{} differ{}", plural(total), verb(differing));
    if moved > 0 {
        let _ = write!(
            out,
            "; {moved} step{} {} the same but from other fixture lines (lines were added or removed before {})",
            plural(moved),
            if moved == 1 { "is" } else { "are" },
            if moved == 1 { "it" } else { "them" },
        );
    }
    if states > 0 {
        let _ = write!(out, "; the final state of {states} key{} differs", plural(states));
    }
    out.push('\n');
    out
}

/// A step without where it came from (its fixture line and sequence), to match steps across
/// a fixture that gained or lost lines.
fn placeless(step: &Value) -> Value {
    let mut step = step.clone();
    if let Some(fields) = step.as_object_mut() {
        fields.remove("line");
        fields.remove("sequence");
    }
    step
}

/// What a step is, whatever its outcome: its kind, event type, key and query.
fn what(step: &Value) -> [Option<Value>; 4] {
    ["step", "type", "key", "request"].map(|f| step.get(f).cloned())
}

/// One place in the alignment of two lists of steps.
#[derive(Debug, PartialEq)]
enum Pair {
    /// Expected step `i` and actual step `j`, the same or one changed into the other.
    Both(usize, usize),
    /// An expected step with no actual one.
    Expected(usize),
    /// An actual step with no expected one.
    Actual(usize),
}

/// The longest fixtures whose steps are aligned by what they are; longer ones are compared
/// step by step, in order (the alignment takes time and memory as the product of the lengths).
const ALIGNED_STEPS: usize = 4096;

/// Aligns two lists of steps: the longest common run of steps that are the same step (type,
/// key, query) anchors the rest; between two anchors, steps are paired in order (a step whose
/// event changed), and what is left over is missing or not expected.
fn align(expected: &[Value], actual: &[Value]) -> Vec<Pair> {
    let (n, m) = (expected.len(), actual.len());
    if n > ALIGNED_STEPS || m > ALIGNED_STEPS {
        return (0..n.max(m))
            .map(|i| match (i < n, i < m) {
                (true, true) => Pair::Both(i, i),
                (true, false) => Pair::Expected(i),
                _ => Pair::Actual(i),
            })
            .collect();
    }
    // Steps are matched by what they are (an event of this type and key, a query of this
    // request and key), so a step whose outcome changed is still compared with its
    // counterpart, and the steps around an added or removed line keep theirs.
    let (e, a): (Vec<_>, Vec<_>) =
        (expected.iter().map(what).collect(), actual.iter().map(what).collect());
    // lcs[i][j]: the longest common run of e[i..] and a[j..].
    let mut lcs = vec![vec![0u32; m + 1]; n + 1];
    for i in (0..n).rev() {
        for j in (0..m).rev() {
            lcs[i][j] =
                if e[i] == a[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let mut pairs = Vec::new();
    let (mut i, mut j) = (0, 0);
    let (mut gap_e, mut gap_a) = (Vec::new(), Vec::new());
    let flush = |pairs: &mut Vec<Pair>, gap_e: &mut Vec<usize>, gap_a: &mut Vec<usize>| {
        let both = gap_e.len().min(gap_a.len());
        pairs.extend(gap_e.iter().zip(gap_a.iter()).map(|(&i, &j)| Pair::Both(i, j)));
        pairs.extend(gap_e[both..].iter().map(|&i| Pair::Expected(i)));
        pairs.extend(gap_a[both..].iter().map(|&j| Pair::Actual(j)));
        gap_e.clear();
        gap_a.clear();
    };
    while i < n || j < m {
        if i < n && j < m && e[i] == a[j] {
            flush(&mut pairs, &mut gap_e, &mut gap_a);
            pairs.push(Pair::Both(i, j));
            (i, j) = (i + 1, j + 1);
        } else if j == m || (i < n && lcs[i + 1][j] >= lcs[i][j + 1]) {
            gap_e.push(i);
            i += 1;
        } else {
            gap_a.push(j);
            j += 1;
        }
    }
    flush(&mut pairs, &mut gap_e, &mut gap_a);
    pairs
}

fn steps(report: &Value) -> Vec<Value> {
    report.get("steps").and_then(Value::as_array).cloned().unwrap_or_default()
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

fn verb(differing: usize) -> &'static str {
    if differing == 1 { "s" } else { "" }
}

/// Where a step comes from and what it is (`line 3 · #3 StatusChanged [r-2]`), named as the
/// report names it.
fn title(step: &Value) -> String {
    let text = |field: &str| step.get(field).map(plain);
    let number = |field: &str| step.get(field).and_then(Value::as_u64).unwrap_or(0);
    let (line, key) = (number("line") as usize, text("key"));
    match text("step").as_deref() {
        Some("query") => {
            query_title(line, key.as_deref(), step.get("request").unwrap_or(&Value::Null))
        }
        _ => event_title(
            line,
            number("sequence"),
            &text("type").unwrap_or_default(),
            &key.unwrap_or_default(),
        ),
    }
}

/// Each part of a step that differs, an array (the effects) element by element.
fn parts(out: &mut String, expected: &Value, actual: &Value) {
    let empty = serde_json::Map::new();
    let (e, a) = (expected.as_object().unwrap_or(&empty), actual.as_object().unwrap_or(&empty));
    let mut fields: Vec<&String> = e.keys().chain(a.keys()).collect();
    fields.sort();
    fields.dedup();
    for field in fields {
        match (e.get(field), a.get(field)) {
            (Some(x), Some(y)) if same(x, y) => {}
            (Some(Value::Array(x)), Some(Value::Array(y))) => {
                for i in 0..x.len().max(y.len()) {
                    let (x, y) = (x.get(i), y.get(i));
                    if x.zip(y).is_some_and(|(x, y)| same(x, y)) {
                        continue;
                    }
                    let _ = writeln!(out, "  {field}[{i}]:");
                    side_by_side(out, x, y);
                }
            }
            (x, y) => {
                let _ = writeln!(out, "  {field}:");
                side_by_side(out, x, y);
            }
        }
    }
}

fn side_by_side(out: &mut String, expected: Option<&Value>, actual: Option<&Value>) {
    let show = |v: Option<&Value>| v.map_or_else(|| "(none)".to_string(), compact);
    let _ = writeln!(out, "    - expected {}", show(expected));
    let _ = writeln!(out, "    + actual   {}", show(actual));
}

fn compact(v: &Value) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => compact(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_are_the_same_whatever_their_form() {
        assert!(same(&json!({"a": [18, {"b": 1.5}]}), &json!({"a": [18.0, {"b": 1.5}]})));
        assert!(same(&json!(-3), &json!(-3.0)));
        assert!(!same(&json!(18), &json!(18.5)));
        assert!(!same(&json!(u64::MAX), &json!(u64::MAX - 1)));
        assert!(!same(&json!({"a": 1}), &json!({"a": 1, "b": 2})));
        assert!(!same(&json!("18"), &json!(18)));
    }

    #[test]
    fn a_diff_names_the_line_key_and_type_of_each_step_that_differs() {
        let step = |line: u64, key: &str, row: Value| {
            json!({"step": "event", "line": line, "sequence": line, "type": "Seen", "key": key,
                   "effects": [{"effect": "upsert", "table": "t", "key": key, "row": row}]})
        };
        let expected = json!({"plugin": "p", "kind": "projection",
            "steps": [step(1, "a", json!({"n": 1})), step(2, "b", json!({"n": 1})), step(3, "a", json!({"n": 2}))],
            "state": {"a": {"n": 2}, "b": {"n": 1}}});
        let actual = json!({"plugin": "p", "kind": "projection",
            "steps": [step(1, "a", json!({"n": 1.0})), step(2, "b", json!({"n": 7})), step(3, "a", json!({"n": 2}))],
            "state": {"a": {"n": 2}, "b": {"n": 7}}});
        let text = diff(&expected, &actual);
        assert_eq!(
            text,
            "step 2 of 3, line 2 · #2 Seen [b]:\n  effects[0]:\n    \
             - expected {\"effect\":\"upsert\",\"key\":\"b\",\"row\":{\"n\":1},\"table\":\"t\"}\n    \
             + actual   {\"effect\":\"upsert\",\"key\":\"b\",\"row\":{\"n\":7},\"table\":\"t\"}\n\
             final state [b]:\n    - expected {\"n\":1}\n    + actual   {\"n\":7}\n\
             1 of 3 steps differs; the final state of 1 key differs\n"
        );
        assert_eq!(diff(&expected, &expected), "");
    }

    fn seen(line: u64, key: &str, n: u64) -> Value {
        json!({"step": "event", "line": line, "sequence": line, "type": "Seen", "key": key,
               "effects": [{"effect": "upsert", "table": "t", "key": key, "row": {"n": n}}]})
    }

    #[test]
    fn a_step_added_to_the_fixture_is_one_step_not_expected() {
        let expected =
            json!({"steps": [seen(1, "a", 1), seen(2, "b", 1), seen(3, "a", 2)], "state": {}});
        let actual = json!({"steps": [seen(1, "a", 1), seen(2, "c", 1), seen(3, "b", 1), seen(4, "a", 2)], "state": {}});
        let text = diff(&expected, &actual);
        assert_eq!(
            text,
            "step 2 of 4, line 2 · #2 Seen [c]: not expected\n  + {\"effects\":[{\"effect\":\"upsert\",\"key\":\"c\",\"row\":{\"n\":1},\"table\":\"t\"}],\"key\":\"c\",\"line\":2,\"sequence\":2,\"step\":\"event\",\"type\":\"Seen\"}\n\
             1 of 4 steps differs; 2 steps are the same but from other fixture lines (lines were added or removed before them)\n"
        );
        // A changed step among moved ones is still compared with its counterpart.
        let changed = json!({"steps": [seen(1, "a", 1), seen(2, "c", 1), seen(3, "b", 1), seen(4, "a", 9)], "state": {}});
        let text = diff(&expected, &changed);
        assert!(text.contains("step 4 of 4, line 4 · #4 Seen [a]:\n  effects[0]:\n"), "{text}");
        assert!(text.ends_with("2 of 4 steps differ; 1 step is the same but from other fixture lines (lines were added or removed before it)\n"), "{text}");
    }

    #[test]
    fn a_repeated_or_removed_line_is_one_step_whose_later_outcomes_differ() {
        // The scaffold's counter: a repeated line 2 (a's second event) counts one more for a.
        let expected = json!({"steps": [seen(1, "a", 1), seen(2, "a", 2), seen(3, "b", 1), seen(4, "a", 3)], "state": {}});
        let repeated = json!({"steps": [seen(1, "a", 1), seen(2, "a", 2), seen(3, "a", 3), seen(4, "b", 1), seen(5, "a", 4)], "state": {}});
        let text = diff(&expected, &repeated);
        assert!(text.contains("[a]: not expected\n"), "{text}");
        assert!(text.contains("step 5 of 5, line 5 · #5 Seen [a]:\n  effects[0]:\n"), "{text}");
        assert!(!text.contains("[b]"), "b's step only moved: {text}");
        assert!(text.ends_with("2 of 5 steps differ; 1 step is the same but from other fixture lines (lines were added or removed before it)\n"), "{text}");
        // Line 3 (b) removed: b's step is missing, a's later one moved.
        let removed =
            json!({"steps": [seen(1, "a", 1), seen(2, "a", 2), seen(3, "a", 3)], "state": {}});
        let text = diff(&expected, &removed);
        assert!(text.starts_with("step 3 of 4, line 3 · #3 Seen [b]: missing\n"), "{text}");
        assert!(text.ends_with("1 of 4 steps differs; 1 step is the same but from other fixture lines (lines were added or removed before it)\n"), "{text}");
    }

    #[test]
    fn a_failure_repeated_is_named_on_one_line() {
        let failed = |line: u64, key: &str| {
            json!({"step": "event", "line": line, "sequence": line, "type": "Seen", "key": key,
                   "error": {"kind": "rejected-effect", "message": "table `t` is not declared"}})
        };
        let keys = ["a", "b", "c", "d", "e", "f", "g"];
        let expected = json!({"steps": keys.iter().enumerate().map(|(i, k)| seen(i as u64 + 1, k, 1)).collect::<Vec<_>>(),
                              "state": keys.iter().map(|k| (k.to_string(), json!({"n": 1}))).collect::<serde_json::Map<_, _>>()});
        let actual = json!({"steps": keys.iter().enumerate().map(|(i, k)| failed(i as u64 + 1, k)).collect::<Vec<_>>(),
                            "state": {}});
        let text = diff(&expected, &actual);
        assert!(text.starts_with("step 1 of 7, line 1 · #1 Seen [a]:\n  effects:\n"), "{text}");
        assert!(
            text.contains("step 2 of 7, line 2 · #2 Seen [b]: fails as step 1 does\n"),
            "{text}"
        );
        assert!(text.contains("final state: 4 more keys differ\n"), "{text}");
        assert!(
            text.ends_with("7 of 7 steps differ; the final state of 7 keys differs\n"),
            "{text}"
        );
        assert!(text.lines().count() <= 25, "{} lines:\n{text}", text.lines().count());
        assert_eq!(failing_steps(&actual), 7);
    }

    #[test]
    fn missing_and_extra_steps_are_named() {
        let one = json!({"step": "query", "line": 0, "request": {"all": {}}, "response": 1});
        let expected = json!({"steps": [], "state": {}});
        let actual = json!({"steps": [one], "state": {}});
        let text = diff(&expected, &actual);
        assert!(text.starts_with("step 1 of 1, --query {\"all\":{}}: not expected\n"), "{text}");
        assert!(diff(&actual, &expected).contains(": missing\n  - {"), "{text}");
    }
}
