//! The effects guests return (held and checked as [`jetfold_contract::effect`]), converted
//! from their WIT form.

pub use jetfold_contract::effect::*;

use crate::bindings::types;
use crate::manifest::Allow;

/// Converts a guest effect, validating its JSON; `index` is its position for errors.
pub fn from_guest(index: usize, effect: types::Effect) -> Result<Effect, EffectRejection> {
    match effect {
        types::Effect::Upsert(r) => Effect::upsert(index, r.table, r.key, r.row),
        types::Effect::Update(r) => Effect::update(index, r.table, r.key, r.patch),
        types::Effect::Delete(r) => Ok(Effect::Delete { table: r.table, key: r.key }),
        types::Effect::Emit(m) => from_message(index, m),
        types::Effect::Log(l) => Ok(Effect::Log { level: l.level.into(), message: l.message }),
    }
}

/// Converts a guest message (an emit effect or a policy's command decision).
pub fn from_message(index: usize, m: types::Message) -> Result<Effect, EffectRejection> {
    let kind = match m.kind {
        types::MessageKind::Event => MessageKind::Event,
        types::MessageKind::Command => MessageKind::Command,
    };
    Effect::message(index, kind, m.subject, m.message_type, m.payload, m.headers)
}

impl From<types::LogLevel> for LogLevel {
    fn from(level: types::LogLevel) -> Self {
        match level {
            types::LogLevel::Trace => LogLevel::Trace,
            types::LogLevel::Debug => LogLevel::Debug,
            types::LogLevel::Info => LogLevel::Info,
            types::LogLevel::Warn => LogLevel::Warn,
            types::LogLevel::Error => LogLevel::Error,
        }
    }
}

/// Converts and checks a guest's effects; the first refusal rejects the whole list.
pub fn accept(effects: Vec<types::Effect>, allow: &Allow) -> Result<Vec<Effect>, EffectRejection> {
    accept_all(effects, allow, from_guest)
}

/// Converts and checks a policy's decisions: commands become command messages.
pub fn accept_decisions(
    decisions: Vec<types::Decision>,
    allow: &Allow,
) -> Result<Vec<Effect>, EffectRejection> {
    accept_all(decisions, allow, |i, d| match d {
        types::Decision::Command(mut m) => {
            m.kind = types::MessageKind::Command;
            from_message(i, m)
        }
        types::Decision::Effect(e) => from_guest(i, e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::EffectKind;

    fn allow(tables: &[&str], subjects: &[&str], effects: Vec<EffectKind>) -> Allow {
        Allow {
            tables: tables.iter().map(|s| s.to_string()).collect(),
            subjects: subjects.iter().map(|s| s.to_string()).collect(),
            effects,
        }
    }

    #[test]
    fn undeclared_tables_subjects_and_kinds_are_rejected() {
        let upsert = |table: &str, row: &str| {
            types::Effect::Upsert(types::UpsertRow {
                table: table.into(),
                key: "k".into(),
                row: row.into(),
            })
        };
        let a = allow(&["t"], &["out.>"], vec![]);
        assert!(accept(vec![upsert("t", "{\"a\":1}")], &a).is_ok());
        let e = accept(vec![upsert("t", "{}"), upsert("secrets", "{}")], &a).unwrap_err();
        assert!(matches!(e, EffectRejection::TableNotAllowed { index: 1, .. }), "{e}");
        assert!(e.to_string().contains("secrets"));
        let e = accept(vec![upsert("t", "[1]")], &a).unwrap_err();
        assert!(matches!(e, EffectRejection::InvalidDocument { .. }), "{e}");
        let e = accept(vec![upsert("t", "{nope")], &a).unwrap_err();
        assert!(matches!(e, EffectRejection::InvalidDocument { .. }), "{e}");

        let emit = |subject: &str| {
            types::Effect::Emit(types::Message {
                kind: types::MessageKind::Command,
                subject: subject.into(),
                message_type: "Do".into(),
                payload: "{}".into(),
                headers: vec![],
            })
        };
        assert!(accept(vec![emit("out.x")], &a).is_ok());
        assert!(matches!(
            accept(vec![emit("other.x")], &a),
            Err(EffectRejection::SubjectNotAllowed { .. })
        ));
        assert!(matches!(
            accept(vec![emit("out.*")], &a),
            Err(EffectRejection::SubjectNotAllowed { .. })
        ));
        let only_upserts = allow(&["t"], &["out.>"], vec![EffectKind::Upsert]);
        assert!(matches!(
            accept(vec![emit("out.x")], &only_upserts),
            Err(EffectRejection::KindNotAllowed { .. })
        ));
    }

    /// What the fuzzer found (`host/fuzz`): each would have stalled or crashed the daemon.
    #[test]
    fn what_nats_or_postgresql_cannot_take_is_refused() {
        let a = allow(&["t"], &["out.>"], vec![]);
        let upsert = |key: &str, row: &str| {
            types::Effect::Upsert(types::UpsertRow {
                table: "t".into(),
                key: key.into(),
                row: row.into(),
            })
        };
        let emit = |subject: &str, payload: &str, headers: &[(&str, &str)]| {
            types::Effect::Emit(types::Message {
                kind: types::MessageKind::Event,
                subject: subject.into(),
                message_type: "Done".into(),
                payload: payload.into(),
                headers: headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            })
        };
        let refused = |e: types::Effect| accept(vec![e], &a).unwrap_err();
        // PostgreSQL's text and jsonb hold no NUL; a commit with one would fail forever.
        let e = refused(upsert("k", "{\"a\":\"x\\u0000\"}"));
        assert!(matches!(e, EffectRejection::Nul { what: "row", .. }), "{e}");
        let e = refused(upsert("k", "{\"\\u0000\":1}"));
        assert!(matches!(e, EffectRejection::Nul { what: "row", .. }), "{e}");
        assert!(matches!(refused(upsert("a\0b", "{}")), EffectRejection::Nul { what: "key", .. }));
        assert!(
            accept(vec![upsert("k", "{\"a\":\"\\\\u0000\"}")], &a).is_ok(),
            "an escaped backslash"
        );
        // A number no double holds.
        let e = refused(upsert("k", "{\"a\":1e999}"));
        assert!(e.to_string().contains("number out of range"), "{e}");
        let e = refused(emit("out.x", "[\"\\u0000\"]", &[]));
        assert!(matches!(e, EffectRejection::Nul { what: "payload", .. }), "{e}");
        // Subjects and headers NATS would refuse, or that would panic building the message.
        assert!(matches!(
            refused(emit("out.\0x", "{}", &[])),
            EffectRejection::SubjectNotAllowed { .. }
        ));
        for name in [
            "bad:name",
            "",
            "naïve",
            "Nats-Msg-Id",
            "nats-expected-stream",
            "Jetfold-Plugin",
            "event-type",
        ] {
            let e = refused(emit("out.x", "{}", &[(name, "v")]));
            assert!(matches!(e, EffectRejection::HeaderNotAllowed { .. }), "{name}: {e}");
        }
        let e = refused(emit("out.x", "{}", &[("X-Trace", "a\r\nPUB x 1")]));
        assert!(matches!(e, EffectRejection::HeaderNotAllowed { .. }), "{e}");
        assert!(accept(vec![emit("out.x", "{}", &[("X-Trace", "abc")])], &a).is_ok());
    }
}
