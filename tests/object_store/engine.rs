//! The loader against object storage: whole loads, slices, shards and sinks equal the local
//! loads byte for byte; listing costs at most two requests per file; shards fetch their
//! share; changed objects, 5xx answers and broken bodies are retried or reported with the
//! URL and the bytes, never delivered as garbage; the secret key never shows.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use npkio::load::{LoadOptions, LoadReport, Loader, Request, Staging};
use npkio::remote::RemoteOptions;
use npkio::ErrorKind;

use super::proxy::{Fault, Proxy};
use super::server::{env_for, S3Server, SECRET_KEY};

fn model() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tiny-llama.safetensors")
}

fn sharded_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/safetensors/sharded")
}

/// Options reaching `endpoint` (the server or a proxy), given explicitly: the process's
/// environment is not touched by the tests.
fn opts_for(endpoint: &str) -> RemoteOptions {
    env_for(endpoint)
        .into_iter()
        .fold(RemoteOptions::default(), |o, (k, v)| {
            o.with(k.to_ascii_lowercase(), v)
        })
}

/// Every tensor of `loader`, whole or `shard(0, rank, world)` where it has dimensions.
fn requests(loader: &Loader, shard: Option<(u64, u64)>) -> Vec<Request> {
    loader
        .tensors()
        .iter()
        .map(|t| match shard {
            Some((rank, world)) if !t.shape.is_empty() => {
                Request::new(&t.name).shard(0, rank, world)
            }
            _ => Request::new(&t.name),
        })
        .collect()
}

/// Loads `reqs` into fresh buffers.
fn load(
    loader: &Loader,
    reqs: &[Request],
    opts: &LoadOptions,
) -> npkio::Result<(Vec<Vec<u8>>, LoadReport)> {
    let mut bufs: Vec<Vec<u8>> = reqs
        .iter()
        .map(|r| vec![0xA5u8; loader.output(r).unwrap().nbytes as usize])
        .collect();
    let mut dsts: Vec<&mut [u8]> = bufs.iter_mut().map(|b| &mut b[..]).collect();
    let report = loader.load(reqs, &mut dsts, opts)?;
    Ok((bufs, report))
}

/// The local loader's bytes for the same requests (by name, as the remote loader names
/// them).
fn local_bytes(path: &Path, reqs: &[Request]) -> Vec<Vec<u8>> {
    let local = Loader::open(path).unwrap();
    load(&local, reqs, &LoadOptions::default()).unwrap().0
}

/// Small ranges, so that one load is many ranged GETs.
fn small() -> LoadOptions {
    LoadOptions::default().range_size(16 << 10).concurrency(4)
}

fn assert_clean(text: &str) {
    assert!(
        !text.contains(SECRET_KEY),
        "the secret key appears in: {text}"
    );
}

#[test]
fn a_whole_load_equals_the_local_load_by_object_and_by_prefix() {
    let s = S3Server::start();
    s.put_file("m/model.safetensors", &model());
    let opts = opts_for(&s.endpoint());
    for url in [s.url("m/model.safetensors"), s.url("m"), s.url("m/")] {
        let loader = Loader::open_url(&url, &opts).unwrap();
        assert!(loader.is_remote());
        let reqs = requests(&loader, None);
        let want = local_bytes(&model(), &reqs);
        for o in [LoadOptions::default(), small()] {
            let (got, report) = load(&loader, &reqs, &o).unwrap();
            assert!(
                got == want,
                "{url} with {o:?}: bytes differ from the local load"
            );
            let total: u64 = want.iter().map(|b| b.len() as u64).sum();
            assert_eq!(report.bytes_out, total);
        }
    }
}

