//! Loading a checkpoint from object storage: npkio against a plain concurrent ranged-GET
//! client on the same server, at the same range size and concurrency.
//!
//! ```sh
//! scripts/install-s3s-fs.sh   # the S3-compatible server, once
//! cargo run --release --example remote_bench -- --mib 1024 --reps 3
//! ```
//!
//! Options: `--mib N` (checkpoint size, default 1024), `--reps N` (default 3),
//! `--range-mib N` (ranged GET size, default 8), `--concurrency N` (GETs in flight, default
//! 16), `--staging-kib N` (sink staging buffer per worker, default 2048), `--dir D` (default
//! `target/remote-bench`).
//!
//! It writes (once; reused while its size matches) a SafeTensors file of BF16 tensors
//! `[1024, 4096]` (8 MiB each) of pseudo-random bytes, starts s3s-fs on 127.0.0.1 storing
//! into `--dir`, and uploads the file by PUT (s3s-fs then records its ETag instead of
//! hashing the object on every GET). Then, for `--reps` rounds, each method once per round
//! in an order rotating from round to round, each in a child process (this binary again)
//! that reports its time, its peak RSS (`VmHWM`) and its CPU time while timed:
//!
//! - `floor`: the plain client written for this benchmark: `object_store`'s ranged GETs,
//!   `--concurrency` in flight on a tokio runtime, each body streamed into its place in one
//!   buffer of the object's size;
//! - `npkio load`: `Loader::open` of the URL and `Loader::load` of every tensor into one
//!   buffer, packed in file order (open included in the time);
//! - `npkio sink`: the same load through `--staging-kib` staging buffers to a sink that
//!   only counts the bytes (its peak RSS is the point: bounded by staging × concurrency);
//! - `download+load`: the floor's GETs written into a local file, then `Loader::open` and
//!   `Loader::load` of it into the buffer.
//!
//! The destination buffers are touched before timing. Every method but the sink compares
//! its buffer with the local file afterwards (outside the time). Then one child loads rank
//! 0's `shard(0, 0, 2)` of every tensor through the fault proxy of the tests (passing
//! everything), which counts the body bytes served: the share of the object fetched.
//!
//! Times are medians over the rounds; "vs floor" is the median over the rounds of the
//! floor's time over the method's in the same round (the machine may be shared); GB/s =
//! 10^9 bytes of the object per second; peak RSS is the highest of the rounds.

