//! npkio's benchmark: conversions against `cp` of the same bytes, in one run.
//!
//! ```sh
//! cargo run --release --example bench -- --size 1GiB
//! cargo run --release --example bench -- --size 1GiB --f32-only   # a model the reference can read
//! cargo run --release --example bench -- --preset moe              # 18,000 tensors of ~60 KB
//! cargo run --release --example bench -- --tensors 100000 --size 1GiB --dir /mnt/x
//! ```
//!
//! With `--tensors N` (or `--preset moe`) it writes a mixture-of-experts-shaped model instead
//! and times `cp`, a floor writer (see `floor_writer`), the import, a floor reader (see
//! `floor_reader`) and the export in paired
//! rounds, each run from a clean, synced state, then the header-only operations (see
//! `many_tensors` and docs/benchmarks.md); with `NPKIO_BENCH_PYTHON` set to a Python that
//! has numpy and safetensors, also the Python package's (python/benchmarks/many_tensors.py
//! on the same files).
//!
//! It writes a synthetic Llama-shaped model (BF16 weights, F32 norms; hundreds of tensors)
//! of about `--size` bytes into `--dir` (default: a temporary directory under the current
//! directory, so on the same filesystem as the outputs) and times each operation as a whole
//! child process (this binary run again): one untimed warm-up run, then `--reps` runs (default
//! 5), each right after a `cp` of the same bytes. Before every run it reads the run's input so
//! that the page cache is warm, and calls `sync` so that one run's writeback does not land in
//! the next one's time. It prints medians, throughput, the median and range of the per-run
//! ratios to that `cp` (paired, because this kind of shared machine drifts in speed from one
//! second to the next), and the child's peak resident memory (its own `VmHWM`, else `wait4`'s
//! `ru_maxrss`; the `true` row shows the floor). `--verbose` prints every run. When a Python
//! with `numpack` 0.7 is found (`NPKIO_BENCH_PYTHON`, else `python3`), the reference converter
//! is timed too.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use npkio::internals::safetensors::writer::{plan_header, PlanInput};
use npkio::{DType, Options};

struct Args {
    size: u64,
    /// Many-tensor mode: this many BF16 tensors of equal size, expert-style names.
    tensors: Option<u64>,
    reps: usize,
    dir: Option<PathBuf>,
    f32_only: bool,
    verbose: bool,
    threads: Vec<usize>,
}

fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().ok()?;
    let mult = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1u64,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return None,
    };
    Some((n * mult as f64) as u64)
}

fn parse_args(mut it: impl Iterator<Item = String>) -> Args {
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut a = Args {
        size: 1 << 30,
        tensors: None,
        reps: 5,
        dir: None,
        f32_only: false,
        verbose: false,
        threads: Vec::new(),
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--size" => {
                a.size = it
                    .next()
                    .and_then(|s| parse_size(&s))
                    .expect("--size SIZE (e.g. 1GiB)")
            }
            "--tensors" => {
                a.tensors = Some(
                    it.next()
                        .and_then(|s| s.replace('_', "").parse().ok())
                        .expect("--tensors N"),
                )
            }
            "--preset" => match it.next().as_deref() {
                Some("moe") => {
                    a.tensors = Some(18_000);
                    a.size = 1 << 30;
                }
                other => panic!("--preset moe (got {other:?})"),
            },
            "--reps" => a.reps = it.next().and_then(|s| s.parse().ok()).expect("--reps N"),
            "--dir" => a.dir = it.next().map(PathBuf::from),
            "--f32-only" => a.f32_only = true,
            "--verbose" => a.verbose = true,
            "--threads" => {
                a.threads = it
                    .next()
                    .expect("--threads 1,2,4")
                    .split(',')
                    .map(|t| t.parse().expect("thread count"))
                    .collect()
            }
            "-h" | "--help" => {
                println!("usage: bench [--size 1GiB] [--tensors N | --preset moe] [--reps 5] [--dir DIR] [--f32-only] [--threads 1,2,4] [--verbose]");
                std::process::exit(0);
            }
            other => panic!("unknown argument {other:?} (try --help)"),
        }
    }
    if a.threads.is_empty() && a.tensors.is_none() {
        a.threads = vec![1, 2, 4, ncpu];
        a.threads.sort_unstable();
        a.threads.dedup();
    }
    a.reps = a.reps.max(1);
    a
}

