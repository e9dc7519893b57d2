//! Publishing outputs under faults: the command line killed at every step of a directory
//! replacement and of a merge (with and without `renameat2(RENAME_EXCHANGE)`, which is made
//! to fail with EINVAL as on NFS, CIFS or FUSE) and of a file export, with `strace -e
//! inject`. After each kill the output must be the complete old or the complete new one (or,
//! between the two renames of the fallback, absent with the old one aside), and the next
//! conversion must recover: the old output restored, never deleted.
//!
//! Needs `strace` (`scripts/test.sh` installs it): without it the tests fail when `CI` is
//! set and otherwise say that they skipped.

use std::fs;
use std::path::Path;
use std::process::{Command, Output};

use npkio::{DType, NumPack};

use crate::common;
use crate::common::{read_npk, tensors, write_st, Tensors};
use common::have_strace;

const NPKIO: &str = env!("CARGO_BIN_EXE_npkio");

fn read_st(path: &Path) -> Result<Tensors, String> {
    let f = npkio::SafeTensorsFile::open(path).map_err(|e| e.to_string())?;
    let mut out = Tensors::new();
    for t in f.tensors() {
        let v = f.get(&t.name).ok_or("a tensor is missing")?;
        out.insert(t.name.clone(), v.data.to_vec());
    }
    Ok(out)
}

fn npkio(args: &[&Path]) -> Output {
    Command::new(NPKIO).args(args).output().unwrap()
}

/// Runs the command line under strace with `injects` (`-e inject=...` values).
fn npkio_injected(injects: &[String], args: &[&Path]) -> Output {
    let mut c = Command::new("strace");
    c.args(["-f", "-qq", "-o", "/dev/null"]);
    for i in injects {
        c.arg("-e").arg(format!("inject={i}"));
    }
    c.arg(NPKIO).args(args).output().unwrap()
}

/// Entries of `dir` that npkio made for its own use (staging directories and files).
fn leftovers(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("npkio-"))
        .collect()
}

/// What the output may be after a kill.
#[derive(Debug, PartialEq)]
enum State {
    Old,
    New,
    /// Between the two renames of the fallback: no output, the old one aside.
    Aside,
}

/// Kills `args` at every call of every syscall in `syscalls` in turn (with `extra` injects
/// on every run), checking after each kill with `check`, and recovering with `recover`.
/// Returns the states seen.
fn kill_at_every_step(
    extra: &[String],
    syscalls: &[&str],
    args: &[&Path],
    reset: &dyn Fn(),
    check: &dyn Fn(&str) -> State,
    recover: &dyn Fn(&str, &State),
) -> Vec<State> {
    let mut seen = Vec::new();
    for sc in syscalls {
        for n in 1..=400 {
            reset();
            let mut injects = extra.to_vec();
            injects.push(format!("{sc}:signal=KILL:when={n}"));
            let o = npkio_injected(&injects, args);
            let context = format!("kill at {sc} #{n}");
            if o.status.success() {
                // No call number `n`: the run went through.
                assert_eq!(check(&context), State::New, "{context}: completed");
                break;
            }
            let state = check(&context);
            recover(&context, &state);
            seen.push(state);
            assert!(n < 400, "{context}: never completes");
        }
    }
    eprintln!("{} kills: {seen:?}", seen.len());
    seen
}

const STEPS: &[&str] = &[
    "mkdir", "rename", "renameat", "linkat", "unlink", "unlinkat", "rmdir", "fchmod",
];

