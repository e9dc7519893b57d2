//! Segment manifests (`data_<name>.npkseg`): an array stored as several files.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Largest manifest npkio reads (a manifest lists files; 64 MiB is millions of them).
pub const MAX_MANIFEST_LEN: u64 = 64 << 20;

/// One segment: a file holding `rows` rows in `bytes` bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// Path of the segment file, relative to the NumPack directory.
    pub file: String,
    /// Rows in this segment.
    pub rows: u64,
    /// Bytes in this segment.
    pub bytes: u64,
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    version: u32,
    segments: Vec<Segment>,
}

/// Decodes a manifest (the content of `path`).
pub fn decode(bytes: &[u8], path: &Path) -> Result<Vec<Segment>> {
    let m: Manifest = serde_json::from_slice(bytes)
        .map_err(|e| Error::malformed(path, format!("invalid segment manifest: {e}")))?;
    if m.version != 1 {
        return Err(Error::new(
            crate::ErrorKind::Unsupported,
            format!("segment manifest version {} (only 1 is known)", m.version),
        )
        .at(path));
    }
    Ok(m.segments)
}

/// Encodes a manifest the way NumPack 0.7 writes it.
pub fn encode(segments: &[Segment]) -> Vec<u8> {
    let m = Manifest {
        version: 1,
        segments: segments.to_vec(),
    };
    serde_json::to_vec_pretty(&m).expect("a manifest always serializes")
}
