//! `NpkioLoader`: tensors, or slices of them, loaded from a checkpoint into the caller's
//! memory (or through staging buffers to a sink), in parallel, with buffered or `O_DIRECT`
//! reads. The C skin of the Rust core's `load` module.
//!
//! The basic path needs no callback: fill an array of `NpkioLoadRequest` (tensor name,
//! optional slice, optional dtype, destination pointer and capacity) and call
//! `npkio_load_run`. Every request is checked before any byte is written; one message
//! names every invalid request.

use std::ffi::{c_char, c_void};
use std::path::Path;

use super::args::{optional_out, path_arg, slice_arg, str_arg, Out, OutArray};
use super::dtype::{dtype_arg, NpkioTensorView};
use super::error::{FfiError, FfiResult, NpkioStatus};
use super::handle::{c_name, free_handle, handle_ref, into_handle, name_parts, shape_ptr, Handle};
use super::list::{self, TensorList};
use super::options::{self, NpkioProgress, SizedOptions, User};
use super::panic::status_boundary;
use crate::load::{LoadOptions, LoadReport, Loader, Method, Request};

/// `NpkioLoadRequest.slice`: the whole tensor (`dim`, `start`, `end` are ignored).
pub const NPKIO_LOAD_WHOLE: u32 = 0;
/// `NpkioLoadRequest.slice`: indices `[start, end)` of dimension `dim`.
pub const NPKIO_LOAD_RANGE: u32 = 1;
/// `NpkioLoadRequest.slice`: rank `start` of `end` ranks along dimension `dim`. Dimension
/// length `n` is split in rank order; the first `n % end` ranks get `n / end + 1` indices,
/// the others `n / end`.
pub const NPKIO_LOAD_SHARD: u32 = 2;
/// `NpkioLoadRequest.dtype`: deliver the tensor's own dtype, bytes as stored.
pub const NPKIO_LOAD_AS_STORED: u32 = 4294967295;

/// `NpkioLoadOptions.method`: per chunk, buffered reads when its pages are in the page
/// cache, `O_DIRECT` when they are not.
pub const NPKIO_LOAD_AUTO: u32 = 0;
/// `NpkioLoadOptions.method`: buffered `pread` only.
pub const NPKIO_LOAD_BUFFERED: u32 = 1;
/// `NpkioLoadOptions.method`: `O_DIRECT` wherever the filesystem accepts it.
pub const NPKIO_LOAD_DIRECT: u32 = 2;

/// An open checkpoint to load from (opaque): a SafeTensors file, a sharded checkpoint or a
/// NumPack directory. Made by `npkio_load_open`, freed by `npkio_load_free`.
#[derive(Debug)]
pub struct NpkioLoader {
    loader: Loader,
    names: Vec<Box<[u8]>>,
}

impl Handle for NpkioLoader {
    const ARG: &'static str = "loader";
}

impl TensorList for NpkioLoader {
    fn len(&self) -> usize {
        self.names.len()
    }

    fn path(&self) -> &Path {
        self.loader.path()
    }

    fn view(&self, i: usize) -> FfiResult<NpkioTensorView> {
        let t = &self.loader.tensors()[i];
        let (name, name_len) = name_parts(&self.names[i]);
        Ok(NpkioTensorView {
            name,
            name_len,
            dtype: t.dtype.into(),
            ndim: t.shape.len(),
            shape: shape_ptr(&t.shape),
            data: std::ptr::null(),
            nbytes: t.nbytes as usize,
        })
    }

    fn position(&self, name: &str) -> FfiResult<usize> {
        self.loader
            .position(name)
            .ok_or_else(|| self.loader.not_found(name).into())
    }
}

