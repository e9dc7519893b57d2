//! Deletion bitmaps (`deleted_*.npkb`): the first 8 bytes of the input are the array's row
//! count, the rest the bitmap file. Decoding never panics; a decoded bitmap's runs cover
//! exactly its active rows, and it round-trips through `encode`.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use npkio::internals::numpack::bitmap::Bitmap;

fuzz_target!(|data: &[u8]| {
    let Some((rows, bytes)) = data.split_first_chunk::<8>() else {
        return;
    };
    let rows = u64::from_le_bytes(*rows);
    let path = Path::new("fuzz/deleted_x.npkb");
    if let Ok(b) = Bitmap::decode(bytes, rows, path) {
        assert_eq!(b.total_rows(), rows);
        let runs = b.active_runs();
        assert_eq!(runs.iter().map(|r| r.1).sum::<u64>(), b.active_count());
        for w in runs.windows(2) {
            assert!(
                w[0].0 + w[0].1 < w[1].0,
                "runs are sorted and apart: {runs:?}"
            );
        }
        for &(start, len) in &runs {
            assert!(b.is_active(start) && b.is_active(start + len - 1));
            assert!(start + len <= rows);
        }
        assert_eq!(
            Bitmap::decode(&b.encode(), rows, path).expect("round trip"),
            b
        );
    }
});
