//! The loader's C ABI: requests as C structs, every invalid one refused before any write
//! (overlapping destinations included, which safe Rust cannot even express), sinks and
//! progress through C callbacks, and `examples-c/load_tp.c` built and run.

use std::ffi::{c_void, CStr, CString};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::ptr;

use npkio::ffi::*;

fn model() -> CString {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tiny-llama.safetensors");
    CString::new(p.to_str().unwrap()).unwrap()
}

fn open() -> *mut NpkioLoader {
    let mut l = ptr::null_mut();
    // SAFETY: valid C string and out-pointer.
    assert_eq!(
        unsafe { npkio_load_open(model().as_ptr(), &mut l) },
        NpkioStatus::Ok
    );
    l
}

fn message() -> String {
    // SAFETY: npkio returns a valid C string.
    unsafe { CStr::from_ptr(npkio_last_error_message()) }
        .to_string_lossy()
        .into_owned()
}

fn req(name: &CStr, dst: &mut [u8]) -> NpkioLoadRequest {
    NpkioLoadRequest {
        name: name.as_ptr(),
        slice: NPKIO_LOAD_WHOLE,
        dim: 0,
        start: 0,
        end: 0,
        dtype: NPKIO_LOAD_AS_STORED,
        dst: dst.as_mut_ptr().cast(),
        capacity: dst.len(),
    }
}

fn size(l: *const NpkioLoader, r: &NpkioLoadRequest) -> usize {
    let mut n = 0;
    // SAFETY: live handle, valid request and out-pointer.
    assert_eq!(
        unsafe { npkio_load_output_size(l, r, &mut n) },
        NpkioStatus::Ok,
        "{}",
        message()
    );
    n
}

#[test]
fn overlapping_destinations_are_refused_before_any_write() {
    let l = open();
    let name = c"lm_head.weight";
    let mut probe = [0u8; 0];
    let n = size(l, &req(name, &mut probe));
    let mut buf = vec![0x77u8; 2 * n];
    let mut a = req(name, &mut buf[..n]);
    a.capacity = n;
    let mut b = a;
    // SAFETY: inside `buf`.
    b.dst = unsafe { buf.as_mut_ptr().add(n / 2) }.cast();
    let reqs = [a, b];
    // SAFETY: live handle; two requests whose destinations lie in `buf`.
    let s = unsafe { npkio_load_run(l, reqs.as_ptr(), 2, ptr::null(), ptr::null_mut()) };
    assert_eq!(s, NpkioStatus::InvalidArgument);
    assert!(
        message().contains("request 1") && message().contains("overlaps request 0"),
        "{}",
        message()
    );
    assert!(buf.iter().all(|&x| x == 0x77));
    // Adjacent, not overlapping: accepted, and merged into one arena.
    let mut c = a;
    // SAFETY: inside `buf`.
    c.dst = unsafe { buf.as_mut_ptr().add(n) }.cast();
    let reqs = [a, c];
    let mut report = NpkioLoadReport::default();
    // SAFETY: as above.
    let s = unsafe { npkio_load_run(l, reqs.as_ptr(), 2, ptr::null(), &mut report) };
    assert_eq!(s, NpkioStatus::Ok, "{}", message());
    assert_eq!(buf[..n], buf[n..]);
    assert_eq!(report.bytes_out, 2 * n as u64);
    // SAFETY: live handle, freed once.
    unsafe { npkio_load_free(l) };
}

#[test]
fn a_destination_ending_past_the_address_space_is_checked_without_overflow() {
    let l = open();
    let name = c"lm_head.weight";
    let mut probe = [0u8; 0];
    let mut a = req(name, &mut probe);
    // A destination claimed to end past the top of the address space (never written:
    // the other request is invalid, so nothing is).
    a.dst = (usize::MAX - 4095) as *mut c_void;
    a.capacity = usize::MAX;
    let bad = req(c"no.such.tensor", &mut probe);
    let reqs = [a, bad];
    // SAFETY: live handle; the requests are refused before any write.
    let s = unsafe { npkio_load_run(l, reqs.as_ptr(), 2, ptr::null(), ptr::null_mut()) };
    assert_eq!(s, NpkioStatus::InvalidArgument, "{}", message());
    assert!(message().contains("request 1"), "{}", message());
    // SAFETY: live handle, freed once.
    unsafe { npkio_load_free(l) };
}

