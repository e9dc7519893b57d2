//! The filesystem layer, below everything else in the crate: what npkio asks of the
//! operating system, written once.
//!
//! - [`io`]: positioned reads that fill their buffer, the page size, `openat`;
//! - [`paths`]: relative paths read from files, checked to stay inside their directory;
//! - [`safe_open`]: opening the files of a directory npkio reads without leaving it, never
//!   following a link out, never blocking on a FIFO;
//! - [`fsutil`]: atomic replacement of a small file, temporary files with ordinary
//!   permissions, `fsync` of a directory, preallocation, kept modes;
//! - [`fdlimit`]: how many files an operation may keep open, from `RLIMIT_NOFILE`.
//!
//! Nothing here knows a file format: the NumPack store, the SafeTensors reader, the copy
//! engine, the loader and the publishing of outputs all build on it.

pub(crate) mod fdlimit;
pub(crate) mod fsutil;
pub(crate) mod io;
pub(crate) mod paths;
pub(crate) mod safe_open;
