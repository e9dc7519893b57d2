//! `npkio inspect`: a table (or JSON) of a container's tensors, totals and metadata.

use std::fmt::Write as _;
use std::io::{self, Write};
use std::process::ExitCode;

use indicatif::BinaryBytes;
use serde_json::{json, Map, Value};

use crate::container::{Container, Entry, Format};
use crate::{print_stdout, InspectArgs, Outcome};
use npkio::Error;

/// Runs `npkio inspect`.
pub fn run(args: &InspectArgs) -> Outcome {
    let c = Container::open(&args.path)?;
    if args.json {
        write_stdout(|out| write_json(&c, out))?;
    } else {
        print_stdout(&table(&c))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes to standard output through a buffer; a closed pipe ends the output quietly.
fn write_stdout(f: impl FnOnce(&mut dyn Write) -> io::Result<()>) -> Result<(), Error> {
    let stdout = io::stdout().lock();
    let mut out = io::BufWriter::with_capacity(1 << 16, stdout);
    match f(&mut out).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Error::io("<stdout>", "writing to", e)),
    }
}

/// The JSON document of `--json`, streamed: the tensors one at a time (each pretty-printed
/// on its own, then indented to its place), so that time and memory stay linear in the
/// number of tensors and no document is built whole. The text is what
/// `serde_json::to_string_pretty` gives for the whole document.
fn write_json(c: &Container, out: &mut dyn Write) -> io::Result<()> {
    let head = json!({
        "format": c.format.name(),
        "path": c.path.to_string_lossy(),
    });
    let head = pretty(&head)?;
    // `{\n  "format": ...,\n  "path": ...\n}` without its closing line.
    out.write_all(&head.as_bytes()[..head.len() - 2])?;
    out.write_all(b",\n  \"tensors\": [")?;
    let mut line = String::new();
    for (i, e) in c.entries.iter().enumerate() {
        out.write_all(if i == 0 { b"\n" } else { b",\n" })?;
        line.clear();
        for (k, l) in pretty(&tensor_json(e))?.lines().enumerate() {
            if k > 0 {
                line.push('\n');
            }
            line.push_str("    ");
            line.push_str(l);
        }
        out.write_all(line.as_bytes())?;
    }
    out.write_all(if c.entries.is_empty() { b"]" } else { b"\n  ]" })?;
    let tail = pretty(&tail_json(c))?;
    // The remaining members, without the tail's braces.
    out.write_all(b",")?;
    out.write_all(&tail.as_bytes()[1..tail.len() - 1])?;
    out.write_all(b"}\n")
}

fn pretty(v: &Value) -> io::Result<String> {
    serde_json::to_string_pretty(v).map_err(io::Error::other)
}

/// The members of the document after `tensors`.
fn tail_json(c: &Container) -> Value {
    let metadata = c.metadata.as_ref().map(|m| {
        Value::Object(
            m.iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect::<Map<_, _>>(),
        )
    });
    let mut doc = json!({
        "tensor_count": c.entries.len(),
        "total_bytes": c.total_bytes(),
        "metadata": metadata,
    });
    if let Value::Object(o) = &mut doc {
        if let Some(n) = c.file_bytes {
            o.insert("file_bytes".into(), n.into());
        }
        if c.format == Format::SafeTensors {
            o.insert("sharded".into(), (!c.shards.is_empty()).into());
        }
        if !c.shards.is_empty() {
            let shards: Vec<Value> = c
                .shards
                .iter()
                .map(|s| json!({"file": s.name, "tensors": s.tensors, "file_bytes": s.file_bytes}))
                .collect();
            o.insert("shards".into(), shards.into());
        }
    }
    doc
}

fn tensor_json(e: &Entry) -> Value {
    let mut t = json!({
        "name": e.name,
        "dtype": e.dtype.to_string(),
        "shape": e.shape,
        "bytes": e.bytes,
    });
    let Value::Object(o) = &mut t else {
        return t;
    };
    if let Some((begin, end)) = e.data_offsets {
        o.insert("data_offsets".into(), json!([begin, end]));
    }
    if let Some(shard) = &e.shard {
        o.insert("shard".into(), shard.as_str().into());
    }
    if let Some(info) = &e.numpack {
        o.insert(
            "storage_dtype".into(),
            info.storage_dtype.to_string().into(),
        );
        o.insert("storage_shape".into(), json!(info.storage_shape));
        o.insert("deleted_rows".into(), info.deleted_rows.into());
        o.insert("segmented".into(), info.segmented.into());
        o.insert("zero_copy".into(), info.zero_copy.into());
    }
    t
}

