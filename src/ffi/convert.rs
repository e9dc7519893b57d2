//! The conversions that write: a SafeTensors file or tensors in the caller's memory to a
//! NumPack directory, and a NumPack directory to a SafeTensors file (single or sharded).
//! Reading NumPack arrays as tensors is `npkio_to_safetensors` in `tensors.rs`; reading
//! a SafeTensors file's description or iterating over its tensors is in `safetensors.rs`.
//!
//! Each comes in two forms with the API's parameters in the API's order. The first takes
//! the streaming knobs as plain arguments: `chunk_size` (bytes copied at once; 0 is
//! `NPKIO_STATUS_INVALID_ARGUMENT`, `NPKIO_DEFAULT_CHUNK_SIZE` is the default), `threads`
//! (copy threads, 0 picks the default) and `flags` (`NPKIO_FLAG_*` bits; unknown bits are
//! `NPKIO_STATUS_INVALID_ARGUMENT`). The `_with` form, as in Rust, takes them and the rest
//! (copy method, sharding, a progress callback) in an `NpkioConvertOptions`.
use std::ffi::{c_char, c_void};

use super::args::{desc_input, metadata_arg, path_arg, slice_arg, str_list_arg};
use super::dtype::NpkioTensorDesc;
use super::error::{FfiError, FfiResult, NpkioStatus};
use super::options::{self, NpkioProgress, SizedOptions};
use super::panic::status_boundary;
use crate::convert::{
    from_safetensors_file_with, from_safetensors_with, to_safetensors_file_with, Options,
};
use crate::copy::CopyMethod;

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

/// `NpkioConvertOptions.method`: the fastest method measured (`pread` into a page-aligned
/// buffer, then `pwrite`).
pub const NPKIO_COPY_AUTO: u32 = 0;
/// `NpkioConvertOptions.method`: `pread` into a page-aligned buffer, then `pwrite`.
pub const NPKIO_COPY_READ_WRITE: u32 = 1;
/// `NpkioConvertOptions.method`: Linux `copy_file_range` (may share blocks on filesystems
/// that can), `pread`/`pwrite` where it is refused.
pub const NPKIO_COPY_COPY_FILE_RANGE: u32 = 2;
/// `NpkioConvertOptions.method`: map a window of the destination and `pread` into it.
pub const NPKIO_COPY_MMAP: u32 = 3;
/// `NpkioConvertOptions.method`: map a window of the source and `pwrite` from it.
pub const NPKIO_COPY_MMAP_SOURCE: u32 = 4;

/// How to convert, for the `_with` conversions. Fill with
/// `npkio_convert_options_init(&options, sizeof options)`, then change what you need.
///
/// Later versions of npkio add fields at the end only. `struct_size` says how many bytes of
/// the struct the caller's header declared: a library reads no further, and gives the
/// defaults to fields a caller's struct does not have.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NpkioConvertOptions {
    /// `sizeof(NpkioConvertOptions)` as the caller's header declares it, or less when the
    /// library is older than the header (set by `npkio_convert_options_init`).
    pub struct_size: usize,
    /// Largest piece copied at once, in bytes; 0 means `NPKIO_DEFAULT_CHUNK_SIZE`.
    pub chunk_size: usize,
    /// Copy threads; 0 lets npkio choose.
    pub threads: u32,
    /// `NPKIO_FLAG_*` bits; unknown bits are `NPKIO_STATUS_INVALID_ARGUMENT`.
    pub flags: u32,
    /// An `NPKIO_COPY_*` method.
    pub method: u32,
    /// Exports: write a sharded checkpoint of shards of at most this many tensor bytes into
    /// the output directory, as `npkio_to_safetensors_file_sharded` does; 0 writes one file.
    pub max_shard_size: u64,
    /// Optional progress callback (NULL for none): tensor bytes copied so far, and to copy
    /// in all.
    pub progress: NpkioProgress,
    /// Passed to `progress` as is.
    pub progress_user: *mut c_void,
}

// SAFETY: `#[repr(C)]`, `struct_size: usize` first; integers, a pointer and an optional
// function pointer.
unsafe impl SizedOptions for NpkioConvertOptions {
    const NAME: &'static str = "NpkioConvertOptions";
    const INIT: &'static str = "npkio_convert_options_init";

    fn defaults() -> Self {
        NpkioConvertOptions {
            struct_size: std::mem::size_of::<NpkioConvertOptions>(),
            chunk_size: NPKIO_DEFAULT_CHUNK_SIZE,
            threads: 0,
            flags: 0,
            method: NPKIO_COPY_AUTO,
            max_shard_size: 0,
            progress: None,
            progress_user: std::ptr::null_mut(),
        }
    }

