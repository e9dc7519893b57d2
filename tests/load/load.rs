//! The loader against a plain reference: each container's zero-copy view, sliced by hand.
//!
//! Every request kind (whole, `[start, end)` along any dimension, shards, conversions),
//! every fixture and proptest-generated tensors of every dtype in all three container
//! kinds, with every read method, pointer and sink delivery; invalid requests refused with
//! the destinations untouched; `O_DIRECT` on a file whose size is not a block multiple;
//! truncated sources.

use crate::common;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use npkio::internals::dtype::{byte_len, ALL as DTYPES};
use npkio::load::{
    f16_to_f32, f32_to_bf16, f32_to_f16, shard_range, LoadOptions, Loader, Method, Request, Slice,
    Staging,
};
use npkio::{Checkpoint, DType, ErrorKind, NumPack};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------
// The reference

/// Every tensor of a checkpoint as its own reader shows it: (dtype, shape, bytes).
fn reference(path: &Path) -> BTreeMap<String, (DType, Vec<u64>, Vec<u8>)> {
    let mut out = BTreeMap::new();
    if path.join("metadata.npkm").exists() {
        let store = NumPack::open(path).unwrap();
        for name in store.names() {
            let v = store.view(name).unwrap();
            out.insert(
                name.to_string(),
                (v.dtype, v.shape.to_vec(), v.data.to_vec()),
            );
        }
    } else {
        let ck = Checkpoint::open(path).unwrap();
        for i in 0..ck.len() {
            let v = ck.view(i);
            out.insert(
                v.name.to_string(),
                (v.dtype, v.shape.to_vec(), v.data.to_vec()),
            );
        }
    }
    out
}

/// The bytes of `data` (C order, `shape`, `bits` an element) with dimension `dim`
/// restricted to `[s, e)`, element by element.
fn slice_by_hand(data: &[u8], shape: &[u64], bits: u32, dim: usize, s: u64, e: u64) -> Vec<u8> {
    if shape.is_empty() {
        return data.to_vec();
    }
    let outer: u64 = shape[..dim].iter().product();
    let inner_bits = shape[dim + 1..].iter().product::<u64>() * bits as u64;
    assert_eq!(inner_bits % 8, 0, "the test only slices on byte boundaries");
    let inner = (inner_bits / 8) as usize;
    let mut out = Vec::new();
    for o in 0..outer as usize {
        for i in s as usize..e as usize {
            let at = (o * shape[dim] as usize + i) * inner;
            out.extend_from_slice(&data[at..at + inner]);
        }
    }
    out
}

/// `Some((dim, start, end))` for a request's slice on `shape`.
fn resolve(slice: Option<Slice>, shape: &[u64]) -> Option<(usize, u64, u64)> {
    match slice? {
        Slice::Range { dim, start, end } => Some((dim, start, end)),
        Slice::Shard { dim, rank, world } => {
            let (s, e) = shard_range(shape[dim], rank, world).unwrap();
            Some((dim, s, e))
        }
        other => panic!("a slice this test does not know: {other:?}"),
    }
}

fn convert_by_hand(bytes: &[u8], from: DType, to: DType) -> Vec<u8> {
    match (from, to) {
        (a, b) if a == b => bytes.to_vec(),
        (DType::BF16, DType::F32) => bytes
            .chunks(2)
            .flat_map(|c| {
                f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16).to_le_bytes()
            })
            .collect(),
        (DType::F16, DType::F32) => bytes
            .chunks(2)
            .flat_map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])).to_le_bytes())
            .collect(),
        (DType::F32, DType::BF16) => bytes
            .chunks(4)
            .flat_map(|c| f32_to_bf16(u32::from_le_bytes([c[0], c[1], c[2], c[3]])).to_le_bytes())
            .collect(),
        (DType::F32, DType::F16) => bytes
            .chunks(4)
            .flat_map(|c| f32_to_f16(u32::from_le_bytes([c[0], c[1], c[2], c[3]])).to_le_bytes())
            .collect(),
        _ => panic!("no reference for {from} -> {to}"),
    }
}

/// What `req` must deliver, from the reference.
fn expected(refs: &BTreeMap<String, (DType, Vec<u64>, Vec<u8>)>, req: &Request) -> Vec<u8> {
    let (dtype, shape, data) = &refs[&req.name];
    let sliced = match resolve(req.slice, shape) {
        Some((dim, s, e)) => slice_by_hand(data, shape, dtype.bits(), dim, s, e),
        None => data.clone(),
    };
    convert_by_hand(&sliced, *dtype, req.dtype.unwrap_or(*dtype))
}

