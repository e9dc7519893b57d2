//! Deletion bitmaps read as NumPack 0.7 reads them, and damaged arrays failing alone.
//!
//! `tests/fixtures/numpack-0.7-spec/drop_then_append.npk` is what NumPack 0.7.0 leaves
//! after `save` of arrays `a` (10 rows), `b` and `c` (100 rows), `drop('a', [1])`,
//! `drop('c', [3, 70])`, then `append` of 2 rows to `a` and to `c`. Its bytes are written
//! here from the format description (docs/format.md and NumPack 0.7.0's bitmap code: its
//! `append` sets every bit of the bitmap's last word up to the new row count and keeps the
//! header's deleted count), not by npkio's own encoder; `NPKIO_BLESS=1` rewrites the
//! fixture, and the test checks that the committed bytes are these.
//!
//! NumPack's own `load` consults the bits when the header counts deleted rows: `a` loads
//! all 12 rows (row 1 is active again), `c` loads 101 (row 3 stays deleted, row 70 is
//! active again). npkio reads the same.

use std::path::{Path, PathBuf};

use npkio::{ErrorKind, NumPack};

fn fixture() -> PathBuf {
    crate::common::fixture("numpack-0.7-spec/drop_then_append.npk")
}

/// One metadata record, as laid out in `metadata.npkm`.
struct Record<'a> {
    name: &'a str,
    shape: &'a [u64],
    data_file: &'a str,
    last_modified: u64,
    itemsize: u64,
    code: u8,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// `metadata.npkm` for `records`, field by field as the format gives them.
fn metadata(records: &[Record<'_>]) -> Vec<u8> {
    let size = |r: &Record<'_>| r.shape.iter().product::<u64>() * r.itemsize;
    let mut out = Vec::new();
    out.extend_from_slice(b"NPKB");
    out.extend_from_slice(&1u32.to_le_bytes());
    let total: u64 = records.iter().map(size).sum();
    out.extend_from_slice(&total.to_le_bytes());
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    for r in records {
        put_str(&mut out, r.name);
        out.extend_from_slice(&(r.shape.len() as u32).to_le_bytes());
        for d in r.shape {
            out.extend_from_slice(&d.to_le_bytes());
        }
        put_str(&mut out, r.data_file);
        out.extend_from_slice(&r.last_modified.to_le_bytes());
        out.extend_from_slice(&size(r).to_le_bytes());
        out.push(r.code);
        out.push(0); // compression: none
        out.extend_from_slice(&0u32.to_le_bytes()); // level
        out.extend_from_slice(&0u64.to_le_bytes()); // original size
        out.extend_from_slice(&0u64.to_le_bytes()); // compressed size
        out.push(0); // no block info
    }
    out
}

/// A bitmap file: `u64 total_rows, u64 deleted_count, words`.
fn bitmap(total: u64, deleted: u64, words: &[u64]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&total.to_le_bytes());
    out.extend_from_slice(&deleted.to_le_bytes());
    for w in words {
        out.extend_from_slice(&w.to_le_bytes());
    }
    out
}

fn a_rows() -> Vec<[i32; 3]> {
    (0..12).map(|r| [r * 10, r * 10 + 1, r * 10 + 2]).collect()
}

fn c_rows() -> Vec<[u8; 2]> {
    (0..102u32)
        .map(|r| [(r * 2 % 251) as u8, (r * 2 + 1) as u8])
        .collect()
}

const B: [f32; 4] = [1.5, 2.5, -3.0, 4.25];

/// The fixture's files, name and bytes.
fn files() -> Vec<(&'static str, Vec<u8>)> {
    let a: Vec<u8> = a_rows()
        .iter()
        .flatten()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    let b: Vec<u8> = B.iter().flat_map(|v| v.to_le_bytes()).collect();
    let c: Vec<u8> = c_rows().iter().flatten().copied().collect();
    let meta = metadata(&[
        Record {
            name: "a",
            shape: &[12, 3],
            data_file: "data_a.npkd",
            last_modified: 1_764_720_000_300_000,
            itemsize: 4,
            code: 7, // int32
        },
        Record {
            name: "b",
            shape: &[4],
            data_file: "data_b.npkd",
            last_modified: 1_764_720_000_100_000,
            itemsize: 4,
            code: 10, // float32
        },
        Record {
            name: "c",
            shape: &[102, 2],
            data_file: "data_c.npkd",
            last_modified: 1_764_720_000_400_000,
            itemsize: 1,
            code: 1, // uint8
        },
    ]);
    // a: 10 rows, row 1 dropped (word 0x3fd, count 1); append of 2 sets bits 0..12 of the
    // last word (0xfff) and keeps the count: header says 1 deleted, the bits none.
    let a_bitmap = bitmap(12, 1, &[0xfff]);
    // c: 100 rows, rows 3 and 70 dropped (count 2); append of 2 keeps word 0 (row 3 still
    // clear) and sets bits 0..38 of the last word (row 70 active again).
    let c_bitmap = bitmap(102, 2, &[!(1u64 << 3), (1u64 << 38) - 1]);
    vec![
        ("data_a.npkd", a),
        ("data_b.npkd", b),
        ("data_c.npkd", c),
        ("deleted_a.npkb", a_bitmap),
        ("deleted_c.npkb", c_bitmap),
        ("metadata.npkm", meta),
    ]
}

