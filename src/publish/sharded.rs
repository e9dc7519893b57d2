//! Publishing a sharded checkpoint into a directory, laid out as `save_pretrained` lays it out:
//! shards `model-0000k-of-0000n.safetensors` and the index `model.safetensors.index.json`, or a
//! single `model.safetensors`.
//!
//! A directory that does not exist is built whole in a [`Staging`] directory and renamed into
//! place. An existing directory (which may hold config files) is updated in place, in an order
//! that never leaves an index pointing at a shard that is not its own: every shard and the new
//! index are written to temporary files first (so that a full disk fails with the old
//! checkpoint intact), then the old index is removed, each shard renamed in, the index last,
//! and the weights of an earlier checkpoint that the new one does not use removed.

use std::fs::{self, File};
use std::io::Write;
use std::path::Path;

use tempfile::{NamedTempFile, TempPath};

use super::{lock_output, publish_file, remove_leftovers_inside, Staging};
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::safetensors::index::INDEX_NAME;
use crate::sys::fsutil;

/// A sharded checkpoint to write into a directory.
pub(crate) struct ShardedOutput<'a> {
    /// The directory that receives it.
    pub(crate) dir: &'a Path,
    /// The shards' file names, in order.
    pub(crate) files: &'a [String],
    /// The index's text; `None` writes no index (a single `model.safetensors`).
    pub(crate) index: Option<&'a str>,
    /// Wait for another conversion into `dir` (else fail with `ErrorKind::Busy`).
    pub(crate) wait_for_lock: bool,
    /// Sync data and directories before the checkpoint appears.
    pub(crate) durable: bool,
}

impl ShardedOutput<'_> {
    /// Writes the checkpoint: `prepare(k, file)` sizes shard `k` and writes its header, just
    /// after the shard's temporary file is created; `fill(first, files)` then copies every
    /// tensor into the shards, a batch of consecutive shards at a time (`files` are shards
    /// `first..first + files.len()` of [`ShardedOutput::files`]). The checkpoint is published
    /// only when both succeed.
    ///
    /// Only a batch of shards is open at a time (half the open-file budget, see `fdlimit`;
    /// the other half is for the sources), so that any number of shards can be written
    /// under a low open-file limit.
    pub(crate) fn write(
        &self,
        mut prepare: impl FnMut(usize, &File) -> Result<()>,
        mut fill: impl FnMut(usize, &[&File]) -> Result<()>,
    ) -> Result<()> {
        let output = self.dir;
        if fs::symlink_metadata(output).is_ok_and(|m| !m.is_dir()) {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                "exists and is not a directory; a sharded checkpoint is written into a directory",
            )
            .at(output));
        }
        let _lock = lock_output(output, self.wait_for_lock)?;
        let build = if fs::symlink_metadata(output).is_err() {
            Build::Fresh(Staging::new(output, INDEX_NAME)?)
        } else {
            // Temporary shards of a conversion killed while writing into this directory.
            remove_leftovers_inside(output);
            Build::Existing(output)
        };
        // Each shard's temporary file is closed once its header is written (the path stays,
        // removed on drop), and opened again for its batch and for publishing.
        let mut tmps: Vec<TempPath> = Vec::with_capacity(self.files.len());
        for (k, f) in self.files.iter().enumerate() {
            let tmp = build.temp_file(&format!(".{f}.npkio-tmp-"))?;
            prepare(k, tmp.as_file())?;
            tmps.push(tmp.into_temp_path());
        }
        let batch = (crate::sys::fdlimit::open_file_budget() / 2).max(1);
        for (b, paths) in tmps.chunks(batch).enumerate() {
            let files: Vec<File> = paths.iter().map(reopen).collect::<Result<_>>()?;
            fill(b * batch, &files.iter().collect::<Vec<_>>())?;
        }
        // The new index is written before anything visible changes, so that a full disk fails
        // here with the old checkpoint intact.
        let index_tmp = match self.index {
            Some(text) => {
                let mut t = build.temp_file(".npkio-tmp-")?;
                t.write_all(text.as_bytes())
                    .ctx(output.join(INDEX_NAME), "writing")?;
                Some(t)
            }
            None => None,
        };
        // The weight files the directory's current index names: the earlier checkpoint's
        // shards, whatever their names, removed below when the new one does not use them.
        let previous = match &build {
            Build::Existing(dir) => indexed_files(dir),
            Build::Fresh(_) => Vec::new(),
        };
        if let Build::Existing(dir) = &build {
            // No index may point at shards that are being replaced.
            let index_path = dir.join(INDEX_NAME);
            if let Some(t) = &index_tmp {
                // The new index keeps the old one's mode and group.
                crate::sys::fsutil::keep_file_mode(t.as_file(), &index_path)
                    .ctx(t.path(), "setting the permissions of")?;
            }
            match fs::remove_file(&index_path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(&index_path, "removing the old index", e)),
            }
        }
        for (tmp, f) in tmps.into_iter().zip(self.files) {
            let file = reopen(&tmp)?;
            build.publish_file(NamedTempFile::from_parts(file, tmp), f, self.durable)?;
        }
        if let Some(t) = index_tmp {
            build.publish_file(t, INDEX_NAME, self.durable)?;
        }
        match build {
            Build::Existing(dir) => {
                remove_stale_weights(dir, self.files, &previous, self.index.is_some())
            }
            Build::Fresh(staging) => staging.publish(self.durable)?,
        }
        Ok(())
    }
}

