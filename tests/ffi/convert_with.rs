//! The conversions' `_with` form: an `NpkioConvertOptions` filled by
//! `npkio_convert_options_init`, as `NpkioLoadOptions` is; the same outputs as the first
//! form; progress through a C callback; every copy method; sharding by option; and the
//! misuse a C caller can make of the struct.

use std::ffi::c_void;
use std::mem::{size_of, MaybeUninit};
use std::path::Path;
use std::ptr;
use std::sync::Mutex;

use crate::common::contents::{diff, read_numpack, snapshot, Contents};
use crate::common::{copy_dir, last_message};
use crate::{c, ok};
use npkio::ffi::*;

fn model() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tiny-llama.safetensors")
}

fn defaults() -> NpkioConvertOptions {
    let mut o = MaybeUninit::<NpkioConvertOptions>::uninit();
    // SAFETY: `sizeof o` writable bytes.
    ok(unsafe { npkio_convert_options_init(o.as_mut_ptr(), size_of::<NpkioConvertOptions>()) });
    // SAFETY: filled whole on success.
    unsafe { o.assume_init() }
}

/// What a store holds, or why it cannot be read.
fn store(dir: &Path) -> Contents {
    read_numpack(dir).unwrap()
}

#[test]
fn init_fills_the_defaults_and_the_size_it_knows() {
    let o = defaults();
    assert_eq!(o.struct_size, size_of::<NpkioConvertOptions>());
    assert_eq!(o.chunk_size, NPKIO_DEFAULT_CHUNK_SIZE);
    assert_eq!((o.threads, o.flags, o.method), (0, 0, NPKIO_COPY_AUTO));
    assert_eq!(o.max_shard_size, 0);
    assert!(o.progress.is_none() && o.progress_user.is_null());

    // A newer header's bigger struct: npkio fills what it knows and says so; the rest is
    // left as it was.
    #[repr(C, align(8))]
    struct Bigger([u8; size_of::<NpkioConvertOptions>() + 16]);
    let mut big = Bigger([0xAB; size_of::<NpkioConvertOptions>() + 16]);
    // SAFETY: `sizeof big` writable bytes, aligned for the struct.
    ok(unsafe { npkio_convert_options_init(big.0.as_mut_ptr().cast(), size_of::<Bigger>()) });
    // SAFETY: the first bytes are an NpkioConvertOptions now.
    let filled = unsafe { big.0.as_ptr().cast::<NpkioConvertOptions>().read() };
    assert_eq!(filled.struct_size, size_of::<NpkioConvertOptions>());
    assert!(big.0[size_of::<NpkioConvertOptions>()..]
        .iter()
        .all(|&b| b == 0xAB));

    // Too small (no struct npkio ever declared), or NULL: refused, nothing written.
    let mut small = 0xCDCD_CDCD_CDCD_CDCDu64;
    // SAFETY: 8 writable bytes, aligned for a usize.
    let s = unsafe { npkio_convert_options_init((&mut small as *mut u64).cast(), 8) };
    assert_eq!(s, NpkioStatus::InvalidArgument);
    assert!(
        last_message().contains("npkio_convert_options_init"),
        "{}",
        last_message()
    );
    assert_eq!(small, 0xCDCD_CDCD_CDCD_CDCD);
    // SAFETY: NULL is checked.
    let s =
        unsafe { npkio_convert_options_init(ptr::null_mut(), size_of::<NpkioConvertOptions>()) };
    assert_eq!(s, NpkioStatus::NullArgument);
}

#[test]
fn the_with_form_writes_what_the_first_form_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let src = c(model());
    let (a, b) = (c(tmp.path().join("a.npk")), c(tmp.path().join("b.npk")));
    let back = c(tmp.path().join("back.safetensors"));
    // SAFETY: valid C strings; NULL options are the defaults.
    unsafe {
        ok(npkio_from_safetensors_file(
            src.as_ptr(),
            a.as_ptr(),
            ptr::null(),
            0,
            false,
            NPKIO_DEFAULT_CHUNK_SIZE,
            0,
            0,
        ));
        ok(npkio_from_safetensors_file_with(
            src.as_ptr(),
            b.as_ptr(),
            ptr::null(),
            0,
            false,
            ptr::null(),
        ));
        ok(npkio_to_safetensors_file_with(
            b.as_ptr(),
            back.as_ptr(),
            ptr::null(),
            0,
            ptr::null(),
            ptr::null(),
            0,
            ptr::null(),
        ));
    }
    let (a, b) = (
        store(&tmp.path().join("a.npk")),
        store(&tmp.path().join("b.npk")),
    );
    assert!(a == b, "{}", diff(&b, &a));
    assert!(
        std::fs::read(model()).unwrap()
            == std::fs::read(tmp.path().join("back.safetensors")).unwrap()
    );
}

