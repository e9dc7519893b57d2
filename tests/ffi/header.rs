//! The header drift test: `include/npkio.h` must be exactly what cbindgen generates from
//! `src/ffi/` and `cbindgen.toml`, plus the version macros below. Regenerate with
//! `NPKIO_BLESS=1 cargo test --test ffi header::`.
//!
//! The version is written in one place, `Cargo.toml`. cbindgen reads only literal values, so
//! the `NPKIO_VERSION_*` macros are made here from the crate's version and put after the
//! header's includes: a version bump makes the committed header stale until regenerated.

use crate::common::copy_dir;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `NPKIO_VERSION_*` macros for the crate's version.
fn version_macros() -> String {
    format!(
        "\n/**\n * The version of npkio this header belongs to (its Cargo.toml version); \
         npkio_version()\n * returns the same string at run time.\n */\n\
         #define NPKIO_VERSION_MAJOR {}\n#define NPKIO_VERSION_MINOR {}\n\
         #define NPKIO_VERSION_PATCH {}\n#define NPKIO_VERSION_STRING \"{}\"",
        env!("CARGO_PKG_VERSION_MAJOR"),
        env!("CARGO_PKG_VERSION_MINOR"),
        env!("CARGO_PKG_VERSION_PATCH"),
        env!("CARGO_PKG_VERSION"),
    )
}

fn generate(crate_dir: &Path) -> String {
    let mut config =
        cbindgen::Config::from_file(root().join("cbindgen.toml")).expect("cbindgen.toml");
    assert!(
        config.after_includes.is_none(),
        "cbindgen.toml sets after_includes; the version macros would replace it"
    );
    config.after_includes = Some(version_macros());
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_src(crate_dir.join("src/ffi/mod.rs"))
        .generate()
        .expect("cbindgen generates the header");
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).expect("UTF-8 header")
}

#[test]
fn header_matches_the_source() {
    let header = root().join("include/npkio.h");
    let fresh = generate(&root());
    if std::env::var_os("NPKIO_BLESS").is_some_and(|v| v == "1") {
        std::fs::write(&header, &fresh).expect("writing include/npkio.h");
        return;
    }
    let committed = std::fs::read_to_string(&header).unwrap_or_default();
    if committed != fresh {
        let line = committed
            .lines()
            .zip(fresh.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(committed.lines().count().min(fresh.lines().count()));
        panic!(
            "include/npkio.h is stale (first difference at line {}); regenerate it with \
             `NPKIO_BLESS=1 cargo test --test ffi header::` and commit it",
            line + 1
        );
    }
}

#[test]
fn the_header_states_the_crate_version() {
    let header = generate(&root());
    let version = |what: &str| {
        let prefix = format!("#define NPKIO_VERSION_{what} ");
        let line = header.lines().find(|l| l.starts_with(&prefix)).unwrap();
        line[prefix.len()..].to_string()
    };
    let numbers = [version("MAJOR"), version("MINOR"), version("PATCH")].join(".");
    let string = version("STRING");
    assert_eq!(string, format!("\"{}\"", env!("CARGO_PKG_VERSION")));
    // Without a pre-release or build suffix the three numbers are the whole version.
    assert!(env!("CARGO_PKG_VERSION").starts_with(&numbers));
    // SAFETY: npkio_version returns a static NUL-terminated string.
    let runtime = unsafe { std::ffi::CStr::from_ptr(npkio::ffi::npkio_version()) };
    assert_eq!(format!("\"{}\"", runtime.to_str().unwrap()), string);
}

/// The drift check itself: a copy of the crate with one exported signature changed must
/// generate a different header, so the test above would fail.
#[test]
fn a_changed_signature_changes_the_header() {
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&root().join("src"), &tmp.path().join("src"));
    let f = tmp.path().join("src/ffi/numpack.rs");
    let text = std::fs::read_to_string(&f).unwrap();
    let changed = text.replacen(
        "    durable: bool,\n) -> NpkioStatus",
        "    durable: u32,\n) -> NpkioStatus",
        1,
    );
    assert_ne!(text, changed, "the signature to change was not found");
    std::fs::write(&f, changed).unwrap();
    let committed = generate(&root());
    let drifted = generate(tmp.path());
    assert_ne!(committed, drifted);
    assert!(drifted.contains("uint32_t durable"));
}
