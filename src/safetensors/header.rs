//! The one parser of untrusted SafeTensors headers: [`read_metadata`] turns a header's
//! text into npkio's table of [`TensorInfo`]s, validated by the `safetensors` crate's rules
//! and with its errors; [`describe`] and [`culprit`] make those errors readable. The reader
//! (`reader.rs`) reads the header from the file and hands it here.

use serde::Deserialize;

use crate::dtype::DType;

/// One tensor's entry in the header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorInfo {
    /// The tensor's name.
    pub name: String,
    /// Its dtype.
    pub dtype: DType,
    /// Its shape (empty for a 0-d tensor).
    pub shape: Vec<u64>,
    /// `[begin, end)` relative to the start of the data section.
    pub data_offsets: (u64, u64),
}

impl TensorInfo {
    /// Byte length.
    pub fn len(&self) -> u64 {
        self.data_offsets.1 - self.data_offsets.0
    }

    /// Whether the tensor has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A header, parsed and validated.
pub(super) struct Parsed {
    /// In file order (by data offset).
    pub(super) tensors: Vec<TensorInfo>,
    /// `__metadata__` in the header's order.
    pub(super) metadata: Option<Vec<(String, String)>>,
    /// The first tensor whose dtype npkio does not support, and that dtype.
    pub(super) unsupported: Option<(String, ::safetensors::Dtype)>,
}

/// The header's entries in the order they are written: each tensor's entry as the crate's
/// own `TensorInfo` deserializes it, and `__metadata__` as ordered pairs of strings (the
/// crate keeps a `HashMap`, which loses the order).
struct HeaderEntries {
    tensors: Vec<(String, Entry)>,
    metadata: Option<Vec<(String, String)>>,
}

/// One tensor's entry as the crate's own `TensorInfo` deserializes it (same fields, same
/// types, same names in messages), the dtype as the crate's, but the shape in npkio's
/// `u64`s, so that it moves into npkio's table without a copy.
#[derive(Deserialize)]
#[serde(rename = "TensorInfo")]
struct Entry {
    dtype: ::safetensors::Dtype,
    #[serde(deserialize_with = "shape_of_usizes")]
    shape: Vec<u64>,
    data_offsets: (usize, usize),
}

/// A sequence of `usize`s (what the crate's `Vec<usize>` accepts, with its messages),
/// kept as `u64`s.
fn shape_of_usizes<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<Vec<u64>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Vec<u64>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a sequence")
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> std::result::Result<Vec<u64>, A::Error> {
            let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
            while let Some(d) = seq.next_element::<usize>()? {
                v.push(d as u64);
            }
            Ok(v)
        }
    }
    d.deserialize_seq(V)
}

impl HeaderEntries {
    /// Parses `text` as `serde_json::from_str` would, with room for `capacity` tensors.
    fn parse(text: &str, capacity: usize) -> serde_json::Result<HeaderEntries> {
        struct Pairs(Vec<(String, String)>);
        impl<'de> Deserialize<'de> for Pairs {
            fn deserialize<D: serde::Deserializer<'de>>(
                d: D,
            ) -> std::result::Result<Self, D::Error> {
                struct V;
                impl<'de> serde::de::Visitor<'de> for V {
                    type Value = Pairs;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str("a map of strings")
                    }
                    fn visit_map<A: serde::de::MapAccess<'de>>(
                        self,
                        mut m: A,
                    ) -> std::result::Result<Pairs, A::Error> {
                        let mut v: Vec<(String, String)> = Vec::new();
                        let mut at: std::collections::HashMap<String, usize> =
                            std::collections::HashMap::new();
                        while let Some((k, x)) = m.next_entry::<String, String>()? {
                            // As a map would: a key given again keeps its place, takes the
                            // new value.
                            match at.get(&k) {
                                Some(&i) => v[i].1 = x,
                                None => {
                                    at.insert(k.clone(), v.len());
                                    v.push((k, x));
                                }
                            }
                        }
                        Ok(Pairs(v))
                    }
                }
                d.deserialize_map(V)
            }
        }
        /// Room for the tensors.
        struct V(usize);
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = HeaderEntries;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a SafeTensors header object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut m: A,
            ) -> std::result::Result<HeaderEntries, A::Error> {
                let mut tensors = Vec::with_capacity(self.0);
                let mut metadata = None;
                let mut seen_metadata = false;
                while let Some(key) = m.next_key::<String>()? {
                    if key == "__metadata__" {
                        if seen_metadata {
                            return Err(serde::de::Error::duplicate_field("__metadata__"));
                        }
                        seen_metadata = true;
                        metadata = m.next_value::<Option<Pairs>>()?.map(|p| p.0);
                    } else {
                        tensors.push((key, m.next_value()?));
                    }
                }
                Ok(HeaderEntries { tensors, metadata })
            }
        }
        let mut de = serde_json::Deserializer::from_str(text);
        let entries = serde::Deserializer::deserialize_map(&mut de, V(capacity))?;
        de.end()?;
        Ok(entries)
    }
}

