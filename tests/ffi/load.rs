//! The loader's C ABI: requests as C structs, every invalid one refused before any write
//! (overlapping destinations included, which safe Rust cannot even express), sinks and
//! progress through C callbacks, and `examples-c/load_tp.c` built and run.

use std::ffi::{c_void, CStr, CString};
use std::path::Path;
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
        struct_size: 0,
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
        unsafe { npkio_load_options_init(&mut opts, std::mem::size_of::<NpkioLoadOptions>()) },
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
        struct_size: 0,
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
    unsafe { npkio_load_options_init(&mut opts, std::mem::size_of::<NpkioLoadOptions>()) };
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
        unsafe { npkio_load_get(l, 0, v.as_mut_ptr()) },
        NpkioStatus::Ok
    );
    // SAFETY: written on success.
    let v = unsafe { v.assume_init() };
    assert!(v.data.is_null() && v.nbytes > 0 && v.ndim > 0);
    let mut v2 = std::mem::MaybeUninit::<NpkioTensorView>::uninit();
    // SAFETY: valid out-pointer.
    assert_eq!(
        unsafe { npkio_load_get(l, 21, v2.as_mut_ptr()) },
        NpkioStatus::IndexOutOfRange
    );
    // SAFETY: live handle, freed once.
    unsafe { npkio_load_free(l) };
}

/// The loader lists as the other handles do: `_count`, `_get` by position and `_find` by
/// name, with the same statuses; `npkio_load_tensor`, its first name, is `_get`.
#[test]
fn tensors_are_found_by_name_as_in_every_other_list() {
    let l = open();
    let view = |f: &dyn Fn(*mut NpkioTensorView) -> NpkioStatus| {
        let mut v = std::mem::MaybeUninit::<NpkioTensorView>::uninit();
        let status = f(v.as_mut_ptr());
        // SAFETY: written on success.
        (status == NpkioStatus::Ok).then(|| unsafe { v.assume_init() })
    };
    let describe = |v: &NpkioTensorView| {
        // SAFETY: the view's pointers are the live handle's; `shape` has `ndim` entries.
        unsafe {
            (
                CStr::from_ptr(v.name).to_owned(),
                v.name_len,
                v.dtype,
                std::slice::from_raw_parts(v.shape, v.ndim).to_vec(),
                v.nbytes,
                v.data.is_null(),
            )
        }
    };
    for i in 0..21 {
        // SAFETY: live handle, valid out-pointers, NUL-terminated names.
        let got = view(&|v| unsafe { npkio_load_get(l, i, v) }).unwrap();
        let old = view(&|v| unsafe { npkio_load_tensor(l, i, v) }).unwrap();
        let name = describe(&got).0;
        let index = std::cell::Cell::new(usize::MAX);
        let found =
            view(&|v| unsafe { npkio_load_find(l, name.as_ptr(), v, index.as_ptr()) }).unwrap();
        assert_eq!(index.get(), i, "{name:?}");
        assert_eq!(describe(&found), describe(&got), "{name:?}");
        assert_eq!(describe(&old), describe(&got), "{name:?}");
        // The index is optional.
        let found =
            view(&|v| unsafe { npkio_load_find(l, name.as_ptr(), v, std::ptr::null_mut()) });
        assert!(found.is_some(), "{name:?}");
    }
    let mut v = std::mem::MaybeUninit::<NpkioTensorView>::uninit();
    let mut index = 7usize;
    // SAFETY: live handle, valid out-pointers.
    let s = unsafe { npkio_load_find(l, c"lm_head.weigh".as_ptr(), v.as_mut_ptr(), &mut index) };
    assert_eq!(s, NpkioStatus::KeyNotFound);
    let msg = crate::common::last_message();
    assert!(
        msg.contains("lm_head.weigh") && msg.contains("tiny-llama.safetensors"),
        "{msg}"
    );
    assert_eq!(index, 7, "nothing written on failure");
    // SAFETY: NULL name.
    let s = unsafe { npkio_load_find(l, std::ptr::null(), v.as_mut_ptr(), &mut index) };
    assert_eq!(s, NpkioStatus::NullArgument);
    // SAFETY: NULL handle.
    let s = unsafe { npkio_load_find(std::ptr::null(), c"x".as_ptr(), v.as_mut_ptr(), &mut index) };
    assert_eq!(s, NpkioStatus::NullArgument);
    // SAFETY: live handle, freed once.
    unsafe { npkio_load_free(l) };
}

#[test]
fn the_tensor_parallel_c_example_joins_its_halves() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tmp = tempfile::tempdir().unwrap();
    let exe = crate::common::build_c_example("load_tp", tmp.path());
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
            unsafe { npkio_load_get(l, i, v.as_mut_ptr()) },
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

