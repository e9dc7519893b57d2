//! Hostile files: mutations of every valid fixture (bit flips, truncations, and length or
//! count fields that lie) must never panic, never hang, and never allocate beyond a small
//! multiple of the input's size, whatever a length field claims.
//!
//! Covered: SafeTensors files (the 8-byte header length, numbers inside the JSON header),
//! sharded-checkpoint indexes, NumPack `metadata.npkm` (every u32 count and length, every
//! u64 shape and size field), segment manifests and deletion bitmaps, each through its
//! decoder and through opening the whole file or directory and reading every tensor.
//!
//! Allocation is measured by a counting global allocator that tracks the current thread
//! only, so that tests running in parallel do not disturb each other.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::copy_dir;
use npkio::internals::numpack::bitmap::Bitmap;
use npkio::internals::numpack::metadata::Metadata;
use npkio::internals::numpack::segments;
use npkio::NumPack;
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------
// Allocation accounting

struct Counting;

thread_local! {
    static CURRENT: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn track(delta: isize) {
    // `try_with`: never panic inside the allocator, even while thread locals are torn down.
    let _ = CURRENT.try_with(|c| {
        let now = c.get() + delta;
        c.set(now);
        let _ = PEAK.try_with(|p| {
            if now > p.get() {
                p.set(now);
            }
        });
    });
}

// SAFETY: every method forwards to the system allocator unchanged and only updates
// thread-local counters (const-initialized `Cell`s, which never allocate).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            track(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            track(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator (so from System) with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        track(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged; `ptr` came from System with `layout`.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            track(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f`, returning its result, the peak bytes it allocated on this thread beyond what
/// was allocated before, and how long it took.
fn measure<R>(f: impl FnOnce() -> R) -> (R, usize, Duration) {
    let base = CURRENT.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let t = Instant::now();
    let r = f();
    let elapsed = t.elapsed();
    let peak = PEAK.with(Cell::get) - base;
    (r, peak.max(0) as usize, elapsed)
}

/// The bound: 64 bytes per input byte, plus 1 MiB.
fn assert_bounded(what: &str, input_len: usize, peak: usize, elapsed: Duration) {
    let limit = 64 * input_len + (1 << 20);
    assert!(
        peak <= limit,
        "{what}: allocated {peak} bytes for a {input_len}-byte input (limit {limit})"
    );
    assert!(
        elapsed < Duration::from_secs(30),
        "{what}: took {elapsed:?} for a {input_len}-byte input"
    );
}

// ---------------------------------------------------------------------------------------
// Fixtures and mutations

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A change to a file's bytes.
#[derive(Clone, Debug)]
enum Mutation {
    /// Flip one bit (position taken modulo the length).
    Flip(usize, u8),
    /// Keep only the first `n` bytes (modulo length + 1).
    Truncate(usize),
    /// Overwrite the field at the `k`-th known length/count position with a lie.
    Lie(usize, Lie),
    /// Replace the `k`-th run of ASCII digits (a JSON number) with a lie.
    Number(usize, Lie),
    /// Insert a random byte.
    Insert(usize, u8),
}

#[derive(Clone, Copy, Debug)]
enum Lie {
    Max,
    PlusOne,
    MinusOne,
    Zero,
    Huge,
    Random(u64),
}

impl Lie {
    fn apply(self, old: u64, max: u64) -> u64 {
        match self {
            Lie::Max => max,
            Lie::PlusOne => old.wrapping_add(1) & max,
            Lie::MinusOne => old.wrapping_sub(1) & max,
            Lie::Zero => 0,
            Lie::Huge => max / 2 + 1,
            Lie::Random(r) => r & max,
        }
    }
}

fn lie() -> impl Strategy<Value = Lie> {
    prop_oneof![
        Just(Lie::Max),
        Just(Lie::PlusOne),
        Just(Lie::MinusOne),
        Just(Lie::Zero),
        Just(Lie::Huge),
        any::<u64>().prop_map(Lie::Random),
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<usize>(), 0u8..8).prop_map(|(p, b)| Mutation::Flip(p, b)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        3 => (any::<usize>(), lie()).prop_map(|(k, l)| Mutation::Lie(k, l)),
        2 => (any::<usize>(), lie()).prop_map(|(k, l)| Mutation::Number(k, l)),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(p, b)| Mutation::Insert(p, b)),
    ]
}

