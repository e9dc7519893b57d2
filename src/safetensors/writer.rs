//! The SafeTensors header, laid out exactly as the `safetensors` crate's `serialize` does.
//!
//! The crate orders tensors by dtype (descending alignment) then name, packs them with no
//! padding, serializes its `Metadata` as compact JSON with `__metadata__` first, and pads
//! the header with spaces to a multiple of 8. npkio writes the tensor part as the crate's
//! `Metadata` serializer does, a map of the crate's own `TensorInfo` entries serialized by
//! the crate, and writes `__metadata__` entries in the order given
//! (the crate's `HashMap` has no order of its own), so that a file read and written back by
//! npkio is byte-identical.

use ::safetensors::tensor::{Metadata, TensorInfo as StInfo};

use crate::dtype::DType;
use crate::error::{Error, ErrorKind, Result};

/// The crate's limit on the header length.
pub const MAX_HEADER_SIZE: usize = 100_000_000;

/// A tensor to lay out: name, dtype, shape and byte length.
#[derive(Clone, Copy, Debug)]
pub struct PlanInput<'a> {
    /// Name.
    pub name: &'a str,
    /// Dtype.
    pub dtype: DType,
    /// Shape.
    pub shape: &'a [u64],
}

/// Where everything goes in the file.
#[derive(Clone, Debug)]
pub struct HeaderPlan {
    /// The first `8 + N` bytes of the file: length and padded JSON.
    pub header: Vec<u8>,
    /// Input indices in file order.
    pub order: Vec<usize>,
    /// For each input (by input index), its absolute byte range in the file.
    pub ranges: Vec<(u64, u64)>,
    /// Total file length.
    pub file_len: u64,
}

/// Lays out `tensors` (with optional `__metadata__` pairs, written in the order given).
pub fn plan_header(
    tensors: &[PlanInput<'_>],
    metadata: Option<&[(String, String)]>,
) -> Result<HeaderPlan> {
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by(|&a, &b| {
        let (l, r) = (&tensors[a], &tensors[b]);
        r.dtype.cmp(&l.dtype).then_with(|| l.name.cmp(r.name))
    });
    let mut rel = vec![(0u64, 0u64); tensors.len()];
    let mut offset = 0u64;
    for w in order.windows(2) {
        if tensors[w[0]].name == tensors[w[1]].name {
            return Err(
                Error::invalid_argument("tensor name given twice").array(tensors[w[0]].name)
            );
        }
    }
    // Checked and placed first; the crate's entry for each is made as it is written.
    for &i in &order {
        let t = &tensors[i];
        if t.dtype.to_safetensors().is_none() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("SafeTensors has no {} dtype", t.dtype.numpy_name()),
            )
            .array(t.name));
        }
        if t.name == "__metadata__" {
            return Err(Error::new(
                ErrorKind::Unsupported,
                "a tensor cannot be named __metadata__ in SafeTensors (the name is reserved)",
            )
            .array(t.name));
        }
        let len = crate::dtype::byte_len(t.dtype, t.shape).ok_or_else(|| {
            Error::invalid_argument(format!(
                "shape {:?} of {} has no whole byte length",
                t.shape, t.dtype
            ))
            .array(t.name)
        })?;
        if t.shape.iter().any(|&d| usize::try_from(d).is_err()) {
            return Err(Error::invalid_argument("shape too large for this platform").array(t.name));
        }
        let end = offset
            .checked_add(len)
            .filter(|&e| usize::try_from(e).is_ok())
            .ok_or_else(|| Error::invalid_argument("total size overflows"))?;
        rel[i] = (offset, end);
        offset = end;
    }
    // `__metadata__` spliced in first, as the crate writes it: `head`, then the tensors'
    // object from byte `body_start` on.
    let tensors_are_empty = tensors.is_empty();
    let (head, body_start) = match metadata {
        Some(pairs) => {
            let mut map = serde_json::Map::with_capacity(pairs.len());
            for (k, v) in pairs {
                map.insert(k.clone(), serde_json::Value::String(v.clone()));
            }
            let mut head = String::from("{\"__metadata__\":");
            head.push_str(&serde_json::to_string(&map).expect("strings serialize"));
            if !tensors_are_empty {
                head.push(',');
            }
            (head, 1) // after '{'
        }
        None => (String::new(), 0),
    };
    // The tensors' object as the crate's `Metadata` serializes it (a map of its `TensorInfo`s
    // in file order), written twice: once to measure it, once into a header allocated to
    // its exact size. With 100,000 tensors, building the crate's `Metadata` (a copy of every
    // name and shape, and its index) and the JSON text beside the header had cost 36 MB.
    let write_tensors = |sink: &mut Sink<'_>| -> std::result::Result<(), serde_json::Error> {
        use serde::ser::{SerializeMap, Serializer};
        let mut ser = serde_json::Serializer::new(sink);
        let mut map = ser.serialize_map(Some(order.len()))?;
        for &i in &order {
            let t = &tensors[i];
            let dtype = t.dtype.to_safetensors().expect("checked above");
            serialize_entry(&mut map, t.name, dtype, t.shape, rel[i])?;
        }
        map.end()
    };
    let serialize_error =
        |e: serde_json::Error| Error::invalid_argument(format!("cannot serialize the header: {e}"));
    let mut counted = Sink {
        skip: body_start,
        len: 0,
        out: None,
    };
    write_tensors(&mut counted).map_err(serialize_error)?;
    let json_len = head.len() + counted.len;
    let padded = json_len.next_multiple_of(8);
    if padded > MAX_HEADER_SIZE {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!("header of {padded} bytes exceeds the SafeTensors limit of {MAX_HEADER_SIZE}"),
        ));
    }
    let mut header = Vec::with_capacity(8 + padded);
    header.extend_from_slice(&(padded as u64).to_le_bytes());
    header.extend_from_slice(head.as_bytes());
    let mut into = Sink {
        skip: body_start,
        len: 0,
        out: Some(&mut header),
    };
    write_tensors(&mut into).map_err(serialize_error)?;
    debug_assert_eq!(header.len(), 8 + json_len);
    header.resize(8 + padded, b' ');
    let base = header.len() as u64;
    let ranges = rel.into_iter().map(|(s, e)| (base + s, base + e)).collect();
    Ok(HeaderPlan {
        header,
        order,
        ranges,
        file_len: base + offset,
    })
}