/// The crate's header parsing and validation for a file of `file_len` bytes whose header
/// is `header` (after the 8-byte length), without a buffer as long as the file, and in one
/// pass over the header.
///
/// The crate's `read_metadata` wants the whole file as one buffer, though it reads only the
/// header and the buffer's length; and it keeps a map of every name that npkio would only
/// copy into its own table. Instead, the header is parsed once, every tensor's entry with
/// the fields and types of the crate's own `TensorInfo` (so the same headers are refused,
/// with the same messages), sorted by offsets as the crate sorts them, and validated with
/// the rules of the crate's `Metadata::validate`, in its order and with its errors (offsets
/// in order without gaps; each shape's element count and bit length without overflow, a
/// whole number of bytes, as long as the offsets say); a gap's tensor is named. The check
/// the crate's `read_metadata` adds, that the tensors end exactly at the end of the file,
/// is made too. When parsing fails, the crate's `read_metadata` runs on the header alone
/// to name the error exactly as the crate does. The names, shapes and `__metadata__` pairs
/// parsed move into npkio's table.
pub(super) fn read_metadata(
    header: &str,
    file_len: u64,
) -> std::result::Result<Parsed, ::safetensors::SafeTensorError> {
    use ::safetensors::SafeTensorError as E;
    // The shortest entry (`"":{"dtype":"I8","shape":[],"data_offsets":[0,0]}`) takes 48
    // bytes: room for that many entries is never outgrown, and costs nothing where unused.
    let entries = match HeaderEntries::parse(header, header.len() / 48 + 1) {
        Ok(entries) => entries,
        Err(ours) => {
            let mut head = Vec::with_capacity(8 + header.len());
            head.extend_from_slice(&(header.len() as u64).to_le_bytes());
            head.extend_from_slice(header.as_bytes());
            return match ::safetensors::SafeTensors::read_metadata(&head) {
                // The crate takes what npkio does not (cannot be but for a header npkio's
                // one-pass parser refuses): npkio's reason.
                Ok(_) | Err(E::MetadataIncompleteBuffer) => {
                    Err(E::InvalidHeaderDeserialization(ours))
                }
                Err(e) => Err(e),
            };
        }
    };
    let HeaderEntries {
        mut tensors,
        metadata,
    } = entries;
    // The crate's order: by offsets, stable (entries of equal offsets, empty tensors, keep
    // the header's order).
    tensors.sort_by_key(|(_, t)| t.data_offsets);
    // A gap or overlap is named here (the crate names it too, by a search of its map).
    let mut at = 0usize;
    for (name, t) in &tensors {
        let (s, e) = t.data_offsets;
        if s != at || e < s {
            return Err(E::InvalidOffset(name.clone()));
        }
        at = e;
    }
    // The crate's `Metadata::validate`, entry by entry.
    for (_, t) in &tensors {
        let (s, e) = t.data_offsets;
        let bits = t
            .shape
            .iter()
            .try_fold(1usize, |n, &d| n.checked_mul(d as usize))
            .and_then(|n| n.checked_mul(t.dtype.bitsize()))
            .ok_or(E::ValidationOverflow)?;
        if bits % 8 != 0 {
            return Err(E::MisalignedSlice);
        }
        if e - s != bits / 8 {
            return Err(E::TensorInvalidInfo);
        }
    }
    let end = (at as u64).checked_add(8 + header.len() as u64);
    if end != Some(file_len) {
        return Err(E::MetadataIncompleteBuffer);
    }
    let mut unsupported = None;
    // In place where the layouts allow: no second table of every entry.
    let ours = tensors
        .into_iter()
        .filter_map(|(name, t)| match DType::from_safetensors(t.dtype) {
            Some(dtype) => Some(TensorInfo {
                name,
                dtype,
                shape: t.shape,
                data_offsets: (t.data_offsets.0 as u64, t.data_offsets.1 as u64),
            }),
            None => {
                if unsupported.is_none() {
                    unsupported = Some((name, t.dtype));
                }
                None
            }
        })
        .collect();
    Ok(Parsed {
        tensors: ours,
        metadata,
        unsupported,
    })
}

