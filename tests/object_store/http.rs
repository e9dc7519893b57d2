//! Just enough HTTP/1.1 for the test server's client and the fault proxy: one request or
//! response head, and the body that follows it (by `Content-Length`, chunked encoding or,
//! for a response, until the connection closes).
#![allow(dead_code)]

use std::io::{self, BufRead, Read, Write};

/// The longest head either side accepts; a longer one is an error, not an allocation.
const MAX_HEAD: usize = 64 * 1024;

/// A request or response head: its start line and its headers in order.
#[derive(Clone, Debug)]
pub struct Head {
    pub start: String,
    pub headers: Vec<(String, String)>,
}

/// How the body after a head is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Body {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// One line ending in CRLF (or LF), without it; `None` at end of stream before any byte.
fn read_line(r: &mut impl BufRead, budget: &mut usize) -> io::Result<Option<String>> {
    let mut line = Vec::new();
    let n = r
        .by_ref()
        .take(*budget as u64 + 1)
        .read_until(b'\n', &mut line)?;
    if n == 0 {
        return Ok(None);
    }
    if n > *budget || line.last() != Some(&b'\n') {
        return Err(invalid("HTTP head too long or cut short"));
    }
    *budget -= n;
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| invalid("HTTP head is not UTF-8"))
}

impl Head {
    pub fn new(start: impl Into<String>) -> Head {
        Head {
            start: start.into(),
            headers: Vec::new(),
        }
    }

    /// Reads one head; `None` when the stream ends cleanly before it starts.
    pub fn read(r: &mut impl BufRead) -> io::Result<Option<Head>> {
        let mut budget = MAX_HEAD;
        let Some(start) = read_line(r, &mut budget)? else {
            return Ok(None);
        };
        let mut head = Head::new(start);
        loop {
            let line = read_line(r, &mut budget)?.ok_or_else(|| invalid("HTTP head cut short"))?;
            if line.is_empty() {
                return Ok(Some(head));
            }
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| invalid(format!("malformed header line {line:?}")))?;
            head.headers
                .push((name.trim().to_string(), value.trim().to_string()));
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Replaces every header of that name by one with this value.
    pub fn set_header(&mut self, name: &str, value: impl Into<String>) {
        self.remove_header(name);
        self.headers.push((name.to_string(), value.into()));
    }

    pub fn remove_header(&mut self, name: &str) {
        self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }

    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        let mut out = String::with_capacity(256);
        out.push_str(&self.start);
        out.push_str("\r\n");
        for (n, v) in &self.headers {
            out.push_str(n);
            out.push_str(": ");
            out.push_str(v);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        w.write_all(out.as_bytes())
    }

    /// The request's method (the first word of the start line).
    pub fn method(&self) -> &str {
        self.start.split(' ').next().unwrap_or("")
    }

    /// The request's target (the second word of the start line).
    pub fn target(&self) -> &str {
        self.start.split(' ').nth(1).unwrap_or("")
    }

    /// The response's status code.
    pub fn status(&self) -> io::Result<u16> {
        self.start
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid(format!("malformed status line {:?}", self.start)))
    }

    fn length_or_chunked(&self) -> io::Result<Option<Body>> {
        if let Some(te) = self.header("transfer-encoding") {
            if te.eq_ignore_ascii_case("chunked") {
                return Ok(Some(Body::Chunked));
            }
            return Err(invalid(format!("unsupported Transfer-Encoding {te:?}")));
        }
        match self.header("content-length") {
            Some(v) => v
                .parse()
                .map(|n| Some(Body::Length(n)))
                .map_err(|_| invalid(format!("malformed Content-Length {v:?}"))),
            None => Ok(None),
        }
    }

    /// The body of a request with this head.
    pub fn request_body(&self) -> io::Result<Body> {
        Ok(self.length_or_chunked()?.unwrap_or(Body::None))
    }

