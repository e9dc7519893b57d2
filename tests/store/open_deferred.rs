//! Opening a store reads its metadata, sidecar and bitmaps and lists the directory once; the
//! data files are checked when first opened for reading. A store whose data files are all
//! gone still opens and lists its arrays; each read then fails naming the file and the
//! array; a data file damaged after the store opened is caught when it is read; and every
//! path that reads an array (view, description, extents, loader, append, drop) checks it.

use std::path::{Path, PathBuf};

use npkio::{ArrayInput, DType, ErrorKind, NumPack};

fn make_store(dir: &Path, n: usize) -> Vec<(String, Vec<u8>)> {
    let data: Vec<(String, Vec<u8>)> = (0..n)
        .map(|i| (format!("a{i}"), vec![i as u8; 4 * (2 + i % 3)]))
        .collect();
    let shapes: Vec<[u64; 2]> = data.iter().map(|(_, b)| [b.len() as u64 / 4, 1]).collect();
    let inputs: Vec<ArrayInput<'_>> = data
        .iter()
        .zip(&shapes)
        .map(|((name, bytes), shape)| ArrayInput {
            name,
            dtype: DType::I32,
            shape,
            data: bytes,
        })
        .collect();
    npkio::from_safetensors(&inputs, dir, false).unwrap();
    data
}

fn data_file(store: &NumPack, name: &str) -> PathBuf {
    store.path().join(
        &npkio::internals::numpack::record(store, name)
            .unwrap()
            .data_file,
    )
}

#[test]
fn a_store_whose_data_files_are_gone_opens_and_fails_each_read() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m.npk");
    let data = make_store(&dir, 50);
    let store = NumPack::open(&dir).unwrap();
    for (name, _) in &data {
        std::fs::remove_file(data_file(&store, name)).unwrap();
    }
    drop(store);
    let store = NumPack::open(&dir).unwrap();
    assert_eq!(store.len(), 50);
    assert_eq!(store.names().len(), 50);
    for (name, _) in &data {
        let e = store.view(name).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Malformed, "{e}");
        assert_eq!(e.array_name(), Some(name.as_str()), "{e}");
        assert!(e.to_string().contains("missing"), "{e}");
        assert!(e.to_string().contains(".npkd"), "{e}");
        assert!(store.info(name).is_err());
        assert!(store.array_extents(name).is_err());
    }
    let e = npkio::load::Loader::open(&dir).map(|_| ()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Malformed, "{e}");
    assert!(e.array_name().is_some(), "{e}");
}

#[test]
fn a_data_file_damaged_after_opening_is_caught_when_read() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m.npk");
    let data = make_store(&dir, 6);
    let mut store = NumPack::open(&dir).unwrap();
    // Opened while the files were good; a0 described, then all damaged.
    assert_eq!(store.info("a0").unwrap().nbytes, 8);
    let short = data_file(&store, "a1");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&short)
        .unwrap()
        .set_len(1)
        .unwrap();
    let outside = tmp.path().join("outside.bin");
    std::fs::write(&outside, vec![0u8; 64]).unwrap();
    let linked = data_file(&store, "a2");
    std::fs::remove_file(&linked).unwrap();
    std::os::unix::fs::symlink(&outside, &linked).unwrap();
    let gone = data_file(&store, "a3");
    std::fs::remove_file(&gone).unwrap();

    let cases = [("a1", "shorter"), ("a2", "outside"), ("a3", "missing")];
    for (name, words) in cases {
        let e = store.view(name).unwrap_err();
        assert_eq!(e.array_name(), Some(name), "{e}");
        assert!(e.to_string().contains(words), "{name}: {e}");
        assert!(store.info(name).is_err(), "{name}");
    }
    // Changes of those arrays' rows check their files too; nothing is written outside.
    for (name, words) in cases {
        let e = store.append(name, &[0u8; 4]).unwrap_err();
        assert!(e.to_string().contains(words), "append {name}: {e}");
        let e = store.drop_rows(name, &[0]).unwrap_err();
        assert!(e.to_string().contains(words), "drop {name}: {e}");
    }
    assert_eq!(std::fs::read(&outside).unwrap(), vec![0u8; 64]);
    // The others read as they were, and an export of them works.
    for (name, bytes) in data
        .iter()
        .filter(|(n, _)| ["a0", "a4", "a5"].contains(&n.as_str()))
    {
        assert_eq!(store.view(name).unwrap().data, &bytes[..]);
    }
    let out = tmp.path().join("o.safetensors");
    npkio::to_safetensors_file(&dir, &out, Some(&["a0", "a4", "a5"]), None, 1 << 20).unwrap();
    // Saving a damaged array again repairs it.
    store
        .save(&[ArrayInput {
            name: "a2",
            dtype: DType::I32,
            shape: &[1],
            data: &[9, 9, 9, 9],
        }])
        .unwrap();
    assert_eq!(store.view("a2").unwrap().data, [9, 9, 9, 9]);
    assert_eq!(std::fs::read(&outside).unwrap(), vec![0u8; 64]);
    drop(store);
    let store = NumPack::open(&dir).unwrap();
    assert_eq!(store.view("a2").unwrap().data, [9, 9, 9, 9]);
}

#[test]
fn saving_many_arrays_in_one_call_keeps_every_name_apart() {
    // Names that differ only in ASCII case cannot share a stem (NumPack's files live on
    // case-insensitive filesystems too): the stem lookup must see each earlier one.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("m.npk");
    let mut store = NumPack::create(&dir, false).unwrap();
    let names: Vec<String> = (0..300)
        .flat_map(|i| [format!("w{i}"), format!("W{i}")])
        .collect();
    let bytes: Vec<[u8; 4]> = (0..names.len()).map(|i| (i as u32).to_le_bytes()).collect();
    let inputs: Vec<ArrayInput<'_>> = names
        .iter()
        .zip(&bytes)
        .map(|(name, b)| ArrayInput {
            name,
            dtype: DType::U32,
            shape: &[1],
            data: b,
        })
        .collect();
    store.save(&inputs).unwrap();
    drop(store);
    let store = NumPack::open(&dir).unwrap();
    let mut files = std::collections::HashSet::new();
    for (name, b) in names.iter().zip(&bytes) {
        assert_eq!(store.view(name).unwrap().data, b);
        let f = npkio::internals::numpack::record(&store, name)
            .unwrap()
            .data_file
            .to_ascii_lowercase();
        assert!(files.insert(f), "{name} shares a file name");
    }
}
