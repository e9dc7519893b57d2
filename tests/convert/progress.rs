//! Conversions report progress as loads do: `(bytes copied so far, bytes in all)`, one call
//! at a time, never going back, ending at the total: importing a file or tensors in memory,
//! and exporting to one file or to shards, with several copy threads and small chunks so
//! that many reports race.

use std::sync::{Arc, Mutex};

use crate::common::{tensors, write_npk, write_npk_with, Tensors};
use npkio::Options;

/// Every `(done, total)` a callback was given, in order.
type Reports = Arc<Mutex<Vec<(u64, u64)>>>;

/// Options whose progress callback records every report, and the record.
fn recording() -> (Options, Reports) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut opts = Options::with_chunk_size(4096);
    opts.threads = 4;
    opts.progress = Some(Arc::new({
        let seen = Arc::clone(&seen);
        move |done, total| seen.lock().unwrap().push((done, total))
    }));
    (opts, seen)
}

/// The reports went forward one at a time and ended at `total`, every one saying `total`.
fn check(what: &str, seen: &Mutex<Vec<(u64, u64)>>, total: u64) {
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert!(seen.len() > 4, "{what}: {} reports", seen.len());
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "{what}: a report went back: {seen:?}"
    );
    assert!(seen.iter().all(|&(_, t)| t == total), "{what}: {seen:?}");
    assert_eq!(seen.last(), Some(&(total, total)), "{what}");
}

/// Tensors over the size a copy gathers from one read (128 KiB), so that each is copied in
/// many chunks.
fn model() -> (Tensors, u64) {
    let t = tensors(&[
        ("a", 1, 400_000),
        ("b", 2, 300_001),
        ("empty", 3, 0),
        ("c", 4, 150_003),
    ]);
    let total = t.values().map(|v| v.len() as u64).sum();
    (t, total)
}

#[test]
fn every_conversion_reports_bytes_so_far_of_the_total() {
    let dir = tempfile::tempdir().unwrap();
    let (t, total) = model();
    let (mut opts, seen) = recording();

    // Tensors in memory into a store.
    let npk = dir.path().join("m.npk");
    write_npk_with(&npk, &t, false, &opts).unwrap();
    check("from memory", &seen, total);

    // The store to one file, then that file into a new store.
    let file = dir.path().join("m.safetensors");
    npkio::to_safetensors_file_with(&npk, &file, None::<&[&str]>, None, &opts).unwrap();
    check("export", &seen, total);
    let again = dir.path().join("again.npk");
    npkio::from_safetensors_file_with(&file, &again, None::<&[&str]>, false, &opts).unwrap();
    check("import", &seen, total);

    // Some of the tensors: the total is theirs.
    let some = dir.path().join("some.npk");
    npkio::from_safetensors_file_with(&file, &some, Some(&["b"]), false, &opts).unwrap();
    check("import of one tensor", &seen, 300_001);

    // Shards, written in batches: one total over all of them.
    opts.max_shard_size = Some(500_000);
    let sharded = dir.path().join("sharded");
    npkio::to_safetensors_file_with(&npk, &sharded, None::<&[&str]>, None, &opts).unwrap();
    check("sharded export", &seen, total);
    assert!(sharded.join("model.safetensors.index.json").exists());
}

#[test]
fn an_export_of_a_store_with_dropped_rows_counts_the_rows_it_copies() {
    let dir = tempfile::tempdir().unwrap();
    let npk = dir.path().join("m.npk");
    let (t, _) = model();
    write_npk(&npk, &t, false).unwrap();
    let mut store = npkio::NumPack::open(&npk).unwrap();
    store.drop_rows("a", &[0, 5, 399_999]).unwrap();
    drop(store);
    let (opts, seen) = recording();
    let out = dir.path().join("m.safetensors");
    npkio::to_safetensors_file_with(&npk, &out, None::<&[&str]>, None, &opts).unwrap();
    let written = std::fs::metadata(&out).unwrap().len();
    let total = 400_000 - 3 + 300_001 + 150_003;
    check("export after drop", &seen, total);
    assert!(written > total, "{}", out.display());
}
