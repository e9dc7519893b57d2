//! A fault-injecting HTTP/1.1 proxy on 127.0.0.1 in front of the test server (std threads,
//! one per client connection, a fresh upstream connection per request). It passes requests
//! through untouched (their signatures stay valid: the Host header is kept) unless a fault
//! is armed, and it records every request: method, object key, requested range, status and
//! body bytes served, so that tests can count requests per object and bytes fetched.
//!
//! Faults apply to GETs of objects (not listings, not PUTs): the next `times` of them after
//! letting `skip` pass.
#![allow(dead_code)]

use std::io::{self, BufReader, BufWriter, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::http::{self, Body, Head};
use super::server::BUCKET;

/// Generous: a busy machine may be slow, and a hung test is caught by this, not by a sleep.
const IO_TIMEOUT: Duration = Duration::from_secs(300);

/// What the proxy does to a GET it faults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answers with this status (e.g. 500, 503) and a small S3 error body, not forwarding.
    Status(u16),
    /// Forwards, but waits this long before answering.
    Delay(Duration),
    /// Forwards the head unchanged (its Content-Length included) and only the first `K`
    /// bytes of the body, then closes the connection.
    Truncate(u64),
    /// Forwards with a Content-Range shifted one byte further than the bytes sent.
    WrongContentRange,
    /// Forwards with a Content-Length one byte longer than the body, then closes the
    /// connection (the body is cut short against what the head promised).
    WrongContentLength,
    /// Forwards with a different ETag, as if the object had been replaced.
    ChangeETag,
    /// Forwards without the ETag, as a server that sends none.
    NoETag,
    /// Closes the connection without answering.
    Close,
}

/// One request the proxy saw.
#[derive(Clone, Debug)]
pub struct Record {
    pub method: String,
    /// The object key (percent-decoded) for requests to `/BUCKET/key`, else `None`.
    pub key: Option<String>,
    /// The query string, if any (listings have one).
    pub query: String,
    /// The Range header as sent.
    pub range: Option<String>,
    pub status: u16,
    /// Body bytes sent to the client.
    pub bytes: u64,
    pub fault: Option<Fault>,
}

#[derive(Default)]
struct Rule {
    fault: Option<Fault>,
    skip: usize,
    times: usize,
}

#[derive(Default)]
struct State {
    rule: Rule,
    records: Vec<Record>,
}

pub struct Proxy {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    /// Starts a proxy in front of `upstream`, passing everything through.
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the proxy");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let st = st.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, upstream, &st);
                });
            }
        });
        Proxy { addr, state, stop }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, the endpoint to give the client instead of the server's.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Faults the next `times` object GETs (`usize::MAX`: all of them), replacing any fault
    /// armed before.
    pub fn inject(&self, fault: Fault, times: usize) {
        self.inject_after(0, fault, times);
    }

    /// Lets `skip` object GETs through, then faults the next `times`.
    pub fn inject_after(&self, skip: usize, fault: Fault, times: usize) {
        self.state.lock().unwrap().rule = Rule {
            fault: Some(fault),
            skip,
            times,
        };
    }

    /// Back to passing everything through.
    pub fn clear(&self) {
        self.state.lock().unwrap().rule = Rule::default();
    }

    /// Every request seen so far, in the order their answers finished.
    pub fn records(&self) -> Vec<Record> {
        self.state.lock().unwrap().records.clone()
    }

    /// Forgets the records (the fault stays armed).
    pub fn reset(&self) {
        self.state.lock().unwrap().records.clear();
    }

    pub fn requests(&self) -> usize {
        self.state.lock().unwrap().records.len()
    }

    /// The GETs of object `key`.
    pub fn gets_of(&self, key: &str) -> Vec<Record> {
        self.records()
            .into_iter()
            .filter(|r| r.method == "GET" && r.key.as_deref() == Some(key))
            .collect()
    }

    /// Body bytes served for object `key` by GETs.
    pub fn bytes_of(&self, key: &str) -> u64 {
        self.gets_of(key).iter().map(|r| r.bytes).sum()
    }

    /// Body bytes served by all GETs.
    pub fn bytes(&self) -> u64 {
        self.records()
            .iter()
            .filter(|r| r.method == "GET")
            .map(|r| r.bytes)
            .sum()
    }

    /// How many requests a fault was applied to.
    pub fn faulted(&self) -> usize {
        self.records().iter().filter(|r| r.fault.is_some()).count()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop so that it sees the flag.
        let _ = TcpStream::connect(self.addr);
    }
}

/// `(key, query)` of a request target `/BUCKET/key?query`.
fn split_target(target: &str) -> (Option<String>, String) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let key = path
        .strip_prefix(&format!("/{BUCKET}/"))
        .filter(|k| !k.is_empty())
        .map(percent_decode);
    (key, query.to_string())
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The fault for the next request, consuming one use of the armed rule when it applies.
fn take_fault(state: &Mutex<State>, applies: bool) -> Option<Fault> {
    let mut st = state.lock().unwrap();
    let rule = &mut st.rule;
    if !applies || rule.fault.is_none() || rule.times == 0 {
        return None;
    }
    if rule.skip > 0 {
        rule.skip -= 1;
        return None;
    }
    rule.times -= 1;
    rule.fault.clone()
}

