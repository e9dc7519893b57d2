//! A sharded checkpoint of more shards than the open-file limit: 150 shards read in a child
//! whose `RLIMIT_NOFILE` is 64, soft and hard (so npkio cannot raise it): import, metadata,
//! iteration and the loader all succeed, byte-identical to the same reads without the limit;
//! so does the loader over the imported store (300 data files).
//! And a shard replaced while a checkpoint is open is an error naming it; a data file of a
//! store replaced by another writer after the loader opened it is `Busy` for that array
//! alone.

use std::path::{Path, PathBuf};

use npkio::load::{LoadOptions, Loader, Request};
use npkio::{ArrayInput, DType, ErrorKind, NumPack, Options};

use crate::common;

const SHARDS: usize = 150;
const PER_SHARD: usize = 2;
const CHILD: &str = "NPKIO_SHARDS_NOFILE_CHILD";

/// (name, bytes) of every tensor: F32, 16 elements, bytes that differ per tensor.
fn tensors() -> Vec<(String, Vec<u8>)> {
    (0..SHARDS * PER_SHARD)
        .map(|i| {
            let bytes = (0..64u64)
                .map(|k| (i as u64).wrapping_mul(2_654_435_761).wrapping_add(k * 31) as u8)
                .collect();
            (format!("layer.{i:04}.weight"), bytes)
        })
        .collect()
}

/// Writes the checkpoint as `save_pretrained` lays it out, `PER_SHARD` tensors a shard.
fn write_sharded(dir: &Path) -> PathBuf {
    let ts = tensors();
    let npk = dir.join("src.npk");
    let inputs: Vec<ArrayInput<'_>> = ts
        .iter()
        .map(|(name, bytes)| ArrayInput {
            name,
            dtype: DType::F32,
            shape: &[16],
            data: bytes,
        })
        .collect();
    npkio::from_safetensors(&inputs, &npk, true).unwrap();
    let out = dir.join("sharded");
    let mut opts = Options::default();
    opts.max_shard_size = Some(64 * PER_SHARD as u64);
    npkio::to_safetensors_file_with(&npk, &out, None::<&[&str]>, None, &opts).unwrap();
    let shards = std::fs::read_dir(&out)
        .unwrap()
        .filter(|e| {
            let n = e.as_ref().unwrap().file_name();
            n.to_string_lossy().ends_with(".safetensors")
        })
        .count();
    assert_eq!(shards, SHARDS);
    out
}

/// Loads every one of `reqs` with `loader` and appends the bytes to `out`.
fn load_all(loader: &Loader, reqs: &[Request], out: &mut Vec<u8>) {
    let mut bufs: Vec<Vec<u8>> = reqs
        .iter()
        .map(|r| vec![0u8; loader.output(r).unwrap().nbytes as usize])
        .collect();
    let mut dsts: Vec<&mut [u8]> = bufs.iter_mut().map(|b| &mut b[..]).collect();
    loader
        .load(reqs, &mut dsts, &LoadOptions::default())
        .unwrap();
    for b in &bufs {
        out.extend(b);
    }
}

/// Everything read from the checkpoint, as bytes to compare: the metadata, the tensors by
/// iteration, the tensors by the loader, and the imported store's arrays.
fn read_all(ck: &Path, work: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    let meta = npkio::get_safetensors_metadata(ck).unwrap();
    assert_eq!(meta.tensors.len(), SHARDS * PER_SHARD);
    out.extend(format!("{meta:?}").into_bytes());
    for (name, t) in npkio::iter_safetensors(ck, None::<&[&str]>).unwrap() {
        out.extend(name.as_bytes());
        out.extend(t.data());
    }
    let loader = Loader::open(ck).unwrap();
    let reqs: Vec<Request> = meta
        .tensors
        .iter()
        .map(|(n, _)| Request::new(n.clone()))
        .collect();
    load_all(&loader, &reqs, &mut out);
    drop(loader);
    let npk = work.join("imported.npk");
    npkio::from_safetensors_file(ck, &npk, None::<&[&str]>, true, 1 << 20).unwrap();
    let store = NumPack::open(&npk).unwrap();
    for name in store.names() {
        out.extend(name.as_bytes());
        out.extend(store.view(name).unwrap().data);
    }
    // The loader over the imported store: one data file per array, more than the limit.
    let loader = Loader::open(&npk).unwrap();
    load_all(&loader, &reqs, &mut out);
    out
}

/// In the child: the limit is really 64 (soft and hard); read everything, write it out.
fn child(dir: &Path) {
    common::assert_limit(libc::RLIMIT_NOFILE, 64);
    let work = dir.join("child");
    std::fs::create_dir(&work).unwrap();
    let bytes = read_all(&dir.join("sharded"), &work);
    std::fs::write(dir.join("child.out"), bytes).unwrap();
}

