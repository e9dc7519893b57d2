//! The loader against hostile sizes and exhausted resources: NumPack directories whose
//! shapes describe sparse files of exabytes, sizes that would wrap around 2^64, staging far
//! smaller than the tensor, and children run out of threads or address space.

use std::ffi::{CStr, CString};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use npkio::ffi::*;
use npkio::load::{LoadOptions, Loader, Method, Request, Staging};
use npkio::{DType, ErrorKind};

const NPKIO: &str = env!("CARGO_BIN_EXE_npkio");

/// A directory on tmpfs when there is one (sparse files of exabytes fit there), else the
/// system's temporary directory.
fn scratch() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(t) = tempfile::tempdir_in(shm) {
            return t;
        }
    }
    tempfile::tempdir().unwrap()
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// A NumPack directory holding one array `name` of `dtype` and `shape` whose data file is
/// a hole of the length the shape needs (no byte of it is written). `None` when the
/// filesystem cannot hold a file that long.
fn sparse_numpack(dir: &Path, name: &str, dtype: DType, shape: &[u64]) -> Option<PathBuf> {
    let itemsize = u64::from(dtype.bits() / 8);
    let size = shape
        .iter()
        .try_fold(itemsize, |a, &d| a.checked_mul(d))
        .expect("the test's shapes fit in 64 bits");
    let path = dir.join("hostile.npk");
    std::fs::create_dir(&path).unwrap();
    let data_file = format!("data_{name}.npkd");
    let f = std::fs::File::create(path.join(&data_file)).unwrap();
    if f.set_len(size).is_err() {
        return None;
    }
    let mut meta = Vec::new();
    meta.extend_from_slice(b"NPKB");
    meta.extend_from_slice(&1u32.to_le_bytes());
    meta.extend_from_slice(&size.to_le_bytes());
    meta.extend_from_slice(&1u32.to_le_bytes());
    put_str(&mut meta, name);
    meta.extend_from_slice(&(shape.len() as u32).to_le_bytes());
    for d in shape {
        meta.extend_from_slice(&d.to_le_bytes());
    }
    put_str(&mut meta, &data_file);
    meta.extend_from_slice(&1_764_720_000_000_000u64.to_le_bytes());
    meta.extend_from_slice(&size.to_le_bytes());
    meta.push(dtype.storage_code());
    meta.push(0); // compression: none
    meta.extend_from_slice(&0u32.to_le_bytes());
    meta.extend_from_slice(&0u64.to_le_bytes());
    meta.extend_from_slice(&0u64.to_le_bytes());
    meta.push(0); // no block info
    std::fs::write(path.join("metadata.npkm"), meta).unwrap();
    Some(path)
}

/// Every path the size of `req` takes gives `want` bytes exactly: `Loader::output` and
/// the C ABI's `npkio_load_output_size`; a destination of the size a computation wrapping
/// around 2^64 gives (`wrapped` bytes) is refused untouched by `load` and `npkio_load_run`.
fn exact_everywhere(
    path: &Path,
    req: &Request,
    c_req: &NpkioLoadRequest,
    want: u64,
    wrapped: usize,
) {
    let loader = Loader::open(path).unwrap();
    assert_eq!(loader.output(req).unwrap().nbytes, want);
    let mut dst = vec![7u8; wrapped];
    let err = loader
        .load(
            std::slice::from_ref(req),
            &mut [&mut dst[..]],
            &LoadOptions::default(),
        )
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
    assert!(err.to_string().contains(&want.to_string()), "{err}");
    assert!(dst.iter().all(|&b| b == 7));

    let c_path = CString::new(path.to_str().unwrap()).unwrap();
    let mut l = std::ptr::null_mut();
    // SAFETY: a valid C string, request and out-pointers; the handle is freed below.
    unsafe {
        assert_eq!(npkio_load_open(c_path.as_ptr(), &mut l), NpkioStatus::Ok);
        let mut n = 0usize;
        assert_eq!(npkio_load_output_size(l, c_req, &mut n), NpkioStatus::Ok);
        assert_eq!(n as u64, want);
        let mut r = *c_req;
        r.dst = dst.as_mut_ptr().cast();
        r.capacity = dst.len();
        assert_eq!(
            npkio_load_run(l, &r, 1, std::ptr::null(), std::ptr::null_mut()),
            NpkioStatus::InvalidArgument
        );
        let msg = CStr::from_ptr(npkio_last_error_message()).to_string_lossy();
        assert!(msg.contains(&want.to_string()), "{msg}");
        npkio_load_free(l);
    }
    assert!(dst.iter().all(|&b| b == 7));
}

