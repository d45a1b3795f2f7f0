//! Where emitted messages go: JetStream confirms a message only when a stream captures its
//! subject, so every subject a plugin may publish to needs one. The daemon makes sure of it
//! when a plugin starts (creating a stream where none captures a pattern), and names the
//! cause when a publish fails for want of one.

use std::time::Duration;

use futures::TryStreamExt as _;

use crate::manifest::{EffectKind, Manifest};

/// How long finding the stream of a subject may take before the check is skipped.
const LOOKUP: Duration = Duration::from_secs(2);

/// Whether every subject matching `pattern` matches `stream_subject` (both may hold the
/// wildcards `*` and `>`).
pub fn captures(stream_subject: &str, pattern: &str) -> bool {
    let mut wanted = pattern.split('.');
    for token in stream_subject.split('.') {
        let Some(p) = wanted.next() else { return false };
        match token {
            ">" => return true,
            "*" if p != ">" => {}
            literal if literal == p => {}
            _ => return false,
        }
    }
    wanted.next().is_none()
}

/// The name of the stream the daemon creates for `pattern`: `JETFOLD_` and its tokens in
/// capitals (`orders.commands.>` -> `JETFOLD_ORDERS_COMMANDS`, `*` -> `ANY`).
pub fn stream_name(pattern: &str) -> String {
    let tokens: Vec<String> = pattern
        .split('.')
        .filter(|t| *t != ">")
        .map(|t| match t {
            "*" => "ANY".to_string(),
            t => t
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || c == '-' { c.to_ascii_uppercase() } else { '_' }
                })
                .collect(),
        })
        .collect();
    match tokens.is_empty() {
        true => "JETFOLD_ALL".into(),
        false => format!("JETFOLD_{}", tokens.join("_")),
    }
}

/// The subjects the plugin of `manifest` may publish to (none if it may not emit).
pub fn allowed_patterns(manifest: &Manifest) -> &[String] {
    let effects = &manifest.allow.effects;
    let emits = effects.is_empty()
        || effects.iter().any(|e| matches!(e, EffectKind::Emit | EffectKind::Command));
    match emits {
        true => &manifest.allow.subjects,
        false => &[],
    }
}

/// Makes sure a stream captures every subject the plugin of `manifest` may publish to:
/// for a pattern no stream captures, creates one (named by [`stream_name`]). A pattern that
/// cannot get one (it overlaps a stream that captures only part of it, or the account may not
/// create streams) is logged as an error with what to do; the plugin runs, and a message to a
/// subject no stream captures is retried with an error that names the subject.
pub async fn ensure_streams(js: &async_nats::jetstream::Context, manifest: &Manifest) {
    let plugin = manifest.name.as_str();
    let patterns = allowed_patterns(manifest);
    if patterns.is_empty() {
        return;
    }
    let streams: Vec<(String, Vec<String>)> = match js.streams().try_collect::<Vec<_>>().await {
        Ok(infos) => {
            infos.into_iter().map(|i| (i.config.name.clone(), i.config.subjects.clone())).collect()
        }
        Err(e) => {
            tracing::warn!(plugin, error = %e, "cannot list the streams to check that the plugin's [allow] subjects are kept");
            return;
        }
    };
    for pattern in patterns {
        let captured =
            streams.iter().any(|(_, subjects)| subjects.iter().any(|s| captures(s, pattern)));
        if captured {
            continue;
        }
        let name = stream_name(pattern);
        let config = async_nats::jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![pattern.clone()],
            description: Some(format!(
                "jetfold: messages plugins emit to {pattern} (created because no stream kept them)"
            )),
            ..Default::default()
        };
        match js.create_stream(config).await {
            Ok(_) => tracing::info!(
                plugin,
                subjects = %pattern,
                stream = %name,
                "created a stream for the subjects the plugin may publish to (no stream captured them)"
            ),
            Err(e) => {
                let overlapping: Vec<&str> = streams
                    .iter()
                    .filter(|(_, subjects)| subjects.iter().any(|s| overlap(s, pattern)))
                    .map(|(n, _)| n.as_str())
                    .collect();
                tracing::error!(
                    plugin,
                    subjects = %pattern,
                    overlapping = ?overlapping,
                    error = %e,
                    "no stream captures all of the subjects `{pattern}` the plugin may publish to, and stream `{name}` could not be created for them: a message to a subject no stream captures is not confirmed, and the plugin stops there until one does; create a stream capturing it (`nats stream add --subjects '{pattern}'`), or narrow [allow] subjects"
                );
            }
        }
    }
}

/// Whether some subject matches both `a` and `b`.
fn overlap(a: &str, b: &str) -> bool {
    let (mut a, mut b) = (a.split('.'), b.split('.'));
    loop {
        match (a.next(), b.next()) {
            (None, None) => return true,
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some(x), Some(y)) if x == "*" || y == "*" || x == y => {}
            _ => return false,
        }
    }
}

/// The first of `subjects` that no stream captures; `None` if every one is captured, or
/// if JetStream cannot say (unreachable: the publish's own error says more).
pub async fn uncaptured<'a>(
    js: &async_nats::jetstream::Context,
    subjects: impl Iterator<Item = &'a str>,
) -> Option<String> {
    use async_nats::jetstream::context::GetStreamByNameErrorKind as Kind;
    let mut checked = std::collections::HashSet::new();
    for subject in subjects {
        if !checked.insert(subject) {
            continue;
        }
        match tokio::time::timeout(LOOKUP, js.stream_by_subject(subject)).await {
            Ok(Err(e)) if e.kind() == Kind::NotFound => return Some(subject.to_string()),
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => return None,
        }
    }
    None
}

/// The error for a message whose subject no stream captures.
pub fn no_stream_error(subject: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "no stream captures subject `{subject}`: JetStream keeps and confirms no message published to it; create a stream whose subjects capture it, and the daemon publishes the message then"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stream_subject_captures_the_patterns_it_covers_entirely() {
        for (stream, pattern) in [
            (">", "a.b"),
            (">", "a.>"),
            ("a.>", "a.b.c"),
            ("a.>", "a.*"),
            ("a.*", "a.b"),
            ("a.*", "a.*"),
            ("a.b", "a.b"),
            ("a.*.c", "a.b.c"),
        ] {
            assert!(captures(stream, pattern), "{stream} captures {pattern}");
        }
        for (stream, pattern) in [
            ("a.*", "a.>"),
            ("a.*", "a.b.c"),
            ("a.b", "a.*"),
            ("a.b.>", "a.>"),
            ("a.>", "a"),
            ("a.b", "a.b.c"),
            ("a.b.c", "a.b"),
            ("b.>", "a.>"),
        ] {
            assert!(!captures(stream, pattern), "{stream} does not capture {pattern}");
        }
    }

    #[test]
    fn overlapping_patterns_share_a_subject() {
        assert!(overlap("a.b.>", "a.>"));
        assert!(overlap("a.*", "a.b"));
        assert!(overlap("*.b", "a.*"));
        assert!(!overlap("a.b", "a.c"));
        assert!(!overlap("a.*", "a.b.c"));
        assert!(!overlap("a.b.>", "a.b"));
    }

    #[test]
    fn created_streams_are_named_after_their_subjects() {
        assert_eq!(stream_name("orders.commands.>"), "JETFOLD_ORDERS_COMMANDS");
        assert_eq!(stream_name("commands.*.quarantine"), "JETFOLD_COMMANDS_ANY_QUARANTINE");
        assert_eq!(stream_name(">"), "JETFOLD_ALL");
        assert_eq!(stream_name("a-b.c$d"), "JETFOLD_A-B_C_D");
    }
}