/// The tensors of a Llama-shaped model of about `size` bytes: (name, dtype, shape).
fn model(size: u64, f32_only: bool) -> Vec<(String, DType, Vec<u64>)> {
    let (hidden, vocab) = if size >= 256 << 20 {
        (1024u64, 32000u64)
    } else {
        (256, 4000)
    };
    let inter = hidden * 11 / 4;
    let wide = if f32_only { DType::F32 } else { DType::BF16 };
    let w = u64::from(wide.bits() / 8);
    let per_layer = w * (4 * hidden * hidden + 3 * hidden * inter) + 2 * 4 * hidden;
    let fixed = 2 * w * vocab * hidden + 4 * hidden;
    let layers = (size.saturating_sub(fixed) / per_layer).max(1);
    let mut t = vec![
        (
            "model.embed_tokens.weight".to_string(),
            wide,
            vec![vocab, hidden],
        ),
        ("model.norm.weight".to_string(), DType::F32, vec![hidden]),
        ("lm_head.weight".to_string(), wide, vec![vocab, hidden]),
    ];
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        for proj in ["q_proj", "k_proj", "v_proj", "o_proj"] {
            t.push((
                format!("{p}.self_attn.{proj}.weight"),
                wide,
                vec![hidden, hidden],
            ));
        }
        t.push((
            format!("{p}.mlp.gate_proj.weight"),
            wide,
            vec![inter, hidden],
        ));
        t.push((format!("{p}.mlp.up_proj.weight"), wide, vec![inter, hidden]));
        t.push((
            format!("{p}.mlp.down_proj.weight"),
            wide,
            vec![hidden, inter],
        ));
        t.push((
            format!("{p}.input_layernorm.weight"),
            DType::F32,
            vec![hidden],
        ));
        t.push((
            format!("{p}.post_attention_layernorm.weight"),
            DType::F32,
            vec![hidden],
        ));
    }
    t
}

/// A mixture-of-experts-shaped model: `n` BF16 tensors of about `size / n` bytes each,
/// named like a MoE checkpoint's experts (`model.layers.{l}.mlp.experts.{e}.{gate,up,down}_proj.weight`,
/// 128 experts per layer).
fn model_many(size: u64, n: u64) -> Vec<(String, DType, Vec<u64>)> {
    const EXPERTS: u64 = 128;
    let elems = (size / n / 2).max(1);
    let cols = 128u64.min(elems);
    let rows = (elems / cols).max(1);
    (0..n)
        .map(|i| {
            let (l, rest) = (i / (3 * EXPERTS), i % (3 * EXPERTS));
            let (e, p) = (
                rest / 3,
                ["gate_proj", "up_proj", "down_proj"][(rest % 3) as usize],
            );
            (
                format!("model.layers.{l}.mlp.experts.{e}.{p}.weight"),
                DType::BF16,
                vec![rows, cols],
            )
        })
        .collect()
}

