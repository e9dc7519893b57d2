//! A checkpoint's whole description in one call: `npkio_safetensors_metadata_json` gives
//! what `get_safetensors_metadata` returns (every tensor's dtype, shape and offsets, and the
//! `__metadata__`) as one compact JSON document, so that a binding builds its result from a
//! single foreign call instead of several per tensor. `npkio_safetensors_bytes_json` does
//! the same for a whole file held in memory, so that a binding can view its tensors in
//! place (the `load(bytes)` of the `safetensors` packages).

use std::cell::RefCell;
use std::ffi::c_char;

use serde_json::{json, Map, Value};

use super::args::{give_json, path_arg, slice_arg, Out};
use super::error::{FfiError, FfiResult, NpkioStatus};
use super::panic::status_boundary;
use crate::convert::{get_safetensors_metadata, SafeTensorsMetadata};
use crate::dtype::DType;

/// One tensor's entry.
fn tensor_json(dtype: &str, shape: &[u64], (begin, end): (u64, u64)) -> Value {
    json!({"shape": shape, "dtype": dtype, "data_offsets": [begin, end]})
}

/// The JSON text of a checkpoint's description.
fn metadata_json(meta: &SafeTensorsMetadata) -> Vec<u8> {
    let mut tensors = Map::with_capacity(meta.tensors.len());
    for (name, t) in &meta.tensors {
        let dtype = t.dtype.safetensors_name().unwrap_or(t.dtype.numpy_name());
        tensors.insert(name.clone(), tensor_json(dtype, &t.shape, t.data_offsets));
    }
    let metadata: Map<String, Value> = meta
        .metadata
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let mut doc = Map::with_capacity(3);
    doc.insert("tensors".into(), Value::Object(tensors));
    doc.insert("metadata".into(), Value::Object(metadata));
    doc.insert("has_metadata".into(), Value::Bool(meta.metadata.is_some()));
    // Serializing a `Value` of strings, numbers and objects cannot fail.
    serde_json::to_vec(&Value::Object(doc)).unwrap_or_default()
}

/// The JSON text describing a whole SafeTensors file held in memory, validated by the
/// `safetensors` crate as its `deserialize` validates it.
fn bytes_json(data: &[u8]) -> FfiResult<Vec<u8>> {
    let (n, meta) = ::safetensors::SafeTensors::read_metadata(data).map_err(|e| {
        FfiError::new(
            NpkioStatus::Malformed,
            format!("invalid SafeTensors data: {e}"),
        )
    })?;
    let mut tensors = Map::new();
    for name in meta.offset_keys() {
        let Some(info) = meta.info(&name) else {
            continue;
        };
        let Some(dtype) = DType::from_safetensors(info.dtype) else {
            return Err(FfiError::new(
                NpkioStatus::Unsupported,
                format!("tensor {name:?}: dtype {} is not supported", info.dtype),
            ));
        };
        let shape: Vec<u64> = info.shape.iter().map(|&d| d as u64).collect();
        let offsets = (info.data_offsets.0 as u64, info.data_offsets.1 as u64);
        let dtype = dtype.safetensors_name().unwrap_or(dtype.numpy_name());
        tensors.insert(name, tensor_json(dtype, &shape, offsets));
    }
    let mut doc = Map::with_capacity(2);
    doc.insert("tensors".into(), Value::Object(tensors));
    doc.insert("data_start".into(), json!(8 + n));
    Ok(serde_json::to_vec(&Value::Object(doc)).unwrap_or_default())
}