/// Loads `reqs` into fresh buffers (with a guard byte past each output, which must stay).
fn load_all(loader: &Loader, reqs: &[Request], opts: &LoadOptions) -> Vec<Vec<u8>> {
    let sizes: Vec<usize> = reqs
        .iter()
        .map(|r| loader.output(r).unwrap().nbytes as usize)
        .collect();
    let mut bufs: Vec<Vec<u8>> = sizes.iter().map(|&n| vec![0xA5; n + 1]).collect();
    let mut dsts: Vec<&mut [u8]> = bufs.iter_mut().map(|b| &mut b[..]).collect();
    let report = loader.load(reqs, &mut dsts, opts).unwrap();
    assert_eq!(report.bytes_out, sizes.iter().sum::<usize>() as u64);
    for b in &mut bufs {
        assert_eq!(b.pop(), Some(0xA5), "a byte past the output was written");
    }
    bufs
}

/// Loads `reqs` through a sink and reassembles each output, checking every byte arrives
/// exactly once and no chunk exceeds the staging size.
fn load_sink(
    loader: &Loader,
    reqs: &[Request],
    staging: usize,
    opts: &LoadOptions,
) -> Vec<Vec<u8>> {
    let sizes: Vec<usize> = reqs
        .iter()
        .map(|r| loader.output(r).unwrap().nbytes as usize)
        .collect();
    let outs: Vec<Mutex<(Vec<u8>, Vec<u8>)>> = sizes
        .iter()
        .map(|&n| Mutex::new((vec![0; n], vec![0; n])))
        .collect();
    let sink = |req: usize, off: u64, data: &[u8]| -> Result<(), String> {
        assert!(
            data.len() <= staging,
            "chunk of {} > staging {staging}",
            data.len()
        );
        let mut g = outs[req].lock().unwrap();
        let off = off as usize;
        g.0[off..off + data.len()].copy_from_slice(data);
        for c in &mut g.1[off..off + data.len()] {
            *c += 1;
        }
        Ok(())
    };
    loader
        .load_to_sink(reqs, Staging::Size(staging), &sink, opts)
        .unwrap();
    outs.into_iter()
        .map(|m| {
            let (data, count) = m.into_inner().unwrap();
            assert!(
                count.iter().all(|&c| c == 1),
                "a byte delivered {count:?} times"
            );
            data
        })
        .collect()
}

/// Every request kind for every tensor of `path`.
fn all_requests(refs: &BTreeMap<String, (DType, Vec<u64>, Vec<u8>)>) -> Vec<Request> {
    let mut reqs = Vec::new();
    for (name, (dtype, shape, _)) in refs {
        reqs.push(Request::new(name));
        for (dim, &len) in shape.iter().enumerate() {
            let inner_bits = shape[dim + 1..].iter().product::<u64>() * dtype.bits() as u64;
            if inner_bits % 8 != 0 {
                continue;
            }
            reqs.push(Request::new(name).slice(dim, 0, len));
            if len >= 2 {
                reqs.push(Request::new(name).slice(dim, 1, len - 1));
                reqs.push(Request::new(name).slice(dim, len / 2, len / 2));
            }
            for world in 1..=4 {
                for rank in 0..world {
                    reqs.push(Request::new(name).shard(dim, rank, world));
                }
            }
        }
        if matches!(dtype, DType::BF16 | DType::F16) {
            reqs.push(Request::new(name).to(DType::F32));
            if let Some(&len) = shape.last() {
                reqs.push(
                    Request::new(name)
                        .slice(shape.len() - 1, len / 3, len)
                        .to(DType::F32),
                );
            }
        }
        if *dtype == DType::F32 {
            reqs.push(Request::new(name).to(DType::BF16));
            reqs.push(Request::new(name).to(DType::F16));
            reqs.push(Request::new(name).shard(0, 1, 3).to(DType::F16));
        }
    }
    reqs
}