/// One thing to load.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NpkioLoadRequest {
    /// The tensor's name, NUL-terminated UTF-8.
    pub name: *const c_char,
    /// `NPKIO_LOAD_WHOLE`, `NPKIO_LOAD_RANGE` or `NPKIO_LOAD_SHARD`.
    pub slice: u32,
    /// The sliced dimension (0 is the outermost).
    pub dim: u32,
    /// Range: first index. Shard: this rank.
    pub start: u64,
    /// Range: one past the last index. Shard: the number of ranks.
    pub end: u64,
    /// `NPKIO_LOAD_AS_STORED`, or an `NpkioDtype` number to convert to (BF16/F16 to F32,
    /// F32 to BF16/F16, BF16 to F16 and back, rounding to nearest even; other pairs are
    /// refused with `NPKIO_STATUS_UNSUPPORTED`).
    pub dtype: u32,
    /// Where the output goes (the sliced tensor in C order); ignored by `npkio_load_run_sink`.
    pub dst: *mut c_void,
    /// Bytes writable at `dst`; at least the output's size (`npkio_load_output_size`).
    pub capacity: usize,
}

/// `NpkioProgress` under the name it had first; kept for existing callers.
pub type NpkioLoadProgress = NpkioProgress;

/// Receives `len` bytes of request `request`'s output, starting at byte `offset` of it.
/// Called from npkio's worker threads, possibly at the same time from several, in any
/// order; `data` is only valid during the call (the staging buffer is reused afterwards).
/// Return 0 to go on; any other value stops the load with `NPKIO_STATUS_IO`.
pub type NpkioLoadSink = Option<
    unsafe extern "C" fn(
        user: *mut c_void,
        request: usize,
        offset: u64,
        data: *const u8,
        len: usize,
    ) -> i32,
>;

/// How to load. Fill with `npkio_load_options_init(&options, sizeof options)`, then change
/// what you need.
///
/// Later versions of npkio add fields at the end only. `struct_size` says how many bytes of
/// the struct the caller's header declared: a library reads no further, and gives the
/// defaults to fields a caller's struct does not have.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NpkioLoadOptions {
    /// `sizeof(NpkioLoadOptions)` as the caller's header declares it, or less when the
    /// library is older than the header (set by `npkio_load_options_init`).
    pub struct_size: usize,
    /// Worker threads; 0 lets npkio choose (2, or 4 when reading with `O_DIRECT`).
    pub threads: u32,
    /// `NPKIO_LOAD_AUTO`, `NPKIO_LOAD_BUFFERED` or `NPKIO_LOAD_DIRECT`.
    pub method: u32,
    /// Drop what was read from the page cache afterwards (`POSIX_FADV_DONTNEED`).
    pub drop_behind: bool,
    /// Largest chunk read at once, in bytes (at least 4096); 0 means 8 MiB.
    pub chunk_size: usize,
    /// Optional progress callback (NULL for none).
    pub progress: NpkioProgress,
    /// Passed to `progress` as is.
    pub progress_user: *mut c_void,
    /// Checkpoints in object storage: the largest ranged GET, in bytes (at least 4096); 0
    /// means 8 MiB.
    pub range_size: usize,
    /// Checkpoints in object storage: ranged GETs in flight; 0 means 16.
    pub concurrency: u32,
}

/// What a load did.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct NpkioLoadReport {
    /// Bytes delivered to the destinations or the sink.
    pub bytes_out: u64,
    /// Bytes read from the files (more than delivered when strided slices read the gaps
    /// between rows).
    pub bytes_read: u64,
    /// Of those, bytes read with `O_DIRECT`.
    pub direct_bytes: u64,
    /// Chunks the load was cut into.
    pub tasks: usize,
    /// Worker threads used.
    pub threads: usize,
    /// `O_DIRECT` was wanted but the filesystem refused it (or, without `/proc`, the
    /// file could not be opened again and proven to be the file validated); those chunks
    /// were read buffered.
    pub direct_refused: bool,
}

impl From<LoadReport> for NpkioLoadReport {
    fn from(r: LoadReport) -> Self {
        NpkioLoadReport {
            bytes_out: r.bytes_out,
            bytes_read: r.bytes_read,
            direct_bytes: r.direct_bytes,
            tasks: r.tasks,
            threads: r.threads,
            direct_refused: r.direct_refused,
        }
    }
}

