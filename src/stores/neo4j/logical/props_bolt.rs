//! A line's stored properties (`{key: [TYPE, value]}`, see
//! `docs/neo4j-logical.md`) decoded into Bolt values for the restore's
//! `UNWIND $rows` and for the offline check: each property goes from JSON
//! text to its Bolt value in one step (no intermediate JSON tree). The
//! reverse of `props_json.rs`.

use std::borrow::Cow;
use std::fmt;

use base64::Engine;
use neo4rs::BoltType;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;

/// The stored types Cypher must convert back (temporal values, points), with
/// the function that does it; each also comes as a list (`LIST<DATE>` …).
/// Any other type Bolt cannot carry as stored is refused: converting it
/// would give null, and so silently not restore it.
const SPECIAL_TYPES: [(&str, &str); 7] = [
    ("DATE", "date"),
    ("LOCAL TIME", "localtime"),
    ("ZONED TIME", "time"),
    ("LOCAL DATETIME", "localdatetime"),
    ("ZONED DATETIME", "datetime"),
    ("DURATION", "duration"),
    ("POINT", "point"),
];

/// Whether `kind` is one of [`SPECIAL_TYPES`] or a list of one.
fn is_special(kind: &str) -> bool {
    let element = kind
        .strip_prefix("LIST<")
        .and_then(|k| k.strip_suffix('>'))
        .unwrap_or(kind);
    SPECIAL_TYPES.iter().any(|(special, _)| *special == element)
}

/// Cypher that turns a stored special value `s = [key, type, value]` back into
/// its Neo4j type, made from [`SPECIAL_TYPES`].
pub(super) fn special_cypher() -> &'static str {
    static CASE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CASE.get_or_init(|| {
        let mut case = String::from("CASE s[1]");
        for (kind, function) in SPECIAL_TYPES {
            case.push_str(&format!(" WHEN '{kind}' THEN {function}(s[2])"));
            case.push_str(&format!(
                " WHEN 'LIST<{kind}>' THEN [v IN s[2] | {function}(v)]"
            ));
        }
        case.push_str(" END");
        case
    })
}

/// Only a line's properties (the rest of the line is skipped).
#[derive(Deserialize)]
pub(super) struct PropsOf {
    #[serde(default)]
    pub props: Option<TypedProps>,
}

/// Stored properties `{key: [TYPE, value]}` as Bolt: the values Bolt can carry
/// as they are, and `[key, TYPE, value]` for those Cypher must convert
/// (temporal values, points; see [`SPECIAL_TYPES`]).
#[derive(Default)]
pub(super) struct TypedProps {
    pub direct: neo4rs::BoltMap,
    pub special: Vec<BoltType>,
}

/// The scalar property types that Bolt carries as they are stored.
#[derive(Clone, Copy)]
enum Scalar {
    Integer,
    Float,
    String,
    Boolean,
    Bytes,
}

impl Scalar {
    fn of(kind: &str) -> Option<Scalar> {
        Some(match kind {
            "INTEGER" => Scalar::Integer,
            "FLOAT" => Scalar::Float,
            "STRING" => Scalar::String,
            "BOOLEAN" => Scalar::Boolean,
            "BYTES" => Scalar::Bytes,
            _ => return None,
        })
    }
}

impl<'de> Deserialize<'de> for TypedProps {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        deserializer.deserialize_map(PropsVisitor)
    }
}

struct PropsVisitor;

impl<'de> Visitor<'de> for PropsVisitor {
    type Value = TypedProps;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a map of property name to [type, value]")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<TypedProps, A::Error> {
        let mut props = TypedProps {
            direct: neo4rs::BoltMap::with_capacity(map.size_hint().unwrap_or(8)),
            special: Vec::new(),
        };
        while let Some(key) = map.next_key::<String>()? {
            match map.next_value_seed(TypedSeed)? {
                Typed::Direct(value) => props.direct.put(key.into(), value),
                Typed::Special(kind, value) => {
                    props
                        .special
                        .push(BoltType::List(neo4rs::BoltList::from(vec![
                            BoltType::from(key),
                            BoltType::from(kind),
                            json_to_bolt(&value),
                        ])))
                }
            }
        }
        Ok(props)
    }
}

