//! The loader's benchmark: a whole checkpoint loaded into ready anonymous memory, warm and
//! cold, against the raw limits of the same machine measured in the same run.
//!
//! ```sh
//! cargo run --release --example load_bench -- --size 1GiB --runs 5
//! cargo run --release --example load_bench -- --size 4GiB --children-only  # RSS, shard bytes
//! cargo run --release --example load_bench -- --size 1GiB --strided         # the stride rule
//! ```
//!
//! `--only 1,3` runs only those methods (numbers as listed below, from 0), `--no-children`
//! skips the child-process measurements, `LOAD_BENCH_THREADS=N` sets npkio's threads.
//!
//! It writes (once; reused while its size matches) a SafeTensors file of `--size` bytes of
//! BF16 tensors `[rows, 4096]` of 8 MiB each into `--dir` (default `target/load-bench`, on
//! the disk rather than tmpfs). The destination is one page-aligned anonymous buffer,
//! touched before timing so that every page is resident. Then, for `--runs` runs, every
//! method once per run in an order rotating from run to run (paired runs: ratios are taken
//! within a run, then their median):
//!
//! - `mmap+memcpy`: map the file and `memcpy` the data section, one thread (what a
//!   zero-copy reader's host does today);
//! - `pread 2T`: the raw buffered limit, 8 MiB `pread`s straight into the buffer, 2 threads;
//! - `O_DIRECT 4T`: the raw direct limit, 8 MiB aligned `O_DIRECT` reads of the whole file
//!   into an aligned buffer, 4 threads;
//! - `npkio auto`, `npkio buffered`, `npkio direct`: `Loader::load` of every tensor into the
//!   buffer, packed in file order;
//! - `pread 1T`, `pread 2 streams` (each thread its own descriptor and half of the file):
//!   more raw buffered variants;
//! - `npkio auto, file-aligned dst`: the same load into a page-aligned arena with every
//!   tensor at its file offset, so that `O_DIRECT` reads land in the destination directly.
//!
//! "Best raw" in the ratios is the fastest of the five raw methods in the same run.
//!
//! Warm: the file is read once before the warm runs and stays cached. Cold: before every
//! method's run, `POSIX_FADV_DONTNEED` on the file, and `3` written to
//! `/proc/sys/vm/drop_caches` after `sync` when that is allowed (root).
//!
//! Then, as child processes (this binary again) started cold: a sink load of the whole
//! checkpoint with 8 MiB staging buffers, reporting the child's peak RSS (`VmHWM`), and a
//! `shard(0, r, 2)` load of every tensor for r = 0 and 1, reporting the bytes the child
//! read from storage (`read_bytes` of `/proc/self/io`) against the file's size.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use npkio::load::{LoadOptions, Loader, Method, Request, Staging};

const TENSOR: u64 = 8 << 20;
const COLS: u64 = 4096;
const CHUNK: u64 = 8 << 20;

fn parse_size(s: &str) -> u64 {
    let s = s.to_ascii_lowercase();
    let (num, mult) = if let Some(n) = s.strip_suffix("gib") {
        (n, 1u64 << 30)
    } else if let Some(n) = s.strip_suffix("mib") {
        (n, 1 << 20)
    } else {
        (&s[..], 1)
    };
    (num.parse::<f64>().expect("a size like 1GiB") * mult as f64) as u64
}

/// Writes the checkpoint unless a file of the right size is there; returns its data start.
fn make_checkpoint(path: &Path, size: u64) -> u64 {
    let n = (size / TENSOR).max(1);
    let mut header = serde_json::Map::new();
    for i in 0..n {
        header.insert(
            format!("model.layers.{i}.weight"),
            serde_json::json!({
                "dtype": "BF16",
                "shape": [TENSOR / 2 / COLS, COLS],
                "data_offsets": [i * TENSOR, (i + 1) * TENSOR],
            }),
        );
    }
    let mut h = serde_json::to_vec(&header).unwrap();
    while (h.len() + 8) % 8 != 0 {
        h.push(b' ');
    }
    let data_start = 8 + h.len() as u64;
    let total = data_start + n * TENSOR;
    if std::fs::metadata(path).is_ok_and(|m| m.len() == total) {
        return data_start;
    }
    eprintln!("writing {} ({} MiB)...", path.display(), total >> 20);
    let mut f = File::create(path).unwrap();
    f.write_all(&(h.len() as u64).to_le_bytes()).unwrap();
    f.write_all(&h).unwrap();
    let mut block = vec![0u8; TENSOR as usize];
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for i in 0..n {
        for c in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&(x ^ i).to_le_bytes()[..c.len()]);
        }
        f.write_all(&block).unwrap();
    }
    f.sync_all().unwrap();
    data_start
}

