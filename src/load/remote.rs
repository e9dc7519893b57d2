//! Opening a checkpoint in object storage: its files become remote objects, their headers
//! parsed by the same parser as local files' from the bytes of at most two ranged GETs.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use object_store::path::Path as ObjPath;

use super::source::{push_tensors, reserve, Container, Opened, SourceFile};
use crate::error::{Error, ErrorKind, Result};
use crate::remote::{connect, Listed, Remote, RemoteObject, RemoteOptions};
use crate::safetensors::index::{parse_index, INDEX_NAME, SINGLE_FILE_NAME};
use crate::safetensors::reader::{parse_header, ParsedHeader};

/// Largest index read.
const MAX_INDEX_LEN: u64 = 256 << 20;

/// Opens `url`: a `.safetensors` object, a `.json` index, or a prefix holding
/// `model.safetensors.index.json` or `model.safetensors`.
pub(crate) fn open(url: &str, opts: &RemoteOptions) -> Result<Opened> {
    let (remote, path) = connect(url, opts)?;
    let name = path.filename().unwrap_or("");
    let o = if name.ends_with(".json") {
        open_index(&remote, path, url.to_string())?
    } else if name.ends_with(".safetensors") {
        open_single(&remote, path, url.to_string())?
    } else {
        // A prefix: one LIST says what it holds.
        let listed = remote.list(&path, url)?;
        let has = |n: &str| {
            let p = child(&path, n);
            listed.iter().any(|l| l.path == p)
        };
        let dir = url.trim_end_matches('/');
        if has(INDEX_NAME) {
            open_index(
                &remote,
                child(&path, INDEX_NAME),
                format!("{dir}/{INDEX_NAME}"),
            )?
        } else if has(crate::numpack::metadata::FILE_NAME) {
            return open_numpack(&remote, &path, url, listed);
        } else if has(SINGLE_FILE_NAME) {
            let u = format!("{dir}/{SINGLE_FILE_NAME}");
            open_single(&remote, child(&path, SINGLE_FILE_NAME), u)?
        } else {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "the prefix holds no {INDEX_NAME}, {SINGLE_FILE_NAME} or NumPack {} ({} \
                     objects listed; a single object's URL ends in .safetensors, an index's \
                     in .json)",
                    crate::numpack::metadata::FILE_NAME,
                    listed.len()
                ),
            )
            .at(url));
        }
    };
    super::source::with_names(o, Path::new(url))
}

/// `base/name` as an object path.
fn child(base: &ObjPath, name: &str) -> ObjPath {
    base.parts()
        .chain(name.split('/').map(object_store::path::PathPart::from))
        .collect()
}

/// Opens one SafeTensors object: a first ranged GET, and a second when the header is
/// longer than the first one held.
fn open_object(
    remote: &Remote,
    path: ObjPath,
    url: String,
) -> Result<(RemoteObject, ParsedHeader)> {
    let (obj, first) = remote.open(path, url)?;
    let at = Path::new(obj.url());
    if obj.size() < 8 {
        return Err(Error::malformed(
            at,
            format!(
                "not a SafeTensors file: {} bytes, shorter than the 8-byte header length",
                obj.size()
            ),
        ));
    }
    let head = parse_header(at, obj.size(), |buf, off| {
        let end = off.checked_add(buf.len() as u64);
        match end {
            Some(end) if end <= first.len() as u64 => {
                buf.copy_from_slice(&first[off as usize..end as usize]);
                Ok(())
            }
            _ => obj.read_into(off, &mut [buf]),
        }
    })?;
    Ok((obj, head))
}

fn source(obj: RemoteObject, data_start: u64) -> SourceFile {
    SourceFile {
        path: obj.url().into(),
        file: None,
        reopen: None,
        of_store: false,
        remote: Some(obj),
        data_start,
    }
}

fn open_single(remote: &Remote, path: ObjPath, url: String) -> Result<Opened> {
    let (obj, head) = open_object(remote, path, url)?;
    let data_start = 8 + head.header.len() as u64;
    let mut tensors = Vec::new();
    reserve(
        &mut tensors,
        head.tensors.len(),
        Path::new(obj.url()),
        "the tensors",
    )?;
    push_tensors(&mut tensors, 0, data_start, head.tensors);
    Ok(Opened {
        container: Container::SafeTensors,
        files: vec![source(obj, data_start)],
        tensors,
        by_name: HashMap::new(),
        metadata: head.metadata,
    })
}

