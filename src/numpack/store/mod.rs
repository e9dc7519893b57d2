//! The NumPack store: open a directory, list and view arrays, save, append, drop, delete.
//!
//! [`NumPack`] is defined here; its methods live beside the concept they belong to:
//!
//! - `layout`: how an array's true dtype and shape map to what NumPack 0.7 stores, and
//!   which files hold its bytes.
//! - `open`: opening and creating a directory, and the validation done at open time.
//! - `query`: names, descriptions, views and extents of the arrays.
//! - `mutate`: save, append, drop rows, delete, and writing the metadata.
//! - `rows`: reading, dropping and replacing rows chosen by (possibly negative) index.
//! - `generation`: how a change is published in one step (fresh file names, one commit
//!   point), the lock, and the clean-up of interrupted changes.

mod generation;
mod index;
mod layout;
mod mutate;
mod open;
mod query;
mod row_changes;
mod rows;

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, OnceLock};

use memmap2::Mmap;

use crate::dtype::DType;
use crate::numpack::bitmap::Bitmap;
use crate::numpack::metadata::ArrayRecord;
use index::NameIndex;

pub use layout::{make_record, needs_entry, Storage};
pub use mutate::ArrayInput;
pub(crate) use open::{existing_kind, Existing};
pub use query::ArrayInfo;
pub use rows::Rows;
pub(crate) use rows::Unresolved;

/// An array's bytes held by the store: a mapping of its file, or a copy gathered from
/// segments or active rows.
enum Data {
    Empty,
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Data {
    fn as_slice(&self) -> &[u8] {
        match self {
            Data::Empty => &[],
            Data::Mapped(m) => m,
            Data::Owned(v) => v,
        }
    }
}

/// One array as the store holds it: its record and what opening derived from it.
struct Array {
    record: ArrayRecord,
    /// True dtype (from the sidecar when it still applies, else the record's code).
    dtype: DType,
    /// The true shapes, when they are not the record's shape (most arrays: one shape kept,
    /// not three).
    shapes: Option<Box<Shapes>>,
    storage: Storage,
    bitmap: Option<Box<Bitmap>>,
    data: OnceLock<Box<Data>>,
    /// Whether its data files were found as its record needs them (`NumPack::verify`):
    /// checked on first use, not when the store opens.
    verified: AtomicBool,
    /// Whether the listing of the directory at open showed its data file as a regular file.
    listed_regular: bool,
}

impl Array {
    /// An array of `record` with the dtype and shape it has for NumPack 0.7.
    fn new(record: ArrayRecord, dtype: DType, storage: Storage) -> Array {
        Array {
            record,
            dtype,
            shapes: None,
            storage,
            bitmap: None,
            data: OnceLock::new(),
            verified: AtomicBool::new(false),
            listed_regular: false,
        }
    }

    /// True shape before deletions.
    fn shape(&self) -> &[u64] {
        let kept = self.shapes.as_ref().and_then(|s| s.true_shape.as_deref());
        kept.unwrap_or(&self.record.shape)
    }

    /// Whether the true shape is not the record's.
    fn has_own_shape(&self) -> bool {
        self.shapes.as_ref().is_some_and(|s| s.true_shape.is_some())
    }

    /// True shape after deletions: what load and export show.
    fn logical_shape(&self) -> &[u64] {
        let kept = self.shapes.as_ref().and_then(|s| s.logical.as_deref());
        kept.unwrap_or(self.shape())
    }

    /// Sets the true shape; the logical one follows it and the bitmap.
    fn set_shape(&mut self, shape: Vec<u64>) {
        let own = (shape != self.record.shape).then(|| shape.into_boxed_slice());
        self.shapes = Shapes::boxed(own, None);
        if let Some(rows) = self.bitmap.as_deref().map(Bitmap::active_count) {
            self.set_logical_rows(rows);
        }
    }

    /// Sets the number of rows the logical shape has (the true shape has rows).
    fn set_logical_rows(&mut self, rows: u64) {
        let shape = self.shape();
        let logical = (shape.first() != Some(&rows)).then(|| {
            let mut l = shape.to_vec();
            l[0] = rows;
            l.into_boxed_slice()
        });
        let own = self.shapes.take().and_then(|s| s.true_shape);
        self.shapes = Shapes::boxed(own, logical);
    }

