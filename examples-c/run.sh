#!/bin/sh
# Runs every example against the fixtures and checks what they print.
#
#   run.sh BIN_DIR OUT_DIR [RUNNER...]
#
# BIN_DIR holds the example binaries of one build mode; OUT_DIR receives their output:
# *.out files are the same in every mode (the Makefile compares them), *.log files hold
# output that names per-run paths. RUNNER (valgrind ...) is put before every command.
# Expected failures (malformed inputs, unknown keys) must exit with status 1 and print an
# npkio message; any other status (a crash, a sanitizer's or valgrind's own exit code)
# fails the run.
set -u
BIN=$1
OUT=$2
shift 2
HERE=$(cd "$(dirname "$0")" && pwd)
FIX=$(cd "$HERE/../tests/fixtures" && pwd)
ST=$FIX/safetensors
NPK=$FIX/numpack-0.7
BAD=$FIX/malformed
WORK=$OUT/work
FAILS=0

rm -rf "$OUT"
mkdir -p "$OUT" "$WORK"

fail() {
    echo "FAIL: $*" >&2
    FAILS=$((FAILS + 1))
}

# ok NAME.out|NAME.log CMD...: must exit 0.
ok() {
    dest=$1
    shift
    if ! "$@" >"$OUT/$dest" 2>"$OUT/$dest.stderr"; then
        fail "exit $? from: $*"
        sed 's/^/    /' "$OUT/$dest.stderr" >&2
    fi
}

# refused NAME CMD...: must exit 1 with an npkio error message, and not crash.
refused() {
    dest=$1
    shift
    "$@" >"$OUT/$dest.log" 2>"$OUT/$dest.stderr"
    rc=$?
    if [ "$rc" -ne 1 ]; then
        fail "expected exit 1, got $rc from: $*"
        sed 's/^/    /' "$OUT/$dest.stderr" >&2
    elif ! grep -q '^error: .*NPKIO_STATUS_' "$OUT/$dest.stderr"; then
        fail "no npkio error message from: $*"
    fi
}

# expect FILE PATTERN: FILE must hold a line matching PATTERN (grep -E).
expect() {
    grep -Eq "$2" "$OUT/$1" || fail "$1 lacks /$2/"
}

R="$*"
set --

# inspect: every good fixture, then every malformed one.
ok inspect_safetensors.out $R "$BIN/inspect" "$ST/all_dtypes.safetensors" \
    "$ST/with_metadata.safetensors" "$ST/edge_cases.safetensors" \
    "$ST/sharded/model-00001-of-00002.safetensors"
ok inspect_numpack.out $R "$BIN/inspect" "$NPK/basic.npk" "$NPK/dropped.npk" \
    "$NPK/appended.npk" "$NPK/segmented.npk"