fn fixture_paths() -> Vec<PathBuf> {
    let f = common::fixtures();
    let st = f.join("safetensors");
    let np = f.join("numpack-0.7");
    vec![
        st.join("all_dtypes.safetensors"),
        st.join("with_metadata.safetensors"),
        st.join("edge_cases.safetensors"),
        st.join("sharded"),
        st.join("sharded/model.safetensors.index.json"),
        np.join("basic.npk"),
        np.join("dropped.npk"),
        np.join("appended.npk"),
        np.join("segmented.npk"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tiny-llama.safetensors"),
    ]
}

fn methods() -> [LoadOptions; 4] {
    let small = LoadOptions::default().chunk_size(4096).threads(3);
    [
        LoadOptions::default(),
        LoadOptions::default().method(Method::Buffered).threads(1),
        small.clone().method(Method::Direct),
        small.drop_behind(true),
    ]
}

#[test]
fn every_request_kind_on_every_fixture_matches_the_view_sliced_by_hand() {
    for path in fixture_paths() {
        let refs = reference(&path);
        let loader = Loader::open(&path).unwrap();
        assert_eq!(loader.tensors().len(), refs.len(), "{}", path.display());
        let reqs = all_requests(&refs);
        for opts in methods() {
            let got = load_all(&loader, &reqs, &opts);
            for (r, g) in reqs.iter().zip(&got) {
                assert!(
                    *g == expected(&refs, r),
                    "{}: {r:?} with {opts:?}",
                    path.display()
                );
            }
        }
        for staging in [4096, 1 << 20] {
            let got = load_sink(&loader, &reqs, staging, &LoadOptions::default());
            for (r, g) in reqs.iter().zip(&got) {
                assert!(*g == expected(&refs, r), "{}: sink {r:?}", path.display());
            }
        }
    }
}

#[test]
fn tensor_parallel_halves_join_into_the_whole_tensor() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tiny-llama.safetensors");
    let loader = Loader::open(&model).unwrap();
    let refs = reference(&model);
    for (name, (dtype, shape, data)) in &refs {
        if shape.len() != 2 {
            continue;
        }
        let halves = |dim| {
            let reqs = [
                Request::new(name).shard(dim, 0, 2),
                Request::new(name).shard(dim, 1, 2),
            ];
            load_all(&loader, &reqs, &LoadOptions::default())
        };
        let rows = halves(0);
        assert_eq!([&rows[0][..], &rows[1][..]].concat(), *data, "{name} dim 0");
        let cols = halves(1);
        let e = (dtype.bits() / 8) as usize;
        let (n, m) = (shape[0] as usize, shape[1] as usize);
        let (m0, m1) = (cols[0].len() / n / e, cols[1].len() / n / e);
        assert_eq!(m0 + m1, m);
        let mut joined = Vec::new();
        for r in 0..n {
            joined.extend_from_slice(&cols[0][r * m0 * e..(r + 1) * m0 * e]);
            joined.extend_from_slice(&cols[1][r * m1 * e..(r + 1) * m1 * e]);
        }
        assert_eq!(joined, *data, "{name} dim 1");
    }
}

// ---------------------------------------------------------------------------------------
// Invalid requests

#[test]
fn every_invalid_request_is_refused_before_any_destination_byte_changes() {
    let path = common::fixtures().join("safetensors/with_metadata.safetensors");
    let loader = Loader::open(&path).unwrap();
    let w = loader.tensor("encoder.weight").unwrap().clone(); // F32 [32, 16]
    let good = Request::new("encoder.weight");
    let need = w.nbytes as usize;
    let cases: Vec<(Request, usize, ErrorKind, &str)> = vec![
        (
            Request::new("no.such"),
            need,
            ErrorKind::InvalidArgument,
            "no such tensor",
        ),
        (
            good.clone().slice(2, 0, 1),
            need,
            ErrorKind::InvalidArgument,
            "dimension 2",
        ),
        (
            good.clone().slice(0, 5, 33),
            need,
            ErrorKind::InvalidArgument,
            "out of range",
        ),
        (
            good.clone().slice(1, 9, 3),
            need,
            ErrorKind::InvalidArgument,
            "out of range",
        ),
        (
            good.clone().shard(0, 2, 2),
            need,
            ErrorKind::InvalidArgument,
            "not a valid shard",
        ),
        (
            good.clone().shard(0, 0, 0),
            need,
            ErrorKind::InvalidArgument,
            "not a valid shard",
        ),
        (
            good.clone(),
            need - 1,
            ErrorKind::InvalidArgument,
            "destination holds",
        ),
        (
            good.clone().to(DType::I32),
            need,
            ErrorKind::Unsupported,
            "cannot convert",
        ),
        (
            good.clone().to(DType::F16),
            need / 2 - 1,
            ErrorKind::InvalidArgument,
            "destination",
        ),
    ];
    for (bad, cap, kind, text) in &cases {
        // A good request first, the bad one second: neither destination may change.
        let reqs = [good.clone(), bad.clone()];
        let mut a = vec![0x5Au8; need];
        let mut b = vec![0x5Au8; *cap];
        let err = loader
            .load(
                &reqs,
                &mut [&mut a[..], &mut b[..]],
                &LoadOptions::default(),
            )
            .unwrap_err();
        assert_eq!(err.kind(), *kind, "{bad:?}: {err}");
        let msg = err.to_string();
        assert!(
            msg.contains("request 1") && msg.contains(text),
            "{bad:?}: {msg}"
        );
        assert!(msg.contains(&bad.name), "{msg}");
        assert!(
            a.iter().chain(&b).all(|&x| x == 0x5A),
            "{bad:?} wrote bytes"
        );
    }
    // All at once: one error naming every bad request.
    let reqs: Vec<Request> = std::iter::once(good.clone())
        .chain(cases.iter().map(|c| c.0.clone()))
        .collect();
    let mut bufs: Vec<Vec<u8>> = std::iter::once(need)
        .chain(cases.iter().map(|c| c.1))
        .map(|n| vec![0x5A; n])
        .collect();
    let mut dsts: Vec<&mut [u8]> = bufs.iter_mut().map(|b| &mut b[..]).collect();
    let err = loader
        .load(&reqs, &mut dsts, &LoadOptions::default())
        .unwrap_err();
    let msg = err.to_string();
    for i in 1..reqs.len() {
        assert!(
            msg.contains(&format!("request {i} ")),
            "request {i} not named: {msg}"
        );
    }
    assert!(!msg.contains("request 0 "), "{msg}");
    assert!(bufs.iter().flatten().all(|&x| x == 0x5A));
    // Sinks validate the same way and never call the sink.
    let sink = |_: usize, _: u64, _: &[u8]| -> Result<(), String> { panic!("sink called") };
    let err = loader
        .load_to_sink(&reqs, Staging::Size(4096), &sink, &LoadOptions::default())
        .unwrap_err();
    assert!(err.to_string().contains("request 1 "));
    // A destination count that differs from the request count.
    let mut a = vec![0u8; need];
    let err = loader
        .load(
            &[good.clone(), good],
            &mut [&mut a[..]],
            &LoadOptions::default(),
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument);
}

