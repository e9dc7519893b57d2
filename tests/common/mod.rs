//! Helpers shared by the integration tests.
#![allow(dead_code)]

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