/// The human-readable report: a heading, a table of tensors, totals and metadata.
fn table(c: &Container) -> String {
    let mut out = String::new();
    let what = match (c.format, c.shards.len()) {
        (Format::NumPack, _) => "NumPack directory".to_string(),
        (Format::SafeTensors, 0) => "SafeTensors file".to_string(),
        (Format::SafeTensors, n) => format!("sharded SafeTensors checkpoint ({n} shards)"),
    };
    let _ = writeln!(out, "{what} {}", c.path.display());

    // Columns: header, right-aligned, cells. SHARD and NOTES only when they say something.
    let mut columns: Vec<(&str, bool, Vec<String>)> = vec![
        (
            "NAME",
            false,
            c.entries.iter().map(|e| printable(&e.name)).collect(),
        ),
        (
            "DTYPE",
            false,
            c.entries.iter().map(|e| e.dtype.to_string()).collect(),
        ),
        (
            "SHAPE",
            false,
            c.entries.iter().map(|e| format!("{:?}", e.shape)).collect(),
        ),
        (
            "SIZE",
            true,
            c.entries
                .iter()
                .map(|e| BinaryBytes(e.bytes).to_string())
                .collect(),
        ),
    ];
    if !c.shards.is_empty() {
        let shards = c
            .entries
            .iter()
            .map(|e| e.shard.as_deref().map(printable).unwrap_or_default())
            .collect();
        columns.push(("SHARD", false, shards));
    }
    let notes: Vec<String> = c.entries.iter().map(notes).collect();
    if notes.iter().any(|n| !n.is_empty()) {
        columns.push(("NOTES", false, notes));
    }
    if !c.entries.is_empty() {
        out.push('\n');
        let widths: Vec<usize> = columns
            .iter()
            .map(|(h, _, cells)| {
                cells
                    .iter()
                    .map(|s| s.chars().count())
                    .chain([h.len()])
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in 0..=c.entries.len() {
            let mut line = String::new();
            for ((header, right, cells), w) in columns.iter().zip(&widths) {
                let cell = if row == 0 { *header } else { &cells[row - 1] };
                let pad = " ".repeat(w.saturating_sub(cell.chars().count()));
                if *right {
                    line.push_str(&pad);
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    line.push_str(&pad);
                }
                line.push_str("  ");
            }
            let _ = writeln!(out, "{}", line.trim_end());
        }
    }

    let total = c.total_bytes();
    let plural = if c.entries.len() == 1 { "" } else { "s" };
    let _ = write!(
        out,
        "\n{} tensor{plural}, {} ({total} bytes)",
        c.entries.len(),
        BinaryBytes(total)
    );
    if let Some(n) = c.file_bytes {
        let files = if c.shards.is_empty() { "file" } else { "files" };
        let _ = write!(out, "; {files} {} ({n} bytes)", BinaryBytes(n));
    }
    out.push('\n');

    match &c.metadata {
        None => out.push_str("metadata: none\n"),
        Some(m) if m.is_empty() => out.push_str("metadata: empty\n"),
        Some(m) => {
            out.push_str("metadata:\n");
            for (k, v) in m {
                let _ = writeln!(out, "  {}: {}", printable(k), printable(v));
            }
        }
    }
    out
}

/// NumPack storage details worth knowing: a stand-in storage dtype, deleted rows, segments.
fn notes(e: &Entry) -> String {
    let Some(info) = &e.numpack else {
        return String::new();
    };
    let mut notes = Vec::new();
    if info.storage_dtype != info.dtype {
        notes.push(format!("stored as {}", info.storage_dtype));
    }
    if info.deleted_rows > 0 {
        let s = if info.deleted_rows == 1 { "" } else { "s" };
        notes.push(format!("{} deleted row{s}", info.deleted_rows));
    }
    if info.segmented {
        notes.push("segmented".to_string());
    }
    notes.join(", ")
}

/// A name or value as it can be shown in a table: control characters escaped, so that a
/// hostile name cannot break the layout or drive the terminal.
pub fn printable(s: &str) -> String {
    if s.chars().any(char::is_control) {
        s.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect()
    } else {
        s.to_string()
    }
}
