//! Checkpoints in object storage: a URL (`s3://bucket/key`, `gs://`, `az://`, `http(s)://`)
//! names an object or a prefix; the loader reads it with ranged GETs.
//!
//! With the `remote` feature, objects are reached through the `object_store` crate and a
//! small tokio runtime of npkio's own (two workers, started on first use); the loader's
//! worker threads wait on their GETs, so the loader's concurrency is the number of ranged
//! GETs in flight. Without the feature, a URL is an `InvalidArgument` error.
//!
//! Credentials and endpoint come from the standard environment (`AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL` or
//! `AWS_ENDPOINT`, `AWS_ALLOW_HTTP=true` for plain HTTP; `GOOGLE_*` and `AZURE_*` for the
//! others), overridden by [`RemoteOptions::config`]. S3 requests are path-style unless
//! `AWS_VIRTUAL_HOSTED_STYLE_REQUEST=true`. No credential ever appears in an error message.
//!
//! What a URL may name: a SafeTensors object (`.../model.safetensors`), a sharded
//! checkpoint's index (`.../model.safetensors.index.json`), or a prefix holding an index,
//! `model.safetensors` or a NumPack store (`metadata.npkm`). Opening costs at most two GETs
//! per file (a first ranged GET of [`RemoteOptions::header_guess`] bytes usually holds the
//! whole header) and, for a prefix, one LIST; a NumPack store's small files (metadata,
//! sidecar, bitmaps) are fetched into a temporary directory and opened by the store's own
//! code, its data files read by ranged GETs. [`upload_file`] and [`upload_dir`] write
//! objects by multipart upload, after [`exists`] has said whether anything is there (what
//! `npkio convert INPUT URL` uses).
//!
//! Consistency: the first ranged GET of an object records its ETag; every later GET of it
//! carries `If-Match` with that ETag and checks the ETag answered, and the object size
//! answered is compared with the size first seen (for a server that sends no ETag, the
//! modification time too, in whole seconds). An object replaced in between is an error of
//! kind [`crate::ErrorKind::Busy`] naming the URL, never a mix of old and new bytes. A body
//! shorter or longer than the range asked for, or a wrong `Content-Range`, is retried and
//! then reported with the URL and the byte range; no byte is ever written past the range
//! asked for.

#[cfg(feature = "remote")]
mod object;

#[cfg(feature = "remote")]
pub(crate) use object::{connect, Listed, Remote, RemoteObject};
#[cfg(feature = "remote")]
pub use object::{exists, upload_dir, upload_file};

#[cfg(not(feature = "remote"))]
use crate::error::{Error, Result};

/// The URL schemes npkio reads from (with the `remote` feature).
pub const SCHEMES: &[&str] = &[
    "s3://", "s3a://", "gs://", "az://", "azure://", "abfs://", "abfss://", "http://", "https://",
];

/// Whether `s` is a URL of object storage (by its scheme); anything else is a local path.
pub fn is_url(s: &str) -> bool {
    SCHEMES
        .iter()
        .any(|p| s.len() >= p.len() && s[..p.len()].eq_ignore_ascii_case(p))
}

/// Whether npkio was built with the `remote` feature (URLs can be read).
pub const ENABLED: bool = cfg!(feature = "remote");

/// How to reach object storage, beyond the environment.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct RemoteOptions {
    /// `object_store` configuration pairs (`("aws_endpoint", "http://127.0.0.1:9000")`,
    /// `("aws_access_key_id", ...)`, `("aws_allow_http", "true")`, ...), applied after the
    /// environment. Values are never printed. A key no kind of store knows is an
    /// `InvalidArgument` error naming it; a key of another kind of store than the URL's is
    /// left to that kind (one set of options may serve several).
    pub config: Vec<(String, String)>,
    /// Bytes of the first ranged GET of a SafeTensors object, which usually holds the whole
    /// header (a longer header costs a second GET); 0 means the default, 1 MiB.
    pub header_guess: usize,
    /// Attempts of a ranged GET whose body is short, long or of the wrong range before it
    /// is reported (on top of the client's own retries of 5xx answers and timeouts); 0
    /// means the default, 3.
    pub attempts: u32,
}

impl RemoteOptions {
    /// With one configuration pair added.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.config.push((key.into(), value.into()));
        self
    }

    /// With [`RemoteOptions::header_guess`] set.
    pub fn header_guess(mut self, bytes: usize) -> Self {
        self.header_guess = bytes;
        self
    }

    /// With [`RemoteOptions::attempts`] set.
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts;
        self
    }
}

impl std::fmt::Debug for RemoteOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<&str> = self.config.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("RemoteOptions")
            .field("config keys", &keys)
            .field("header_guess", &self.header_guess)
            .field("attempts", &self.attempts)
            .finish()
    }
}

/// The error for a URL when npkio was built without the `remote` feature.
#[cfg(not(feature = "remote"))]
pub(crate) fn not_built(url: &str) -> Error {
    Error::invalid_argument(
        "npkio was built without the `remote` feature: it reads local paths only \
         (rebuild with `--features remote` to read object storage)",
    )
    .at(url)
}

/// Without the `remote` feature: no remote object can exist.
#[cfg(not(feature = "remote"))]
#[derive(Debug)]
pub(crate) enum RemoteObject {}

#[cfg(not(feature = "remote"))]
impl RemoteObject {
    pub(crate) fn size(&self) -> u64 {
        match *self {}
    }

    pub(crate) fn read_into(&self, _off: u64, _bufs: &mut [&mut [u8]]) -> Result<()> {
        match *self {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_told_from_paths_by_their_scheme() {
        for u in [
            "s3://b/k",
            "S3://b/k",
            "gs://b/k",
            "az://c/k",
            "https://h/x",
            "http://h",
        ] {
            assert!(is_url(u), "{u}");
        }
        for p in [
            "model.safetensors",
            "/s3://x",
            "s3:/b",
            "./gs://b",
            "file:///x",
            "",
        ] {
            assert!(!is_url(p), "{p}");
        }
    }

    #[cfg(not(feature = "remote"))]
    #[test]
    fn without_the_feature_a_url_is_a_clear_error() {
        let url = "s3://bucket/model.safetensors";
        let e = crate::load::Loader::open(url).unwrap_err();
        assert_eq!(e.kind(), crate::ErrorKind::InvalidArgument);
        assert!(
            e.to_string().contains("without the `remote` feature"),
            "{e}"
        );
        assert!(e.to_string().contains(url), "{e}");
    }

    #[test]
    fn options_never_print_their_values() {
        let o = RemoteOptions::default().with("aws_secret_access_key", "hunter2-secret");
        let text = format!("{o:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("aws_secret_access_key"), "{text}");
    }
}
