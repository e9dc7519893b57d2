//! The loader against a plain reference: each container's zero-copy view, sliced by hand.
//!
//! Every request kind (whole, `[start, end)` along any dimension, shards, conversions),
//! every fixture and proptest-generated tensors of every dtype in all three container
//! kinds, with every read method, pointer and sink delivery; invalid requests refused with
//! the destinations untouched; `O_DIRECT` on a file whose size is not a block multiple;
//! truncated sources.

#[path = "../common/mod.rs"]
mod common;

mod files;
mod generated;
mod load;

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
