//! Objects reached through `object_store`: the store a URL names, ranged GETs checked
//! against the range asked for and the ETag recorded, retried, and errors that name the URL
//! and the bytes but never a credential.

use std::future::Future;
use std::ops::Range;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use object_store::path::Path as ObjPath;
use object_store::{
    BackoffConfig, GetOptions, GetRange, ObjectStore, ObjectStoreScheme, RetryConfig,
};

use super::RemoteOptions;
use crate::error::{Error, ErrorKind, Result};
use crate::sys::safe_open::{open_inside, open_regular, Opened};

/// First ranged GET of a SafeTensors object: usually the whole header.
const DEFAULT_HEADER_GUESS: usize = 1 << 20;
/// Attempts of a GET whose body is wrong.
const DEFAULT_ATTEMPTS: u32 = 3;
/// Most objects a listing of a prefix returns.
const MAX_LISTED: usize = 1 << 20;

/// The runtime the GETs run on: two workers, started on first use, for the process's life.
fn runtime() -> Result<&'static tokio::runtime::Runtime> {
    static RT: OnceLock<std::result::Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("npkio-remote")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| {
        Error::new(
            ErrorKind::Io,
            format!("cannot start the runtime for object storage: {e}"),
        )
    })
}

/// Runs `f` to completion on npkio's runtime from a plain thread (from a thread that is
/// inside some tokio runtime already, through a scoped thread: blocking there is refused).
fn block_on<F>(f: F) -> Result<F::Output>
where
    F: Future + Send,
    F::Output: Send,
{
    let rt = runtime()?;
    if tokio::runtime::Handle::try_current().is_err() {
        return Ok(rt.block_on(f));
    }
    std::thread::scope(|s| match s.spawn(|| rt.block_on(f)).join() {
        Ok(v) => Ok(v),
        Err(p) => std::panic::resume_unwind(p),
    })
}

/// A connection to the store a URL names.
#[derive(Clone)]
pub(crate) struct Remote {
    store: Arc<dyn ObjectStore>,
    /// Values that must never appear in a message.
    secrets: Arc<Vec<String>>,
    attempts: u32,
    header_guess: usize,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote").field("store", &"…").finish()
    }
}

/// An object as a listing names it.
#[derive(Clone, Debug)]
pub(crate) struct Listed {
    pub(crate) path: ObjPath,
    pub(crate) size: u64,
    pub(crate) etag: Option<String>,
    /// Last modification, in whole seconds since the epoch (what an HTTP date can say).
    pub(crate) modified: i64,
}

/// An object of a store, as first seen: its size, ETag and modification time.
#[derive(Debug)]
pub(crate) struct RemoteObject {
    remote: Remote,
    path: ObjPath,
    url: String,
    size: u64,
    etag: Option<String>,
    modified: i64,
}

/// Environment variables whose values are credentials.
const SECRET_VARS: &[&str] = &[
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_ACCESS_KEY_ID",
    "GOOGLE_SERVICE_ACCOUNT_KEY",
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_STORAGE_SAS_KEY",
    "AZURE_STORAGE_TOKEN",
    "AZURE_CLIENT_SECRET",
];

/// Whether a configuration key's value is a credential.
fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["secret", "token", "key", "password", "sas"]
        .iter()
        .any(|w| k.contains(w))
}