/// A directory output replaced (`--force`) or merged into, killed at every step, with and
/// without the exchange.
fn directory_output_killed_at_every_step(test: &str, force: bool, exchange: bool) {
    if !have_strace(test) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (old_t, new_t) = (
        tensors(&[("a", 1, 3000), ("b", 2, 5000), ("keep", 3, 100)]),
        tensors(&[("a", 9, 4000), ("b", 8, 10), ("c", 7, 2000)]),
    );
    let extra_t = tensors(&[("z", 5, 64)]);
    let (old_st, new_st, extra_st) = (d.join("old.st"), d.join("new.st"), d.join("z.st"));
    write_st(&old_st, &old_t);
    write_st(&new_st, &new_t);
    write_st(&extra_st, &extra_t);
    let work = d.join("work");
    fs::create_dir(&work).unwrap();
    let out = work.join("out.npk");
    let want_new: Tensors = if force {
        new_t.clone()
    } else {
        old_t.clone().into_iter().chain(new_t.clone()).collect()
    };
    let reset = || {
        if out.exists() {
            fs::remove_dir_all(&out).unwrap();
        }
        for n in leftovers(&work) {
            let _ = fs::remove_dir_all(work.join(&n));
        }
        assert!(npkio(&[Path::new("convert"), &old_st, &out])
            .status
            .success());
    };
    let check = |context: &str| -> State {
        if !out.exists() {
            assert!(!exchange, "{context}: no output, though the exchange works");
            let aside: Vec<_> = leftovers(&work);
            assert!(!aside.is_empty(), "{context}: no output and nothing aside");
            return State::Aside;
        }
        let got = read_npk(&out).unwrap_or_else(|e| panic!("{context}: does not open: {e}"));
        if got == old_t {
            State::Old
        } else if got == want_new {
            State::New
        } else {
            panic!("{context}: neither old nor new: {:?}", got.keys());
        }
    };
    let recover = |context: &str, state: &State| {
        // The next conversion (a merge of one more tensor) must start from what was there.
        let o = npkio(&[Path::new("convert"), &extra_st, &out]);
        assert!(o.status.success(), "{context}: {o:?}");
        let base = match state {
            State::Old | State::Aside => &old_t,
            State::New => &want_new,
        };
        let want: Tensors = base.clone().into_iter().chain(extra_t.clone()).collect();
        assert_eq!(read_npk(&out).unwrap(), want, "{context}: after recovery");
        assert_eq!(
            leftovers(&work),
            Vec::<String>::new(),
            "{context}: left behind"
        );
    };
    let mut args: Vec<&Path> = vec![Path::new("convert"), &new_st, &out];
    if force {
        args.push(Path::new("--force"));
    }
    let extra: Vec<String> = if exchange {
        vec![]
    } else {
        vec!["renameat2:error=EINVAL".to_string()]
    };
    let mut steps = STEPS.to_vec();
    if exchange {
        steps.push("renameat2");
    }
    let seen = kill_at_every_step(&extra, &steps, &args, &reset, &check, &recover);
    assert!(
        seen.contains(&State::Old) && seen.contains(&State::New),
        "{seen:?}"
    );
    if !exchange {
        assert!(
            seen.contains(&State::Aside),
            "the kill between the two renames was not reached: {seen:?}"
        );
    }
}

#[test]
fn replace_without_exchange_killed_at_every_step_never_loses_the_old_output() {
    directory_output_killed_at_every_step("replace without exchange", true, false);
}

#[test]
fn merge_without_exchange_killed_at_every_step_never_loses_the_old_output() {
    directory_output_killed_at_every_step("merge without exchange", false, false);
}

#[test]
fn replace_with_exchange_killed_at_every_step_is_old_or_new() {
    directory_output_killed_at_every_step("replace with exchange", true, true);
}

#[test]
fn file_export_killed_at_every_step_is_old_or_new() {
    let test = "file export";
    if !have_strace(test) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let (old_t, new_t) = (tensors(&[("a", 1, 3000)]), tensors(&[("b", 2, 5000)]));
    let (old_st, new_st) = (d.join("old.st"), d.join("new.st"));
    write_st(&old_st, &old_t);
    write_st(&new_st, &new_t);
    let npk = d.join("new.npk");
    assert!(npkio(&[Path::new("convert"), &new_st, &npk])
        .status
        .success());
    let work = d.join("work");
    fs::create_dir(&work).unwrap();
    let out = work.join("out.safetensors");
    let reset = || {
        fs::copy(&old_st, &out).unwrap();
    };
    let check = |context: &str| -> State {
        let got = read_st(&out).unwrap_or_else(|e| panic!("{context}: does not open: {e}"));
        if got == old_t {
            State::Old
        } else if got == new_t {
            State::New
        } else {
            panic!("{context}: neither old nor new");
        }
    };
    let recover = |context: &str, _: &State| {
        let o = npkio(&[Path::new("convert"), &npk, &out, Path::new("--force")]);
        assert!(o.status.success(), "{context}: {o:?}");
        assert_eq!(read_st(&out).unwrap(), new_t);
        assert_eq!(
            leftovers(&work),
            Vec::<String>::new(),
            "{context}: left behind"
        );
    };
    let args: Vec<&Path> = vec![Path::new("convert"), &npk, &out, Path::new("--force")];
    let seen = kill_at_every_step(&[], STEPS, &args, &reset, &check, &recover);
    assert!(seen.contains(&State::Old), "{seen:?}");
}