#[test]
fn a_sliced_output_whose_bit_count_passes_2_pow_64_is_exact() {
    let tmp = scratch();
    // 2^47 + 1 rows of 8191 F16 (2.3 EB of file, all hole); columns [0, 4096) as F32 are
    // (2^47 + 1) × 4096 × 4 bytes = 2^61 + 16 KiB, whose count of bits, 2^64 + 128 Ki,
    // wraps to 16 KiB of bytes.
    let Some(path) = sparse_numpack(tmp.path(), "w", DType::F16, &[(1 << 47) + 1, 8191]) else {
        eprintln!("SKIPPED: the filesystem cannot hold a sparse file of 2.3 EB");
        return;
    };
    let name = CString::new("w").unwrap();
    let c_req = NpkioLoadRequest {
        name: name.as_ptr(),
        slice: NPKIO_LOAD_RANGE,
        dim: 1,
        start: 0,
        end: 4096,
        dtype: DType::F32 as _,
        dst: std::ptr::null_mut(),
        capacity: 0,
    };
    let req = Request::new("w").slice(1, 0, 4096).to(DType::F32);
    exact_everywhere(&path, &req, &c_req, (1 << 61) + (16 << 10), 16 << 10);
}

#[test]
fn a_converted_tensor_whose_bit_count_passes_2_pow_64_is_exact() {
    let tmp = scratch();
    // 2^59 + 1 F16 elements (2^60 + 2 bytes of hole): as F32, 2^61 + 4 bytes, a size that
    // fits, though its count of bits does not.
    let n = (1u64 << 59) + 1;
    let Some(path) = sparse_numpack(tmp.path(), "w", DType::F16, &[n]) else {
        eprintln!("SKIPPED: the filesystem cannot hold a sparse file of 1 EB");
        return;
    };
    let name = CString::new("w").unwrap();
    let c_req = NpkioLoadRequest {
        name: name.as_ptr(),
        slice: NPKIO_LOAD_RANGE,
        dim: 0,
        start: 1,
        end: n,
        dtype: DType::F32 as _,
        dst: std::ptr::null_mut(),
        capacity: 0,
    };
    let req = Request::new("w").slice(0, 1, n).to(DType::F32);
    // (2^59) × 32 bits wraps to 0 bytes.
    exact_everywhere(&path, &req, &c_req, (n - 1) * 4, 0);
    let whole = Loader::open(&path).unwrap();
    let out = whole.output(&Request::new("w").to(DType::F32)).unwrap();
    assert_eq!(out.nbytes, n * 4);
}