    fn set_struct_size(&mut self, n: usize) {
        self.struct_size = n;
    }
}

/// The core's options from the plain arguments of the first form.
fn options(chunk_size: usize, threads: usize, flags: u32) -> FfiResult<Options> {
    let mut o = Options::with_chunk_size(chunk_size);
    o.threads = threads;
    set_flags(&mut o, flags)?;
    Ok(o)
}

fn set_flags(o: &mut Options, flags: u32) -> FfiResult<()> {
    if flags & !KNOWN_FLAGS != 0 {
        return Err(FfiError::invalid(format!(
            "unknown flag bits {:#x}",
            flags & !KNOWN_FLAGS
        )));
    }
    o.durable = flags & NPKIO_FLAG_DURABLE != 0;
    o.wait_for_lock = flags & NPKIO_FLAG_NO_WAIT == 0;
    o.no_clobber = flags & NPKIO_FLAG_NO_CLOBBER != 0;
    Ok(())
}

/// The core's options from an `NpkioConvertOptions` (NULL: the defaults).
///
/// # Safety
///
/// As `options::read`.
unsafe fn convert_options(options: *const NpkioConvertOptions) -> FfiResult<Options> {
    // SAFETY: the caller's contract.
    let c = unsafe { options::read(options) }?;
    let method = match c.method {
        NPKIO_COPY_AUTO => CopyMethod::Auto,
        NPKIO_COPY_READ_WRITE => CopyMethod::ReadWrite,
        NPKIO_COPY_COPY_FILE_RANGE => CopyMethod::CopyFileRange,
        NPKIO_COPY_MMAP => CopyMethod::Mmap,
        NPKIO_COPY_MMAP_SOURCE => CopyMethod::MmapSource,
        n => {
            return Err(FfiError::invalid(format!(
                "options.method {n} is not an NPKIO_COPY_ method"
            )))
        }
    };
    let mut o = Options::with_chunk_size(match c.chunk_size {
        0 => NPKIO_DEFAULT_CHUNK_SIZE,
        n => n,
    });
    o.threads = c.threads as usize;
    o.method = method;
    o.max_shard_size = (c.max_shard_size != 0).then_some(c.max_shard_size);
    o.progress = options::progress(c.progress, c.progress_user);
    set_flags(&mut o, c.flags)?;
    Ok(o)
}

/// Fills the `size` bytes at `options` (pass `sizeof options`) with the defaults: 8 MiB
/// chunks, threads 0 (npkio chooses), no flags, `NPKIO_COPY_AUTO`, one output file, no
/// progress callback; `struct_size` becomes the bytes it knows of (`size`, or its own size
/// when `size` is larger: a header newer than the library). A `size` below the first
/// version's struct is `NPKIO_STATUS_INVALID_ARGUMENT`, and nothing is written.
///
/// # Safety
///
/// `options` must be NULL or point to `size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn npkio_convert_options_init(
    options: *mut NpkioConvertOptions,
    size: usize,
) -> NpkioStatus {
    // SAFETY: the caller's contract above.
    status_boundary(|| unsafe { options::init(options, size) })
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
    // SAFETY: the caller's contract above is the one `import_file` needs.
    unsafe {
        import_file(
            (input_path, output_path),
            (keys, keys_count),
            drop_if_exists,
            || options(chunk_size, threads, flags),
        )
    }
}

/// `npkio_from_safetensors_file` with its knobs in `options` (NULL: the defaults of
/// `npkio_convert_options_init`); `options.max_shard_size` is for exports and ignored here.
///
/// # Safety
///
/// As `npkio_from_safetensors_file`; `options` NULL or an `NpkioConvertOptions` filled by
/// `npkio_convert_options_init`.
#[no_mangle]
pub unsafe extern "C" fn npkio_from_safetensors_file_with(
    input_path: *const c_char,
    output_path: *const c_char,
    keys: *const *const c_char,
    keys_count: usize,
    drop_if_exists: bool,
    options: *const NpkioConvertOptions,
) -> NpkioStatus {
    // SAFETY: the caller's contract above is the one `import_file` needs.
    unsafe {
        import_file(
            (input_path, output_path),
            (keys, keys_count),
            drop_if_exists,
            || convert_options(options),
        )
    }
}