#[test]
fn malformed_request_fields_are_named() {
    let l = open();
    let name = c"lm_head.weight";
    let mut buf = vec![0x33u8; 1 << 16];
    let good = req(name, &mut buf);
    let cases: Vec<(NpkioLoadRequest, NpkioStatus, &str)> = vec![
        (
            NpkioLoadRequest { slice: 9, ..good },
            NpkioStatus::InvalidArgument,
            "slice 9",
        ),
        (
            NpkioLoadRequest { dtype: 99, ..good },
            NpkioStatus::InvalidArgument,
            "dtype",
        ),
        (
            NpkioLoadRequest { dtype: 5, ..good },
            NpkioStatus::Unsupported,
            "cannot convert",
        ),
        (
            NpkioLoadRequest {
                dst: ptr::null_mut(),
                ..good
            },
            NpkioStatus::InvalidArgument,
            "NULL",
        ),
        (
            NpkioLoadRequest {
                capacity: 5,
                ..good
            },
            NpkioStatus::InvalidArgument,
            "holds 5 bytes",
        ),
        (
            NpkioLoadRequest {
                name: ptr::null(),
                ..good
            },
            NpkioStatus::NullArgument,
            "requests[0].name",
        ),
        (
            NpkioLoadRequest {
                slice: NPKIO_LOAD_SHARD,
                dim: 1,
                start: 3,
                end: 3,
                ..good
            },
            NpkioStatus::InvalidArgument,
            "not a valid shard",
        ),
        (
            NpkioLoadRequest {
                name: c"nope".as_ptr(),
                ..good
            },
            NpkioStatus::InvalidArgument,
            "\"nope\"",
        ),
    ];
    for (r, status, text) in cases {
        // SAFETY: live handle, one request.
        let s = unsafe { npkio_load_run(l, &r, 1, ptr::null(), ptr::null_mut()) };
        assert_eq!(s, status, "{text}: {}", message());
        assert!(message().contains(text), "{text}: {}", message());
        assert!(buf.iter().all(|&x| x == 0x33), "{text}: bytes written");
    }
    let mut opts = NpkioLoadOptions {
        threads: 0,
        method: 0,
        drop_behind: false,
        chunk_size: 0,
        progress: None,
        progress_user: ptr::null_mut(),
        range_size: 0,
        concurrency: 0,
    };
    // SAFETY: valid out-pointer.
    assert_eq!(
        unsafe { npkio_load_options_init(&mut opts) },
        NpkioStatus::Ok
    );
    assert_eq!(opts.chunk_size, 8 << 20);
    opts.method = 7;
    // SAFETY: live handle, one valid request.
    let s = unsafe { npkio_load_run(l, &good, 1, &opts, ptr::null_mut()) };
    assert_eq!(s, NpkioStatus::InvalidArgument);
    // SAFETY: NULL handle.
    let s = unsafe { npkio_load_run(ptr::null(), &good, 1, ptr::null(), ptr::null_mut()) };
    assert_eq!(s, NpkioStatus::NullArgument);
    // SAFETY: live handle, freed once.
    unsafe { npkio_load_free(l) };
    // SAFETY: NULL is a no-op.
    unsafe { npkio_load_free(ptr::null_mut()) };
}

struct Collected {
    out: std::sync::Mutex<Vec<u8>>,
    buffers: Vec<usize>,
}

unsafe extern "C" fn collect(
    user: *mut c_void,
    request: usize,
    offset: u64,
    data: *const u8,
    len: usize,
) -> i32 {
    // SAFETY: `user` is the `Collected` passed below; `data` holds `len` bytes.
    let c = unsafe { &*(user as *const Collected) };
    assert_eq!(request, 0);
    assert!(c.buffers.contains(&(data as usize)));
    let data = unsafe { std::slice::from_raw_parts(data, len) };
    c.out.lock().unwrap()[offset as usize..offset as usize + len].copy_from_slice(data);
    0
}

