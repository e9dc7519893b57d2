//! A whole NumPack directory: the input is its `metadata.npkm`, beside the data files,
//! segment manifests and deletion bitmaps of every NumPack fixture (copied once into a
//! scratch directory). Opening never panics and never reads outside the directory; every
//! array that opens gives a view as long as its dtype and logical shape say, and small
//! stores export to SafeTensors.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use npkio::NumPack;

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_tree(&e.path(), &target);
        } else if e.file_name() != "metadata.npkm" {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

fn scratch() -> &'static PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("npkio-fuzz-npk-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/numpack-0.7");
        for store in ["basic.npk", "dropped.npk", "appended.npk", "segmented.npk"] {
            copy_tree(&fixtures.join(store), &dir.join("store"));
        }
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let dir = scratch();
    let store = dir.join("store");
    std::fs::write(store.join("metadata.npkm"), data).expect("write the metadata");
    let Ok(np) = NumPack::open(&store) else {
        return;
    };
    let mut total = 0u64;
    for name in np.names() {
        let info = np.info(name).expect("a listed array has info");
        let view = np.view(name).expect("a listed array has a view");
        assert_eq!(view.data.len() as u64, info.nbytes, "array {name:?}");
        let want = npkio::internals::dtype::byte_len(info.dtype, &info.shape);
        assert_eq!(want, Some(info.nbytes), "array {name:?}");
        let extents = np.array_extents(name).expect("extents");
        assert_eq!(extents.iter().map(|e| e.len).sum::<u64>(), info.nbytes);
        total += info.nbytes;
    }
    if total <= 1 << 20 {
        let out = dir.join("out.safetensors");
        // Export may refuse (complex dtypes have no SafeTensors name); it must not panic.
        if npkio::to_safetensors_file(&store, &out, None::<&[&str]>, None, 1 << 16).is_ok() {
            let back = npkio::SafeTensorsFile::open(&out).expect("export reads back");
            assert_eq!(back.len(), np.len());
        }
    }
});