/// A sharded export into a new directory, killed at every step: no checkpoint (the old
/// state) or the complete new one, and the next export completes it leaving nothing behind.
#[test]
fn fresh_sharded_export_killed_at_every_step_is_absent_or_new() {
    let test = "fresh sharded export";
    if !have_strace(test) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let t = tensors(&[("a", 1, 3000), ("b", 2, 2000), ("c", 3, 1000)]);
    let st = d.join("t.st");
    write_st(&st, &t);
    let npk = d.join("t.npk");
    assert!(npkio(&[Path::new("convert"), &st, &npk]).status.success());
    let work = d.join("work");
    fs::create_dir(&work).unwrap();
    let out = work.join("ckpt");
    let read_ckpt = || -> Result<Tensors, String> {
        let c = npkio::Checkpoint::open(&out).map_err(|e| e.to_string())?;
        let mut got = Tensors::new();
        for f in c.shards() {
            let shard = read_st(f.path())?;
            got.extend(shard);
        }
        Ok(got)
    };
    let reset = || {
        if out.exists() {
            fs::remove_dir_all(&out).unwrap();
        }
        for n in leftovers(&work) {
            let _ = fs::remove_dir_all(work.join(&n));
        }
    };
    let check = |context: &str| -> State {
        if !out.exists() {
            return State::Old;
        }
        let got = read_ckpt().unwrap_or_else(|e| panic!("{context}: does not open: {e}"));
        assert_eq!(got, t, "{context}: not the new checkpoint");
        State::New
    };
    let size = Path::new("2500");
    let args: Vec<&Path> = vec![
        Path::new("convert"),
        &npk,
        &out,
        Path::new("--max-shard-size"),
        size,
    ];
    let recover = |context: &str, _: &State| {
        let o = npkio(&[
            Path::new("convert"),
            &npk,
            &out,
            Path::new("--max-shard-size"),
            size,
            Path::new("--force"),
        ]);
        assert!(o.status.success(), "{context}: {o:?}");
        assert_eq!(read_ckpt().unwrap(), t, "{context}");
        assert_eq!(
            leftovers(&work),
            Vec::<String>::new(),
            "{context}: left behind"
        );
        assert_eq!(
            leftovers(&out),
            Vec::<String>::new(),
            "{context}: left inside"
        );
    };
    let mut steps = STEPS.to_vec();
    steps.push("renameat2");
    let seen = kill_at_every_step(&[], &steps, &args, &reset, &check, &recover);
    assert!(seen.contains(&State::Old), "{seen:?}");
}

/// The lock falls back to a `.npkio-lock` file where `flock` on a directory is refused
/// (made to fail here as NFS does): conversions still exclude each other, and anything but
/// a regular file at that name is refused, never followed or waited on.
#[test]
fn the_fallback_lock_file_is_used_only_where_directories_cannot_be_locked() {
    let test = "fallback lock";
    if !have_strace(test) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let st = d.join("a.st");
    write_st(&st, &tensors(&[("a", 1, 100)]));
    let work = d.join("work");
    fs::create_dir(&work).unwrap();
    let out = work.join("out.npk");
    let enolck = ["flock:error=ENOLCK:when=1".to_string()];
    let o = npkio_injected(&enolck, &[Path::new("convert"), &st, &out]);
    assert!(o.status.success(), "{o:?}");
    let lock = work.join(".npkio-lock");
    let md = fs::symlink_metadata(&lock).expect("the fallback lock file");
    use std::os::unix::fs::PermissionsExt;
    assert!(md.is_file());
    assert_eq!(md.permissions().mode() & 0o777, 0o666);
    // Held by someone else: --no-wait fails fast with exit 10.
    let held = fs::File::open(&lock).unwrap();
    // SAFETY: flock on a descriptor we own.
    assert_eq!(
        unsafe { libc::flock(std::os::unix::io::AsRawFd::as_raw_fd(&held), libc::LOCK_EX) },
        0
    );
    let o = npkio_injected(
        &enolck,
        &[Path::new("convert"), Path::new("--no-wait"), &st, &out],
    );
    assert_eq!(o.status.code(), Some(10), "{o:?}");
    drop(held);
    // A link or a FIFO at the lock file's name: an error, nothing created or waited on.
    for what in ["link", "fifo"] {
        fs::remove_file(&lock).unwrap();
        let target = d.join("target");
        match what {
            "link" => std::os::unix::fs::symlink(&target, &lock).unwrap(),
            _ => {
                let c = std::ffi::CString::new(lock.to_str().unwrap()).unwrap();
                // SAFETY: a valid path.
                assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o666) }, 0);
            }
        }
        let o = npkio_injected(
            &enolck,
            &[Path::new("convert"), &st, &out, Path::new("--force")],
        );
        assert!(!o.status.success(), "{what}: {o:?}");
        assert!(!target.exists(), "{what}: followed");
        assert_eq!(read_npk(&out).unwrap(), tensors(&[("a", 1, 100)]));
    }
}