/// Writes one tensor's entry into the tensors' map as the crate's `Metadata` serializer
/// does: the name, then the crate's own `TensorInfo`.
fn serialize_entry<M: serde::ser::SerializeMap>(
    map: &mut M,
    name: &str,
    dtype: ::safetensors::Dtype,
    shape: &[u64],
    data_offsets: (u64, u64),
) -> std::result::Result<(), M::Error> {
    let info = StInfo {
        dtype,
        shape: shape.iter().map(|&d| d as usize).collect(),
        data_offsets: (data_offsets.0 as usize, data_offsets.1 as usize),
    };
    map.serialize_entry(name, &info)
}

/// Where `plan_header` writes the tensors' JSON: it drops the first `skip` bytes, counts the
/// rest, and appends them to `out` if there is one.
struct Sink<'a> {
    skip: usize,
    len: usize,
    out: Option<&'a mut Vec<u8>>,
}

impl std::io::Write for Sink<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let skipped = self.skip.min(buf.len());
        self.skip -= skipped;
        let rest = &buf[skipped..];
        self.len += rest.len();
        if let Some(out) = self.out.as_deref_mut() {
            out.extend_from_slice(rest);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The layout of an existing header, reused when it describes exactly `tensors` (same names,
/// dtypes and shapes) and `metadata` (same pairs in the same order): writing it back keeps a
/// file byte-identical even when its original writer laid it out differently from the
/// `safetensors` crate (another tensor order, other JSON spacing or padding). `None` when it
/// does not describe them, or is not a valid header.
pub fn plan_from_header(
    header_json: &str,
    tensors: &[PlanInput<'_>],
    metadata: Option<&[(String, String)]>,
) -> Option<HeaderPlan> {
    #[derive(serde::Deserialize)]
    struct MetadataOnly {
        #[serde(rename = "__metadata__", default)]
        metadata: Option<serde_json::Map<String, serde_json::Value>>,
    }
    // The crate's own parser and validation (contiguous offsets, sizes that match shapes).
    let meta: Metadata = serde_json::from_str(header_json).ok()?;
    let stored: Option<Vec<(String, String)>> = serde_json::from_str::<MetadataOnly>(header_json)
        .ok()?
        .metadata
        .map(|m| {
            m.into_iter()
                .map(|(k, v)| (k, v.as_str().unwrap_or_default().to_string()))
                .collect()
        });
    if stored.as_deref() != metadata || meta.tensors().len() != tensors.len() {
        return None;
    }
    if header_json.len() > MAX_HEADER_SIZE {
        return None;
    }
    let base = 8 + header_json.len() as u64;
    let mut ranges = Vec::with_capacity(tensors.len());
    for t in tensors {
        let info = meta.info(t.name)?;
        let shape: Vec<u64> = info.shape.iter().map(|&d| d as u64).collect();
        if DType::from_safetensors(info.dtype) != Some(t.dtype) || shape != t.shape {
            return None;
        }
        let (s, e) = info.data_offsets;
        ranges.push((base + s as u64, base + e as u64));
    }
    let mut order: Vec<usize> = (0..tensors.len()).collect();
    order.sort_by_key(|&i| ranges[i].0);
    let mut header = Vec::with_capacity(8 + header_json.len());
    header.extend_from_slice(&(header_json.len() as u64).to_le_bytes());
    header.extend_from_slice(header_json.as_bytes());
    Some(HeaderPlan {
        header,
        order,
        ranges,
        file_len: base + meta.data_len() as u64,
    })
}

/// Whether `plan_header` lays out exactly `header_json` (the file's header, padding included,
/// without the length) for `tensors` in file order and `metadata`: the check an import makes
/// to know whether a file's own header must be kept to write it back byte-identical.
///
/// Streams the crate's serialization of each entry into a comparison, without building the
/// header (which, for 100,000 tensors, costs a copy of every name and shape and a second
/// header in memory); stops at the first byte that differs.
pub fn is_planned_header(
    header_json: &str,
    tensors: &[crate::safetensors::TensorInfo],
    metadata: Option<&[(String, String)]>,
) -> bool {
    use serde::ser::{SerializeMap, Serializer};
    // `plan_header`'s order: dtype descending, then name; names distinct.
    let in_order = tensors.windows(2).all(|w| {
        let (l, r) = (&w[0], &w[1]);
        r.dtype.cmp(&l.dtype).then_with(|| l.name.cmp(&r.name)) == std::cmp::Ordering::Less
    });
    if !in_order || tensors.iter().any(|t| t.name == "__metadata__") {
        return false;
    }
    struct Compare<'a> {
        rest: &'a [u8],
    }
    impl std::io::Write for Compare<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            match self.rest.strip_prefix(buf) {
                Some(rest) => {
                    self.rest = rest;
                    Ok(buf.len())
                }
                None => Err(std::io::Error::other("differs")),
            }
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut cmp = Compare {
        rest: header_json.as_bytes(),
    };
    let written = (|| -> std::result::Result<(), serde_json::Error> {
        let mut ser = serde_json::Serializer::new(&mut cmp);
        let mut map = ser.serialize_map(None)?;
        if let Some(pairs) = metadata {
            struct Pairs<'a>(&'a [(String, String)]);
            impl serde::Serialize for Pairs<'_> {
                fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
                    let mut m = s.serialize_map(Some(self.0.len()))?;
                    for (k, v) in self.0 {
                        m.serialize_entry(k, v)?;
                    }
                    m.end()
                }
            }
            map.serialize_entry("__metadata__", &Pairs(pairs))?;
        }
        for t in tensors {
            let Some(dtype) = t.dtype.to_safetensors() else {
                return Err(serde::ser::Error::custom("no SafeTensors dtype"));
            };
            serialize_entry(&mut map, &t.name, dtype, &t.shape, t.data_offsets)?;
        }
        map.end()
    })();
    if written.is_err() {
        return false;
    }
    let json_len = header_json.len() - cmp.rest.len();
    json_len.next_multiple_of(8) == header_json.len() && cmp.rest.iter().all(|&b| b == b' ')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::safetensors::TensorInfo;

    fn infos(plan: &HeaderPlan, inputs: &[PlanInput<'_>]) -> Vec<TensorInfo> {
        let base = plan.header.len() as u64;
        plan.order
            .iter()
            .map(|&i| TensorInfo {
                name: inputs[i].name.to_string(),
                dtype: inputs[i].dtype,
                shape: inputs[i].shape.to_vec(),
                data_offsets: (plan.ranges[i].0 - base, plan.ranges[i].1 - base),
            })
            .collect()
    }

    /// The streamed comparison agrees with `plan_header` on its own headers, and refuses
    /// any other.
    #[test]
    fn planned_headers_are_recognized() {
        let shapes: [&[u64]; 4] = [&[2, 3], &[], &[0, 5], &[7]];
        let inputs = [
            PlanInput {
                name: "b\"q\u{e9}",
                dtype: DType::BF16,
                shape: shapes[0],
            },
            PlanInput {
                name: "a",
                dtype: DType::F32,
                shape: shapes[1],
            },
            PlanInput {
                name: "empty",
                dtype: DType::I8,
                shape: shapes[2],
            },
            PlanInput {
                name: "z",
                dtype: DType::F32,
                shape: shapes[3],
            },
        ];
        let pairs = [
            ("format".to_string(), "pt".to_string()),
            ("x".into(), "\n".into()),
        ];
        for meta in [None, Some(&pairs[..]), Some(&[][..])] {
            for n in [0, 1, 4] {
                let plan = plan_header(&inputs[..n], meta).unwrap();
                let json = std::str::from_utf8(&plan.header[8..]).unwrap();
                let t = infos(&plan, &inputs[..n]);
                assert!(is_planned_header(json, &t, meta), "{json}");
                // Another spacing, other metadata, another order: not the planned header.
                let spaced = format!("{json}        ");
                assert!(!is_planned_header(&spaced, &t, meta));
                let other = if meta.is_some() {
                    None
                } else {
                    Some(&pairs[..])
                };
                assert!(!is_planned_header(json, &t, other));
                if n > 1 {
                    let mut r = t.clone();
                    r.swap(0, 1);
                    assert!(!is_planned_header(json, &r, meta));
                }
            }
        }
    }
}