    /// The body of a response with this head to a request with method `method`.
    pub fn response_body(&self, method: &str) -> io::Result<Body> {
        let status = self.status()?;
        if method == "HEAD" || status == 204 || status == 304 || (100..200).contains(&status) {
            return Ok(Body::None);
        }
        Ok(self.length_or_chunked()?.unwrap_or(Body::UntilClose))
    }
}

/// Copies exactly `n` bytes from `r` to `w`; an early end of `r` is an error.
pub fn copy_exact(r: &mut (impl Read + ?Sized), w: &mut impl Write, n: u64) -> io::Result<()> {
    let copied = io::copy(&mut Read::take(r, n), w)?;
    if copied != n {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("body ended after {copied} of {n} bytes"),
        ));
    }
    Ok(())
}

/// Copies a body delimited as `kind` from `r` to `w` as it is on the wire (chunk framing
/// included); returns the number of payload bytes.
pub fn copy_body(kind: Body, r: &mut impl BufRead, w: &mut impl Write) -> io::Result<u64> {
    match kind {
        Body::None => Ok(0),
        Body::Length(n) => copy_exact(r, w, n).map(|()| n),
        Body::UntilClose => io::copy(r, w),
        Body::Chunked => {
            let mut total = 0u64;
            loop {
                let mut budget = MAX_HEAD;
                let line = read_line(r, &mut budget)?.ok_or_else(|| invalid("chunk cut short"))?;
                let size = line.split(';').next().unwrap_or("").trim();
                let size = u64::from_str_radix(size, 16)
                    .map_err(|_| invalid(format!("malformed chunk size {line:?}")))?;
                write!(w, "{line}\r\n")?;
                if size == 0 {
                    // Trailers, then the empty line that ends the body.
                    loop {
                        let t = read_line(r, &mut budget)?
                            .ok_or_else(|| invalid("chunk trailer cut short"))?;
                        write!(w, "{t}\r\n")?;
                        if t.is_empty() {
                            return Ok(total);
                        }
                    }
                }
                copy_exact(r, w, size)?;
                total = total
                    .checked_add(size)
                    .ok_or_else(|| invalid("chunked body too long"))?;
                let end = read_line(r, &mut budget)?.ok_or_else(|| invalid("chunk cut short"))?;
                if !end.is_empty() {
                    return Err(invalid("chunk not followed by CRLF"));
                }
                w.write_all(b"\r\n")?;
            }
        }
    }
}

/// Reads a whole body delimited as `kind`, decoded, into memory, refusing one longer than
/// `limit` bytes.
pub fn read_body(kind: Body, r: &mut impl BufRead, limit: u64) -> io::Result<Vec<u8>> {
    match kind {
        Body::Length(n) if n > limit => Err(invalid(format!("body of {n} bytes over {limit}"))),
        Body::Chunked => {
            let mut framed = Vec::new();
            copy_body(kind, r, &mut LimitedVec(&mut framed, limit))?;
            decode_chunked(&framed)
        }
        _ => {
            let mut out = Vec::new();
            copy_body(kind, r, &mut LimitedVec(&mut out, limit))?;
            Ok(out)
        }
    }
}

/// A `Vec` writer that refuses to grow past a limit.
struct LimitedVec<'a>(&'a mut Vec<u8>, u64);

impl Write for LimitedVec<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if (self.0.len() + buf.len()) as u64 > self.1 {
            return Err(invalid(format!("body over {} bytes", self.1)));
        }
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The payload of a chunked body that `copy_body` has already checked.
fn decode_chunked(mut framed: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let mut budget = MAX_HEAD;
        let line = read_line(&mut framed, &mut budget)?.unwrap_or_default();
        let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| invalid("malformed chunk size"))?;
        if size == 0 {
            return Ok(out);
        }
        let (data, rest) = framed.split_at(size.min(framed.len()));
        out.extend_from_slice(data);
        framed = rest.get(2..).unwrap_or_default();
    }
}