/// Connects to the store `url` names; returns it and the object path of the URL.
pub(crate) fn connect(url: &str, opts: &RemoteOptions) -> Result<(Remote, ObjPath)> {
    if let Some((base, _)) = url.split_once('?') {
        // A query may hold a signature or a token: never repeated.
        return Err(Error::invalid_argument(
            "a URL with a query string (a presigned URL?) is not read; give the plain URL \
             and credentials in the environment (the query is not shown)",
        )
        .at(base));
    }
    let bad = |msg: String| Error::invalid_argument(msg).at(url);
    let parsed = url::Url::parse(url).map_err(|e| bad(format!("not a valid URL: {e}")))?;
    let (scheme, path) = ObjectStoreScheme::parse(&parsed)
        .map_err(|e| bad(format!("not a URL of object storage npkio reads: {e}")))?;
    let mut secrets: Vec<String> = SECRET_VARS
        .iter()
        .filter_map(|v| std::env::var(v).ok())
        .collect();
    secrets.extend(
        opts.config
            .iter()
            .filter(|(k, _)| is_secret_key(k))
            .map(|(_, v)| v.clone()),
    );
    secrets.retain(|s| s.len() >= 4);
    let secrets = Arc::new(secrets);
    let retry = RetryConfig {
        backoff: BackoffConfig {
            init_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
            base: 2.0,
        },
        max_retries: 4,
        retry_timeout: Duration::from_secs(60),
    };
    let failed = |e: object_store::Error| {
        bad(format!(
            "cannot configure the store: {}",
            redact(&secrets, &e.to_string())
        ))
    };
    // A key no kind of store knows is a mistake (a typo would otherwise leave the
    // environment's or the default setting in force, unseen); a key of another kind of
    // store is left to the stores it is for, so that one set of options serves all.
    if let Some((k, _)) = opts.config.iter().find(|(k, _)| !known_key(k)) {
        return Err(bad(format!(
            "unknown object_store configuration key {k:?} (RemoteOptions::config)"
        )));
    }
    // Each builder: the environment's configuration (or none, for plain HTTP), the URL,
    // then the caller's pairs, the retry policy.
    macro_rules! build {
        ($builder:expr) => {{
            let mut b = $builder;
            for (k, v) in &opts.config {
                if let Ok(key) = k.to_ascii_lowercase().parse() {
                    b = b.with_config(key, v);
                }
            }
            Arc::new(b.with_retry(retry).build().map_err(failed)?) as Arc<dyn ObjectStore>
        }};
    }
    let store: Arc<dyn ObjectStore> = match scheme {
        ObjectStoreScheme::AmazonS3 => {
            build!(object_store::aws::AmazonS3Builder::from_env().with_url(url))
        }
        ObjectStoreScheme::GoogleCloudStorage => {
            build!(object_store::gcp::GoogleCloudStorageBuilder::from_env().with_url(url))
        }
        ObjectStoreScheme::MicrosoftAzure => {
            build!(object_store::azure::MicrosoftAzureBuilder::from_env().with_url(url))
        }
        ObjectStoreScheme::Http => {
            let origin = &parsed[..url::Position::BeforePath];
            build!(object_store::http::HttpBuilder::new().with_url(origin))
        }
        _ => return Err(bad("not a URL of object storage npkio reads".into())),
    };
    let remote = Remote {
        store,
        secrets,
        attempts: match opts.attempts {
            0 => DEFAULT_ATTEMPTS,
            n => n,
        },
        header_guess: match opts.header_guess {
            0 => DEFAULT_HEADER_GUESS,
            n => n.max(8),
        },
    };
    Ok((remote, path))
}

/// Whether some kind of store (S3, GCS, Azure, HTTP) knows the configuration key `k`.
fn known_key(k: &str) -> bool {
    use std::str::FromStr;
    let k = k.to_ascii_lowercase();
    object_store::aws::AmazonS3ConfigKey::from_str(&k).is_ok()
        || object_store::gcp::GoogleConfigKey::from_str(&k).is_ok()
        || object_store::azure::AzureConfigKey::from_str(&k).is_ok()
        || object_store::ClientConfigKey::from_str(&k).is_ok()
}

/// `text` with every secret replaced.
fn redact(secrets: &[String], text: &str) -> String {
    let mut out = text.to_string();
    for s in secrets {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), "<redacted>");
        }
    }
    out
}

/// Why one GET failed.
enum Failure {
    /// Final: reported as is.
    Final(Error),
    /// Worth another attempt (a wrong body or range, a broken connection).
    Again(String),
}

/// The answer of a GET: the bytes written, the object's size and ETag.
struct Answer {
    len: u64,
    size: u64,
    etag: Option<String>,
    modified: i64,
}

