//! `npkio.json`: what NumPack 0.7 cannot say, kept beside its files.
//!
//! NumPack 0.7 ignores files it does not know, so npkio records here, per array, the true
//! dtype and shape when they differ from what the metadata can hold (BF16 stored as uint16,
//! FP8 as uint8, F4/F6 as uint8 bytes, a 0-d tensor stored as shape `[1]`), and the
//! SafeTensors `__metadata__` map of the source, in its original order.
//!
//! An entry applies only while the metadata record still matches it exactly (dtype code,
//! shape, size and `last_modified`): if another tool rewrites the array, the entry is
//! ignored rather than misapplied. The format is documented in `docs/format.md`.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::dtype::DType;
use crate::numpack::metadata::ArrayRecord;

/// File name of the sidecar inside the directory.
pub const FILE_NAME: &str = "npkio.json";
/// Largest sidecar npkio reads.
pub const MAX_LEN: u64 = 256 << 20;

/// The whole sidecar, written by [`Sidecar::encode`] and [`Sidecar::encode_with`] alone.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct Sidecar {
    /// Always `"npkio"`.
    #[serde(default = "format_name")]
    pub format: String,
    /// Sidecar version, 1.
    #[serde(default = "one")]
    pub version: u32,
    /// The SafeTensors `__metadata__` (key, value) pairs in order; `None` when the source had
    /// no `__metadata__` at all (an empty list is a present but empty map).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Vec<(String, String)>>,
    /// Per-array entries, sorted by name.
    #[serde(default)]
    pub arrays: Vec<Entry>,
    /// How the SafeTensors source was sharded, when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sharding: Option<Sharding>,
    /// The source file's header JSON, kept only when the `safetensors` crate would lay the
    /// same tensors out differently (another writer's order, spacing or padding): exporting
    /// the same tensors writes it back, so that the file comes back byte-identical.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_header: Option<String>,
    /// Present only while a change of the store-wide fields above is being published (see
    /// [`Next`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<Next>,
}

/// The store-wide fields (`metadata`, `sharding`, `source_header`) as a change being
/// published makes them: they apply instead of the sidecar's own while `metadata.npkm` is
/// exactly the one that change writes (its SHA-256 is `for_metadata`).
///
/// Per-array entries carry their own record and are valid for either generation; these
/// fields are tied to no record, so the sidecar written before the commit (the rename of
/// `metadata.npkm`) says which `metadata.npkm` they belong to. Whichever file a crash
/// leaves, the store reads with the fields of that generation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Next {
    /// Lowercase hex SHA-256 of the `metadata.npkm` these fields belong to.
    pub for_metadata: String,
    /// As [`Sidecar::metadata`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Vec<(String, String)>>,
    /// As [`Sidecar::sharding`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sharding: Option<Sharding>,
    /// As [`Sidecar::source_header`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_header: Option<String>,
}

/// The lowercase hex SHA-256 of `metadata.npkm`'s bytes, as [`Next::for_metadata`] holds it.
pub fn metadata_digest(metadata_bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(metadata_bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The shard layout of a sharded SafeTensors source, kept so that exporting with the same
/// shard size limit writes the same shards and index.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sharding {
    /// The index file's text, written again verbatim when the new index says the same.
    pub index: String,
    /// The shards in order.
    pub shards: Vec<ShardRecord>,
}

/// One shard of a sharded source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardRecord {
    /// Its file name.
    pub file: String,
    /// Its `__metadata__` pairs, `None` when it had none.
    pub metadata: Option<Vec<(String, String)>>,
    /// Its tensors in file order.
    pub tensors: Vec<String>,
    /// Its header JSON, kept only when the crate would lay it out differently.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
}

impl Default for Sidecar {
    fn default() -> Self {
        Sidecar {
            format: format_name(),
            version: 1,
            metadata: None,
            arrays: Vec::new(),
            sharding: None,
            source_header: None,
            next: None,
        }
    }
}

fn format_name() -> String {
    "npkio".into()
}

fn one() -> u32 {
    1
}