// ---------------------------------------------------------------------------------------
// Locking without read permission on the directory.

const NOBODY_CHILD: &str = "NPKIO_PUBLISH_NOBODY_CHILD";

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Makes `cmd` run as the unprivileged user `nobody` (uid and gid 65534).
fn as_nobody(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(65534) != 0
                || libc::setuid(65534) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// This test binary, run again as `nobody`, saving the array `name` into `store`.
fn save_as_nobody(store: &Path, name: &str) -> Command {
    let spec = format!("{name}|{}", store.display());
    let mut c = common::rerun(module_path!(), "nobody_child_entry", NOBODY_CHILD, spec);
    c.stdout(std::process::Stdio::piped());
    as_nobody(&mut c);
    c
}

/// Runs in the child: saves one array into a store.
#[test]
fn nobody_child_entry() {
    let Ok(spec) = std::env::var(NOBODY_CHILD) else {
        return;
    };
    let (name, store) = spec.split_once('|').unwrap();
    let saved = NumPack::open(store).and_then(|mut s| {
        s.save(&[npkio::ArrayInput {
            name,
            dtype: DType::U8,
            shape: &[3],
            data: &[7, 8, 9],
        }])
    });
    match saved {
        Ok(()) => println!("CHILD-OK"),
        Err(e) => println!("CHILD-ERROR: {:?}: {e}", e.kind()),
    }
}

/// Gives `path` and everything in it to `nobody`.
fn chown_nobody(path: &Path) {
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid path; lchown follows no link.
    assert_eq!(unsafe { libc::lchown(c.as_ptr(), 65534, 65534) }, 0);
    if path.is_dir() {
        for e in fs::read_dir(path).unwrap() {
            chown_nobody(&e.unwrap().path());
        }
    }
}

fn names_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Holds `flock(LOCK_EX)` on `path` (a directory or a file) until dropped.
fn hold_flock(path: &Path) -> fs::File {
    let f = fs::File::open(path).unwrap();
    // SAFETY: flock on a descriptor we own.
    assert_eq!(
        unsafe { libc::flock(std::os::unix::io::AsRawFd::as_raw_fd(&f), libc::LOCK_EX) },
        0
    );
    f
}

/// Whether the process `pid` waits for a `flock` (a `->` line of /proc/locks).
fn waits_for_flock(pid: u32) -> bool {
    fs::read_to_string("/proc/locks").unwrap().lines().any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(1) == Some(&"->")
            && f.get(2) == Some(&"FLOCK")
            && f.get(5) == Some(&&*pid.to_string())
    })
}

