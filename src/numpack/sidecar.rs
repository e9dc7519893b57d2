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

use serde::{Deserialize, Serialize};

use crate::dtype::DType;
use crate::numpack::metadata::ArrayRecord;

/// File name of the sidecar inside the directory.
pub const FILE_NAME: &str = "npkio.json";
/// Largest sidecar npkio reads.
pub const MAX_LEN: u64 = 256 << 20;

/// The whole sidecar.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
        if self.name != record.name
            || self.storage_code != record.dtype_code
            || self.storage_shape != record.shape
            || self.size_bytes != record.size_bytes
            || self.last_modified != record.last_modified
        {
            return None;
        }
        let dtype = DType::from_safetensors_name(&self.dtype)
            .or_else(|| DType::from_numpy_name(&self.dtype))?;
        if dtype.storage_code() != record.dtype_code
            || crate::dtype::byte_len(dtype, &self.shape) != Some(record.size_bytes)
        {
            return None;
        }
        Some((dtype, self.shape.clone()))
    }
}

impl Sidecar {
    /// Parses a sidecar; `None` if it is not one (a sidecar never makes a directory
    /// unreadable: without it, arrays read as NumPack 0.7 sees them).
    pub fn decode(bytes: &[u8]) -> Option<Sidecar> {
        let s: Sidecar = serde_json::from_slice(bytes).ok()?;
        (s.format == "npkio" && s.version == 1).then_some(s)
    }

    /// Serializes the sidecar (pretty JSON, entries sorted by name).
    pub fn encode(&self) -> Vec<u8> {
        let mut s = self.clone();
        s.arrays.sort_by(|a, b| a.name.cmp(&b.name));
        let mut out = serde_json::to_vec_pretty(&s).expect("a sidecar always serializes");
        out.push(b'\n');
        out
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

    #[test]
    fn the_digest_is_lowercase_hex_sha256() {
        assert_eq!(
            metadata_digest(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