/// Describes the SafeTensors file (or sharded checkpoint: its `*.safetensors.index.json`
/// or a directory holding one) `path` in one UTF-8 JSON document, reading headers only:
///
/// `{"tensors": {name: {"shape": [..], "dtype": "F32", "data_offsets": [begin, end]}, ...},
/// "metadata": {key: value, ...}, "has_metadata": true}`
///
/// Tensors are in file order (shard by shard), `data_offsets` relative to the data section
/// of the file holding the tensor; `metadata` is the `__metadata__` section (the first
/// shard's), `{}` with `has_metadata` false when there is none.
///
/// `*json_len` receives the document's length in bytes (without a NUL). When
/// `capacity` is at least that, the document is copied to `buffer` (NUL-terminated when
/// there is room for it) and the result is `NPKIO_STATUS_OK`; otherwise nothing else is
/// written and the result is `NPKIO_STATUS_BUFFER_TOO_SMALL`: call again with a buffer of
/// `*json_len` bytes.
///
/// # Safety
///
/// `path` NULL or a NUL-terminated string; `buffer` NULL (only when `capacity` is 0) or
/// `capacity` writable bytes; `json_len` a writable `size_t`.
#[no_mangle]
pub unsafe extern "C" fn npkio_safetensors_metadata_json(
    path: *const c_char,
    buffer: *mut c_char,
    capacity: usize,
    json_len: *mut usize,
) -> NpkioStatus {
    status_boundary(|| {
        // SAFETY: the caller's contract above, checked for NULL inside.
        let (path, len_out) = unsafe { (path_arg(path, "path")?, Out::new(json_len, "json_len")?) };
        let doc = match fast::describe_file(path) {
            Some(doc) => doc,
            None => metadata_json(&get_safetensors_metadata(path)?),
        };
        // SAFETY: the caller's contract on `buffer`.
        unsafe { give_json(doc, buffer, capacity, len_out) }
    })
}