// SAFETY: `#[repr(C)]`, `struct_size: usize` first; integers, a `bool`, a pointer and
// optional function pointers.
unsafe impl SizedOptions for NpkioLoadOptions {
    const NAME: &'static str = "NpkioLoadOptions";
    const INIT: &'static str = "npkio_load_options_init";

    fn defaults() -> Self {
        NpkioLoadOptions {
            struct_size: std::mem::size_of::<NpkioLoadOptions>(),
            threads: 0,
            method: NPKIO_LOAD_AUTO,
            drop_behind: false,
            chunk_size: crate::copy::DEFAULT_CHUNK_SIZE,
            progress: None,
            progress_user: std::ptr::null_mut(),
            range_size: crate::load::DEFAULT_RANGE_SIZE,
            concurrency: 0,
        }
    }

    fn set_struct_size(&mut self, n: usize) {
        self.struct_size = n;
    }
}

fn load_options(o: NpkioLoadOptions) -> FfiResult<LoadOptions> {
    let method = match o.method {
        NPKIO_LOAD_AUTO => Method::Auto,
        NPKIO_LOAD_BUFFERED => Method::Buffered,
        NPKIO_LOAD_DIRECT => Method::Direct,
        n => {
            return Err(FfiError::invalid(format!(
                "options.method {n} is not an NPKIO_LOAD_ method"
            )))
        }
    };
    let progress = options::progress(o.progress, o.progress_user);
    Ok(LoadOptions {
        threads: o.threads as usize,
        method,
        drop_behind: o.drop_behind,
        chunk_size: if o.chunk_size == 0 {
            crate::copy::DEFAULT_CHUNK_SIZE
        } else {
            o.chunk_size
        },
        progress,
        range_size: if o.range_size == 0 {
            crate::load::DEFAULT_RANGE_SIZE
        } else {
            o.range_size
        },
        concurrency: o.concurrency as usize,
    })
}

/// The requests as the core takes them; every malformed field is named.
///
/// # Safety
///
/// Each request's `name` must be NULL or a NUL-terminated string living for the call.
unsafe fn requests(reqs: &[NpkioLoadRequest]) -> FfiResult<Vec<Request>> {
    let mut out = Vec::with_capacity(reqs.len());
    let mut bad = Vec::new();
    for (i, r) in reqs.iter().enumerate() {
        // SAFETY: the caller's contract above.
        let name = unsafe { str_arg(r.name, &format!("requests[{i}].name")) }?;
        let mut q = Request::new(name);
        match r.slice {
            NPKIO_LOAD_WHOLE => {}
            NPKIO_LOAD_RANGE => q = q.slice(r.dim as usize, r.start, r.end),
            NPKIO_LOAD_SHARD => q = q.shard(r.dim as usize, r.start, r.end),
            n => bad.push(format!(
                "request {i} ({name:?}): slice {n} is not an NPKIO_LOAD_ slice kind"
            )),
        }
        if r.dtype != NPKIO_LOAD_AS_STORED {
            match dtype_arg(r.dtype) {
                Ok(d) => q = q.to(d),
                Err(e) => bad.push(format!("request {i} ({name:?}): dtype {}", e.message)),
            }
        }
        out.push(q);
    }
    if !bad.is_empty() {
        return Err(FfiError::invalid(bad.join("; ")));
    }
    Ok(out)
}