#[path = "../tests/object_store/http.rs"]
mod http;
#[path = "../tests/object_store/proxy.rs"]
mod proxy;
#[path = "../tests/object_store/server.rs"]
mod server;

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use futures_util::stream::{self, StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::{GetOptions, GetRange, ObjectStore};

use npkio::load::{LoadOptions, Loader, Request, Staging};

const KEY: &str = "bench/model.safetensors";
const ROWS: u64 = 1024;
const COLS: u64 = 4096;
const TENSOR: u64 = ROWS * COLS * 2;
const METHODS: [&str; 4] = ["floor", "npkio load", "npkio sink", "download+load"];

struct Args {
    mib: u64,
    reps: usize,
    range: usize,
    concurrency: usize,
    staging: usize,
    dir: PathBuf,
    child: Option<String>,
}

fn parse_args() -> Args {
    let mut a = Args {
        mib: 1024,
        reps: 3,
        range: 8 << 20,
        concurrency: 16,
        staging: 2 << 20,
        dir: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/remote-bench"),
        child: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        let num = |v: String| -> u64 { v.parse().unwrap_or_else(|_| panic!("{flag} {v}?")) };
        match flag.as_str() {
            "--mib" => a.mib = num(val()),
            "--reps" => a.reps = num(val()) as usize,
            "--range-mib" => a.range = (num(val()) << 20) as usize,
            "--concurrency" => a.concurrency = num(val()) as usize,
            "--staging-kib" => a.staging = (num(val()) << 10) as usize,
            "--dir" => a.dir = PathBuf::from(val()),
            "--child" => a.child = Some(val()),
            _ => panic!("unknown argument {flag} (see the comment at the top of remote_bench.rs)"),
        }
    }
    a
}

/// Writes the checkpoint unless a file of the right size is there; returns its size.
fn make_checkpoint(path: &Path, mib: u64) -> u64 {
    let n = (mib << 20).div_ceil(TENSOR).max(1);
    let entries: Vec<String> = (0..n)
        .map(|i| {
            let (b, e) = (i * TENSOR, (i + 1) * TENSOR);
            format!(
                r#""model.layers.{i}.weight":{{"dtype":"BF16","shape":[{ROWS},{COLS}],"data_offsets":[{b},{e}]}}"#
            )
        })
        .collect();
    let mut h = format!("{{{}}}", entries.join(",")).into_bytes();
    while (8 + h.len()) % 8 != 0 {
        h.push(b' ');
    }
    let size = 8 + h.len() as u64 + n * TENSOR;
    if std::fs::metadata(path).map(|m| m.len()).ok() == Some(size) {
        return size;
    }
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let tmp = path.with_extension("tmp");
    let mut f = std::io::BufWriter::new(File::create(&tmp).unwrap());
    f.write_all(&(h.len() as u64).to_le_bytes()).unwrap();
    f.write_all(&h).unwrap();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut block = vec![0u8; TENSOR as usize];
    for _ in 0..n {
        for w in block.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all(&block).unwrap();
    }
    f.into_inner().unwrap().sync_all().unwrap();
    std::fs::rename(&tmp, path).unwrap();
    size
}

/// This process's peak resident set in KiB (`VmHWM` of /proc/self/status).
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let line = status.lines().find(|l| l.starts_with("VmHWM:"));
    line.and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

/// User and system CPU time of this process so far, in seconds.
fn cpu_secs() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// A buffer of `n` bytes, every page touched.
fn touched(n: u64) -> Vec<u8> {
    vec![1u8; n as usize]
}

fn opts(a: &Args) -> LoadOptions {
    LoadOptions::default()
        .range_size(a.range)
        .concurrency(a.concurrency)
}

/// The floor's GETs: `[0, size)` in ranges of `a.range`, `a.concurrency` in flight, each
/// body handed chunk by chunk to `put(offset, bytes)`.
fn ranged_gets(a: &Args, size: u64, put: &(dyn Fn(u64, &[u8]) + Sync)) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let store = AmazonS3Builder::from_env()
        .with_bucket_name(server::BUCKET)
        .build()
        .expect("an S3 client from the environment");
    let path = object_store::path::Path::from(KEY);
    let starts = (0..size).step_by(a.range);
    rt.block_on(async {
        stream::iter(starts)
            .map(|start| {
                let (store, path) = (&store, &path);
                let end = (start + a.range as u64).min(size);
                async move {
                    let o = GetOptions {
                        range: Some(GetRange::Bounded(start..end)),
                        ..Default::default()
                    };
                    let mut body = store.get_opts(path, o).await?.into_stream();
                    let mut at = start;
                    while let Some(bytes) = body.next().await {
                        let bytes = bytes?;
                        assert!(at + bytes.len() as u64 <= end, "a body past its range");
                        put(at, &bytes);
                        at += bytes.len() as u64;
                    }
                    assert_eq!(at, end, "a short body");
                    Ok::<(), object_store::Error>(())
                }
            })
            .buffer_unordered(a.concurrency)
            .try_collect::<()>()
            .await
            .expect("the floor's GETs");
    });
}

/// Every tensor of `l`, each request into its part of `buf`, packed in file order.
fn load_all(l: &Loader, reqs: &[Request], buf: &mut [u8], o: &LoadOptions) {
    let mut dsts: Vec<&mut [u8]> = Vec::new();
    let mut rest = buf;
    for r in reqs {
        let n = l.output(r).unwrap().nbytes as usize;
        let (d, tail) = rest.split_at_mut(n);
        dsts.push(d);
        rest = tail;
    }
    l.load(reqs, &mut dsts, o).expect("npkio load");
}