/// A page-aligned anonymous buffer, every page touched.
struct Anon {
    ptr: *mut u8,
    len: usize,
}

impl Anon {
    fn new(len: usize) -> Anon {
        // SAFETY: a fresh private anonymous mapping; checked for failure.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED);
        let mut a = Anon {
            ptr: ptr.cast(),
            len,
        };
        a.slice().fill(1);
        a
    }

    /// Writes one byte in every page (its own value), so that every page is present.
    fn touch(&mut self) {
        for i in (0..self.len).step_by(4096) {
            // SAFETY: inside our mapping; a volatile read and write of the same value.
            unsafe {
                let p = self.ptr.add(i);
                std::ptr::write_volatile(p, std::ptr::read_volatile(p));
            }
        }
    }

    fn slice(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is `len` bytes, owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Anon {
    fn drop(&mut self) {
        // SAFETY: our mapping.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

fn drop_cache(path: &Path) {
    let f = File::open(path).unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: plain advice on our descriptor.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if std::env::var_os("LOAD_BENCH_NO_DROP_CACHES").is_none() {
        // SAFETY: sync takes no arguments.
        unsafe { libc::sync() };
        let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
    }
}

fn warm(path: &Path) {
    let f = File::open(path).unwrap();
    let mut buf = vec![0u8; CHUNK as usize];
    let mut off = 0;
    while let Ok(n) = f.read_at(&mut buf, off) {
        if n == 0 {
            break;
        }
        off += n as u64;
    }
}

fn parallel(threads: usize, chunks: usize, work: impl Fn(usize) + Sync) {
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= chunks {
                    return;
                }
                work(i);
            });
        }
    });
}

struct SendPtr(*mut u8);
// SAFETY: workers write disjoint ranges of the buffer.
unsafe impl Sync for SendPtr {}

impl SendPtr {
    fn at(&self, off: usize) -> *mut u8 {
        // SAFETY: callers stay inside the buffer the pointer came from.
        unsafe { self.0.add(off) }
    }
}

fn raw_pread(path: &Path, data_start: u64, dst: &mut [u8], threads: usize) {
    let f = File::open(path).unwrap();
    let len = dst.len();
    let p = SendPtr(dst.as_mut_ptr());
    parallel(threads, len.div_ceil(CHUNK as usize), |i| {
        let a = i * CHUNK as usize;
        let b = (a + CHUNK as usize).min(len);
        // SAFETY: chunk i of the buffer, written by this worker alone.
        let d = unsafe { std::slice::from_raw_parts_mut(p.at(a), b - a) };
        f.read_exact_at(d, data_start + a as u64).unwrap();
    });
}

/// `streams` threads, each reading its own contiguous part through its own descriptor
/// (its own read-ahead state), 8 MiB at a time.
fn raw_streams(path: &Path, data_start: u64, dst: &mut [u8], streams: usize) {
    let len = dst.len();
    let part = len.div_ceil(streams).div_ceil(4096) * 4096;
    let p = SendPtr(dst.as_mut_ptr());
    parallel(streams, streams, |k| {
        let f = File::open(path).unwrap();
        let (a, b) = ((k * part).min(len), ((k + 1) * part).min(len));
        let mut at = a;
        while at < b {
            let e = (at + CHUNK as usize).min(b);
            // SAFETY: part k of the buffer, this worker's alone.
            let d = unsafe { std::slice::from_raw_parts_mut(p.at(at), e - at) };
            f.read_exact_at(d, data_start + at as u64).unwrap();
            at = e;
        }
    });
}

fn raw_direct(path: &Path, dst: &mut [u8], threads: usize) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .expect("O_DIRECT open");
    let len = f.metadata().unwrap().len() as usize;
    let p = SendPtr(dst.as_mut_ptr());
    parallel(threads, len.div_ceil(CHUNK as usize), |i| {
        let a = i * CHUNK as usize;
        let b = (a + CHUNK as usize).min(len).div_ceil(4096) * 4096;
        // SAFETY: chunk i of the (page-aligned, rounded-up) buffer, this worker's alone.
        let d = unsafe { std::slice::from_raw_parts_mut(p.at(a), b - a) };
        let mut done = 0;
        while done < d.len() {
            match f.read_at(&mut d[done..], (a + done) as u64).unwrap() {
                0 => break,
                n => done += n,
            }
        }
    });
}

