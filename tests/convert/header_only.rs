//! Listing a file's tensors reads its header and nothing else, whatever the file's size.
//! Shown on a sparse file of 16 GiB whose data region was never written: reading it would
//! fault in four million pages; the metadata call and a full iteration fault in a handful.

use std::io::Write;

use crate::common;

fn minor_faults() -> i64 {
    // SAFETY: getrusage only writes into the struct we pass.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u.ru_minflt + u.ru_majflt
    }
}

const CHILD: &str = "NPKIO_HEADER_ONLY_CHILD";

/// Counts the page faults of the whole process: it runs in a child process of its own,
/// where no other test adds to them.
#[test]
fn metadata_and_iteration_do_not_touch_tensor_data() {
    if std::env::var_os(CHILD).is_none() {
        let name = "metadata_and_iteration_do_not_touch_tensor_data";
        common::child_passes(&mut common::rerun(module_path!(), name, CHILD, "1"), name);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.safetensors");
    // 16 tensors of 1 GiB each, F32.
    let mut header = String::from("{\"__metadata__\":{\"format\":\"pt\"}");
    let per = 1u64 << 30;
    for i in 0..16u64 {
        header.push_str(&format!(
            ",\"layer.{i}\":{{\"dtype\":\"F32\",\"shape\":[{},1024],\"data_offsets\":[{},{}]}}",
            per / 4096,
            i * per,
            (i + 1) * per
        ));
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
    f.write_all(header.as_bytes()).unwrap();
    f.set_len(8 + header.len() as u64 + 16 * per).unwrap();
    drop(f);

    let before = minor_faults();
    let meta = npkio::get_safetensors_metadata(&path).unwrap();
    assert_eq!(meta.tensors.len(), 16);
    assert_eq!(meta.tensors[3].1.data_offsets, (3 * per, 4 * per));
    let mut total = 0u64;
    for (_, t) in npkio::iter_safetensors(&path, None::<&[&str]>).unwrap() {
        total += t.shape().iter().product::<u64>() * 4;
        assert_eq!(t.data().len() as u64, per); // the slice exists; no byte of it is read
    }
    assert_eq!(total, 16 * per);
    let faults = minor_faults() - before;
    // 16 GiB is 4,194,304 pages; a header-only path needs a few dozen faults at most
    // (allocator and code pages included).
    assert!(
        faults < 2_000,
        "{faults} page faults: tensor data was touched"
    );
}