/// Opens a shard's temporary file again, for writing.
fn reopen(path: &TempPath) -> Result<File> {
    File::options()
        .read(true)
        .write(true)
        .open(path)
        .ctx(path, "opening again")
}

/// Where the checkpoint is built: a staging directory that becomes the output, or the
/// existing output directory itself.
enum Build<'a> {
    Fresh(Staging),
    Existing(&'a Path),
}

impl Build<'_> {
    /// A new temporary file `<prefix>XXXXXX` where the checkpoint is built.
    fn temp_file(&self, prefix: &str) -> Result<NamedTempFile> {
        match self {
            Build::Fresh(staging) => staging.temp_file(prefix),
            Build::Existing(dir) => fsutil::temp_file_in(dir, prefix),
        }
    }

    /// Renames the complete `tmp` onto the file `name` where the checkpoint is built.
    fn publish_file(&self, tmp: NamedTempFile, name: &str, durable: bool) -> Result<()> {
        match self {
            Build::Fresh(staging) => staging.publish_file(tmp, name, durable),
            Build::Existing(dir) => publish_file(tmp, &dir.join(name), durable),
        }
    }
}

/// The file names the index in `dir` maps tensors to, when there is a readable index: only
/// plain names of `*.safetensors` files in `dir` itself (an index naming `config.json` or
/// `../x` does not make them weights).
fn indexed_files(dir: &Path) -> Vec<String> {
    let Ok(Some(opened)) = crate::sys::safe_open::open_inside_if_present(dir, INDEX_NAME, "index")
    else {
        return Vec::new();
    };
    let Ok(bytes) = crate::sys::safe_open::read_to_vec(opened, 256 << 20, "index") else {
        return Vec::new();
    };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return Vec::new();
    };
    let Some(map) = v.get("weight_map").and_then(|m| m.as_object()) else {
        return Vec::new();
    };
    let mut names: Vec<String> = map
        .values()
        .filter_map(|f| f.as_str())
        .filter(|f| {
            f.ends_with(".safetensors")
                && crate::sys::paths::checked_relative(f)
                    .is_ok_and(|p| p.components().count() == 1 && p.as_os_str() == *f)
        })
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Whether `name` is a shard name exactly as `save_pretrained` writes it:
/// `model-NNNNN-of-NNNNN.safetensors`, five digits each.
pub(crate) fn is_shard_name(name: &str) -> bool {
    let Some(rest) = name
        .strip_prefix("model-")
        .and_then(|r| r.strip_suffix(".safetensors"))
    else {
        return false;
    };
    let b = rest.as_bytes();
    b.len() == 14
        && b[..5].iter().all(u8::is_ascii_digit)
        && &b[5..9] == b"-of-"
        && b[9..].iter().all(u8::is_ascii_digit)
}

/// After writing a checkpoint into an existing directory, removes the weight files of an
/// earlier checkpoint that the new one does not use (as `save_pretrained` does): the files
/// the earlier index named (`previous`), shards named exactly
/// `model-NNNNN-of-NNNNN.safetensors`, `model.safetensors`, and the index when none was
/// written. Only regular files are removed: never a directory, a symbolic link (nor what it
/// points at) or anything else, and no other name.
fn remove_stale_weights(dir: &Path, keep: &[String], previous: &[String], wrote_index: bool) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Some(name) = e.file_name().to_str().map(str::to_string) else {
            continue;
        };
        let weights = is_shard_name(&name)
            || name == "model.safetensors"
            || previous.binary_search(&name).is_ok();
        let stale = weights && !keep.contains(&name) || (name == INDEX_NAME && !wrote_index);
        // `DirEntry::file_type` does not follow links: a link is not a regular file here.
        if stale && e.file_type().is_ok_and(|t| t.is_file()) {
            let _ = fs::remove_file(e.path());
        }
    }
}