#[test]
fn sub_byte_slices_off_byte_boundaries_are_unsupported() {
    let path = common::fixtures().join("safetensors/all_dtypes.safetensors");
    let loader = Loader::open(&path).unwrap();
    for t in loader.tensors() {
        if t.dtype.bits() % 8 == 0 || t.shape.len() < 2 {
            continue;
        }
        let last = t.shape.len() - 1;
        let inner_bits = t.dtype.bits() as u64; // one element past the last dimension
        if (t.shape[last] * inner_bits) % 8 == 0 && t.shape[last] >= 2 {
            let err = loader
                .output(&Request::new(&t.name).slice(last, 0, 1))
                .unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// Files that change or resist

fn write_safetensors(path: &Path, tensors: &[(String, DType, Vec<u64>, Vec<u8>)]) {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, d, s, b)| {
            let shape: Vec<usize> = s.iter().map(|&x| x as usize).collect();
            (
                n.clone(),
                safetensors::tensor::TensorView::new(d.to_safetensors().unwrap(), shape, b)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::tensor::serialize_to_file(views, None, path).unwrap();
}

fn pattern(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A directory on the target's filesystem (not tmpfs, which refuses `O_DIRECT`).
fn disk_dir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

#[test]
fn direct_reads_handle_a_file_whose_size_is_not_a_block_multiple() {
    let dir = disk_dir();
    let path = dir.path().join("odd.safetensors");
    // Odd sizes everywhere: header, tensors, and the file's end mid-block.
    let tensors = vec![
        ("a".to_string(), DType::U8, vec![4099], pattern(4099, 1)),
        (
            "b".to_string(),
            DType::F32,
            vec![3, 1001],
            pattern(12012, 2),
        ),
        ("c".to_string(), DType::U8, vec![77, 13], pattern(1001, 3)),
    ];
    write_safetensors(&path, &tensors);
    let len = std::fs::metadata(&path).unwrap().len();
    assert_ne!(len % 4096, 0);
    let loader = Loader::open(&path).unwrap();
    let refs = reference(&path);
    let reqs = all_requests(&refs);
    for threads in [1, 4] {
        let opts = LoadOptions::default()
            .method(Method::Direct)
            .threads(threads)
            .chunk_size(4096);
        let sizes: Vec<usize> = reqs
            .iter()
            .map(|r| loader.output(r).unwrap().nbytes as usize)
            .collect();
        let mut bufs: Vec<Vec<u8>> = sizes.iter().map(|&n| vec![0; n]).collect();
        let mut dsts: Vec<&mut [u8]> = bufs.iter_mut().map(|b| &mut b[..]).collect();
        let report = loader.load(&reqs, &mut dsts, &opts).unwrap();
        if report.direct_refused {
            eprintln!(
                "note: the filesystem under {} refuses O_DIRECT; the loads fell back to \
                 buffered reads",
                dir.path().display()
            );
        } else {
            assert!(report.direct_bytes > 0, "{report:?}");
        }
        for (r, g) in reqs.iter().zip(&bufs) {
            assert!(*g == expected(&refs, r), "{r:?}");
        }
    }
}

#[test]
fn a_source_truncated_before_the_load_is_an_error_naming_it() {
    let dir = disk_dir();
    let path = dir.path().join("t.safetensors");
    write_safetensors(
        &path,
        &[(
            "x".to_string(),
            DType::U8,
            vec![100_000],
            pattern(100_000, 4),
        )],
    );
    let loader = Loader::open(&path).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(50_000).unwrap();
    let mut out = vec![0x11u8; 100_000];
    for method in [Method::Buffered, Method::Direct] {
        let opts = LoadOptions::default().method(method);
        let err = loader
            .load(&[Request::new("x")], &mut [&mut out[..]], &opts)
            .unwrap_err();
        assert!(err.to_string().contains("t.safetensors"), "{err}");
        assert_eq!(err.array_name(), Some("x"));
        assert!(
            out.iter().all(|&b| b == 0x11),
            "bytes written before the check"
        );
    }
}

#[test]
fn a_source_truncated_during_the_load_is_an_error_not_a_signal() {
    let dir = disk_dir();
    let path = dir.path().join("t.safetensors");
    write_safetensors(
        &path,
        &[(
            "x".to_string(),
            DType::U8,
            vec![1 << 20],
            pattern(1 << 20, 5),
        )],
    );
    for method in [Method::Buffered, Method::Direct] {
        let loader = Loader::open(&path).unwrap();
        // One worker, small chunks: the sink truncates the file on its first chunk, so the
        // next read finds the file short.
        let opts = LoadOptions::default().method(method).threads(1);
        let calls = Mutex::new(0);
        let sink = |_: usize, _: u64, _: &[u8]| -> Result<(), String> {
            let mut c = calls.lock().unwrap();
            if *c == 0 {
                let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
                f.set_len(4096).unwrap();
            }
            *c += 1;
            Ok(())
        };
        let err = loader
            .load_to_sink(&[Request::new("x")], Staging::Size(64 << 10), &sink, &opts)
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io, "{err}");
        assert!(err.to_string().contains("truncated"), "{err}");
        assert_eq!(*calls.lock().unwrap(), 1);
        write_safetensors(
            &path,
            &[(
                "x".to_string(),
                DType::U8,
                vec![1 << 20],
                pattern(1 << 20, 5),
            )],
        );
    }
}

#[test]
fn a_sink_error_stops_the_load_and_names_the_request() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tiny-llama.safetensors");
    let loader = Loader::open(&model).unwrap();
    let sink = |_: usize, _: u64, _: &[u8]| -> Result<(), String> { Err("device full".into()) };
    let err = loader
        .load_to_sink(
            &[Request::new("lm_head.weight")],
            Staging::Size(4096),
            &sink,
            &LoadOptions::default(),
        )
        .unwrap_err();
    assert!(err.to_string().contains("device full"), "{err}");
    assert_eq!(err.array_name(), Some("lm_head.weight"));
}

#[test]
fn caller_staging_buffers_bound_the_chunks_and_the_workers() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tiny-llama.safetensors");
    let loader = Loader::open(&model).unwrap();
    let refs = reference(&model);
    let reqs: Vec<Request> = refs.keys().map(Request::new).collect();
    let mut b1 = vec![0u8; 8192];
    let mut b2 = vec![0u8; 5000];
    let (p1, p2) = (b1.as_ptr() as usize, b2.as_ptr() as usize);
    let got: Vec<Mutex<Vec<u8>>> = reqs
        .iter()
        .map(|r| Mutex::new(vec![0; loader.output(r).unwrap().nbytes as usize]))
        .collect();
    let sink = |req: usize, off: u64, data: &[u8]| -> Result<(), String> {
        let p = data.as_ptr() as usize;
        assert!(p == p1 || p == p2, "data not in a caller buffer");
        assert!(data.len() <= 5000);
        got[req].lock().unwrap()[off as usize..off as usize + data.len()].copy_from_slice(data);
        Ok(())
    };
    let report = loader
        .load_to_sink(
            &reqs,
            Staging::Buffers(vec![&mut b1[..], &mut b2[..]]),
            &sink,
            &LoadOptions::default().threads(8),
        )
        .unwrap();
    assert_eq!(report.threads, 2);
    for (r, g) in reqs.iter().zip(got) {
        assert_eq!(g.into_inner().unwrap(), expected(&refs, r), "{r:?}");
    }
}

#[test]
fn progress_reaches_the_total() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tiny-llama.safetensors");
    let loader = Loader::open(&model).unwrap();
    let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
    let s2 = seen.clone();
    let opts = LoadOptions::default()
        .chunk_size(4096)
        .progress(Some(std::sync::Arc::new(move |d, t| {
            s2.lock().unwrap().push((d, t))
        })));
    let reqs: Vec<Request> = loader
        .tensors()
        .iter()
        .map(|t| Request::new(&t.name))
        .collect();
    let out = load_all(&loader, &reqs, &opts);
    let total: u64 = out.iter().map(|o| o.len() as u64).sum();
    let seen = seen.lock().unwrap();
    assert!(seen.len() > 1);
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(*seen.last().unwrap(), (total, total));
}

#[test]
fn neighbouring_tensors_into_one_arena_are_merged_into_few_reads() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tiny-llama.safetensors");
    let loader = Loader::open(&model).unwrap();
    let refs = reference(&model);
    // File order, one arena laid out like the file's data section.
    let mut order: Vec<&npkio::load::LoadTensor> = loader.tensors().iter().collect();
    let ck = Checkpoint::open(&model).unwrap();
    let offsets: HashMap<String, u64> = ck
        .infos()
        .map(|t| (t.name.clone(), t.data_offsets.0))
        .collect();
    order.sort_by_key(|t| offsets[&t.name]);
    let total: u64 = order.iter().map(|t| t.nbytes).sum();
    let mut arena = vec![0u8; total as usize];
    let mut rest = &mut arena[..];
    let mut dsts = Vec::new();
    for t in &order {
        let (a, b) = rest.split_at_mut(t.nbytes as usize);
        dsts.push(a);
        rest = b;
    }
    let reqs: Vec<Request> = order.iter().map(|t| Request::new(&t.name)).collect();
    let report = loader
        .load(&reqs, &mut dsts, &LoadOptions::default())
        .unwrap();
    // 8 MiB chunks: one task per 8 MiB of data, not one per tensor.
    assert!(
        report.tasks <= (total as usize).div_ceil(8 << 20) + 1,
        "{report:?}"
    );
    assert!(report.tasks < reqs.len());
    let mut pos = 0;
    for t in &order {
        assert_eq!(
            arena[pos..pos + t.nbytes as usize],
            refs[&t.name].2[..],
            "{}",
            t.name
        );
        pos += t.nbytes as usize;
    }
}