/// `bytes A-B/T` shifted one byte on: `bytes A+1-B+1/T`.
fn shift_content_range(v: &str) -> String {
    let parsed = v.strip_prefix("bytes ").and_then(|r| {
        let (span, total) = r.split_once('/')?;
        let (a, b) = span.split_once('-')?;
        Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?, total))
    });
    match parsed {
        Some((a, b, total)) => format!("bytes {}-{}/{total}", a + 1, b + 1),
        None => format!("{v}x"),
    }
}

fn error_response(status: u16) -> Vec<u8> {
    let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>InternalError</Code>\
                <Message>injected by the test proxy</Message></Error>";
    format!(
        "HTTP/1.1 {status} Injected\r\ncontent-type: application/xml\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Serves one client connection until it closes (or a fault closes it).
fn serve(client: TcpStream, upstream: SocketAddr, state: &Mutex<State>) -> io::Result<()> {
    client.set_read_timeout(Some(IO_TIMEOUT))?;
    let mut from_client = BufReader::new(client.try_clone()?);
    let mut to_client = BufWriter::new(client.try_clone()?);
    loop {
        let Some(mut req) = Head::read(&mut from_client)? else {
            return Ok(());
        };
        let method = req.method().to_string();
        let (key, query) = split_target(req.target());
        let range = req.header("range").map(str::to_string);
        let fault = take_fault(state, method == "GET" && key.is_some() && query.is_empty());
        let mut record = Record {
            method: method.clone(),
            key,
            query,
            range,
            status: 0,
            bytes: 0,
            fault: fault.clone(),
        };
        let req_body = req.request_body()?;
        let push = |record: Record| state.lock().unwrap().records.push(record);
        match fault {
            Some(Fault::Status(status)) => {
                http::copy_body(req_body, &mut from_client, &mut io::sink())?;
                record.status = status;
                push(record);
                to_client.write_all(&error_response(status))?;
                to_client.flush()?;
                continue;
            }
            Some(Fault::Close) => {
                push(record);
                return client.shutdown(Shutdown::Both);
            }
            _ => {}
        }

        let up = TcpStream::connect(upstream)?;
        up.set_read_timeout(Some(IO_TIMEOUT))?;
        req.set_header("connection", "close");
        let mut to_up = BufWriter::new(&up);
        req.write_to(&mut to_up)?;
        http::copy_body(req_body, &mut from_client, &mut to_up)?;
        to_up.flush()?;
        drop(to_up);
        let mut from_up = BufReader::new(&up);
        let mut resp = Head::read(&mut from_up)?.ok_or_else(|| {
            io::Error::new(io::ErrorKind::UnexpectedEof, "no answer from upstream")
        })?;
        record.status = resp.status()?;
        let kind = resp.response_body(&method)?;
        resp.remove_header("connection");
        if kind == Body::UntilClose {
            resp.set_header("connection", "close");
        }
        let mut cut = None;
        match (&fault, kind) {
            (Some(Fault::Delay(d)), _) => std::thread::sleep(*d),
            (Some(Fault::ChangeETag), _) => {
                resp.set_header("etag", "\"0123456789abcdef0123456789abcdef\"")
            }
            (Some(Fault::NoETag), _) => resp.remove_header("etag"),
            (Some(Fault::WrongContentRange), _) => {
                if let Some(v) = resp.header("content-range").map(shift_content_range) {
                    resp.set_header("content-range", v);
                }
            }
            (Some(Fault::Truncate(k)), Body::Length(n)) => cut = Some((*k).min(n)),
            (Some(Fault::WrongContentLength), Body::Length(n)) => {
                resp.set_header("content-length", (n + 1).to_string());
                cut = Some(n);
            }
            _ => {}
        }
        // The record is pushed before the answer's last byte leaves: a client that has
        // read its whole answer finds its request counted.
        let mut to_client = HoldLast::new(&mut to_client);
        resp.write_to(&mut to_client)?;
        match cut {
            Some(k) => {
                http::copy_exact(&mut from_up, &mut to_client, k)?;
                to_client.release()?;
                record.bytes = k;
                push(record);
                return client.shutdown(Shutdown::Both);
            }
            None => {
                record.bytes = http::copy_body(kind, &mut from_up, &mut to_client)?;
                push(record);
                to_client.release()?;
                if kind == Body::UntilClose {
                    return client.shutdown(Shutdown::Both);
                }
            }
        }
    }
}

/// A writer that holds back the last byte written until [`HoldLast::release`].
struct HoldLast<'a, W: Write> {
    inner: &'a mut W,
    held: Option<u8>,
}

impl<'a, W: Write> HoldLast<'a, W> {
    fn new(inner: &'a mut W) -> Self {
        HoldLast { inner, held: None }
    }

    /// Writes the held byte and flushes.
    fn release(&mut self) -> io::Result<()> {
        if let Some(b) = self.held.take() {
            self.inner.write_all(&[b])?;
        }
        self.inner.flush()
    }
}

impl<W: Write> Write for HoldLast<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let Some((&last, rest)) = buf.split_last() else {
            return Ok(0);
        };
        if let Some(b) = self.held.take() {
            self.inner.write_all(&[b])?;
        }
        self.inner.write_all(rest)?;
        self.held = Some(last);
        Ok(buf.len())
    }

    /// Flushes what was written before the held byte.
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