fn all_tensors(l: &Loader) -> Vec<Request> {
    l.tensors().iter().map(|t| Request::new(&t.name)).collect()
}

/// One method in this process: prints `RESULT <seconds> <peak RSS KiB> <bytes> <CPU
/// seconds>` (CPU: user and system time of the whole process while timed).
fn child(a: &Args, method: &str) {
    let local = a.dir.join("model.safetensors");
    let size = std::fs::metadata(&local).unwrap().len();
    let url = format!("s3://{}/{KEY}", server::BUCKET);
    let o = opts(a);
    let mut check = None;
    let (t0, c0);
    let bytes;
    match method {
        "floor" => {
            let buf = touched(size);
            let ptr = buf.as_ptr() as usize;
            (t0, c0) = (Instant::now(), cpu_secs());
            ranged_gets(a, size, &|at, b| {
                // SAFETY: the ranges are disjoint and within the buffer (checked above).
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        b.as_ptr(),
                        (ptr as *mut u8).add(at as usize),
                        b.len(),
                    )
                };
            });
            bytes = size;
            check = Some((buf, 0));
        }
        "npkio load" | "shard" => {
            let l = Loader::open(&url).expect("Loader::open of the URL");
            let mut reqs = all_tensors(&l);
            if method == "shard" {
                reqs = reqs.into_iter().map(|r| r.shard(0, 0, 2)).collect();
            }
            let n: u64 = reqs.iter().map(|r| l.output(r).unwrap().nbytes).sum();
            let mut buf = touched(n);
            (t0, c0) = (Instant::now(), cpu_secs());
            // Timed from the opening on (the shard's count is of one opening's requests).
            let l = if method == "shard" {
                l
            } else {
                Loader::open(&url).expect("Loader::open of the URL")
            };
            load_all(&l, &reqs, &mut buf, &o);
            bytes = n;
            if method == "npkio load" {
                let start = l.tensors()[0].file_offset().unwrap_or(0);
                check = Some((buf, start));
            }
        }
        "npkio sink" => {
            let got = AtomicU64::new(0);
            (t0, c0) = (Instant::now(), cpu_secs());
            let l = Loader::open(&url).expect("Loader::open of the URL");
            let reqs = all_tensors(&l);
            l.load_to_sink(
                &reqs,
                Staging::Size(a.staging),
                &|_, _, b| {
                    got.fetch_add(b.len() as u64, Ordering::Relaxed);
                    Ok(())
                },
                &o,
            )
            .expect("npkio sink load");
            bytes = got.into_inner();
        }
        "download+load" => {
            let file = a.dir.join("download.safetensors");
            let _ = std::fs::remove_file(&file);
            let mut buf = touched(size);
            (t0, c0) = (Instant::now(), cpu_secs());
            let f = File::create(&file).unwrap();
            ranged_gets(a, size, &|at, b| f.write_all_at(b, at).unwrap());
            drop(f);
            let l = Loader::open(&file).unwrap();
            let reqs = all_tensors(&l);
            load_all(&l, &reqs, &mut buf, &LoadOptions::default());
            bytes = size;
            std::fs::remove_file(&file).unwrap();
            let start = l.tensors()[0].file_offset().unwrap_or(0);
            check = Some((buf, start));
        }
        _ => panic!("unknown method {method}"),
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_secs() - c0;
    let peak = peak_rss_kib(); // before the check, which reads the whole file
    if let Some((buf, start)) = check {
        // The bytes equal the file's, from `start` (the data section for loads).
        let want = std::fs::read(&local).unwrap();
        let n = buf.len().min(want.len() - start as usize);
        assert!(
            buf[..n] == want[start as usize..start as usize + n],
            "{method}: wrong bytes"
        );
    }
    println!("RESULT {secs} {peak} {bytes} {cpu}");
}