/// (offset, width in bytes) of the length and count fields of a file.
type Fields = Vec<(usize, usize)>;

/// The fields of a SafeTensors file: the header length.
fn safetensors_fields(_: &[u8]) -> Fields {
    vec![(0, 8)]
}

/// The fields of a deletion bitmap: total rows and deleted count.
fn bitmap_fields(b: &[u8]) -> Fields {
    if b.len() >= 16 {
        vec![(0, 8), (8, 8)]
    } else {
        vec![]
    }
}

/// Every count, length, shape and size field of a valid `metadata.npkm`.
fn metadata_fields(b: &[u8]) -> Fields {
    let u32_at = |p: usize| u32::from_le_bytes(b[p..p + 4].try_into().unwrap()) as usize;
    let mut f = vec![(8, 8), (16, 4)];
    let mut p = 20;
    for _ in 0..u32_at(16) {
        f.push((p, 4)); // name length
        p += 4 + u32_at(p);
        f.push((p, 4)); // ndim
        let ndim = u32_at(p);
        p += 4;
        for _ in 0..ndim {
            f.push((p, 8)); // a dimension
            p += 8;
        }
        f.push((p, 4)); // data file length
        p += 4 + u32_at(p);
        f.push((p + 8, 8)); // size_bytes (after last_modified)
        p += 8 + 8 + 1 + 1 + 4 + 8 + 8;
        f.push((p, 1)); // has_block_info
        let has_block = b[p];
        p += 1;
        if has_block == 1 {
            f.push((p + 1, 8));
            f.push((p + 9, 8));
            f.push((p + 17, 4)); // block list length
            let n = u32_at(p + 17);
            p += 21 + 24 * n;
        }
    }
    assert_eq!(p, b.len(), "the walker understands the fixture");
    f
}

fn no_fields(_: &[u8]) -> Fields {
    vec![]
}

fn apply(bytes: &[u8], muts: &[Mutation], fields: &Fields) -> Vec<u8> {
    let mut b = bytes.to_vec();
    for m in muts {
        match *m {
            Mutation::Flip(p, bit) if !b.is_empty() => {
                let i = p % b.len();
                b[i] ^= 1 << bit;
            }
            Mutation::Truncate(n) => b.truncate(n % (b.len() + 1)),
            Mutation::Lie(k, l) if !fields.is_empty() => {
                let (at, width) = fields[k % fields.len()];
                if at + width <= b.len() {
                    let mut raw = [0u8; 8];
                    raw[..width].copy_from_slice(&b[at..at + width]);
                    let max = if width == 8 {
                        u64::MAX
                    } else {
                        (1u64 << (8 * width)) - 1
                    };
                    let v = l.apply(u64::from_le_bytes(raw), max);
                    b[at..at + width].copy_from_slice(&v.to_le_bytes()[..width]);
                }
            }
            Mutation::Number(k, l) => {
                let runs = digit_runs(&b);
                if !runs.is_empty() {
                    let (s, e) = runs[k % runs.len()];
                    let old: u64 = std::str::from_utf8(&b[s..e])
                        .ok()
                        .and_then(|t| t.parse().ok())
                        .unwrap_or(0);
                    let text = match l {
                        Lie::MinusOne if old == 0 => "-1".to_string(),
                        Lie::Huge => "340282366920938463463374607431768211456".to_string(),
                        l => l.apply(old, u64::MAX).to_string(),
                    };
                    b.splice(s..e, text.into_bytes());
                }
            }
            Mutation::Insert(p, byte) => {
                let i = p % (b.len() + 1);
                b.insert(i, byte);
            }
            _ => {}
        }
    }
    b
}

