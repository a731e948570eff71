//! The export's `props` column — `[[key, valueType, value], …]` from the
//! `PROPS` projection — written straight from the Bolt row into the line's
//! JSON as `{"key":["TYPE",value],…}`: no copy of the row's values, no JSON
//! tree in between. It reads the row through neo4rs's serde support, as
//! every `Row::get` does.
//!
//! The forms (see `docs/neo4j-logical.md`): integers arrive as decimal text
//! (neo4rs 0.8 misreads the Bolt tiny integers) and are written as JSON
//! integers; floats as JSON numbers or "NaN"/"Infinity"/"-Infinity"; a
//! `LIST<INTEGER>` arrives as `{raw, text}` and is a byte array (`BYTES`, in
//! base64) when `raw` is Bolt bytes; maps (points) without their null entries.

use std::fmt;

use base64::Engine;
use neo4rs::BoltType;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

/// One row's properties as the JSON object text of its line.
pub(super) struct PropsJson(pub Vec<u8>);

impl<'de> Deserialize<'de> for PropsJson {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct ListVisitor;
        impl<'de> Visitor<'de> for ListVisitor {
            type Value = PropsJson;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of [key, type, value]")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<PropsJson, A::Error> {
                let mut out = Vec::with_capacity(256);
                let mut value = Vec::new();
                out.push(b'{');
                let mut first = true;
                while seq
                    .next_element_seed(Property {
                        out: &mut out,
                        value: &mut value,
                        first,
                    })?
                    .is_some()
                {
                    first = false;
                }
                out.push(b'}');
                Ok(PropsJson(out))
            }
            fn visit_unit<E: de::Error>(self) -> Result<PropsJson, E> {
                Ok(PropsJson(b"{}".to_vec()))
            }
        }
        d.deserialize_any(ListVisitor)
    }
}

/// `[key, valueType, value]` → `"key":["TYPE",value]`.
struct Property<'o> {
    out: &'o mut Vec<u8>,
    /// Scratch for the value, written before its type is final.
    value: &'o mut Vec<u8>,
    first: bool,
}

impl<'de> DeserializeSeed<'de> for Property<'_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Property<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("[key, type, value]")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let missing = || de::Error::custom("a property is not [key, type, value]");
        let key: &str = seq.next_element()?.ok_or_else(missing)?;
        let kind: &str = seq.next_element()?.ok_or_else(missing)?;
        let kind = normal_type(kind);
        self.value.clear();
        let integers = kind == "INTEGER" || kind == "LIST<INTEGER>";
        let shape = if integers {
            seq.next_element_seed(Integers { out: self.value })?
        } else {
            seq.next_element_seed(Json { out: self.value })?
        }
        .ok_or_else(missing)?;
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        if !self.first {
            self.out.push(b',');
        }
        write_str(self.out, key);
        self.out.extend_from_slice(b":[");
        write_str(
            self.out,
            if shape == Shape::Bytes {
                "BYTES"
            } else {
                &kind
            },
        );
        self.out.push(b',');
        self.out.extend_from_slice(self.value);
        self.out.push(b']');
        Ok(())
    }
}

/// `LIST<INTEGER NOT NULL> NOT NULL` → `LIST<INTEGER>`.
pub(super) fn normal_type(value_type: &str) -> std::borrow::Cow<'_, str> {
    let kind = value_type.strip_suffix(" NOT NULL").unwrap_or(value_type);
    if kind.contains(" NOT NULL") {
        kind.replace(" NOT NULL", "").into()
    } else {
        kind.into()
    }
}

fn write_str(out: &mut Vec<u8>, text: &str) {
    serde_json::to_writer(out, text).expect("a string serialises");
}

fn write_json<T: serde::Serialize>(out: &mut Vec<u8>, value: T) {
    serde_json::to_writer(out, &value).expect("a number serialises");
}