thread_local! {
    /// The last document a `*_json` function of this thread could not copy to the caller's
    /// buffer, for `npkio_json_take`; empty when there is none.
    static UNTAKEN: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Keeps `doc` as the calling thread's untaken document (an empty one: none), freeing the
/// one kept before.
pub(super) fn keep_untaken(doc: Vec<u8>) {
    UNTAKEN.with(|u| *u.borrow_mut() = doc);
}

/// Copies the document the calling thread's last `*_json` call could not copy for want
/// of room (it returned `NPKIO_STATUS_BUFFER_TOO_SMALL` and set `*json_len` to the
/// document's length), so that a caller gets that very document without having npkio
/// make it again:
///
/// ```c
/// size_t len;
/// NpkioStatus s = npkio_safetensors_metadata_json(path, small, sizeof small, &len);
/// if (s == NPKIO_STATUS_BUFFER_TOO_SMALL) {
///     char *big = malloc(len + 1);
///     s = npkio_json_take(big, len + 1, &len);
/// }
/// ```
///
/// `*json_len` receives the document's length; `buffer` and `capacity` work as in
/// `npkio_safetensors_metadata_json` (too small: `NPKIO_STATUS_BUFFER_TOO_SMALL` and the
/// document stays). Once copied, the document is forgotten. Each thread keeps one such
/// document, until it is taken or the thread's next `*_json` call; when there is none,
/// the result is `NPKIO_STATUS_INVALID_ARGUMENT`.
///
/// # Safety
///
/// `buffer` NULL (only when `capacity` is 0) or `capacity` writable bytes; `json_len` a
/// writable `size_t`.
#[no_mangle]
pub unsafe extern "C" fn npkio_json_take(
    buffer: *mut c_char,
    capacity: usize,
    json_len: *mut usize,
) -> NpkioStatus {
    status_boundary(|| {
        // SAFETY: the caller's contract above, checked for NULL inside.
        let len_out = unsafe { Out::new(json_len, "json_len")? };
        let doc = UNTAKEN.with(|u| std::mem::take(&mut *u.borrow_mut()));
        if doc.is_empty() {
            return Err(FfiError::new(
                NpkioStatus::InvalidArgument,
                "no JSON document is waiting to be taken on this thread".to_string(),
            ));
        }
        // SAFETY: the caller's contract on `buffer`.
        unsafe { give_json(doc, buffer, capacity, len_out) }
    })
}

/// Describes a whole SafeTensors file held in memory (`data`, `len` bytes), validated as
/// the `safetensors` crate's `deserialize` validates it, in one UTF-8 JSON document:
///
/// `{"tensors": {name: {"shape": [..], "dtype": "F32", "data_offsets": [begin, end]}, ...},
/// "data_start": 8 + header length}`
///
/// Tensors are in the order of their offsets; `data_offsets` are relative to `data_start`.
/// `json_len`, `buffer` and `capacity` work as in `npkio_safetensors_metadata_json`. npkio
/// reads `data` during the call only.
///
/// # Safety
///
/// `data` NULL (only when `len` is 0) or `len` readable bytes; `buffer` NULL (only when
/// `capacity` is 0) or `capacity` writable bytes; `json_len` a writable `size_t`.
#[no_mangle]
pub unsafe extern "C" fn npkio_safetensors_bytes_json(
    data: *const u8,
    len: usize,
    buffer: *mut c_char,
    capacity: usize,
    json_len: *mut usize,
) -> NpkioStatus {
    status_boundary(|| {
        // SAFETY: the caller's contract above, checked for NULL inside.
        let (data, len_out) = unsafe {
            (
                slice_arg(data, len, "data")?,
                Out::new(json_len, "json_len")?,
            )
        };
        let doc = bytes_json(data)?;
        // SAFETY: the caller's contract on `buffer`.
        unsafe { give_json(doc, buffer, capacity, len_out) }
    })
}

/// The quick way to describe a single SafeTensors file, for headers with many tensors.
///
/// The core's reader validates a header with the `safetensors` crate, whose generic
/// deserialization buffers the whole document before reading it, and then builds the
/// tensors' views; listing a 362-tensor file took longer than the `safetensors` package
/// takes. Here the header is read with one `pread` and parsed in one pass into borrowed
/// strings, then checked with every rule of the crate's `read_metadata` (header length and
/// limit, UTF-8 JSON, string-to-string `__metadata__`, known dtypes, offsets that tile the
/// data section exactly, each tensor's byte length). Anything this parser does not accept
/// (a sharded checkpoint, a duplicate name, any rule broken) returns `None`, and the caller
/// goes through the core, which gives the answer or the precise error: so a file is
/// described here only if the core would describe it the same way.
mod fast {
    use std::borrow::Cow;
    use std::fmt;
    use std::fs::File;
    use std::os::unix::fs::FileExt;
    use std::path::Path;
    use std::sync::OnceLock;

    use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
    use serde::Deserialize;

    use crate::dtype::DType;
    use crate::safetensors::writer::MAX_HEADER_SIZE;

    #[derive(Deserialize)]
    struct Entry<'a> {
        #[serde(borrow)]
        dtype: Cow<'a, str>,
        shape: Vec<u64>,
        data_offsets: (u64, u64),
    }

    /// The header: tensors in header order, `__metadata__` pairs in order (`None` when
    /// absent), and whether a name came twice.
    struct Header<'a> {
        tensors: Vec<(Cow<'a, str>, Entry<'a>)>,
        metadata: Option<Vec<(Cow<'a, str>, Cow<'a, str>)>>,
        duplicate: bool,
    }

    struct Pairs<'a>(Vec<(Cow<'a, str>, Cow<'a, str>)>);

    impl<'de: 'a, 'a> Deserialize<'de> for Pairs<'a> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V<'a>(std::marker::PhantomData<&'a ()>);
            impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
                type Value = Pairs<'a>;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a map of strings")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Pairs<'a>, A::Error> {
                    let mut out: Vec<(Cow<'a, str>, Cow<'a, str>)> = Vec::new();
                    while let Some(k) = m.next_key::<Cow<'de, str>>()? {
                        let v: Cow<'de, str> = m.next_value()?;
                        if out.iter().any(|(old, _)| *old == k) {
                            return Err(de::Error::custom("duplicate metadata key"));
                        }
                        out.push((k, v));
                    }
                    Ok(Pairs(out))
                }
            }
            d.deserialize_map(V(std::marker::PhantomData))
        }
    }

    impl<'de: 'a, 'a> Deserialize<'de> for Header<'a> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V<'a>(std::marker::PhantomData<&'a ()>);
            impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
                type Value = Header<'a>;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a SafeTensors header")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Header<'a>, A::Error> {
                    let mut h = Header {
                        tensors: Vec::new(),
                        metadata: None,
                        duplicate: false,
                    };
                    while let Some(k) = m.next_key::<Cow<'de, str>>()? {
                        if k == "__metadata__" {
                            if h.metadata.is_some() {
                                h.duplicate = true;
                                m.next_value::<IgnoredAny>()?;
                                continue;
                            }
                            h.metadata = Some(m.next_value::<Pairs<'a>>()?.0);
                            continue;
                        }
                        let e: Entry<'a> = m.next_value()?;
                        h.tensors.push((k, e));
                    }
                    // Duplicate names, found by sorting (cheaper than hashing every name).
                    let mut names: Vec<&str> = h.tensors.iter().map(|(k, _)| &**k).collect();
                    names.sort_unstable();
                    h.duplicate |= names.windows(2).any(|w| w[0] == w[1]);
                    Ok(h)
                }
            }
            d.deserialize_map(V(std::marker::PhantomData))
        }
    }

    /// The dtype a SafeTensors name stands for, among those the crate and npkio share.
    fn dtype_named(name: &str) -> Option<DType> {
        static TABLE: OnceLock<Vec<(&'static str, DType)>> = OnceLock::new();
        let table = TABLE.get_or_init(|| {
            (0..=u8::MAX)
                .filter_map(DType::from_u8)
                .filter(|d| d.to_safetensors().and_then(DType::from_safetensors) == Some(*d))
                .filter_map(|d| Some((d.safetensors_name()?, d)))
                .collect()
        });
        table.iter().find(|(n, _)| *n == name).map(|&(_, d)| d)
    }

    fn push_str(out: &mut Vec<u8>, s: &str) {
        // Writing a string into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
    }

    fn push_u64(out: &mut Vec<u8>, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        out.extend_from_slice(&digits[at..]);
    }

    /// The description of `path` as `npkio_safetensors_metadata_json` gives it, or `None`
    /// to leave it to the core.
    pub(super) fn describe_file(path: &Path) -> Option<Vec<u8>> {
        if path.to_string_lossy().ends_with(".json") {
            return None;
        }
        let file = File::open(path).ok()?;
        let md = file.metadata().ok()?;
        if !md.is_file() || md.len() < 8 {
            return None;
        }
        let mut len8 = [0u8; 8];
        file.read_exact_at(&mut len8, 0).ok()?;
        let n = u64::from_le_bytes(len8);
        if n > MAX_HEADER_SIZE as u64 || n > md.len() - 8 {
            return None;
        }
        let mut head = vec![0u8; n as usize];
        file.read_exact_at(&mut head, 8).ok()?;
        let text = std::str::from_utf8(&head).ok()?;
        let header: Header<'_> = serde_json::from_str(text).ok()?;
        if header.duplicate {
            return None;
        }
        let mut order: Vec<usize> = (0..header.tensors.len()).collect();
        order.sort_by_key(|&i| header.tensors[i].1.data_offsets);
        let mut dtypes = Vec::with_capacity(order.len());
        let mut end = 0u64;
        for &i in &order {
            let e = &header.tensors[i].1;
            let (b, f) = e.data_offsets;
            if b != end || f < b {
                return None;
            }
            end = f;
            let dtype = dtype_named(&e.dtype)?;
            let elements = e
                .shape
                .iter()
                .try_fold(1u64, |acc, &d| {
                    usize::try_from(d).ok()?;
                    acc.checked_mul(d)
                })
                .filter(|&c| usize::try_from(c).is_ok())?;
            if dtype.byte_len(elements)? != f - b {
                return None;
            }
            dtypes.push(dtype);
        }
        if end.checked_add(8 + n)? != md.len() {
            return None;
        }
        let mut out = Vec::with_capacity(head.len() + 64);
        out.extend_from_slice(b"{\"tensors\":{");
        for (k, (&i, dtype)) in order.iter().zip(&dtypes).enumerate() {
            let (name, e) = &header.tensors[i];
            if k > 0 {
                out.push(b',');
            }
            push_str(&mut out, name);
            out.extend_from_slice(b":{\"shape\":[");
            for (j, &d) in e.shape.iter().enumerate() {
                if j > 0 {
                    out.push(b',');
                }
                push_u64(&mut out, d);
            }
            out.extend_from_slice(b"],\"dtype\":");
            push_str(&mut out, dtype.safetensors_name()?);
            out.extend_from_slice(b",\"data_offsets\":[");
            push_u64(&mut out, e.data_offsets.0);
            out.push(b',');
            push_u64(&mut out, e.data_offsets.1);
            out.extend_from_slice(b"]}");
        }
        out.extend_from_slice(b"},\"metadata\":{");
        for (k, (key, value)) in header.metadata.iter().flatten().enumerate() {
            if k > 0 {
                out.push(b',');
            }
            push_str(&mut out, key);
            out.push(b':');
            push_str(&mut out, value);
        }
        out.extend_from_slice(b"},\"has_metadata\":");
        out.extend_from_slice(if header.metadata.is_some() {
            b"true}"
        } else {
            b"false}"
        });
        Some(out)
    }

    #[cfg(test)]
    mod tests {
        use std::path::PathBuf;

        use super::describe_file;

        fn files(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(dir).unwrap().flatten() {
                let p = e.path();
                if p.is_dir() {
                    files(&p, out);
                } else if p.extension().is_some_and(|x| x == "safetensors") {
                    out.push(p);
                }
            }
        }

        /// Every SafeTensors file of the fixtures (valid and malformed) and the example
        /// model: the quick path describes exactly the files the core describes, the same way.
        #[test]
        fn quick_path_agrees_with_the_core_on_every_fixture() {
            let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
            let mut all = Vec::new();
            files(&root.join("tests/fixtures"), &mut all);
            all.push(root.join("examples/tiny-llama.safetensors"));
            assert!(all.len() > 5, "fixtures not found");
            let mut described = 0;
            let mut missed = Vec::new();
            for p in &all {
                let core = crate::convert::get_safetensors_metadata(p);
                match describe_file(p) {
                    Some(doc) => {
                        let core =
                            core.unwrap_or_else(|e| panic!("{}: core refuses: {e}", p.display()));
                        let want = super::super::metadata_json(&core);
                        let (a, b): (serde_json::Value, serde_json::Value) = (
                            serde_json::from_slice(&doc).unwrap(),
                            serde_json::from_slice(&want).unwrap(),
                        );
                        assert_eq!(a, b, "{}", p.display());
                        // Same order of tensors and metadata too.
                        assert_eq!(doc, want, "{}", p.display());
                        described += 1;
                    }
                    None => {
                        if let Ok(core) = core {
                            missed.push((p.clone(), core.tensors.len()));
                        }
                    }
                }
            }
            assert!(described > 0);
            assert!(missed.is_empty(), "described by the core only: {missed:?}");
        }

        /// Headers corrupted one byte at a time (seeded, deterministic): whatever the quick
        /// path accepts, the core accepts and describes the same way.
        #[test]
        fn quick_path_never_accepts_what_the_core_refuses() {
            let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/safetensors");
            let dir = tempfile::tempdir().unwrap();
            let mut checked = 0;
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
                        let p = dir.path().join(format!("m{at}_{b}.safetensors"));
                        std::fs::write(&p, &bad).unwrap();
                        if let Some(doc) = describe_file(&p) {
                            let core = crate::convert::get_safetensors_metadata(&p)
                                .unwrap_or_else(|e| panic!("byte {at} = {b}: core refuses: {e}"));
                            let want = super::super::metadata_json(&core);
                            let a: serde_json::Value = serde_json::from_slice(&doc).unwrap();
                            let w: serde_json::Value = serde_json::from_slice(&want).unwrap();
                            assert_eq!(a, w, "byte {at} = {b}");
                        }
                        std::fs::remove_file(&p).unwrap();
                        checked += 1;
                    }
                }
            }
            assert!(checked > 1000);
        }
    }
}

