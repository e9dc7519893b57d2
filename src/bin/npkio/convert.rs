//! `npkio convert`: SafeTensors to NumPack or back, the direction following from the input.

use std::collections::HashSet;
use std::fs;
use std::path::Path;
use std::process::ExitCode;

use npkio::Checkpoint;
use npkio::{Error, ErrorKind, NumPack, Options};

use crate::container::{detect, Format};
use crate::progress::{rate_summary, Progress};
use crate::{ConvertArgs, Failure, Outcome};

/// Runs `npkio convert`.
pub fn run(args: &ConvertArgs) -> Outcome {
    if args.output.to_str().is_some_and(npkio::remote::is_url) {
        return run_to_url(args);
    }
    // From object storage: fetched first into a temporary local file (see `fetch`).
    let fetched = if args.input.to_str().is_some_and(npkio::remote::is_url) {
        Some(fetch(&args.input, &args.output, &args.keys)?)
    } else {
        None
    };
    let input: &Path = fetched.as_ref().map_or(&args.input, |t| t.path());
    let format = detect(input)?;
    let keys: Option<&[String]> = if args.keys.is_empty() {
        None
    } else {
        Some(&args.keys)
    };
    if format == Format::SafeTensors && !args.metadata.is_empty() {
        return Err(usage(
            "--metadata applies only when converting a NumPack directory to a SafeTensors file; \
             a NumPack directory made from a SafeTensors file keeps that file's metadata",
        ));
    }
    if format == Format::SafeTensors && args.max_shard_size.is_some() {
        return Err(usage(
            "--max-shard-size applies only when converting a NumPack directory to SafeTensors",
        ));
    }
    let mut seen = HashSet::new();
    if let Some((k, _)) = args.metadata.iter().find(|(k, _)| !seen.insert(k)) {
        return Err(usage(format!("--metadata gives the key {k:?} twice")));
    }

    // Header-only look at the input: the bytes to copy, and unknown keys refused early.
    let (count, total) = match format {
        Format::SafeTensors => {
            let c = Checkpoint::open(input)?;
            let selected = c.select(keys)?;
            let tensors: Vec<_> = c.infos().collect();
            let total = selected
                .iter()
                .filter_map(|&i| tensors.get(i))
                .fold(0u64, |sum, t| sum.saturating_add(t.len()));
            (selected.len(), total)
        }
        Format::NumPack => {
            refuse_to_overwrite(&args.output, args.force, args.max_shard_size.is_some())?;
            let store = NumPack::open(input)?;
            let names: Vec<String> = match keys {
                None => store.names().into_iter().map(str::to_string).collect(),
                Some(k) => {
                    let mut seen = HashSet::new();
                    k.iter().filter(|n| seen.insert(*n)).cloned().collect()
                }
            };
            let mut total = 0u64;
            for n in &names {
                total = total.saturating_add(store.info(n)?.nbytes);
            }
            (names.len(), total)
        }
    };

    let progress = Progress::new(total, "converting", args.quiet);
    let mut opts = Options::default();
    opts.chunk_size = args.chunk_size;
    opts.threads = args.threads;
    opts.method = args.method.into();
    opts.durable = args.durable;
    opts.progress = progress.callback();
    opts.max_shard_size = args.max_shard_size.map(|n| n as u64);
    opts.wait_for_lock = !args.no_wait;
    // Checked again by the library under the output's lock (the check above is early).
    opts.no_clobber = format == Format::NumPack && !args.force;
    let result = match format {
        Format::SafeTensors => {
            npkio::from_safetensors_file_with(input, &args.output, keys, args.force, &opts)
        }
        Format::NumPack => npkio::to_safetensors_file_with(
            input,
            &args.output,
            keys,
            (!args.metadata.is_empty()).then_some(args.metadata.as_slice()),
            &opts,
        ),
    };
    if let Err(e) = result {
        progress.clear();
        return Err(e.into());
    }
    progress.finish(|elapsed| {
        let s = if count == 1 { "" } else { "s" };
        format!(
            "converted {count} tensor{s}, {}: {} -> {}",
            rate_summary(total, elapsed),
            args.input.display(),
            args.output.display()
        )
    });
    Ok(ExitCode::SUCCESS)
}