expect inspect_safetensors.out '^safetensors .*/all_dtypes.safetensors: 20 tensors$'
expect inspect_safetensors.out '^  bf16 BF16 \[8, 4\] 64 bytes$'
expect inspect_safetensors.out '^  quantization = none$'
expect inspect_safetensors.out '^  scalar F64 \[\] 8 bytes$'
expect inspect_numpack.out '^numpack .*/basic.npk: 17 arrays$'
expect inspect_numpack.out 'rows deleted'
expect inspect_numpack.out '^  big F32 .*, segmented, gathered$'
# All malformed fixtures in one process (valgrind starts slowly): each must be refused
# with its own message naming it, and the process must not crash.
set --
for f in "$BAD"/*; do
    case $f in *.json) ;; *) set -- "$@" "$f" ;; esac
done
refused malformed $R "$BIN/inspect" "$@"
for f in "$@"; do
    grep -q "^error: NPKIO_STATUS_[A-Z_]*: $f" "$OUT/malformed.stderr" ||
        fail "no error message for $(basename "$f")"
done
[ "$(grep -c '^error: ' "$OUT/malformed.stderr")" -eq $# ] ||
    fail "expected $# error lines for the malformed fixtures"
refused missing_file $R "$BIN/inspect" "$WORK/does-not-exist.safetensors"

# convert: both directions, keys, metadata, drop_if_exists.
for f in all_dtypes with_metadata edge_cases; do
    ok "convert_$f.log" $R "$BIN/convert" to-numpack "$ST/$f.safetensors" "$WORK/$f.npk"
    ok "convert_back_$f.log" $R "$BIN/convert" to-safetensors "$WORK/$f.npk" "$WORK/$f.safetensors"
    cmp -s "$ST/$f.safetensors" "$WORK/$f.safetensors" ||
        fail "$f.safetensors did not survive the round trip byte for byte"
done
ok convert_key.log $R "$BIN/convert" to-numpack "$ST/with_metadata.safetensors" "$WORK/sel.npk" \
    --drop --key encoder.bias --chunk 7
ok inspect_sel1.log $R "$BIN/inspect" "$WORK/sel.npk"
expect inspect_sel1.log ': 1 arrays$'
ok convert_merge.log $R "$BIN/convert" to-numpack "$ST/with_metadata.safetensors" "$WORK/sel.npk" \
    --key encoder.weight
ok inspect_sel2.log $R "$BIN/inspect" "$WORK/sel.npk"
expect inspect_sel2.log ': 2 arrays$'
ok convert_drop.log $R "$BIN/convert" to-numpack "$ST/with_metadata.safetensors" "$WORK/sel.npk" \
    --drop --key encoder.weight
ok inspect_sel3.log $R "$BIN/inspect" "$WORK/sel.npk"
expect inspect_sel3.log ': 1 arrays$'
expect inspect_sel3.log '^  encoder.weight F32 \[32, 16\]'
ok convert_meta.log $R "$BIN/convert" to-safetensors "$NPK/basic.npk" "$WORK/basic.safetensors" \
    --name f32_2d --name i8_3d --meta framework=npkio --meta note=a=b
ok inspect_meta.log $R "$BIN/inspect" "$WORK/basic.safetensors"
expect inspect_meta.log ': 2 tensors$'
expect inspect_meta.log '^  note = a=b$'
refused convert_unknown_key $R "$BIN/convert" to-numpack "$ST/with_metadata.safetensors" \
    "$WORK/never.npk" --key no.such.tensor
[ -e "$WORK/never.npk" ] && fail "a refused conversion left an output"
refused convert_chunk0 $R "$BIN/convert" to-numpack "$ST/with_metadata.safetensors" \
    "$WORK/never.npk" --chunk 0

# iterate_sum: zero-copy sums (the Rust test checks the numbers independently).
for f in all_dtypes with_metadata edge_cases; do
    ok "iterate_sum_$f.out" $R "$BIN/iterate_sum" "$ST/$f.safetensors"
done
ok iterate_sum_keys.out $R "$BIN/iterate_sum" "$ST/with_metadata.safetensors" \
    encoder.weight encoder.bias
expect iterate_sum_with_metadata.out '^total .* over 2 F32 tensors$'
refused iterate_sum_unknown $R "$BIN/iterate_sum" "$ST/with_metadata.safetensors" nope

# pipeline: the seed's conversion pipeline.
mkdir -p "$WORK/pipeline"
ok pipeline.log $R "$BIN/pipeline" "$ST/with_metadata.safetensors" "$WORK/pipeline"
expect pipeline.log '^Tensors: encoder.bias encoder.weight$'
expect pipeline.log 'with \{"quantization": "int8"\}$'

# engine: map a sharded checkpoint, read one layer.
SHARDS="$ST/sharded/model-00001-of-00002.safetensors $ST/sharded/model-00002-of-00002.safetensors"
ok engine.out $R "$BIN/engine" layers.1.weight $SHARDS
expect engine.out '^4 tensors mapped$'
expect engine.out '^layers.1.weight BF16 \[4, 4\] sum '
expect engine.out '^rank 0 of 2 through a sink: 16 bytes, equal to the mapped rows$'
ok engine_f32.out $R "$BIN/engine" embed.weight $SHARDS
"$BIN/engine" no.such.layer $SHARDS >/dev/null 2>&1 && fail "engine found a missing layer"
refused engine_bad_shard $R "$BIN/engine" x "$BAD/hole.safetensors"

# load_tp: two ranks load their halves of every matrix of the tiny model, both ways.
ok load_tp.out $R "$BIN/load_tp" "$HERE/../examples/tiny-llama.safetensors"
expect load_tp.out '^16 matrices, 0 wrong$'
expect load_tp.out '^out-of-range slice: NPKIO_STATUS_INVALID_ARGUMENT, request 1 named, destinations untouched$'
refused load_tp_missing $R "$BIN/load_tp" "$WORK/does-not-exist.safetensors"

if [ "$FAILS" -ne 0 ]; then
    echo "$FAILS check(s) failed in $BIN" >&2
    exit 1
fi
echo "all examples passed: $BIN${R:+ under $R}"