/// The one-call JSON listings and `npkio_json_take`, through the C functions.
#[cfg(test)]
mod json_tests {
    use std::ffi::{c_char, CString};
    use std::path::PathBuf;
    use std::ptr;

    use serde_json::Value;

    use super::super::dtype::NpkioTensorView;
    use super::super::error::NpkioStatus;
    use super::super::numpack::{self as np, NpkioNumpack};
    use super::super::safetensors::{self as st, NpkioSafetensorsIter};
    use super::{npkio_json_take, npkio_safetensors_metadata_json};

    fn fixture(rel: &str) -> CString {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel);
        CString::new(p.to_str().unwrap()).unwrap()
    }

    /// A `*_json` call with a buffer of `capacity` bytes: status, length, the bytes.
    fn call(
        f: impl Fn(*mut c_char, usize, *mut usize) -> NpkioStatus,
        capacity: usize,
    ) -> (NpkioStatus, usize, Vec<u8>) {
        let mut buf = vec![0u8; capacity];
        let mut len = usize::MAX;
        let s = f(buf.as_mut_ptr().cast(), capacity, &mut len);
        buf.truncate(len.min(capacity));
        (s, len, buf)
    }

    fn take(capacity: usize) -> (NpkioStatus, usize, Vec<u8>) {
        // SAFETY: a buffer of `capacity` bytes and a writable length.
        call(|b, c, l| unsafe { npkio_json_take(b, c, l) }, capacity)
    }

    #[test]
    fn a_document_that_does_not_fit_is_taken_whole_once() {
        let path = fixture("tests/fixtures/safetensors/with_metadata.safetensors");
        // SAFETY: a NUL-terminated path, a buffer of `c` bytes and a writable length.
        let meta = |c| {
            call(
                |b, c, l| unsafe { npkio_safetensors_metadata_json(path.as_ptr(), b, c, l) },
                c,
            )
        };
        let (s, full_len, full) = meta(1 << 20);
        assert_eq!(s, NpkioStatus::Ok);
        assert!(full_len > 8);
        // Nothing is waiting after a call that fitted.
        assert_eq!(take(1 << 20).0, NpkioStatus::InvalidArgument);

        let (s, len, _) = meta(4);
        assert_eq!((s, len), (NpkioStatus::BufferTooSmall, full_len));
        // Still too small: reported again, and the document stays.
        let (s, len, _) = take(full_len - 1);
        assert_eq!((s, len), (NpkioStatus::BufferTooSmall, full_len));
        let (s, len, doc) = take(full_len);
        assert_eq!((s, len), (NpkioStatus::Ok, full_len));
        assert_eq!(doc, full);
        // Taken once only.
        assert_eq!(take(1 << 20).0, NpkioStatus::InvalidArgument);

        // A later call that fits drops a document left untaken.
        assert_eq!(meta(4).0, NpkioStatus::BufferTooSmall);
        assert_eq!(meta(1 << 20).0, NpkioStatus::Ok);
        assert_eq!(take(1 << 20).0, NpkioStatus::InvalidArgument);

        // Each thread has its own.
        assert_eq!(meta(4).0, NpkioStatus::BufferTooSmall);
        let other = std::thread::spawn(|| take(1 << 20).0).join().unwrap();
        assert_eq!(other, NpkioStatus::InvalidArgument);
        assert_eq!(take(1 << 20).0, NpkioStatus::Ok);
        // SAFETY: NULL length: refused before anything is read.
        assert_eq!(
            unsafe { npkio_json_take(ptr::null_mut(), 0, ptr::null_mut()) },
            NpkioStatus::NullArgument
        );
    }

    /// The iteration's table gives what `npkio_safetensors_iter_next` yields, view by view.
    fn check_table(iter: *mut NpkioSafetensorsIter, advance: usize) {
        // SAFETY: a live iterator, a buffer of `c` bytes and a writable length.
        let (s, _, doc) = call(
            |b, c, l| unsafe { st::npkio_safetensors_iter_table_json(iter, b, c, l) },
            1 << 20,
        );
        assert_eq!(s, NpkioStatus::Ok);
        let doc: Value = serde_json::from_slice(&doc).unwrap();
        let list = |k: &str| doc[k].as_array().unwrap().clone();
        let (regions, kinds, names) = (list("regions"), list("kinds"), list("names"));
        let (kind, region, offset) = (list("kind"), list("region"), list("offset"));
        assert!([&kind, &region, &offset]
            .iter()
            .all(|l| l.len() == names.len()));
        let u = |v: &Value| v.as_u64().unwrap();
        let mut seen = 0;
        loop {
            let mut v = std::mem::MaybeUninit::<NpkioTensorView>::zeroed();
            let mut more = false;
            // SAFETY: a live iterator and writable outputs.
            let s = unsafe { st::npkio_safetensors_iter_next(iter, v.as_mut_ptr(), &mut more) };
            assert_eq!(s, NpkioStatus::Ok);
            if !more {
                break;
            }
            // SAFETY: filled by the call above.
            let v = unsafe { v.assume_init() };
            // SAFETY: the view's name and shape belong to the live iterator.
            let (name, shape) = unsafe {
                (
                    std::str::from_utf8(std::slice::from_raw_parts(v.name.cast(), v.name_len))
                        .unwrap(),
                    if v.ndim == 0 {
                        &[][..]
                    } else {
                        std::slice::from_raw_parts(v.shape, v.ndim)
                    },
                )
            };
            assert_eq!(names[seen].as_str().unwrap(), name);
            let k = kinds[u(&kind[seen]) as usize].as_array().unwrap();
            assert_eq!(u(&k[0]), v.dtype as u64);
            let want: Vec<u64> = k[1].as_array().unwrap().iter().map(u).collect();
            assert_eq!(want, shape, "{name}");
            let r = regions[u(&region[seen]) as usize].as_array().unwrap();
            let (base, len) = (u(&r[0]), u(&r[1]));
            let (offset, nbytes) = (u(&offset[seen]), u(&k[2]));
            assert_eq!(nbytes, v.nbytes as u64);
            assert!(offset + nbytes <= len, "{name}");
            if nbytes > 0 {
                assert_eq!(base + offset, v.data as u64, "{name}");
            }
            seen += 1;
        }
        assert_eq!(seen, names.len());
        assert!(seen > advance);
    }

    #[test]
    fn the_iteration_table_matches_the_views_of_files_and_shards() {
        for rel in [
            "examples/tiny-llama.safetensors",
            "tests/fixtures/safetensors/all_dtypes.safetensors",
            "tests/fixtures/safetensors/edge_cases.safetensors",
            "tests/fixtures/safetensors/sharded",
        ] {
            let path = fixture(rel);
            for advance in [0, 1] {
                let mut it: *mut NpkioSafetensorsIter = ptr::null_mut();
                // SAFETY: a NUL-terminated path, no keys, a writable out-handle.
                let s = unsafe {
                    st::npkio_safetensors_iter_open(path.as_ptr(), ptr::null(), 0, &mut it)
                };
                assert_eq!(s, NpkioStatus::Ok, "{rel}");
                for _ in 0..advance {
                    let mut v = std::mem::MaybeUninit::<NpkioTensorView>::zeroed();
                    let mut more = false;
                    // SAFETY: a live iterator and writable outputs.
                    unsafe { st::npkio_safetensors_iter_next(it, v.as_mut_ptr(), &mut more) };
                    assert!(more);
                }
                // The table lists what is still to come.
                check_table(it, 0);
                // SAFETY: the iterator from the open above, freed once.
                unsafe { st::npkio_safetensors_iter_free(it) };
            }
        }
    }

    #[test]
    fn the_names_document_lists_the_arrays_as_the_index_does() {
        let tmp = tempfile::tempdir().unwrap();
        let npk = tmp.path().join("m.npk");
        crate::from_safetensors_file(
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/tiny-llama.safetensors"),
            &npk,
            None::<&[&str]>,
            true,
            1 << 20,
        )
        .unwrap();
        let path = CString::new(npk.to_str().unwrap()).unwrap();
        let mut h: *mut NpkioNumpack = ptr::null_mut();
        // SAFETY: a NUL-terminated path and a writable out-handle.
        assert_eq!(
            unsafe { np::npkio_numpack_open(path.as_ptr(), &mut h) },
            NpkioStatus::Ok
        );
        // SAFETY: a live handle, a buffer of `c` bytes and a writable length.
        let (s, _, doc) = call(
            |b, c, l| unsafe { np::npkio_numpack_names_json(h, b, c, l) },
            1 << 16,
        );
        assert_eq!(s, NpkioStatus::Ok);
        let names: Vec<String> = serde_json::from_slice(&doc).unwrap();
        let mut count = 0usize;
        // SAFETY: a live handle and a writable count.
        assert_eq!(
            unsafe { np::npkio_numpack_count(h, &mut count) },
            NpkioStatus::Ok
        );
        assert_eq!(names.len(), count);
        assert!(count > 3);
        for (i, want) in names.iter().enumerate() {
            let (mut p, mut n): (*const c_char, usize) = (ptr::null(), 0);
            // SAFETY: a live handle and writable outputs; the name it points to lives as long.
            let got = unsafe {
                assert_eq!(
                    np::npkio_numpack_name(h, i, &mut p, &mut n),
                    NpkioStatus::Ok
                );
                std::str::from_utf8(std::slice::from_raw_parts(p.cast(), n)).unwrap()
            };
            assert_eq!(got, want);
        }
        // SAFETY: the handle from the open above, freed once.
        unsafe { np::npkio_numpack_free(h) };
    }
}
