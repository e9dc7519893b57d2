//! The progress bar under a pseudo-terminal and when piped.

use super::*;

/// Size of the file the progress tests convert: big enough for several redraws.
const BIG: u64 = 200 << 20;

/// A SafeTensors file of one `BIG`-byte F32 tensor of zeros, sparse, so it costs nothing.
fn big_file(dir: &Path) -> PathBuf {
    let path = dir.join("big.safetensors");
    let mut header = format!(
        r#"{{"big":{{"dtype":"F32","shape":[{}],"data_offsets":[0,{BIG}]}}}}"#,
        BIG / 4
    );
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    fs::write(&path, &bytes).unwrap();
    let f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(bytes.len() as u64 + BIG).unwrap();
    path
}

/// Runs `npkio` with `args` under a pseudo-terminal (util-linux `script`) and returns all it
/// drew, or `None` where `script` is missing.
fn under_pty(args: &[&Path]) -> Option<String> {
    let quoted: Vec<String> = std::iter::once(Path::new(NPKIO))
        .chain(args.iter().copied())
        .map(|a| format!("'{}'", a.display()))
        .collect();
    let out = Command::new("script")
        .args(["-qec", &quoted.join(" "), "/dev/null"])
        .env("TERM", "xterm")
        .env("COLUMNS", "100")
        .stdin(Stdio::null())
        .output();
    match out {
        Ok(out) => {
            assert!(out.status.success(), "{out:?}");
            Some(String::from_utf8_lossy(&out.stdout).into_owned())
        }
        Err(e) => {
            eprintln!("skipping the pseudo-terminal check: cannot run `script`: {e}");
            None
        }
    }
}

/// Text with ANSI escape sequences (`ESC [ ... letter`) removed.
fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn progress_bar_draws_on_a_terminal_and_finishes_cleanly() {
    let t = tmp();
    let big = big_file(t.path());
    let npk = t.path().join("big.npk");
    let Some(screen) = under_pty(&[Path::new("convert"), &big, &npk]) else {
        return;
    };
    assert!(npk.join("metadata.npkm").is_file());
    // The bar was drawn: label, bar, byte counts of the total, rate and ETA.
    assert!(screen.contains("converting ["), "{screen:?}");
    assert!(screen.contains("/200.00 MiB"), "{screen:?}");
    assert!(screen.contains("/s, ETA "), "{screen:?}");
    // ... and cleared at the end (erase line), leaving only the summary line.
    let last_bar = screen.rfind("converting [").unwrap();
    let tail = &screen[last_bar..];
    assert!(tail.contains("\x1b[2K"), "bar not cleared: {tail:?}");
    let after = strip_ansi(&tail[tail.rfind("\x1b[2K").unwrap()..]);
    let after = after.trim_matches(|c| c == '\r' || c == '\n');
    assert!(
        after.starts_with("converted 1 tensor, 200.00 MiB in "),
        "{after:?}"
    );
    assert!(
        !after.contains('\n'),
        "more than the summary after the bar: {after:?}"
    );
}

#[test]
fn progress_bar_is_silenced_by_quiet_and_absent_when_piped() {
    let t = tmp();
    let big = big_file(t.path());
    let npk = t.path().join("big.npk");
    if let Some(screen) = under_pty(&[
        Path::new("convert"),
        &big,
        &npk,
        Path::new("--quiet"),
        Path::new("--force"),
    ]) {
        assert_eq!(strip_ansi(&screen).trim(), "", "{screen:?}");
    }
    // Piped (as under this test harness): nothing on stdout or stderr.
    let r = ok([
        "convert".as_ref(),
        big.as_os_str(),
        npk.as_os_str(),
        "--force".as_ref(),
    ]);
    assert_eq!(r.stdout, "");
}