unsafe extern "C" fn refuse(_: *mut c_void, _: usize, _: u64, _: *const u8, _: usize) -> i32 {
    -1
}

unsafe extern "C" fn count_progress(user: *mut c_void, done: u64, total: u64) {
    // SAFETY: `user` is the `(u64, u64)` passed below; calls are serialized.
    let last = unsafe { &mut *(user as *mut (u64, u64)) };
    assert!(done > last.0 && done <= total);
    *last = (done, total);
}

#[test]
fn sinks_and_progress_through_c_callbacks() {
    let l = open();
    let name = c"model.embed_tokens.weight";
    let mut probe = [0u8; 0];
    let mut r = req(name, &mut probe);
    r.slice = NPKIO_LOAD_RANGE;
    r.dim = 1;
    r.start = 8;
    r.end = 40;
    r.dtype = NpkioDtype::F32 as u32;
    let n = size(l, &r);
    assert_eq!(n, 256 * 32 * 4);
    // Reference through the pointer path, with a progress callback.
    let mut want = vec![0u8; n];
    let mut p = r;
    p.dst = want.as_mut_ptr().cast();
    p.capacity = n;
    let mut last = (0u64, 0u64);
    let mut opts = NpkioLoadOptions {
        threads: 0,
        method: 0,
        drop_behind: false,
        chunk_size: 0,
        progress: None,
        progress_user: ptr::null_mut(),
        range_size: 0,
        concurrency: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { npkio_load_options_init(&mut opts) };
    opts.chunk_size = 4096;
    opts.progress = Some(count_progress);
    opts.progress_user = (&mut last as *mut (u64, u64)).cast();
    // SAFETY: live handle, valid request and options.
    let s = unsafe { npkio_load_run(l, &p, 1, &opts, ptr::null_mut()) };
    assert_eq!(s, NpkioStatus::Ok, "{}", message());
    assert_eq!(last, (n as u64, n as u64));
    // Widening BF16 to F32 sets the low 16 bits to zero.
    assert!(want.chunks(4).all(|c| c[0] == 0 && c[1] == 0));
    // The same through a sink with two caller buffers.
    let mut b1 = vec![0u8; 4096];
    let mut b2 = vec![0u8; 4096];
    let bufs = [b1.as_mut_ptr(), b2.as_mut_ptr()];
    let c = Collected {
        out: std::sync::Mutex::new(vec![0; n]),
        buffers: vec![bufs[0] as usize, bufs[1] as usize],
    };
    let mut report = NpkioLoadReport::default();
    // SAFETY: live handle; buffers of 4096 bytes; `c` outlives the call.
    let s = unsafe {
        npkio_load_run_sink(
            l,
            &r,
            1,
            ptr::null(),
            4096,
            bufs.as_ptr(),
            2,
            Some(collect),
            (&c as *const Collected).cast_mut().cast(),
            &mut report,
        )
    };
    assert_eq!(s, NpkioStatus::Ok, "{}", message());
    assert_eq!(*c.out.lock().unwrap(), want);
    assert!(report.threads <= 2 && report.bytes_out == n as u64);
    // A sink that refuses stops the load with an I/O status naming the tensor.
    // SAFETY: as above.
    let s = unsafe {
        npkio_load_run_sink(
            l,
            &r,
            1,
            ptr::null(),
            4096,
            ptr::null(),
            0,
            Some(refuse),
            ptr::null_mut(),
            ptr::null_mut(),
        )
    };
    assert_eq!(s, NpkioStatus::Io);
    assert!(
        message().contains("returned -1") && message().contains("embed_tokens"),
        "{}",
        message()
    );
    // SAFETY: as above, no sink.
    let s = unsafe {
        npkio_load_run_sink(
            l,
            &r,
            1,
            ptr::null(),
            4096,
            ptr::null(),
            0,
            None,
            ptr::null_mut(),
            ptr::null_mut(),
        )
    };
    assert_eq!(s, NpkioStatus::NullArgument);
    // SAFETY: live handle, freed once.
    unsafe { npkio_load_free(l) };
}

#[test]
fn tensors_are_listed_with_their_shapes() {
    let l = open();
    let mut count = 0;
    // SAFETY: live handle, valid out-pointer.
    assert_eq!(unsafe { npkio_load_count(l, &mut count) }, NpkioStatus::Ok);
    assert_eq!(count, 21);
    let mut v = std::mem::MaybeUninit::<NpkioTensorView>::uninit();
    // SAFETY: valid out-pointer.
    assert_eq!(
        unsafe { npkio_load_tensor(l, 0, v.as_mut_ptr()) },
        NpkioStatus::Ok
    );
    // SAFETY: written on success.
    let v = unsafe { v.assume_init() };
    assert!(v.data.is_null() && v.nbytes > 0 && v.ndim > 0);
    let mut v2 = std::mem::MaybeUninit::<NpkioTensorView>::uninit();
    // SAFETY: valid out-pointer.
    assert_eq!(
        unsafe { npkio_load_tensor(l, 21, v2.as_mut_ptr()) },
        NpkioStatus::IndexOutOfRange
    );
    // SAFETY: live handle, freed once.
    unsafe { npkio_load_free(l) };
}

fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    assert!(
        dir.join("libnpkio.so").exists(),
        "no libnpkio.so in {} (run `cargo build` before `cargo test`)",
        dir.display()
    );
    dir
}