enum Typed {
    Direct(BoltType),
    Special(String, Value),
}

/// `[TYPE, value]`: the type read first decides how the value is read.
struct TypedSeed;

impl<'de> DeserializeSeed<'de> for TypedSeed {
    type Value = Typed;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<Typed, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for TypedSeed {
    type Value = Typed;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("[type, value]")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<Typed, A::Error> {
        let kind: Cow<'de, str> = seq
            .next_element()?
            .ok_or_else(|| de::Error::invalid_length(0, &self))?;
        let list_of = kind
            .strip_prefix("LIST<")
            .and_then(|k| k.strip_suffix('>'))
            .and_then(Scalar::of);
        let typed = if let Some(scalar) = Scalar::of(&kind) {
            seq.next_element_seed(ScalarSeed(scalar))?
                .map(Typed::Direct)
        } else if let Some(scalar) = list_of {
            seq.next_element_seed(ListSeed(scalar))?.map(Typed::Direct)
        } else if kind == "LIST<NOTHING>" {
            // An empty list: Cypher cannot tell what it was to hold.
            seq.next_element_seed(ListSeed(Scalar::String))?
                .map(Typed::Direct)
        } else if is_special(&kind) {
            seq.next_element::<Value>()?
                .map(|value| Typed::Special(kind.into_owned(), value))
        } else {
            return Err(de::Error::custom(format!("unknown property type '{kind}'")));
        };
        let typed = typed.ok_or_else(|| de::Error::invalid_length(1, &self))?;
        if seq.next_element::<IgnoredAny>()?.is_some() {
            return Err(de::Error::invalid_length(3, &self));
        }
        Ok(typed)
    }
}

/// One stored scalar: integers exact, floats also as "NaN"/"Infinity"/"-Infinity",
/// byte arrays in base64.
struct ScalarSeed(Scalar);

impl<'de> DeserializeSeed<'de> for ScalarSeed {
    type Value = BoltType;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<BoltType, D::Error> {
        Ok(match self.0 {
            Scalar::Integer => BoltType::from(i64::deserialize(d)?),
            Scalar::Float => BoltType::from(d.deserialize_any(FloatVisitor)?),
            Scalar::String => BoltType::from(String::deserialize(d)?),
            Scalar::Boolean => BoltType::from(bool::deserialize(d)?),
            Scalar::Bytes => {
                let text: Cow<'de, str> = Deserialize::deserialize(d)?;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(text.as_bytes())
                    .map_err(|e| de::Error::custom(format!("bytes not in base64: {e}")))?;
                BoltType::Bytes(neo4rs::BoltBytes::new(bytes::Bytes::from(bytes)))
            }
        })
    }
}

struct FloatVisitor;

impl Visitor<'_> for FloatVisitor {
    type Value = f64;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a number, \"NaN\", \"Infinity\" or \"-Infinity\"")
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<f64, E> {
        Ok(v)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<f64, E> {
        Ok(v as f64)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<f64, E> {
        Ok(v as f64)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<f64, E> {
        match v {
            "NaN" => Ok(f64::NAN),
            "Infinity" => Ok(f64::INFINITY),
            "-Infinity" => Ok(f64::NEG_INFINITY),
            _ => Err(E::invalid_value(de::Unexpected::Str(v), &self)),
        }
    }
}

/// A list of one scalar type.
struct ListSeed(Scalar);

impl<'de> DeserializeSeed<'de> for ListSeed {
    type Value = BoltType;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> std::result::Result<BoltType, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ListSeed {
    type Value = BoltType;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<BoltType, A::Error> {
        let mut items = neo4rs::BoltList::with_capacity(seq.size_hint().unwrap_or(4));
        while let Some(item) = seq.next_element_seed(ScalarSeed(self.0))? {
            items.push(item);
        }
        Ok(BoltType::List(items))
    }
}

/// A JSON value (point maps, temporal strings, their lists) as Bolt.
fn json_to_bolt(value: &Value) -> BoltType {
    match value {
        Value::Null => BoltType::Null(neo4rs::BoltNull),
        Value::Bool(b) => BoltType::from(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => BoltType::from(i),
            None => BoltType::from(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => BoltType::from(s.clone()),
        Value::Array(items) => BoltType::List(neo4rs::BoltList::from(
            items.iter().map(json_to_bolt).collect::<Vec<_>>(),
        )),
        Value::Object(map) => {
            let mut out = neo4rs::BoltMap::new();
            for (k, v) in map {
                out.put(k.as_str().into(), json_to_bolt(v));
            }
            BoltType::Map(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_types_and_their_lists_are_converted_and_nothing_else() {
        for kind in ["DATE", "ZONED TIME", "LIST<POINT>", "LIST<DURATION>"] {
            assert!(is_special(kind), "{kind}");
        }
        for kind in ["MYSTERY", "LIST<MYSTERY>", "STRING", "LIST<>"] {
            assert!(!is_special(kind), "{kind}");
        }
        let case = special_cypher();
        assert!(
            case.starts_with("CASE s[1] ") && case.ends_with(" END"),
            "{case}"
        );
        assert!(
            case.contains(" WHEN 'ZONED TIME' THEN time(s[2])"),
            "{case}"
        );
        assert!(
            case.contains(" WHEN 'LIST<ZONED TIME>' THEN [v IN s[2] | time(v)]"),
            "{case}"
        );
        assert_eq!(case.matches(" WHEN ").count(), 2 * SPECIAL_TYPES.len());
    }

    fn decode(line: &str) -> TypedProps {
        serde_json::from_str::<PropsOf>(line)
            .unwrap()
            .props
            .unwrap_or_default()
    }

    #[test]
    fn stored_values_decode_to_bolt() {
        let props = decode(
            r#"{"type":"node","props":{"big":["INTEGER",9007199254740993],"nan":["FLOAT","NaN"],
            "inf":["FLOAT","-Infinity"],"f":["FLOAT",2],"b":["BYTES","AAEC/w=="],"l":["LIST<INTEGER>",[1,-2]],
            "s":["STRING","x\"y"],"t":["BOOLEAN",true],"z":["ZONED DATETIME","2024-01-01T00:00Z[Europe/Paris]"],
            "e":["LIST<NOTHING>",[]]}}"#,
        );
        assert_eq!(props.direct.len(), 9);
        assert!(props.direct.get::<Vec<String>>("e").unwrap().is_empty());
        assert_eq!(props.direct.get::<i64>("big").unwrap(), 9007199254740993);
        assert!(props.direct.get::<f64>("nan").unwrap().is_nan());
        assert_eq!(props.direct.get::<f64>("f").unwrap(), 2.0);
        assert_eq!(props.direct.get::<Vec<i64>>("l").unwrap(), vec![1, -2]);
        assert_eq!(props.direct.get::<String>("s").unwrap(), "x\"y");
        assert_eq!(props.special.len(), 1);
    }

    #[test]
    fn malformed_values_are_refused() {
        for bad in [
            r#"{"props":{"a":["INTEGER","12"]}}"#,
            r#"{"props":{"a":["INTEGER"]}}"#,
            r#"{"props":{"a":["FLOAT","many"]}}"#,
            r#"{"props":{"a":["BYTES","not base64!"]}}"#,
            r#"{"props":{"a":["STRING","x",3]}}"#,
            r#"{"props":{"a":[7,"x"]}}"#,
            r#"{"props":{"a":["MYSTERY","x"]}}"#,
        ] {
            assert!(serde_json::from_str::<PropsOf>(bad).is_err(), "{bad}");
        }
    }
}