impl Remote {
    /// The object at `path` (`url` names it in errors): one ranged GET of its first bytes,
    /// which gives its size and ETag; returns it and those bytes (at most the header guess).
    pub(crate) fn open(&self, path: ObjPath, url: String) -> Result<(RemoteObject, Vec<u8>)> {
        let mut first = vec![0u8; self.header_guess];
        let want = 0..self.header_guess as u64;
        let a = self.fetch(&path, &url, want, None, &mut [&mut first[..]], true)?;
        first.truncate(a.len as usize);
        let obj = RemoteObject {
            remote: self.clone(),
            path,
            url,
            size: a.size,
            etag: a.etag,
            modified: a.modified,
        };
        Ok((obj, first))
    }

    /// The whole object at `path` (a small file: an index, a store's metadata), at most
    /// `max` bytes: the opening GET, and one more for the rest when the object is longer
    /// than that GET held.
    pub(crate) fn read_whole(&self, path: ObjPath, url: String, max: u64) -> Result<Vec<u8>> {
        let (obj, mut bytes) = self.open(path, url)?;
        if obj.size > max {
            return Err(Error::new(
                ErrorKind::Malformed,
                format!("{} bytes, more than the {max} npkio reads", obj.size),
            )
            .at(&obj.url));
        }
        let have = bytes.len();
        // `obj.size <= max`, a bound npkio chose that fits in memory.
        bytes.resize(obj.size as usize, 0);
        obj.read_into(have as u64, &mut [&mut bytes[have..]])?;
        Ok(bytes)
    }

    /// The object at `path` as a listing described it (no request).
    pub(crate) fn listed(&self, l: Listed, url: String) -> RemoteObject {
        RemoteObject {
            remote: self.clone(),
            path: l.path,
            url,
            size: l.size,
            etag: l.etag,
            modified: l.modified,
        }
    }

    /// The objects under `prefix` (one LIST, paged by the store).
    pub(crate) fn list(&self, prefix: &ObjPath, url: &str) -> Result<Vec<Listed>> {
        let store = self.store.clone();
        let prefix = prefix.clone();
        let got = block_on(async move {
            let mut out = Vec::new();
            let mut s = store.list(Some(&prefix));
            while let Some(m) = s.next().await {
                let m = m?;
                if out.len() >= MAX_LISTED {
                    break;
                }
                out.push(Listed {
                    path: m.location,
                    size: m.size,
                    etag: m.e_tag,
                    modified: m.last_modified.timestamp(),
                });
            }
            Ok::<_, object_store::Error>(out)
        })?;
        got.map_err(|e| self.error(url, "listing", e))
    }

    /// The error of a failed request `what` on `url`.
    fn error(&self, url: &str, what: &str, e: object_store::Error) -> Error {
        match e {
            object_store::Error::NotFound { .. } => {
                Error::new(ErrorKind::NotFound, format!("{what}: no such object")).at(url)
            }
            object_store::Error::Precondition { .. } => changed(url, what, "its ETag differs"),
            e => Error::new(
                ErrorKind::Io,
                format!("{what}: {}", redact(&self.secrets, &e.to_string())),
            )
            .at(url),
        }
    }

    /// Reads bytes `want` of `path` into `dst` (whose lengths add up to `want`'s, or for a
    /// first GET, `partial`, at least the answer's): attempts until the body is exactly the
    /// range asked for (or, `partial`, the range up to the object's end).
    fn fetch(
        &self,
        path: &ObjPath,
        url: &str,
        want: Range<u64>,
        etag: Option<&str>,
        dst: &mut [&mut [u8]],
        partial: bool,
    ) -> Result<Answer> {
        let what = format!("reading bytes {}..{}", want.start, want.end);
        let mut last = String::new();
        for attempt in 0..self.attempts {
            if attempt > 0 {
                let pause = Duration::from_millis(100u64 << (2 * attempt.min(5)));
                block_on(async move { tokio::time::sleep(pause).await })?;
            }
            let once = block_on(self.get_once(path, url, &what, want.clone(), etag, dst, partial))?;
            match once {
                Ok(a) => return Ok(a),
                Err(Failure::Final(e)) => return Err(e),
                Err(Failure::Again(msg)) => last = msg,
            }
        }
        Err(Error::new(
            ErrorKind::Io,
            format!(
                "{what}: failed {} time(s), the last: {}",
                self.attempts,
                redact(&self.secrets, &last)
            ),
        )
        .at(url))
    }

