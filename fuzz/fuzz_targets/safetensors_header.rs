//! The SafeTensors header path: the input is written to a file (npkio reads SafeTensors
//! from files only), then opened. Opening never panics; on success every tensor's view
//! lies inside the file and is as long as its dtype and shape say.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use npkio::SafeTensorsFile;

fn scratch() -> &'static PathBuf {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        base.join(format!("npkio-fuzz-st-{}.safetensors", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    let path = scratch();
    std::fs::write(path, data).expect("write the scratch file");
    let Ok(f) = SafeTensorsFile::open(path) else {
        return;
    };
    assert_eq!(f.file_len(), data.len() as u64);
    assert!(f.data_start() <= f.file_len());
    let mut sum = 0u8;
    for i in 0..f.len() {
        let v = f.view(i).expect("every position has a view");
        let want = npkio::internals::dtype::byte_len(v.dtype, v.shape).expect("validated shape");
        assert_eq!(v.data.len() as u64, want, "tensor {:?}", v.name);
        sum = v.data.iter().fold(sum, |a, &b| a.wrapping_add(b));
        assert_eq!(
            f.get(v.name).map(|g| g.data.as_ptr()),
            Some(v.data.as_ptr())
        );
    }
    std::hint::black_box(sum);
    let meta = npkio::get_safetensors_metadata(path).expect("opens twice");
    assert_eq!(meta.tensors.len(), f.len());
});