fn npkio_load(path: &Path, dst: &mut [u8], method: Method) {
    let loader = Loader::open(path).unwrap();
    let mut ts: Vec<_> = loader.tensors().iter().collect();
    ts.sort_by_key(|t| t.name.split('.').nth(2).unwrap().parse::<u64>().unwrap());
    let reqs: Vec<Request> = ts.iter().map(|t| Request::new(&t.name)).collect();
    let mut dsts: Vec<&mut [u8]> = dst.chunks_mut(TENSOR as usize).collect();
    let opts = LoadOptions::default().method(method).threads(
        std::env::var("LOAD_BENCH_THREADS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
    );
    loader.load(&reqs, &mut dsts, &opts).unwrap();
}

const METHODS: [&str; 9] = [
    "mmap+memcpy 1T",
    "pread 2T",
    "O_DIRECT 4T",
    "npkio auto",
    "npkio buffered",
    "npkio direct",
    "pread 1T",
    "pread 2 streams",
    "npkio auto, file-aligned dst",
];
const RAW: [usize; 5] = [0, 1, 2, 6, 7];

fn run_method(m: usize, path: &Path, data_start: u64, dst: &mut Anon, aligned: &mut Anon) -> f64 {
    let n = (dst.len) as u64;
    let t = Instant::now();
    match m {
        0 => {
            let f = File::open(path).unwrap();
            // SAFETY: a read-only mapping of the benchmark's own file, not changed meanwhile.
            let map = unsafe { memmap2::Mmap::map(&f) }.unwrap();
            dst.slice()
                .copy_from_slice(&map[data_start as usize..(data_start + n) as usize]);
        }
        1 => raw_pread(path, data_start, dst.slice(), 2),
        2 => raw_direct(path, aligned.slice(), 4),
        6 => raw_pread(path, data_start, dst.slice(), 1),
        7 => raw_streams(path, data_start, dst.slice(), 2),
        3 => npkio_load(path, dst.slice(), Method::Auto),
        8 => {
            // The arena laid out like the file: every tensor at its file offset, so each
            // destination sits where O_DIRECT can read into it without a bounce copy.
            let d = &mut aligned.slice()[data_start as usize..(data_start + n) as usize];
            npkio_load(path, d, Method::Auto)
        }
        4 => npkio_load(path, dst.slice(), Method::Buffered),
        _ => npkio_load(path, dst.slice(), Method::Direct),
    }
    t.elapsed().as_secs_f64()
}

/// Strided slices (dimension 1 of every `[1024, 4096]` BF16 tensor, warm): one `pread`
/// per row straight into the destination, against one `pread` of each 8 MiB tensor into a
/// buffer and a copy of the rows, against npkio's rule; 2 threads over the tensors.
fn strided(path: &Path, data_start: u64, n_tensors: usize, runs: usize) {
    let row = (COLS * 2) as usize;
    let rows = (TENSOR as usize) / row;
    println!("\nSTRIDED (warm, median of {runs}; slice [0, w) of dimension 1, rows of {row} B)");
    println!(
        "{:>6} {:>8} {:>8} {:>12} {:>12} {:>12}",
        "w", "run B", "gap B", "per-row s", "span s", "npkio s"
    );
    let f = File::open(path).unwrap();
    let loader = Loader::open(path).unwrap();
    for w in [16u64, 256, 1024, 2048, 3584] {
        let run = (w * 2) as usize;
        let mut dst = vec![0u8; n_tensors * rows * run];
        let mut t = [Vec::new(), Vec::new(), Vec::new()];
        for r in 0..runs {
            for k in 0..3 {
                let m = (k + r) % 3;
                let p = SendPtr(dst.as_mut_ptr());
                let start = Instant::now();
                match m {
                    0 => parallel(2, n_tensors, |i| {
                        let base = data_start + (i as u64) * TENSOR;
                        for j in 0..rows {
                            let at = (i * rows + j) * run;
                            // SAFETY: row j of tensor i's output, this worker's alone.
                            let d = unsafe { std::slice::from_raw_parts_mut(p.at(at), run) };
                            f.read_exact_at(d, base + (j * row) as u64).unwrap();
                        }
                    }),
                    1 => parallel(2, n_tensors, |i| {
                        let mut buf = vec![0u8; TENSOR as usize];
                        f.read_exact_at(&mut buf, data_start + (i as u64) * TENSOR)
                            .unwrap();
                        for j in 0..rows {
                            let at = (i * rows + j) * run;
                            // SAFETY: as above.
                            let d = unsafe { std::slice::from_raw_parts_mut(p.at(at), run) };
                            d.copy_from_slice(&buf[j * row..j * row + run]);
                        }
                    }),
                    _ => {
                        let mut names: Vec<_> = loader.tensors().iter().collect();
                        names.sort_by_key(|t| {
                            t.name.split('.').nth(2).unwrap().parse::<u64>().unwrap()
                        });
                        let reqs: Vec<Request> = names
                            .iter()
                            .map(|t| Request::new(&t.name).slice(1, 0, w))
                            .collect();
                        let mut dsts: Vec<&mut [u8]> = dst.chunks_mut(rows * run).collect();
                        loader
                            .load(&reqs, &mut dsts, &LoadOptions::default())
                            .unwrap();
                    }
                }
                t[m].push(start.elapsed().as_secs_f64());
            }
        }
        println!(
            "{w:>6} {run:>8} {:>8} {:>12.3} {:>12.3} {:>12.3}",
            row - run,
            median(&mut t[0]),
            median(&mut t[1]),
            median(&mut t[2])
        );
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn status_kib(key: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn io_read_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/io").unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with("read_bytes:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn child(args: &[String]) {
    let path = PathBuf::from(&args[1]);
    let loader = Loader::open(&path).unwrap();
    match args[0].as_str() {
        "--child-sink" => {
            let reqs: Vec<Request> = loader
                .tensors()
                .iter()
                .map(|t| Request::new(&t.name))
                .collect();
            let sum = std::sync::atomic::AtomicU64::new(0);
            let sink = |_: usize, _: u64, d: &[u8]| -> Result<(), String> {
                let s = d.chunks(4096).map(|c| c[0] as u64).sum::<u64>();
                sum.fetch_add(s, Ordering::Relaxed);
                Ok(())
            };
            let t = Instant::now();
            let r = loader
                .load_to_sink(
                    &reqs,
                    Staging::Size(8 << 20),
                    &sink,
                    &LoadOptions::default(),
                )
                .unwrap();
            println!(
                "{} {} {:.3} {}",
                r.bytes_out,
                status_kib("VmHWM:"),
                t.elapsed().as_secs_f64(),
                r.threads
            );
        }
        _ => {
            let rank: u64 = args[2].parse().unwrap();
            let reqs: Vec<Request> = loader
                .tensors()
                .iter()
                .map(|t| Request::new(&t.name).shard(0, rank, 2))
                .collect();
            let sizes: Vec<usize> = reqs
                .iter()
                .map(|r| loader.output(r).unwrap().nbytes as usize)
                .collect();
            let mut buf = vec![0u8; sizes.iter().sum()];
            let mut rest = &mut buf[..];
            let mut dsts = Vec::new();
            for s in sizes {
                let (a, b) = rest.split_at_mut(s);
                dsts.push(a);
                rest = b;
            }
            let before = io_read_bytes();
            let r = loader
                .load(&reqs, &mut dsts, &LoadOptions::default())
                .unwrap();
            println!("{} {}", r.bytes_out, io_read_bytes() - before);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a.starts_with("--child")) {
        return child(&args);
    }
    let mut size = 1u64 << 30;
    let mut runs = 5usize;
    let mut dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/load-bench");
    let mut only: Vec<usize> = Vec::new();
    let mut children = true;
    let mut strided_only = false;
    let mut children_only = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--size" => size = parse_size(it.next().expect("--size N")),
            "--runs" => runs = it.next().expect("--runs N").parse().unwrap(),
            "--dir" => dir = PathBuf::from(it.next().expect("--dir D")),
            "--only" => {
                only = it
                    .next()
                    .expect("--only 0,3")
                    .split(',')
                    .map(|v| v.parse().unwrap())
                    .collect()
            }
            "--no-children" => children = false,
            "--strided" => strided_only = true,
            "--children-only" => children_only = true,
            _ => panic!("unknown argument {a}"),
        }
    }
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("bench-{}MiB.safetensors", size >> 20));
    let data_start = make_checkpoint(&path, size);
    let file_len = std::fs::metadata(&path).unwrap().len();
    let n = file_len - data_start;
    if children_only {
        return run_children(&path, file_len);
    }
    let mut dst = Anon::new(n as usize);
    let mut aligned = Anon::new((file_len.div_ceil(CHUNK) * CHUNK) as usize);
    let root = unsafe { libc::geteuid() } == 0;
    println!(
        "{}: {:.2} GiB of tensors, {runs} paired runs, cold = fadvise DONTNEED{}",
        path.display(),
        n as f64 / (1u64 << 30) as f64,
        if root { " + drop_caches (root)" } else { "" }
    );
    // Check once that npkio's bytes equal the raw read's.
    warm(&path);
    if strided_only {
        return strided(&path, data_start, (n / TENSOR) as usize, runs);
    }
    run_method(1, &path, data_start, &mut dst, &mut aligned);
    let want = dst.slice().to_vec();
    dst.slice().fill(0);
    run_method(3, &path, data_start, &mut dst, &mut aligned);
    assert!(
        dst.slice() == &want[..],
        "npkio's bytes differ from pread's"
    );
    drop(want);

    for cold in [false, true] {
        let mut times = vec![Vec::new(); METHODS.len()];
        let mut ratio_raw = Vec::new();
        let mut ratio_mmap = Vec::new();
        if !cold {
            warm(&path);
        }
        for r in 0..runs {
            let mut t = [0f64; METHODS.len()];
            for k in 0..METHODS.len() {
                let m = (k + r) % METHODS.len();
                if !only.is_empty() && !only.contains(&m) {
                    continue;
                }
                if cold {
                    drop_cache(&path);
                }
                // Ready memory: every destination page present before the clock starts
                // (the kernel may have reclaimed zero-filled pages of an idle buffer).
                dst.touch();
                aligned.touch();
                t[m] = run_method(m, &path, data_start, &mut dst, &mut aligned);
                times[m].push(t[m]);
            }
            let best_raw = RAW.iter().map(|&m| t[m]).fold(f64::MAX, f64::min);
            ratio_raw.push(best_raw / t[3]);
            ratio_mmap.push(t[0] / t[3]);
        }
        println!(
            "\n{} (median of {runs}; GB/s = 1e9 bytes/s of tensor data)",
            if cold { "COLD" } else { "WARM" }
        );
        println!("{:<30} {:>9} {:>8}", "method", "seconds", "GB/s");
        let mut med = [f64::NAN; METHODS.len()];
        for (m, name) in METHODS.iter().enumerate() {
            if times[m].is_empty() {
                continue;
            }
            med[m] = median(&mut times[m]);
            println!(
                "{name:<30} {:>9.3} {:>8.2}",
                med[m],
                n as f64 / med[m] / 1e9
            );
        }
        if !only.is_empty() {
            continue;
        }
        let (best, best_raw) = RAW
            .iter()
            .map(|&m| (m, med[m]))
            .fold((0, f64::MAX), |a, b| if b.1 < a.1 { b } else { a });
        println!(
            "npkio auto vs best raw: {:.2}x of {} (medians), {:.2}x (median of per-run ratios to \
             the run's fastest raw method); vs mmap+memcpy: {:.2}x (medians), {:.2}x (per run)",
            best_raw / med[3],
            METHODS[best],
            median(&mut ratio_raw),
            med[0] / med[3],
            median(&mut ratio_mmap)
        );
    }

    if children {
        run_children(&path, file_len);
    }
}

/// The sink's peak RSS and the shard loads' bytes read, each in a fresh child process.
fn run_children(path: &Path, file_len: u64) {
    let me = std::env::current_exe().unwrap();
    drop_cache(path);
    let out = Command::new(&me)
        .args(["--child-sink", path.to_str().unwrap()])
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    let f: Vec<&str> = s.split_whitespace().collect();
    println!(
        "\nsink load (cold, 8 MiB staging, {} threads): {} bytes in {} s, peak RSS {:.1} MiB",
        f.get(3).unwrap_or(&"?"),
        f.first().unwrap_or(&"?"),
        f.get(2).unwrap_or(&"?"),
        f.get(1).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) / 1024.0
    );
    for rank in 0..2 {
        drop_cache(path);
        let out = Command::new(&me)
            .args(["--child-shard", path.to_str().unwrap(), &rank.to_string()])
            .output()
            .unwrap();
        let s = String::from_utf8_lossy(&out.stdout);
        let f: Vec<u64> = s
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        if f.len() == 2 {
            println!(
                "shard(0, {rank}, 2) load (cold): {} bytes delivered, {} read from storage = \
                 {:.2}% of the file",
                f[0],
                f[1],
                f[1] as f64 * 100.0 / file_len as f64
            );
        } else {
            println!(
                "shard child failed: {s} {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