/// A sharded checkpoint: the index (one or two GETs), then each shard it names (at most
/// two each), checked against each other as a local checkpoint is: every tensor in exactly
/// the shard the index names, none outside the index, `total_size` right.
fn open_index(remote: &Remote, path: ObjPath, url: String) -> Result<Opened> {
    let bytes = remote.read_whole(path.clone(), url.clone(), MAX_INDEX_LEN)?;
    let at = Path::new(&url);
    let text =
        String::from_utf8(bytes).map_err(|_| Error::malformed(at, "index is not valid UTF-8"))?;
    let parsed = parse_index(&text).map_err(|m| Error::malformed(at, m))?;
    let names: BTreeSet<&str> = parsed.weight_map.values().map(String::as_str).collect();
    let parent: Vec<_> = path.parts().collect();
    let parent = &parent[..parent.len().saturating_sub(1)];
    let url_dir = &url[..url.rfind('/').map_or(0, |i| i + 1)];
    let mut files = Vec::new();
    reserve(&mut files, names.len(), at, "the shards")?;
    let mut tensors = Vec::new();
    let mut total = 0u64;
    let mut metadata = None;
    for (k, name) in names.iter().enumerate() {
        if name.is_empty()
            || name.starts_with('/')
            || name.split('/').any(|p| p == ".." || p == ".")
        {
            return Err(Error::malformed(
                at,
                format!("the index names shard {name:?}, which is not a name inside its prefix"),
            ));
        }
        let shard_path: ObjPath = parent
            .iter()
            .cloned()
            .chain(name.split('/').map(object_store::path::PathPart::from))
            .collect();
        let (obj, head) = open_object(remote, shard_path, format!("{url_dir}{name}"))?;
        for t in &head.tensors {
            if parsed.weight_map.get(&t.name).map(String::as_str) != Some(*name) {
                return Err(Error::malformed(
                    at,
                    format!("shard {name} holds a tensor the index does not place there"),
                )
                .array(t.name.clone()));
            }
            total = total.saturating_add(t.len());
        }
        let data_start = 8 + head.header.len() as u64;
        if k == 0 {
            metadata = head.metadata;
        }
        reserve(&mut tensors, head.tensors.len(), at, "the tensors")?;
        push_tensors(&mut tensors, k, data_start, head.tensors);
        files.push(source(obj, data_start));
    }
    if tensors.len() != parsed.weight_map.len() {
        let held: BTreeSet<&str> = tensors.iter().map(|t| t.name.as_str()).collect();
        let missing = parsed
            .weight_map
            .keys()
            .find(|n| !held.contains(n.as_str()))
            .cloned()
            .unwrap_or_default();
        return Err(
            Error::malformed(at, "the index names a tensor that its shard does not hold")
                .array(missing),
        );
    }
    parsed.check_total_size(total, at)?;
    Ok(Opened {
        container: Container::ShardedSafeTensors,
        files,
        tensors,
        by_name: HashMap::new(),
        metadata,
    })
}

/// Largest small file of a NumPack store read (metadata, sidecar, bitmaps, manifests).
const MAX_SMALL_FILE: u64 = 256 << 20;
/// Most bytes of small files fetched for one store.
const MAX_SMALL_TOTAL: u64 = 1 << 30;

/// A NumPack store under `prefix`: its small files (metadata, sidecar, deletion bitmaps,
/// segment manifests) are fetched into a temporary directory, with an empty sparse file of
/// the listed size for each data file (`*.npkd`), and opened there by the store's own code;
/// the data files then become the listed objects, read by ranged GETs that carry the
/// listing's ETag. One LIST, one or two GETs per small file, none per data file. The
/// temporary directory is gone when this returns.
fn open_numpack(
    remote: &Remote,
    prefix: &ObjPath,
    url: &str,
    listed: Vec<Listed>,
) -> Result<Opened> {
    let at = Path::new(url);
    let dir = url.trim_end_matches('/');
    let tmp = tempfile::tempdir()
        .map_err(|e| Error::io(std::env::temp_dir(), "creating a temporary directory in", e))?;
    let skip = prefix.parts().count();
    let mut data: HashMap<std::path::PathBuf, (Listed, String)> = HashMap::new();
    let mut fetched = 0u64;
    for l in listed {
        let rel: Vec<String> = l
            .path
            .parts()
            .skip(skip)
            .map(|p| p.as_ref().to_string())
            .collect();
        if rel.is_empty() || rel.iter().any(|p| p == ".." || p == ".") {
            continue;
        }
        let rel = rel.join("/");
        let local = tmp.path().join(&rel);
        if let Some(parent) = local.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, "creating", e))?;
        }
        let obj_url = format!("{dir}/{rel}");
        if rel.ends_with(".npkd") {
            let f = std::fs::File::create(&local).map_err(|e| Error::io(&local, "creating", e))?;
            f.set_len(l.size)
                .map_err(|e| Error::io(&local, "sizing", e))?;
            data.insert(local, (l, obj_url));
        } else {
            fetched = fetched.saturating_add(l.size);
            if fetched > MAX_SMALL_TOTAL {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "the store's files other than data files hold more than the \
                         {MAX_SMALL_TOTAL} bytes npkio fetches to open it"
                    ),
                )
                .at(at));
            }
            let bytes = remote.read_whole(l.path.clone(), obj_url, MAX_SMALL_FILE)?;
            std::fs::write(&local, bytes).map_err(|e| Error::io(&local, "writing", e))?;
        }
    }
    let mut o = super::source::open(tmp.path()).map_err(|e| {
        // The temporary directory means nothing to the caller: the URL does.
        let mut out = Error::new(e.kind(), e.message().to_string()).at(at);
        if let Some(a) = e.array_name() {
            out = out.array(a);
        }
        out
    })?;
    for f in &mut o.files {
        let Some((l, obj_url)) = data.remove(&f.path) else {
            return Err(Error::malformed(
                at,
                "the store reads a data file that the listing did not show",
            ));
        };
        f.path = obj_url.clone().into();
        f.file = None;
        f.reopen = None;
        f.remote = Some(remote.listed(l, obj_url));
    }
    Ok(o)
}