// ---------------------------------------------------------------------------------------
// Generated checkpoints

#[derive(Debug, Clone)]
struct Gen {
    dtype: DType,
    shape: Vec<u64>,
    data: Vec<u8>,
}

fn tensor() -> impl Strategy<Value = Gen> {
    (
        prop::sample::select(&DTYPES[..]),
        prop::collection::vec(0u64..7, 0..=4),
    )
        .prop_filter("SafeTensors dtype with whole bytes", |(d, s)| {
            d.safetensors_name().is_some() && byte_len(*d, s).is_some()
        })
        .prop_flat_map(|(dtype, shape)| {
            let n = byte_len(dtype, &shape).unwrap() as usize;
            prop::collection::vec(any::<u8>(), n).prop_map(move |data| Gen {
                dtype,
                shape: shape.clone(),
                data,
            })
        })
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    Single,
    Sharded,
    NumPack,
}

/// Writes the tensors as one of the three container kinds; returns the path to open.
fn write(dir: &Path, kind: Kind, tensors: &[Gen], drop_rows: &[u64]) -> PathBuf {
    let named: Vec<(String, DType, Vec<u64>, Vec<u8>)> = tensors
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("t{i}"), t.dtype, t.shape.clone(), t.data.clone()))
        .collect();
    match kind {
        Kind::Single => {
            let p = dir.join("m.safetensors");
            write_safetensors(&p, &named);
            p
        }
        Kind::Sharded => {
            let half = named.len() / 2;
            let mut map = BTreeMap::new();
            let mut total = 0;
            for (k, part) in [&named[..half], &named[half..]].iter().enumerate() {
                let file = format!("model-{:05}-of-00002.safetensors", k + 1);
                write_safetensors(&dir.join(&file), part);
                for t in part.iter() {
                    map.insert(t.0.clone(), file.clone());
                    total += t.3.len() as u64;
                }
            }
            let index = serde_json::json!({"metadata": {"total_size": total}, "weight_map": map});
            std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
            dir.to_path_buf()
        }
        Kind::NumPack => {
            let st = dir.join("src.safetensors");
            write_safetensors(&st, &named);
            let npk = dir.join("m.npk");
            npkio::from_safetensors_file(&st, &npk, None::<&[&str]>, false, 4096).unwrap();
            let mut store = NumPack::open(&npk).unwrap();
            for (n, t) in named.iter().map(|t| (&t.0, t)) {
                let rows = t.2.first().copied().unwrap_or(0);
                if t.1.bits() % 8 == 0 && rows >= 2 {
                    let drop: Vec<u64> = drop_rows
                        .iter()
                        .map(|r| r % rows)
                        .take(rows as usize - 1)
                        .collect();
                    let mut drop = drop;
                    drop.sort();
                    drop.dedup();
                    store.drop_rows(n, &drop).unwrap();
                }
            }
            drop(store);
            npk
        }
    }
}

