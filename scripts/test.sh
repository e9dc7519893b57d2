#!/usr/bin/env bash
# npkio's whole test suite, from a fresh clone: formatting, lints, the Rust tests (library,
# CLI, C ABI), the C and C++ examples under valgrind and sanitizers, the Python package,
# and the benchmark at a tiny size so that it keeps working. CI runs exactly this
# (.ci/run). It installs what it needs that a fresh machine may lack.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

# Tools a fresh machine may lack: valgrind for the C examples, util-linux's `script` for the
# progress-bar test under a pseudo-terminal, strace for the fault-injection tests.
missing=()
command -v valgrind >/dev/null || missing+=(valgrind)
command -v script >/dev/null || missing+=(bsdutils)
command -v g++ >/dev/null || missing+=(g++)
command -v make >/dev/null || missing+=(make)
command -v pkg-config >/dev/null || missing+=(pkg-config)
command -v strace >/dev/null || missing+=(strace)
if [ ${#missing[@]} -gt 0 ]; then
    step "installing ${missing[*]}"
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
fi

step "cargo fmt --check"
cargo fmt --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets -- -D warnings

step "cargo test (library, CLI, C ABI, doc tests)"
# The shared library the C-example test links against is built by `cargo build`, not by
# `cargo test` alone.
cargo build
cargo test

if [ -f examples-c/Makefile ]; then
    step "C and C++ examples: shared and static, valgrind, ASan/UBSan"
    make -C examples-c check
fi

if [ -d python ]; then
    step "Python package (pytest)"
    venv=target/test-venv
    if [ ! -x "$venv/bin/python" ]; then
        python3 -m venv "$venv"
    fi
    "$venv/bin/pip" install -q --upgrade pip
    "$venv/bin/pip" install -q pytest numpy safetensors ml_dtypes
    "$venv/bin/pip" install -q ./python
    (cd python && ../"$venv/bin/python" -m pytest -q tests)
fi

if [ -f examples/bench.rs ]; then
    step "benchmark at a tiny size (kept working; real numbers: docs/benchmarks.md)"
    cargo run --release -q --example bench -- --size 16MiB --reps 1
fi

step "all tests passed"