/// `convert INPUT URL`: the output is written into a temporary directory, then uploaded
/// (one multipart upload per file: each object appears whole or not at all; a sharded
/// checkpoint's index or a NumPack store's metadata last, so that a reader who finds it
/// finds the files it names). Without `--force`, a URL where anything is stored already (the
/// object, or objects under it as a prefix) is refused before any work; with it, objects of
/// the same names are replaced and others under the prefix are left.
fn run_to_url(args: &ConvertArgs) -> Outcome {
    let url = args.output.to_string_lossy().into_owned();
    let opts = npkio::remote::RemoteOptions::default();
    if !args.force && npkio::remote::exists(&url, &opts)? {
        return Err(Error::new(
            ErrorKind::AlreadyExists,
            "holds objects already; pass --force to replace them",
        )
        .at(&url)
        .into());
    }
    let name = url
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or("output")
        .to_string();
    let tmp = tempfile::tempdir()
        .map_err(|e| Error::io(std::env::temp_dir(), "creating a temporary directory in", e))?;
    let local = tmp.path().join(&name);
    let mut here = args.clone();
    here.output = local.clone();
    let code = run(&here)?;
    if local.is_dir() {
        let last = if local.join("metadata.npkm").is_file() {
            "metadata.npkm"
        } else {
            "model.safetensors.index.json"
        };
        npkio::remote::upload_dir(&local, &url, Some(last), &opts)?;
    } else {
        npkio::remote::upload_file(&local, &url, &opts)?;
    }
    if !args.quiet {
        eprintln!("uploaded to {url}");
    }
    Ok(code)
}

/// `convert URL OUTPUT`: the conversion reads a local SafeTensors file, so the checkpoint
/// in object storage (a single object or a sharded one) is first fetched by the loader
/// (concurrent ranged GETs through staging buffers of bounded size, written in place) into
/// one temporary SafeTensors file beside the output, removed when the conversion is done.
/// Only the tensors of `keys` are fetched when some are given.
fn fetch(url: &Path, output: &Path, keys: &[String]) -> Result<tempfile::NamedTempFile, Error> {
    use npkio::internals::safetensors::writer;
    use npkio::load::{LoadOptions, Loader, Request, Staging};
    use std::os::unix::fs::FileExt;
    let loader = Loader::open(url)?;
    let names: Vec<&str> = if keys.is_empty() {
        loader.tensors().iter().map(|t| t.name.as_str()).collect()
    } else {
        keys.iter().map(String::as_str).collect()
    };
    let reqs: Vec<Request> = names.iter().map(|n| Request::new(*n)).collect();
    let mut inputs = Vec::with_capacity(names.len());
    for n in &names {
        let t = loader.tensor(n).ok_or_else(|| {
            Error::new(ErrorKind::KeyNotFound, "no such tensor")
                .at(url)
                .array(*n)
        })?;
        inputs.push(writer::PlanInput {
            name: &t.name,
            dtype: t.dtype,
            shape: &t.shape,
        });
    }
    let plan = writer::plan_header(&inputs, loader.metadata())?;
    let dir = match output.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let tmp = tempfile::Builder::new()
        .prefix(".npkio-fetch-")
        .suffix(".safetensors")
        .tempfile_in(dir)
        .map_err(|e| Error::io(dir, "creating a temporary file in", e))?;
    let f = tmp.as_file();
    f.set_len(plan.file_len)
        .and_then(|()| f.write_all_at(&plan.header, 0))
        .map_err(|e| Error::io(tmp.path(), "writing", e))?;
    let sink = |req: usize, off: u64, bytes: &[u8]| -> Result<(), String> {
        f.write_all_at(bytes, plan.ranges[req].0 + off)
            .map_err(|e| format!("writing {}: {e}", tmp.path().display()))
    };
    loader.load_to_sink(
        &reqs,
        Staging::Size(8 << 20),
        &sink,
        &LoadOptions::default(),
    )?;
    Ok(tmp)
}

/// A SafeTensors output that exists is replaced only with `--force`: a file, or for a
/// sharded export a directory that already holds SafeTensors weights (a directory of config
/// files alone is written into, as `save_pretrained` does). A NumPack output is merged into
/// by the library; `--force` replaces it whole.
fn refuse_to_overwrite(output: &Path, force: bool, sharded: bool) -> Result<(), Error> {
    if force {
        return Ok(());
    }
    let Ok(md) = fs::symlink_metadata(output) else {
        return Ok(());
    };
    if !md.is_dir() && !sharded {
        return Err(Error::new(
            ErrorKind::AlreadyExists,
            "exists; pass --force to replace it",
        )
        .at(output));
    }
    if md.is_dir() && sharded && holds_weights(output) {
        return Err(Error::new(
            ErrorKind::AlreadyExists,
            "already holds SafeTensors weights; pass --force to replace them",
        )
        .at(output));
    }
    // Anything else (a file where a directory should go, ...) the library refuses.
    Ok(())
}

/// Whether `dir` holds `*.safetensors` files or a `*.safetensors.index.json`.
fn holds_weights(dir: &Path) -> bool {
    fs::read_dir(dir).is_ok_and(|entries| {
        entries.filter_map(|e| e.ok()).any(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.ends_with(".safetensors") || name.ends_with(".safetensors.index.json")
        })
    })
}

fn usage(message: impl Into<String>) -> Failure {
    Failure::Usage {
        subcommand: "convert",
        message: message.into(),
    }
}