fn slice_strategy() -> impl Strategy<Value = (u8, usize, u64, u64, u64)> {
    // (kind: 0 whole, 1 range, 2 shard; dim; a; b; world)
    (0u8..3, 0usize..4, 0u64..8, 0u64..8, 1u64..6)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn generated_checkpoints_load_like_their_views(
        tensors in prop::collection::vec(tensor(), 1..6),
        kind in prop::sample::select(vec![Kind::Single, Kind::Sharded, Kind::NumPack]),
        drop_rows in prop::collection::vec(0u64..8, 0..3),
        slices in prop::collection::vec(slice_strategy(), 1..12),
        method in prop::sample::select(vec![Method::Auto, Method::Buffered, Method::Direct]),
        threads in 1usize..5,
        chunk in prop::sample::select(vec![4096usize, 8192, 1 << 20]),
        sink in any::<bool>(),
    ) {
        let dir = disk_dir();
        let path = write(dir.path(), kind, &tensors, &drop_rows);
        let refs = reference(&path);
        let loader = Loader::open(&path).unwrap();
        prop_assert_eq!(loader.tensors().len(), refs.len());
        let names: Vec<&String> = refs.keys().collect();
        let mut reqs = Vec::new();
        for (i, &(k, dim, a, b, world)) in slices.iter().enumerate() {
            let name = names[i % names.len()];
            let (dtype, shape, _) = &refs[name];
            let mut r = Request::new(name.as_str());
            if k > 0 && !shape.is_empty() {
                let dim = dim % shape.len();
                let len = shape[dim];
                let inner_bits = shape[dim + 1..].iter().product::<u64>() * dtype.bits() as u64;
                if inner_bits % 8 == 0 {
                    r = if k == 1 {
                        let (s, e) = (a.min(b).min(len), a.max(b).min(len));
                        r.slice(dim, s, e)
                    } else {
                        r.shard(dim, a % world, world)
                    };
                }
            }
            if matches!(dtype, DType::BF16 | DType::F16) && a % 2 == 0 {
                r = r.to(DType::F32);
            } else if *dtype == DType::F32 && a % 3 == 0 {
                r = r.to(if b % 2 == 0 { DType::BF16 } else { DType::F16 });
            }
            reqs.push(r);
        }
        let opts = LoadOptions::default().method(method).threads(threads).chunk_size(chunk);
        let got = if sink {
            load_sink(&loader, &reqs, chunk.max(4096), &opts)
        } else {
            load_all(&loader, &reqs, &opts)
        };
        for (r, g) in reqs.iter().zip(&got) {
            prop_assert!(*g == expected(&refs, r), "{:?}", r);
        }
    }
}