/// Records `(done, total)` through the caller's pointer, as a C host would.
unsafe extern "C" fn record(user: *mut c_void, done: u64, total: u64) {
    // SAFETY: the test passes a `Mutex<Vec<(u64, u64)>>` that outlives the conversion.
    let seen = unsafe { &*user.cast::<Mutex<Vec<(u64, u64)>>>() };
    seen.lock().unwrap().push((done, total));
}

#[test]
fn progress_comes_through_the_c_callback_in_order_to_the_total() {
    let tmp = tempfile::tempdir().unwrap();
    let src = c(model());
    let npk = c(tmp.path().join("m.npk"));
    let total: u64 = npkio::get_safetensors_metadata(model())
        .unwrap()
        .tensors
        .iter()
        .map(|(_, t)| t.data_offsets.1 - t.data_offsets.0)
        .sum();
    let seen: Mutex<Vec<(u64, u64)>> = Mutex::new(Vec::new());
    let mut o = defaults();
    o.chunk_size = 4096;
    o.threads = 3;
    o.method = NPKIO_COPY_READ_WRITE;
    o.progress = Some(record);
    o.progress_user = (&seen as *const Mutex<Vec<(u64, u64)>>).cast_mut().cast();
    let check = |what: &str| {
        let seen = std::mem::take(&mut *seen.lock().unwrap());
        assert!(!seen.is_empty(), "{what}");
        assert!(seen.windows(2).all(|w| w[0].0 < w[1].0), "{what}: {seen:?}");
        assert_eq!(seen.last(), Some(&(total, total)), "{what}");
    };
    // SAFETY: valid C strings; `o` filled by init; `seen` outlives the calls.
    unsafe {
        ok(npkio_from_safetensors_file_with(
            src.as_ptr(),
            npk.as_ptr(),
            ptr::null(),
            0,
            true,
            &o,
        ));
        check("import");
        let out = c(tmp.path().join("m.safetensors"));
        ok(npkio_to_safetensors_file_with(
            npk.as_ptr(),
            out.as_ptr(),
            ptr::null(),
            0,
            ptr::null(),
            ptr::null(),
            0,
            &o,
        ));
        check("export");
    }

    // Tensors in memory.
    let data = vec![7u8; 300_000];
    let shape = [300_000u64];
    let desc = NpkioTensorDesc {
        name: c"t".as_ptr(),
        dtype: NpkioDtype::U8 as u32,
        ndim: 1,
        shape: shape.as_ptr(),
        data: data.as_ptr().cast(),
        nbytes: data.len(),
    };
    let mem = c(tmp.path().join("mem.npk"));
    // SAFETY: one valid description; `seen` outlives the call.
    ok(unsafe { npkio_from_safetensors_with(&desc, 1, mem.as_ptr(), false, &o) });
    // Cut into chunks of 4096 bytes: many reports.
    let seen = std::mem::take(&mut *seen.lock().unwrap());
    assert!(seen.len() > 10, "{}", seen.len());
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(seen.last(), Some(&(300_000, 300_000)));
}

#[test]
fn every_copy_method_gives_the_same_store_and_a_shard_size_gives_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let src = c(model());
    let mut stores = Vec::new();
    for method in [
        NPKIO_COPY_AUTO,
        NPKIO_COPY_READ_WRITE,
        NPKIO_COPY_COPY_FILE_RANGE,
        NPKIO_COPY_MMAP,
        NPKIO_COPY_MMAP_SOURCE,
    ] {
        let dir = tmp.path().join(format!("m{method}.npk"));
        let mut o = defaults();
        o.method = method;
        o.chunk_size = 0; // the default
                          // SAFETY: valid C strings and options.
        ok(unsafe {
            npkio_from_safetensors_file_with(
                src.as_ptr(),
                c(&dir).as_ptr(),
                ptr::null(),
                0,
                false,
                &o,
            )
        });
        stores.push(store(&dir));
    }
    for s in &stores[1..] {
        assert!(*s == stores[0], "{}", diff(s, &stores[0]));
    }

    // Sharded by option, as by npkio_to_safetensors_file_sharded.
    let npk = tmp.path().join("m0.npk");
    let (by_option, by_function) = (tmp.path().join("opt"), tmp.path().join("fun"));
    let mut o = defaults();
    o.max_shard_size = 100_000;
    // SAFETY: valid C strings and options.
    unsafe {
        ok(npkio_to_safetensors_file_with(
            c(&npk).as_ptr(),
            c(&by_option).as_ptr(),
            ptr::null(),
            0,
            ptr::null(),
            ptr::null(),
            0,
            &o,
        ));
        ok(npkio_to_safetensors_file_sharded(
            c(&npk).as_ptr(),
            c(&by_function).as_ptr(),
            ptr::null(),
            0,
            ptr::null(),
            ptr::null(),
            0,
            100_000,
            NPKIO_DEFAULT_CHUNK_SIZE,
            0,
            0,
        ));
    }
    // The directory itself, two shards or more, and the index.
    let sharded = snapshot(&by_option);
    let names: Vec<_> = sharded.iter().map(|f| &f.0).collect();
    assert!(sharded.len() > 3, "{names:?}");
    assert!(sharded == snapshot(&by_function), "{names:?}");
}

