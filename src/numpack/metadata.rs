//! `metadata.npkm`: the binary metadata file of a NumPack 0.7 directory.
//!
//! The decoder trusts no length field: every count and length is checked against the bytes
//! that remain before anything is allocated for it.

use std::path::Path;

use crate::error::{Error, Result};

/// `"NPKB"` read as a little-endian u32.
pub const MAGIC: u32 = 0x424B_504E;
/// The only metadata version NumPack 0.7 writes.
pub const VERSION: u32 = 1;
/// File name of the metadata inside the directory.
pub const FILE_NAME: &str = "metadata.npkm";
/// Largest metadata npkio reads (a record takes 51 bytes and its names: 256 MiB is
/// millions of arrays).
pub const MAX_LEN: u64 = 256 << 20;

/// Block information of a compressed array (kept only so that a record round-trips).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockInfo {
    /// Whether block compression is enabled.
    pub enabled: u8,
    /// Block size in bytes.
    pub block_size: u64,
    /// Number of blocks.
    pub num_blocks: u64,
    /// (offset, original size, compressed size) of each block.
    pub blocks: Vec<(u64, u64, u64)>,
}

/// One array record, field by field as on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArrayRecord {
    /// The array's name, exactly as given by whoever saved it.
    pub name: String,
    /// Physical shape: rows before deletions.
    pub shape: Vec<u64>,
    /// The data file (`.npkd`) or segment manifest (`.npkseg`), relative to the directory.
    pub data_file: String,
    /// Microseconds since the Unix epoch.
    pub last_modified: u64,
    /// product(shape) x itemsize.
    pub size_bytes: u64,
    /// NumPack dtype code.
    pub dtype_code: u8,
    /// Compression algorithm: 0 none, 1 zstd.
    pub compression: u8,
    /// Compression level.
    pub compression_level: u32,
    /// Original size (compression info).
    pub original_size: u64,
    /// Compressed size (compression info).
    pub compressed_size: u64,
    /// Block information, if present.
    pub block_info: Option<Box<BlockInfo>>,
}

/// The whole metadata file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Metadata {
    /// Sum of `size_bytes` over the arrays, as stored.
    pub total_size: u64,
    /// The records, in file order.
    pub arrays: Vec<ArrayRecord>,
}

/// Smallest possible encoded record: every fixed field, empty name and file, 0-d.
const MIN_RECORD: usize = 4 + 4 + 4 + 8 + 8 + 1 + 1 + 4 + 8 + 8 + 1;

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        match end {
            Some(end) => {
                let s = &self.bytes[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(Error::malformed(
                self.path,
                format!(
                    "metadata ends inside {what} (needs {n} bytes at offset {}, file has {})",
                    self.pos,
                    self.bytes.len()
                ),
            )),
        }
    }

    fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        let b = self.take(8, what)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    /// A u32 count of items of `item_size` bytes each, checked against what remains.
    fn count(&mut self, item_size: usize, what: &str) -> Result<usize> {
        let n = self.u32(what)? as usize;
        let need = n.checked_mul(item_size);
        if need.is_none_or(|need| need > self.remaining()) {
            return Err(Error::malformed(
                self.path,
                format!(
                    "{what} is {n}, more than the {} bytes left in the metadata can hold",
                    self.remaining()
                ),
            ));
        }
        Ok(n)
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let n = self.count(1, what)?;
        let b = self.take(n, what)?;
        String::from_utf8(b.to_vec())
            .map_err(|_| Error::malformed(self.path, format!("{what}: not valid UTF-8")))
    }
}

impl Metadata {
    /// Decodes `bytes`, the content of `path` (used in error messages).
    pub fn decode(bytes: &[u8], path: &Path) -> Result<Metadata> {
        let mut records = Records::new(bytes, path)?;
        let total_size = records.total_size;
        let mut arrays = Vec::with_capacity(records.len());
        for r in &mut records {
            arrays.push(r?);
        }
        Ok(Metadata { total_size, arrays })
    }

    /// Encodes the metadata exactly as NumPack 0.7 lays it out. `total_size` is recomputed.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.arrays.len() * 128);
        encode_records(&self.arrays, &mut out).expect("writing to memory does not fail");
        out
    }
}

/// Writes the metadata file listing `arrays` to `out`, as [`Metadata::encode`] lays it out
/// (`total_size` computed), without building it in memory first.
pub fn encode_records(
    arrays: &[ArrayRecord],
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    let total: u64 = arrays
        .iter()
        .fold(0u64, |a, r| a.saturating_add(r.size_bytes));
    out.write_all(&MAGIC.to_le_bytes())?;
    out.write_all(&VERSION.to_le_bytes())?;
    out.write_all(&total.to_le_bytes())?;
    out.write_all(&(arrays.len() as u32).to_le_bytes())?;
    for a in arrays {
        put_str(out, &a.name)?;
        out.write_all(&(a.shape.len() as u32).to_le_bytes())?;
        for d in &a.shape {
            out.write_all(&d.to_le_bytes())?;
        }
        put_str(out, &a.data_file)?;
        out.write_all(&a.last_modified.to_le_bytes())?;
        out.write_all(&a.size_bytes.to_le_bytes())?;
        out.write_all(&[a.dtype_code, a.compression])?;
        out.write_all(&a.compression_level.to_le_bytes())?;
        out.write_all(&a.original_size.to_le_bytes())?;
        out.write_all(&a.compressed_size.to_le_bytes())?;
        match &a.block_info {
            None => out.write_all(&[0])?,
            Some(b) => {
                out.write_all(&[1, b.enabled])?;
                out.write_all(&b.block_size.to_le_bytes())?;
                out.write_all(&b.num_blocks.to_le_bytes())?;
                out.write_all(&(b.blocks.len() as u32).to_le_bytes())?;
                for (o, s, c) in &b.blocks {
                    out.write_all(&o.to_le_bytes())?;
                    out.write_all(&s.to_le_bytes())?;
                    out.write_all(&c.to_le_bytes())?;
                }
            }
        }
    }
    Ok(())
}