#[test]
fn strided_slices_take_every_read_rule() {
    // Rows of 40 bytes with a 400 KB gap (one read per row), of 80 KB (one read per row
    // straight into the destination), and short gaps (one read for the span of a group).
    let dir = disk_dir();
    let path = dir.path().join("wide.safetensors");
    let tensors = vec![
        (
            "wide".to_string(),
            DType::F32,
            vec![5, 100_000],
            pattern(2_000_000, 6),
        ),
        (
            "half".to_string(),
            DType::BF16,
            vec![6, 3, 20_000],
            pattern(720_000, 7),
        ),
        (
            "narrow".to_string(),
            DType::F16,
            vec![300, 50],
            pattern(30_000, 8),
        ),
    ];
    write_safetensors(&path, &tensors);
    let loader = Loader::open(&path).unwrap();
    let refs = reference(&path);
    let mut reqs = Vec::new();
    for (name, dim, s, e) in [
        ("wide", 1, 10, 20),
        ("wide", 1, 0, 20_000),
        ("wide", 1, 99_990, 100_000),
        ("half", 1, 1, 2),
        ("half", 2, 0, 17),
        ("half", 2, 1000, 19_999),
        ("narrow", 1, 3, 9),
    ] {
        reqs.push(Request::new(name).slice(dim, s, e));
        let to = if name == "wide" {
            DType::BF16
        } else {
            DType::F32
        };
        reqs.push(Request::new(name).slice(dim, s, e).to(to));
    }
    for method in [Method::Buffered, Method::Direct, Method::Auto] {
        let opts = LoadOptions::default().method(method);
        let got = load_all(&loader, &reqs, &opts);
        for (r, g) in reqs.iter().zip(&got) {
            assert!(*g == expected(&refs, r), "{r:?} {method:?}");
        }
        let got = load_sink(&loader, &reqs, 4096, &opts);
        for (r, g) in reqs.iter().zip(&got) {
            assert!(*g == expected(&refs, r), "sink {r:?} {method:?}");
        }
    }
    // The per-row rule reads no gap bytes.
    let r = [Request::new("wide").slice(1, 10, 20)];
    let mut out = [0u8; 5 * 10 * 4];
    let report = loader
        .load(&r, &mut [&mut out[..]], &LoadOptions::default())
        .unwrap();
    assert_eq!(report.bytes_read, 200);
}