#[test]
fn slices_conversions_and_a_sink_deliver_the_local_bytes() {
    let s = S3Server::start();
    s.put_file("m/model.safetensors", &model());
    let loader = Loader::open_url(&s.url("m/model.safetensors"), &opts_for(&s.endpoint())).unwrap();
    let mut reqs = Vec::new();
    for t in loader.tensors() {
        if t.shape.len() == 2 {
            reqs.push(Request::new(&t.name).slice(1, 3, t.shape[1] - 1));
            reqs.push(Request::new(&t.name).shard(1, 1, 3).to(npkio::DType::F32));
        }
    }
    assert!(!reqs.is_empty());
    let want = local_bytes(&model(), &reqs);
    let (got, _) = load(&loader, &reqs, &small()).unwrap();
    assert!(
        got == want,
        "strided and converted slices differ from the local load"
    );

    // Sink mode: every byte handed over once, through staging of 8 KiB.
    let reqs = requests(&loader, None);
    let want = local_bytes(&model(), &reqs);
    let out: Mutex<Vec<Vec<u8>>> = Mutex::new(want.iter().map(|w| vec![0u8; w.len()]).collect());
    let sink = |req: usize, off: u64, bytes: &[u8]| -> Result<(), String> {
        assert!(
            bytes.len() <= 8192,
            "a staging buffer of 8 KiB handed {} bytes",
            bytes.len()
        );
        let mut o = out.lock().unwrap();
        o[req][off as usize..off as usize + bytes.len()].copy_from_slice(bytes);
        Ok(())
    };
    loader
        .load_to_sink(&reqs, Staging::Size(8192), &sink, &small())
        .unwrap();
    assert!(out.into_inner().unwrap() == want, "the sink's bytes differ");
}

#[test]
fn opening_costs_at_most_two_requests_per_file() {
    let s = S3Server::start();
    s.put_file("m/model.safetensors", &model());
    s.put_dir("sh", &sharded_dir());
    let p = Proxy::start(s.addr());
    let opts = opts_for(&p.endpoint());

    Loader::open_url(&s.url("m/model.safetensors"), &opts).unwrap();
    assert_eq!(p.requests(), 1, "{:?}", p.records());

    // A header longer than the first GET: a second one.
    p.reset();
    Loader::open_url(
        &s.url("m/model.safetensors"),
        &opts.clone().header_guess(64),
    )
    .unwrap();
    assert_eq!(p.requests(), 2, "{:?}", p.records());

    // A sharded checkpoint by its prefix: one LIST, the index, each shard's header.
    p.reset();
    let loader = Loader::open_url(&s.url("sh"), &opts).unwrap();
    assert_eq!(loader.container(), npkio::Container::ShardedSafeTensors);
    let files = 3; // the index and two shards
    assert!(
        p.requests() <= 1 + 2 * files,
        "{} requests: {:?}",
        p.requests(),
        p.records()
    );
    let reqs = requests(&loader, None);
    let (got, _) = load(&loader, &reqs, &small()).unwrap();
    assert!(
        got == local_bytes(&sharded_dir(), &reqs),
        "sharded bytes differ"
    );

    // An index longer than the first GET: the rest in one more, no byte fetched twice.
    p.reset();
    let index = "sh/model.safetensors.index.json";
    let len = std::fs::metadata(sharded_dir().join("model.safetensors.index.json"))
        .unwrap()
        .len();
    assert!(len > 64, "{len}");
    let loader = Loader::open_url(&s.url(index), &opts.clone().header_guess(64)).unwrap();
    assert_eq!(p.gets_of(index).len(), 2, "{:?}", p.records());
    assert_eq!(p.bytes_of(index), len, "{:?}", p.gets_of(index));
    let (got, _) = load(&loader, &reqs, &small()).unwrap();
    assert!(
        got == local_bytes(&sharded_dir(), &reqs),
        "sharded bytes differ"
    );
}

#[test]
fn a_rank_of_two_fetches_about_half_the_bytes() {
    let s = S3Server::start();
    s.put_file("m/model.safetensors", &model());
    let p = Proxy::start(s.addr());
    let loader = Loader::open_url(&s.url("m/model.safetensors"), &opts_for(&p.endpoint())).unwrap();
    let whole = std::fs::metadata(model()).unwrap().len();
    let mut fetched = 0;
    for rank in 0..2 {
        let reqs = requests(&loader, Some((rank, 2)));
        p.reset();
        let (got, report) = load(&loader, &reqs, &small()).unwrap();
        assert!(got == local_bytes(&model(), &reqs), "rank {rank} differs");
        let bytes = p.bytes();
        assert_eq!(bytes, report.bytes_read, "rank {rank}: {:?}", p.records());
        assert!(
            bytes * 100 <= whole * 55,
            "rank {rank} fetched {bytes} of {whole} bytes"
        );
        fetched += bytes;
    }
    // Together the two ranks fetch the data once (1-d tensors go whole to both).
    assert!(fetched <= whole + whole / 10, "{fetched} of {whole}");
}

