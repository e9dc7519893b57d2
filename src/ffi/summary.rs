//! A checkpoint's whole description in one call: `npkio_safetensors_metadata_json` gives
//! what `get_safetensors_metadata` returns (every tensor's dtype, shape and offsets, and the
//! `__metadata__`) as one compact JSON document, so that a binding builds its result from a
//! single foreign call instead of several per tensor. `npkio_safetensors_bytes_json` does
//! the same for a whole file held in memory, so that a binding can view its tensors in
//! place (the `load(bytes)` of the `safetensors` packages).

use std::ffi::c_char;

use serde_json::{json, Map, Value};

use super::args::{give_json, path_arg, slice_arg, take_untaken, Out};
use super::error::{FfiError, FfiResult, NpkioStatus};
use super::panic::status_boundary;
use crate::dtype::DType;
use crate::safetensors::index::Checkpoint;

/// One tensor's entry.
fn tensor_json(dtype: &str, shape: &[u64], (begin, end): (u64, u64)) -> Value {
    json!({"shape": shape, "dtype": dtype, "data_offsets": [begin, end]})
}

/// The JSON text of a checkpoint's description, written out directly (a checkpoint may
/// list hundreds of thousands of tensors: no `Value` tree is built for it). The bytes are
/// those `serde_json` gives for the same document.
fn metadata_json(c: &Checkpoint) -> Vec<u8> {
    // Shard by shard, each in file order, as `get_safetensors_metadata` lists them.
    let tensors = c
        .shards()
        .iter()
        .flat_map(|s| s.tensors())
        .map(|t| (t.name.as_str(), &t.shape[..], t.dtype, t.data_offsets));
    metadata_json_of(c.len(), tensors, c.metadata())
}

/// [`metadata_json`] of a checkpoint in object storage (see `get_safetensors_metadata`).
fn metadata_json_remote(path: &std::path::Path) -> crate::Result<Vec<u8>> {
    let m = crate::get_safetensors_metadata(path)?;
    let tensors = m
        .tensors
        .iter()
        .map(|(name, t)| (name.as_str(), &t.shape[..], t.dtype, t.data_offsets));
    Ok(metadata_json_of(
        m.tensors.len(),
        tensors,
        m.metadata.as_deref(),
    ))
}

/// The document of [`metadata_json`]: `n` tensors (name, shape, dtype, data offsets).
fn metadata_json_of<'a>(
    n: usize,
    tensors: impl Iterator<Item = (&'a str, &'a [u64], crate::DType, (u64, u64))>,
    metadata: Option<&[(String, String)]>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + n * 96);
    out.extend_from_slice(b"{\"tensors\":{");
    for (k, (name, shape, dtype, offsets)) in tensors.enumerate() {
        if k > 0 {
            out.push(b',');
        }
        push_str(&mut out, name);
        out.extend_from_slice(b":{\"shape\":[");
        for (j, &d) in shape.iter().enumerate() {
            if j > 0 {
                out.push(b',');
            }
            push_u64(&mut out, d);
        }
        out.extend_from_slice(b"],\"dtype\":");
        push_str(
            &mut out,
            dtype.safetensors_name().unwrap_or(dtype.numpy_name()),
        );
        out.extend_from_slice(b",\"data_offsets\":[");
        push_u64(&mut out, offsets.0);
        out.push(b',');
        push_u64(&mut out, offsets.1);
        out.extend_from_slice(b"]}");
    }
    out.extend_from_slice(b"},\"metadata\":{");
    for (k, (key, value)) in metadata.iter().copied().flatten().enumerate() {
        if k > 0 {
            out.push(b',');
        }
        push_str(&mut out, key);
        out.push(b':');
        push_str(&mut out, value);
    }
    out.extend_from_slice(b"},\"has_metadata\":");
    out.extend_from_slice(if metadata.is_some() {
        b"true}"
    } else {
        b"false}"
    });
    out
}

/// `s` as a JSON string.
fn push_str(out: &mut Vec<u8>, s: &str) {
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

/// `n` as a JSON number.
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
/// or a directory holding one; or a URL of object storage naming one, see
/// `npkio_load_open`) `path` in one UTF-8 JSON document, reading headers only:
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
        let doc = match path.to_str().filter(|p| crate::remote::is_url(p)) {
            Some(_) => metadata_json_remote(path)?,
            _ => metadata_json(&Checkpoint::open(path)?),
        };
        // SAFETY: the caller's contract on `buffer`.
        unsafe { give_json(doc, buffer, capacity, len_out) }
    })
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
        let doc = take_untaken();
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

    /// The description written out directly is, byte for byte, what `serde_json` makes of
    /// the same document, for every SafeTensors fixture that opens (names and metadata
    /// that need escaping included) and a sharded checkpoint.
    #[test]
    fn the_description_is_the_documents_serde_json_bytes() {
        use serde_json::{json, Map};

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
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let mut all = vec![
            root.join("examples/tiny-llama.safetensors"),
            root.join("tests/fixtures/safetensors/sharded"),
        ];
        files(&root.join("tests/fixtures"), &mut all);
        let tmp = tempfile::tempdir().unwrap();
        let odd = tmp.path().join("odd.safetensors");
        let header = r#"{"__metadata__":{"q\"uote":"tab\there","é":"\u0001"},"n\\a\"me\n":{"dtype":"F32","shape":[],"data_offsets":[0,4]},"ü":{"dtype":"BF16","shape":[0,3],"data_offsets":[4,4]}}"#;
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend_from_slice(&[0; 4]);
        std::fs::write(&odd, bytes).unwrap();
        all.push(odd);
        let mut described = 0;
        for p in &all {
            let Ok(meta) = crate::convert::get_safetensors_metadata(p) else {
                continue;
            };
            let mut tensors = Map::new();
            for (name, t) in &meta.tensors {
                let dtype = t.dtype.safetensors_name().unwrap_or(t.dtype.numpy_name());
                let (b, e) = t.data_offsets;
                tensors.insert(
                    name.clone(),
                    json!({"shape": t.shape, "dtype": dtype, "data_offsets": [b, e]}),
                );
            }
            let metadata: Map<String, Value> = meta
                .metadata
                .iter()
                .flatten()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            let want = json!({
                "tensors": tensors,
                "metadata": metadata,
                "has_metadata": meta.metadata.is_some(),
            });
            let got = super::metadata_json(&super::Checkpoint::open(p).unwrap());
            assert_eq!(
                String::from_utf8(got).unwrap(),
                serde_json::to_string(&want).unwrap(),
                "{}",
                p.display()
            );
            described += 1;
        }
        assert!(described > 5);
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
