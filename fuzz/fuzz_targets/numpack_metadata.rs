//! `metadata.npkm` decoding: any bytes give a record list or an error, never a panic, and
//! whatever decodes survives an encode/decode round trip unchanged.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use npkio::internals::numpack::metadata::Metadata;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz/metadata.npkm");
    if let Ok(m) = Metadata::decode(data, path) {
        let again = Metadata::decode(&m.encode(), path).expect("an encoded metadata decodes");
        // `encode` recomputes total_size; everything else is kept as read.
        assert_eq!(again.arrays, m.arrays);
    }
});
