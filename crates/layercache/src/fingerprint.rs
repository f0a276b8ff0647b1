//! The type fingerprint: a 64-bit digest of a value type's serde *shape*, stored in every
//! envelope beside the region's `schema_version`, so bytes written as one type are never read
//! as another.
//!
//! The shape is traced through the type's own `Deserialize` impl with a deserializer that
//! produces no data of its own: every `deserialize_*` call the impl makes is recorded (the
//! primitive asked for, struct and enum names, field and variant names, tuple lengths), and the
//! visitor is fed a harmless value so the trace goes on into nested types. Enums are traced
//! once per variant (the trace is repeated, each time taking each enum's next variant, until
//! every variant of every enum met was visited, at most [`MAX_RUNS`] times). Sequences, maps and
//! options are entered once, up to [`MAX_DEPTH`] levels, which also ends recursive types.
//!
//! What it catches: a field added, removed, renamed or retyped; fields reordered; a struct or
//! enum renamed (its serde name); a variant added, removed, renamed or reshaped; `u64` against
//! `(bool, u32)`; `Vec<T>` against `Option<T>`. What it cannot catch: a change of meaning with
//! the same shape (a field now in milliseconds instead of seconds), a `#[serde(rename)]` that
//! keeps the old serialized name on purpose, a hand-written `Deserialize` that reads something
//! else than its `Serialize` writes, shapes decided by data at run time (`deserialize_any`, as
//! in `#[serde(untagged)]` or `serde_json::Value`, traces as one opaque token), and a type whose
//! `Deserialize` rejects the tracer's harmless values (its trace stops there, so differences
//! after that point go unseen). A region's `schema_version` remains the explicit way to say "the
//! meaning changed".
//!
//! Cost: one trace per region build (microseconds), eight bytes per stored entry, one
//! comparison per Redis read.

use std::{collections::BTreeMap, fmt};

use serde::de::{
    self, value::U32Deserializer, DeserializeOwned, DeserializeSeed, EnumAccess, IntoDeserializer,
    MapAccess, SeqAccess, VariantAccess, Visitor,
};

/// How deep the trace enters nested sequences, maps, options and enums.
const MAX_DEPTH: usize = 24;
/// The most traces of one type (enough for every variant of enums with up to this many).
const MAX_RUNS: usize = 256;
/// Bumped whenever the trace's tokens change, so two builds never compare unlike digests.
const TRACER_VERSION: u8 = 1;

/// The fingerprint of `V`'s serde shape.
pub(crate) fn of<V: DeserializeOwned>() -> u64 {
    let mut tracer = Tracer::default();
    tracer.out.push(TRACER_VERSION);
    for _ in 0..MAX_RUNS {
        tracer.depth = 0;
        tracer.out.extend_from_slice(b"\n#run\n");
        // An error ends this run's trace; what was recorded up to it stands.
        let _ = V::deserialize(&mut tracer);
        if tracer.enums.values().all(|e| e.next >= e.variants) {
            break;
        }
    }
    fnv1a(&tracer.out)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// How far the trace has gone through one enum's variants.
#[derive(Debug)]
struct EnumProgress {
    next: usize,
    variants: usize,
}

#[derive(Debug, Default)]
struct Tracer {
    out: Vec<u8>,
    depth: usize,
    /// Keyed by the enum's name and variant names.
    enums: BTreeMap<String, EnumProgress>,
}

impl Tracer {
    fn token(&mut self, t: &str) {
        self.out.extend_from_slice(t.as_bytes());
        self.out.push(b';');
    }

    fn names(&mut self, names: &[&str]) {
        for n in names {
            self.out.extend_from_slice(n.as_bytes());
            self.out.push(b',');
        }
        self.out.push(b';');
    }

    fn deeper(&self) -> bool {
        self.depth < MAX_DEPTH
    }
}

/// The tracer's error: it only ever ends a trace.
#[derive(Debug)]
struct Stop(String);

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self(msg.to_string())
    }
}

macro_rules! primitive {
    ($method:ident, $visit:ident, $value:expr) => {
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
            self.token(stringify!($method));
            visitor.$visit($value)
        }
    };
}