    /// Adds `n` rows to the shapes kept (the others follow the record's).
    fn add_rows(&mut self, n: u64) {
        if let Some(s) = &mut self.shapes {
            for kept in [&mut s.true_shape, &mut s.logical].into_iter().flatten() {
                kept[0] += n;
            }
        }
    }
}

/// An array's true shapes that are not its record's shape.
struct Shapes {
    /// The true shape before deletions, when it is not the record's.
    true_shape: Option<Box<[u64]>>,
    /// After deletions (what load and export show), when rows are deleted.
    logical: Option<Box<[u64]>>,
}

impl Shapes {
    /// The shapes kept, `None` when neither is.
    fn boxed(true_shape: Option<Box<[u64]>>, logical: Option<Box<[u64]>>) -> Option<Box<Shapes>> {
        (true_shape.is_some() || logical.is_some()).then(|| {
            Box::new(Shapes {
                true_shape,
                logical,
            })
        })
    }
}

/// Why an array listed in the metadata cannot be read (its files disagree with its record,
/// lead outside the directory, ...), and its sidecar entry, kept for the next metadata write.
struct Fault {
    error: crate::error::Error,
    entry: Option<crate::numpack::sidecar::Entry>,
}

/// A NumPack 0.7 directory.
///
/// Opening reads the metadata, the sidecar, segment manifests and deletion bitmaps (one
/// listing of the directory says which exist) and checks every path stays inside the
/// directory; it does not touch the data files. A data file is checked (a regular file,
/// reached without a link leading out, as long as its record needs) each time it is opened
/// for reading, through one function: for a view, a description, an export, the loader or a
/// change of the array. A directory whose metadata is bad is refused; an array whose own
/// files are bad is listed but fails with its own error when read, so the other arrays stay
/// readable. Array bytes are
/// mapped on first view and stay mapped until the store is dropped, so views handed out
/// earlier stay valid even after the array is replaced or appended to (a replaced array's
/// old file is unlinked, never rewritten; an append writes only past the bytes in use).
///
/// Every change (`save`, `append`, `drop_rows`, `delete`, `set_safetensors_metadata`) is
/// all or none: its new files go under names the live metadata does not use, and one
/// rename (of `metadata.npkm`, or of the one file the change touches) publishes it, so a
/// reader, or a crash at any point, sees the store as before the change or as after it.
/// A change takes the lock that conversions into the directory take, and fails without
/// changing anything if the directory was replaced since it was opened or another writer
/// changed it since; reopen the store then.
///
/// A store reads one committed state of each array: opening reads again if a writer
/// committed meanwhile. Once another writer has changed the store, reading an array whose
/// files were not opened yet reads it as the store is now if it still has the dtype and
/// shape this store describes, and fails with [`ErrorKind::Busy`](crate::ErrorKind::Busy)
/// if not (rather than return bytes of the new state under the old dtype and shape); see
/// `NumPack::read_state` in `query`.
pub struct NumPack {
    dir: PathBuf,
    /// The directory, opened once (`O_PATH`): data files are opened relative to it.
    root: OwnedFd,
    arrays: Vec<Array>,
    index: NameIndex,
    /// Arrays that are listed but cannot be read, by name: reading one fails with its error.
    faults: HashMap<String, Fault>,
    /// Metadata from the sidecar that is not tied to an array.
    st_metadata: Option<Vec<(String, String)>>,
    /// The shard layout of the SafeTensors source, if it was sharded.
    sharding: Option<crate::numpack::sidecar::Sharding>,
    /// The source's header, when it is not laid out as the crate would.
    source_header: Option<String>,
    /// Mappings and copies of arrays that were since changed, kept alive for old views.
    retired: Vec<Data>,
    durable: bool,
    last_stamp: u64,
    /// When the store was opened (a data file changed since then was changed under it).
    opened_at: std::time::SystemTime,
    /// The directory this store was opened on, and its metadata files as last seen.
    writer: generation::Writer,
    /// The store as another writer left it, read once after it changed: what reads fall
    /// back to (`NumPack::read_state`) while it is current.
    newer: Mutex<Option<Arc<NumPack>>>,
    /// Whether a read found that another writer changed the store since this store last
    /// read or wrote its metadata (the state it describes is not current).
    changed: AtomicBool,
}

impl std::fmt::Debug for NumPack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NumPack")
            .field("dir", &self.dir)
            .field("arrays", &self.arrays.len())
            .finish()
    }
}