/// The body of `npkio_from_safetensors_file` and `npkio_from_safetensors_file_with`.
///
/// # Safety
///
/// As `npkio_from_safetensors_file`, and whatever `opts` needs.
unsafe fn import_file(
    (input_path, output_path): (*const c_char, *const c_char),
    (keys, keys_count): (*const *const c_char, usize),
    drop_if_exists: bool,
    opts: impl FnOnce() -> FfiResult<Options>,
) -> NpkioStatus {
    status_boundary(|| {
        // SAFETY: the caller's contract, checked for NULL inside.
        let (input, output, keys) = unsafe {
            (
                path_arg(input_path, "input_path")?,
                path_arg(output_path, "output_path")?,
                str_list_arg(keys, keys_count, "keys")?,
            )
        };
        from_safetensors_file_with(input, output, keys.as_deref(), drop_if_exists, &opts()?)?;
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
            (input_path, output_path),
            (array_names, names_count),
            (metadata_keys, metadata_values, metadata_count),
            || options(chunk_size, threads, flags),
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
            (input_path, output_path),
            (array_names, names_count),
            (metadata_keys, metadata_values, metadata_count),
            || {
                let mut o = options(chunk_size, threads, flags)?;
                o.max_shard_size = Some(max_shard_size);
                Ok(o)
            },
        )
    }
}

/// `npkio_to_safetensors_file` with its knobs in `options` (NULL: the defaults of
/// `npkio_convert_options_init`). With `options.max_shard_size` above 0 it writes a
/// sharded checkpoint into the directory `output_path`, as
/// `npkio_to_safetensors_file_sharded` does.
///
/// # Safety
///
/// As `npkio_to_safetensors_file`; `options` NULL or an `NpkioConvertOptions` filled by
/// `npkio_convert_options_init`.
#[no_mangle]
pub unsafe extern "C" fn npkio_to_safetensors_file_with(
    input_path: *const c_char,
    output_path: *const c_char,
    array_names: *const *const c_char,
    names_count: usize,
    metadata_keys: *const *const c_char,
    metadata_values: *const *const c_char,
    metadata_count: usize,
    options: *const NpkioConvertOptions,
) -> NpkioStatus {
    // SAFETY: the caller's contract above is the one `export` needs.
    unsafe {
        export(
            (input_path, output_path),
            (array_names, names_count),
            (metadata_keys, metadata_values, metadata_count),
            || convert_options(options),
        )
    }
}

/// The body of `npkio_to_safetensors_file`, `_sharded` and `_with`.
///
/// # Safety
///
/// As `npkio_to_safetensors_file`, and whatever `opts` needs.
unsafe fn export(
    (input_path, output_path): (*const c_char, *const c_char),
    (array_names, names_count): (*const *const c_char, usize),
    (metadata_keys, metadata_values, metadata_count): (
        *const *const c_char,
        *const *const c_char,
        usize,
    ),
    opts: impl FnOnce() -> FfiResult<Options>,
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
        let opts = opts()?;
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
    // SAFETY: the caller's contract above is the one `import_memory` needs.
    unsafe {
        import_memory((tensors, count), output_path, drop_if_exists, || {
            options(chunk_size, threads, flags)
        })
    }
}

/// `npkio_from_safetensors` with its knobs in `options` (NULL: the defaults of
/// `npkio_convert_options_init`); `options.max_shard_size` is for exports and ignored here.
///
/// # Safety
///
/// As `npkio_from_safetensors`; `options` NULL or an `NpkioConvertOptions` filled by
/// `npkio_convert_options_init`.
#[no_mangle]
pub unsafe extern "C" fn npkio_from_safetensors_with(
    tensors: *const NpkioTensorDesc,
    count: usize,
    output_path: *const c_char,
    drop_if_exists: bool,
    options: *const NpkioConvertOptions,
) -> NpkioStatus {
    // SAFETY: the caller's contract above is the one `import_memory` needs.
    unsafe {
        import_memory((tensors, count), output_path, drop_if_exists, || {
            convert_options(options)
        })
    }
}

/// The body of `npkio_from_safetensors` and `npkio_from_safetensors_with`.
///
/// # Safety
///
/// As `npkio_from_safetensors`, and whatever `opts` needs.
unsafe fn import_memory(
    (tensors, count): (*const NpkioTensorDesc, usize),
    output_path: *const c_char,
    drop_if_exists: bool,
    opts: impl FnOnce() -> FfiResult<Options>,
) -> NpkioStatus {
    status_boundary(|| {
        // SAFETY: the caller's contract, checked for NULL inside.
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
        from_safetensors_with(&inputs, output, drop_if_exists, &opts()?)?;
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