/// Writes the model as a SafeTensors file, streaming (memory stays small).
fn write_model(path: &Path, tensors: &[(String, DType, Vec<u64>)]) -> u64 {
    let inputs: Vec<PlanInput<'_>> = tensors
        .iter()
        .map(|(n, d, s)| PlanInput {
            name: n,
            dtype: *d,
            shape: s,
        })
        .collect();
    let plan = plan_header(&inputs, Some(&[("format".to_string(), "pt".to_string())])).unwrap();
    let mut f = std::io::BufWriter::with_capacity(8 << 20, File::create(path).unwrap());
    f.write_all(&plan.header).unwrap();
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = plan.file_len - plan.header.len() as u64;
    while left > 0 {
        for c in buf.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            c.copy_from_slice(&state.to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    f.flush().unwrap();
    plan.file_len
}

/// Reads a file once so that its pages are in the page cache.
/// Reads a file, or every file under a directory, so that it is in the page cache. Before
/// each timed run, not only once: some virtual machines reclaim page cache that has not been
/// touched for a minute (DAMON `pageout`), which would turn a warm-cache run into a disk read.
fn warm(path: &Path) {
    if path.is_dir() {
        for e in std::fs::read_dir(path).unwrap() {
            warm(&e.unwrap().path());
        }
        return;
    }
    let mut f = File::open(path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    while f.read(&mut buf).unwrap() > 0 {}
}

fn remove(path: &Path) {
    if path.is_dir() {
        let _ = std::fs::remove_dir_all(path);
    } else {
        let _ = std::fs::remove_file(path);
    }
}

/// Runs `cmd`, returning its wall time and peak RSS in bytes: the child's own report
/// (`VmHWM`, printed by this binary's child mode) when it gives one, else `wait4`'s
/// `ru_maxrss`, which cannot go below the resident size of the process that spawned it.
fn run(cmd: &mut Command) -> (Duration, u64) {
    let start = Instant::now();
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawning a child");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: wait4 writes into the status and rusage we pass; the pid is our child's.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
    let wall = start.elapsed();
    assert_eq!(rc, pid, "wait4 failed");
    let st = std::process::ExitStatus::from_raw(status);
    assert!(st.success(), "child {cmd:?} failed: {st}");
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    std::mem::forget(child); // already reaped
    let hwm = out
        .lines()
        .find_map(|l| l.strip_prefix("VMHWM "))
        .and_then(|kb| kb.trim().parse::<u64>().ok());
    (wall, hwm.unwrap_or(ru.ru_maxrss as u64) * 1024)
}

/// This process's peak resident set in KiB (`VmHWM`).
fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

struct Row {
    name: String,
    secs: f64,
    rss: u64,
    bytes: u64,
    /// Per-repetition ratios to the `cp` run just before it (empty for rows without bytes).
    ratios: Vec<f64>,
}

/// Child mode: `bench --child OP ARGS...` performs one operation and exits.
fn child(mut it: impl Iterator<Item = String>) {
    let op = it.next().unwrap();
    let a: Vec<String> = it.collect();
    let threads = |s: &str| s.parse::<usize>().unwrap();
    match op.as_str() {
        "generate" => {
            let size = a[1].parse().unwrap();
            let tensors = match a[2].strip_prefix("moe:") {
                Some(n) => model_many(size, n.parse().unwrap()),
                None => model(size, a[2] == "f32"),
            };
            let len = write_model(Path::new(&a[0]), &tensors);
            println!("{} {len}", tensors.len());
        }
        "from" => {
            let mut opts = Options::default();
            opts.threads = threads(&a[2]);
            opts.durable = a[3] == "durable";
            npkio::from_safetensors_file_with(&a[0], &a[1], None::<&[&str]>, true, &opts).unwrap();
        }
        "to" => {
            let mut opts = Options::default();
            opts.threads = threads(&a[2]);
            opts.durable = a[3] == "durable";
            npkio::to_safetensors_file_with(&a[0], &a[1], None::<&[&str]>, None, &opts).unwrap();
        }
        "floor" => floor_writer(Path::new(&a[0]), Path::new(&a[1]), threads(&a[2])),
        "floor-read" => floor_reader(
            Path::new(&a[0]),
            Path::new(&a[1]),
            Path::new(&a[2]),
            threads(&a[3]),
        ),
        "inspect" => {
            // Header-only: open the directory, list the names, describe every array.
            let store = npkio::NumPack::open(&a[0]).unwrap();
            let mut n = 0u64;
            for name in store.names() {
                n += store.info(name).unwrap().nbytes;
            }
            assert!(n > 0);
        }
        "metadata" => {
            let m = npkio::get_safetensors_metadata(&a[0]).unwrap();
            assert!(!m.tensors.is_empty());
        }
        "iterate" => {
            // Zero-copy iteration: every tensor's view, touching no tensor byte.
            let mut n = 0u64;
            for (_, t) in npkio::iter_safetensors(&a[0], None::<&[&str]>).unwrap() {
                n += t.data().len() as u64;
            }
            assert!(n > 0);
        }
        "memory" => {
            // In-memory from_safetensors against one plain write of the same bytes; the
            // load is not timed. Prints both times.
            let file = npkio::SafeTensorsFile::open(&a[0]).unwrap();
            let owned: Vec<(String, DType, Vec<u64>, Vec<u8>)> = (0..file.len())
                .map(|i| {
                    let v = file.view(i).unwrap();
                    (
                        v.name.to_string(),
                        v.dtype,
                        v.shape.to_vec(),
                        v.data.to_vec(),
                    )
                })
                .collect();
            let inputs: Vec<npkio::ArrayInput<'_>> = owned
                .iter()
                .map(|(n, d, s, b)| npkio::ArrayInput {
                    name: n,
                    dtype: *d,
                    shape: s,
                    data: b,
                })
                .collect();
            let t0 = Instant::now();
            npkio::from_safetensors(&inputs, &a[1], true).unwrap();
            let ours = t0.elapsed();
            let t1 = Instant::now();
            let mut f = File::create(&a[2]).unwrap();
            for (_, _, _, b) in &owned {
                f.write_all(b).unwrap();
            }
            drop(f);
            let plain = t1.elapsed();
            println!("{} {}", ours.as_secs_f64(), plain.as_secs_f64());
        }
        other => panic!("unknown child op {other}"),
    }
    println!("VMHWM {}", vm_hwm_kib());
}

/// The floor for an import: the same data files (`data_<name>.npkd`, each tensor's bytes)
/// created with plain `open`/`pwrite`/`close` from `threads` threads taking tensors in file
/// order, nothing else (no staging, no metadata, no preallocation). What the filesystem
/// charges to create the files and take their bytes; npkio cannot go below it.
/// The tensors of the SafeTensors file `f` as (name, begin, end) in file order, and the
/// offset of its data section.
fn tensor_table(f: &File) -> (Vec<(String, u64, u64)>, u64) {
    use std::os::unix::fs::FileExt;
    let mut n = [0u8; 8];
    f.read_exact_at(&mut n, 0).unwrap();
    let n = u64::from_le_bytes(n);
    let mut header = vec![0u8; n as usize];
    f.read_exact_at(&mut header, 8).unwrap();
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).unwrap();
    let mut tensors: Vec<(String, u64, u64)> = header
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| {
            let o = &v["data_offsets"];
            (k.clone(), o[0].as_u64().unwrap(), o[1].as_u64().unwrap())
        })
        .collect();
    tensors.sort_by_key(|t| t.1);
    (tensors, 8 + n)
}

/// The floor for an export: the plainest program that puts the NumPack directory's tensor
/// files back into one SafeTensors file. It copies the header from the original file, then
/// from `threads` threads, per tensor in file order: `open`, one `pread` of the whole data
/// file, `close`, one `pwrite` at the tensor's place. No preallocation, no checks.
fn floor_reader(src: &Path, npk: &Path, out: &Path, threads: usize) {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let f = File::open(src).unwrap();
    let (tensors, start) = tensor_table(&f);
    let mut header = vec![0u8; start as usize];
    f.read_exact_at(&mut header, 0).unwrap();
    let dst = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(out)
        .unwrap();
    dst.write_all_at(&header, 0).unwrap();
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                let largest = tensors.iter().map(|t| t.2 - t.1).max().unwrap_or(0) as usize;
                let mut raw = vec![0u8; largest + 4096];
                let off = raw.as_ptr().align_offset(4096);
                let buf = &mut raw[off..off + largest];
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((name, b, e)) = tensors.get(i) else {
                        break;
                    };
                    let path = npk.join(format!("data_{name}.npkd"));
                    let data = File::open(&path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
                    let k = (e - b) as usize;
                    data.read_exact_at(&mut buf[..k], 0).unwrap();
                    drop(data);
                    dst.write_all_at(&buf[..k], start + b).unwrap();
                }
            });
        }
    });
}

