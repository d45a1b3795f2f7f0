//! Event integrity: HMAC-SHA256 signatures on events, in the `Jetfold-Signature` header.
//!
//! A signature is `<key id>:<base64 of HMAC-SHA256(key, message)>` over, in this order, the
//! version tag `jetfold-v1`, the subject, the `Nats-Msg-Id`, the `Event-Type` and
//! `Event-Time` headers (empty when absent), each followed by a newline, then the payload
//! bytes. With `[event-signing] verify = true` the daemon folds only events signed by one of
//! its keys (others are rejected as `bad-signature` and dead-lettered); with `sign = true` the
//! events and commands plugins emit are signed with `sign-key`.

use base64::Engine as _;
use ring::hmac;

use crate::headers;

/// The header carrying a signature.
pub const SIGNATURE: &str = "Jetfold-Signature";

/// Why a signature does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BadSignature {
    /// `unsigned`, `malformed`, `untrusted-key` or `mismatch`: the code of the rejection.
    pub code: &'static str,
    /// What is wrong, for a person.
    pub message: String,
}

fn bad(code: &'static str, message: impl Into<String>) -> BadSignature {
    BadSignature { code, message: message.into() }
}

/// The signed parts of a message: subject, message id, event type, event time, payload.
pub struct Signed<'a> {
    /// Subject.
    pub subject: &'a str,
    /// `Nats-Msg-Id`.
    pub msg_id: &'a str,
    /// `Event-Type`.
    pub event_type: &'a str,
    /// `Event-Time`.
    pub event_time: &'a str,
    /// The payload.
    pub payload: &'a [u8],
}

impl<'a> Signed<'a> {
    /// The signed parts of a message with these headers.
    pub fn from_headers(subject: &'a str, h: &'a [(String, String)], payload: &'a [u8]) -> Self {
        let get = |name: &str| headers::find(h, name).unwrap_or("");
        Signed {
            subject,
            msg_id: get(headers::MSG_ID),
            event_type: get(headers::EVENT_TYPE),
            event_time: get(headers::EVENT_TIME),
            payload,
        }
    }

    /// The signed parts of `event` as the host's `nats::publish_event` publishes it, its
    /// `Event-Time` header being `event_time` (the event's time in RFC 3339).
    pub fn of_event(event: &'a crate::event::Event, event_time: &'a str) -> Self {
        Signed {
            subject: &event.subject,
            msg_id: &event.message_id,
            event_type: &event.event_type,
            event_time,
            payload: &event.payload,
        }
    }

    fn tag(&self, key: &[u8]) -> hmac::Tag {
        let key = hmac::Key::new(hmac::HMAC_SHA256, key);
        let mut ctx = hmac::Context::with_key(&key);
        for part in ["jetfold-v1", self.subject, self.msg_id, self.event_type, self.event_time] {
            ctx.update(part.as_bytes());
            ctx.update(b"\n");
        }
        ctx.update(self.payload);
        ctx.sign()
    }

    /// The `Jetfold-Signature` value for key `key_id`.
    pub fn sign(&self, key_id: &str, key: &[u8]) -> String {
        let tag = self.tag(key);
        format!("{key_id}:{}", base64::engine::general_purpose::STANDARD.encode(tag.as_ref()))
    }

    /// Checks `signature` against the keys; why not, if it does not hold.
    pub fn verify(
        &self,
        signature: Option<&str>,
        keys: &[(String, Vec<u8>)],
    ) -> Result<(), BadSignature> {
        let signature = signature.ok_or_else(|| {
            bad("unsigned", "the event is not signed (no Jetfold-Signature header)")
        })?;
        let (key_id, mac) = signature.split_once(':').ok_or_else(|| {
            bad("malformed", "the Jetfold-Signature header is not `<key id>:<mac>`")
        })?;
        let key = keys.iter().find(|(id, _)| id == key_id).map(|(_, k)| k).ok_or_else(|| {
            bad(
                "untrusted-key",
                format!("the event is signed with key `{key_id}`, which is not trusted"),
            )
        })?;
        let mac = base64::engine::general_purpose::STANDARD
            .decode(mac)
            .map_err(|_| bad("malformed", "the signature is not base64"))?;
        let verifier = hmac::Key::new(hmac::HMAC_SHA256, key);
        let mut message = Vec::new();
        for part in ["jetfold-v1", self.subject, self.msg_id, self.event_type, self.event_time] {
            message.extend_from_slice(part.as_bytes());
            message.push(b'\n');
        }
        message.extend_from_slice(self.payload);
        hmac::verify(&verifier, &message, &mac).map_err(|_| {
            bad("mismatch", format!("the signature by key `{key_id}` does not match the event"))
        })
    }
}

/// Adds a `Jetfold-Signature` header to `event`, over what the host's `nats::publish_event`
/// publishes.
pub fn sign_event(event: &mut crate::event::Event, key_id: &str, key: &[u8]) {
    let time = event.time.to_rfc3339();
    let signature = Signed::of_event(event, &time).sign(key_id, key);
    event.headers.push((SIGNATURE.to_string(), signature));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_holds_for_its_event_only() {
        let keys = vec![("k1".to_string(), b"secret".to_vec())];
        let signed = Signed {
            subject: "a.b",
            msg_id: "m-1",
            event_type: "T",
            event_time: "2026-01-01T00:00:00Z",
            payload: b"{}",
        };
        let signature = signed.sign("k1", b"secret");
        assert_eq!(signed.verify(Some(&signature), &keys), Ok(()));
        let altered = Signed { payload: b"{ }", ..signed };
        let e = altered.verify(Some(&signature), &keys).unwrap_err();
        assert!(e.message.contains("does not match") && e.code == "mismatch", "{e:?}");
        let other_key = signed.sign("k2", b"secret");
        let e = signed.verify(Some(&other_key), &keys).unwrap_err();
        assert!(e.message.contains("not trusted") && e.code == "untrusted-key", "{e:?}");
        let e = signed.verify(None, &keys).unwrap_err();
        assert!(e.message.contains("not signed") && e.code == "unsigned", "{e:?}");
    }
}
