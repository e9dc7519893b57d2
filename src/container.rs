//! What kind of checkpoint a path names: the one place npkio decides it, for the loader,
//! the command line and the bindings alike.

use std::fs;
use std::path::Path;

use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::numpack::metadata::FILE_NAME as NUMPACK_METADATA;
use crate::safetensors::index::{find_index, model_file_in};

/// What kind of checkpoint a path is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Container {
    /// One `.safetensors` file (or a model directory holding `model.safetensors`).
    SafeTensors,
    /// A sharded SafeTensors checkpoint: a `*.safetensors.index.json` and its shards (the
    /// index file, or a directory holding it).
    ShardedSafeTensors,
    /// A NumPack directory (plain, segmented or with dropped rows): it holds
    /// `metadata.npkm`.
    NumPack,
}

impl Container {
    /// Decides what `path` is from its type and, for a directory, a listing; no file is
    /// read.
    ///
    /// A directory holding `metadata.npkm` is a NumPack directory; one holding a
    /// `*.safetensors.index.json` (exactly one, or `model.safetensors.index.json`) is a
    /// sharded checkpoint; one holding `model.safetensors` and no index (a model directory
    /// as `save_pretrained` writes it) is that single file; any other directory is an
    /// `InvalidArgument` error. A file ending
    /// in `.json` is a sharded checkpoint's index; any other file is a single SafeTensors
    /// file.
    pub fn detect(path: impl AsRef<Path>) -> Result<Container> {
        let path = path.as_ref();
        let md = fs::metadata(path).ctx(path, "opening")?;
        if !md.is_dir() {
            return Ok(match find_index(path)? {
                Some(_) => Container::ShardedSafeTensors,
                None => Container::SafeTensors,
            });
        }
        if path.join(NUMPACK_METADATA).exists() {
            return Ok(Container::NumPack);
        }
        if model_file_in(path)?.is_some() {
            return Ok(Container::SafeTensors);
        }
        let has_index = fs::read_dir(path).ctx(path, "listing")?.flatten().any(|e| {
            e.file_name()
                .to_string_lossy()
                .ends_with(".safetensors.index.json")
        });
        if !has_index {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "is a directory but neither a NumPack directory (no metadata.npkm) nor a \
                 SafeTensors checkpoint (no model.safetensors, no *.safetensors.index.json)",
            )
            .at(path));
        }
        // Several indexes, or none of the standard name: the index finder's own error.
        find_index(path)?;
        Ok(Container::ShardedSafeTensors)
    }

    /// Whether this is one of the SafeTensors kinds (single file or sharded).
    pub fn is_safetensors(self) -> bool {
        matches!(self, Container::SafeTensors | Container::ShardedSafeTensors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_is_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let st = d.join("m.safetensors");
        fs::write(&st, b"x").unwrap();
        assert_eq!(Container::detect(&st).unwrap(), Container::SafeTensors);
        let index = d.join("m.safetensors.index.json");
        fs::write(&index, b"{}").unwrap();
        assert_eq!(
            Container::detect(&index).unwrap(),
            Container::ShardedSafeTensors
        );
        assert_eq!(Container::detect(d).unwrap(), Container::ShardedSafeTensors);
        let npk = d.join("n.npk");
        fs::create_dir(&npk).unwrap();
        let e = Container::detect(&npk).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidArgument);
        assert!(e.to_string().contains("neither a NumPack directory"), "{e}");
        // A model directory: config.json and model.safetensors, as save_pretrained leaves it.
        let model = d.join("model");
        fs::create_dir(&model).unwrap();
        fs::write(model.join("config.json"), b"{}").unwrap();
        fs::write(model.join("model.safetensors"), b"x").unwrap();
        assert_eq!(Container::detect(&model).unwrap(), Container::SafeTensors);
        fs::write(model.join("model.safetensors.index.json"), b"{}").unwrap();
        assert_eq!(
            Container::detect(&model).unwrap(),
            Container::ShardedSafeTensors
        );
        fs::write(npk.join("metadata.npkm"), b"").unwrap();
        assert_eq!(Container::detect(&npk).unwrap(), Container::NumPack);
        fs::write(d.join("other.safetensors.index.json"), b"{}").unwrap();
        assert_eq!(
            Container::detect(d).unwrap_err().kind(),
            ErrorKind::InvalidArgument
        );
        assert_eq!(
            Container::detect(d.join("absent")).unwrap_err().kind(),
            ErrorKind::NotFound
        );
    }
}