/// Opens a checkpoint for loading: a SafeTensors file, a sharded checkpoint (its
/// `*.safetensors.index.json` or the directory holding it) or a NumPack directory. Reads
/// headers and metadata only; the data files stay open until the handle is freed.
///
/// `path` may also be a URL of object storage (`s3://bucket/key`, `gs://`, `az://`,
/// `http(s)://`) naming a SafeTensors object, an index or a prefix holding one, with
/// credentials and endpoint from the environment (`AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT_URL`, `AWS_ALLOW_HTTP=true` for
/// plain HTTP); loads then use ranged GETs (`range_size`, `concurrency` in
/// `NpkioLoadOptions`). A library built without the `remote` feature answers
/// `NPKIO_STATUS_INVALID_ARGUMENT`.
///
/// On success `*out` receives a new handle, which the caller owns and frees with
/// `npkio_load_free`. The handle may be used by several threads at once.
///
/// # Safety
///
/// `path` must be NULL or a NUL-terminated string; `out` must be NULL or point to writable
/// storage for one pointer.
#[no_mangle]
pub unsafe extern "C" fn npkio_load_open(
    path: *const c_char,
    out: *mut *mut NpkioLoader,
) -> NpkioStatus {
    status_boundary(|| {
        // SAFETY: the caller's contract above, checked for NULL inside.
        let (path, out) = unsafe { (path_arg(path, "path")?, Out::new(out, "out")?) };
        let loader = Loader::open(path)?;
        let names = loader.tensors().iter().map(|t| c_name(&t.name)).collect();
        out.set(into_handle(NpkioLoader { loader, names }));
        Ok(())
    })
}

/// Frees a handle from `npkio_load_open` and closes its files. Views taken from it become
/// invalid. NULL is a no-op.
///
/// # Safety
///
/// `loader` must be NULL or a handle from `npkio_load_open` that was not freed yet; it must
/// not be used afterwards.
#[no_mangle]
pub unsafe extern "C" fn npkio_load_free(loader: *mut NpkioLoader) {
    // SAFETY: the caller's contract above.
    unsafe { free_handle(loader) }
}

/// Writes the number of tensors to `*count`.
///
/// # Safety
///
/// `loader` must be NULL or a live handle; `count` must be NULL or point to a writable
/// `size_t`.
#[no_mangle]
pub unsafe extern "C" fn npkio_load_count(
    loader: *const NpkioLoader,
    count: *mut usize,
) -> NpkioStatus {
    // SAFETY: the caller's contract above.
    unsafe { list::count(loader, count, TensorList::len) }
}

/// Describes the `index`-th tensor (checkpoint order) in `*view`: name, dtype, shape and
/// `nbytes`; `data` is NULL (a loader hands out no mapped bytes). The pointers stay valid
/// until the handle is freed. `NPKIO_STATUS_INDEX_OUT_OF_RANGE` past the last tensor.
///
/// # Safety
///
/// `loader` must be NULL or a live handle; `view` must be NULL or point to a writable
/// `NpkioTensorView`.
#[no_mangle]
pub unsafe extern "C" fn npkio_load_get(
    loader: *const NpkioLoader,
    index: usize,
    view: *mut NpkioTensorView,
) -> NpkioStatus {
    // SAFETY: the caller's contract above.
    unsafe { list::get(loader, index, view) }
}

/// The same as `npkio_load_get`, under the name it had first; kept for existing callers.
///
/// # Safety
///
/// As `npkio_load_get`.
#[no_mangle]
pub unsafe extern "C" fn npkio_load_tensor(
    loader: *const NpkioLoader,
    index: usize,
    view: *mut NpkioTensorView,
) -> NpkioStatus {
    // SAFETY: the caller's contract above.
    unsafe { list::get(loader, index, view) }
}

/// Describes the tensor called `name` (exact, case-sensitive UTF-8) in `*view`, as
/// `npkio_load_get` does, and writes its position to `*index` when `index` is not NULL:
/// the position `npkio_load_tensor_file_offset` takes. `NPKIO_STATUS_KEY_NOT_FOUND` when
/// there is none.
///
/// # Safety
///
/// `loader` must be NULL or a live handle; `name` NULL or a NUL-terminated string; `view`
/// NULL or writable; `index` NULL or a writable `size_t`.
#[no_mangle]
pub unsafe extern "C" fn npkio_load_find(
    loader: *const NpkioLoader,
    name: *const c_char,
    view: *mut NpkioTensorView,
    index: *mut usize,
) -> NpkioStatus {
    // SAFETY: the caller's contract above.
    unsafe { list::find(loader, name, view, index) }
}