/// The records of a metadata file, decoded one by one as [`Metadata::decode`] decodes them
/// (none kept): an error ends the iteration, and bytes left after the last record are one.
pub struct Records<'a> {
    r: Reader<'a>,
    /// `total_size` as stored.
    pub total_size: u64,
    count: usize,
    next: usize,
    done: bool,
}

impl<'a> Records<'a> {
    /// Checks the header of `bytes`, the content of `path` (used in error messages).
    pub fn new(bytes: &'a [u8], path: &'a Path) -> Result<Records<'a>> {
        let mut r = Reader {
            bytes,
            pos: 0,
            path,
        };
        let magic = r.u32("the magic number")?;
        if magic != MAGIC {
            return Err(Error::malformed(
                path,
                format!("not NumPack metadata: magic is {magic:#010x}, expected {MAGIC:#010x} (\"NPKB\")"),
            ));
        }
        let version = r.u32("the version")?;
        if version != VERSION {
            return Err(Error::new(
                crate::ErrorKind::Unsupported,
                format!("NumPack metadata version {version} (only version {VERSION} is known)"),
            )
            .at(path));
        }
        let total_size = r.u64("total_size")?;
        let count = r.count(MIN_RECORD, "the array count")?;
        Ok(Records {
            r,
            total_size,
            count,
            next: 0,
            done: false,
        })
    }

    /// How many records the file lists.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether the file lists none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

impl Iterator for Records<'_> {
    type Item = Result<ArrayRecord>;

    fn next(&mut self) -> Option<Result<ArrayRecord>> {
        if self.done {
            return None;
        }
        let r = &mut self.r;
        if self.next == self.count {
            self.done = true;
            return (r.remaining() != 0).then(|| {
                Err(Error::malformed(
                    r.path,
                    format!(
                        "{} unexpected bytes after the last array record",
                        r.remaining()
                    ),
                ))
            });
        }
        let i = self.next;
        self.next += 1;
        let rec = r.string("an array name length").and_then(|name| {
            let label = if name.is_empty() {
                format!("#{i}")
            } else {
                name.clone()
            };
            decode_record(r, name).map_err(|e| e.array(label))
        });
        self.done = rec.is_err();
        Some(rec)
    }
}

fn put_str(out: &mut impl std::io::Write, s: &str) -> std::io::Result<()> {
    out.write_all(&(s.len() as u32).to_le_bytes())?;
    out.write_all(s.as_bytes())
}

fn decode_record(r: &mut Reader<'_>, name: String) -> Result<ArrayRecord> {
    let ndim = r.count(8, "the number of dimensions")?;
    let mut shape = Vec::with_capacity(ndim);
    for _ in 0..ndim {
        shape.push(r.u64("the shape")?);
    }
    let data_file = r.string("the data file name")?;
    let last_modified = r.u64("last_modified")?;
    let size_bytes = r.u64("size_bytes")?;
    let dtype_code = r.u8("the dtype code")?;
    let compression = r.u8("the compression algorithm")?;
    let compression_level = r.u32("the compression level")?;
    let original_size = r.u64("the original size")?;
    let compressed_size = r.u64("the compressed size")?;
    let block_info = match r.u8("has_block_info")? {
        0 => None,
        1 => {
            let enabled = r.u8("the block info")?;
            let block_size = r.u64("the block size")?;
            let num_blocks = r.u64("the block count")?;
            let n = r.count(24, "the block list length")?;
            let mut blocks = Vec::with_capacity(n);
            for _ in 0..n {
                blocks.push((
                    r.u64("a block offset")?,
                    r.u64("a block size")?,
                    r.u64("a block size")?,
                ));
            }
            Some(Box::new(BlockInfo {
                enabled,
                block_size,
                num_blocks,
                blocks,
            }))
        }
        other => {
            return Err(Error::malformed(
                r.path,
                format!("has_block_info is {other}, expected 0 or 1"),
            ))
        }
    };
    Ok(ArrayRecord {
        name,
        shape,
        data_file,
        last_modified,
        size_bytes,
        dtype_code,
        compression,
        compression_level,
        original_size,
        compressed_size,
        block_info,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Metadata {
        Metadata {
            total_size: 24,
            arrays: vec![ArrayRecord {
                name: "w".into(),
                shape: vec![2, 3],
                data_file: "data_w.npkd".into(),
                last_modified: 7,
                size_bytes: 24,
                dtype_code: 10,
                compression: 0,
                compression_level: 0,
                original_size: 0,
                compressed_size: 0,
                block_info: None,
            }],
        }
    }

    #[test]
    fn encode_decode_round_trip() {
        let m = sample();
        let bytes = m.encode();
        assert_eq!(Metadata::decode(&bytes, Path::new("x")).unwrap(), m);
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample().encode();
        for n in 0..bytes.len() {
            let e = Metadata::decode(&bytes[..n], Path::new("m")).unwrap_err();
            assert_eq!(e.kind(), crate::ErrorKind::Malformed, "{n}: {e}");
        }
    }
}