/// Runs of ASCII digits in a JSON text (or a binary file's JSON header).
fn digit_runs(b: &[u8]) -> Vec<(usize, usize)> {
    let mut runs = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i].is_ascii_digit() {
            let s = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            runs.push((s, i));
        } else {
            i += 1;
        }
    }
    runs
}

/// Runs `body` on another thread and fails if it does not finish in `limit`.
fn with_watchdog(name: &str, limit: Duration, body: impl FnOnce() + Send + 'static) {
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            body();
            let _ = tx.send(());
        })
        .unwrap();
    match rx.recv_timeout(limit) {
        Ok(()) => h.join().unwrap(),
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            // The body panicked: re-raise its message.
            if let Err(p) = h.join() {
                std::panic::resume_unwind(p);
            }
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
            panic!("{name}: no answer in {limit:?}: a hang")
        }
    }
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

const WATCHDOG: Duration = Duration::from_secs(300);

// ---------------------------------------------------------------------------------------
// SafeTensors

fn safetensors_fixtures() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = ["safetensors", "safetensors/sharded"]
        .iter()
        .flat_map(|d| std::fs::read_dir(fixtures().join(d)).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
        .collect();
    v.sort();
    v
}

/// Opens a SafeTensors file and reads every tensor's bytes.
fn open_and_read_safetensors(path: &Path) -> Result<u64, npkio::Error> {
    let f = npkio::SafeTensorsFile::open(path)?;
    let mut sum = 0u64;
    for i in 0..f.len() {
        let v = f.view(i).expect("a view per tensor");
        sum += v.data.iter().map(|&b| u64::from(b)).sum::<u64>();
    }
    Ok(sum)
}

#[test]
fn mutated_safetensors_files_never_panic_hang_or_overallocate() {
    with_watchdog("safetensors", WATCHDOG, || {
        let files = safetensors_fixtures();
        let originals: Vec<Vec<u8>> = files.iter().map(|p| std::fs::read(p).unwrap()).collect();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        proptest!(config(), |(k in 0..originals.len(), muts in prop::collection::vec(mutation(), 1..4))| {
            let b = apply(&originals[k], &muts, &safetensors_fields(&originals[k]));
            std::fs::write(&path, &b).unwrap();
            let (_, peak, t) = measure(|| open_and_read_safetensors(&path));
            assert_bounded(&format!("{:?} {muts:?}", files[k]), b.len(), peak, t);
        });
    });
}

#[test]
fn mutated_sharded_indexes_never_panic_hang_or_overallocate() {
    with_watchdog("index", WATCHDOG, || {
        let src = fixtures().join("safetensors/sharded");
        let dir = tempfile::tempdir().unwrap();
        let ckpt = dir.path().join("ckpt");
        std::fs::create_dir(&ckpt).unwrap();
        let mut total = 0;
        for e in std::fs::read_dir(&src).unwrap() {
            let e = e.unwrap();
            total += e.metadata().unwrap().len() as usize;
            std::fs::copy(e.path(), ckpt.join(e.file_name())).unwrap();
        }
        let index_name = "model.safetensors.index.json";
        let original = std::fs::read(src.join(index_name)).unwrap();
        proptest!(config(), |(muts in prop::collection::vec(mutation(), 1..4))| {
            let b = apply(&original, &muts, &no_fields(&original));
            std::fs::write(ckpt.join(index_name), &b).unwrap();
            let (_, peak, t) = measure(|| {
                npkio::iter_safetensors(&ckpt, None::<&[&str]>).map(|it| {
                    it.map(|(_, t)| t.data().iter().map(|&b| u64::from(b)).sum::<u64>())
                        .sum::<u64>()
                })
            });
            assert_bounded(&format!("index {muts:?}"), total + b.len(), peak, t);
        });
    });
}

// ---------------------------------------------------------------------------------------
// NumPack

