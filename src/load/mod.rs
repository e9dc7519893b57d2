//! The loader: tensors, or slices of them, copied from a checkpoint into the caller's own
//! memory (or handed to a sink), as fast as the storage gives them.
//!
//! A [`Loader`] opens a checkpoint of any kind npkio reads: a single SafeTensors file, a
//! sharded one (its `*.safetensors.index.json` or the directory holding it), or a NumPack
//! directory (plain, segmented or with dropped rows). The caller asks for a list of
//! [`Request`]s: a tensor by name, optionally a [`Slice`] along one dimension (a
//! `[start, end)` range, or [`Slice::Shard`] for tensor parallelism), optionally a dtype
//! to convert to on the way (BF16/F16 to F32, F32 to BF16/F16, BF16 to F16 and back,
//! rounding to nearest even).
//! Each request's output is the sliced tensor in C order; [`Loader::output`] gives its
//! dtype, shape and byte length.
//!
//! Every request is checked before any byte is read or written: unknown tensors,
//! out-of-range slices, unsupported conversions, destinations too small and destinations
//! that overlap are reported together in one error naming each bad request, and no
//! destination byte changes.
//!
//! # How the bytes travel
//!
//! The plan is cut into byte runs of the files (a slice along dimension 0 is one run; a
//! slice along an inner dimension is strided, see [`STRIDE_ROW_READ`] and
//! [`STRIDE_MAX_GAP`]), neighbouring runs are merged (a vectored `preadv` scatters them into
//! their destinations), and long runs are split into chunks of at most
//! [`LoadOptions::chunk_size`] bytes cut on page boundaries, each computed when a worker
//! takes it (the plan's memory grows with the requests, not with their bytes). Worker
//! threads take chunks in file order and read them with `pread`:
//!
//! - buffered, straight into the destination, when the pages are in the page cache;
//! - with `O_DIRECT` through a block-aligned buffer per worker when they are not (the
//!   unaligned head and tail of a chunk, and a file whose size is not a multiple of the
//!   block, are handled by reading whole blocks and copying the bytes wanted).
//!
//! [`Method::Auto`] asks the kernel which pages are resident (`mincore` on a mapping that is
//! never read through) and picks per chunk; [`Method::Buffered`] and [`Method::Direct`]
//! force one. On a filesystem that refuses `O_DIRECT` (tmpfs), reads fall back to buffered
//! and [`LoadReport::direct_refused`] says so. [`LoadOptions::drop_behind`] drops what was
//! read from the page cache afterwards.
//!
//! Source bytes only ever arrive through `pread`, so a file truncated during a load gives
//! an error, never `SIGBUS`.
//!
//! # Shards
//!
//! [`Slice::Shard`] `{ dim, rank, world }` splits dimension `dim` of length `n` into `world`
//! contiguous parts in rank order: the first `n % world` ranks get `n / world + 1` indices,
//! the others `n / world` (see [`shard_range`]). Parts may be empty when `n < world`.
//!
//! ```
//! # fn main() -> npkio::Result<()> {
//! # let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tiny-llama.safetensors");
//! use npkio::load::{LoadOptions, Loader, Request};
//!
//! let loader = Loader::open(&model)?;
//! let reqs = [
//!     Request::new("lm_head.weight").shard(0, 1, 2),           // rank 1 of 2, rows
//!     Request::new("lm_head.weight").slice(1, 0, 16).to(npkio::DType::F32),
//! ];
//! let mut a = vec![0u8; loader.output(&reqs[0])?.nbytes as usize];
//! let mut b = vec![0u8; loader.output(&reqs[1])?.nbytes as usize];
//! let report = loader.load(&reqs, &mut [&mut a[..], &mut b[..]], &LoadOptions::default())?;
//! assert_eq!(report.bytes_out, (a.len() + b.len()) as u64);
//! # Ok(())
//! # }
//! ```

mod convert;
mod dst;
mod io;
mod plan;
#[cfg(feature = "remote")]
mod remote;
mod resolve;
mod run;
mod source;

use std::path::{Path, PathBuf};

pub use convert::{f16_to_f32, f32_to_bf16, f32_to_f16};
pub use plan::{REMOTE_ROW_READ, STRIDE_MAX_GAP, STRIDE_ROW_READ};
pub use resolve::shard_range;
pub use source::{Container, LoadTensor};