/// What npkio knows of one array beyond its metadata record.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Entry {
    /// The array's exact name.
    pub name: String,
    /// True dtype, by SafeTensors name (or `complex128`).
    pub dtype: String,
    /// True shape.
    pub shape: Vec<u64>,
    /// The record this entry describes: dtype code, shape, size and time stamp.
    pub storage_code: u8,
    /// Shape stored in the metadata.
    pub storage_shape: Vec<u64>,
    /// `size_bytes` stored in the metadata.
    pub size_bytes: u64,
    /// `last_modified` stored in the metadata.
    pub last_modified: u64,
}

impl Entry {
    /// An entry for `record` holding `dtype` and `shape`.
    pub fn new(record: &ArrayRecord, dtype: DType, shape: &[u64]) -> Entry {
        Entry {
            name: record.name.clone(),
            dtype: dtype.to_string(),
            shape: shape.to_vec(),
            storage_code: record.dtype_code,
            storage_shape: record.shape.clone(),
            size_bytes: record.size_bytes,
            last_modified: record.last_modified,
        }
    }

    /// The true dtype and shape, when this entry still describes `record` and is coherent
    /// (the true dtype stores under the record's code and its bytes equal the record's).
    pub fn resolve(&self, record: &ArrayRecord) -> Option<(DType, Vec<u64>)> {
        let dtype = resolve(
            &self.name,
            &self.dtype,
            &self.shape,
            (self.storage_code, &self.storage_shape),
            (self.size_bytes, self.last_modified),
            record,
        )?;
        Some((dtype, self.shape.clone()))
    }
}

/// One entry of a sidecar as [`Sidecar::decode_streaming`] hands it over: borrowed from the
/// sidecar's bytes where it can be, kept nowhere.
#[derive(Debug, Deserialize)]
pub struct EntryRef<'a> {
    /// As [`Entry::name`].
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    /// As [`Entry::dtype`].
    #[serde(borrow)]
    pub dtype: Cow<'a, str>,
    /// As [`Entry::shape`].
    pub shape: Dims,
    /// As [`Entry::storage_code`].
    pub storage_code: u8,
    /// As [`Entry::storage_shape`].
    pub storage_shape: Dims,
    /// As [`Entry::size_bytes`].
    pub size_bytes: u64,
    /// As [`Entry::last_modified`].
    pub last_modified: u64,
}

impl EntryRef<'_> {
    /// As [`Entry::resolve`]: the true dtype, when this entry still describes `record` and
    /// is coherent (the shape is `self.shape`).
    pub fn resolve(&self, record: &ArrayRecord) -> Option<DType> {
        resolve(
            &self.name,
            &self.dtype,
            &self.shape,
            (self.storage_code, &self.storage_shape),
            (self.size_bytes, self.last_modified),
            record,
        )
    }

    /// The owned entry.
    pub fn to_entry(&self) -> Entry {
        Entry {
            name: self.name.to_string(),
            dtype: self.dtype.to_string(),
            shape: self.shape.to_vec(),
            storage_code: self.storage_code,
            storage_shape: self.storage_shape.to_vec(),
            size_bytes: self.size_bytes,
            last_modified: self.last_modified,
        }
    }
}

/// A shape as [`EntryRef`] reads it: up to eight dimensions without an allocation.
#[derive(Clone, Debug)]
pub enum Dims {
    /// `len` dimensions in place.
    Inline([u64; 8], u8),
    /// More.
    Heap(Vec<u64>),
}

impl std::ops::Deref for Dims {
    type Target = [u64];

    fn deref(&self) -> &[u64] {
        match self {
            Dims::Inline(d, n) => &d[..usize::from(*n)],
            Dims::Heap(v) => v,
        }
    }
}

impl<'de> Deserialize<'de> for Dims {
    /// As `Vec<u64>` deserializes.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Dims, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Dims;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a sequence")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Dims, A::Error> {
                let mut inline = [0u64; 8];
                let mut n = 0;
                while let Some(x) = seq.next_element::<u64>()? {
                    if n == inline.len() {
                        let mut v = inline.to_vec();
                        v.push(x);
                        while let Some(x) = seq.next_element::<u64>()? {
                            v.push(x);
                        }
                        return Ok(Dims::Heap(v));
                    }
                    inline[n] = x;
                    n += 1;
                }
                Ok(Dims::Inline(inline, n as u8))
            }
        }
        d.deserialize_seq(V)
    }
}

