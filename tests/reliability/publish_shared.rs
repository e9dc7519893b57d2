//! Outputs in shared and hostile directories: the lock leaves nothing beside the output and
//! lets a second user convert after the first; no-clobber is decided under the lock; staging
//! names npkio did not make are never followed or deleted; long output names work; an output
//! that is, holds or lies inside the input is refused; permissions of a replaced or merged
//! output are kept; a merge keeps the symbolic links the reader follows.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::{read_npk, tensors, write_npk, write_st, Tensors};
use npkio::{ErrorKind, Options};

mod permissions;

const NPKIO: &str = env!("CARGO_BIN_EXE_npkio");

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn cli(args: &[&Path]) -> Output {
    Command::new(NPKIO).args(args).output().unwrap()
}

fn p(s: &str) -> &Path {
    Path::new(s)
}

fn mode(path: &Path) -> u32 {
    fs::symlink_metadata(path).unwrap().mode() & 0o7777
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A temporary directory others may traverse (tempfile makes 0700 ones).
fn open_tempdir() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    fs::set_permissions(t.path(), fs::Permissions::from_mode(0o755)).unwrap();
    t
}

#[test]
fn conversions_leave_nothing_beside_their_outputs_whether_they_succeed_or_fail() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let src_dir = d.join("src");
    fs::create_dir(&src_dir).unwrap();
    let st = src_dir.join("a.safetensors");
    write_st(&st, &tensors(&[("a", 1, 50), ("b", 2, 70)]));
    let bad = src_dir.join("bad.safetensors");
    fs::write(&bad, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......").unwrap();
    let work = d.join("work");
    fs::create_dir(&work).unwrap();
    let npk = work.join("m.npk");
    let st_out = work.join("o.safetensors");
    let ckpt = work.join("ckpt");
    let busy = fs::File::open(&work).unwrap();
    let inside = npk.join("metadata.npkm");
    let missing = work.join("missing/x.npk");
    let runs: Vec<(Vec<&Path>, bool)> = vec![
        (vec![p("convert"), &st, &npk], true),
        (vec![p("convert"), &st, &npk], true),
        (vec![p("convert"), &st, &npk, p("--force")], true),
        (vec![p("convert"), &npk, &st_out], true),
        (vec![p("convert"), &npk, &st_out], false), // exists, no --force
        (vec![p("convert"), &npk, &st_out, p("--force")], true),
        (
            vec![p("convert"), &npk, &ckpt, p("--max-shard-size"), p("60")],
            true,
        ),
        (
            vec![
                p("convert"),
                &npk,
                &ckpt,
                p("--max-shard-size"),
                p("60"),
                p("--force"),
            ],
            true,
        ),
        (vec![p("convert"), &bad, &npk], false),
        (vec![p("convert"), &st, &npk, p("--keys"), p("nope")], false),
        (vec![p("convert"), &npk, &inside, p("--force")], false),
        (vec![p("convert"), &st, &missing], false),
    ];
    let want = |after: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = after.iter().map(|s| s.to_string()).collect();
        v.sort();
        v
    };
    for (args, ok) in &runs {
        let o = cli(args);
        assert_eq!(o.status.success(), *ok, "{args:?}: {o:?}");
        let expected: Vec<&str> = ["m.npk", "o.safetensors", "ckpt"]
            .into_iter()
            .filter(|n| work.join(n).exists())
            .collect();
        assert_eq!(names(&work), want(&expected), "{args:?}");
    }
    // Failing fast on a busy directory leaves nothing either.
    use std::os::unix::io::AsRawFd;
    // SAFETY: flock on a descriptor we own.
    assert_eq!(unsafe { libc::flock(busy.as_raw_fd(), libc::LOCK_EX) }, 0);
    let o = cli(&[p("convert"), p("--no-wait"), &st, &work.join("new.npk")]);
    assert_eq!(o.status.code(), Some(10), "{o:?}");
    drop(busy);
    assert_eq!(names(&work), want(&["ckpt", "m.npk", "o.safetensors"]));
    // Inside the NumPack directory and the checkpoint: only their own files.
    assert!(
        names(&npk).iter().all(|n| !n.contains("npkio-")),
        "{:?}",
        names(&npk)
    );
    assert!(
        names(&ckpt).iter().all(|n| !n.contains("npkio-")),
        "{:?}",
        names(&ckpt)
    );
}