/// A readable account of the crate's error.
pub(super) fn describe(e: &::safetensors::SafeTensorError) -> String {
    use ::safetensors::SafeTensorError as E;
    match e {
        E::HeaderTooSmall => "file shorter than the 8-byte header length".into(),
        E::HeaderTooLarge => "header length above the 100,000,000-byte limit".into(),
        E::InvalidHeaderLength => "header length points past the end of the file".into(),
        E::InvalidHeader(_) => "header is not valid UTF-8".into(),
        E::InvalidHeaderDeserialization(err) => {
            format!("header is not valid SafeTensors JSON: {err}")
        }
        E::InvalidOffset(name) => {
            format!("tensor {name:?}: data_offsets leave a gap, overlap, or run backwards")
        }
        E::ValidationOverflow => "a tensor's element count overflows".into(),
        E::MisalignedSlice => "a tensor's size is not a whole number of bytes".into(),
        E::TensorInvalidInfo => "a tensor's shape and dtype do not match its data_offsets".into(),
        E::MetadataIncompleteBuffer => {
            "the tensors do not end exactly at the end of the file (truncated, or trailing bytes)"
                .into()
        }
        other => other.to_string(),
    }
}

/// The tensor a shape error is about: the crate's errors for these cases do not say.
pub(super) fn culprit(header: &[u8], e: &::safetensors::SafeTensorError) -> Option<String> {
    use ::safetensors::SafeTensorError as E;
    if !matches!(
        e,
        E::ValidationOverflow | E::MisalignedSlice | E::TensorInvalidInfo
    ) {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(header).ok()?;
    for (name, t) in v.as_object()? {
        if name == "__metadata__" {
            continue;
        }
        let dtype = t.get("dtype")?.as_str()?;
        let bits = u64::from(DType::from_safetensors_name(dtype)?.bits());
        let shape: Option<Vec<u64>> = t
            .get("shape")?
            .as_array()?
            .iter()
            .map(|d| d.as_u64())
            .collect();
        let offsets = t.get("data_offsets")?.as_array()?;
        let (b, e2) = (offsets.first()?.as_u64()?, offsets.get(1)?.as_u64()?);
        let bytes = crate::dtype::element_count(&shape?).and_then(|n| n.checked_mul(bits));
        let bad = match (e, bytes) {
            (E::ValidationOverflow, None) => true,
            (E::MisalignedSlice, Some(bits)) => bits % 8 != 0,
            (E::TensorInvalidInfo, Some(bits)) => Some(bits / 8) != e2.checked_sub(b),
            _ => false,
        };
        if bad {
            return Some(name.clone());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use crate::error::ErrorKind;
    use crate::safetensors::SafeTensorsFile;

    /// Headers corrupted one byte at a time (deterministic): npkio's one-pass parser opens
    /// exactly the files the `safetensors` crate's `read_metadata` accepts, with the same
    /// tensors, but for what npkio refuses on purpose (a name given twice, a dtype it does
    /// not support).
    #[test]
    fn the_parser_accepts_what_the_crate_accepts() {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/safetensors");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.safetensors");
        let (mut opened, mut refused) = (0, 0);
        for name in ["with_metadata.safetensors", "edge_cases.safetensors"] {
            let good = std::fs::read(root.join(name)).unwrap();
            let n = u64::from_le_bytes(good[..8].try_into().unwrap()) as usize;
            for at in 0..8 + n {
                for b in [b'0', b'"', b'}', 0xff] {
                    if good[at] == b {
                        continue;
                    }
                    let mut bad = good.clone();
                    bad[at] = b;
                    std::fs::write(&p, &bad).unwrap();
                    let crate_says = ::safetensors::SafeTensors::read_metadata(&bad);
                    match (SafeTensorsFile::open(&p), crate_says) {
                        (Ok(f), Ok((_, meta))) => {
                            let mut ours: Vec<_> = f
                                .tensors()
                                .map(|t| (t.name.clone(), t.data_offsets))
                                .collect();
                            let mut theirs: Vec<_> = meta
                                .tensors()
                                .into_iter()
                                .map(|(k, t)| {
                                    let (b, e) = t.data_offsets;
                                    (k, (b as u64, e as u64))
                                })
                                .collect();
                            ours.sort();
                            theirs.sort();
                            assert_eq!(ours, theirs, "byte {at} = {b}");
                            opened += 1;
                        }
                        (Ok(_), Err(e)) => panic!("byte {at} = {b}: the crate refuses: {e}"),
                        (Err(e), Ok(_)) => {
                            let on_purpose = e.kind() == ErrorKind::Unsupported
                                || e.to_string().contains("names the tensor twice");
                            assert!(on_purpose, "byte {at} = {b}: npkio refuses: {e}");
                        }
                        (Err(_), Err(_)) => refused += 1,
                    }
                }
            }
        }
        assert!(
            opened > 10 && refused > 1000,
            "{opened} opened, {refused} refused"
        );
    }
}