use crate::dtype::DType;
use crate::error::{Error, ErrorKind, IoContext, Result};
pub use crate::remote::RemoteOptions;
pub(crate) use dst::RawDst;
use plan::{Limits, Resolved};
use run::Target;

/// A part of one dimension of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Slice {
    /// Indices `[start, end)` of dimension `dim`.
    Range {
        /// The dimension (0 is the outermost).
        dim: usize,
        /// First index.
        start: u64,
        /// One past the last index.
        end: u64,
    },
    /// The part of dimension `dim` that `rank` gets when it is split among `world` ranks
    /// (see [`shard_range`] for the rule).
    Shard {
        /// The dimension (0 is the outermost).
        dim: usize,
        /// This rank, `0..world`.
        rank: u64,
        /// How many ranks.
        world: u64,
    },
}

/// What to load: a tensor, optionally sliced, optionally converted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The tensor's exact name.
    pub name: String,
    /// A part of one dimension, or the whole tensor.
    pub slice: Option<Slice>,
    /// The dtype to deliver; `None` (or the tensor's own dtype) copies the bytes as stored.
    pub dtype: Option<DType>,
}

impl Request {
    /// The whole tensor `name`, as stored.
    pub fn new(name: impl Into<String>) -> Request {
        Request {
            name: name.into(),
            slice: None,
            dtype: None,
        }
    }

    /// Only indices `[start, end)` of dimension `dim`.
    pub fn slice(mut self, dim: usize, start: u64, end: u64) -> Request {
        self.slice = Some(Slice::Range { dim, start, end });
        self
    }

    /// Only `rank`'s part of dimension `dim` split among `world` ranks.
    pub fn shard(mut self, dim: usize, rank: u64, world: u64) -> Request {
        self.slice = Some(Slice::Shard { dim, rank, world });
        self
    }

    /// Deliver elements converted to `dtype`.
    pub fn to(mut self, dtype: DType) -> Request {
        self.dtype = Some(dtype);
        self
    }
}

/// What a request delivers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Output {
    /// The delivered dtype.
    pub dtype: DType,
    /// The sliced shape.
    pub shape: Vec<u64>,
    /// Byte length: what the destination must hold at least.
    pub nbytes: u64,
}

/// How chunks are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Method {
    /// Per chunk: buffered when at least half its pages are in the page cache, `O_DIRECT`
    /// otherwise (chunks under 256 KiB are always buffered).
    #[default]
    Auto,
    /// Buffered `pread` only.
    Buffered,
    /// `O_DIRECT` wherever the filesystem accepts it (buffered elsewhere).
    Direct,
}

/// Progress callback: `(bytes delivered so far, bytes to deliver)`, called after each
/// chunk, one call at a time, from the worker threads. The same type as the conversions'
/// [`crate::Progress`].
pub use crate::progress::Progress;

/// A sink: `(request index, byte offset in the request's output, bytes)`. Called from the
/// worker threads, possibly concurrently and in any order; the bytes are only valid during
/// the call (the staging buffer is reused afterwards). An `Err` stops the load.
pub type SinkFn<'a> = dyn Fn(usize, u64, &[u8]) -> std::result::Result<(), String> + Sync + 'a;

/// Options of a load: [`LoadOptions::default`], then the builder methods named after the
/// fields (`LoadOptions::default().threads(2).chunk_size(1 << 20)`), so that options can be
/// added without breaking callers.
#[derive(Clone)]
#[non_exhaustive]
pub struct LoadOptions {
    /// Worker threads; 0 lets npkio choose (`copy::default_threads()`, or 4 when some chunk
    /// is read with `O_DIRECT`).
    pub threads: usize,
    /// Buffered, `O_DIRECT`, or chosen per chunk.
    pub method: Method,
    /// Drop what was read from the page cache afterwards (`POSIX_FADV_DONTNEED`).
    pub drop_behind: bool,
    /// Largest chunk a worker reads at once, in bytes (default 8 MiB); at least 4096.
    pub chunk_size: usize,
    /// Called after each chunk.
    pub progress: Option<Progress>,
    /// Checkpoints in object storage: the largest ranged GET, in bytes (default 8 MiB; at
    /// least 4096). Replaces [`LoadOptions::chunk_size`] there.
    pub range_size: usize,
    /// Checkpoints in object storage: ranged GETs in flight (worker threads); 0 means the
    /// default, 16. Replaces [`LoadOptions::threads`] there.
    pub concurrency: usize,
}

