//! A real S3-compatible server for the object-storage tests: `s3s-fs` (crates.io, installed
//! by scripts/install-s3s-fs.sh into target/s3s-fs) on 127.0.0.1, on a port of its own
//! choosing, storing into a temporary directory, with a fixed test key pair and one bucket.
//! Objects are uploaded by signed PUTs (s3s-fs then records their ETag; an object written
//! into its directory behind its back would be hashed whole on every GET). The server is
//! killed when the handle drops.
//!
//! The client here signs its requests itself (AWS Signature Version 4 with an unsigned
//! payload, over `sha2`): the tests need only PUT, GET and bucket creation, and the engine
//! under test stays the only user of `object_store`.
#![allow(dead_code)]

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use super::http::{self, Head};

pub const ACCESS_KEY: &str = "npkio-test-access-key";
/// The secret the tests look for in error texts, logs and progress lines: it must never
/// appear there.
pub const SECRET_KEY: &str = "npkio-test-secret-4f1c9a7e";
pub const REGION: &str = "us-east-1";
pub const BUCKET: &str = "npkio-test";

/// How long the server may take to start: generous, the machine may be busy.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// The most a harness GET reads into memory.
const MAX_BODY: u64 = 1 << 30;

/// Where the s3s-fs binary is: `$NPKIO_S3S_FS`, else target/s3s-fs/bin/s3s-fs.
pub fn binary() -> PathBuf {
    match std::env::var_os("NPKIO_S3S_FS") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("target/s3s-fs/bin/s3s-fs"),
    }
}

/// A running s3s-fs with one bucket, [`BUCKET`].
pub struct S3Server {
    child: Child,
    addr: SocketAddr,
    root: PathBuf,
    /// The temporary storage directory, removed on drop, unless the caller gave one.
    _temp: Option<tempfile::TempDir>,
    log: Arc<Mutex<String>>,
}

impl S3Server {
    /// Starts the server on a temporary directory and creates the bucket. Panics, naming the
    /// install script, when the binary is missing: the object-storage tests fail rather than
    /// skip.
    pub fn start() -> S3Server {
        let temp = tempfile::tempdir().expect("temporary directory for the S3 server");
        Self::start_at(temp.path().to_path_buf(), Some(temp))
    }

    /// [`S3Server::start`] storing into `root`, an existing empty directory that stays.
    pub fn start_in(root: &Path) -> S3Server {
        Self::start_at(root.to_path_buf(), None)
    }