#[test]
fn the_tensor_parallel_c_example_joins_its_halves() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("load_tp");
    let lib = lib_dir();
    let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args([
            "-std=c99",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
            "-O1",
        ])
        .arg(format!("-I{}", root.join("include").display()))
        .arg(root.join("examples-c/load_tp.c"))
        .arg("-o")
        .arg(&exe)
        .arg(format!("-L{}", lib.display()))
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-lnpkio")
        .status()
        .expect("a C compiler (cc)");
    assert!(status.success(), "building load_tp.c failed");
    let out = Command::new(&exe)
        .arg(root.join("examples/tiny-llama.safetensors"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("16 matrices, 0 wrong"), "{text}");
    assert_eq!(text.matches("rows ok, columns ok").count(), 16, "{text}");
}

#[test]
fn file_offsets_are_where_the_tensors_start() {
    let l = open();
    let ck = npkio::Checkpoint::open(model().to_str().unwrap()).unwrap();
    let start = ck.shards()[0].data_start();
    for i in 0..ck.len() {
        let mut off = 0u64;
        // SAFETY: live handle, valid out-pointer.
        assert_eq!(
            unsafe { npkio_load_tensor_file_offset(l, i, &mut off) },
            NpkioStatus::Ok
        );
        let mut v = std::mem::MaybeUninit::<NpkioTensorView>::uninit();
        // SAFETY: valid out-pointer.
        assert_eq!(
            unsafe { npkio_load_tensor(l, i, v.as_mut_ptr()) },
            NpkioStatus::Ok
        );
        // SAFETY: written on success; the name is a C string.
        let name = unsafe { CStr::from_ptr(v.assume_init().name) }
            .to_str()
            .unwrap()
            .to_string();
        let info = ck.infos().find(|t| t.name == name).unwrap();
        assert_eq!(off, start + info.data_offsets.0, "{name}");
    }
    let mut off = 0u64;
    // SAFETY: as above.
    assert_eq!(
        unsafe { npkio_load_tensor_file_offset(l, 99, &mut off) },
        NpkioStatus::IndexOutOfRange
    );
    // SAFETY: live handle, freed once.
    unsafe { npkio_load_free(l) };
    // A segmented NumPack array is not one run.
    let seg =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/numpack-0.7/segmented.npk");
    let loader = npkio::load::Loader::open(&seg).unwrap();
    assert!(loader.tensors().iter().any(|t| t.file_offset().is_none()));
}