fn dir_size(p: &Path) -> usize {
    std::fs::read_dir(p)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                dir_size(&e.path())
            } else {
                e.metadata().unwrap().len() as usize
            }
        })
        .sum()
}

/// Opens a NumPack directory and reads every array's bytes.
fn open_and_read_numpack(path: &Path) -> Result<u64, npkio::Error> {
    let np = NumPack::open(path)?;
    let mut sum = 0u64;
    for n in np.names() {
        let v = np.view(n)?;
        sum += v.data.iter().map(|&b| u64::from(b)).sum::<u64>();
        np.array_extents(n)?;
    }
    Ok(sum)
}

/// Mutates `file` (relative to the fixture store `store`) and opens the store, and runs
/// `decode` on the mutated bytes: both bounded.
fn numpack_property(
    label: &'static str,
    stores: &'static [&'static str],
    file: &'static str,
    fields: fn(&[u8]) -> Fields,
    decode: fn(&[u8], &Path),
) {
    with_watchdog(label, WATCHDOG, move || {
        let base = fixtures().join("numpack-0.7");
        let dir = tempfile::tempdir().unwrap();
        let copies: Vec<(PathBuf, Vec<u8>, usize)> = stores
            .iter()
            .map(|s| {
                let to = dir.path().join(s);
                copy_dir(&base.join(s), &to);
                let original = std::fs::read(to.join(file)).unwrap();
                let size = dir_size(&to);
                (to, original, size)
            })
            .collect();
        proptest!(config(), |(k in 0..copies.len(), muts in prop::collection::vec(mutation(), 1..4))| {
            let (store, original, size) = &copies[k];
            let b = apply(original, &muts, &fields(original));
            let what = format!("{label} {} {muts:?}", stores[k]);
            let (_, peak, t) = measure(|| decode(&b, Path::new(file)));
            assert_bounded(&what, b.len(), peak, t);
            std::fs::write(store.join(file), &b).unwrap();
            let (_, peak, t) = measure(|| open_and_read_numpack(store));
            assert_bounded(&what, size + b.len(), peak, t);
            std::fs::write(store.join(file), original).unwrap();
        });
    });
}

#[test]
fn mutated_numpack_metadata_never_panics_hangs_or_overallocates() {
    numpack_property(
        "metadata.npkm",
        &["basic.npk", "dropped.npk", "appended.npk", "segmented.npk"],
        "metadata.npkm",
        metadata_fields,
        |b, p| {
            let _ = Metadata::decode(b, p);
        },
    );
}

#[test]
fn mutated_segment_manifests_never_panic_hang_or_overallocate() {
    numpack_property(
        "segment manifest",
        &["segmented.npk"],
        "data_big.npkseg",
        no_fields,
        |b, p| {
            let _ = segments::decode(b, p);
        },
    );
}

#[test]
fn mutated_deletion_bitmaps_never_panic_hang_or_overallocate() {
    numpack_property(
        "deletion bitmap",
        &["dropped.npk"],
        "deleted_w.npkb",
        bitmap_fields,
        |b, p| {
            // The decoder is given the row count of the array, whatever the file says.
            let _ = Bitmap::decode(b, 40, p);
            let _ = Bitmap::decode(b, u64::MAX, p);
        },
    );
}

/// The walker above is right about every fixture, so that the lies land on real fields.
#[test]
fn metadata_field_walker_understands_every_fixture() {
    for s in ["basic.npk", "dropped.npk", "appended.npk", "segmented.npk"] {
        let b =
            std::fs::read(fixtures().join("numpack-0.7").join(s).join("metadata.npkm")).unwrap();
        assert!(metadata_fields(&b).len() > 4, "{s}");
    }
}

/// The accounting works: a 10 MiB allocation shows.
#[test]
fn allocation_accounting_sees_allocations() {
    let (v, peak, _) = measure(|| vec![1u8; 10 << 20]);
    assert_eq!(v.len(), 10 << 20);
    assert!(peak >= 10 << 20, "{peak}");
}
