//! Many tensors: a 20,000-tensor checkpoint (tiny tensors, shaped like a mixture-of-experts
//! model's names) converts both ways byte-identically, with the copy thread count respected
//! over the whole conversion (one pool, not one per batch of files).

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread::ThreadId;

use npkio::{ArrayInput, DType, NumPack, Options};

use crate::common;

const N: usize = 20_000;

/// (name, shape, bytes) of tensor `i`: BF16, 1 to 12 elements, bytes that differ per tensor.
fn tensor(i: usize) -> (String, Vec<u64>, Vec<u8>) {
    let (l, rest) = (i / 384, i % 384);
    let proj = ["gate_proj", "up_proj", "down_proj"][rest % 3];
    let name = format!("model.layers.{l}.mlp.experts.{}.{proj}.weight", rest / 3);
    let elems = 1 + (i % 12) as u64;
    let bytes = (0..2 * elems)
        .map(|k| (i as u64).wrapping_mul(2_654_435_761).wrapping_add(k * 97) as u8)
        .collect();
    (name, vec![elems], bytes)
}

fn tensors() -> Vec<(String, Vec<u64>, Vec<u8>)> {
    (0..N).map(tensor).collect()
}

fn write_checkpoint(path: &Path, ts: &[(String, Vec<u64>, Vec<u8>)]) {
    let views: Vec<(&str, safetensors::tensor::TensorView<'_>)> = ts
        .iter()
        .map(|(n, s, b)| {
            let shape: Vec<usize> = s.iter().map(|&d| d as usize).collect();
            let v =
                safetensors::tensor::TensorView::new(safetensors::Dtype::BF16, shape, b).unwrap();
            (n.as_str(), v)
        })
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// Options with `threads` copy threads and a progress callback that records the threads it
/// is called from (and checks their names).
fn options(threads: usize) -> (Options, Arc<Mutex<HashSet<ThreadId>>>) {
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let s = Arc::clone(&seen);
    let main = std::thread::current().id();
    let mut opts = Options::default();
    opts.threads = threads;
    opts.progress = Some(Arc::new(move |_, _| {
        let t = std::thread::current();
        if t.id() != main {
            let name = t.name().unwrap_or_default();
            assert!(name.starts_with("npkio-copy-"), "copy on thread {name:?}");
        }
        s.lock().unwrap().insert(t.id());
    }));
    (opts, seen)
}

fn threads_seen(seen: &Mutex<HashSet<ThreadId>>) -> usize {
    seen.lock().unwrap().len()
}

fn check_store(npk: &Path, ts: &[(String, Vec<u64>, Vec<u8>)]) {
    let store = NumPack::open(npk).unwrap();
    assert_eq!(store.len(), N);
    for i in [0, 1, 383, 384, 9_999, N - 1] {
        let (name, shape, bytes) = &ts[i];
        let info = store.info(name).unwrap();
        assert_eq!((info.dtype, &info.shape), (DType::BF16, shape), "{name}");
        assert_eq!(store.view(name).unwrap().data, &bytes[..], "{name}");
    }
}

#[test]
fn twenty_thousand_tensors_convert_both_ways_byte_identically_on_two_threads() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("moe.safetensors");
    let npk = dir.path().join("moe.npk");
    let back = dir.path().join("back.safetensors");
    let ts = tensors();
    write_checkpoint(&src, &ts);

    let (opts, seen) = options(2);
    npkio::from_safetensors_file_with(&src, &npk, None::<&[&str]>, true, &opts).unwrap();
    // 20,000 files go in batches; the same two workers serve every batch.
    let n = threads_seen(&seen);
    assert!((1..=2).contains(&n), "import copied on {n} threads");
    check_store(&npk, &ts);

    let (opts, seen) = options(2);
    npkio::to_safetensors_file_with(&npk, &back, None::<&[&str]>, None, &opts).unwrap();
    let n = threads_seen(&seen);
    assert!((1..=2).contains(&n), "export copied on {n} threads");
    assert!(std::fs::read(&src).unwrap() == std::fs::read(&back).unwrap());
}

#[test]
fn twenty_thousand_tensors_from_memory_on_one_thread_stay_on_the_callers_thread() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("moe.safetensors");
    let npk = dir.path().join("moe.npk");
    let back = dir.path().join("back.safetensors");
    let ts = tensors();
    write_checkpoint(&src, &ts);
    let inputs: Vec<ArrayInput<'_>> = ts
        .iter()
        .map(|(n, s, b)| ArrayInput {
            name: n,
            dtype: DType::BF16,
            shape: s,
            data: b,
        })
        .collect();

    let (opts, seen) = options(1);
    npkio::from_safetensors_with(&inputs, &npk, true, &opts).unwrap();
    let main = std::thread::current().id();
    assert_eq!(*seen.lock().unwrap(), HashSet::from([main]));
    check_store(&npk, &ts);

    let (opts, seen) = options(1);
    npkio::to_safetensors_file_with(&npk, &back, None::<&[&str]>, None, &opts).unwrap();
    assert_eq!(*seen.lock().unwrap(), HashSet::from([main]));
    assert!(std::fs::read(&src).unwrap() == std::fs::read(&back).unwrap());
}