#[test]
fn direct_reads_go_straight_into_destinations_aligned_like_the_file() {
    let dir = disk_dir();
    let path = dir.path().join("aligned.safetensors");
    let tensors = vec![
        ("a".to_string(), DType::U8, vec![50_001], pattern(50_001, 9)),
        (
            "b".to_string(),
            DType::U8,
            vec![3, 30_000],
            pattern(90_000, 10),
        ),
    ];
    write_safetensors(&path, &tensors);
    let ck = Checkpoint::open(&path).unwrap();
    let start = ck.shards()[0].data_start();
    let loader = Loader::open(&path).unwrap();
    for (name, _, _, data) in &tensors {
        let info = ck.infos().find(|t| &t.name == name).unwrap();
        let file_off = start + info.data_offsets.0;
        let mut buf = vec![0u8; data.len() + 8192];
        let skew = (file_off as usize + 4096 - buf.as_ptr() as usize % 4096) % 4096;
        let dst = &mut buf[skew..skew + data.len()];
        let opts = LoadOptions::default()
            .method(Method::Direct)
            .threads(2)
            .chunk_size(16384);
        let report = loader
            .load(&[Request::new(name)], &mut [dst], &opts)
            .unwrap();
        assert_eq!(&buf[skew..skew + data.len()], &data[..], "{name}");
        if !report.direct_refused {
            assert!(
                report.direct_bytes >= data.len() as u64 - 2 * 4096,
                "{report:?}"
            );
        }
        assert!(buf[..skew]
            .iter()
            .chain(&buf[skew + data.len()..])
            .all(|&b| b == 0));
    }
}

#[test]
fn an_arena_laid_out_like_the_file_is_read_in_place_across_tensors() {
    let dir = disk_dir();
    let path = dir.path().join("arena.safetensors");
    let tensors = vec![
        (
            "a".to_string(),
            DType::U8,
            vec![50_001],
            pattern(50_001, 11),
        ),
        (
            "b".to_string(),
            DType::F32,
            vec![3, 10_000],
            pattern(120_000, 12),
        ),
        ("c".to_string(), DType::U8, vec![7], pattern(7, 13)),
        (
            "d".to_string(),
            DType::U8,
            vec![20_000],
            pattern(20_000, 14),
        ),
    ];
    write_safetensors(&path, &tensors);
    let file_len = std::fs::metadata(&path).unwrap().len() as usize;
    let ck = Checkpoint::open(&path).unwrap();
    let start = ck.shards()[0].data_start() as usize;
    let loader = Loader::open(&path).unwrap();
    let mut arena = vec![0u8; file_len + 4096];
    let base = (4096 - arena.as_ptr() as usize % 4096) % 4096;
    // Requests in file order, each destination at its file offset in the arena.
    let mut infos: Vec<_> = ck.infos().collect();
    infos.sort_by_key(|t| t.data_offsets.0);
    let reqs: Vec<Request> = infos.iter().map(|t| Request::new(&t.name)).collect();
    let mut rest = &mut arena[base + start..base + file_len];
    let mut dsts = Vec::new();
    for t in &infos {
        let (x, y) = rest.split_at_mut(t.len() as usize);
        dsts.push(x);
        rest = y;
    }
    let opts = LoadOptions::default()
        .method(Method::Direct)
        .threads(3)
        .chunk_size(16384);
    loader.load(&reqs, &mut dsts, &opts).unwrap();
    let file = std::fs::read(&path).unwrap();
    assert!(arena[base + start..base + file_len] == file[start..]);
    assert!(arena[..base + start].iter().all(|&b| b == 0));
    assert!(arena[base + file_len..].iter().all(|&b| b == 0));
}
