//! `npkio convert`: SafeTensors to NumPack or back, the direction following from the input.

use std::collections::HashSet;
use std::fs;
use std::path::Path;
use std::process::ExitCode;

use npkio::safetensors::index::Checkpoint;
use npkio::{Error, ErrorKind, NumPack, Options};

use crate::container::{detect, Format};
use crate::progress::{rate_summary, Progress};
use crate::{ConvertArgs, Failure, Outcome};

/// Runs `npkio convert`.
pub fn run(args: &ConvertArgs) -> Outcome {
    let format = detect(&args.input)?;
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
            let c = Checkpoint::open(&args.input)?;
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
            let store = NumPack::open(&args.input)?;
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
    let opts = Options {
        chunk_size: args.chunk_size,
        threads: args.threads,
        method: args.method.into(),
        durable: args.durable,
        progress: progress.callback(),
        max_shard_size: args.max_shard_size.map(|n| n as u64),
        wait_for_lock: !args.no_wait,
        // Checked again by the library under the output's lock (the check above is early).
        no_clobber: format == Format::NumPack && !args.force,
    };
    let result = match format {
        Format::SafeTensors => {
            npkio::from_safetensors_file_with(&args.input, &args.output, keys, args.force, &opts)
        }
        Format::NumPack => npkio::to_safetensors_file_with(
            &args.input,
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
