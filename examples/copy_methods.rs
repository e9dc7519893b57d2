//! Measure the copy engine's methods against `cp` and a plain `write`.
//!
//! ```text
//! cargo run --release --example copy_methods -- --size 1GiB [--dir DIR] [--reps 3]
//!     [--threads 1,2,4] [--chunks 1MiB,4MiB,8MiB,16MiB,64MiB] [--methods mmap,readwrite,...]
//! ```
//!
//! A source file of `--size` bytes is written in a fresh temporary directory under `--dir`
//! (default: the system temporary directory; check with `df` that it is a disk filesystem and
//! not tmpfs), read once to warm the page cache, then every configuration is run `--reps` times,
//! interleaved. Each run happens in a child process (this program re-executed with `--child`)
//! which times itself (create + preallocate + copy of the destination, a fresh file each time)
//! and reports its peak resident set from `getrusage(RUSAGE_SELF).ru_maxrss`, so the peak is
//! per run. `cp` is timed from the parent. The table shows medians (and minima) and the ratio of
//! medians to `cp`. With `--sync`, `sync(2)` runs before every run so that earlier runs' dirty
//! pages are not written back in the middle of a later one.
//!
//! Memory rows (`mem-*`) copy from a `Vec<u8>` holding the file (filled before the clock starts,
//! so their peak RSS includes the whole buffer) and compare with one single-threaded `write_all`
//! of the same bytes (`mem-write`).

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use npkio::internals::copy::{
    copy_extents, copy_from_memory, preallocate, CopyMethod, CopyOptions, Extent,
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = if args.first().map(String::as_str) == Some("--child") {
        child(&args[1..])
    } else {
        parent(&args)
    };
    if let Err(e) = result {
        eprintln!("copy_methods: {e}");
        std::process::exit(1);
    }
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn parse_size(s: &str) -> Res<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let num: f64 = num.parse().map_err(|_| format!("bad size {s:?}"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(format!("bad size unit in {s:?}").into()),
    };
    Ok((num * mult as f64) as u64)
}

fn fmt_size(n: u64) -> String {
    if n >= 1 << 30 && n % (1 << 30) == 0 {
        format!("{}GiB", n >> 30)
    } else if n >= 1 << 20 && n % (1 << 20) == 0 {
        format!("{}MiB", n >> 20)
    } else if n >= 1 << 10 && n % (1 << 10) == 0 {
        format!("{}KiB", n >> 10)
    } else {
        format!("{n}B")
    }
}

fn method_name(m: &str) -> Res<Option<CopyMethod>> {
    Ok(match m {
        "auto" => Some(CopyMethod::Auto),
        "mmap" => Some(CopyMethod::Mmap),
        "mmapsrc" => Some(CopyMethod::MmapSource),
        "readwrite" => Some(CopyMethod::ReadWrite),
        "cfr" => Some(CopyMethod::CopyFileRange),
        "mem-auto" | "mem-mmap" | "mem-readwrite" | "mem-write" => None,
        _ => return Err(format!("unknown method {m:?}").into()),
    })
}

struct Config {
    method: String,
    threads: usize,
    chunk: u64,
}

fn parent(args: &[String]) -> Res<()> {
    let mut size = 1u64 << 30;
    let mut dir = std::env::temp_dir();
    let mut reps = 3usize;
    let mut sync = false;
    let mut threads = vec![1usize, 2, 4];
    let mut chunks: Vec<u64> = [1u64, 4, 8, 16, 64].iter().map(|m| m << 20).collect();
    let mut methods: Vec<String> = [
        "mmap",
        "mmapsrc",
        "readwrite",
        "cfr",
        "mem-mmap",
        "mem-readwrite",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--size" => size = parse_size(val()?)?,
            "--dir" => dir = PathBuf::from(val()?),
            "--reps" => reps = val()?.parse()?,
            "--sync" => sync = true,
            "--threads" => {
                threads = val()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "--chunks" => {
                chunks = val()?
                    .split(',')
                    .map(parse_size)
                    .collect::<Result<_, _>>()?
            }
            "--methods" => methods = val()?.split(',').map(str::to_string).collect(),
            "-h" | "--help" => {
                println!("see the doc comment at the top of examples/copy_methods.rs");
                return Ok(());
            }
            _ => return Err(format!("unknown argument {a:?}").into()),
        }
    }
    for m in &methods {
        method_name(m)?;
    }
    let tmp = tempfile::tempdir_in(&dir)?;
    let src = tmp.path().join("src.bin");
    println!(
        "# size {}, dir {}, reps {}, {} CPUs",
        fmt_size(size),
        dir.display(),
        reps,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    make_source(&src, size)?;
    warm(&src)?;

    let mut configs = Vec::new();
    for m in &methods {
        if m == "mem-write" {
            continue;
        }
        for &t in &threads {
            for &c in &chunks {
                configs.push(Config {
                    method: m.clone(),
                    threads: t,
                    chunk: c,
                });
            }
        }
    }
    if methods.iter().any(|m| m.starts_with("mem-")) {
        configs.push(Config {
            method: "mem-write".into(),
            threads: 1,
            chunk: 0,
        });
    }

    let exe = std::env::current_exe()?;
    let dst = tmp.path().join("dst.bin");
    let mut cp_times = Vec::new();
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    let mut rss: Vec<u64> = vec![0; configs.len()];
    for rep in 0..reps {
        settle(sync);
        let t0 = Instant::now();
        let st = Command::new("cp").arg(&src).arg(&dst).status()?;
        cp_times.push(t0.elapsed().as_secs_f64());
        if !st.success() {
            return Err("cp failed".into());
        }
        std::fs::remove_file(&dst)?;
        for (i, c) in configs.iter().enumerate() {
            settle(sync);
            let out = Command::new(&exe)
                .args([
                    "--child",
                    &c.method,
                    &c.threads.to_string(),
                    &c.chunk.to_string(),
                ])
                .arg(&src)
                .arg(&dst)
                .arg(if rep == 0 { "verify" } else { "noverify" })
                .output()?;
            if !out.status.success() {
                return Err(format!(
                    "child {} t{} c{} failed: {}",
                    c.method,
                    c.threads,
                    c.chunk,
                    String::from_utf8_lossy(&out.stderr)
                )
                .into());
            }
            let text = String::from_utf8(out.stdout)?;
            let mut f = text.split_whitespace();
            let secs: f64 = f.next().ok_or("child output")?.parse()?;
            let kib: u64 = f.next().ok_or("child output")?.parse()?;
            times[i].push(secs);
            rss[i] = rss[i].max(kib);
            let _ = std::fs::remove_file(&dst);
        }
        eprintln!("rep {} done", rep + 1);
    }
    let cp = median(&mut cp_times);
    println!(
        "{:<14} {:>3} {:>6} {:>9} {:>7} {:>7} {:>7} {:>8}",
        "method", "thr", "chunk", "median s", "min s", "GiB/s", "x cp", "peakRSS"
    );
    println!(
        "{:<14} {:>3} {:>6} {:>9.3} {:>7.3} {:>7.2} {:>7.2} {:>8}",
        "cp",
        1,
        "-",
        cp,
        cp_times[0],
        size as f64 / cp / (1u64 << 30) as f64,
        1.0,
        "-"
    );
    for (i, c) in configs.iter().enumerate() {
        let m = median(&mut times[i]);
        println!(
            "{:<14} {:>3} {:>6} {:>9.3} {:>7.3} {:>7.2} {:>7.2} {:>6}Mi",
            c.method,
            c.threads,
            if c.chunk == 0 {
                "-".to_string()
            } else {
                fmt_size(c.chunk)
            },
            m,
            times[i][0],
            size as f64 / m / (1u64 << 30) as f64,
            m / cp,
            rss[i] / 1024
        );
    }
    Ok(())
}

/// With `--sync`, flush the previous runs' dirty pages so every run starts from the same state.
fn settle(sync: bool) {
    if sync {
        // SAFETY: sync takes no arguments and cannot fail.
        unsafe { libc::sync() };
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn make_source(path: &Path, size: u64) -> Res<()> {
    let mut f = File::create(path)?;
    let mut buf = vec![0u8; 8 << 20];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut left = size;
    while left > 0 {
        for w in buf.chunks_exact_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            w.copy_from_slice(&x.to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        f.write_all(&buf[..n])?;
        left -= n as u64;
    }
    f.sync_all()?;
    Ok(())
}

fn warm(path: &Path) -> Res<()> {
    let mut f = File::open(path)?;
    let mut buf = vec![0u8; 8 << 20];
    while f.read(&mut buf)? > 0 {}
    Ok(())
}

fn peak_rss_kib() -> u64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a full rusage into the pointer, which points to enough space.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) };
    if rc != 0 {
        return 0;
    }
    // SAFETY: getrusage succeeded, so the struct is initialised (it was zeroed anyway).
    let ru = unsafe { ru.assume_init() };
    ru.ru_maxrss.max(0) as u64
}

fn child(args: &[String]) -> Res<()> {
    let [method, threads, chunk, src, dst, verify] = args else {
        return Err("bad child arguments".into());
    };
    let threads: usize = threads.parse()?;
    let chunk: usize = chunk.parse()?;
    let src_path = Path::new(src);
    let dst_path = Path::new(dst);
    let size = std::fs::metadata(src_path)?.len();
    let ext = [Extent {
        src: 0,
        src_offset: 0,
        dst: 0,
        dst_offset: 0,
        len: size,
    }];
    let secs;
    if let Some(rest) = method.strip_prefix("mem-") {
        let data = std::fs::read(src_path)?;
        let t0 = Instant::now();
        if rest == "write" {
            let mut f = File::create(dst_path)?;
            f.write_all(&data)?;
        } else {
            let m = match rest {
                "mmap" => CopyMethod::Mmap,
                "readwrite" => CopyMethod::ReadWrite,
                _ => CopyMethod::Auto,
            };
            let opts = CopyOptions {
                chunk_size: chunk,
                threads,
                method: m,
            };
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(dst_path)?;
            preallocate(&f, size)?;
            copy_from_memory(&[&data], &[&f], &ext, &opts, None)?;
        }
        secs = t0.elapsed().as_secs_f64();
    } else {
        let m = method_name(method)?.ok_or("bad method")?;
        let opts = CopyOptions {
            chunk_size: chunk,
            threads,
            method: m,
        };
        let s = File::open(src_path)?;
        let t0 = Instant::now();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dst_path)?;
        preallocate(&f, size)?;
        copy_extents(&[&s], &[&f], &ext, &opts, None)?;
        drop(f);
        secs = t0.elapsed().as_secs_f64();
    }
    let rss = peak_rss_kib();
    if verify == "verify" && !same(src_path, dst_path)? {
        return Err(format!("{method}: destination differs from source").into());
    }
    println!("{secs} {rss}");
    Ok(())
}

fn same(a: &Path, b: &Path) -> Res<bool> {
    let (mut fa, mut fb) = (File::open(a)?, File::open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let mut ba = vec![0u8; 4 << 20];
    let mut bb = vec![0u8; 4 << 20];
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}