    #[allow(clippy::too_many_arguments)]
    async fn get_once(
        &self,
        path: &ObjPath,
        url: &str,
        what: &str,
        want: Range<u64>,
        etag: Option<&str>,
        dst: &mut [&mut [u8]],
        partial: bool,
    ) -> std::result::Result<Answer, Failure> {
        let opts = GetOptions {
            range: Some(GetRange::Bounded(want.clone())),
            if_match: etag.map(str::to_string),
            ..GetOptions::default()
        };
        let r = match self.store.get_opts(path, opts).await {
            Ok(r) => r,
            Err(
                e @ (object_store::Error::NotFound { .. }
                | object_store::Error::Precondition { .. }),
            ) => {
                // Found at first, gone now: replaced or deleted since.
                let e = self.error(url, what, e);
                return Err(Failure::Final(if etag.is_some() {
                    changed(url, what, "its ETag differs")
                } else {
                    e
                }));
            }
            // Refused credentials: asking again changes nothing.
            Err(
                e @ (object_store::Error::PermissionDenied { .. }
                | object_store::Error::Unauthenticated { .. }),
            ) => return Err(Failure::Final(self.error(url, what, e))),
            Err(e) => return Err(Failure::Again(e.to_string())),
        };
        if let (Some(was), Some(now)) = (etag, r.meta.e_tag.as_deref()) {
            if was != now {
                return Err(Failure::Final(changed(url, what, "its ETag differs")));
            }
        }
        let size = r.meta.size;
        let expect = if partial {
            want.start..want.end.min(size)
        } else {
            want.clone()
        };
        if r.range != expect {
            return Err(Failure::Again(format!(
                "the server answered bytes {}..{} of {size}",
                r.range.start, r.range.end
            )));
        }
        let etag_now = r.meta.e_tag.clone();
        let modified = r.meta.last_modified.timestamp();
        let need = expect.end - expect.start;
        let mut stream = r.into_stream();
        let mut got = 0u64;
        let (mut seg, mut at) = (0usize, 0usize);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| Failure::Again(e.to_string()))?;
            if chunk.len() as u64 > need - got {
                return Err(Failure::Again(format!(
                    "the body holds more than the {need} bytes asked for"
                )));
            }
            let mut data = &chunk[..];
            while !data.is_empty() {
                // `need` fits in the destinations, so there is always room here.
                let d = &mut dst[seg];
                let n = data.len().min(d.len() - at);
                d[at..at + n].copy_from_slice(&data[..n]);
                data = &data[n..];
                at += n;
                if at == d.len() {
                    seg += 1;
                    at = 0;
                }
            }
            got += chunk.len() as u64;
        }
        if got < need {
            return Err(Failure::Again(format!(
                "the body ended after {got} of {need} bytes"
            )));
        }
        Ok(Answer {
            len: got,
            size,
            etag: etag_now,
            modified,
        })
    }
}

/// The error of an object that changed since it was opened.
fn changed(url: &str, what: &str, how: &str) -> Error {
    Error::new(
        ErrorKind::Busy,
        format!("{what}: the object changed since it was opened ({how}); open it again"),
    )
    .at(url)
}