/// Default [`LoadOptions::range_size`].
pub const DEFAULT_RANGE_SIZE: usize = 8 << 20;
/// Default [`LoadOptions::concurrency`].
pub const DEFAULT_CONCURRENCY: usize = 16;

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            threads: 0,
            method: Method::Auto,
            drop_behind: false,
            chunk_size: crate::copy::DEFAULT_CHUNK_SIZE,
            progress: None,
            range_size: DEFAULT_RANGE_SIZE,
            concurrency: 0,
        }
    }
}

impl LoadOptions {
    /// With [`LoadOptions::threads`] set.
    pub fn threads(mut self, threads: usize) -> Self {
        self.threads = threads;
        self
    }

    /// With [`LoadOptions::method`] set.
    pub fn method(mut self, method: Method) -> Self {
        self.method = method;
        self
    }

    /// With [`LoadOptions::drop_behind`] set.
    pub fn drop_behind(mut self, drop_behind: bool) -> Self {
        self.drop_behind = drop_behind;
        self
    }

    /// With [`LoadOptions::chunk_size`] set.
    pub fn chunk_size(mut self, chunk_size: usize) -> Self {
        self.chunk_size = chunk_size;
        self
    }

    /// With [`LoadOptions::progress`] set.
    pub fn progress(mut self, progress: Option<Progress>) -> Self {
        self.progress = progress;
        self
    }

    /// With [`LoadOptions::range_size`] set.
    pub fn range_size(mut self, range_size: usize) -> Self {
        self.range_size = range_size;
        self
    }

    /// With [`LoadOptions::concurrency`] set.
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// [`LoadOptions::concurrency`], or its default for 0.
    pub(crate) fn concurrency_or_default(&self) -> usize {
        match self.concurrency {
            0 => DEFAULT_CONCURRENCY,
            n => n,
        }
    }
}

impl std::fmt::Debug for LoadOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadOptions")
            .field("threads", &self.threads)
            .field("method", &self.method)
            .field("drop_behind", &self.drop_behind)
            .field("chunk_size", &self.chunk_size)
            .field("progress", &self.progress.is_some())
            .field("range_size", &self.range_size)
            .field("concurrency", &self.concurrency)
            .finish()
    }
}

/// Staging buffers for a sink load.
#[derive(Debug)]
#[non_exhaustive]
pub enum Staging<'a> {
    /// npkio allocates one buffer of this many bytes per worker (at least 4096).
    Size(usize),
    /// The caller's buffers (pinned memory, say): one per worker, so at most this many
    /// workers run; chunks are at most the smallest buffer's length.
    Buffers(Vec<&'a mut [u8]>),
}

/// What a load did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// Bytes delivered to the destinations or the sink.
    pub bytes_out: u64,
    /// Bytes read from the files (more than delivered when strided slices read the gaps
    /// between rows; `O_DIRECT` block rounding not counted).
    pub bytes_read: u64,
    /// Of those, bytes read with `O_DIRECT`.
    pub direct_bytes: u64,
    /// Chunks the plan was cut into.
    pub tasks: usize,
    /// Worker threads used.
    pub threads: usize,
    /// `O_DIRECT` was wanted but the filesystem refused it (or, without `/proc`, the
    /// file could not be opened again and proven to be the file validated); those chunks
    /// were read buffered.
    pub direct_refused: bool,
}

/// An open checkpoint to load tensors from. Cheap to share between threads: loads take
/// `&self`.
#[derive(Debug)]
pub struct Loader {
    path: PathBuf,
    opened: source::Opened,
}

