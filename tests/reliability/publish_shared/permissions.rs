//! Permissions: a replaced or merged output keeps its mode, group and the links the reader
//! follows; a new one follows the umask.

use super::*;

/// Runs the command line with the umask `mask`.
fn cli_umask(mask: u32, args: &[&Path]) -> Output {
    let mut c = Command::new(NPKIO);
    c.args(args);
    // SAFETY: umask is async-signal-safe.
    unsafe {
        c.pre_exec(move || {
            libc::umask(mask as libc::mode_t);
            Ok(())
        });
    }
    c.output().unwrap()
}

fn file_modes(dir: &Path) -> Vec<(String, u32)> {
    names(dir)
        .into_iter()
        .map(|n| {
            let m = mode(&dir.join(&n));
            (n, m)
        })
        .collect()
}

#[test]
fn replaced_and_merged_outputs_keep_their_permissions_new_ones_follow_the_umask() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let st1 = d.join("one.safetensors");
    let st2 = d.join("two.safetensors");
    write_st(&st1, &tensors(&[("a", 1, 40), ("b", 2, 10)]));
    write_st(&st2, &tensors(&[("b", 3, 20), ("c", 4, 10)]));
    let ok = |o: Output| assert!(o.status.success(), "{o:?}");
    for (mask, dir_mode, file_mode) in [
        (0o022, 0o755, 0o644),
        (0o027, 0o750, 0o640),
        (0o077, 0o700, 0o600),
    ] {
        // New outputs: the umask decides, like cp and mkdir.
        let npk = d.join(format!("new{mask:o}.npk"));
        ok(cli_umask(mask, &[p("convert"), &st1, &npk]));
        assert_eq!(mode(&npk), dir_mode);
        assert!(
            file_modes(&npk).iter().all(|(_, m)| *m == file_mode),
            "{:?}",
            file_modes(&npk)
        );
        let file = d.join(format!("new{mask:o}.safetensors"));
        ok(cli_umask(mask, &[p("convert"), &npk, &file]));
        assert_eq!(mode(&file), file_mode);
        let ckpt = d.join(format!("ck{mask:o}"));
        ok(cli_umask(
            mask,
            &[p("convert"), &npk, &ckpt, p("--max-shard-size"), p("20")],
        ));
        assert_eq!(mode(&ckpt), dir_mode);
        assert!(file_modes(&ckpt).iter().all(|(_, m)| *m == file_mode));
    }
    for (old_dir, old_file) in [
        (0o700, 0o600),
        (0o750, 0o640),
        (0o775, 0o664),
        (0o711, 0o604),
        (0o555, 0o444),
    ] {
        for force in [false, true] {
            let npk = d.join(format!("old{old_dir:o}{force}.npk"));
            ok(cli_umask(0o022, &[p("convert"), &st1, &npk]));
            for n in names(&npk) {
                fs::set_permissions(npk.join(n), fs::Permissions::from_mode(old_file)).unwrap();
            }
            fs::set_permissions(&npk, fs::Permissions::from_mode(old_dir)).unwrap();
            let mut args: Vec<&Path> = vec![p("convert"), &st2, &npk];
            if force {
                args.push(p("--force"));
            }
            ok(cli_umask(0o022, &args));
            assert_eq!(mode(&npk), old_dir, "merge/force {force}");
            let modes = file_modes(&npk);
            assert!(
                modes.iter().all(|(_, m)| *m == old_file),
                "{force}: {modes:?}"
            );
        }
        // A file replaced with --force keeps its mode, like cp.
        let file = d.join(format!("old{old_file:o}.safetensors"));
        fs::write(&file, b"old").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(old_file)).unwrap();
        let npk = d.join("new22.npk");
        ok(cli_umask(0o022, &[p("convert"), &npk, &file, p("--force")]));
        assert_eq!(mode(&file), old_file);
        // A checkpoint written into an existing directory: replaced shards keep theirs.
        let ckpt = d.join(format!("oldck{old_file:o}"));
        ok(cli_umask(
            0o022,
            &[p("convert"), &npk, &ckpt, p("--max-shard-size"), p("20")],
        ));
        for n in names(&ckpt) {
            fs::set_permissions(ckpt.join(n), fs::Permissions::from_mode(old_file)).unwrap();
        }
        ok(cli_umask(
            0o022,
            &[
                p("convert"),
                &npk,
                &ckpt,
                p("--max-shard-size"),
                p("20"),
                p("--force"),
            ],
        ));
        // (The shards; the index is written anew after the old one is removed.)
        let shards: Vec<_> = file_modes(&ckpt)
            .into_iter()
            .filter(|(n, _)| n.ends_with(".safetensors"))
            .collect();
        assert!(shards.iter().all(|(_, m)| *m == old_file), "{shards:?}");
    }
    if is_root() {
        // The group is kept too where the process may set it (root may).
        let npk = d.join("group.npk");
        ok(cli(&[p("convert"), &st1, &npk]));
        for n in names(&npk) {
            std::os::unix::fs::chown(npk.join(n), None, Some(100)).unwrap();
        }
        std::os::unix::fs::chown(&npk, None, Some(100)).unwrap();
        ok(cli(&[p("convert"), &st2, &npk]));
        assert_eq!(fs::metadata(&npk).unwrap().gid(), 100);
        for n in names(&npk) {
            assert_eq!(fs::metadata(npk.join(&n)).unwrap().gid(), 100, "{n}");
        }
        let file = d.join("group.safetensors");
        ok(cli(&[p("convert"), &npk, &file]));
        std::os::unix::fs::chown(&file, None, Some(100)).unwrap();
        ok(cli(&[p("convert"), &npk, &file, p("--force")]));
        assert_eq!(fs::metadata(&file).unwrap().gid(), 100);
    } else {
        eprintln!("group part SKIPPED: needs root to give files another group");
    }
}

