//! A faster serde form of `DateTime<Utc>`, the same text as chrono's own.
//!
//! chrono writes a time through `Display`, one character at a time, which in a plugin's state
//! costs more than the rest of the state's fields together when the state is encoded once per
//! batch. This module writes the same RFC 3339 text (`2026-03-01T09:00:00Z`, fractional
//! seconds as needed, `Z` for UTC) in one piece and reads it back, so states and rows written
//! either way are interchangeable. Use it on a field:
//!
//! ```
//! use chrono::{DateTime, Utc};
//! use jetfold_guest::prelude::*;
//!
//! #[derive(Serialize, Deserialize)]
//! struct Seen {
//!     #[serde(with = "jetfold_guest::time")]
//!     at: DateTime<Utc>,
//! }
//! ```
//!
//! and [`text`] where a time goes into a row or payload built with `json!`.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

/// `time` as chrono's serde writes it.
pub fn text(time: &DateTime<Utc>) -> String {
    time.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Writes `time` as RFC 3339 text.
pub fn serialize<S: Serializer>(time: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&text(time))
}

/// Reads RFC 3339 text (and whatever else chrono's own serde reads).
pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<DateTime<Utc>, D::Error> {
    let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
    match DateTime::parse_from_rfc3339(&text) {
        Ok(time) => Ok(time.with_timezone(&Utc)),
        Err(_) => text.parse::<DateTime<Utc>>().map_err(D::Error::custom),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Fast(#[serde(with = "super")] DateTime<Utc>);

    #[test]
    fn writes_and_reads_what_chrono_does() {
        for s in [
            "2026-03-01T09:00:00Z",
            "2026-03-01T09:00:00.5Z",
            "2026-03-01T09:00:00.123Z",
            "2026-03-01T09:00:00.123456Z",
            "2026-03-01T09:00:00.123456789Z",
            "1969-12-31T23:59:59.000000001Z",
        ] {
            let time: DateTime<Utc> = s.parse().unwrap();
            let chrono = serde_json::to_string(&time).unwrap();
            let fast = serde_json::to_string(&Fast(time)).unwrap();
            assert_eq!(fast, chrono, "{s}");
            assert_eq!(serde_json::from_str::<Fast>(&chrono).unwrap(), Fast(time));
        }
        // What chrono reads beyond RFC 3339 (an offset, a space), this reads too.
        let offset: Fast = serde_json::from_str("\"2026-03-01 11:00:00+02:00\"").unwrap();
        assert_eq!(offset.0, "2026-03-01T09:00:00Z".parse::<DateTime<Utc>>().unwrap());
        assert!(serde_json::from_str::<Fast>("\"yesterday\"").is_err());
        // An escaped string (not borrowed) reads as well.
        let escaped: Fast = serde_json::from_str("\"2026-03-01T09:00:00\\u005a\"").unwrap();
        assert_eq!(escaped.0, "2026-03-01T09:00:00Z".parse::<DateTime<Utc>>().unwrap());
    }
}