/// Runs one method in a child process with `env`; returns (seconds, peak RSS KiB, bytes).
fn run_child(a: &Args, method: &str, endpoint: &str) -> (f64, u64, u64, f64) {
    let me = std::env::current_exe().unwrap();
    let mut c = Command::new(me);
    server::configure_for(&mut c, endpoint);
    c.args(["--child", method, "--dir", a.dir.to_str().unwrap()]);
    c.args(["--range-mib", &(a.range >> 20).to_string()]);
    c.args(["--concurrency", &a.concurrency.to_string()]);
    c.args(["--staging-kib", &(a.staging >> 10).to_string()]);
    let out = c.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find_map(|l| l.strip_prefix("RESULT "));
    let Some(line) = line.filter(|_| out.status.success()) else {
        panic!(
            "{method} failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let v: Vec<&str> = line.split_whitespace().collect();
    let num = |i: usize| v[i].parse::<f64>().unwrap();
    (num(0), num(1) as u64, num(2) as u64, num(3))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let a = parse_args();
    if let Some(m) = &a.child {
        child(&a, m);
        return;
    }
    let local = a.dir.join("model.safetensors");
    let size = make_checkpoint(&local, a.mib);
    let root = a.dir.join("s3");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let s3 = server::S3Server::start_in(&root);
    let t = Instant::now();
    s3.put_file(KEY, &local);
    println!(
        "{:.0} MiB checkpoint uploaded to s3s-fs on {} in {:.1} s; ranges of {} MiB, {} in \
         flight, sink staging {} KiB per worker, {} rounds",
        size as f64 / (1 << 20) as f64,
        s3.endpoint(),
        t.elapsed().as_secs_f64(),
        a.range >> 20,
        a.concurrency,
        a.staging >> 10,
        a.reps
    );

    let mut times = vec![Vec::new(); METHODS.len()];
    let mut rss = vec![0u64; METHODS.len()];
    let mut cpu = vec![Vec::new(); METHODS.len()];
    for rep in 0..a.reps {
        for k in 0..METHODS.len() {
            let i = (k + rep) % METHODS.len();
            let (secs, kib, bytes, c) = run_child(&a, METHODS[i], &s3.endpoint());
            cpu[i].push(c);
            assert!(
                bytes >= size - 8 - (size % TENSOR),
                "{}: {bytes} bytes",
                METHODS[i]
            );
            times[i].push(secs);
            rss[i] = rss[i].max(kib);
        }
    }
    // Ratios are taken within a round (the same moment of a shared machine), then their
    // median: the floor's time over the method's, above 1 when faster than the floor.
    let ratio = |i: usize| median((0..a.reps).map(|r| times[0][r] / times[i][r]).collect());
    println!(
        "\n{:<16} {:>9} {:>7} {:>9} {:>13} {:>10}",
        "method", "median s", "GB/s", "vs floor", "peak RSS MiB", "client CPU s"
    );
    for (i, m) in METHODS.iter().enumerate() {
        let t = median(times[i].clone());
        println!(
            "{m:<16} {t:>9.3} {:>7.3} {:>8.2}x {:>13.1} {:>10.2}",
            size as f64 / t / 1e9,
            ratio(i),
            rss[i] as f64 / 1024.0,
            median(cpu[i].clone())
        );
    }

    let p = proxy::Proxy::start(s3.addr());
    run_child(&a, "shard", &p.endpoint());
    let fetched = p.bytes_of(KEY);
    println!(
        "\nTP-2 rank 0, shard(0, 0, 2) of every tensor: {} requests, {:.1} MiB of {:.1} MiB \
         fetched ({:.1} %)",
        p.gets_of(KEY).len(),
        fetched as f64 / (1 << 20) as f64,
        size as f64 / (1 << 20) as f64,
        100.0 * fetched as f64 / size as f64
    );
    println!(
        "targets: npkio load >= 0.9x floor: {}; sink peak RSS <= 64 MiB: {}; shard <= 51 %: {}",
        if ratio(1) >= 0.9 { "met" } else { "MISSED" },
        if rss[2] <= 64 * 1024 { "met" } else { "MISSED" },
        if fetched * 100 <= size * 51 {
            "met"
        } else {
            "MISSED"
        },
    );
}
