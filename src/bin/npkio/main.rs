//! `npkio`: inspect, convert and verify SafeTensors files and NumPack directories.
//!
//! A thin command line over the library: every subcommand is a few library calls, and every
//! failure is the library's [`npkio::Error`], printed on one line and turned into an exit
//! code by its [`ErrorKind`]. See `docs/cli.md`.

mod container;
mod convert;
mod inspect;
mod load;
mod progress;
mod units;
mod verify;

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use npkio::CopyMethod;
use npkio::{Error, ErrorKind};

/// The exit-code table, shown by `npkio --help` and kept in step with `docs/cli.md`.
const EXIT_CODES: &str = "\
Exit codes:
  0    success (verify: the containers are equal)
  1    verify: the containers differ
  2    usage error (bad arguments)
  3    I/O error (permission denied, disk full, ...)
  4    not found (input or a file it names is missing)
  5    already exists (output exists and would not be replaced)
  6    malformed input (not a valid SafeTensors file or NumPack directory)
  7    key not found (--keys names a tensor that is not there)
  8    unsupported (valid input npkio or the target format cannot represent)
  9    invalid argument
  10   busy (another process holds the output)
  101  internal error (a bug: please report it)";

/// Inspect, convert and verify SafeTensors files and NumPack directories.
#[derive(Parser, Debug)]
#[command(name = "npkio", version, after_help = EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Show the tensors of a SafeTensors file or NumPack directory (header only: instant).
    Inspect(InspectArgs),
    /// Convert a SafeTensors file to a NumPack directory, or a NumPack directory to a
    /// SafeTensors file; the direction follows from what INPUT is.
    Convert(ConvertArgs),
    /// Compare two containers of either format tensor by tensor: names, dtypes, shapes and
    /// bytes. Exit 0 when equal, 1 when they differ.
    Verify(VerifyArgs),
    /// Load tensors (or each one's shard) into memory with npkio's loader and report bytes,
    /// time and GB/s.
    Load(LoadArgs),
}

/// Arguments of `npkio load`.
#[derive(Args, Debug)]
struct LoadArgs {
    /// A SafeTensors file, a sharded checkpoint (its index, or the directory holding it) or
    /// a NumPack directory; or a URL of object storage (s3://bucket/key, gs://, az://,
    /// http(s)://) of a SafeTensors object, an index or a prefix holding one.
    checkpoint: PathBuf,
    /// Load only these tensors (default: all).
    #[arg(long, num_args = 1.., value_name = "NAME")]
    keys: Vec<String>,
    /// Load only rank RANK's part of dimension DIM split among WORLD ranks (the first
    /// `len % WORLD` ranks get one index more); tensors with fewer dimensions load whole.
    #[arg(long, value_name = "DIM,RANK,WORLD", value_parser = load::parse_shard)]
    shard: Option<(usize, u64, u64)>,
    /// Read with O_DIRECT (bypassing the page cache) wherever the filesystem allows.
    #[arg(long)]
    direct: bool,
    /// Read through the page cache only.
    #[arg(long)]
    buffered: bool,
    /// Drop what was read from the page cache afterwards.
    #[arg(long)]
    drop_behind: bool,
    /// Reader threads; 0 picks a measured default.
    #[arg(long, value_name = "N", default_value_t = 0)]
    threads: usize,
    /// Deliver through a sink with staging buffers of SIZE bytes instead of one buffer as
    /// large as the tensors (bounded memory).
    #[arg(long, value_name = "SIZE", value_parser = units::parse_size)]
    staging: Option<usize>,
    /// Object storage: the largest ranged GET (default 8M).
    #[arg(long, value_name = "SIZE", value_parser = units::parse_size)]
    range_size: Option<usize>,
    /// Object storage: ranged GETs in flight (default 16).
    #[arg(long, value_name = "N", default_value_t = 0)]
    concurrency: usize,
}

/// Arguments of `npkio inspect`.
#[derive(Args, Debug)]
struct InspectArgs {
    /// A SafeTensors file, a sharded checkpoint (its index, or the directory holding it) or
    /// a NumPack directory; or a URL of object storage (s3://, gs://, az://, http(s)://) of
    /// a SafeTensors object, an index or a prefix holding one.
    path: PathBuf,
    /// Print JSON for scripts instead of a table.
    #[arg(long)]
    json: bool,
}