impl<'de> de::Deserializer<'de> for &mut Tracer {
    type Error = Stop;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        self.token("any");
        visitor.visit_unit()
    }

    primitive!(deserialize_bool, visit_bool, false);
    primitive!(deserialize_i8, visit_i8, 1);
    primitive!(deserialize_i16, visit_i16, 1);
    primitive!(deserialize_i32, visit_i32, 1);
    primitive!(deserialize_i64, visit_i64, 1);
    primitive!(deserialize_i128, visit_i128, 1);
    primitive!(deserialize_u8, visit_u8, 1);
    primitive!(deserialize_u16, visit_u16, 1);
    primitive!(deserialize_u32, visit_u32, 1);
    primitive!(deserialize_u64, visit_u64, 1);
    primitive!(deserialize_u128, visit_u128, 1);
    primitive!(deserialize_f32, visit_f32, 1.0);
    primitive!(deserialize_f64, visit_f64, 1.0);
    primitive!(deserialize_char, visit_char, 'a');
    primitive!(deserialize_str, visit_str, "");
    primitive!(deserialize_string, visit_str, "");
    primitive!(deserialize_bytes, visit_bytes, &[]);
    primitive!(deserialize_byte_buf, visit_bytes, &[]);
    primitive!(deserialize_identifier, visit_u64, 0);

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        self.token("unit");
        visitor.visit_unit()
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        self.token("ignored");
        visitor.visit_unit()
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        self.token("option");
        if !self.deeper() {
            return visitor.visit_none();
        }
        self.depth += 1;
        let r = visitor.visit_some(&mut *self);
        self.depth -= 1;
        r
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Stop> {
        self.token("unit_struct");
        self.token(name);
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Stop> {
        self.token("newtype");
        self.token(name);
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        self.token("seq");
        let n = usize::from(self.deeper());
        self.elements(n, visitor)
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Stop> {
        self.token("tuple");
        self.token(&len.to_string());
        self.elements(len, visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, Stop> {
        self.token("tuple_struct");
        self.token(name);
        self.token(&len.to_string());
        self.elements(len, visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        self.token("map");
        let entries = usize::from(self.deeper());
        self.depth += 1;
        let r = visitor.visit_map(Entries {
            tracer: &mut *self,
            left: entries,
        });
        self.depth -= 1;
        r
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Stop> {
        self.token("struct");
        self.token(name);
        self.names(fields);
        self.elements(fields.len(), visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Stop> {
        self.token("enum");
        self.token(name);
        self.names(variants);
        if !self.deeper() || variants.is_empty() {
            return Err(Stop("enum too deep or without variants".into()));
        }
        let key = format!("{name}:{variants:?}");
        let progress = self.enums.entry(key).or_insert(EnumProgress {
            next: 0,
            variants: variants.len(),
        });
        let index = progress.next % variants.len();
        progress.next += 1;
        self.token(&format!("variant {index}"));
        self.depth += 1;
        let r = visitor.visit_enum(Variant {
            tracer: &mut *self,
            index: u32::try_from(index).unwrap_or(u32::MAX),
        });
        self.depth -= 1;
        r
    }

    fn is_human_readable(&self) -> bool {
        // As the binary codecs (bincode, postcard): types that serialize differently for
        // humans take their binary shape.
        false
    }
}

impl Tracer {
    fn elements<'de, V: Visitor<'de>>(&mut self, n: usize, visitor: V) -> Result<V::Value, Stop> {
        self.depth += 1;
        let r = visitor.visit_seq(Elements {
            tracer: &mut *self,
            left: n,
        });
        self.depth -= 1;
        r
    }
}

struct Elements<'a> {
    tracer: &'a mut Tracer,
    left: usize,
}

impl<'de> SeqAccess<'de> for Elements<'_> {
    type Error = Stop;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Stop> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.tracer).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left)
    }
}

struct Entries<'a> {
    tracer: &'a mut Tracer,
    left: usize,
}

impl<'de> MapAccess<'de> for Entries<'_> {
    type Error = Stop;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Stop> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        self.tracer.token("key");
        seed.deserialize(&mut *self.tracer).map(Some)
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, Stop> {
        self.tracer.token("value");
        seed.deserialize(&mut *self.tracer)
    }
}

struct Variant<'a> {
    tracer: &'a mut Tracer,
    index: u32,
}

impl<'de, 'a> EnumAccess<'de> for Variant<'a> {
    type Error = Stop;
    type Variant = Self;