#[test]
fn an_object_replaced_after_opening_is_a_typed_error_naming_the_url() {
    let s = S3Server::start();
    let bytes = std::fs::read(model()).unwrap();
    s.put("m/model.safetensors", &bytes);
    let url = s.url("m/model.safetensors");
    let loader = Loader::open_url(&url, &opts_for(&s.endpoint())).unwrap();
    let reqs = requests(&loader, None);
    // The same header, other data: only the ETag tells.
    let mut other = bytes.clone();
    let n = other.len();
    other[n - 1] ^= 0xFF;
    s.put("m/model.safetensors", &other);
    let e = load(&loader, &reqs, &small()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    let text = e.to_string();
    assert!(text.contains(&url), "{text}");
    assert!(text.contains("changed since it was opened"), "{text}");
    assert_clean(&text);

    // A fresh loader sees the new bytes.
    let loader = Loader::open_url(&url, &opts_for(&s.endpoint())).unwrap();
    let (got, _) = load(&loader, &reqs, &small()).unwrap();
    let last = got.iter().rev().find(|b| !b.is_empty()).unwrap();
    assert_eq!(*last.last().unwrap(), bytes[n - 1] ^ 0xFF);

    // A proxy that answers another ETag: the same error, however many attempts.
    let p = Proxy::start(s.addr());
    let loader = Loader::open_url(&url, &opts_for(&p.endpoint())).unwrap();
    p.inject(Fault::ChangeETag, 1);
    let e = load(&loader, &reqs, &small()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
}

#[test]
fn without_etags_a_replaced_object_is_told_by_its_size_or_modification_time() {
    let s = S3Server::start();
    let bytes = std::fs::read(model()).unwrap();
    s.put("m/model.safetensors", &bytes);
    let url = s.url("m/model.safetensors");
    let p = Proxy::start(s.addr());
    // Every answer without its ETag, from the first on: no If-Match can be sent.
    p.inject(Fault::NoETag, usize::MAX);
    let open = || Loader::open_url(&url, &opts_for(&p.endpoint())).unwrap();
    let loader = open();
    let reqs = requests(&loader, None);
    let (got, _) = load(&loader, &reqs, &small()).unwrap();
    assert!(
        got.concat() == local_bytes(&model(), &reqs).concat(),
        "an unchanged object loads"
    );
    assert!(
        p.records().iter().all(|r| r.fault == Some(Fault::NoETag)),
        "an answer kept its ETag"
    );

    // Longer: the size answered differs from the size opened.
    let mut longer = bytes.clone();
    longer.extend_from_slice(&[0u8; 64]);
    s.put("m/model.safetensors", &longer);
    let e = load(&loader, &reqs, &small()).map(|_| ()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    assert!(e.to_string().contains(&url), "{e}");
    assert!(e.to_string().contains("bytes, not"), "{e}");

    // The same size, other bytes, written in a later second than the loader saw (HTTP
    // dates are whole seconds).
    s.put("m/model.safetensors", &bytes);
    let loader = open();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let mut other = bytes.clone();
    let n = other.len();
    other[n - 1] ^= 0xFF;
    s.put("m/model.safetensors", &other);
    let e = load(&loader, &reqs, &small()).map(|_| ()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Busy, "{e}");
    assert!(e.to_string().contains("modification time differs"), "{e}");
    assert_clean(&e.to_string());
}

/// The model on a server, a proxy in front of it, the model's URL and a loader through the
/// proxy.
fn behind_a_proxy() -> (S3Server, Proxy, String, Loader) {
    let s = S3Server::start();
    s.put_file("m/model.safetensors", &model());
    let p = Proxy::start(s.addr());
    let url = s.url("m/model.safetensors");
    let loader = Loader::open_url(&url, &opts_for(&p.endpoint())).unwrap();
    (s, p, url, loader)
}

#[test]
fn server_errors_and_broken_bodies_are_retried() {
    let (_s, p, _url, loader) = behind_a_proxy();
    let reqs = requests(&loader, None);
    let want = local_bytes(&model(), &reqs);
    for fault in [
        Fault::Status(503),
        Fault::Status(500),
        Fault::Truncate(100),
        Fault::WrongContentRange,
        Fault::WrongContentLength,
        Fault::Close,
    ] {
        p.reset();
        p.inject(fault.clone(), 2);
        let (got, _) = load(&loader, &reqs, &small())
            .unwrap_or_else(|e| panic!("{fault:?} twice was not retried: {e}"));
        assert!(p.faulted() >= 1, "{fault:?} never injected");
        assert!(got == want, "{fault:?}: bytes differ after retries");
    }
}

#[test]
fn persistent_faults_are_reported_with_the_url_and_the_bytes_never_the_secret() {
    let (_s, p, url, loader) = behind_a_proxy();
    let reqs = requests(&loader, None);
    let o = LoadOptions::default().concurrency(1);
    for fault in [
        Fault::Status(503),
        Fault::Truncate(10),
        Fault::WrongContentRange,
    ] {
        p.reset();
        p.inject(fault.clone(), usize::MAX);
        let e = load(&loader, &reqs, &o).unwrap_err();
        let text = e.to_string();
        assert_eq!(e.kind(), ErrorKind::Io, "{fault:?}: {text}");
        assert!(text.contains(&url), "{fault:?}: {text}");
        assert!(text.contains("reading bytes "), "{fault:?}: {text}");
        assert_clean(&text);
        // Each of the loader's attempts (and, for 5xx, the client's own retries inside).
        assert!(text.contains("failed 3 time(s)"), "{fault:?}: {text}");
        eprintln!("{fault:?}: {text}");
    }
    p.clear();
    // Opening through a failing server: the URL, no secret.
    p.inject(Fault::Status(500), usize::MAX);
    let e = Loader::open_url(&url, &opts_for(&p.endpoint())).unwrap_err();
    assert!(e.to_string().contains(&url), "{e}");
    assert_clean(&e.to_string());
}

#[test]
fn missing_objects_and_empty_prefixes_are_not_found_errors() {
    let s = S3Server::start();
    s.put("m/other.bin", b"12345678");
    let opts = opts_for(&s.endpoint());
    for url in [s.url("m/nothere.safetensors"), s.url("m")] {
        let e = Loader::open_url(&url, &opts).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
        assert!(e.to_string().contains(&url), "{e}");
    }
    // A wrong secret: refused, and not echoed.
    let bad = opts
        .clone()
        .with("aws_secret_access_key", "wrong-secret-value-123");
    let e = Loader::open_url(&s.url("m/other.bin"), &bad).unwrap_err();
    assert!(!e.to_string().contains("wrong-secret-value-123"), "{e}");
}

/// `npkio_safetensors_metadata_json` of `path`.
fn metadata_json(path: &str) -> serde_json::Value {
    let c = std::ffi::CString::new(path).unwrap();
    let mut len = 0usize;
    // SAFETY: a NUL-terminated path, no buffer (capacity 0), a writable length.
    let st = unsafe {
        npkio::ffi::npkio_safetensors_metadata_json(c.as_ptr(), std::ptr::null_mut(), 0, &mut len)
    };
    assert_ne!(st as i32, 0, "a document cannot fit in no buffer");
    let mut buf = vec![0u8; len + 1];
    // SAFETY: a buffer of `len + 1` writable bytes.
    let st = unsafe { npkio::ffi::npkio_json_take(buf.as_mut_ptr().cast(), buf.len(), &mut len) };
    assert_eq!(st as i32, 0, "{path}");
    serde_json::from_slice(&buf[..len]).unwrap()
}

/// The C ABI (and `get_safetensors_metadata`) read the environment, as C and Python
/// callers configure it: the only test here that sets it (the others pass their options explicitly, which take precedence).
#[test]
fn the_c_metadata_of_a_url_equals_the_local_one() {
    let s = S3Server::start();
    s.put_file("m/model.safetensors", &model());
    s.put_dir("sh", &sharded_dir());
    for (k, v) in env_for(&s.endpoint()) {
        std::env::set_var(k, v);
    }
    let local = metadata_json(model().to_str().unwrap());
    assert_eq!(metadata_json(&s.url("m/model.safetensors")), local);
    let local = metadata_json(sharded_dir().to_str().unwrap());
    assert_eq!(metadata_json(&s.url("sh")), local);
    assert_eq!(
        metadata_json(&s.url("sh/model.safetensors.index.json")),
        local
    );
    // Tensors without bytes keep their shard and offsets: one ends shard 1, one starts
    // shard 2 (where the tensor before it in checkpoint order is in shard 1).
    let with_empty = tempfile::tempdir().unwrap();
    write_shards_with_empty_tensors(with_empty.path());
    s.put_dir("empty", with_empty.path());
    assert_eq!(
        metadata_json(&s.url("empty")),
        metadata_json(with_empty.path().to_str().unwrap())
    );
    // The Rust reader of headers, shard names included.
    for (url, path) in [
        (s.url("m/model.safetensors"), model()),
        (s.url("sh"), sharded_dir()),
        (s.url("empty"), with_empty.path().to_path_buf()),
    ] {
        assert_eq!(
            npkio::get_safetensors_metadata(&url).unwrap(),
            npkio::get_safetensors_metadata(&path).unwrap(),
            "{url}"
        );
    }
}

/// A sharded checkpoint of two shards in `dir`: shard 1 holds `a` ([2] F32) and
/// `z_empty` ([0]), shard 2 `b_empty` ([0, 3]) and `c` ([3] F32).
fn write_shards_with_empty_tensors(dir: &Path) {
    use safetensors::tensor::TensorView;
    use safetensors::Dtype;
    let (a, c) = ([1u8; 8], [2u8; 12]);
    let shards = [
        (
            "model-00001-of-00002.safetensors",
            vec![
                ("a", TensorView::new(Dtype::F32, vec![2], &a).unwrap()),
                (
                    "z_empty",
                    TensorView::new(Dtype::F32, vec![0], &[]).unwrap(),
                ),
            ],
        ),
        (
            "model-00002-of-00002.safetensors",
            vec![
                (
                    "b_empty",
                    TensorView::new(Dtype::F32, vec![0, 3], &[]).unwrap(),
                ),
                ("c", TensorView::new(Dtype::F32, vec![3], &c).unwrap()),
            ],
        ),
    ];
    let mut weight_map = serde_json::Map::new();
    for (file, tensors) in shards {
        for (name, _) in &tensors {
            weight_map.insert(name.to_string(), file.into());
        }
        safetensors::serialize_to_file(tensors, None, &dir.join(file)).unwrap();
    }
    let index = serde_json::json!({
        "metadata": {"total_size": 20},
        "weight_map": weight_map,
    });
    std::fs::write(
        dir.join("model.safetensors.index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
}

#[test]
fn an_upload_takes_regular_files_only_and_follows_no_link() {
    let s = S3Server::start();
    let opts = opts_for(&s.endpoint());
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("secret"), b"not for upload").unwrap();
    let up = dir.path().join("store");
    std::fs::create_dir(&up).unwrap();
    std::fs::write(up.join("a.bin"), b"data").unwrap();
    let url = s.url("up");
    // A link to a file or to a directory outside: refused before anything is uploaded.
    for target in [outside.path().join("secret"), outside.path().to_path_buf()] {
        let link = up.join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = npkio::remote::upload_dir(&up, &url, None, &opts).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
        assert!(e.to_string().contains("link is not followed"), "{e}");
        assert_eq!(e.path(), Some(link.as_path()), "{e}");
        assert!(
            !npkio::remote::exists(&url, &opts).unwrap(),
            "something was uploaded"
        );
        std::fs::remove_file(&link).unwrap();
    }
    // A FIFO, below the directory or named: an error, never a hang.
    let fifo = up.join("fifo");
    crate::common::mkfifo(&fifo);
    let e = npkio::remote::upload_dir(&up, &url, None, &opts).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{e}");
    let e = npkio::remote::upload_file(&fifo, &s.url("f"), &opts).unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");
    std::fs::remove_file(&fifo).unwrap();
    // Regular files only: uploaded.
    npkio::remote::upload_dir(&up, &url, None, &opts).unwrap();
    let got = s.client().get("up/a.bin", None).unwrap();
    assert_eq!((got.status, &got.body[..]), (200, &b"data"[..]));
}

#[test]
fn a_numpack_prefix_loads_as_the_local_store_does() {
    let s = S3Server::start();
    let p = Proxy::start(s.addr());
    let opts = opts_for(&p.endpoint());
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/numpack-0.7");
    for store in ["basic.npk", "dropped.npk", "segmented.npk", "appended.npk"] {
        let local = fixtures.join(store);
        s.put_dir(store, &local);
        p.reset();
        let loader = Loader::open_url(&s.url(store), &opts).unwrap();
        assert_eq!(loader.container(), npkio::Container::NumPack);
        // One LIST and the small files; no data file is read to open.
        let small_files = std::fs::read_dir(&local)
            .unwrap()
            .filter(|e| {
                let e = e.as_ref().unwrap();
                e.file_type().unwrap().is_file()
                    && !e.file_name().to_string_lossy().ends_with(".npkd")
            })
            .count();
        assert!(
            p.requests() <= 1 + 2 * small_files,
            "{store}: {} requests for {small_files} small files: {:?}",
            p.requests(),
            p.records()
        );
        let mut reqs = requests(&loader, None);
        for t in loader.tensors() {
            if t.shape.first().is_some_and(|&n| n > 1) {
                reqs.push(Request::new(&t.name).shard(0, 1, 2));
            }
        }
        let want = local_bytes(&local, &reqs);
        let (got, _) = load(&loader, &reqs, &small()).unwrap();
        assert!(got == want, "{store}: bytes differ from the local load");
    }
}

#[test]
fn a_strided_shard_is_fetched_in_few_requests() {
    // [64, 4096] F32: rows of 16 KiB; rank 0 of 2 along dimension 1 wants 8 KiB of each,
    // 8 KiB apart: 64 rows in one or two spans, not a GET per row.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wide.safetensors");
    let data: Vec<u8> = (0..64 * 4096 * 4).map(|i| (i % 253) as u8).collect();
    let t = npkio::ArrayInput {
        name: "w",
        dtype: npkio::DType::F32,
        shape: &[64, 4096],
        data: &data,
    };
    npkio::save_safetensors_file(&[t], None, &path, &npkio::Options::default()).unwrap();
    let s = S3Server::start();
    s.put_file("wide.safetensors", &path);
    let p = Proxy::start(s.addr());
    let loader = Loader::open_url(&s.url("wide.safetensors"), &opts_for(&p.endpoint())).unwrap();
    for rank in 0..2 {
        let reqs = [Request::new("w").shard(1, rank, 2)];
        p.reset();
        let (got, _) = load(&loader, &reqs, &LoadOptions::default()).unwrap();
        assert!(got == local_bytes(&path, &reqs), "rank {rank} differs");
        assert!(p.requests() <= 2, "rank {rank}: {:?}", p.records());
    }
}

#[test]
fn a_file_of_several_parts_uploads_whole() {
    let s = S3Server::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.bin");
    // Three parts of 8 MiB, the last one short.
    let data: Vec<u8> = (0..(17usize << 20) + 123)
        .map(|i| (i * 31 + i / 4093) as u8)
        .collect();
    std::fs::write(&path, &data).unwrap();
    let url = s.url("up/big.bin");
    npkio::remote::upload_file(&path, &url, &opts_for(&s.endpoint())).unwrap();
    let got = s.client().get("up/big.bin", None).unwrap();
    assert_eq!(got.status, 200, "{}", got.text());
    assert!(got.body == data, "the uploaded object differs");
    // An empty file is an empty object.
    let empty = dir.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    npkio::remote::upload_file(&empty, &s.url("up/empty"), &opts_for(&s.endpoint())).unwrap();
    assert!(s.client().get("up/empty", None).unwrap().body.is_empty());
    // Without credentials that the server accepts: an error naming the URL, no secret.
    let bad = opts_for(&s.endpoint()).with("aws_secret_access_key", "not-the-secret-9876");
    let e = npkio::remote::upload_file(&path, &s.url("up/x"), &bad).unwrap_err();
    assert!(e.to_string().contains(&s.url("up/x")), "{e}");
    assert!(!e.to_string().contains("not-the-secret-9876"), "{e}");
}
