//! Errors as the command line reports them: exit codes by kind, one line on stderr, a busy
//! output.

use super::*;

#[test]
fn help_documents_the_exit_codes() {
    let r = ok(["--help"]);
    assert!(r.stdout.contains("Exit codes:"));
    for line in [
        "  1    verify",
        "  2    usage",
        "  6    malformed",
        "  10   busy",
    ] {
        assert!(r.stdout.contains(line), "{line:?} not in {}", r.stdout);
    }
}

#[test]
fn every_malformed_fixture_gives_a_one_line_error_and_exit_6() {
    let cases = expected("malformed/cases.json");
    let t = tmp();
    for name in cases.as_object().unwrap().keys() {
        let path = fixture(&format!("malformed/{name}"));
        let out = t.path().join(if name.ends_with(".npk") {
            "out.safetensors"
        } else {
            "out.npk"
        });
        let good = fixture("safetensors/with_metadata.safetensors");
        for args in [
            vec!["inspect".as_ref(), path.as_os_str()],
            vec!["inspect".as_ref(), path.as_os_str(), "--json".as_ref()],
            vec!["convert".as_ref(), path.as_os_str(), out.as_os_str()],
            vec!["verify".as_ref(), good.as_os_str(), path.as_os_str()],
        ] {
            let r = run(&args);
            assert_one_line_error(&r, 6);
            assert!(r.stderr.contains(name.as_str()), "{name}: {}", r.stderr);
            assert!(!out.exists(), "{name}: output written");
        }
    }
}

#[test]
fn exit_codes_by_error_kind() {
    let t = tmp();
    let st = fixture("safetensors/with_metadata.safetensors");

    // 3: I/O (sysfs refuses new files, even to root).
    if Path::new("/sys/kernel").is_dir() {
        let r = run(["convert".as_ref(), st.as_os_str(), "/sys/x.npk".as_ref()]);
        assert_one_line_error(&r, 3);
    }

    // 4: not found, naming the path.
    let missing = t.path().join("missing.safetensors");
    let r = run(["inspect".as_ref(), missing.as_os_str()]);
    assert_one_line_error(&r, 4);
    assert!(r.stderr.contains("missing.safetensors"));

    // 5: already exists (a file where a NumPack directory should go).
    let file = t.path().join("file.npk");
    fs::write(&file, b"x").unwrap();
    let r = run(["convert".as_ref(), st.as_os_str(), file.as_os_str()]);
    assert_one_line_error(&r, 5);

    // 7: key not found, naming the key.
    let r = run([
        "convert".as_ref(),
        st.as_os_str(),
        t.path().join("k.npk").as_os_str(),
        "--keys".as_ref(),
        "nope".as_ref(),
    ]);
    assert_one_line_error(&r, 7);
    assert!(r.stderr.contains("\"nope\""));

    // 8: unsupported: complex128 has no SafeTensors dtype.
    let r = run([
        "convert".as_ref(),
        fixture("numpack-0.7/basic.npk").as_os_str(),
        t.path().join("c.safetensors").as_os_str(),
    ]);
    assert_one_line_error(&r, 8);
    assert!(r.stderr.contains("complex128"));

    // 9: invalid argument: a directory that is not a NumPack directory.
    let r = run(["inspect".as_ref(), t.path().as_os_str()]);
    assert_one_line_error(&r, 9);
    assert!(r.stderr.contains("neither a NumPack directory"));
}

#[test]
fn malformed_sharded_index_gives_a_one_line_error() {
    let t = tmp();
    let index = t.path().join("model.safetensors.index.json");
    fs::write(
        &index,
        r#"{"metadata":{"total_size":4},"weight_map":{"w":"model-00001-of-00001.safetensors"}}"#,
    )
    .unwrap();
    for path in [index.as_path(), t.path()] {
        let r = run(["inspect".as_ref(), path.as_os_str()]);
        assert_one_line_error(&r, 6);
        assert!(
            r.stderr.contains("model-00001-of-00001.safetensors"),
            "{}",
            r.stderr
        );
    }
}

#[test]
fn convert_no_wait_exits_10_when_the_output_is_busy() {
    use std::os::unix::io::AsRawFd;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("busy.npk");
    // The output's lock: its directory's.
    let lock = std::fs::File::open(dir.path()).unwrap();
    // SAFETY: flock on a descriptor we own.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    let src =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/tiny-llama.safetensors");
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_npkio"))
        .args(["convert", "--no-wait"])
        .arg(&src)
        .arg(&out)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(10));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("another conversion"), "{err}");
    assert!(!out.exists());
}

#[test]
fn convert_to_a_path_ending_in_a_slash_says_a_file_is_expected() {
    let t = tmp();
    let out = format!("{}/newdir/", t.path().display());
    let r = run([
        "convert".as_ref(),
        fixture("numpack-0.7/basic.npk").as_os_str(),
        OsStr::new(&out),
    ]);
    assert_one_line_error(&r, 9);
    assert!(
        r.stderr.contains("must be a .safetensors file path"),
        "{r:?}"
    );
    assert!(!t.path().join("newdir").exists());
}
