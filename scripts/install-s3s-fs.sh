#!/usr/bin/env bash
# Installs the S3-compatible test server the object-storage tests run against: s3s-fs
# 0.14.1 from crates.io (its `binary` feature gives the `s3s-fs` command), built once into
# target/s3s-fs/bin/s3s-fs. Newer versions need a newer rustc than npkio's. Does nothing
# when the binary is already there, so scripts/test.sh can call it every time.
set -euo pipefail
cd "$(dirname "$0")/.."

version=0.14.1
root=target/s3s-fs
bin="$root/bin/s3s-fs"

if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "$version"; then
    exit 0
fi

echo "installing s3s-fs $version into $root (a few minutes, once)" >&2
cargo install --locked --version "$version" --features binary --root "$root" s3s-fs
# cargo install records what it installed in the root; the binary is all that is needed.
test -x "$bin"
