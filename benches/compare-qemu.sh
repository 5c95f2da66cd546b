#!/usr/bin/env bash
# Time `vdisk convert` against `qemu-img convert` on the same input and print the ratio
# (vdisk time / qemu-img time: below 1 means vdisk is faster).
#
#   benches/compare-qemu.sh                 # 1 GiB input
#   SIZE_MIB=256 RUNS=5 benches/compare-qemu.sh
#   VDISK=/path/to/vdisk benches/compare-qemu.sh   # skip the release build
#
# Uses hyperfine when installed (mean of RUNS runs after a warm-up), otherwise the best of RUNS
# runs timed by bash. The input is a sparse raw file with some data: 1 MiB of random bytes every
# 16 MiB plus a dense 64 MiB region, so both the copy and the zero-skipping paths count.
# Each conversion's output is checked against the input with `qemu-img compare`.
set -euo pipefail

SIZE_MIB=${SIZE_MIB:-1024}
RUNS=${RUNS:-3}
root=$(cd "$(dirname "$0")/.." && pwd)

if [[ -z "${VDISK:-}" ]]; then
    cargo build --quiet --release -p vdisk-cli --manifest-path "$root/Cargo.toml"
    VDISK=$root/target/release/vdisk
fi
command -v qemu-img >/dev/null || { echo "qemu-img not found" >&2; exit 1; }

# Rows: name|input format|vdisk output format|qemu-img output format|output options.
# Adding a format is one line.
rows=(
    "raw->raw|raw|raw|raw|"
    # "raw->vhd|raw|vhd|vpc|subformat=dynamic"
    # "raw->vhdx|raw|vhdx|vhdx|"
    # "raw->vmdk|raw|vmdk|vmdk|subformat=monolithicSparse"
)

work=$(mktemp -d "${TMPDIR:-/tmp}/vdisk-compare.XXXXXX")
trap 'rm -rf "$work"' EXIT

src=$work/input.raw
truncate -s "${SIZE_MIB}M" "$src"
for ((mib = 0; mib < SIZE_MIB; mib += 16)); do
    dd if=/dev/urandom of="$src" bs=1M count=1 seek="$mib" conv=notrunc status=none
done
if ((SIZE_MIB >= 320)); then
    dd if=/dev/urandom of="$src" bs=1M count=64 seek=256 conv=notrunc status=none
fi
sync

# seconds CMD...: time CMD (output file removed before each run), print seconds.
seconds() {
    local out=$1
    shift
    if command -v hyperfine >/dev/null; then
        hyperfine --style none --warmup 1 --runs "$RUNS" --prepare "rm -f '$out'" \
            --export-json "$work/h.json" -- "$(printf '%q ' "$@")" >/dev/null
        python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["results"][0]["mean"])' "$work/h.json"
    else
        local best="" t
        for ((i = 0; i < RUNS; i++)); do
            rm -f "$out"
            local start end
            start=$(date +%s.%N)
            "$@" >/dev/null
            end=$(date +%s.%N)
            t=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.4f", b - a }')
            if [[ -z "$best" ]] || awk -v t="$t" -v b="$best" 'BEGIN { exit !(t < b) }'; then
                best=$t
            fi
        done
        echo "$best"
    fi
}

printf '%-12s %12s %12s %8s   (%s MiB input, %s runs, %s)\n' row vdisk qemu-img ratio "$SIZE_MIB" "$RUNS" \
    "$(command -v hyperfine >/dev/null && echo "hyperfine mean" || echo "best of runs")"
for row in "${rows[@]}"; do
    IFS='|' read -r name in_fmt vdisk_fmt qemu_fmt opts <<<"$row"
    out=$work/out.$vdisk_fmt
    vdisk_cmd=("$VDISK" convert -f "$in_fmt" -O "$vdisk_fmt")
    qemu_cmd=(qemu-img convert -f "$in_fmt" -O "$qemu_fmt")
    if [[ -n "$opts" ]]; then
        vdisk_cmd+=(-o "$opts")
        qemu_cmd+=(-o "$opts")
    fi
    # Correctness first: each tool's output must hold the input's contents.
    "${vdisk_cmd[@]}" "$src" "$out"
    qemu-img compare -q -f "$in_fmt" -F "$qemu_fmt" "$src" "$out" || { echo "$name: vdisk output differs" >&2; exit 1; }
    rm -f "$out"
    t_vdisk=$(seconds "$out" "${vdisk_cmd[@]}" "$src" "$out")
    t_qemu=$(seconds "$out" "${qemu_cmd[@]}" "$src" "$out")
    ratio=$(awk -v a="$t_vdisk" -v b="$t_qemu" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }')
    printf '%-12s %11.3fs %11.3fs %8s\n' "$name" "$t_vdisk" "$t_qemu" "$ratio"
done