impl std::fmt::Debug for source::Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened")
            .field("container", &self.container)
            .field("files", &self.files.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl Loader {
    /// Opens a SafeTensors file, a sharded checkpoint (index file or its directory) or a
    /// NumPack directory. Reads headers and metadata only. Keeps a checkpoint's shards or a
    /// NumPack directory's data files open when they fit in half the open-file budget (more
    /// are opened by each load, a window at a time, and checked to be the files validated).
    ///
    /// A path that is a URL of object storage (`s3://`, `gs://`, `az://`, `http(s)://`, see
    /// [`crate::remote`]) opens the object or prefix it names, configured from the
    /// environment: [`Loader::open_url`].
    pub fn open(path: impl AsRef<Path>) -> Result<Loader> {
        let path = path.as_ref();
        if let Some(url) = path.to_str().filter(|s| crate::remote::is_url(s)) {
            return Loader::open_url(url, &RemoteOptions::default());
        }
        Ok(Loader {
            path: path.to_path_buf(),
            opened: source::open(path)?,
        })
    }

    /// Opens a checkpoint in object storage: a SafeTensors object (`.../model.safetensors`),
    /// a sharded checkpoint's index (`.../model.safetensors.index.json`), or a prefix
    /// holding one of them or a NumPack store's files. Costs at most two GETs per file
    /// (a first ranged GET usually holds the whole header) and, for a prefix, one LIST.
    /// `opts` adds configuration to the environment's. Without the `remote` feature, an
    /// `InvalidArgument` error.
    pub fn open_url(url: &str, opts: &RemoteOptions) -> Result<Loader> {
        #[cfg(feature = "remote")]
        {
            Ok(Loader {
                path: PathBuf::from(url),
                opened: remote::open(url, opts)?,
            })
        }
        #[cfg(not(feature = "remote"))]
        {
            let _ = opts;
            Err(crate::remote::not_built(url))
        }
    }

    /// Whether the checkpoint is in object storage.
    pub fn is_remote(&self) -> bool {
        self.opened.files.iter().any(|f| f.remote.is_some())
    }

    /// The path given to [`Loader::open`] (or the URL).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What kind of checkpoint this is.
    pub fn container(&self) -> Container {
        self.opened.container
    }

    /// A SafeTensors checkpoint's `__metadata__` (a sharded one's first shard's); `None`
    /// when it has none, and for NumPack.
    pub fn metadata(&self) -> Option<&[(String, String)]> {
        self.opened.metadata.as_deref()
    }

    /// Where each file's bytes are read from, in file order: a path, or the URL of an
    /// object in object storage.
    pub fn files(&self) -> impl ExactSizeIterator<Item = &Path> {
        self.opened.files.iter().map(|f| f.path.as_path())
    }

    /// The file (index into [`Loader::files`]) holding `tensor`'s first byte, and where;
    /// `None` for a tensor without bytes.
    pub fn location(&self, tensor: &LoadTensor) -> Option<(usize, u64)> {
        tensor.pieces.first().map(|p| (p.file, p.offset))
    }

    /// For a SafeTensors checkpoint, where file `file`'s data section starts (the header's
    /// `data_offsets` count from there); 0 for NumPack.
    pub fn data_start(&self, file: usize) -> Option<u64> {
        self.opened.files.get(file).map(|f| f.data_start)
    }

    /// Every tensor, in the checkpoint's order.
    pub fn tensors(&self) -> &[LoadTensor] {
        &self.opened.tensors
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&LoadTensor> {
        self.position(name).map(|i| &self.opened.tensors[i])
    }

    /// Where the tensor called `name` is in [`Loader::tensors`].
    pub(crate) fn position(&self, name: &str) -> Option<usize> {
        self.opened.by_name.get(name).copied()
    }

    /// The error for a name no tensor of the checkpoint has, naming it and some that exist.
    pub(crate) fn not_found(&self, name: &str) -> Error {
        let names: Vec<&str> = self.tensors().iter().map(|t| &*t.name).collect();
        crate::names::not_found("tensor", name, &names, self.path())
    }

    /// What `req` delivers, or why it is invalid.
    pub fn output(&self, req: &Request) -> Result<Output> {
        let r = plan::resolve_all(self, std::slice::from_ref(req))?.remove(0);
        Ok(Output {
            dtype: r.dtype,
            shape: r.shape,
            nbytes: r.nbytes,
        })
    }

    /// Loads every request into its destination (`dsts[i]` for `reqs[i]`, at least
    /// [`Output::nbytes`] long; bytes past the output are left alone).
    pub fn load(
        &self,
        reqs: &[Request],
        dsts: &mut [&mut [u8]],
        opts: &LoadOptions,
    ) -> Result<LoadReport> {
        let raw: Vec<RawDst> = dsts
            .iter_mut()
            .map(|d| RawDst {
                ptr: d.as_mut_ptr(),
                cap: d.len(),
            })
            .collect();
        // SAFETY: each destination is an exclusive borrow for the whole call, so writable
        // for its length and not aliased.
        unsafe { self.load_raw(reqs, &raw, opts) }
    }

    /// [`Loader::load`] with raw destinations (the C ABI's path).
    ///
    /// # Safety
    ///
    /// Each `dsts[i].ptr` must be valid for writes of `dsts[i].cap` bytes for the whole call
    /// (NULL is allowed when `cap` is 0) and not be accessed by anyone else meanwhile.
    pub(crate) unsafe fn load_raw(
        &self,
        reqs: &[Request],
        dsts: &[RawDst],
        opts: &LoadOptions,
    ) -> Result<LoadReport> {
        check_options(opts)?;
        if dsts.len() != reqs.len() {
            return Err(Error::invalid_argument(format!(
                "{} requests but {} destinations",
                reqs.len(),
                dsts.len()
            ))
            .at(&self.path));
        }
        let res = self.validate(reqs, Some(dsts))?;
        let lim = Limits {
            chunk: self.chunk_size(opts),
            out: u64::MAX,
            merge_requests: true,
            remote: self.is_remote(),
        };
        let plan = plan::plan(self, &res, lim)?;
        self.check_files(reqs, &plan)?;
        run::run(
            self,
            reqs,
            &plan,
            &Target::Memory(dsts),
            opts,
            0,
            total_out(&res),
        )
    }

    /// Loads every request through staging buffers handed to `sink`, in chunks of at most
    /// the staging size; memory stays bounded by the staging size times the threads
    /// (plus, for converted or strided requests and `O_DIRECT` reads, a read buffer of the
    /// same size per worker).
    pub fn load_to_sink(
        &self,
        reqs: &[Request],
        staging: Staging<'_>,
        sink: &SinkFn<'_>,
        opts: &LoadOptions,
    ) -> Result<LoadReport> {
        check_options(opts)?;
        let (size, buffers) = match staging {
            Staging::Size(n) => (n, Vec::new()),
            Staging::Buffers(b) => {
                if b.is_empty() {
                    return Err(Error::invalid_argument("no staging buffers given").at(&self.path));
                }
                let n = b.iter().map(|b| b.len()).min().unwrap_or(0);
                let raw = b
                    .into_iter()
                    .map(|b| RawDst {
                        ptr: b.as_mut_ptr(),
                        cap: b.len(),
                    })
                    .collect();
                (n, raw)
            }
        };
        // SAFETY: the buffers are exclusive borrows for the whole call.
        unsafe { self.load_to_sink_raw(reqs, size, buffers, sink, opts) }
    }

    /// [`Loader::load_to_sink`] with raw staging buffers (empty: npkio allocates `size`
    /// bytes per worker).
    ///
    /// # Safety
    ///
    /// Each buffer must be valid for writes of its `cap` bytes for the whole call and not be
    /// accessed by anyone else meanwhile (the sink may read the bytes it is handed).
    pub(crate) unsafe fn load_to_sink_raw(
        &self,
        reqs: &[Request],
        size: usize,
        buffers: Vec<RawDst>,
        sink: &SinkFn<'_>,
        opts: &LoadOptions,
    ) -> Result<LoadReport> {
        check_options(opts)?;
        if size < 4096 {
            return Err(Error::invalid_argument(format!(
                "staging buffers of {size} bytes are too small (at least 4096)"
            ))
            .at(&self.path));
        }
        let res = self.validate(reqs, None)?;
        let lim = Limits {
            chunk: self.chunk_size(opts).min(size as u64),
            out: size as u64,
            merge_requests: false,
            remote: self.is_remote(),
        };
        let plan = plan::plan(self, &res, lim)?;
        self.check_files(reqs, &plan)?;
        let target = Target::Sink { sink, buffers };
        run::run(self, reqs, &plan, &target, opts, size, total_out(&res))
    }

    /// The largest read: [`LoadOptions::range_size`] in object storage,
    /// [`LoadOptions::chunk_size`] elsewhere.
    fn chunk_size(&self, opts: &LoadOptions) -> u64 {
        if self.is_remote() {
            opts.range_size as u64
        } else {
            opts.chunk_size as u64
        }
    }

    /// Resolves every request and checks the destinations; one error for all problems.
    fn validate(&self, reqs: &[Request], dsts: Option<&[RawDst]>) -> Result<Vec<Resolved>> {
        let mut bad: Vec<(usize, Error)> = Vec::new();
        let mut res = Vec::with_capacity(reqs.len());
        for (i, r) in reqs.iter().enumerate() {
            match plan::resolve(self, r) {
                Ok(x) => {
                    if let Some(d) = dsts.map(|d| d[i]) {
                        if (d.cap as u64) < x.nbytes {
                            bad.push((
                                i,
                                Error::invalid_argument(format!(
                                    "destination holds {} bytes, the output needs {} ({} {:?})",
                                    d.cap, x.nbytes, x.dtype, x.shape
                                )),
                            ));
                        } else if d.ptr.is_null() && x.nbytes > 0 {
                            bad.push((i, Error::invalid_argument("destination is NULL")));
                        }
                    }
                    res.push(x);
                }
                Err(e) => {
                    bad.push((i, e));
                    res.push(placeholder());
                }
            }
        }
        if let Some(dsts) = dsts {
            // Overlapping destinations: the bytes each request writes, sorted by address.
            let mut spans: Vec<(usize, usize, usize)> = res
                .iter()
                .enumerate()
                .filter(|(i, r)| r.nbytes > 0 && !dsts[*i].ptr.is_null())
                .map(|(i, r)| {
                    let a = dsts[i].ptr as usize;
                    let len = usize::try_from(r.nbytes).unwrap_or(usize::MAX);
                    (a, a.saturating_add(len.min(dsts[i].cap)), i)
                })
                .collect();
            spans.sort();
            for w in spans.windows(2) {
                if w[1].0 < w[0].1 {
                    bad.push((
                        w[1].2,
                        Error::invalid_argument(format!(
                            "destination overlaps request {}'s destination",
                            w[0].2
                        )),
                    ));
                }
            }
        }
        if bad.is_empty() {
            Ok(res)
        } else {
            bad.sort_by_key(|b| b.0);
            Err(plan::request_errors(self, reqs, bad))
        }
    }

    /// Every byte the plan reads must be inside its file now (a file shortened since the
    /// checkpoint was opened is refused before anything is written).
    fn check_files(&self, reqs: &[Request], plan: &plan::Plan) -> Result<()> {
        let mut need = vec![0u64; self.opened.files.len()];
        let mut who = vec![0usize; self.opened.files.len()];
        for u in &plan.units {
            if u.hi > need[u.file] {
                need[u.file] = u.hi;
                who[u.file] = plan.first_req(u);
            }
        }
        for (i, f) in self.opened.files.iter().enumerate() {
            if need[i] == 0 {
                continue;
            }
            if let Some(r) = &f.remote {
                // Read by ranged GETs of the object as it was opened (its ETag checked).
                if r.size() < need[i] {
                    return Err(Error::new(
                        ErrorKind::Malformed,
                        format!(
                            "the object is {} bytes, but request {} needs bytes up to {}",
                            r.size(),
                            who[i],
                            need[i]
                        ),
                    )
                    .at(&f.path)
                    .array(reqs[who[i]].name.clone()));
                }
                continue;
            }
            // A shard opened by each load: opening checks that it is the file validated
            // (same inode, same length), which holds every byte the plan reads.
            let Some(file) = &f.file else {
                f.open_now()?;
                continue;
            };
            let len = file.metadata().ctx(&f.path, "inspecting")?.len();
            if len < need[i] {
                return Err(Error::new(
                    ErrorKind::Malformed,
                    format!(
                        "the file is {len} bytes, but request {} needs bytes up to {} \
                         (truncated since it was opened?)",
                        who[i], need[i]
                    ),
                )
                .at(&f.path)
                .array(reqs[who[i]].name.clone()));
            }
        }
        Ok(())
    }
}

/// The bytes the requests deliver together (saturating: only reported).
fn total_out(res: &[Resolved]) -> u64 {
    res.iter().fold(0u64, |a, r| a.saturating_add(r.nbytes))
}

fn placeholder() -> Resolved {
    Resolved {
        tensor: 0,
        dim: 0,
        start: 0,
        end: 0,
        conv: convert::Conversion::None,
        dtype: DType::U8,
        shape: Vec::new(),
        nbytes: 0,
    }
}

fn check_options(opts: &LoadOptions) -> Result<()> {
    if opts.range_size < 4096 {
        return Err(Error::invalid_argument(format!(
            "range size {} is too small (at least 4096)",
            opts.range_size
        )));
    }
    if opts.chunk_size < 4096 {
        return Err(Error::invalid_argument(format!(
            "chunk size {} is too small (at least 4096)",
            opts.chunk_size
        )));
    }
    Ok(())
}