/// A user changes their own store inside a parent they may only search (0711, another
/// user's): the parent can be neither read (no `flock` on it) nor written (no lock file
/// there, and nothing can be renamed there either), so the lock is the store's own, which
/// every writer of the store takes too: a holder of it makes the user's change wait.
#[test]
fn a_user_changes_their_store_inside_a_parent_they_may_only_search() {
    if std::env::var(NOBODY_CHILD).is_ok() {
        return;
    }
    if !is_root() {
        eprintln!("SKIPPED: needs root to run a child as another user (uid 65534)");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let parent = tmp.path().join("parent");
    fs::create_dir(&parent).unwrap();
    let store = parent.join("s.npk");
    let t = tensors(&[("a", 1, 10)]);
    write_st(&tmp.path().join("a.st"), &t);
    npkio::from_safetensors_file(
        tmp.path().join("a.st"),
        &store,
        None::<&[&str]>,
        false,
        1 << 20,
    )
    .unwrap();
    chown_nobody(&store);
    fs::set_permissions(&parent, fs::Permissions::from_mode(0o711)).unwrap();
    let o = save_as_nobody(&store, "b").output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("CHILD-OK"), "{o:?}");
    assert_eq!(read_npk(&store).unwrap()["b"], [7, 8, 9]);
    assert_eq!(names_in(&parent), ["s.npk"]);
    // Another writer holding the store's lock (as root's conversions and store changes
    // into it take it) makes the change wait.
    let held = hold_flock(&store);
    let mut child = save_as_nobody(&store, "c").spawn().unwrap();
    let mut tries = 0;
    while !waits_for_flock(child.id()) {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the change did not wait for the lock: {status:?}");
        }
        tries += 1;
        assert!(tries < 2000, "the child never waited for the lock");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(child.try_wait().unwrap().is_none());
    drop(held);
    let o = child.wait_with_output().unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("CHILD-OK"),
        "{o:?}"
    );
    assert_eq!(read_npk(&store).unwrap()["c"], [7, 8, 9]);
    assert_eq!(
        names_in(&store)
            .iter()
            .filter(|n| n.contains("lock"))
            .count(),
        0
    );
}

/// A user converts into a directory they may write but not read (0733), as `cp` can: the
/// lock is then the directory's `.npkio-lock` file, which every user takes in a directory
/// of such a mode (root, who can read it, included), so that they exclude each other.
#[test]
fn a_user_converts_into_a_directory_they_may_write_but_not_read() {
    if std::env::var(NOBODY_CHILD).is_ok() {
        return;
    }
    if !is_root() {
        eprintln!("SKIPPED: needs root to run a child as another user (uid 65534)");
        return;
    }
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let tmp = tempfile::tempdir().unwrap();
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let st = tmp.path().join("a.st");
    write_st(&st, &tensors(&[("a", 1, 10)]));
    fs::set_permissions(&st, fs::Permissions::from_mode(0o644)).unwrap();
    let drop_box = tmp.path().join("drop");
    fs::create_dir(&drop_box).unwrap();
    fs::set_permissions(&drop_box, fs::Permissions::from_mode(0o733)).unwrap();
    let nobody = |args: &[&Path]| as_nobody(Command::new(NPKIO).args(args)).output().unwrap();
    let theirs = drop_box.join("theirs.npk");
    let o = nobody(&[Path::new("convert"), &st, &theirs]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(read_npk(&theirs).unwrap(), tensors(&[("a", 1, 10)]));
    let lock = drop_box.join(".npkio-lock");
    let md = fs::symlink_metadata(&lock).unwrap();
    assert!(md.is_file());
    assert_eq!((md.uid(), md.mode() & 0o777), (65534, 0o666));
    assert_eq!(names_in(&drop_box), [".npkio-lock", "theirs.npk"]);
    // Again, over its own output (merging), and root after it.
    let o = nobody(&[Path::new("convert"), &st, &theirs]);
    assert!(o.status.success(), "{o:?}");
    let o = npkio(&[Path::new("convert"), &st, &drop_box.join("mine.npk")]);
    assert!(o.status.success(), "{o:?}");
    // The lock file held: both users' conversions find the directory locked.
    let held = hold_flock(&lock);
    let o = nobody(&[Path::new("convert"), Path::new("--no-wait"), &st, &theirs]);
    assert_eq!(o.status.code(), Some(10), "{o:?}");
    let o = npkio(&[
        Path::new("convert"),
        Path::new("--no-wait"),
        &st,
        &drop_box.join("mine.npk"),
    ]);
    assert_eq!(o.status.code(), Some(10), "{o:?}");
    drop(held);
    assert_eq!(
        names_in(&drop_box),
        [".npkio-lock", "mine.npk", "theirs.npk"]
    );
}