/// Writes to `*offset` where the `index`-th tensor's bytes start in their file, when they
/// are one run of one file (always for SafeTensors; for NumPack, arrays without segments or
/// dropped rows); otherwise fails with `NPKIO_STATUS_UNSUPPORTED`. An empty tensor also
/// fails so.
///
/// A destination whose address sits like this offset within a 4096-byte block
/// (`addr % 4096 == offset % 4096`) is read with `O_DIRECT` in place, without a bounce copy:
/// lay an arena out like the file (each tensor at `arena + offset`) to get that for all.
///
/// # Safety
///
/// `loader` must be NULL or a live handle; `offset` must be NULL or point to a writable
/// `uint64_t`.
#[no_mangle]
pub unsafe extern "C" fn npkio_load_tensor_file_offset(
    loader: *const NpkioLoader,
    index: usize,
    offset: *mut u64,
) -> NpkioStatus {
    status_boundary(|| {
        // SAFETY: the caller's contract above.
        let (l, out) = unsafe { (handle_ref(loader, "loader")?, Out::new(offset, "offset")?) };
        let t = &l.loader.tensors()[l.check_index(index)?];
        let off = t.file_offset().ok_or_else(|| {
            FfiError::new(
                NpkioStatus::Unsupported,
                format!(
                    "tensor {:?} is not one run of one file (segmented, rows dropped, or empty)",
                    t.name
                ),
            )
        })?;
        out.set(off);
        Ok(())
    })
}

/// Fills the `size` bytes at `options` (pass `sizeof options`) with the defaults: threads 0
/// (npkio chooses), `NPKIO_LOAD_AUTO`, no drop-behind, 8 MiB chunks, no progress callback,
/// 8 MiB ranges and 16 in flight for object storage; `struct_size` becomes the bytes it
/// knows of (`size`, or its own size when `size` is larger: a header newer than the
/// library). A `size` below the first version's struct is `NPKIO_STATUS_INVALID_ARGUMENT`,
/// and nothing is written.
///
/// # Safety
///
/// `options` must be NULL or point to `size` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn npkio_load_options_init(
    options: *mut NpkioLoadOptions,
    size: usize,
) -> NpkioStatus {
    // SAFETY: the caller's contract above.
    status_boundary(|| unsafe { options::init(options, size) })
}

/// Writes to `*nbytes` the size of what `request` delivers (its `dst` and `capacity` are
/// ignored), or fails as `npkio_load_run` would for it.
///
/// # Safety
///
/// `loader` must be NULL or a live handle; `request` must be NULL or point to a request
/// whose `name` is NULL or a NUL-terminated string; `nbytes` must be NULL or point to a
/// writable `size_t`.
#[no_mangle]
pub unsafe extern "C" fn npkio_load_output_size(
    loader: *const NpkioLoader,
    request: *const NpkioLoadRequest,
    nbytes: *mut usize,
) -> NpkioStatus {
    status_boundary(|| {
        // SAFETY: the caller's contract above.
        let (l, req, out) = unsafe {
            (
                handle_ref(loader, "loader")?,
                slice_arg(request, 1, "request")?,
                Out::new(nbytes, "nbytes")?,
            )
        };
        // SAFETY: forwarded contract.
        let r = unsafe { requests(req) }?.remove(0);
        let n = l.loader.output(&r)?.nbytes;
        out.set(usize::try_from(n).map_err(|_| FfiError::invalid("output too large"))?);
        Ok(())
    })
}