/// The shape the library gives for a request, or the status and `ndim` it reports.
fn output_shape(
    l: *const NpkioLoader,
    r: &NpkioLoadRequest,
    capacity: usize,
) -> (NpkioStatus, usize, Vec<u64>) {
    let mut dims = vec![u64::MAX; capacity];
    let mut ndim = usize::MAX;
    // SAFETY: live handle, valid request, `capacity` writable u64s and an out-pointer.
    let st = unsafe { npkio_load_output_shape(l, r, dims.as_mut_ptr(), capacity, &mut ndim) };
    (st, ndim, dims)
}

#[test]
fn output_shapes_come_from_the_library() {
    let l = open();
    let mut none = [0u8; 0];
    // down_proj is [64, 172]: 172 columns split over 3 ranks are 58, 57, 57.
    let name = c"model.layers.0.mlp.down_proj.weight";
    let whole = req(name, &mut none);
    assert_eq!(
        output_shape(l, &whole, 2),
        (NpkioStatus::Ok, 2, vec![64, 172])
    );
    for (rank, cols) in [(0, 58), (1, 57), (2, 57)] {
        let mut r = whole;
        (r.slice, r.dim, r.start, r.end) = (NPKIO_LOAD_SHARD, 1, rank, 3);
        assert_eq!(
            output_shape(l, &r, 4),
            (NpkioStatus::Ok, 2, vec![64, cols, u64::MAX, u64::MAX])
        );
        assert_eq!(size(l, &r), 64 * cols as usize * 2);
    }
    let mut range = whole;
    (range.slice, range.dim, range.start, range.end) = (NPKIO_LOAD_RANGE, 0, 10, 30);
    assert_eq!(
        output_shape(l, &range, 2),
        (NpkioStatus::Ok, 2, vec![20, 172])
    );
    // Too small a buffer: the rank is said, nothing else written.
    assert_eq!(
        output_shape(l, &range, 1),
        (NpkioStatus::BufferTooSmall, 2, vec![u64::MAX])
    );
    // An invalid request fails as a load would, and writes nothing.
    let mut bad = whole;
    (bad.slice, bad.dim, bad.start, bad.end) = (NPKIO_LOAD_RANGE, 2, 0, 1);
    let (st, ndim, dims) = output_shape(l, &bad, 2);
    assert_eq!(st, NpkioStatus::InvalidArgument, "{}", message());
    assert_eq!((ndim, dims), (usize::MAX, vec![u64::MAX; 2]));
    // SAFETY: the handle is live and freed once.
    unsafe { npkio_load_free(l) };
}

/// `NpkioLoadOptions` carries its size: npkio writes and reads no more of a caller's struct
/// than the caller declared, and refuses one smaller than its first version's.
#[test]
fn load_options_carry_their_size() {
    const N: usize = std::mem::size_of::<NpkioLoadOptions>();
    #[repr(C, align(8))]
    struct Bigger([u8; N + 16]);
    // A header newer than the library: npkio fills what it knows and says how much.
    let mut big = Bigger([0xAB; N + 16]);
    let p: *mut NpkioLoadOptions = big.0.as_mut_ptr().cast();
    // SAFETY: `big` holds N + 16 writable, aligned bytes.
    assert_eq!(
        unsafe { npkio_load_options_init(p, N + 16) },
        NpkioStatus::Ok
    );
    // SAFETY: initialised by npkio just above.
    let o = unsafe { p.read() };
    assert_eq!((o.struct_size, o.chunk_size, o.threads), (N, 8 << 20, 0));
    assert!(
        big.0[N..].iter().all(|&b| b == 0xAB),
        "wrote past its own struct"
    );
    // Too small: refused, nothing written.
    let mut small = Bigger([0xCD; N + 16]);
    // SAFETY: as above.
    let s = unsafe { npkio_load_options_init(small.0.as_mut_ptr().cast(), N - 1) };
    assert_eq!(s, NpkioStatus::InvalidArgument);
    assert!(
        message().contains("npkio_load_options_init"),
        "{}",
        message()
    );
    assert!(
        small.0.iter().all(|&b| b == 0xCD),
        "wrote into a refused struct"
    );
    // A load given options whose size was never set is refused before anything is read.
    let l = open();
    let name = c"model.norm.weight";
    let mut probe = [0u8; 0];
    let mut dst = vec![0x5Au8; size(l, &req(name, &mut probe))];
    let r = req(name, &mut dst);
    let mut unset = o;
    unset.struct_size = 0;
    // SAFETY: live handle, one valid request, readable options.
    let s = unsafe { npkio_load_run(l, &r, 1, &unset, ptr::null_mut()) };
    assert_eq!(s, NpkioStatus::InvalidArgument);
    assert!(
        message().contains("options.struct_size is 0"),
        "{}",
        message()
    );
    assert!(dst.iter().all(|&b| b == 0x5A), "bytes written");
    // The options npkio filled load.
    // SAFETY: as above.
    let s = unsafe { npkio_load_run(l, &r, 1, &o, ptr::null_mut()) };
    assert_eq!(s, NpkioStatus::Ok, "{}", message());
    assert!(dst.iter().any(|&b| b != 0x5A));
    // SAFETY: live handle, freed once.
    unsafe { npkio_load_free(l) };
}