#[test]
fn the_fixture_holds_the_bytes_the_format_gives() {
    let dir = fixture();
    if std::env::var_os("NPKIO_BLESS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in files() {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    on_disk.sort();
    let mut want: Vec<&str> = files().iter().map(|f| f.0).collect();
    want.sort();
    assert_eq!(on_disk, want);
    for (name, bytes) in files() {
        assert_eq!(std::fs::read(dir.join(name)).unwrap(), bytes, "{name}");
    }
}

fn i32_bytes(rows: &[[i32; 3]]) -> Vec<u8> {
    rows.iter()
        .flatten()
        .flat_map(|v| v.to_le_bytes())
        .collect()
}

#[test]
fn drop_then_append_reads_as_numpack_loads_it() {
    let store = NumPack::open(fixture()).unwrap();
    assert_eq!(store.names(), ["a", "b", "c"]);
    // a: every bit set, so all 12 rows, in order (NumPack's load gives the same).
    let a = store.view("a").unwrap();
    assert_eq!(a.shape, [12, 3]);
    assert_eq!(a.data, i32_bytes(&a_rows()));
    // b: untouched.
    let b = store.view("b").unwrap();
    assert_eq!(
        b.data,
        B.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>()
    );
    // c: row 3 deleted, row 70 back: 101 rows.
    let c = store.view("c").unwrap();
    assert_eq!(c.shape, [101, 2]);
    let want: Vec<u8> = c_rows()
        .iter()
        .enumerate()
        .filter(|(r, _)| *r != 3)
        .flat_map(|(_, v)| *v)
        .collect();
    assert_eq!(c.data, want);
    assert_eq!(store.info("c").unwrap().deleted_rows, 1);
    // Converting the directory gives the same rows.
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out.safetensors");
    npkio::to_safetensors_file(fixture(), &out, None::<&[&str]>, None, 1 << 20).unwrap();
    let st = npkio::SafeTensorsFile::open(&out).unwrap();
    assert_eq!(st.get("a").unwrap().data, i32_bytes(&a_rows()));
    assert_eq!(st.get("c").unwrap().data, want);
}

/// A copy of the fixture in a temporary directory.
fn copy_fixture(tmp: &Path) -> PathBuf {
    let dir = tmp.join("d.npk");
    std::fs::create_dir(&dir).unwrap();
    for (name, bytes) in files() {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    dir
}

#[test]
fn appending_and_dropping_again_keep_what_numpack_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_fixture(tmp.path());
    let mut store = NumPack::open(&dir).unwrap();
    // Drop logical row 0 of a (physical 0), append one row: 12 rows remain, row 0 gone.
    store.drop_rows("a", &[0]).unwrap();
    store.append("a", &i32_bytes(&[[7, 8, 9]])).unwrap();
    drop(store);
    let store = NumPack::open(&dir).unwrap();
    let mut want = a_rows()[1..].to_vec();
    want.push([7, 8, 9]);
    assert_eq!(store.view("a").unwrap().data, i32_bytes(&want));
    // npkio writes a count that agrees with the bits.
    let bytes = std::fs::read(dir.join("deleted_a.npkb")).unwrap();
    assert_eq!(u64::from_le_bytes(bytes[0..8].try_into().unwrap()), 13);
    assert_eq!(u64::from_le_bytes(bytes[8..16].try_into().unwrap()), 1);
}

#[test]
fn a_header_counting_no_deleted_rows_reads_every_row() {
    // NumPack's load does not look at the bits when the count is 0.
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_fixture(tmp.path());
    std::fs::write(dir.join("deleted_a.npkb"), bitmap(12, 0, &[0xff0])).unwrap();
    let store = NumPack::open(&dir).unwrap();
    assert_eq!(store.view("a").unwrap().data, i32_bytes(&a_rows()));
    // The old layout, words alone, is read by its bits.
    std::fs::write(dir.join("deleted_a.npkb"), 0xff0u64.to_le_bytes()).unwrap();
    let store = NumPack::open(&dir).unwrap();
    assert_eq!(store.view("a").unwrap().data, i32_bytes(&a_rows()[4..]));
}

/// Each damage makes `a` fail when read, naming it, while `b` and `c` stay readable.
#[test]
fn a_damaged_array_fails_alone() {
    type Damage = fn(&Path);
    let cases: &[(&str, Damage, &str)] = &[
        (
            "bitmap counting other rows",
            |d| std::fs::write(d.join("deleted_a.npkb"), bitmap(25, 1, &[0xfff])).unwrap(),
            "25 rows",
        ),
        (
            "bitmap of impossible size",
            |d| std::fs::write(d.join("deleted_a.npkb"), [0u8; 5]).unwrap(),
            "deletion bitmap",
        ),
        (
            "data file shorter than the shape",
            |d| {
                let f = std::fs::OpenOptions::new()
                    .write(true)
                    .open(d.join("data_a.npkd"))
                    .unwrap();
                f.set_len(100).unwrap();
            },
            "shorter",
        ),
        (
            "data file missing",
            |d| std::fs::remove_file(d.join("data_a.npkd")).unwrap(),
            "missing",
        ),
        (
            "data file is a directory",
            |d| {
                std::fs::remove_file(d.join("data_a.npkd")).unwrap();
                std::fs::create_dir(d.join("data_a.npkd")).unwrap();
            },
            "not a regular file",
        ),
        (
            "data file links outside",
            |d| {
                std::fs::remove_file(d.join("data_a.npkd")).unwrap();
                std::fs::write(d.parent().unwrap().join("outside"), [0u8; 144]).unwrap();
                std::os::unix::fs::symlink("../outside", d.join("data_a.npkd")).unwrap();
            },
            "leads outside",
        ),
    ];
    for (what, damage, words) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let dir = copy_fixture(tmp.path());
        damage(&dir);
        let store = NumPack::open(&dir).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(store.names(), ["a", "b", "c"], "{what}");
        let e = store.view("a").expect_err(what);
        assert_eq!(e.kind(), ErrorKind::Malformed, "{what}: {e}");
        assert_eq!(e.array_name(), Some("a"), "{what}: {e}");
        assert!(e.to_string().contains(words), "{what}: {e}");
        assert!(store.info("a").is_err() && store.array_extents("a").is_err());
        assert_eq!(store.view("b").unwrap().data.len(), 16, "{what}");
        assert_eq!(store.view("c").unwrap().shape, [101, 2], "{what}");
        // Exporting the others works; exporting everything fails naming `a`.
        let out = tmp.path().join("b.safetensors");
        npkio::to_safetensors_file(&dir, &out, Some(&["b", "c"]), None, 1 << 20).unwrap();
        let out = tmp.path().join("all.safetensors");
        let e =
            npkio::to_safetensors_file(&dir, &out, None::<&[&str]>, None, 1 << 20).expect_err(what);
        assert_eq!(e.array_name(), Some("a"), "{what}: {e}");
        assert!(!out.exists());
        // Saving `a` anew repairs the directory (a directory in the way excepted); nothing
        // else is lost.
        drop(store);
        if what.contains("directory") {
            continue;
        }
        let mut store = NumPack::open(&dir).unwrap();
        let fresh = i32_bytes(&[[1, 2, 3]]);
        store
            .save(&[npkio::ArrayInput {
                name: "a",
                dtype: npkio::DType::I32,
                shape: &[1, 3],
                data: &fresh,
            }])
            .unwrap();
        drop(store);
        let store = NumPack::open(&dir).unwrap();
        assert_eq!(store.view("a").unwrap().data, fresh, "{what}");
        assert_eq!(store.view("c").unwrap().shape, [101, 2], "{what}");
    }
}

#[test]
fn a_damaged_array_can_be_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = copy_fixture(tmp.path());
    std::fs::remove_file(dir.join("data_a.npkd")).unwrap();
    let mut store = NumPack::open(&dir).unwrap();
    assert!(store.append("a", &i32_bytes(&[[1, 2, 3]])).is_err());
    assert!(store.drop_rows("a", &[0]).is_err());
    store.delete("a").unwrap();
    drop(store);
    let store = NumPack::open(&dir).unwrap();
    assert_eq!(store.names(), ["b", "c"]);
    assert!(!dir.join("deleted_a.npkb").exists());
}