fn floor_writer(src: &Path, out: &Path, threads: usize) {
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let f = File::open(src).unwrap();
    let (tensors, start) = tensor_table(&f);
    std::fs::create_dir(out).unwrap();
    let next = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| {
                // Page-aligned, as the destination offset 0 is.
                let mut raw = vec![0u8; (8 << 20) + 4096];
                let off = raw.as_ptr().align_offset(4096);
                let buf = &mut raw[off..off + (8 << 20)];
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((name, b, e)) = tensors.get(i) else {
                        break;
                    };
                    let dst = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o644)
                        .open(out.join(format!("data_{name}.npkd")))
                        .unwrap();
                    let mut at = 0u64;
                    while at < e - b {
                        let k = (e - b - at).min(buf.len() as u64) as usize;
                        f.read_exact_at(&mut buf[..k], start + b + at).unwrap();
                        dst.write_all_at(&buf[..k], at).unwrap();
                        at += k as u64;
                    }
                }
            });
        }
    });
}

/// Many-tensor mode: import and export against the floor writer and reader and `cp`, paired
/// runs.
fn many_tensors(args: &Args, me: &Path, dir: &Path, src: &Path, count: u64, len: u64) {
    let threads = args.threads.first().copied().unwrap_or(0);
    let floor_threads = match threads {
        0 => npkio::internals::copy::default_threads(),
        t => t,
    };
    let npk = dir.join("model.npk");
    let back = dir.join("back.safetensors");
    let cp_dst = dir.join("cp.safetensors");
    let floor_dir = dir.join("floor.npk");
    let floor_back = dir.join("floor.safetensors");
    let child = |op: &str, a: &[&dyn AsRef<std::ffi::OsStr>]| {
        let mut c = Command::new(me);
        c.arg("--child").arg(op);
        for x in a {
            c.arg(x);
        }
        c
    };
    let ts = threads.to_string();
    let fts = floor_threads.to_string();
    // (row name, input to warm, output to remove, command)
    let ops: Vec<(String, &Path, &Path, Command)> = vec![
        ("cp".into(), src, &cp_dst, {
            let mut c = Command::new("cp");
            c.arg(src).arg(&cp_dst);
            c
        }),
        (
            format!("floor writer ({floor_threads} thr)"),
            src,
            &floor_dir,
            child("floor", &[&src, &floor_dir, &fts]),
        ),
        (
            format!(
                "SafeTensors -> NumPack ({})",
                if threads == 0 {
                    "default".into()
                } else {
                    format!("{threads} thr")
                }
            ),
            src,
            &npk,
            child("from", &[&src, &npk, &ts, &"fast"]),
        ),
        (
            format!("floor reader ({floor_threads} thr)"),
            &npk,
            &floor_back,
            child("floor-read", &[&src, &npk, &floor_back, &fts]),
        ),
        (
            format!(
                "NumPack -> SafeTensors ({})",
                if threads == 0 {
                    "default".into()
                } else {
                    format!("{threads} thr")
                }
            ),
            &npk,
            &back,
            child("to", &[&npk, &back, &ts, &"fast"]),
        ),
    ];
    let mut ops = ops;
    let mut secs: Vec<Vec<f64>> = vec![Vec::new(); ops.len()];
    let mut rss = vec![0u64; ops.len()];
    // One untimed warm-up round, then `reps` rounds; every run from a synced, clean state.
    for rep in 0..=args.reps {
        for (k, (name, input, output, cmd)) in ops.iter_mut().enumerate() {
            remove(output);
            warm(input);
            // SAFETY: sync(2) takes no arguments.
            unsafe { libc::sync() };
            let (d, r) = run(cmd);
            if args.verbose {
                eprintln!("round {rep}: {name}: {:.4} s", d.as_secs_f64());
            }
            if rep > 0 {
                secs[k].push(d.as_secs_f64());
                rss[k] = rss[k].max(r);
            }
        }
    }
    let header_ops: Vec<(&str, Command)> = vec![
        ("get_safetensors_metadata", child("metadata", &[&src])),
        ("iter_safetensors (zero-copy)", child("iterate", &[&src])),
        ("NumPack open + info of all", child("inspect", &[&npk])),
    ];
    let mut header_rows = Vec::new();
    for (name, mut cmd) in header_ops {
        run(&mut cmd);
        let (mut t, mut m) = (Vec::new(), 0u64);
        for _ in 0..args.reps {
            let (d, r) = run(&mut cmd);
            t.push(d.as_secs_f64());
            m = m.max(r);
        }
        header_rows.push((name, t, m));
    }
    let ratio = |a: usize, b: usize| -> Vec<f64> {
        secs[a].iter().zip(&secs[b]).map(|(x, y)| x / y).collect()
    };
    let fmt_ratio = |v: &[f64]| -> String {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(0.0, f64::max);
        format!("{:.2} ({lo:.2}-{hi:.2})", median(v.to_vec()))
    };
    let range = |v: &[f64]| -> String {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(0.0, f64::max);
        format!("{lo:.3}-{hi:.3}")
    };
    println!();
    println!(
        "{:<34} {:>9} {:>13} {:>9} {:>18} {:>18} {:>10}",
        "operation",
        "median s",
        "range s",
        "us/tensor",
        "x floor (range)",
        "x cp (range)",
        "peak RSS"
    );
    for (k, (name, ..)) in ops.iter().enumerate() {
        let m = median(secs[k].clone());
        // The import against the floor writer, the export against the floor reader.
        let vs_floor = match k {
            2 => fmt_ratio(&ratio(2, 1)),
            4 => fmt_ratio(&ratio(4, 3)),
            _ => "-".into(),
        };
        let vs_cp = if k == 0 {
            "1.00".into()
        } else {
            fmt_ratio(&ratio(k, 0))
        };
        println!(
            "{:<34} {:>9.4} {:>13} {:>9.1} {:>18} {:>18} {:>6.1} MiB",
            name,
            m,
            range(&secs[k]),
            m / count as f64 * 1e6,
            vs_floor,
            vs_cp,
            rss[k] as f64 / (1 << 20) as f64
        );
    }
    for (name, t, m) in &header_rows {
        let md = median(t.clone());
        println!(
            "{:<34} {:>9.4} {:>13} {:>9.2} {:>18} {:>18} {:>6.1} MiB",
            name,
            md,
            range(t),
            md / count as f64 * 1e6,
            "-",
            "-",
            *m as f64 / (1 << 20) as f64
        );
    }
    println!(
        "\n{count} tensors, {:.1} MiB, {} paired rounds after one warm-up round; load average at the end: {}",
        len as f64 / (1 << 20) as f64,
        args.reps,
        std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim()
    );
    page_reporting_note();
    python_header_ops(args, me, src, &npk);
}