/// The true dtype an entry made of these fields gives `record`, if it applies to it.
fn resolve(
    name: &str,
    dtype: &str,
    shape: &[u64],
    (storage_code, storage_shape): (u8, &[u64]),
    (size_bytes, last_modified): (u64, u64),
    record: &ArrayRecord,
) -> Option<DType> {
    if name != record.name
        || storage_code != record.dtype_code
        || storage_shape != record.shape.as_slice()
        || size_bytes != record.size_bytes
        || last_modified != record.last_modified
    {
        return None;
    }
    let dtype = DType::from_safetensors_name(dtype).or_else(|| DType::from_numpy_name(dtype))?;
    if dtype.storage_code() != record.dtype_code
        || crate::dtype::byte_len(dtype, shape) != Some(record.size_bytes)
    {
        return None;
    }
    Some(dtype)
}

/// A sidecar's fields but its entries, as [`Sidecar::decode_streaming`] returns them.
#[derive(Debug, Default)]
pub struct StoreFields {
    /// As [`Sidecar::metadata`].
    pub metadata: Option<Vec<(String, String)>>,
    /// As [`Sidecar::sharding`].
    pub sharding: Option<Sharding>,
    /// As [`Sidecar::source_header`].
    pub source_header: Option<String>,
    /// As [`Sidecar::next`].
    pub next: Option<Next>,
}

impl StoreFields {
    /// As [`Sidecar::settle`], given the digest of the `metadata.npkm` read with the sidecar
    /// (`None`: not computed, which only a sidecar without `next` may leave).
    pub fn settle(&mut self, metadata_digest: Option<&str>) {
        if let Some(next) = self.next.take() {
            if Some(next.for_metadata.as_str()) == metadata_digest {
                self.metadata = next.metadata;
                self.sharding = next.sharding;
                self.source_header = next.source_header;
            }
        }
    }
}

/// The sidecar's fields, in order.
const FIELDS: [&str; 7] = [
    "format",
    "version",
    "metadata",
    "arrays",
    "sharding",
    "source_header",
    "next",
];

/// Deserializes a sidecar as the derived `Deserialize` of [`Sidecar`] does (same fields,
/// defaults, unknown fields ignored, a field given twice refused), handing each entry of
/// `arrays` to `each` instead of collecting them.
struct Streaming<F>(F);

impl<'de, F: FnMut(EntryRef<'de>)> serde::de::DeserializeSeed<'de> for Streaming<F> {
    type Value = (String, u32, StoreFields);

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_struct("Sidecar", &FIELDS, self)
    }
}