#[test]
fn a_merge_keeps_the_links_the_reader_follows() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let old = tensors(&[("a", 1, 40), ("b", 2, 40), ("c", 3, 16), ("d", 4, 8)]);
    let new = tensors(&[("b", 9, 40), ("e", 5, 12)]);
    type Setup = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Setup)> = vec![
        (
            "relative link into a subdirectory",
            Box::new(|npk: &Path| {
                fs::create_dir(npk.join("real")).unwrap();
                fs::rename(npk.join("data_a.npkd"), npk.join("real/a.bin")).unwrap();
                std::os::unix::fs::symlink("real/a.bin", npk.join("data_a.npkd")).unwrap();
            }),
        ),
        (
            "absolute link to a file inside",
            Box::new(|npk: &Path| {
                fs::rename(npk.join("data_c.npkd"), npk.join("c.bin")).unwrap();
                std::os::unix::fs::symlink(npk.join("c.bin"), npk.join("data_c.npkd")).unwrap();
            }),
        ),
        (
            "link to the file of an array the merge replaces",
            Box::new(|npk: &Path| {
                // a and b have one shape; a reads b's old bytes through the link.
                fs::remove_file(npk.join("data_a.npkd")).unwrap();
                std::os::unix::fs::symlink("data_b.npkd", npk.join("data_a.npkd")).unwrap();
            }),
        ),
        (
            "link through a linked directory",
            Box::new(|npk: &Path| {
                fs::create_dir(npk.join("store")).unwrap();
                std::os::unix::fs::symlink("store", npk.join("alias")).unwrap();
                fs::rename(npk.join("data_d.npkd"), npk.join("store/d.bin")).unwrap();
                std::os::unix::fs::symlink("alias/d.bin", npk.join("data_d.npkd")).unwrap();
            }),
        ),
        (
            "chain of links",
            Box::new(|npk: &Path| {
                fs::rename(npk.join("data_c.npkd"), npk.join("c0.bin")).unwrap();
                std::os::unix::fs::symlink("c0.bin", npk.join("c1.bin")).unwrap();
                std::os::unix::fs::symlink("c1.bin", npk.join("data_c.npkd")).unwrap();
            }),
        ),
    ];
    for (what, setup) in &cases {
        let npk = d.join("m.npk");
        if npk.exists() {
            fs::remove_dir_all(&npk).unwrap();
        }
        write_npk(&npk, &old, false).unwrap();
        setup(&npk);
        let before = read_npk(&npk).unwrap_or_else(|e| panic!("{what}: the input: {e}"));
        let st = d.join("new.safetensors");
        write_st(&st, &new);
        npkio::from_safetensors_file(&st, &npk, None::<&[&str]>, false, 1024).unwrap();
        let after = read_npk(&npk).unwrap_or_else(|e| panic!("{what}: the merge: {e}"));
        let want: Tensors = before.into_iter().chain(new.clone()).collect();
        assert_eq!(after, want, "{what}");
        // And again, merging into the merged directory.
        npkio::from_safetensors_file(&st, &npk, None::<&[&str]>, false, 1024).unwrap();
        assert_eq!(read_npk(&npk).unwrap(), want, "{what}: second merge");
    }
    // A link leading outside is not carried over (the reader refuses it anyway), and the
    // file it leads to is untouched.
    let npk = d.join("m.npk");
    fs::remove_dir_all(&npk).unwrap();
    write_npk(&npk, &old, false).unwrap();
    let outside = d.join("outside.bin");
    fs::write(&outside, b"outside").unwrap();
    std::os::unix::fs::symlink(&outside, npk.join("stray.bin")).unwrap();
    npkio::from_safetensors_file(
        d.join("new.safetensors"),
        &npk,
        None::<&[&str]>,
        false,
        1024,
    )
    .unwrap();
    assert!(!npk.join("stray.bin").exists());
    assert_eq!(fs::read(&outside).unwrap(), b"outside");
}

#[test]
fn a_sharded_export_into_an_existing_directory_keeps_the_files_modes() {
    let dir = tempfile::tempdir().unwrap();
    let npk = dir.path().join("m.npk");
    let t = tensors(&[("a", 1, 3000), ("b", 2, 3000), ("c", 3, 3000)]);
    write_npk(&npk, &t, false).unwrap();
    let out = dir.path().join("ckpt");
    let mut opts = npkio::Options::default();
    opts.max_shard_size = Some(4000);
    npkio::to_safetensors_file_with(&npk, &out, None::<&[&str]>, None, &opts).unwrap();
    let index = out.join("model.safetensors.index.json");
    let shard = out.join("model-00001-of-00003.safetensors");
    fs::set_permissions(&index, fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(&shard, fs::Permissions::from_mode(0o640)).unwrap();
    // Same layout again, then with other contents: the replaced files keep their modes.
    for seed in [1, 9] {
        let t = tensors(&[("a", seed, 3000), ("b", 2, 3000), ("c", 3, 3000)]);
        write_npk(&npk, &t, true).unwrap();
        npkio::to_safetensors_file_with(&npk, &out, None::<&[&str]>, None, &opts).unwrap();
        assert_eq!(mode(&index), 0o600, "index after export {seed}");
        assert_eq!(mode(&shard), 0o640, "shard after export {seed}");
    }
}