fn write_base64(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(b'"');
    out.extend_from_slice(
        base64::engine::general_purpose::STANDARD
            .encode(bytes)
            .as_bytes(),
    );
    out.push(b'"');
}

/// What a value turned out to be.
#[derive(PartialEq, Eq, Clone, Copy)]
enum Shape {
    Null,
    /// One byte of a Bolt byte array (which serde presents as a sequence of u8).
    Byte(u8),
    Bytes,
    Other,
}

/// Any value as JSON: integers exact, non-finite floats as strings, byte
/// arrays in base64, maps without null entries.
struct Json<'o> {
    out: &'o mut Vec<u8>,
}

impl<'de> DeserializeSeed<'de> for Json<'_> {
    type Value = Shape;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Shape, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Json<'_> {
    type Value = Shape;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a property value")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Shape, E> {
        self.out.extend_from_slice(b"null");
        Ok(Shape::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Shape, E> {
        self.visit_unit()
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Shape, E> {
        write_json(self.out, v);
        Ok(Shape::Other)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Shape, E> {
        write_json(self.out, v);
        Ok(Shape::Other)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Shape, E> {
        write_json(self.out, v);
        Ok(Shape::Other)
    }
    fn visit_u8<E: de::Error>(self, v: u8) -> Result<Shape, E> {
        write_json(self.out, v);
        Ok(Shape::Byte(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Shape, E> {
        if v.is_finite() {
            write_json(self.out, v);
        } else if v.is_nan() {
            write_str(self.out, "NaN");
        } else if v > 0.0 {
            write_str(self.out, "Infinity");
        } else {
            write_str(self.out, "-Infinity");
        }
        Ok(Shape::Other)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Shape, E> {
        write_str(self.out, v);
        Ok(Shape::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Shape, A::Error> {
        let start = self.out.len();
        let mut bytes = Vec::new();
        self.out.push(b'[');
        let mut first = true;
        loop {
            let comma = self.out.len();
            if !first {
                self.out.push(b',');
            }
            match seq.next_element_seed(Json { out: self.out })? {
                None => {
                    self.out.truncate(comma);
                    break;
                }
                Some(Shape::Byte(b)) => bytes.push(b),
                Some(_) => {}
            }
            first = false;
        }
        if !bytes.is_empty() {
            // A byte array: its base64 text instead of the numbers.
            self.out.truncate(start);
            write_base64(self.out, &bytes);
            return Ok(Shape::Bytes);
        }
        self.out.push(b']');
        Ok(Shape::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shape, A::Error> {
        self.out.push(b'{');
        let mut first = true;
        while let Some(key) = map.next_key::<&str>()? {
            let entry = self.out.len();
            if !first {
                self.out.push(b',');
            }
            write_str(self.out, key);
            self.out.push(b':');
            if map.next_value_seed(Json { out: self.out })? == Shape::Null {
                self.out.truncate(entry);
            } else {
                first = false;
            }
        }
        self.out.push(b'}');
        Ok(Shape::Other)
    }
}

/// An `INTEGER` (decimal text) or a `LIST<INTEGER>` (`{raw, text}`) as JSON
/// integers, or as a byte array when `raw` is Bolt bytes.
struct Integers<'o> {
    out: &'o mut Vec<u8>,
}

impl<'de> DeserializeSeed<'de> for Integers<'_> {
    type Value = Shape;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Shape, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Integers<'_> {
    type Value = Shape;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an integer as text, or {raw, text}")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Shape, E> {
        let n: i64 = v
            .parse()
            .map_err(|_| E::custom(format!("'{v}' is not an integer")))?;
        write_json(self.out, n);
        Ok(Shape::Other)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Shape, E> {
        write_json(self.out, v);
        Ok(Shape::Other)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Shape, E> {
        Json { out: self.out }.visit_unit()
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Shape, A::Error> {
        self.out.push(b'[');
        let mut first = true;
        loop {
            let comma = self.out.len();
            if !first {
                self.out.push(b',');
            }
            if seq.next_element_seed(Integers { out: self.out })?.is_none() {
                self.out.truncate(comma);
                break;
            }
            first = false;
        }
        self.out.push(b']');
        Ok(Shape::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Shape, A::Error> {
        // `raw` is read as a Bolt value only to tell bytes from integers (an
        // empty byte array looks like an empty list through serde).
        let mut bytes = None;
        let mut text = None;
        while let Some(key) = map.next_key::<&str>()? {
            match key {
                "raw" => {
                    if let BoltType::Bytes(b) = map.next_value::<BoltType>()? {
                        bytes = Some(b.value);
                    }
                }
                "text" => {
                    let mut list = Vec::new();
                    map.next_value_seed(Integers { out: &mut list })?;
                    text = Some(list);
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        match (bytes, text) {
            (Some(bytes), _) => {
                write_base64(self.out, &bytes);
                Ok(Shape::Bytes)
            }
            (None, Some(text)) => {
                self.out.extend_from_slice(&text);
                Ok(Shape::Other)
            }
            (None, None) => Err(de::Error::custom("a LIST<INTEGER> without raw or text")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(props: BoltType) -> String {
        // As `Row::get` reads a column.
        let mut row = neo4rs::BoltMap::new();
        row.put("props".into(), props);
        String::from_utf8(row.get::<PropsJson>("props").unwrap().0).unwrap()
    }

    fn triple(key: &str, kind: &str, value: BoltType) -> BoltType {
        BoltType::List(neo4rs::BoltList::from(vec![
            BoltType::from(key),
            BoltType::from(kind),
            value,
        ]))
    }

    #[test]
    fn properties_are_written_in_their_stored_forms() {
        let mut point = neo4rs::BoltMap::new();
        point.put("srid".into(), BoltType::from(4326i64));
        point.put("z".into(), BoltType::Null(neo4rs::BoltNull));
        let mut ints = neo4rs::BoltMap::new();
        ints.put(
            "raw".into(),
            BoltType::List(neo4rs::BoltList::from(vec![BoltType::from(1i64)])),
        );
        ints.put(
            "text".into(),
            BoltType::List(neo4rs::BoltList::from(vec![BoltType::from("-3")])),
        );
        let mut bytes = neo4rs::BoltMap::new();
        bytes.put(
            "raw".into(),
            BoltType::Bytes(neo4rs::BoltBytes::new(bytes::Bytes::from_static(&[]))),
        );
        bytes.put(
            "text".into(),
            BoltType::List(neo4rs::BoltList::from(Vec::<BoltType>::new())),
        );
        let props = BoltType::List(neo4rs::BoltList::from(vec![
            triple("n", "INTEGER NOT NULL", BoltType::from("-9007199254740993")),
            triple("f", "FLOAT NOT NULL", BoltType::from(f64::NEG_INFINITY)),
            triple("s", "STRING NOT NULL", BoltType::from("a\"b")),
            triple("p", "POINT NOT NULL", BoltType::Map(point)),
            triple("l", "LIST<INTEGER NOT NULL> NOT NULL", BoltType::Map(ints)),
            triple("b", "LIST<INTEGER NOT NULL> NOT NULL", BoltType::Map(bytes)),
        ]));
        assert_eq!(
            text(props),
            r#"{"n":["INTEGER",-9007199254740993],"f":["FLOAT","-Infinity"],"s":["STRING","a\"b"],"p":["POINT",{"srid":4326}],"l":["LIST<INTEGER>",[-3]],"b":["BYTES",""]}"#
        );
        assert_eq!(
            text(BoltType::List(neo4rs::BoltList::new())),
            "{}".to_string()
        );
        assert_eq!(
            normal_type("LIST<INTEGER NOT NULL> NOT NULL"),
            "LIST<INTEGER>"
        );
    }
}
