//! Tensors held in memory straight to SafeTensors: [`save_safetensors_file`] writes a file,
//! [`safetensors_header`] lays one out for a caller that assembles the bytes itself. Both
//! produce what the `safetensors` crate's `serialize` / `serialize_to_file` produce for the
//! same tensors and metadata (see [`plan_header`]): tensors ordered by dtype then name,
//! packed, the header padded to a multiple of 8.

use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::convert::Options;
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::numpack::ArrayInput;
use crate::publish;
use crate::safetensors::writer::PlanInput;
use crate::safetensors::{plan_header, HeaderPlan};

/// Lays out `tensors` (and the `__metadata__` pairs, in the order given) as a SafeTensors
/// file: the header bytes, the order of the tensors in the file and each one's byte range.
/// Each tensor's data must be exactly as long as its dtype and shape say.
pub fn safetensors_header(
    tensors: &[ArrayInput<'_>],
    metadata: Option<&[(String, String)]>,
) -> Result<HeaderPlan> {
    let inputs: Vec<PlanInput<'_>> = tensors
        .iter()
        .map(|t| PlanInput {
            name: t.name,
            dtype: t.dtype,
            shape: t.shape,
        })
        .collect();
    let plan = plan_header(&inputs, metadata)?;
    for (t, &(begin, end)) in tensors.iter().zip(&plan.ranges) {
        if end - begin != t.data.len() as u64 {
            return Err(Error::invalid_argument(format!(
                "{} bytes of data for shape {:?} of {}, which takes {} bytes",
                t.data.len(),
                t.shape,
                t.dtype.numpy_name(),
                end - begin
            ))
            .array(t.name));
        }
    }
    Ok(plan)
}

/// Writes `tensors` held in memory to the SafeTensors file `output_path`, byte-identical to
/// the `safetensors` crate's `serialize_to_file` for the same tensors (and the same
/// `__metadata__`, whose pairs are written in the order given). The file is written beside
/// the output and renamed into place, under the output's lock, as every conversion does;
/// `opts.durable` and `opts.wait_for_lock` apply.
pub fn save_safetensors_file(
    tensors: &[ArrayInput<'_>],
    metadata: Option<&[(String, String)]>,
    output_path: impl AsRef<Path>,
    opts: &Options,
) -> Result<()> {
    let output = output_path.as_ref();
    let plan = safetensors_header(tensors, metadata)?;
    if std::fs::metadata(output).is_ok_and(|m| m.is_dir()) {
        return Err(Error::new(
            ErrorKind::AlreadyExists,
            "is a directory; the output must be a file path",
        )
        .at(output));
    }
    let _lock = publish::lock_output(output, opts.wait_for_lock)?;
    let tmp = publish::staging_file(output)?;
    let file = tmp.as_file();
    file.set_len(plan.file_len)
        .ctx(output, "allocating space for")?;
    file.write_all_at(&plan.header, 0)
        .ctx(output, "writing the header of")?;
    for (t, &(begin, _)) in tensors.iter().zip(&plan.ranges) {
        file.write_all_at(t.data, begin)
            .ctx(output, "writing")
            .map_err(|e| e.array(t.name))?;
    }
    publish::publish_file(tmp, output, opts.durable)
}