impl<'de, F: FnMut(EntryRef<'de>)> serde::de::Visitor<'de> for Streaming<F> {
    type Value = (String, u32, StoreFields);

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an npkio sidecar object")
    }

    /// The fields in order, as a list (as derived `Deserialize` takes a struct too).
    fn visit_seq<A: serde::de::SeqAccess<'de>>(
        mut self,
        mut seq: A,
    ) -> Result<Self::Value, A::Error> {
        let mut fields = StoreFields::default();
        let format = seq.next_element::<String>()?;
        let version = match format {
            Some(_) => seq.next_element::<u32>()?,
            None => None,
        };
        let mut more = version.is_some();
        if more {
            match seq.next_element()? {
                Some(m) => fields.metadata = m,
                None => more = false,
            }
        }
        if more {
            more = seq.next_element_seed(Entries(&mut self.0))?.is_some();
        }
        if more {
            match seq.next_element()? {
                Some(x) => fields.sharding = x,
                None => more = false,
            }
        }
        if more {
            match seq.next_element()? {
                Some(x) => fields.source_header = x,
                None => more = false,
            }
        }
        if more {
            if let Some(x) = seq.next_element()? {
                fields.next = x;
            }
        }
        Ok((
            format.unwrap_or_else(format_name),
            version.unwrap_or(1),
            fields,
        ))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(
        mut self,
        mut map: A,
    ) -> Result<Self::Value, A::Error> {
        use serde::de::Error as _;
        let mut format = None;
        let mut version = None;
        let mut fields = StoreFields::default();
        let mut seen = [false; 7];
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            let Some(k) = FIELDS.iter().position(|n| *n == key) else {
                map.next_value::<serde::de::IgnoredAny>()?;
                continue;
            };
            if std::mem::replace(&mut seen[k], true) {
                return Err(A::Error::duplicate_field(FIELDS[k]));
            }
            match k {
                0 => format = Some(map.next_value::<String>()?),
                1 => version = Some(map.next_value::<u32>()?),
                2 => fields.metadata = map.next_value()?,
                3 => map.next_value_seed(Entries(&mut self.0))?,
                4 => fields.sharding = map.next_value()?,
                5 => fields.source_header = map.next_value()?,
                _ => fields.next = map.next_value()?,
            }
        }
        Ok((
            format.unwrap_or_else(format_name),
            version.unwrap_or(1),
            fields,
        ))
    }
}

/// The `arrays` list, each entry handed to the function.
struct Entries<'f, F>(&'f mut F);

impl<'de, F: FnMut(EntryRef<'de>)> serde::de::DeserializeSeed<'de> for Entries<'_, F> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, F: FnMut(EntryRef<'de>)> serde::de::Visitor<'de> for Entries<'_, F> {
    type Value = ();

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a list of sidecar entries")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(e) = seq.next_element::<EntryRef<'de>>()? {
            (self.0)(e);
        }
        Ok(())
    }
}

impl Sidecar {
    /// Parses a sidecar; `None` if it is not one (a sidecar never makes a directory
    /// unreadable: without it, arrays read as NumPack 0.7 sees them).
    pub fn decode(bytes: &[u8]) -> Option<Sidecar> {
        let s: Sidecar = serde_json::from_slice(bytes).ok()?;
        (s.format == "npkio" && s.version == 1).then_some(s)
    }

    /// Parses a sidecar as [`Sidecar::decode`] does, handing each entry to `each` as it is
    /// parsed rather than keeping it: what opening a store of many arrays needs, without a
    /// copy of every entry. `None` if it is not a sidecar; `each` may have been called
    /// before that is known, so what it gathered applies only on `Some`.
    pub fn decode_streaming<'a>(
        bytes: &'a [u8],
        each: impl FnMut(EntryRef<'a>),
    ) -> Option<StoreFields> {
        Sidecar::decode_streaming_from(serde_json::de::SliceRead::new(bytes), each)
    }

    /// [`Sidecar::decode_streaming`] from any source `serde_json` reads: a slice, or a
    /// reader (`serde_json::de::IoRead`), which needs no copy of the whole sidecar.
    pub fn decode_streaming_from<'de, R: serde_json::de::Read<'de>>(
        read: R,
        each: impl FnMut(EntryRef<'de>),
    ) -> Option<StoreFields> {
        use serde::de::DeserializeSeed;
        let mut de = serde_json::Deserializer::new(read);
        let (format, version, fields) = Streaming(each).deserialize(&mut de).ok()?;
        de.end().ok()?;
        (format == "npkio" && version == 1).then_some(fields)
    }

    /// Serializes the sidecar (pretty JSON, entries sorted by name, a final newline).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_with(std::iter::empty(), &mut out)
            .expect("a sidecar always serializes");
        out
    }

    /// Writes to `w` what [`Sidecar::encode`] gives for this sidecar with the entries `more`
    /// added (sorted by name; names this sidecar has no entry for), taking `more` as it
    /// writes them: a sidecar of many entries is streamed, never held whole in memory.
    pub fn encode_with(
        &self,
        more: impl Iterator<Item = Entry>,
        mut w: impl std::io::Write,
    ) -> std::io::Result<()> {
        let mut old: Vec<&Entry> = self.arrays.iter().collect();
        old.sort_by(|a, b| a.name.cmp(&b.name));
        let view = Encoded {
            sidecar: self,
            old,
            more: std::cell::RefCell::new(Some(more)),
        };
        serde_json::to_writer_pretty(&mut w, &view)?;
        w.write_all(b"\n")
    }