    fn variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<(T::Value, Self), Stop> {
        let id: U32Deserializer<Stop> = self.index.into_deserializer();
        let v = seed.deserialize(id)?;
        Ok((v, self))
    }
}

impl<'de> VariantAccess<'de> for Variant<'_> {
    type Error = Stop;

    fn unit_variant(self) -> Result<(), Stop> {
        self.tracer.token("unit_variant");
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, Stop> {
        self.tracer.token("newtype_variant");
        seed.deserialize(&mut *self.tracer)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, Stop> {
        self.tracer.token("tuple_variant");
        self.tracer.token(&len.to_string());
        self.tracer.elements(len, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Stop> {
        self.tracer.token("struct_variant");
        self.tracer.names(fields);
        self.tracer.elements(fields.len(), visitor)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use serde::Deserialize;

    use super::of;

    #[derive(Deserialize)]
    #[expect(dead_code, reason = "only the shape matters")]
    struct A {
        a: u64,
    }
    #[derive(Deserialize)]
    #[expect(dead_code, reason = "only the shape matters")]
    struct B {
        b: String,
    }
    #[derive(Deserialize)]
    #[expect(dead_code, reason = "only the shape matters")]
    #[serde(rename = "A")]
    struct ARenamedField {
        b: u64,
    }
    #[derive(Deserialize)]
    #[expect(dead_code, reason = "only the shape matters")]
    struct Pair {
        x: u32,
        y: String,
    }
    #[derive(Deserialize)]
    #[expect(dead_code, reason = "only the shape matters")]
    #[serde(rename = "Pair")]
    struct PairReordered {
        y: String,
        x: u32,
    }
    #[derive(Deserialize)]
    #[expect(dead_code, reason = "only the shape matters")]
    enum E2 {
        One,
        Two(u8),
    }
    #[derive(Deserialize)]
    #[expect(dead_code, reason = "only the shape matters")]
    #[serde(rename = "E2")]
    enum E3 {
        One,
        Two(u8),
        Three { z: bool },
    }
    #[derive(Deserialize)]
    #[expect(dead_code, reason = "only the shape matters")]
    #[serde(rename = "E2")]
    enum E2Reshaped {
        One,
        Two(u16),
    }
    #[derive(Deserialize)]
    #[expect(dead_code, reason = "only the shape matters")]
    enum List {
        Cons(u8, Box<List>),
        Nil,
    }
    #[derive(Deserialize)]
    #[expect(dead_code, reason = "only the shape matters")]
    struct Tree {
        children: Vec<Tree>,
        parent: Option<Box<Tree>>,
    }

    #[test]
    fn shapes_that_differ_have_different_fingerprints() {
        let all = [
            ("A", of::<A>()),
            ("B", of::<B>()),
            ("A renamed field", of::<ARenamedField>()),
            ("u64", of::<u64>()),
            ("(bool, u32)", of::<(bool, u32)>()),
            ("Pair", of::<Pair>()),
            ("Pair reordered", of::<PairReordered>()),
            ("E2", of::<E2>()),
            ("E3", of::<E3>()),
            ("E2 reshaped", of::<E2Reshaped>()),
            ("Vec<u8>", of::<Vec<u8>>()),
            ("Option<u8>", of::<Option<u8>>()),
            ("String", of::<String>()),
            ("BTreeMap<String, u8>", of::<BTreeMap<String, u8>>()),
            ("HashMap<String, u16>", of::<HashMap<String, u16>>()),
            ("List", of::<List>()),
            ("Tree", of::<Tree>()),
        ];
        for (i, (a, fa)) in all.iter().enumerate() {
            for (b, fb) in &all[i + 1..] {
                assert_ne!(fa, fb, "{a} and {b}");
            }
        }
    }

    #[test]
    fn the_fingerprint_is_stable() {
        assert_eq!(of::<A>(), of::<A>());
        assert_eq!(of::<List>(), of::<List>());
        // A map type's shape is its entries', whatever the map.
        assert_eq!(of::<HashMap<String, u8>>(), of::<BTreeMap<String, u8>>());
        // Pinned: a change of this value changes what every deployed instance compares, so it
        // must come with a TRACER_VERSION bump.
        assert_eq!(of::<u64>(), 0xeb9e_f0c8_0dd1_cb84, "{:#x}", of::<u64>());
    }
}
