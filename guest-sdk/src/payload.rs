//! Decodes a payload into the plugin's event type.
//!
//! The deserializer presents the event as an externally tagged enum whose tag is the event
//! type and whose content is the JSON payload; for any other Rust type it is just the payload.
//! So `enum ResourceEvent { StatusChanged { to: Status }, .. }` picks its variant by event
//! type, while a struct or `Json` reads the payload as is.

use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, IntoDeserializer, VariantAccess, Visitor,
};

/// The event type and the payload bytes of one event.
pub(crate) struct TypedPayload<'a> {
    pub event_type: &'a str,
    pub bytes: &'a [u8],
}

/// Decodes `T` from `payload`, with the event type as the enum tag.
pub(crate) fn decode<T: de::DeserializeOwned>(
    event_type: &str,
    bytes: &[u8],
) -> Result<T, serde_json::Error> {
    T::deserialize(TypedPayload { event_type, bytes })
}

fn json(bytes: &[u8]) -> serde_json::Deserializer<serde_json::de::SliceRead<'_>> {
    serde_json::Deserializer::from_slice(bytes)
}

/// Runs `f` over a JSON deserializer of `bytes` and checks nothing but whitespace follows. An
/// absent payload (no bytes) reads as `null`, as Python's and JavaScript's helpers see it.
fn whole<'a, R>(
    bytes: &'a [u8],
    f: impl FnOnce(
        &mut serde_json::Deserializer<serde_json::de::SliceRead<'a>>,
    ) -> Result<R, serde_json::Error>,
) -> Result<R, serde_json::Error> {
    let bytes = if bytes.trim_ascii().is_empty() { b"null" } else { bytes };
    let mut de = json(bytes);
    let value = f(&mut de)?;
    de.end()?;
    Ok(value)
}

macro_rules! forward_to_json {
    ($($method:ident $(($($arg:ident: $ty:ty),*))?;)*) => {
        $(
            fn $method<V: Visitor<'de>>(self, $($($arg: $ty,)*)? visitor: V) -> Result<V::Value, Self::Error> {
                whole(self.bytes, |de| de.$method($($($arg,)*)? visitor))
            }
        )*
    };
}

impl<'de> Deserializer<'de> for TypedPayload<'de> {
    type Error = serde_json::Error;

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_enum(self)
    }

    forward_to_json! {
        deserialize_any; deserialize_bool; deserialize_i8; deserialize_i16; deserialize_i32;
        deserialize_i64; deserialize_i128; deserialize_u8; deserialize_u16; deserialize_u32;
        deserialize_u64; deserialize_u128; deserialize_f32; deserialize_f64; deserialize_char;
        deserialize_str; deserialize_string; deserialize_bytes; deserialize_byte_buf;
        deserialize_option; deserialize_unit; deserialize_seq; deserialize_map;
        deserialize_identifier; deserialize_ignored_any;
        deserialize_unit_struct(name: &'static str);
        deserialize_newtype_struct(name: &'static str);
        deserialize_tuple(len: usize);
        deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_struct(name: &'static str, fields: &'static [&'static str]);
    }
}

impl<'de> EnumAccess<'de> for TypedPayload<'de> {
    type Error = serde_json::Error;
    type Variant = PayloadOf<'de>;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Self::Variant), Self::Error> {
        let tag: de::value::StrDeserializer<'_, serde_json::Error> =
            self.event_type.into_deserializer();
        let variant = seed.deserialize(tag)?;
        Ok((variant, PayloadOf { bytes: self.bytes }))
    }
}

/// The payload as the content of the variant the event type selected.
pub(crate) struct PayloadOf<'a> {
    bytes: &'a [u8],
}

impl<'de> VariantAccess<'de> for PayloadOf<'de> {
    type Error = serde_json::Error;

    // A unit variant (or `#[serde(other)]`) ignores the payload: the type alone says it all.
    fn unit_variant(self) -> Result<(), Self::Error> {
        Ok(())
    }

    fn newtype_variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<S::Value, Self::Error> {
        whole(self.bytes, |de| seed.deserialize(de))
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        whole(self.bytes, |de| de.deserialize_tuple(len, visitor))
    }

    // An absent payload is an empty object: `Shipped {}`, or fields that all have defaults.
    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        let bytes = if self.bytes.trim_ascii().is_empty() { b"{}" } else { self.bytes };
        whole(bytes, |de| de.deserialize_struct("", fields, visitor))
    }
}

#[cfg(test)]
mod tests {
    use super::decode;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    enum Ev {
        Registered { name: String },
        Renamed(String),
        Pinged,
        Pair(u8, u8),
    }

    #[test]
    fn enum_variant_comes_from_the_event_type() {
        assert_eq!(
            decode::<Ev>("Registered", br#"{"name":"a"}"#).unwrap(),
            Ev::Registered { name: "a".into() }
        );
        assert_eq!(decode::<Ev>("Renamed", br#""b""#).unwrap(), Ev::Renamed("b".into()));
        assert_eq!(decode::<Ev>("Pinged", b"").unwrap(), Ev::Pinged);
        assert_eq!(decode::<Ev>("Pair", b"[1, 2] ").unwrap(), Ev::Pair(1, 2));
    }

    #[test]
    fn unknown_event_type_and_bad_payload_are_errors() {
        let e = decode::<Ev>("Deleted", b"{}").unwrap_err().to_string();
        assert!(e.contains("unknown variant `Deleted`"), "{e}");
        assert!(decode::<Ev>("Registered", b"{\"name\": 1}").is_err());
        assert!(decode::<Ev>("Registered", b"{\"name\": \"a\"} trailing").is_err());
    }

    #[test]
    fn other_types_read_the_payload_as_is() {
        #[derive(Debug, Deserialize, PartialEq)]
        struct P {
            n: u32,
        }
        assert_eq!(decode::<P>("Whatever", br#"{"n": 3}"#).unwrap(), P { n: 3 });
        let v: serde_json::Value = decode("X", br#"{"a": [1]}"#).unwrap();
        assert_eq!(v, serde_json::json!({"a": [1]}));
        let o: Option<u8> = decode("X", b"null").unwrap();
        assert_eq!(o, None);
        // An event without a payload: `null` to a plugin that takes any JSON.
        let absent: serde_json::Value = decode("Created", b"").unwrap();
        assert_eq!(absent, serde_json::Value::Null);
    }
}