/// Arguments of `npkio convert`.
#[derive(Args, Clone, Debug)]
struct ConvertArgs {
    /// A SafeTensors file, a sharded checkpoint (its index, or the directory holding it) or
    /// a NumPack directory; or a URL of object storage (s3://, gs://, az://, http(s)://) of
    /// a SafeTensors object, an index or a prefix holding one, which is fetched first into
    /// a temporary SafeTensors file beside the output (removed afterwards).
    input: PathBuf,
    /// The NumPack directory (from SafeTensors) or SafeTensors file (from NumPack; a
    /// directory with --max-shard-size) to write.
    output: PathBuf,
    /// Convert only these tensors, in this order (default: all).
    #[arg(long, num_args = 1.., value_name = "NAME")]
    keys: Vec<String>,
    /// Replace the output whole if it exists. Without it, SafeTensors to NumPack merges into
    /// an existing NumPack directory (arrays of the same name replaced, others kept), and
    /// NumPack to SafeTensors refuses to overwrite an existing file or sharded weights. An
    /// OUTPUT URL where objects are stored already is refused without it.
    #[arg(long)]
    force: bool,
    /// A `__metadata__` entry for the SafeTensors file written (NumPack to SafeTensors only).
    /// Repeatable; entries are written in the order given and replace the metadata the
    /// directory carries.
    #[arg(long, value_name = "KEY=VALUE", value_parser = units::parse_key_value)]
    metadata: Vec<(String, String)>,
    /// Largest piece copied at once: bounds memory and mapped windows per thread. Units: B,
    /// kB, MB, GB, TB (powers of 1000); K, KiB, M, MiB, G, GiB, T, TiB (powers of 1024).
    #[arg(long, value_name = "SIZE", default_value = "8MiB", value_parser = units::parse_size)]
    chunk_size: usize,
    /// Write a sharded checkpoint into the OUTPUT directory, as `save_pretrained` lays it out:
    /// shards of at most SIZE tensor bytes and `model.safetensors.index.json` (or one
    /// `model.safetensors` when everything fits). NumPack to SafeTensors only.
    #[arg(long, value_name = "SIZE", value_parser = units::parse_size)]
    max_shard_size: Option<usize>,
    /// Copy threads; 0 picks a measured default.
    #[arg(long, value_name = "N", default_value_t = 0)]
    threads: usize,
    /// Sync data, metadata and directories before the output appears, so that it survives
    /// power loss.
    #[arg(long)]
    durable: bool,
    /// Fail at once (exit 10) when another conversion is writing OUTPUT, instead of waiting
    /// for it to finish.
    #[arg(long)]
    no_wait: bool,
    /// How bytes are copied (a tuning knob; the default is the fastest measured).
    #[arg(long, value_enum, default_value_t = Method::Auto, hide_short_help = true)]
    method: Method,
    /// Draw no progress bar, even on a terminal.
    #[arg(short, long)]
    quiet: bool,
}

/// Arguments of `npkio verify`.
#[derive(Args, Debug)]
struct VerifyArgs {
    /// A SafeTensors file, a sharded checkpoint or a NumPack directory.
    a: PathBuf,
    /// A SafeTensors file, a sharded checkpoint or a NumPack directory.
    b: PathBuf,
    /// Compare the SafeTensors `__metadata__` too (a NumPack directory carries the one of the
    /// file it was made from).
    #[arg(long)]
    metadata: bool,
    /// Draw no progress bar, even on a terminal.
    #[arg(short, long)]
    quiet: bool,
}

/// The copy methods of [`CopyMethod`], as command-line values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Method {
    /// The fastest method measured.
    Auto,
    /// Map a window of the destination and `pread` into it.
    Mmap,
    /// `pread` into a buffer, then `pwrite`.
    ReadWrite,
    /// Linux `copy_file_range` (may share blocks on filesystems that can).
    CopyFileRange,
    /// Map a window of the source and `pwrite` from it.
    MmapSource,
}

impl From<Method> for CopyMethod {
    fn from(m: Method) -> CopyMethod {
        match m {
            Method::Auto => CopyMethod::Auto,
            Method::Mmap => CopyMethod::Mmap,
            Method::ReadWrite => CopyMethod::ReadWrite,
            Method::CopyFileRange => CopyMethod::CopyFileRange,
            Method::MmapSource => CopyMethod::MmapSource,
        }
    }
}

/// Why a subcommand did not succeed.
#[derive(Debug)]
enum Failure {
    /// A library error (or one the command line raises in the same terms).
    Error(Error),
    /// Arguments that parse but do not make sense together; reported like clap's own usage
    /// errors, with exit code 2.
    Usage {
        /// The subcommand, for the usage line.
        subcommand: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        Failure::Error(e)
    }
}

/// What a subcommand returns: the exit code of a completed run, or why it failed.
type Outcome = Result<ExitCode, Failure>;

fn main() -> ExitCode {
    install_panic_hook();
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Inspect(args) => inspect::run(&args),
        Command::Convert(args) => convert::run(&args),
        Command::Verify(args) => verify::run(&args),
        Command::Load(args) => load::run(&args),
    };
    match outcome {
        Ok(code) => code,
        Err(Failure::Error(e)) => {
            eprintln!("npkio: error: {}", one_line(&e.to_string()));
            ExitCode::from(exit_code(e.kind()))
        }
        Err(Failure::Usage {
            subcommand,
            message,
        }) => {
            let mut cmd = Cli::command();
            cmd.build();
            let cmd = cmd
                .find_subcommand_mut(subcommand)
                .map(std::mem::take)
                .unwrap_or_default();
            cmd.bin_name(format!("npkio {subcommand}"))
                .error(clap::error::ErrorKind::ArgumentConflict, message)
                .exit()
        }
    }
}

/// The exit code of an error kind: 2 + the kind's stable number (the C ABI's status), so
/// 3 for I/O up to 10 for busy; a kind added later gets its own code the same way.
fn exit_code(kind: ErrorKind) -> u8 {
    // 0 success, 1 differences found (verify), 2 usage; errors follow their kind's number.
    kind.code() + 2
}

/// Folds a message onto one line: embedded line breaks (from a hostile file's JSON error,
/// say) become spaces so that an error is always exactly one line.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect()
}

/// A panic is a bug in npkio: print one line saying so instead of Rust's message and
/// backtrace hint. The process still exits with 101, Rust's code for a panic.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_string());
        let place = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!(
            "npkio: internal error: {}{place}; this is a bug, please report it",
            one_line(&payload)
        );
    }));
}

/// Writes `text` to standard output. A closed pipe (`npkio inspect big | head`) is not an
/// error: the reader has what it wanted. Other failures are I/O errors.
fn print_stdout(text: &str) -> Result<(), Error> {
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Error::io("<stdout>", "writing to", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn exit_codes_follow_the_error_kinds() {
        assert_eq!(exit_code(ErrorKind::Io), 3);
        assert_eq!(exit_code(ErrorKind::Busy), 10);
    }
}
