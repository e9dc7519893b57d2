#!/bin/sh
# Fills fuzz/corpus/<target>/ with seeds made from tests/fixtures (the corpus itself is not
# committed). Run from anywhere; safe to run again.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
fx="$here/../tests/fixtures"
c="$here/corpus"
mkdir -p "$c/safetensors_header" "$c/numpack_metadata" "$c/segment_manifest" "$c/bitmap" "$c/numpack_dir"
for f in "$fx"/safetensors/*.safetensors "$fx"/safetensors/sharded/*.safetensors "$fx"/malformed/*.safetensors; do
  cp "$f" "$c/safetensors_header/$(basename "$f")"
done
for d in "$fx"/numpack-0.7/*.npk "$fx"/malformed/*.npk; do
  if [ -f "$d/metadata.npkm" ]; then
    cp "$d/metadata.npkm" "$c/numpack_metadata/$(basename "$d").npkm"
    cp "$d/metadata.npkm" "$c/numpack_dir/$(basename "$d").npkm"
  fi
  for m in "$d"/*.npkseg; do
    [ -f "$m" ] && cp "$m" "$c/segment_manifest/$(basename "$d")-$(basename "$m")"
  done
done
# Bitmap inputs: 8-byte little-endian row count, then the bitmap file. The current layout
# starts with the row count, so a bitmap's own first 8 bytes are its row count.
for f in "$fx"/numpack-0.7/*.npk/deleted_*.npkb "$fx"/malformed/*.npk/deleted_*.npkb; do
  [ -f "$f" ] || continue
  out="$c/bitmap/$(basename "$(dirname "$f")")-$(basename "$f")"
  head -c 8 "$f" > "$out"
  cat "$f" >> "$out"
done
echo "seeded $(find "$c" -type f | wc -l) files under $c"