/// Runs the command line as the unprivileged user `nobody` (uid and gid 65534).
fn cli_as_nobody(args: &[&Path]) -> Output {
    let mut c = Command::new(NPKIO);
    c.args(args);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        c.pre_exec(|| {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(65534) != 0
                || libc::setuid(65534) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c.output().unwrap()
}

#[test]
fn a_second_user_converts_into_a_shared_directory_after_the_first() {
    if !is_root() {
        eprintln!("SKIPPED: needs root to run a child as another user (uid 65534)");
        return;
    }
    let tmp = open_tempdir();
    let st = tmp.path().join("a.safetensors");
    write_st(&st, &tensors(&[("a", 1, 40)]));
    fs::set_permissions(&st, fs::Permissions::from_mode(0o644)).unwrap();
    for shared_mode in [0o1777, 0o777] {
        let shared = tmp.path().join(format!("shared{shared_mode:o}"));
        fs::create_dir(&shared).unwrap();
        fs::set_permissions(&shared, fs::Permissions::from_mode(shared_mode)).unwrap();
        // The first user (root) converts both ways, a failure included.
        let mine = shared.join("root.npk");
        assert!(cli(&[p("convert"), &st, &mine]).status.success());
        assert!(
            cli(&[p("convert"), &mine, &shared.join("root.safetensors")])
                .status
                .success()
        );
        assert!(!cli(&[p("convert"), &st, &mine, p("--keys"), p("nope")])
            .status
            .success());
        // Then the second user, into the same directory, both directions.
        let theirs = shared.join("nobody.npk");
        let o = cli_as_nobody(&[p("convert"), &st, &theirs]);
        assert!(o.status.success(), "{shared_mode:o}: {o:?}");
        let o = cli_as_nobody(&[p("convert"), &theirs, &shared.join("nobody.safetensors")]);
        assert!(o.status.success(), "{shared_mode:o}: {o:?}");
        let o = cli_as_nobody(&[p("convert"), &st, &theirs, p("--force")]);
        assert!(o.status.success(), "{shared_mode:o}: {o:?}");
        assert_eq!(fs::metadata(&theirs).unwrap().uid(), 65534);
        assert_eq!(read_npk(&theirs).unwrap(), tensors(&[("a", 1, 40)]));
        // And the first again after the second.
        assert!(cli(&[p("convert"), &st, &mine, p("--force")])
            .status
            .success());
        assert_eq!(
            names(&shared),
            [
                "nobody.npk",
                "nobody.safetensors",
                "root.npk",
                "root.safetensors"
            ]
        );
    }
}

/// Waits until `n` processes wait for the flock of the directory `dir` (from /proc/locks).
fn wait_for_waiters(dir: &Path, n: usize) {
    let ino = fs::metadata(dir).unwrap().ino();
    for _ in 0..6000 {
        let locks = fs::read_to_string("/proc/locks").unwrap();
        let waiting = locks
            .lines()
            .filter(|l| l.contains("->") && l.contains("FLOCK"))
            .filter(|l| {
                l.split_whitespace()
                    .find(|f| f.matches(':').count() == 2)
                    .and_then(|f| f.rsplit(':').next())
                    .and_then(|i| i.parse::<u64>().ok())
                    == Some(ino)
            })
            .count();
        if waiting >= n {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("the conversions never waited for the lock");
}

#[test]
fn no_clobber_is_decided_under_the_lock() {
    use std::os::unix::io::AsRawFd;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let npk_a = d.join("a.npk");
    let npk_b = d.join("b.npk");
    write_npk(&npk_a, &tensors(&[("a", 1, 30)]), false).unwrap();
    write_npk(&npk_b, &tensors(&[("b", 2, 30)]), false).unwrap();
    let work = d.join("work");
    fs::create_dir(&work).unwrap();
    for (out, sharded) in [
        (work.join("o.safetensors"), false),
        (work.join("ckpt"), true),
    ] {
        // Both start while the directory is locked (so both pass any early check), then run
        // one after the other: the second must find the first's output and fail.
        let lock = fs::File::open(&work).unwrap();
        // SAFETY: flock on a descriptor we own.
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
        let spawn = |src: &Path| {
            let mut c = Command::new(NPKIO);
            c.arg("convert").arg(src).arg(&out);
            if sharded {
                c.args(["--max-shard-size", "20"]);
            }
            c.stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (c1, c2) = (spawn(&npk_a), spawn(&npk_b));
        wait_for_waiters(&work, 2);
        drop(lock);
        let (o1, o2) = (
            c1.wait_with_output().unwrap(),
            c2.wait_with_output().unwrap(),
        );
        let codes = [o1.status.code(), o2.status.code()];
        assert!(
            codes == [Some(0), Some(5)] || codes == [Some(5), Some(0)],
            "{out:?}: {codes:?} {o1:?} {o2:?}"
        );
        let loser = if codes[0] == Some(5) { &o1 } else { &o2 };
        assert!(
            String::from_utf8_lossy(&loser.stderr).contains("not replaced"),
            "{loser:?}"
        );
    }
    // The library option alone, through two threads of one process.
    let out = work.join("lib.safetensors");
    let mut opts = Options::default();
    opts.no_clobber = true;
    npkio::to_safetensors_file_with(&npk_a, &out, None::<&[&str]>, None, &opts).unwrap();
    let e =
        npkio::to_safetensors_file_with(&npk_b, &out, None::<&[&str]>, None, &opts).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::AlreadyExists, "{e}");
    // Without it the file is replaced, as before.
    npkio::to_safetensors_file(&npk_b, &out, None::<&[&str]>, None, 1024).unwrap();
}

/// What the staging tests plant in the output's directory, and checks afterwards.
struct Planted {
    checks: Vec<(PathBuf, &'static str)>,
    victim: PathBuf,
}

fn plant(dir: &Path, victim_root: &Path, output_name: &str) -> Planted {
    let victim = victim_root.join("victim");
    fs::create_dir_all(&victim).unwrap();
    fs::write(victim.join("precious"), b"keep me").unwrap();
    let mut checks = Vec::new();
    let user_dir = dir.join(format!(".{output_name}.npkio-tmp-xyz"));
    fs::create_dir(&user_dir).unwrap();
    fs::write(user_dir.join("notes.txt"), b"mine").unwrap();
    checks.push((user_dir.join("notes.txt"), "a user's directory"));
    let user_empty = dir.join(format!(".{output_name}.npkio-tmp-0123456789ab"));
    fs::create_dir(&user_empty).unwrap();
    checks.push((user_empty, "a user's empty directory"));
    let user_file = dir.join(format!(".{output_name}.npkio-tmp-abcdef"));
    fs::write(&user_file, b"mine").unwrap();
    checks.push((user_file, "a user's file"));
    let link = dir.join(format!(".{output_name}.npkio-tmp-Link01"));
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    checks.push((link, "a link"));
    let fifo = dir.join(format!(".{output_name}.npkio-tmp-Fifo01"));
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    checks.push((fifo, "a FIFO"));
    let old_lock = dir.join(format!(".{output_name}.npkio-lock"));
    std::os::unix::fs::symlink(victim.join("created-through-link"), &old_lock).unwrap();
    checks.push((old_lock, "a link at the old lock name"));
    Planted { checks, victim }
}

fn check_planted(pl: &Planted, context: &str) {
    for (path, what) in &pl.checks {
        assert!(
            fs::symlink_metadata(path).is_ok(),
            "{context}: {what} was deleted: {path:?}"
        );
    }
    assert_eq!(
        names(&pl.victim),
        ["precious"],
        "{context}: the victim changed"
    );
    assert_eq!(fs::read(pl.victim.join("precious")).unwrap(), b"keep me");
}

#[test]
fn staging_names_npkio_did_not_make_are_never_followed_or_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let st = d.join("a.safetensors");
    write_st(&st, &tensors(&[("a", 1, 40), ("b", 2, 10)]));
    let work = d.join("work");
    fs::create_dir(&work).unwrap();
    let npk = work.join("m.npk");
    let st_out = work.join("o.safetensors");
    let ckpt = work.join("ckpt");
    let pl_npk = plant(&work, d, "m.npk");
    let pl_st = plant(&work, &d.join("v2"), "o.safetensors");
    let pl_ck = plant(&work, &d.join("v3"), "ckpt");
    let runs: Vec<Vec<&Path>> = vec![
        vec![p("convert"), &st, &npk],
        vec![p("convert"), &st, &npk],
        vec![p("convert"), &st, &npk, p("--force")],
        vec![p("convert"), &npk, &st_out],
        vec![p("convert"), &npk, &st_out, p("--force")],
        vec![p("convert"), &npk, &ckpt, p("--max-shard-size"), p("20")],
        vec![
            p("convert"),
            &npk,
            &ckpt,
            p("--max-shard-size"),
            p("20"),
            p("--force"),
        ],
    ];
    for args in &runs {
        let o = cli(args);
        assert!(o.status.success(), "{args:?}: {o:?}");
        for pl in [&pl_npk, &pl_st, &pl_ck] {
            check_planted(pl, &format!("{args:?}"));
        }
    }
    assert_eq!(
        read_npk(&npk).unwrap(),
        tensors(&[("a", 1, 40), ("b", 2, 10)])
    );
}

#[test]
fn output_names_up_to_255_bytes_work() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let t1 = tensors(&[("a", 1, 40)]);
    let t2 = tensors(&[("b", 2, 30)]);
    let st = d.join("a.safetensors");
    write_st(&st, &t1);
    let mut cases: Vec<String> = [242, 243, 250, 254, 255]
        .iter()
        .map(|&n| "n".repeat(n - 4) + ".npk")
        .collect();
    // Multi-byte characters up to the limit (2 bytes each: 127 × 2 + 1 = 255).
    cases.push("é".repeat(127) + "x");
    for name in &cases {
        assert!(name.len() >= 242 && name.len() <= 255);
        let out = d.join(name);
        npkio::from_safetensors_file(&st, &out, None::<&[&str]>, false, 1024)
            .unwrap_or_else(|e| panic!("{}: {e}", name.len()));
        write_npk(&out, &t2, false).unwrap(); // merge
        let merged: Tensors = t1.clone().into_iter().chain(t2.clone()).collect();
        assert_eq!(read_npk(&out).unwrap(), merged);
        write_npk(&out, &t2, true).unwrap(); // replace
        assert_eq!(read_npk(&out).unwrap(), t2);
        // Exports to a file and to a checkpoint directory of such names.
        // Other names of the same length: the last character changed.
        let sibling = |c: char| {
            let mut n = name.clone();
            n.pop();
            n.push(c);
            d.join(n)
        };
        let file = sibling('s');
        npkio::to_safetensors_file(&out, &file, None::<&[&str]>, None, 1024).unwrap();
        npkio::to_safetensors_file(&out, &file, None::<&[&str]>, None, 1024).unwrap();
        let dir = sibling('c');
        let mut sharded = Options::default();
        sharded.max_shard_size = Some(10);
        npkio::to_safetensors_file_with(&out, &dir, None::<&[&str]>, None, &sharded).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        fs::remove_dir_all(&out).unwrap();
        fs::remove_file(&file).unwrap();
        assert_eq!(names(d), ["a.safetensors"], "{}", name.len());
    }
}

#[test]
fn output_names_that_are_not_utf8_work() {
    use std::os::unix::ffi::OsStrExt;
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let t1 = tensors(&[("a", 1, 40)]);
    let t2 = tensors(&[("b", 2, 30)]);
    for raw in [&b"bad\xff.npk"[..], &[0xfe; 255][..]] {
        let out = d.join(std::ffi::OsStr::from_bytes(raw));
        write_npk(&out, &t1, false).unwrap();
        write_npk(&out, &t2, false).unwrap();
        let merged: Tensors = t1.clone().into_iter().chain(t2.clone()).collect();
        assert_eq!(read_npk(&out).unwrap(), merged);
        write_npk(&out, &t2, true).unwrap();
        assert_eq!(read_npk(&out).unwrap(), t2);
        fs::remove_dir_all(&out).unwrap();
        assert_eq!(fs::read_dir(d).unwrap().count(), 0);
    }
}

#[test]
fn an_output_that_is_inside_or_holds_the_input_is_refused_before_anything_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let t = tensors(&[("a", 1, 40), ("b", 2, 10)]);
    let npk = d.join("m.npk");
    write_npk(&npk, &t, false).unwrap();
    let ckpt = d.join("ckpt");
    fs::create_dir(&ckpt).unwrap();
    let st = ckpt.join("model.safetensors");
    write_st(&st, &t);
    fs::create_dir(npk.join("sub")).unwrap();
    std::os::unix::fs::symlink(&npk, d.join("alias.npk")).unwrap();
    let snapshot = |dir: &Path| -> Vec<(String, Vec<u8>)> {
        let mut v = Vec::new();
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_file() {
                v.push((
                    e.file_name().to_string_lossy().into(),
                    fs::read(e.path()).unwrap(),
                ));
            }
        }
        v.sort();
        v
    };
    let before = (snapshot(&npk), snapshot(&ckpt), names(d));
    let mut sharded = Options::default();
    sharded.max_shard_size = Some(16);
    let none = None::<&[&str]>;
    let plain = Options::default();
    let exports: Vec<(PathBuf, &Options)> = vec![
        (npk.join("metadata.npkm"), &plain),
        (npk.clone(), &plain),
        (npk.join("sub/x.safetensors"), &plain),
        (d.join("alias.npk/data_a.npkd"), &plain),
        (d.join("m.npk/../m.npk/y.safetensors"), &plain),
        (d.to_path_buf(), &sharded),
        (npk.join("sub"), &sharded),
    ];
    for (out, opts) in &exports {
        let e = npkio::to_safetensors_file_with(&npk, out, none, None, opts).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument, "{out:?}: {e}");
    }
    let drop_replace = Options::default();
    let imports: Vec<(PathBuf, PathBuf, bool)> = vec![
        (st.clone(), st.clone(), true),
        (st.clone(), ckpt.clone(), true),
        (ckpt.clone(), ckpt.join("m.npk"), false),
        (st.clone(), d.to_path_buf(), true),
    ];
    for (input, out, drop) in &imports {
        let e =
            npkio::from_safetensors_file_with(input, out, none, *drop, &drop_replace).unwrap_err();
        assert_eq!(
            e.kind(),
            ErrorKind::InvalidArgument,
            "{input:?} -> {out:?}: {e}"
        );
    }
    // The C API too.
    let c = |p: &Path| std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    let (c_in, c_out) = (c(&npk), c(&npk.join("metadata.npkm")));
    // SAFETY: valid NUL-terminated strings; no lists.
    let status = unsafe {
        npkio::ffi::npkio_to_safetensors_file(
            c_in.as_ptr(),
            c_out.as_ptr(),
            std::ptr::null(),
            0,
            std::ptr::null(),
            std::ptr::null(),
            0,
            4096,
            0,
            0,
        )
    };
    assert_eq!(status, npkio::ffi::NpkioStatus::InvalidArgument);
    // The command line says so with exit 9, even with --force.
    let o = cli(&[p("convert"), &npk, &npk.join("metadata.npkm"), p("--force")]);
    assert_eq!(o.status.code(), Some(9), "{o:?}");
    let o = cli(&[p("convert"), &npk, &npk, p("--force")]);
    assert_eq!(o.status.code(), Some(9), "{o:?}");
    assert_eq!((snapshot(&npk), snapshot(&ckpt), names(d)), before);
    assert_eq!(read_npk(&npk).unwrap(), t);
}