impl RemoteObject {
    /// The object's size when it was opened.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// The object's URL.
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Reads `[off, off + total)` into `bufs` (one ranged GET, `If-Match` the ETag seen at
    /// opening), `total` being the buffers' lengths added up.
    pub(crate) fn read_into(&self, off: u64, bufs: &mut [&mut [u8]]) -> Result<()> {
        let total: u64 = bufs.iter().map(|b| b.len() as u64).sum();
        if total == 0 {
            return Ok(());
        }
        let end = off
            .checked_add(total)
            .filter(|&e| e <= self.size)
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Malformed,
                    format!(
                        "bytes {off}..+{total} are past the object's end ({} bytes)",
                        self.size
                    ),
                )
                .at(&self.url)
            })?;
        let a = self.remote.fetch(
            &self.path,
            &self.url,
            off..end,
            self.etag.as_deref(),
            bufs,
            false,
        )?;
        // With an ETag, `If-Match` and the comparison in `get_once` have settled it; the
        // size is compared whatever the ETag. Without one (a server that sends none), the
        // size and the modification time are what can tell a replaced object.
        let what = || format!("reading bytes {off}..{end}");
        if a.size != self.size {
            let how = format!("it is {} bytes, not {}", a.size, self.size);
            return Err(changed(&self.url, &what(), &how));
        }
        if self.etag.is_none() && a.modified != self.modified {
            return Err(changed(&self.url, &what(), "its modification time differs"));
        }
        Ok(())
    }
}

/// Part size of an upload.
const UPLOAD_PART: usize = 8 << 20;
/// Parts of an upload in flight.
const UPLOAD_CONCURRENCY: usize = 8;

/// Uploads the local file `path` as the object `url` names, by multipart upload (parts of
/// 8 MiB, 8 in flight): the object appears whole when the upload completes, or not at all
/// (a failed upload is aborted). `path` must be a regular file (a link the caller names is
/// followed).
pub fn upload_file(path: &std::path::Path, url: &str, opts: &RemoteOptions) -> Result<()> {
    let file = open_regular(path, "the file to upload")?;
    let (remote, obj) = connect(url, opts)?;
    remote.upload(&file, obj, url)
}

/// Whether anything is stored at `url`: the object it names, or any object under it taken
/// as a prefix (`url/...`). One LIST, of which only the first answer is read, and when it
/// finds nothing, one HEAD. `npkio convert INPUT URL` asks this before it replaces anything
/// (a check, not a lock: an object written by someone else between the check and the upload
/// is replaced).
pub fn exists(url: &str, opts: &RemoteOptions) -> Result<bool> {
    let (remote, obj) = connect(url, opts)?;
    remote.exists(obj, url)
}

