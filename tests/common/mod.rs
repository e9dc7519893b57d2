//! Helpers shared by the integration tests: every area's `main.rs` includes this module.
#![allow(dead_code)]

pub mod contents;

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn expected(kind: &str) -> serde_json::Value {
    let p = fixtures().join(kind).join("expected.json");
    serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
}

pub fn shape_of(v: &serde_json::Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap())
        .collect()
}

pub const ALL: Option<&[&str]> = None;

/// Whether `strace` can be used. Without it, fails when the environment variable `CI` is
/// set (`scripts/test.sh` installs it) and otherwise says that `test` is skipped.
pub fn have_strace(test: &str) -> bool {
    let ok = std::process::Command::new("strace")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test}: strace is missing (scripts/test.sh installs it)"
        );
        eprintln!("{test}: SKIPPED: strace is not installed (apt-get install strace)");
    }
    ok
}

/// Makes `cmd`'s process start with both limits of `resource` (`libc::RLIMIT_*`) at
/// `limit`, so that it cannot raise the soft one.
pub fn limit_child(
    cmd: &mut std::process::Command,
    resource: libc::__rlimit_resource_t,
    limit: u64,
) {
    use std::os::unix::process::CommandExt;
    // SAFETY: only setrlimit, async-signal-safe, runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            if libc::setrlimit(resource, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Asserts that this process runs with both limits of `resource` at `limit` (as
/// [`limit_child`] starts a child).
pub fn assert_limit(resource: libc::__rlimit_resource_t, limit: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid out pointer.
    assert_eq!(unsafe { libc::getrlimit(resource, &mut lim) }, 0);
    assert_eq!((lim.rlim_cur, lim.rlim_max), (limit, limit));
}

/// A file or directory under `tests/fixtures`.
pub fn fixture(rel: &str) -> PathBuf {
    fixtures().join(rel)
}

/// Copies the directory tree `from` to `to` (created if missing).
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

/// The calling thread's last error message from the C API.
pub fn last_message() -> String {
    // SAFETY: never NULL, valid until the next status-returning call on this thread.
    unsafe { std::ffi::CStr::from_ptr(npkio::ffi::npkio_last_error_message()) }
        .to_string_lossy()
        .into_owned()
}

/// Tensors by name.
pub type Tensors = std::collections::BTreeMap<String, Vec<u8>>;

/// U8 tensors from `(name, seed, length)`: bytes that differ with the seed and the offset.
pub fn tensors(spec: &[(&str, u8, usize)]) -> Tensors {
    spec.iter()
        .map(|&(n, seed, len)| {
            let bytes = (0..len)
                .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
                .collect();
            (n.to_string(), bytes)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// Children: this test binary run again, with one test and an environment variable saying
// what to do.

/// The name the test harness gives the test `name` of module `module` (`module_path!()`):
/// the module's path without the crate's name, then the test's.
pub fn test_name(module: &str, name: &str) -> String {
    match module.split_once("::") {
        Some((_, path)) => format!("{path}::{name}"),
        None => name.to_string(),
    }
}

/// A command that runs this test binary again with only the test `name` of module `module`
/// (`module_path!()`) and `env_var` set to `value`: the test, finding it set, does the
/// child's part. Its stdin is closed; what it prints comes back with `--nocapture`.
pub fn rerun(
    module: &str,
    name: &str,
    env_var: &str,
    value: impl AsRef<std::ffi::OsStr>,
) -> std::process::Command {
    let mut c = std::process::Command::new(std::env::current_exe().unwrap());
    c.args([
        "--exact",
        &test_name(module, name),
        "--nocapture",
        "--test-threads=1",
    ])
    .env(env_var, value)
    .stdin(std::process::Stdio::null());
    c
}

/// Runs `cmd`, a child made by [`rerun`], and asserts that it ran its one test and passed
/// (a test binary given a filter that matches nothing passes too); returns its output.
pub fn child_passes(cmd: &mut std::process::Command, what: &str) -> std::process::Output {
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{what}: the child failed or ran no test:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The directory holding the `libnpkio.so` that cargo built for this test run.
pub fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap().to_path_buf(); // target/<profile>
    assert!(
        dir.join("libnpkio.so").exists(),
        "no libnpkio.so beside the test binary in {} (run `cargo build` before `cargo test`)",
        dir.display()
    );
    dir
}

/// Writes `t` (U8 vectors) into the NumPack directory `path`, merging unless
/// `drop_if_exists`.
pub fn write_npk(path: &Path, t: &Tensors, drop_if_exists: bool) -> npkio::Result<()> {
    write_npk_with(path, t, drop_if_exists, &npkio::Options::default())
}

/// [`write_npk`] with the conversion's options.
pub fn write_npk_with(
    path: &Path,
    t: &Tensors,
    drop_if_exists: bool,
    opts: &npkio::Options,
) -> npkio::Result<()> {
    let shapes: Vec<[u64; 1]> = t.values().map(|v| [v.len() as u64]).collect();
    let inputs: Vec<npkio::ArrayInput<'_>> = t
        .iter()
        .zip(&shapes)
        .map(|((name, data), shape)| npkio::ArrayInput {
            name,
            dtype: npkio::DType::U8,
            shape,
            data,
        })
        .collect();
    npkio::from_safetensors_with(&inputs, path, drop_if_exists, opts)
}

/// Writes `t` (U8 vectors) as the SafeTensors file `path`.
pub fn write_st(path: &Path, t: &Tensors) {
    let dir = tempfile::tempdir().unwrap();
    let npk = dir.path().join("t.npk");
    write_npk(&npk, t, false).unwrap();
    npkio::to_safetensors_file(&npk, path, None::<&[&str]>, None, 1 << 20).unwrap();
}

/// The arrays of the NumPack directory `path`, by name.
pub fn read_npk(path: &Path) -> Result<Tensors, String> {
    let s = npkio::NumPack::open(path).map_err(|e| e.to_string())?;
    let mut out = Tensors::new();
    for n in s.names() {
        let v = s.view(n).map_err(|e| e.to_string())?;
        out.insert(n.to_string(), v.data.to_vec());
    }
    Ok(out)
}

/// Builds the C program `examples-c/<name>.c` into `dir/<name>` against the library and
/// header of this checkout, strictly (C99, every warning an error); returns its path.
pub fn build_c_example(name: &str, dir: &Path) -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let exe = dir.join(name);
    let lib = lib_dir();
    let status = std::process::Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args([
            "-std=c99",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-pedantic",
            "-O1",
        ])
        .arg(format!("-I{}", root.join("include").display()))
        .arg(root.join(format!("examples-c/{name}.c")))
        .arg("-o")
        .arg(&exe)
        .arg(format!("-L{}", lib.display()))
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-lnpkio")
        .status()
        .expect("a C compiler (cc)");
    assert!(status.success(), "building {name}.c failed");
    exe
}

/// Makes a FIFO at `path` (replacing whatever is there).
pub fn mkfifo(path: &Path) {
    let _ = std::fs::remove_file(path);
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid path string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0, "{path:?}");
}