#[test]
fn cli_load_of_outputs_adding_up_past_2_pow_64_is_refused() {
    let tmp = scratch();
    let Some(path) = sparse_numpack(tmp.path(), "w", DType::U8, &[1 << 62]) else {
        eprintln!("SKIPPED: the filesystem cannot hold a sparse file of 4 EB");
        return;
    };
    // Four times 2^62 bytes: 2^64 together.
    let out = std::process::Command::new(NPKIO)
        .arg("load")
        .arg(&path)
        .args(["--keys", "w", "w", "w", "w"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.contains("do not fit in memory"), "{stderr}");
    assert!(!out.status.success());
}

// ---------------------------------------------------------------------------------------
// Children: this test binary run again, with one test and an environment variable saying
// what to do.

/// Runs test `entry` of this binary as a child with `NPKIO_LIMITS_CHILD=spec`, `prepare`
/// applied to its command; returns its exit code and output.
fn child(entry: &str, spec: &str, prepare: impl FnOnce(&mut Command)) -> (i32, String) {
    let mut c = crate::common::rerun(module_path!(), entry, "NPKIO_LIMITS_CHILD", spec);
    c.env_remove("RUST_BACKTRACE");
    prepare(&mut c);
    let out = c.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn child_spec() -> Option<String> {
    std::env::var("NPKIO_LIMITS_CHILD").ok()
}

/// A SafeTensors file of one U8 tensor `w` holding `data`.
fn write_safetensors(path: &Path, data: &[u8]) {
    let mut h = format!(
        r#"{{"w":{{"dtype":"U8","shape":[{n}],"data_offsets":[0,{n}]}}}}"#,
        n = data.len()
    );
    while h.len() % 8 != 0 {
        h.push(' ');
    }
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(h.as_bytes());
    bytes.extend_from_slice(data);
    std::fs::write(path, bytes).unwrap();
}

/// Leaves this process in a mount namespace of its own without `/proc`; false when that
/// is not permitted (not root).
fn hide_proc() -> bool {
    // SAFETY: plain system calls on constant C strings; the namespace is this process's.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return false;
        }
        let none = c"none";
        if libc::mount(
            none.as_ptr(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ) != 0
        {
            return false;
        }
        if libc::umount2(c"/proc".as_ptr(), libc::MNT_DETACH) != 0 {
            return false;
        }
    }
    !Path::new("/proc/self/fd").exists()
}

#[test]
fn without_proc_o_direct_reads_only_the_file_validated() {
    let entry = "without_proc_o_direct_reads_only_the_file_validated";
    if child_spec().is_none() {
        let (code, text) = child(entry, "run", |_| {});
        if text.contains("SKIPPED") {
            eprintln!("{text}");
            return;
        }
        assert_eq!(code, 0, "{text}");
        assert!(text.contains("CHILD-DONE"), "{text}");
        return;
    }
    // The child: the files first (tempfile may want /proc), then /proc goes.
    let tmp = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = tmp.path().join("model.safetensors");
    let old: Vec<u8> = (0..4u32 << 20).map(|i| (i % 251) as u8).collect();
    let new: Vec<u8> = (0..4u32 << 20).map(|i| (i % 13) as u8 + 100).collect();
    write_safetensors(&path, &old);
    let loader = Loader::open(&path).unwrap();
    if !hide_proc() {
        println!("SKIPPED: cannot unmount /proc in a mount namespace (not root?)");
        return;
    }
    let opts = LoadOptions::default()
        .method(Method::Direct)
        .chunk_size(256 << 10)
        .threads(2);
    let load = |loader: &Loader| {
        let mut dst = vec![0u8; old.len()];
        let r = loader
            .load(&[Request::new("w")], &mut [&mut dst[..]], &opts)
            .unwrap();
        (r, dst)
    };
    // The path still names the file validated: reopened by path, proven the same file.
    let (r, got) = load(&loader);
    assert!(got == old);
    if r.direct_refused {
        println!("SKIPPED: the filesystem refuses O_DIRECT");
        return;
    }
    assert_eq!(r.direct_bytes, old.len() as u64, "{r:?}");
    // Atomically replaced: the path names another file, whose bytes must not be read.
    let next = tmp.path().join("next.safetensors");
    write_safetensors(&next, &new);
    std::fs::rename(&next, &path).unwrap();
    let (r, got) = load(&loader);
    assert!(got == old, "bytes of the replacing file were read");
    assert_eq!(r.direct_bytes, 0, "{r:?}");
    assert!(r.direct_refused, "{r:?}");
    println!("CHILD-DONE");
}

/// The tiny model copied where any user can read it.
fn readable_model(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tiny-llama.safetensors");
    let path = dir.join("model.safetensors");
    std::fs::copy(model, &path).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    path
}

#[test]
fn running_out_of_threads_is_an_io_error() {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        // RLIMIT_NPROC counts all of a user's processes: only a user of its own (root
        // switching to `nobody`) gives a deterministic count.
        eprintln!("SKIPPED: needs root to run the child as a user with no other process");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let model = readable_model(tmp.path());
    for method in ["--buffered", "--direct"] {
        let mut cmd = Command::new(NPKIO);
        cmd.args(["load", "--threads", "4", "--staging", "4096", method])
            .arg(&model)
            .stdin(Stdio::null())
            .env_remove("RUST_BACKTRACE");
        use std::os::unix::process::CommandExt;
        // SAFETY: only setrlimit, setgid and setuid, async-signal-safe, between fork and
        // exec. Two processes for `nobody`: the child itself and no thread more.
        unsafe {
            cmd.pre_exec(|| {
                let lim = libc::rlimit {
                    rlim_cur: 2,
                    rlim_max: 2,
                };
                if libc::setrlimit(libc::RLIMIT_NPROC, &lim) != 0
                    || libc::setgid(65534) != 0
                    || libc::setuid(65534) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!stderr.contains("panicked"), "{method}: {stderr}");
        // The first worker thread may start; the second cannot.
        assert_eq!(out.status.code(), Some(3), "{method}: {stderr}");
        assert!(stderr.contains("worker thread"), "{method}: {stderr}");
        assert!(stderr.contains("model.safetensors"), "{method}: {stderr}");
    }
}

/// This process's virtual size, from `/proc/self/status`.
fn vm_size() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmSize:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb << 10)
}

#[test]
fn staging_that_cannot_be_mapped_is_an_io_error() {
    let entry = "staging_that_cannot_be_mapped_is_an_io_error";
    let tmp = scratch();
    // 1 TiB of hole, loaded through staging of 1 TiB: the buffer cannot be mapped under
    // the limit.
    let Some(path) = sparse_numpack(tmp.path(), "w", DType::U8, &[1 << 40]) else {
        eprintln!("SKIPPED: the filesystem cannot hold a sparse file of 1 TiB");
        return;
    };
    if child_spec().is_none() {
        let (code, text) = child(entry, path.to_str().unwrap(), |_| {});
        assert_eq!(code, 0, "{text}");
        assert!(text.contains("CHILD-DONE"), "{text}");
        return;
    }
    let path = PathBuf::from(child_spec().unwrap());
    let loader = Loader::open(&path).unwrap();
    // Room for this process and its threads, not for the staging.
    let limit = vm_size().unwrap() + (1 << 30);
    let lim = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: a valid rlimit; the limit is this child's.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &lim) }, 0);
    for (threads, method) in [(1, Method::Buffered), (2, Method::Direct)] {
        let opts = LoadOptions::default()
            .threads(threads)
            .method(method)
            .chunk_size(1 << 40);
        let sink = |_: usize, _: u64, _: &[u8]| -> Result<(), String> { Ok(()) };
        let err = loader
            .load_to_sink(&[Request::new("w")], Staging::Size(1 << 40), &sink, &opts)
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Io, "{err}");
        assert!(err.to_string().contains("cannot map"), "{err}");
    }
    println!("CHILD-DONE");
}

