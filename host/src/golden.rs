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

/// How `actual` differs from `expected` (two reports as golden files hold them), step by step:
/// empty if they are [`same`].
pub fn diff(expected: &Value, actual: &Value) -> String {
    let mut out = String::new();
    let (expected_steps, actual_steps) = (steps(expected), steps(actual));
    let total = expected_steps.len().max(actual_steps.len());
    let mut differing = 0;
    for i in 0..total {
        match (expected_steps.get(i), actual_steps.get(i)) {
            (Some(e), Some(a)) if same(e, a) => {}
            (Some(e), Some(a)) => {
                differing += 1;
                let _ = writeln!(out, "step {} of {total}, {}:", i + 1, title(a));
                if title(e) != title(a) {
                    let _ = writeln!(out, "  expected the step {}", title(e));
                }
                parts(&mut out, e, a);
            }
            (Some(e), None) => {
                differing += 1;
                let _ = writeln!(out, "step {} of {total}, {}: missing", i + 1, title(e));
                let _ = writeln!(out, "  - {}", compact(e));
            }
            (None, Some(a)) => {
                differing += 1;
                let _ = writeln!(out, "step {} of {total}, {}: not expected", i + 1, title(a));
                let _ = writeln!(out, "  + {}", compact(a));
            }
            (None, None) => unreachable!("i < the longer list"),
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
        let _ = writeln!(out, "final state [{key}]:");
        side_by_side(&mut out, e, a);
    }
    for field in ["plugin", "kind"] {
        let (e, a) = (expected.get(field), actual.get(field));
        if e != a {
            let _ = writeln!(out, "{field}:");
            side_by_side(&mut out, e, a);
        }
    }
    if out.is_empty() {
        return out;
    }
    let _ = write!(out, "{differing} of {total} step{} differ{}", plural(total), verb(differing));
    if states > 0 {
        let _ = write!(out, "; the final state of {states} key{} differs", plural(states));
    }
    out.push('\n');
    out
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