#[test]
fn bad_options_are_refused_before_anything_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let src = c(model());
    let old = tmp.path().join("old.npk");
    // SAFETY: valid C strings.
    ok(unsafe {
        npkio_from_safetensors_file_with(
            src.as_ptr(),
            c(&old).as_ptr(),
            ptr::null(),
            0,
            false,
            ptr::null(),
        )
    });
    let before = store(&old);
    let mut wrong_method = defaults();
    wrong_method.method = 99;
    let mut wrong_flags = defaults();
    wrong_flags.flags = 1 << 9;
    let mut too_small = defaults();
    too_small.struct_size = 4;
    for (o, status, says) in [
        (
            wrong_method,
            NpkioStatus::InvalidArgument,
            "options.method 99",
        ),
        (
            wrong_flags,
            NpkioStatus::InvalidArgument,
            "unknown flag bits 0x200",
        ),
        (
            too_small,
            NpkioStatus::InvalidArgument,
            "options.struct_size is 4",
        ),
    ] {
        // SAFETY: valid C strings and options.
        let s = unsafe {
            npkio_from_safetensors_file_with(
                src.as_ptr(),
                c(&old).as_ptr(),
                ptr::null(),
                0,
                true,
                &o,
            )
        };
        assert_eq!(s, status, "{says}");
        assert!(last_message().contains(says), "{}", last_message());
        let now = store(&old);
        assert!(
            now == before,
            "{says}: the output was touched: {}",
            diff(&now, &before)
        );
    }
    // A copy of the store keeps its bytes when exported with a refused option too.
    let copy = tmp.path().join("copy.npk");
    copy_dir(&old, &copy);
    let out = tmp.path().join("out.safetensors");
    // SAFETY: valid C strings and options.
    let s = unsafe {
        npkio_to_safetensors_file_with(
            c(&copy).as_ptr(),
            c(&out).as_ptr(),
            ptr::null(),
            0,
            ptr::null(),
            ptr::null(),
            0,
            &wrong_method,
        )
    };
    assert_eq!(s, NpkioStatus::InvalidArgument);
    assert!(!out.exists());
}

#[test]
fn null_and_misaligned_arguments_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let src = c(model());
    let out = c(tmp.path().join("o"));
    let o = defaults();
    let named = |status: NpkioStatus, expected: NpkioStatus, arg: &str| {
        assert_eq!(status, expected, "{arg}: {}", last_message());
        assert!(last_message().contains(arg), "{arg}: {}", last_message());
    };
    let n = NpkioStatus::NullArgument;
    // SAFETY: every pointer is NULL or valid; NULLs are checked by npkio.
    unsafe {
        named(
            npkio_from_safetensors_file_with(ptr::null(), out.as_ptr(), ptr::null(), 0, false, &o),
            n,
            "input_path",
        );
        named(
            npkio_from_safetensors_file_with(src.as_ptr(), out.as_ptr(), ptr::null(), 2, false, &o),
            n,
            "keys",
        );
        named(
            npkio_to_safetensors_file_with(
                src.as_ptr(),
                ptr::null(),
                ptr::null(),
                0,
                ptr::null(),
                ptr::null(),
                0,
                &o,
            ),
            n,
            "output_path",
        );
        named(
            npkio_from_safetensors_with(ptr::null(), 1, out.as_ptr(), false, &o),
            n,
            "tensors",
        );
        // Options one byte off their alignment.
        #[repr(C, align(8))]
        struct Room([u8; size_of::<NpkioConvertOptions>() + 8]);
        let mut room = Room([0; size_of::<NpkioConvertOptions>() + 8]);
        let off = room.0.as_mut_ptr().add(1).cast::<NpkioConvertOptions>();
        named(
            npkio_from_safetensors_file_with(
                src.as_ptr(),
                out.as_ptr(),
                ptr::null(),
                0,
                false,
                off,
            ),
            NpkioStatus::InvalidArgument,
            "not aligned",
        );
        named(
            npkio_convert_options_init(off, size_of::<NpkioConvertOptions>()),
            NpkioStatus::InvalidArgument,
            "not aligned",
        );
    }
    assert!(!tmp.path().join("o").exists());
}
