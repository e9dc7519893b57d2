//! One error type for the whole crate.
//!
//! Every error says what went wrong and where: the file or directory, and the array or
//! tensor when there is one. [`ErrorKind`] classifies errors for the C ABI, the command
//! line's exit codes and Python's exception types.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// The error kinds: one row a kind, its doc and its stable number. Expands to
/// `$then! { rows }`: `define_error_kind!` below makes [`ErrorKind`] of it, and the C ABI
/// (`crate::ffi::error`) maps each kind to the C status of the same name and number, so a
/// kind added here fails to compile until the C status enum has it.
macro_rules! error_kinds {
    ($then:ident) => {
        $then! {
            /// An operating-system I/O error (permission denied, disk full, ...).
            Io = 1,
            /// A file or directory that should exist does not.
            NotFound = 2,
            /// The output exists and the operation was asked not to touch it.
            AlreadyExists = 3,
            /// The input is not a valid file of its format (corrupt, truncated or hostile).
            Malformed = 4,
            /// A tensor or array name that is not in the container.
            KeyNotFound = 5,
            /// Valid input that npkio or the target format cannot represent (e.g. complex128
            /// in SafeTensors, a compressed NumPack array).
            Unsupported = 6,
            /// A bad argument from the caller (chunk size 0, shape and data disagreeing, ...).
            InvalidArgument = 7,
            /// Another process holds the output's lock, or was writing the sharded checkpoint
            /// being opened (it changed while being opened: open it again).
            Busy = 8,
        }
    };
}
pub(crate) use error_kinds;

macro_rules! define_error_kind {
    ($($(#[doc = $doc:literal])* $kind:ident = $n:literal,)*) => {
        /// What kind of failure an [`Error`] is. The numbers are stable (the C ABI exposes
        /// them).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum ErrorKind {
            $($(#[doc = $doc])* $kind = $n,)*
        }
    };
}

error_kinds!(define_error_kind);

impl ErrorKind {
    /// The kind's stable number: the value of the C status of the same name
    /// (`NPKIO_STATUS_IO` is 1, ...). The command line exits with this number plus 2.
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// The error type of every fallible npkio operation.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    path: Option<PathBuf>,
    array: Option<String>,
    message: String,
    source: Option<io::Error>,
}

/// `Result` with npkio's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind` with a message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            path: None,
            array: None,
            message: message.into(),
            source: None,
        }
    }

    /// An I/O error on `path`, with what npkio was doing (`"reading"`, `"creating"`, ...).
    pub fn io(path: impl AsRef<Path>, doing: &str, source: io::Error) -> Self {
        let kind = match source.kind() {
            io::ErrorKind::NotFound => ErrorKind::NotFound,
            io::ErrorKind::AlreadyExists => ErrorKind::AlreadyExists,
            _ => ErrorKind::Io,
        };
        Error {
            kind,
            path: Some(path.as_ref().to_path_buf()),
            array: None,
            message: doing.to_string(),
            source: Some(source),
        }
    }

    /// A malformed-input error about `path`.
    pub fn malformed(path: impl AsRef<Path>, message: impl Into<String>) -> Self {
        Error::new(ErrorKind::Malformed, message).at(path)
    }

    /// An invalid-argument error.
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Error::new(ErrorKind::InvalidArgument, message)
    }

    /// Sets the file or directory the error is about (keeps an existing one).
    pub fn at(mut self, path: impl AsRef<Path>) -> Self {
        if self.path.is_none() {
            self.path = Some(path.as_ref().to_path_buf());
        }
        self
    }

    /// Sets the array or tensor the error is about (keeps an existing one).
    pub fn array(mut self, name: impl Into<String>) -> Self {
        if self.array.is_none() {
            self.array = Some(name.into());
        }
        self
    }

    /// A copy of this error (the OS error it carries is copied by its code, or by its kind
    /// and text).
    pub(crate) fn duplicate(&self) -> Error {
        Error {
            kind: self.kind,
            path: self.path.clone(),
            array: self.array.clone(),
            message: self.message.clone(),
            source: self.source.as_ref().map(|e| match e.raw_os_error() {
                Some(code) => io::Error::from_raw_os_error(code),
                None => io::Error::new(e.kind(), e.to_string()),
            }),
        }
    }

    /// The kind of the underlying OS error, if any (`Other` when there is none).
    pub(crate) fn io_kind(&self) -> io::ErrorKind {
        self.source
            .as_ref()
            .map_or(io::ErrorKind::Other, io::Error::kind)
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The file or directory concerned, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The array or tensor concerned, if any.
    pub fn array_name(&self) -> Option<&str> {
        self.array.as_deref()
    }

    /// The message alone, without path or array.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(path) = &self.path {
            write!(f, "{}: ", path.display())?;
        }
        if let Some(array) = &self.array {
            write!(f, "array {array:?}: ")?;
        }
        f.write_str(&self.message)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Attaches a path to I/O results: `file.read(..).ctx(path, "reading")?`.
pub(crate) trait IoContext<T> {
    fn ctx(self, path: impl AsRef<Path>, doing: &str) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, path: impl AsRef<Path>, doing: &str) -> Result<T> {
        self.map_err(|e| Error::io(path, doing, e))
    }
}