    /// Whether the sidecar says nothing (no need to write it).
    pub fn is_empty(&self) -> bool {
        self.metadata.is_none()
            && self.arrays.is_empty()
            && self.sharding.is_none()
            && self.source_header.is_none()
            && self.next.is_none()
    }

    /// The store-wide fields of `other` (`metadata`, `sharding`, `source_header`) equal
    /// this one's.
    pub fn same_store_fields(&self, other: &Sidecar) -> bool {
        self.metadata == other.metadata
            && self.sharding == other.sharding
            && self.source_header == other.source_header
    }

    /// Resolves [`Sidecar::next`] against the `metadata.npkm` read with it: its fields
    /// replace the sidecar's own when they belong to that file; either way it is gone.
    pub fn settle(&mut self, metadata_bytes: &[u8]) {
        if let Some(next) = self.next.take() {
            if next.for_metadata == metadata_digest(metadata_bytes) {
                self.metadata = next.metadata;
                self.sharding = next.sharding;
                self.source_header = next.source_header;
            }
        }
    }
}

/// The one encoding of a sidecar: its fields in order, `None`s omitted, its entries the
/// sorted merge of `old` and `more`, `more` taken as it is written.
struct Encoded<'a, I> {
    sidecar: &'a Sidecar,
    old: Vec<&'a Entry>,
    more: std::cell::RefCell<Option<I>>,
}

impl<I: Iterator<Item = Entry>> Serialize for Encoded<'_, I> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let sc = self.sidecar;
        let mut st = s.serialize_struct("Sidecar", 7)?;
        st.serialize_field("format", &sc.format)?;
        st.serialize_field("version", &sc.version)?;
        match &sc.metadata {
            Some(m) => st.serialize_field("metadata", m)?,
            None => st.skip_field("metadata")?,
        }
        st.serialize_field("arrays", &Merged(self))?;
        match &sc.sharding {
            Some(x) => st.serialize_field("sharding", x)?,
            None => st.skip_field("sharding")?,
        }
        match &sc.source_header {
            Some(x) => st.serialize_field("source_header", x)?,
            None => st.skip_field("source_header")?,
        }
        match &sc.next {
            Some(x) => st.serialize_field("next", x)?,
            None => st.skip_field("next")?,
        }
        st.end()
    }
}

/// The entries of an [`Encoded`] sidecar, merged by name as they are written.
struct Merged<'v, 'a, I>(&'v Encoded<'a, I>);