/// Says so when the kernel hands freed memory back to a hypervisor (virtio-balloon free page
/// reporting): on such a machine, writing a file into memory freed a few seconds before (the
/// previous run's output, removed) costs several times more than into memory in use, and by
/// chance, which swamps the differences measured here (1 GiB through `dd`: 0.4-0.5 s, or
/// 2.5-3.5 s four seconds after removing the previous copy).
fn page_reporting_note() {
    let knob = "/sys/module/page_reporting/parameters/page_reporting_order";
    let Ok(order) = std::fs::read_to_string(knob) else {
        return;
    };
    let order = order.trim();
    if order.parse::<u32>().is_ok_and(|o| o <= 10) {
        println!(
            "note: this kernel reports freed memory to the hypervisor (page_reporting_order \
             {order}), which makes the time of every writer here erratic; for stable numbers, \
             as root: echo 11 > {knob} (restore {order} afterwards)"
        );
    }
}

/// The Python package's header-only operations on the same model and NumPack directory,
/// against the `safetensors` package in the same run: python/benchmarks/many_tensors.py,
/// run by the Python in `NPKIO_BENCH_PYTHON` when it can import npkio (this checkout's,
/// with the library built next to this binary) and safetensors.
fn python_header_ops(args: &Args, me: &Path, src: &Path, npk: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let Ok(py) = std::env::var("NPKIO_BENCH_PYTHON") else {
        println!(
            "\nPython rows: set NPKIO_BENCH_PYTHON to a Python with numpy and safetensors \
             (pip install numpy safetensors ml_dtypes) to time the npkio package too"
        );
        return;
    };
    let python_path = match std::env::var_os("PYTHONPATH") {
        Some(p) if !p.is_empty() => {
            let mut v = root.join("python").into_os_string();
            v.push(":");
            v.push(p);
            v
        }
        _ => root.join("python").into_os_string(),
    };
    let cmd = |c: &mut Command| {
        c.env("PYTHONPATH", &python_path);
        // The library built with this binary, unless one is chosen.
        let lib = me
            .parent()
            .and_then(Path::parent)
            .map(|d| d.join("libnpkio.so"));
        if let Some(lib) = lib.filter(|l| l.is_file()) {
            if std::env::var_os("NPKIO_LIBRARY").is_none() {
                c.env("NPKIO_LIBRARY", lib);
            }
        }
    };
    let mut probe = Command::new(&py);
    probe.args(["-c", "import npkio, safetensors"]);
    cmd(&mut probe);
    if !probe.output().is_ok_and(|o| o.status.success()) {
        println!(
            "\nPython rows: {py} (NPKIO_BENCH_PYTHON) cannot import npkio and safetensors; \
             pip install numpy safetensors ml_dtypes into it"
        );
        return;
    }
    let mut c = Command::new(&py);
    c.arg(root.join("python/benchmarks/many_tensors.py"))
        .arg("--file")
        .arg(src)
        .arg("--numpack")
        .arg(npk)
        .arg("--reps")
        .arg(args.reps.max(5).to_string())
        .arg("--no-reads");
    cmd(&mut c);
    println!("\nPython package (python/benchmarks/many_tensors.py, in one process):");
    match c.output() {
        Ok(o) if o.status.success() => print!("{}", String::from_utf8_lossy(&o.stdout)),
        Ok(o) => println!(
            "failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => println!("cannot run {py}: {e}"),
    }
}

fn find_reference_python() -> Option<String> {
    let py = std::env::var("NPKIO_BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py)
        .args(["-c", "import numpack, numpack.io"])
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(py)
}

fn main() {
    let mut argv = std::env::args().skip(1).peekable();
    if argv.peek().map(String::as_str) == Some("--child") {
        argv.next();
        child(argv);
        return;
    }
    let args = parse_args(argv);
    let me = std::env::current_exe().unwrap();
    let tmp = match &args.dir {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir_in(".").unwrap(),
    };
    let dir = tmp.path();
    let src = dir.join("model.safetensors");
    // Generated in a child so that this process stays small: a child's peak RSS as reported
    // by wait4 includes the resident size of the process that spawned it.
    let out = Command::new(&me)
        .args(["--child", "generate"])
        .arg(&src)
        .arg(args.size.to_string())
        .arg(match (args.tensors, args.f32_only) {
            (Some(n), _) => format!("moe:{n}"),
            (None, true) => "f32".into(),
            (None, false) => "mixed".into(),
        })
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    let first = printed.lines().next().unwrap_or_default();
    let mut p = first.split_whitespace().map(|x| x.parse::<u64>().unwrap());
    let (count, len) = (p.next().unwrap(), p.next().unwrap());
    warm(&src);
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "npkio bench: {} tensors ({}), {:.1} MiB, {} reps, {} CPUs, dir {}",
        count,
        match (args.tensors, args.f32_only) {
            (Some(_), _) => "BF16, expert-style names",
            (None, true) => "F32",
            (None, false) => "BF16 + F32",
        },
        len as f64 / (1 << 20) as f64,
        args.reps,
        ncpu,
        dir.display()
    );
    if args.tensors.is_some() {
        many_tensors(&args, &me, dir, &src, count, len);
        return;
    }

    let npk = dir.join("model.npk");
    let back = dir.join("back.safetensors");
    let cp_dst = dir.join("cp.safetensors");
    let mut rows: Vec<Row> = Vec::new();
    // Every cp run, for the cp row.
    let mut cp_secs: Vec<f64> = Vec::new();
    let mut cp_rss = 0u64;
    let cp_cmd = || {
        let mut c = Command::new("cp");
        c.arg(&src).arg(&cp_dst);
        c
    };
    let mut time = |name: String, bytes: u64, setup: &dyn Fn(), cmd: &dyn Fn() -> Command| {
        let (mut secs, mut ratios, mut rss) = (Vec::new(), Vec::new(), 0u64);
        if bytes > 0 {
            // One untimed warm-up run. On this kind of virtual machine, the first run after
            // a different operation is often 3-10x slower than the next ones (it gets pages
            // the guest has not used for a while, which the host must bring back); the runs
            // after it measure the steady state, as cp's runs do.
            setup();
            // SAFETY: sync(2) takes no arguments.
            unsafe { libc::sync() };
            run(&mut cmd());
        }
        for _ in 0..args.reps {
            // A cp of the same bytes right before each run that moves bytes: this VM's speed
            // drifts over seconds, so a ratio to a cp timed minutes earlier says little.
            let cp = (bytes > 0).then(|| {
                remove(&cp_dst);
                warm(&src);
                // Flush earlier runs' dirty pages so that their writeback does not land in
                // this run's time; the page cache stays warm.
                // SAFETY: sync(2) takes no arguments.
                unsafe { libc::sync() };
                let (d, r) = run(&mut cp_cmd());
                cp_secs.push(d.as_secs_f64());
                cp_rss = cp_rss.max(r);
                d.as_secs_f64()
            });
            setup();
            // SAFETY: as above.
            unsafe { libc::sync() };
            let (d, r) = run(&mut cmd());
            secs.push(d.as_secs_f64());
            ratios.extend(cp.map(|c| d.as_secs_f64() / c));
            if args.verbose {
                let cp = cp.map_or(String::new(), |c| format!(" (cp before it: {c:.4} s)"));
                eprintln!("{name}: {:.4} s{cp}", d.as_secs_f64());
            }
            rss = rss.max(r);
        }
        rows.push(Row {
            name,
            secs: median(secs),
            rss,
            bytes,
            ratios,
        });
    };

    time("true (process start, RSS floor)".into(), 0, &|| {}, &|| {
        Command::new("true")
    });
    let child = |op: &str, a: &[&dyn AsRef<std::ffi::OsStr>]| {
        let mut c = Command::new(&me);
        c.arg("--child").arg(op);
        for x in a {
            c.arg(x);
        }
        c
    };
    // Default threads first (what users get), then the scaling figures.
    let mut counts = vec![0usize];
    counts.extend(&args.threads);
    for &t in &counts {
        let label = if t == 0 {
            "default".to_string()
        } else {
            format!("{t} thr")
        };
        let ts = t.to_string();
        time(
            format!("SafeTensors -> NumPack ({label})"),
            len,
            &|| {
                remove(&npk);
                warm(&src);
            },
            &|| child("from", &[&src, &npk, &ts, &"fast"]),
        );
        // The NumPack side must exist for the export.
        if !npk.exists() {
            run(&mut child("from", &[&src, &npk, &"0", &"fast"]));
        }
        time(
            format!("NumPack -> SafeTensors ({label})"),
            len,
            &|| {
                remove(&back);
                warm(&npk);
            },
            &|| child("to", &[&npk, &back, &ts, &"fast"]),
        );
    }
    time(
        "SafeTensors -> NumPack (durable)".into(),
        len,
        &|| {
            remove(&npk);
            warm(&src);
        },
        &|| child("from", &[&src, &npk, &"0", &"durable"]),
    );
    if !npk.exists() {
        run(&mut child("from", &[&src, &npk, &"0", &"fast"]));
    }
    time(
        "NumPack -> SafeTensors (durable)".into(),
        len,
        &|| {
            remove(&back);
            warm(&npk);
        },
        &|| child("to", &[&npk, &back, &"0", &"durable"]),
    );
    time("get_safetensors_metadata".into(), 0, &|| {}, &|| {
        child("metadata", &[&src])
    });
    time("iter_safetensors (zero-copy)".into(), 0, &|| {}, &|| {
        child("iterate", &[&src])
    });

    // In-memory from_safetensors vs a plain single write, timed inside the child.
    let mut ours = Vec::new();
    let mut plain = Vec::new();
    let mem_npk = dir.join("mem.npk");
    let mem_plain = dir.join("mem.bin");
    for _ in 0..args.reps {
        remove(&mem_npk);
        remove(&mem_plain);
        // SAFETY: sync(2) takes no arguments.
        unsafe { libc::sync() };
        let out = child("memory", &[&src, &mem_npk, &mem_plain])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let s = String::from_utf8_lossy(&out.stdout);
        let first = s.lines().next().unwrap_or_default();
        let mut p = first.split_whitespace().map(|x| x.parse::<f64>().unwrap());
        ours.push(p.next().unwrap());
        plain.push(p.next().unwrap());
    }

    let reference = find_reference_python();
    if let Some(py) = &reference {
        if args.f32_only {
            let code_from = "import sys; from numpack.io import from_safetensors_file as f; f(sys.argv[1], sys.argv[2], drop_if_exists=True)";
            let code_to = "import sys; from numpack.io import to_safetensors_file as f; f(sys.argv[1], sys.argv[2])";
            let code_meta =
                "import sys; from numpack.io import get_safetensors_metadata as f; f(sys.argv[1])";
            let ref_npk = dir.join("ref.npk");
            let ref_back = dir.join("ref.safetensors");
            time(
                "reference from_safetensors_file".into(),
                len,
                &|| {
                    remove(&ref_npk);
                    warm(&src);
                },
                &|| {
                    let mut c = Command::new(py);
                    c.args(["-c", code_from]).arg(&src).arg(&ref_npk);
                    c
                },
            );
            time(
                "reference to_safetensors_file".into(),
                len,
                &|| {
                    remove(&ref_back);
                    warm(&ref_npk);
                },
                &|| {
                    let mut c = Command::new(py);
                    c.args(["-c", code_to]).arg(&ref_npk).arg(&ref_back);
                    c
                },
            );
            time(
                "reference get_safetensors_metadata".into(),
                0,
                &|| {},
                &|| {
                    let mut c = Command::new(py);
                    c.args(["-c", code_meta]).arg(&src);
                    c
                },
            );
        }
    }

    let cp_row = Row {
        name: format!("cp (all {} runs)", cp_secs.len()),
        secs: median(cp_secs.clone()),
        rss: cp_rss,
        bytes: len,
        ratios: vec![1.0],
    };
    rows.insert(1, cp_row);
    println!();
    println!(
        "{:<40} {:>10} {:>9} {:>8} {:>13} {:>10}",
        "operation", "median s", "GB/s", "x cp", "x cp range", "peak RSS"
    );
    for r in &rows {
        let gbs = if r.bytes > 0 {
            format!("{:.2}", r.bytes as f64 / r.secs / 1e9)
        } else {
            "-".into()
        };
        let (ratio, range) = if r.ratios.is_empty() {
            ("-".to_string(), "-".to_string())
        } else {
            let lo = r.ratios.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = r.ratios.iter().copied().fold(0.0, f64::max);
            (
                format!("{:.2}", median(r.ratios.clone())),
                format!("{lo:.2}-{hi:.2}"),
            )
        };
        println!(
            "{:<40} {:>10.4} {:>9} {:>8} {:>13} {:>6.1} MiB",
            r.name,
            r.secs,
            gbs,
            ratio,
            range,
            r.rss as f64 / (1 << 20) as f64
        );
    }
    let (o, p) = (median(ours), median(plain));
    println!(
        "{:<40} {:>10.4} {:>9.2} {:>8} (plain write {:.4} s: {:.2} x)",
        "from_safetensors (in memory)",
        o,
        len as f64 / o / 1e9,
        "-",
        p,
        o / p
    );
    match (&reference, args.f32_only) {
        (None, _) => println!(
            "\nreference NumPack: not found (set NPKIO_BENCH_PYTHON to a Python with numpack 0.7)"
        ),
        (Some(_), false) => println!(
            "\nreference NumPack: found, not timed (it cannot read BF16; rerun with --f32-only)"
        ),
        (Some(py), true) => println!("\nreference NumPack: timed with {py}"),
    }
}