/// Uploads every file under the local directory `dir` to the prefix `url` names
/// (`url/<relative path>`), one multipart upload each, `last` (a file name in `dir`, such
/// as an index or a store's metadata) after all the others, so that readers who look for
/// it find the files it names.
///
/// Only directories and regular files are taken: anything else below `dir` (a symbolic
/// link, a FIFO, a device) is an error before any upload, and no link is followed.
pub fn upload_dir(
    dir: &std::path::Path,
    url: &str,
    last: Option<&str>,
    opts: &RemoteOptions,
) -> Result<()> {
    let (remote, prefix) = connect(url, opts)?;
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(|e| Error::io(&d, "listing", e))? {
            let e = e.map_err(|e| Error::io(&d, "listing", e))?;
            // The entry's own type: a link is not followed to what it names.
            let kind = e
                .file_type()
                .map_err(|err| Error::io(e.path(), "inspecting", err))?;
            if kind.is_dir() {
                stack.push(e.path());
            } else if kind.is_file() {
                files.push(e.path());
            } else {
                return Err(Error::invalid_argument(
                    "not a regular file or a directory (a link is not followed): not uploaded",
                )
                .at(e.path()));
            }
        }
    }
    let rel = |p: &std::path::Path| {
        p.strip_prefix(dir)
            .map(|r| r.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    files.sort_by_key(|p| (Some(rel(p).as_str()) == last, rel(p)));
    let base = url.trim_end_matches('/');
    for f in &files {
        let r = rel(f);
        let obj: ObjPath = prefix
            .parts()
            .chain(r.split('/').map(object_store::path::PathPart::from))
            .collect();
        // Opened link-free inside `dir`, a regular file by `fstat`: whatever replaced the
        // entry since the walk.
        let file = open_inside(dir, &r, "the file to upload")?;
        remote.upload(&file, obj, &format!("{base}/{r}"))?;
    }
    Ok(())
}

impl Remote {
    fn exists(&self, obj: ObjPath, url: &str) -> Result<bool> {
        let store = self.store.clone();
        let got = block_on(async move {
            // The listing first: a server storing objects as files may fail a HEAD of a
            // name that is also a prefix (a directory) instead of answering 404.
            match store.list(Some(&obj)).next().await {
                Some(Ok(_)) => return Ok(true),
                Some(Err(e)) => return Err(e),
                None => {}
            }
            // The root of a bucket is no object: its listing has said all.
            if obj.as_ref().is_empty() {
                return Ok(false);
            }
            match store.head(&obj).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::NotFound { .. }) => Ok(false),
                Err(e) => Err(e),
            }
        })?;
        got.map_err(|e| self.error(url, "checking whether it exists", e))
    }

    fn upload(&self, opened: &Opened, obj: ObjPath, url: &str) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let (file, len, path) = (&opened.file, opened.len, &opened.path);
        let store = self.store.clone();
        let done = block_on(async move {
            if len == 0 {
                // A multipart upload needs a part: an empty object is one PUT.
                store
                    .put(&obj, object_store::PutPayload::default())
                    .await
                    .map_err(|e| (e, 0))?;
                return Ok(());
            }
            let upload = store.put_multipart(&obj).await.map_err(|e| (e, 0))?;
            let mut w = object_store::WriteMultipart::new_with_chunk_size(upload, UPLOAD_PART);
            let mut buf = vec![0u8; UPLOAD_PART];
            let mut at = 0u64;
            while at < len {
                let n = (len - at).min(UPLOAD_PART as u64) as usize;
                if let Err(e) = file.read_exact_at(&mut buf[..n], at) {
                    let _ = w.abort().await;
                    return Err((
                        object_store::Error::Generic {
                            store: "local file",
                            source: Box::new(e),
                        },
                        at,
                    ));
                }
                if let Err(e) = w.wait_for_capacity(UPLOAD_CONCURRENCY).await {
                    let _ = w.abort().await;
                    return Err((e, at));
                }
                w.write(&buf[..n]);
                at += n as u64;
            }
            w.finish().await.map_err(|e| (e, len))?;
            Ok(())
        })?;
        done.map_err(|(e, at)| {
            self.error(
                url,
                &format!("uploading {} (at byte {at})", path.display()),
                e,
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_wherever_they_appear() {
        let secrets = vec!["s3cr3t-value".to_string(), "tok-123456".to_string()];
        let text = "GET failed: key=s3cr3t-value&t=tok-123456 (s3cr3t-value)";
        let out = redact(&secrets, text);
        assert!(
            !out.contains("s3cr3t-value") && !out.contains("tok-123456"),
            "{out}"
        );
        assert_eq!(out.matches("<redacted>").count(), 3, "{out}");
        assert!(is_secret_key("aws_secret_access_key"));
        assert!(is_secret_key("AWS_SESSION_TOKEN"));
        assert!(!is_secret_key("aws_region"));
        assert!(!is_secret_key("aws_endpoint"));
    }

    #[test]
    fn an_unknown_configuration_key_is_refused_by_name() {
        let opts = RemoteOptions::default()
            .with("aws_region", "us-east-1")
            .with("google_service_account", "x")
            .with("aws_endpoit_url", "http://127.0.0.1:1");
        let e = connect("s3://bucket/m.safetensors", &opts).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.to_string().contains("\"aws_endpoit_url\""), "{e}");
        assert!(!e.to_string().contains("127.0.0.1"), "{e}");
        // Keys of every kind of store, each applying where it can.
        let opts = RemoteOptions::default()
            .with("AWS_REGION", "us-east-1")
            .with("google_service_account", "x")
            .with("azure_storage_account_name", "a")
            .with("allow_http", "true");
        assert!(connect("s3://bucket/m.safetensors", &opts).is_ok());
    }

    #[test]
    fn a_query_string_is_refused_and_never_shown() {
        let e = connect(
            "https://example.com/m.safetensors?X-Amz-Signature=abc123sig",
            &RemoteOptions::default(),
        )
        .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(!e.to_string().contains("abc123sig"), "{e}");
        assert!(
            e.to_string().contains("https://example.com/m.safetensors"),
            "{e}"
        );
    }
}