impl<I: Iterator<Item = Entry>> Serialize for Merged<'_, '_, I> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let more = self.0.more.borrow_mut().take();
        let mut more = more.into_iter().flatten().peekable();
        let mut old = self.0.old.iter().copied().peekable();
        let mut seq = s.serialize_seq(None)?;
        loop {
            let take_old = match (old.peek(), more.peek()) {
                (Some(o), Some(n)) => o.name <= n.name,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            if take_old {
                seq.serialize_element(old.next().expect("peeked"))?;
            } else {
                seq.serialize_element(&more.next().expect("peeked"))?;
            }
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_next(for_metadata: &[u8]) -> Sidecar {
        Sidecar {
            metadata: Some(vec![("format".into(), "pt".into())]),
            source_header: Some("{}".into()),
            next: Some(Next {
                for_metadata: metadata_digest(for_metadata),
                metadata: None,
                sharding: None,
                source_header: None,
            }),
            ..Sidecar::default()
        }
    }

    #[test]
    fn next_applies_only_to_its_own_metadata_file() {
        let mut s = Sidecar::decode(&with_next(b"new").encode()).unwrap();
        s.settle(b"old");
        assert_eq!(s.metadata, Some(vec![("format".into(), "pt".into())]));
        assert_eq!(s.source_header.as_deref(), Some("{}"));
        assert!(s.next.is_none());

        let mut s = Sidecar::decode(&with_next(b"new").encode()).unwrap();
        s.settle(b"new");
        assert_eq!((s.metadata, s.source_header, s.next), (None, None, None));
    }

    fn streamed(bytes: &[u8]) -> Option<(StoreFields, Vec<Entry>)> {
        let mut entries = Vec::new();
        let fields = Sidecar::decode_streaming(bytes, |e| entries.push(e.to_entry()))?;
        Some((fields, entries))
    }

    #[test]
    fn streaming_decodes_what_decode_does() {
        let record = |name: &str| ArrayRecord {
            name: name.into(),
            shape: vec![2, 3],
            data_file: format!("data_{name}.npkd"),
            last_modified: 9,
            size_bytes: 12,
            dtype_code: DType::BF16.storage_code(),
            compression: 0,
            compression_level: 0,
            original_size: 0,
            compressed_size: 0,
            block_info: None,
        };
        let mut s = with_next(b"m");
        s.arrays = vec![
            Entry::new(&record("b\"q"), DType::BF16, &[2, 3]),
            Entry::new(&record("a"), DType::BF16, &[2, 3]),
        ];
        let bytes = s.encode();
        let (mut fields, entries) = streamed(&bytes).expect("a sidecar");
        // From a reader, the same.
        let mut from_reader = Vec::new();
        let read = serde_json::de::IoRead::new(&bytes[..]);
        let f = Sidecar::decode_streaming_from(read, |e| from_reader.push(e.to_entry())).unwrap();
        assert_eq!(from_reader, entries);
        assert_eq!((&f.metadata, &f.next), (&fields.metadata, &fields.next));
        let mut whole = Sidecar::decode(&bytes).unwrap();
        assert_eq!(entries, whole.arrays);
        assert_eq!(
            entries[1].resolve(&record("b\"q")).map(|r| r.0),
            Some(DType::BF16)
        );
        assert_eq!(
            (
                &fields.metadata,
                &fields.sharding,
                &fields.source_header,
                &fields.next
            ),
            (
                &whole.metadata,
                &whole.sharding,
                &whole.source_header,
                &whole.next
            )
        );
        fields.settle(Some(&metadata_digest(b"m")));
        whole.settle(b"m");
        assert_eq!(
            (fields.metadata, fields.source_header, fields.next),
            (whole.metadata, whole.source_header, whole.next)
        );

        // Unknown fields are skipped; defaults apply; what decode refuses is refused.
        for ok in [
            &br#"{"extra": [1, {"x": null}], "arrays": []}"#[..],
            br#"[]"#,
            br#"["npkio", 1, null, [{"name": "a", "dtype": "BF16", "shape": [], "storage_code": 4, "storage_shape": [1], "size_bytes": 2, "last_modified": 0}]]"#,
            br#"{"arrays": [{"name": "a", "dtype": "U8", "shape": [1,1,1,1,1,1,1,1,1,2], "storage_code": 1, "storage_shape": [1,1,1,1,1,1,1,1,2], "size_bytes": 2, "last_modified": 0, "x": 1}]}"#,
        ] {
            let (_, entries) = streamed(ok).expect("a sidecar");
            assert_eq!(Sidecar::decode(ok).map(|s| s.arrays), Some(entries));
        }
        for bad in [
            &br#"{"format": "other", "arrays": []}"#[..],
            br#"{"version": 2}"#,
            br#"{"arrays": [], "arrays": []}"#,
            br#"{"arrays": null}"#,
            br#"{"arrays": [{"name": "a"}]}"#,
            br#"{"arrays": []} x"#,
            br#"["npkio", 1, null, [], null, null, null, 0]"#,
            br#"["npkio", "1"]"#,
        ] {
            assert!(
                Sidecar::decode(bad).is_none(),
                "{}",
                String::from_utf8_lossy(bad)
            );
            assert!(streamed(bad).is_none(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn the_digest_is_lowercase_hex_sha256() {
        assert_eq!(
            metadata_digest(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
