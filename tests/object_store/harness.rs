//! The test server and the proxy themselves: what the engine's tests rely on.

use std::time::Duration;

use super::proxy::{Fault, Proxy};
use super::server::{Client, S3Server};

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[test]
fn server_stores_and_serves_ranges_with_a_stable_etag() {
    let s = S3Server::start();
    let data = pattern(300_000);
    let etag = s.put("dir/a b.bin", &data);
    assert!(!etag.is_empty(), "PUT returned no ETag");

    let c = s.client();
    let whole = c.get("dir/a b.bin", None).unwrap();
    assert_eq!(whole.status, 200, "{}", whole.text());
    assert_eq!(whole.body, data);
    assert_eq!(whole.head.header("etag"), Some(etag.as_str()));

    let part = c.get("dir/a b.bin", Some((1000, 5000))).unwrap();
    assert_eq!(part.status, 206, "{}", part.text());
    assert_eq!(part.body, &data[1000..5000]);
    assert_eq!(
        part.head.header("content-range"),
        Some("bytes 1000-4999/300000")
    );

    // A new upload is a new ETag: what the engine's consistency check relies on.
    let mut changed = data.clone();
    changed[0] ^= 1;
    assert_ne!(s.put("dir/a b.bin", &changed), etag);
    assert_eq!(s.url("dir/a b.bin"), "s3://npkio-test/dir/a b.bin");
}

#[test]
fn server_refuses_unsigned_requests() {
    let s = S3Server::start();
    s.put("x", b"secret bytes");
    let mut stream = std::net::TcpStream::connect(s.addr()).unwrap();
    use std::io::{Read, Write};
    write!(
        stream,
        "GET /npkio-test/x HTTP/1.1\r\nhost: {}\r\nconnection: close\r\n\r\n",
        s.addr()
    )
    .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(!answer.contains("secret bytes"));
}

#[test]
fn proxy_passes_ranged_gets_through_and_counts_them() {
    let s = S3Server::start();
    let data = pattern(1 << 20);
    s.put("m.safetensors", &data);
    let p = Proxy::start(s.addr());
    let c = Client::new(p.addr());
    let r = c.get("m.safetensors", Some((100, 100 + 65536))).unwrap();
    assert_eq!(r.status, 206, "{}", r.text());
    assert_eq!(r.body, &data[100..100 + 65536]);
    let r = c.get("m.safetensors", Some((0, 10))).unwrap();
    assert_eq!(r.body, &data[..10]);

    let gets = p.gets_of("m.safetensors");
    assert_eq!(gets.len(), 2);
    assert_eq!(gets[0].range.as_deref(), Some("bytes=100-65635"));
    assert_eq!(p.bytes_of("m.safetensors"), 65536 + 10);
    assert_eq!(p.faulted(), 0);
    // PUTs through the proxy pass (their signature names the proxy's host).
    let mut body: &[u8] = b"through the proxy";
    let put = c
        .request(
            "PUT",
            &super::server::object_path("via-proxy"),
            &[],
            Some((&mut body, 17)),
        )
        .unwrap();
    assert_eq!(put.status, 200, "{}", put.text());
    assert_eq!(
        s.client().get("via-proxy", None).unwrap().body,
        b"through the proxy"
    );
}

#[test]
fn proxy_truncates_fails_and_changes_as_armed_then_passes() {
    let s = S3Server::start();
    let data = pattern(200_000);
    let etag = s.put("t", &data);
    let p = Proxy::start(s.addr());
    let c = Client::new(p.addr());

    // A truncated body keeps its Content-Length: the reader sees it cut short.
    p.inject(Fault::Truncate(1000), 1);
    let err = c
        .get("t", Some((0, 50_000)))
        .err()
        .expect("a cut-short body");
    assert_eq!(err.kind(), std::io::ErrorKind::UnexpectedEof, "{err}");
    assert_eq!(p.gets_of("t")[0].bytes, 1000);

    // The fault was for one request: the next passes.
    assert_eq!(c.get("t", Some((0, 50_000))).unwrap().body, &data[..50_000]);

    p.inject_after(1, Fault::Status(503), 2);
    let codes: Vec<u16> = (0..4)
        .map(|_| c.get("t", Some((0, 10))).unwrap().status)
        .collect();
    assert_eq!(codes, [206, 503, 503, 206]);

    p.inject(Fault::ChangeETag, 1);
    let changed = c.get("t", Some((0, 10))).unwrap();
    assert_ne!(changed.head.header("etag"), Some(etag.as_str()));
    assert_eq!(
        c.get("t", Some((0, 10))).unwrap().head.header("etag"),
        Some(etag.as_str())
    );

    p.inject(Fault::WrongContentRange, 1);
    let shifted = c.get("t", Some((0, 10))).unwrap();
    assert_eq!(
        shifted.head.header("content-range"),
        Some("bytes 1-10/200000")
    );
    assert_eq!(shifted.body, &data[..10]);

    p.inject(Fault::WrongContentLength, 1);
    assert!(c.get("t", Some((0, 10))).is_err());

    p.inject(Fault::Delay(Duration::from_millis(1)), 1);
    assert_eq!(c.get("t", Some((5, 10))).unwrap().body, &data[5..10]);

    p.inject(Fault::Close, 1);
    assert!(c.get("t", None).is_err());
    assert_eq!(c.get("t", None).unwrap().body, data);
    assert_eq!(p.faulted(), 1 + 2 + 1 + 1 + 1 + 1 + 1);
}
