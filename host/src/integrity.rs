//! Event integrity: the signatures of [`jetfold_contract::integrity`], checked on messages as
//! NATS delivers them.

pub use jetfold_contract::integrity::*;

/// Checks the `Jetfold-Signature` of a message as NATS delivered it against `keys`.
pub fn verify_message(
    message: &async_nats::Message,
    keys: &[(String, Vec<u8>)],
) -> Result<(), BadSignature> {
    let mut h = Vec::new();
    if let Some(headers) = &message.headers {
        for (name, values) in headers.iter() {
            if let Some(v) = values.first() {
                h.push((name.to_string(), v.as_str().to_string()));
            }
        }
    }
    let signature = jetfold_contract::headers::find(&h, SIGNATURE);
    let mut signed = Signed::from_headers(message.subject.as_str(), &h, &message.payload);
    // A replayed dead letter has an id of its own; the signature covers its original's.
    signed.msg_id = crate::nats::source::signed_msg_id(message);
    signed.verify(signature, keys)
}
