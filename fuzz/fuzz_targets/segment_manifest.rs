//! Segment manifests (`*.npkseg`): any bytes give segments or an error, never a panic, and
//! whatever decodes survives an encode/decode round trip unchanged.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use npkio::internals::numpack::segments;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz/data_x.npkseg");
    if let Ok(segs) = segments::decode(data, path) {
        let again = segments::decode(&segments::encode(&segs), path).expect("round trip");
        assert_eq!(again, segs);
    }
});
