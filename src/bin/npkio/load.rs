//! `npkio load`: read tensors (or each one's shard) into memory with the loader and report
//! bytes, time and throughput: a quick "how fast does my disk load this model" check.

use std::process::ExitCode;
use std::time::Instant;

use npkio::load::{LoadOptions, Loader, Method, Request, Staging};
use npkio::Error;

use crate::{print_stdout, Failure, LoadArgs, Outcome};

/// Parses `DIM,RANK,WORLD`.
pub fn parse_shard(s: &str) -> Result<(usize, u64, u64), String> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    let bad = || format!("{s:?} is not DIM,RANK,WORLD (three integers, e.g. 0,1,2)");
    let [d, r, w] = parts[..] else {
        return Err(bad());
    };
    let (d, r, w) = (
        d.parse().map_err(|_| bad())?,
        r.parse().map_err(|_| bad())?,
        w.parse().map_err(|_| bad())?,
    );
    if w == 0 || r >= w {
        return Err(format!("rank {r} of world {w}: need 0 <= RANK < WORLD"));
    }
    Ok((d, r, w))
}

/// Runs `npkio load`.
pub fn run(args: &LoadArgs) -> Outcome {
    if args.direct && args.buffered {
        return Err(Failure::Usage {
            subcommand: "load",
            message: "--direct and --buffered exclude each other".into(),
        });
    }
    let loader = Loader::open(&args.checkpoint)?;
    let names: Vec<String> = if args.keys.is_empty() {
        loader.tensors().iter().map(|t| t.name.clone()).collect()
    } else {
        args.keys.clone()
    };
    let reqs: Vec<Request> = names
        .iter()
        .map(|n| {
            let r = Request::new(n);
            match args.shard {
                // Tensors with fewer dimensions than DIM (biases, norms) load whole.
                Some((d, rank, world)) if loader.tensor(n).is_some_and(|t| t.shape.len() > d) => {
                    r.shard(d, rank, world)
                }
                _ => r,
            }
        })
        .collect();
    let opts = LoadOptions::default()
        .threads(args.threads)
        .method(if args.direct {
            Method::Direct
        } else if args.buffered {
            Method::Buffered
        } else {
            Method::Auto
        })
        .drop_behind(args.drop_behind)
        .concurrency(args.concurrency);
    let opts = match args.range_size {
        Some(n) => opts.range_size(n),
        None => opts,
    };
    let (report, secs) = match args.staging {
        Some(size) => {
            let sink = |_: usize, _: u64, _: &[u8]| -> Result<(), String> { Ok(()) };
            let t = Instant::now();
            let r = loader.load_to_sink(&reqs, Staging::Size(size), &sink, &opts)?;
            (r, t.elapsed().as_secs_f64())
        }
        None => {
            let mut sizes = Vec::with_capacity(reqs.len());
            for r in &reqs {
                sizes.push(loader.output(r)?.nbytes);
            }
            let total = sizes
                .iter()
                .try_fold(0u64, |a, &n| a.checked_add(n))
                .and_then(|t| usize::try_from(t).ok())
                .ok_or_else(|| Error::invalid_argument("the tensors do not fit in memory"))?;
            // Ready memory, as an engine would have: touched before the clock starts. Too
            // large for the memory at hand is an I/O error (exit 3), not an abort.
            let mut arena: Vec<u8> = Vec::new();
            arena.try_reserve_exact(total).map_err(|_| {
                Error::io(
                    &args.checkpoint,
                    &format!("allocating {total} bytes to load the tensors of"),
                    std::io::Error::from(std::io::ErrorKind::OutOfMemory),
                )
            })?;
            arena.resize(total, 1);
            let mut dsts: Vec<&mut [u8]> = Vec::with_capacity(sizes.len());
            let mut rest = &mut arena[..];
            for &n in &sizes {
                let (a, b) = rest.split_at_mut(n as usize);
                dsts.push(a);
                rest = b;
            }
            let t = Instant::now();
            let r = loader.load(&reqs, &mut dsts, &opts)?;
            (r, t.elapsed().as_secs_f64())
        }
    };
    let gbs = report.bytes_out as f64 / secs.max(1e-9) / 1e9;
    let mut text = format!(
        "loaded {} tensors: {} bytes in {secs:.3} s, {gbs:.2} GB/s\n",
        reqs.len(),
        report.bytes_out
    );
    text.push_str(&format!(
        "read {} bytes ({} with O_DIRECT{}), {} chunks, {} threads\n",
        report.bytes_read,
        report.direct_bytes,
        if report.direct_refused {
            "; the filesystem refused O_DIRECT for some"
        } else {
            ""
        },
        report.tasks,
        report.threads
    ));
    print_stdout(&text)?;
    Ok(ExitCode::SUCCESS)
}
