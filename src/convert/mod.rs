//! The six conversion functions of the API: SafeTensors to NumPack and back, in memory and
//! streaming.
//!
//! - `import`: SafeTensors to NumPack ([`from_safetensors_file`], [`from_safetensors`]): the
//!   new directory is built in a staging directory beside the output, the arrays kept from an
//!   old output linked in.
//! - `export`: NumPack to SafeTensors ([`to_safetensors_file`]): one file, or a sharded
//!   checkpoint handed to `publish::sharded`.
//! - `read`: the functions that only read ([`get_safetensors_metadata`],
//!   [`iter_safetensors`], [`to_safetensors`]).
//!
//! Every conversion that writes builds its output beside the target and publishes it in
//! one rename (see `publish`): a failure or a crash at any moment leaves the old output
//! as it was, or no output, never a half-written one.

mod export;
mod import;
mod read;

use std::collections::HashSet;
use std::path::Path;

use crate::copy::{CopyMethod, CopyOptions};
use crate::error::{Error, Result};
use crate::numpack::NumPack;
use crate::progress::Progress;

pub use crate::copy::DEFAULT_CHUNK_SIZE;
pub use export::{to_safetensors_file, to_safetensors_file_with};
pub use import::{
    from_safetensors, from_safetensors_file, from_safetensors_file_with, from_safetensors_with,
};
pub use read::{
    get_safetensors_metadata, iter_safetensors, to_safetensors, SafeTensorsIter,
    SafeTensorsMetadata, TensorMeta, Tensors,
};

/// Most files a conversion keeps open at once, from the open-file limit (see `fdlimit`);
/// larger conversions go in batches.
fn max_open_files() -> usize {
    crate::sys::fdlimit::open_file_budget()
}

/// Knobs shared by the conversions. `Options::default()` (with the `chunk_size` given) is
/// what the conversion functions without `_with` use.
///
/// New knobs may be added in later versions: build it from `Options::default()` and set the
/// fields you need.
#[derive(Clone)]
#[non_exhaustive]
pub struct Options {
    /// Largest piece copied at once, and so the bound on buffers and mapped windows per
    /// thread. Must not be 0.
    pub chunk_size: usize,
    /// Copy threads; 0 picks the measured default (`copy::default_threads`).
    pub threads: usize,
    /// Copy method; `Auto` picks the measured default: `pread`/`pwrite` through a small
    /// page-aligned buffer per thread (see `copy::CopyMethod::Auto`).
    pub method: CopyMethod,
    /// Sync data, then metadata, then directories before the output appears, so that it
    /// survives power loss. Off by default: a killed process still leaves a consistent
    /// output, since the kernel keeps what was written.
    pub durable: bool,
    /// Called as tensor bytes are copied: `(bytes copied so far, bytes to copy in all)`,
    /// one call at a time (see [`Progress`]).
    pub progress: Option<Progress>,
    /// For exports: write a sharded checkpoint of shards of at most this many tensor bytes
    /// into the output directory, as `save_pretrained` lays it out
    /// (`model-0000k-of-0000n.safetensors` plus `model.safetensors.index.json`, or a single
    /// `model.safetensors` when everything fits in one shard). `None` writes one file.
    pub max_shard_size: Option<u64>,
    /// When another writer holds the lock of the output's directory: wait for it (the
    /// default), or fail at once with `ErrorKind::Busy`. Conversions into one directory
    /// (whatever their output's name) and changes to NumPack stores in it share that lock
    /// (`flock` on the directory; see docs/guarantees.md for the one case where a
    /// `.npkio-lock` file is made): they run one after
    /// the other.
    pub wait_for_lock: bool,
    /// For exports: never replace existing weights. An output file that exists, or (with
    /// `max_shard_size`) an output directory that already holds SafeTensors weights, is an
    /// `ErrorKind::AlreadyExists` error and is left as it is. Decided while holding the
    /// output's lock, so of two such exports to one absent path exactly one succeeds. Off by
    /// default (the output is replaced).
    pub no_clobber: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            chunk_size: DEFAULT_CHUNK_SIZE,
            threads: 0,
            method: CopyMethod::Auto,
            durable: false,
            progress: None,
            max_shard_size: None,
            wait_for_lock: true,
            no_clobber: false,
        }
    }
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("chunk_size", &self.chunk_size)
            .field("threads", &self.threads)
            .field("method", &self.method)
            .field("durable", &self.durable)
            .field("progress", &self.progress.is_some())
            .field("max_shard_size", &self.max_shard_size)
            .field("wait_for_lock", &self.wait_for_lock)
            .field("no_clobber", &self.no_clobber)
            .finish()
    }
}

impl Options {
    /// The defaults with another chunk size.
    pub fn with_chunk_size(chunk_size: usize) -> Options {
        Options {
            chunk_size,
            ..Options::default()
        }
    }

    fn check(&self) -> Result<CopyOptions> {
        if self.chunk_size == 0 {
            return Err(Error::invalid_argument(
                "chunk_size must be at least 1 byte",
            ));
        }
        Ok(CopyOptions {
            chunk_size: self.chunk_size,
            threads: self.threads,
            method: self.method,
        })
    }
}

/// Refuses to write `output` when it is one of `inputs`, lies inside one, or holds one
/// (after resolving links and `..` in the paths), before anything is touched: publishing it
/// would destroy the input it reads. A missing path is left to the conversion to report.
fn refuse_overlap(inputs: &[&Path], output: &Path) -> Result<()> {
    let (parent, _) = crate::publish::split(output)?;
    let (Ok(parent), Some(name)) = (parent.canonicalize(), output.file_name()) else {
        return Ok(());
    };
    let mut outs = vec![parent.join(name)];
    // A link at the output path: what it leads to counts too.
    outs.extend(output.canonicalize().ok());
    for input in inputs {
        let Ok(input) = input.canonicalize() else {
            continue;
        };
        for out in &outs {
            let why = if *out == input {
                "is the input"
            } else if out.starts_with(&input) {
                "is inside the input"
            } else if input.starts_with(out) {
                "holds the input"
            } else {
                continue;
            };
            return Err(Error::invalid_argument(format!(
                "{why} ({}); refusing to write it",
                input.display()
            ))
            .at(output));
        }
    }
    Ok(())
}

/// The arrays `names` of `store` (all, sorted, when `None`), each once, in the order given;
/// an unknown name is an error.
fn select_arrays<'s, S: AsRef<str>>(
    store: &'s NumPack,
    names: Option<&[S]>,
) -> Result<Vec<&'s str>> {
    match names {
        None => Ok(store.names()),
        Some(names) => {
            let mut seen = HashSet::new();
            let mut out = Vec::with_capacity(names.len());
            for n in names {
                let slot = store.array_slot(n.as_ref())?;
                if seen.insert(slot) {
                    out.push(store.slot_name(slot));
                }
            }
            Ok(out)
        }
    }
}
