//! The conversions that write: a SafeTensors file or tensors in the caller's memory to a
//! NumPack directory, and a NumPack directory to a SafeTensors file (single or sharded).
//! Reading NumPack arrays as tensors is `npkio_to_safetensors` in `tensors.rs`; reading
//! a SafeTensors file's description or iterating over its tensors is in `safetensors.rs`.
//!
//! Each takes the streaming knobs as plain arguments: `chunk_size` (bytes copied at once;
//! 0 is `NPKIO_STATUS_INVALID_ARGUMENT`, `NPKIO_DEFAULT_CHUNK_SIZE` is the default),
//! `threads` (copy threads, 0 picks the default) and `flags` (`NPKIO_FLAG_*` bits; unknown
//! bits are `NPKIO_STATUS_INVALID_ARGUMENT`).

use std::ffi::c_char;

use super::args::{desc_input, metadata_arg, path_arg, slice_arg, str_list_arg};
use super::dtype::NpkioTensorDesc;
use super::error::{FfiError, FfiResult, NpkioStatus};
use super::panic::status_boundary;
use crate::convert::{
    from_safetensors_file_with, from_safetensors_with, to_safetensors_file_with, Options,
};

/// The default `chunk_size`: 8 MiB.
pub const NPKIO_DEFAULT_CHUNK_SIZE: usize = 8388608;

/// Flag: sync data, then metadata, then directories before the output appears, so that it
/// survives power loss (slower). Without it, a killed process still leaves the old output
/// or the complete new one, never a half-written one.
pub const NPKIO_FLAG_DURABLE: u32 = 1;

/// Flag: when another conversion or store change holds the lock of the output's directory
/// (npkio locks the directory holding an output while writing it), fail at once with
/// `NPKIO_STATUS_BUSY` instead of waiting for it to finish.
pub const NPKIO_FLAG_NO_WAIT: u32 = 2;

/// Flag for the exports (`npkio_to_safetensors_file`, `npkio_to_safetensors_file_sharded`):
/// fail with `NPKIO_STATUS_ALREADY_EXISTS` instead of replacing an existing output (for a
/// sharded export: a directory that already holds weights). Decided under the output's
/// lock, so of two such exports to one absent path exactly one succeeds. The imports take
/// `drop_if_exists` instead and ignore this flag.
pub const NPKIO_FLAG_NO_CLOBBER: u32 = 4;

const KNOWN_FLAGS: u32 = NPKIO_FLAG_DURABLE | NPKIO_FLAG_NO_WAIT | NPKIO_FLAG_NO_CLOBBER;

fn options(chunk_size: usize, threads: usize, flags: u32) -> FfiResult<Options> {
    if flags & !KNOWN_FLAGS != 0 {
        return Err(FfiError::invalid(format!(
            "unknown flag bits {:#x}",
            flags & !KNOWN_FLAGS
        )));
    }
    Ok(Options {
        chunk_size,
        threads,
        durable: flags & NPKIO_FLAG_DURABLE != 0,
        wait_for_lock: flags & NPKIO_FLAG_NO_WAIT == 0,
        no_clobber: flags & NPKIO_FLAG_NO_CLOBBER != 0,
        ..Options::default()
    })
}

/// Converts the SafeTensors file `input_path` to the NumPack directory `output_path`,
/// streaming in bounded memory.
///
/// `keys == NULL` converts every tensor; otherwise exactly the `keys_count` tensors named
/// (`keys_count == 0` converts none). An unknown key is `NPKIO_STATUS_KEY_NOT_FOUND` and
/// nothing is written. When the output exists and `drop_if_exists` is false, the tensors
/// are merged into it (same names replaced, others kept); with `drop_if_exists` it is
/// replaced whole. Either way the output changes in one atomic step. The file's
/// `__metadata__` is kept beside the arrays, for `npkio_to_safetensors_file`.
///
/// # Safety
///
/// `input_path`, `output_path` NULL or NUL-terminated strings; `keys` NULL or
/// `keys_count` pointers to NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn npkio_from_safetensors_file(
    input_path: *const c_char,
    output_path: *const c_char,
    keys: *const *const c_char,
    keys_count: usize,
    drop_if_exists: bool,
    chunk_size: usize,
    threads: usize,
    flags: u32,
) -> NpkioStatus {
    status_boundary(|| {
        // SAFETY: the caller's contract above, checked for NULL inside.
        let (input, output, keys) = unsafe {
            (
                path_arg(input_path, "input_path")?,
                path_arg(output_path, "output_path")?,
                str_list_arg(keys, keys_count, "keys")?,
            )
        };
        let opts = options(chunk_size, threads, flags)?;
        from_safetensors_file_with(input, output, keys.as_deref(), drop_if_exists, &opts)?;
        Ok(())
    })
}