#[test]
fn the_plan_of_a_sink_load_does_not_grow_with_the_tensor() {
    let entry = "the_plan_of_a_sink_load_does_not_grow_with_the_tensor";
    let tmp = scratch();
    // 1 PiB, 8 TiB and 2 PiB of hole: through 4096-byte staging, 2^38, 2^40 and 2^35
    // chunks; the plan must not hold one entry per chunk. The sink stops each load after
    // a few chunks.
    let cases: [(&str, &[u64]); 3] = [
        ("whole", &[1 << 50]),
        ("short", &[1 << 30, 8192]),
        ("long", &[1 << 34, 131072]),
    ];
    if child_spec().is_none() {
        let mut paths = Vec::new();
        for (name, shape) in cases {
            let dir = tmp.path().join(name);
            std::fs::create_dir(&dir).unwrap();
            let Some(p) = sparse_numpack(&dir, "w", DType::U8, shape) else {
                eprintln!("SKIPPED: the filesystem cannot hold sparse files of petabytes");
                return;
            };
            paths.push(p.to_str().unwrap().to_string());
        }
        let (code, text) = child(entry, &paths.join("\n"), |_| {});
        assert_eq!(code, 0, "{text}");
        assert!(text.contains("CHILD-DONE"), "{text}");
        return;
    }
    let spec = child_spec().unwrap();
    let paths: Vec<&str> = spec.lines().collect();
    // Room for this process, its threads and their staging; none for a plan of 2^35
    // entries or more.
    let limit = vm_size().unwrap() + (256 << 20);
    let lim = libc::rlimit {
        rlim_cur: limit,
        rlim_max: limit,
    };
    // SAFETY: a valid rlimit; the limit is this child's.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &lim) }, 0);
    let reqs = [
        Request::new("w"),
        Request::new("w").slice(1, 0, 4096),
        Request::new("w").slice(1, 0, 65536),
    ];
    for (path, req) in paths.iter().zip(reqs) {
        let loader = Loader::open(path).unwrap();
        let calls = std::sync::atomic::AtomicU64::new(0);
        let sink = |_: usize, _: u64, data: &[u8]| -> Result<(), String> {
            assert!(data.len() <= 4096);
            if calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed) >= 100 {
                return Err("enough".into());
            }
            Ok(())
        };
        let opts = LoadOptions::default().threads(2).method(Method::Buffered);
        let err = loader
            .load_to_sink(
                std::slice::from_ref(&req),
                Staging::Size(4096),
                &sink,
                &opts,
            )
            .unwrap_err();
        assert!(err.to_string().contains("enough"), "{req:?}: {err}");
    }
    println!("CHILD-DONE");
}

#[test]
fn cli_load_into_more_memory_than_there_is_is_an_io_error() {
    let tmp = scratch();
    let Some(path) = sparse_numpack(tmp.path(), "w", DType::U8, &[4 << 30]) else {
        eprintln!("SKIPPED: the filesystem cannot hold a sparse file of 4 GiB");
        return;
    };
    let run = |limit: u64, args: &[&std::ffi::OsStr]| {
        let mut cmd = Command::new(NPKIO);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .env_remove("RUST_BACKTRACE");
        crate::common::limit_child(&mut cmd, libc::RLIMIT_AS, limit);
        let out = cmd.output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The smallest limit under which the binary starts, plus room to open the store.
    let base = [48u64, 64, 96, 128, 192, 256]
        .into_iter()
        .map(|mb| mb << 20)
        .find(|&l| run(l, &["--version".as_ref()]).0 == 0)
        .expect("the binary starts under 256 MiB of address space");
    let (code, stderr) = run(base + (128 << 20), &["load".as_ref(), path.as_os_str()]);
    // 4 GiB of destination cannot be had: an I/O error naming the store, not an abort.
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("hostile.npk"), "{stderr}");
}