    fn start_at(root: PathBuf, temp: Option<tempfile::TempDir>) -> S3Server {
        let bin = binary();
        assert!(
            bin.is_file(),
            "the S3 test server is not installed at {}: run scripts/install-s3s-fs.sh \
             (or point NPKIO_S3S_FS at an s3s-fs 0.14.1 binary)",
            bin.display()
        );
        let mut child = Command::new(&bin)
            .args(["--host", "127.0.0.1", "--port", "0"])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(&root)
            .env("RUST_LOG", "s3s_fs=info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        // Both pipes are drained for the server's whole life (a full pipe would stall it);
        // the first "http://HOST:PORT" on either is its address.
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let (tx, log) = (tx.clone(), log.clone());
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if let Some(addr) = line.split("http://").nth(1) {
                        let addr = addr.split_whitespace().next().unwrap_or("");
                        if let Ok(addr) = addr.trim_end_matches('/').parse::<SocketAddr>() {
                            let _ = tx.send(addr);
                        }
                    }
                    let mut log = log.lock().unwrap();
                    if log.len() < 64 * 1024 {
                        log.push_str(&line);
                        log.push('\n');
                    }
                }
            });
        }
        drop(tx);
        let addr = match rx.recv_timeout(START_TIMEOUT) {
            Ok(addr) => addr,
            Err(e) => {
                let _ = child.kill();
                let status = child.wait();
                panic!(
                    "s3s-fs did not report its address ({e}; exit: {status:?}); its output:\n{}",
                    log.lock().unwrap()
                );
            }
        };
        let server = S3Server {
            child,
            addr,
            root,
            _temp: temp,
            log,
        };
        let created = server
            .client()
            .request("PUT", &format!("/{BUCKET}"), &[], None)
            .expect("creating the test bucket");
        assert_eq!(
            created.status,
            200,
            "creating the test bucket: {}",
            created.text()
        );
        server
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The server's storage directory (the bucket is a directory in it).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// What the server has printed so far.
    pub fn output(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// `s3://BUCKET/key`
    pub fn url(&self, key: &str) -> String {
        format!("s3://{BUCKET}/{key}")
    }

    /// A client signing requests to this server.
    pub fn client(&self) -> Client {
        Client::new(self.addr)
    }

    /// Uploads `bytes` as `key`; returns the ETag the server gave it.
    pub fn put(&self, key: &str, bytes: &[u8]) -> String {
        let mut body = bytes;
        self.put_reader(key, &mut body, bytes.len() as u64)
    }

    /// Uploads the file at `path` as `key`, streamed; returns its ETag.
    pub fn put_file(&self, key: &str, path: &Path) -> String {
        let mut file =
            File::open(path).unwrap_or_else(|e| panic!("opening {}: {e}", path.display()));
        let len = file.metadata().unwrap().len();
        self.put_reader(key, &mut file, len)
    }

    fn put_reader(&self, key: &str, body: &mut dyn Read, len: u64) -> String {
        let path = object_path(key);
        let r = self
            .client()
            .request("PUT", &path, &[], Some((body, len)))
            .unwrap_or_else(|e| panic!("PUT {key}: {e}"));
        assert_eq!(r.status, 200, "PUT {key}: {}", r.text());
        r.head.header("etag").unwrap_or_default().to_string()
    }

    /// Uploads every file under `dir` as `prefix/<relative path>` (a sharded checkpoint's
    /// directory or a NumPack directory).
    pub fn put_dir(&self, prefix: &str, dir: &Path) {
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for entry in std::fs::read_dir(&d).unwrap() {
                let p = entry.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    let rel = p.strip_prefix(dir).unwrap().to_str().unwrap();
                    self.put_file(&format!("{prefix}/{rel}"), &p);
                }
            }
        }
    }

    /// The environment a client needs to reach this server: credentials, region, endpoint
    /// and plain HTTP allowed (object_store's names; path-style addressing is its default).
    pub fn env(&self) -> Vec<(String, String)> {
        env_for(&self.endpoint())
    }

    /// Sets [`S3Server::env`] on a command, first removing every inherited `AWS_*` variable
    /// so that nothing from the machine's own configuration leaks in.
    pub fn configure(&self, cmd: &mut Command) {
        configure_for(cmd, &self.endpoint());
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The client environment for an endpoint (the server's own, or a proxy's in front of it).
pub fn env_for(endpoint: &str) -> Vec<(String, String)> {
    [
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        ("AWS_REGION", REGION),
        ("AWS_ENDPOINT_URL", endpoint),
        ("AWS_ALLOW_HTTP", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Sets [`env_for`]`(endpoint)` on a command after removing every inherited `AWS_*` variable.
pub fn configure_for(cmd: &mut Command, endpoint: &str) {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("AWS_") {
            cmd.env_remove(k);
        }
    }
    cmd.envs(env_for(endpoint));
}

/// The request path of an object: `/BUCKET/key`, each segment percent-encoded.
pub fn object_path(key: &str) -> String {
    format!("/{BUCKET}/{}", uri_encode(key, false))
}

/// A response read whole.
pub struct Response {
    pub status: u16,
    pub head: Head,
    pub body: Vec<u8>,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A signing S3 client over one connection per request, to the server or a proxy.
pub struct Client {
    addr: SocketAddr,
}

impl Client {
    pub fn new(addr: SocketAddr) -> Client {
        Client { addr }
    }

    /// GET `key`, the bytes `range` (start, end exclusive) when given.
    pub fn get(&self, key: &str, range: Option<(u64, u64)>) -> io::Result<Response> {
        let header;
        let mut headers = Vec::new();
        if let Some((start, end)) = range {
            header = format!("bytes={start}-{}", end - 1);
            headers.push(("range", header.as_str()));
        }
        self.request("GET", &object_path(key), &headers, None)
    }

    /// Sends one signed request (`path` already encoded, with an optional `?query` in
    /// canonical order) and reads its whole response.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<(&mut dyn Read, u64)>,
    ) -> io::Result<Response> {
        let stream = TcpStream::connect(self.addr)?;
        stream.set_read_timeout(Some(START_TIMEOUT))?;
        let mut head = Head::new(format!("{method} {path} HTTP/1.1"));
        head.set_header("host", self.addr.to_string());
        for (n, v) in headers {
            head.set_header(n, *v);
        }
        let len = body.as_ref().map_or(0, |(_, n)| *n);
        if method == "PUT" || method == "POST" || body.is_some() {
            head.set_header("content-length", len.to_string());
        }
        head.set_header("connection", "close");
        sign(&mut head, SystemTime::now());
        let mut w = io::BufWriter::new(&stream);
        head.write_to(&mut w)?;
        if let Some((r, n)) = body {
            http::copy_exact(r, &mut w, n)?;
        }
        w.flush()?;
        drop(w);
        let mut r = BufReader::new(&stream);
        let resp = Head::read(&mut r)?.ok_or_else(|| {
            io::Error::new(io::ErrorKind::UnexpectedEof, "no response from the server")
        })?;
        let status = resp.status()?;
        let body = http::read_body(resp.response_body(method)?, &mut r, MAX_BODY)?;
        Ok(Response {
            status,
            head: resp,
            body,
        })
    }
}

/// Percent-encodes as SigV4 wants: everything but `A-Za-z0-9-_.~` (and `/` in a path).
fn uri_encode(s: &str, encode_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b'/' if !encode_slash => out.push('/'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut k = [0u8; 64];
    if key.len() > 64 {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(k.map(|b| b ^ 0x36));
    inner.update(msg);
    let mut outer = Sha256::new();
    outer.update(k.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `YYYYMMDDTHHMMSSZ` for a time (days to civil date: H. Hinnant's algorithm).
fn amz_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Signs a request head (AWS Signature Version 4, unsigned payload) over its host, range
/// and `x-amz-*` headers.
fn sign(head: &mut Head, now: SystemTime) {
    let date = amz_date(now);
    head.set_header("x-amz-date", date.clone());
    head.set_header("x-amz-content-sha256", "UNSIGNED-PAYLOAD");
    let (path, query) = head.target().split_once('?').unwrap_or((head.target(), ""));
    let mut signed: Vec<(String, String)> = head
        .headers
        .iter()
        .map(|(n, v)| (n.to_ascii_lowercase(), v.trim().to_string()))
        .filter(|(n, _)| n == "host" || n == "range" || n.starts_with("x-amz-"))
        .collect();
    signed.sort();
    let names = signed
        .iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical_headers: String = signed.iter().map(|(n, v)| format!("{n}:{v}\n")).collect();
    let canonical = format!(
        "{}\n{path}\n{query}\n{canonical_headers}\n{names}\nUNSIGNED-PAYLOAD",
        head.method()
    );
    let scope = format!("{}/{REGION}/s3/aws4_request", &date[..8]);
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let mut key = hmac(
        format!("AWS4{SECRET_KEY}").as_bytes(),
        &date.as_bytes()[..8],
    );
    for part in [REGION, "s3", "aws4_request"] {
        key = hmac(&key, part.as_bytes());
    }
    let signature = hex(&hmac(&key, to_sign.as_bytes()));
    head.set_header(
        "authorization",
        format!(
            "AWS4-HMAC-SHA256 Credential={ACCESS_KEY}/{scope}, SignedHeaders={names}, \
             Signature={signature}"
        ),
    );
}

#[test]
fn amz_date_formats_known_instants() {
    assert_eq!(amz_date(UNIX_EPOCH), "19700101T000000Z");
    let t = UNIX_EPOCH + Duration::from_secs(1_709_210_096); // 2024-02-29 12:34:56 UTC
    assert_eq!(amz_date(t), "20240229T123456Z");
}

#[test]
fn hmac_matches_rfc_4231_case_2() {
    assert_eq!(
        hex(&hmac(b"Jefe", b"what do ya want for nothing?")),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
}