/// Writes the shape of what `request` delivers (the tensor's shape with the sliced
/// dimension cut to the range or to this rank's part) to `shape[0..ndim]`, and its number
/// of dimensions to `*ndim` (its `dst` and `capacity` are ignored). `*ndim` is written
/// always when the request is valid; the shape only when `capacity` holds it, else
/// `NPKIO_STATUS_BUFFER_TOO_SMALL` (a tensor's `ndim` from `npkio_load_tensor` is always
/// enough). Fails as `npkio_load_run` would for an invalid request.
///
/// # Safety
///
/// `loader` must be NULL or a live handle; `request` must be NULL or point to a request
/// whose `name` is NULL or a NUL-terminated string; `shape` must be NULL or point to
/// `capacity` writable `uint64_t`s; `ndim` must be NULL or point to a writable `size_t`.
#[no_mangle]
pub unsafe extern "C" fn npkio_load_output_shape(
    loader: *const NpkioLoader,
    request: *const NpkioLoadRequest,
    shape: *mut u64,
    capacity: usize,
    ndim: *mut usize,
) -> NpkioStatus {
    status_boundary(|| {
        // SAFETY: the caller's contract above.
        let (l, req, ndim) = unsafe {
            (
                handle_ref(loader, "loader")?,
                slice_arg(request, 1, "request")?,
                Out::new(ndim, "ndim")?,
            )
        };
        // SAFETY: forwarded contract.
        let r = unsafe { requests(req) }?.remove(0);
        let dims = l.loader.output(&r)?.shape;
        ndim.set(dims.len());
        if capacity < dims.len() {
            return Err(FfiError::new(
                NpkioStatus::BufferTooSmall,
                format!(
                    "the shape has {} dimensions; the buffer holds {capacity}",
                    dims.len()
                ),
            ));
        }
        if dims.is_empty() {
            return Ok(());
        }
        // SAFETY: `shape` points to `capacity >= dims.len()` writable u64s (the caller's
        // contract).
        unsafe { OutArray::new(shape, dims.len(), "shape") }?.set(&dims);
        Ok(())
    })
}

/// Loads `count` requests, each into its own `dst`, with worker threads reading the files
/// in parallel. `options` may be NULL (defaults); `report` may be NULL.
///
/// Every request is checked first: an unknown tensor, a slice out of range, an invalid
/// shard, a capacity below the output's size, a NULL `dst` for a non-empty output, or two
/// destinations that overlap give `NPKIO_STATUS_INVALID_ARGUMENT` (an unsupported dtype
/// conversion `NPKIO_STATUS_UNSUPPORTED`) with a message naming every bad request by index
/// and tensor, and no destination byte is written. Bytes past each output's size are never
/// written. A file that fails or turns out shorter during the load gives an error naming
/// it, the byte range and the request; when several workers fail, the first failure in
/// file order is reported and the message counts the others. Destinations may then hold
/// part of their output.
///
/// # Safety
///
/// `loader` must be NULL or a live handle; `requests` must be NULL or point to `count`
/// requests whose names are NULL or NUL-terminated strings and whose `dst` point to
/// `capacity` writable bytes that nothing else touches until the call returns; `options`
/// must be NULL or point to options filled by `npkio_load_options_init` (at least
/// `struct_size` readable bytes); `report` must be NULL or valid.
#[no_mangle]
pub unsafe extern "C" fn npkio_load_run(
    loader: *const NpkioLoader,
    requests: *const NpkioLoadRequest,
    count: usize,
    options: *const NpkioLoadOptions,
    report: *mut NpkioLoadReport,
) -> NpkioStatus {
    status_boundary(|| {
        // SAFETY: the caller's contract above.
        let (l, raw, report) = unsafe {
            (
                handle_ref(loader, "loader")?,
                slice_arg(requests, count, "requests")?,
                optional_out(report, "report")?,
            )
        };
        // SAFETY: as above.
        let opts = load_options(unsafe { options::read(options) }?)?;
        // SAFETY: as above.
        let reqs = unsafe { self::requests(raw) }?;
        let dsts: Vec<crate::load::RawDst> = raw
            .iter()
            .map(|r| crate::load::RawDst {
                ptr: r.dst.cast(),
                cap: r.capacity,
            })
            .collect();
        // SAFETY: the caller lends each `dst` for `capacity` bytes (contract above); the
        // core checks NULL and overlaps before writing.
        let rep = unsafe { l.loader.load_raw(&reqs, &dsts, &opts) }?;
        if let Some(out) = report {
            out.set(rep.into());
        }
        Ok(())
    })
}