#[test]
fn a_hundred_and_fifty_shards_read_under_64_open_files() {
    if let Ok(dir) = std::env::var(CHILD) {
        return child(Path::new(&dir));
    }
    let tmp = tempfile::tempdir().unwrap();
    let ck = write_sharded(tmp.path());
    let work = tmp.path().join("parent");
    std::fs::create_dir(&work).unwrap();
    let reference = read_all(&ck, &work);
    // The imported store holds every tensor's bytes.
    let store = NumPack::open(work.join("imported.npk")).unwrap();
    for (name, bytes) in tensors() {
        assert_eq!(store.view(&name).unwrap().data, &bytes[..], "{name}");
    }

    let mut cmd = common::rerun(
        module_path!(),
        "a_hundred_and_fifty_shards_read_under_64_open_files",
        CHILD,
        tmp.path(),
    );
    common::limit_child(&mut cmd, libc::RLIMIT_NOFILE, 64);
    common::child_passes(&mut cmd, "under 64 open files");
    let got = std::fs::read(tmp.path().join("child.out")).unwrap();
    assert!(got == reference, "reads under the limit differ");
}

/// Replaces `path` by a copy of itself: same bytes, another inode.
fn replace_with_copy(path: &Path) {
    let tmp = path.with_extension("tmp");
    std::fs::copy(path, &tmp).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn a_shard_replaced_after_opening_is_an_error_naming_it() {
    let tmp = tempfile::tempdir().unwrap();
    let ck = write_sharded(tmp.path());
    let shard = ck.join("model-00003-of-00150.safetensors");

    // The reader: opening the file again finds another file.
    let f = npkio::SafeTensorsFile::open(&shard).unwrap();
    replace_with_copy(&shard);
    let err = f.reopen().expect_err("the shard was replaced");
    assert_eq!(err.kind(), ErrorKind::Malformed);
    assert_eq!(err.path(), Some(shard.as_path()));
    assert!(err.message().contains("changed while being read"), "{err}");

    // The loader: a checkpoint of more shards than it keeps open opens each for the load.
    let loader = Loader::open(&ck).unwrap();
    replace_with_copy(&shard);
    let name = "layer.0004.weight"; // in the third shard
    let req = [Request::new(name)];
    let mut buf = [0u8; 64];
    // 150 shards are more than the loader keeps open (at most 128, half the largest
    // budget): each load opens them again, and finds the replaced one.
    let err = loader
        .load(&req, &mut [&mut buf[..]], &LoadOptions::default())
        .expect_err("the shard was replaced");
    assert_eq!(err.kind(), ErrorKind::Malformed, "{err}");
    assert_eq!(err.path(), Some(shard.as_path()), "{err}");
    assert!(err.message().contains("changed while being read"), "{err}");
    assert!(buf.iter().all(|&b| b == 0), "nothing written");
}

#[test]
fn a_loader_over_a_store_of_many_files_reads_arrays_left_alone_and_is_busy_for_replaced_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let npk = tmp.path().join("s.npk");
    let ts = tensors();
    let inputs: Vec<ArrayInput<'_>> = ts
        .iter()
        .map(|(name, bytes)| ArrayInput {
            name,
            dtype: DType::F32,
            shape: &[16],
            data: bytes,
        })
        .collect();
    npkio::from_safetensors(&inputs, &npk, true).unwrap();
    // 300 data files, more than the loader keeps open: each load opens them again.
    let loader = Loader::open(&npk).unwrap();
    let (replaced, alone) = (&ts[3], &ts[4]);
    let mut other = NumPack::open(&npk).unwrap();
    let new = [7u8; 64];
    other
        .save(&[ArrayInput {
            name: &replaced.0,
            dtype: DType::F32,
            shape: &[16],
            data: &new,
        }])
        .unwrap();
    let load = |name: &str, buf: &mut [u8]| {
        let req = [Request::new(name)];
        loader.load(&req, &mut [buf], &LoadOptions::default())
    };
    let mut buf = [0u8; 64];
    load(&alone.0, &mut buf).unwrap();
    assert_eq!(buf, alone.1[..], "an array the change left alone");
    let mut buf = [0u8; 64];
    let err = load(&replaced.0, &mut buf).expect_err("its file was replaced");
    assert_eq!(err.kind(), ErrorKind::Busy, "{err}");
    assert!(err.message().contains("open the loader again"), "{err}");
    assert!(buf.iter().all(|&b| b == 0), "nothing written");
}