/// Exports arrays of the NumPack directory `input_path` to the SafeTensors file
/// `output_path`, streaming in bounded memory. Only active rows are exported. The file is
/// written beside `output_path` and renamed into place.
///
/// `array_names == NULL` exports every array (sorted by name); otherwise exactly the
/// `names_count` arrays named, in that order. `metadata_keys == NULL` writes the
/// `__metadata__` the directory carries from its SafeTensors source (none if it has
/// none); otherwise the `metadata_count` pairs `metadata_keys[i]`, `metadata_values[i]`
/// replace it, in that order (`metadata_count == 0` writes an empty one).
///
/// # Safety
///
/// Paths NULL or NUL-terminated strings; each string array NULL or its count of pointers
/// to NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn npkio_to_safetensors_file(
    input_path: *const c_char,
    output_path: *const c_char,
    array_names: *const *const c_char,
    names_count: usize,
    metadata_keys: *const *const c_char,
    metadata_values: *const *const c_char,
    metadata_count: usize,
    chunk_size: usize,
    threads: usize,
    flags: u32,
) -> NpkioStatus {
    // SAFETY: the caller's contract above is the one `export` needs.
    unsafe {
        export(
            input_path,
            output_path,
            (array_names, names_count),
            (metadata_keys, metadata_values, metadata_count),
            None,
            (chunk_size, threads, flags),
        )
    }
}

/// `npkio_to_safetensors_file` writing a sharded checkpoint: shards of at most
/// `max_shard_size` tensor bytes, laid out in the output directory `output_path` as
/// `save_pretrained` does (`model-0000k-of-0000n.safetensors` plus
/// `model.safetensors.index.json`, or a single `model.safetensors` when everything fits
/// in one shard). A tensor larger than `max_shard_size` gets a shard of its own.
/// `max_shard_size == 0` is `NPKIO_STATUS_INVALID_ARGUMENT`. The other arguments are
/// those of `npkio_to_safetensors_file`.
///
/// # Safety
///
/// As `npkio_to_safetensors_file`.
#[no_mangle]
pub unsafe extern "C" fn npkio_to_safetensors_file_sharded(
    input_path: *const c_char,
    output_path: *const c_char,
    array_names: *const *const c_char,
    names_count: usize,
    metadata_keys: *const *const c_char,
    metadata_values: *const *const c_char,
    metadata_count: usize,
    max_shard_size: u64,
    chunk_size: usize,
    threads: usize,
    flags: u32,
) -> NpkioStatus {
    // SAFETY: the caller's contract above is the one `export` needs.
    unsafe {
        export(
            input_path,
            output_path,
            (array_names, names_count),
            (metadata_keys, metadata_values, metadata_count),
            Some(max_shard_size),
            (chunk_size, threads, flags),
        )
    }
}

/// The body of `npkio_to_safetensors_file` and `npkio_to_safetensors_file_sharded`.
///
/// # Safety
///
/// As `npkio_to_safetensors_file`.
unsafe fn export(
    input_path: *const c_char,
    output_path: *const c_char,
    (array_names, names_count): (*const *const c_char, usize),
    (metadata_keys, metadata_values, metadata_count): (
        *const *const c_char,
        *const *const c_char,
        usize,
    ),
    max_shard_size: Option<u64>,
    (chunk_size, threads, flags): (usize, usize, u32),
) -> NpkioStatus {
    status_boundary(|| {
        // SAFETY: the caller's contract, checked for NULL inside.
        let (input, output, names, metadata) = unsafe {
            (
                path_arg(input_path, "input_path")?,
                path_arg(output_path, "output_path")?,
                str_list_arg(array_names, names_count, "array_names")?,
                metadata_arg(metadata_keys, metadata_values, metadata_count)?,
            )
        };
        let opts = Options {
            max_shard_size,
            ..options(chunk_size, threads, flags)?
        };
        to_safetensors_file_with(input, output, names.as_deref(), metadata.as_deref(), &opts)?;
        Ok(())
    })
}

/// Saves `count` tensors held in the caller's memory to the NumPack directory
/// `output_path`, with the merge/replace rules and atomicity of
/// `npkio_from_safetensors_file`. npkio reads the tensors during the call only and keeps
/// no pointer to them.
///
/// # Safety
///
/// `tensors` NULL (only when `count` is 0) or `count` descriptions whose pointers follow
/// `NpkioTensorDesc`'s rules; `output_path` NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn npkio_from_safetensors(
    tensors: *const NpkioTensorDesc,
    count: usize,
    output_path: *const c_char,
    drop_if_exists: bool,
    chunk_size: usize,
    threads: usize,
    flags: u32,
) -> NpkioStatus {
    status_boundary(|| {
        // SAFETY: the caller's contract above, checked for NULL inside.
        let (descs, output) = unsafe {
            (
                slice_arg(tensors, count, "tensors")?,
                path_arg(output_path, "output_path")?,
            )
        };
        let inputs = descs
            .iter()
            .enumerate()
            // SAFETY: each description follows NpkioTensorDesc's rules (the contract).
            .map(|(i, d)| unsafe { desc_input(d, i) })
            .collect::<FfiResult<Vec<_>>>()?;
        let opts = options(chunk_size, threads, flags)?;
        from_safetensors_with(&inputs, output, drop_if_exists, &opts)?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn default_chunk_size_is_the_core_default() {
        assert_eq!(super::NPKIO_DEFAULT_CHUNK_SIZE, crate::DEFAULT_CHUNK_SIZE);
    }
}