/// Loads `count` requests through staging buffers: npkio reads each chunk into a buffer
/// and calls `sink(sink_user, request, offset, data, len)`; the buffer is reused when the
/// call returns. The requests' `dst` and `capacity` are ignored.
///
/// Staging: with `buffers` NULL (and `buffer_count` 0), npkio allocates one buffer of
/// `staging_size` bytes (at least 4096) per worker thread. Otherwise `buffers` holds
/// `buffer_count` caller buffers of at least `staging_size` bytes each (pinned memory, for
/// example): at most `buffer_count` workers run, each using one buffer, and every `data`
/// handed to the sink points into one of them. Chunks are at most `staging_size` bytes, so
/// memory stays bounded by `staging_size` × threads, whatever the checkpoint's size (plus
/// one read buffer of that size per worker for converted or strided requests and
/// `O_DIRECT` reads).
///
/// Requests are checked as by `npkio_load_run` (without the destination checks) before
/// the sink is first called.
///
/// # Safety
///
/// As `npkio_load_run` for `loader`, `requests`, `options` and `report`; `buffers` must be
/// NULL or point to `buffer_count` pointers to `staging_size` writable bytes each, which
/// nothing else touches until the call returns; `sink` must be safe to call from several
/// threads at once with `sink_user`.
#[no_mangle]
pub unsafe extern "C" fn npkio_load_run_sink(
    loader: *const NpkioLoader,
    requests: *const NpkioLoadRequest,
    count: usize,
    options: *const NpkioLoadOptions,
    staging_size: usize,
    buffers: *const *mut u8,
    buffer_count: usize,
    sink: NpkioLoadSink,
    sink_user: *mut c_void,
    report: *mut NpkioLoadReport,
) -> NpkioStatus {
    status_boundary(|| {
        // SAFETY: the caller's contract above.
        let (l, raw, bufs, report) = unsafe {
            (
                handle_ref(loader, "loader")?,
                slice_arg(requests, count, "requests")?,
                slice_arg(buffers, buffer_count, "buffers")?,
                optional_out(report, "report")?,
            )
        };
        let sink = sink.ok_or_else(|| FfiError::null("sink"))?;
        // SAFETY: as above.
        let opts = load_options(unsafe { options::read(options) }?)?;
        // SAFETY: as above.
        let reqs = unsafe { self::requests(raw) }?;
        let mut staging = Vec::with_capacity(bufs.len());
        for (i, &b) in bufs.iter().enumerate() {
            if b.is_null() {
                return Err(FfiError::null(&format!("buffers[{i}]")));
            }
            staging.push(crate::load::RawDst {
                ptr: b,
                cap: staging_size,
            });
        }
        let user = User(sink_user);
        let f = move |req: usize, off: u64, data: &[u8]| -> Result<(), String> {
            let u = user;
            // SAFETY: the caller's callback with its pointer; `data` is valid for `len`
            // bytes during the call.
            let rc = unsafe { sink(u.0, req, off, data.as_ptr(), data.len()) };
            if rc == 0 {
                Ok(())
            } else {
                Err(format!("the sink returned {rc}"))
            }
        };
        // SAFETY: the caller lends the buffers (contract above).
        let rep = unsafe {
            l.loader
                .load_to_sink_raw(&reqs, staging_size, staging, &f, &opts)
        }?;
        if let Some(out) = report {
            out.set(rep.into());
        }
        Ok(())
    })
}