const CHILD: &str = "NPKIO_SCALE_NOFILE_CHILD";

/// In the child (open-file limit 64, soft and hard): both conversions, the metadata and the
/// iteration, every tensor checked.
fn limited_child(dir: &Path) {
    common::assert_limit(libc::RLIMIT_NOFILE, 64);
    let ts = tensors();
    let src = dir.join("moe.safetensors");
    let npk = dir.join("moe.npk");
    let back = dir.join("back.safetensors");
    npkio::from_safetensors_file(&src, &npk, None::<&[&str]>, true, 1 << 20).unwrap();
    let store = NumPack::open(&npk).unwrap();
    assert_eq!(store.len(), N);
    for (name, shape, bytes) in &ts {
        let info = store.info(name).unwrap();
        assert_eq!((info.dtype, &info.shape), (DType::BF16, shape), "{name}");
        assert_eq!(store.view(name).unwrap().data, &bytes[..], "{name}");
    }
    drop(store);
    npkio::to_safetensors_file(&npk, &back, None::<&[&str]>, None, 1 << 20).unwrap();
    assert!(std::fs::read(&src).unwrap() == std::fs::read(&back).unwrap());
    let meta = npkio::get_safetensors_metadata(&src).unwrap();
    assert_eq!(meta.tensors.len(), N);
    // Every tensor's bytes through iteration, by name.
    let by_name: std::collections::HashMap<&str, &[u8]> =
        ts.iter().map(|(n, _, b)| (n.as_str(), &b[..])).collect();
    let mut seen = 0;
    for (name, t) in npkio::iter_safetensors(&src, None::<&[&str]>).unwrap() {
        assert_eq!(t.dtype(), DType::BF16);
        assert_eq!(t.data(), by_name[name.as_str()], "{name}");
        seen += 1;
    }
    assert_eq!(seen, N);
}

#[test]
fn twenty_thousand_tensors_convert_both_ways_under_64_open_files() {
    if let Ok(dir) = std::env::var(CHILD) {
        return limited_child(Path::new(&dir));
    }
    let dir = tempfile::tempdir().unwrap();
    write_checkpoint(&dir.path().join("moe.safetensors"), &tensors());
    let mut cmd = common::rerun(
        module_path!(),
        "twenty_thousand_tensors_convert_both_ways_under_64_open_files",
        CHILD,
        dir.path(),
    );
    common::limit_child(&mut cmd, libc::RLIMIT_NOFILE, 64);
    common::child_passes(&mut cmd, "under 64 open files");
    assert!(dir.path().join("back.safetensors").exists());
}
