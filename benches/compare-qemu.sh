#!/usr/bin/env bash
# Time `vdisk convert` against `qemu-img convert` on the same inputs, on tmpfs and on disk, and
# print one table of ratios: qemu-img time / vdisk time (above 1 means vdisk is faster).
#
#   benches/compare-qemu.sh                      # 1 GiB input, median of 3 runs
#   SIZE_MIB=256 RUNS=5 benches/compare-qemu.sh
#   VDISK=/path/to/vdisk benches/compare-qemu.sh # skip the release build
#   TMPFS_DIR=/dev/shm DISK_DIR=/var/tmp benches/compare-qemu.sh
#   ROWS='raw->vhd vhdx->raw' benches/compare-qemu.sh   # only these rows
#
# The raw input is 3/4 random and 1/4 zero, in 1 MiB pieces (every fourth MiB is zero). Inputs
# of other formats are made from it by qemu-img once, so both tools read the same file. Every
# output of both tools is checked against the raw input with `qemu-img compare` before timing.
# See benches/README.md for how to read the table.
set -euo pipefail

SIZE_MIB=${SIZE_MIB:-1024}
RUNS=${RUNS:-3}
root=$(cd "$(dirname "$0")/.." && pwd)

if [[ -z "${VDISK:-}" ]]; then
    cargo build --quiet --release -p vdisk-cli --manifest-path "$root/Cargo.toml"
    VDISK=$root/target/release/vdisk
fi
command -v qemu-img >/dev/null || { echo "qemu-img not found" >&2; exit 1; }

# Formats: name|vdisk -O and -o|qemu-img -O and -o.
declare -A VDISK_OUT=(
    [raw]="raw|"
    [vhd]="vhd|subformat=dynamic"
    [vhdx]="vhdx|"
    [vmdk]="vmdk|subformat=monolithicSparse"
    [vmdk-stream]="vmdk|subformat=streamOptimized"
)
declare -A QEMU_OUT=(
    [raw]="raw|"
    [vhd]="vpc|subformat=dynamic"
    [vhdx]="vhdx|"
    [vmdk]="vmdk|subformat=monolithicSparse"
    [vmdk-stream]="vmdk|subformat=streamOptimized"
)
default_rows="raw->raw raw->vhd raw->vhdx raw->vmdk raw->vmdk-stream vhd->raw vhdx->raw vmdk->raw \
vmdk-stream->raw vhdx->vmdk vmdk->vhdx"
read -r -a rows <<<"${ROWS:-$default_rows}"

# Places: name|directory. tmpfs only where there is one.
places=()
tmpfs_dir=${TMPFS_DIR:-/dev/shm}
if [[ -d "$tmpfs_dir" && -w "$tmpfs_dir" ]]; then
    places+=("tmpfs|$tmpfs_dir")
fi
places+=("disk|${DISK_DIR:-${TMPDIR:-/var/tmp}}")

# median_seconds OUT CMD...: run CMD RUNS times (OUT removed before each), print the median.
median_seconds() {
    local out=$1
    shift
    local times=() start end
    for ((i = 0; i < RUNS; i++)); do
        rm -f "$out"
        start=$(date +%s.%N)
        "$@" >/dev/null
        end=$(date +%s.%N)
        times+=("$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.4f", b - a }')")
    done
    printf '%s\n' "${times[@]}" | sort -n | awk '{ t[NR] = $1 } END { print t[int((NR + 1) / 2)] }'
}

# convert_cmd TOOL IN_FORMAT IN OUT_NAME OUT: the command line, in the array `cmd`.
convert_cmd() {
    local tool=$1 in_name=$2 in=$3 out_name=$4 out=$5 spec fmt opts in_fmt
    if [[ $tool == vdisk ]]; then
        spec=${VDISK_OUT[$out_name]}
        in_fmt=${VDISK_OUT[$in_name]%%|*}
        cmd=("$VDISK" convert -f "$in_fmt")
    else
        spec=${QEMU_OUT[$out_name]}
        in_fmt=${QEMU_OUT[$in_name]%%|*}
        cmd=(qemu-img convert -f "$in_fmt")
    fi
    fmt=${spec%%|*}
    opts=${spec#*|}
    cmd+=(-O "$fmt")
    [[ -n $opts ]] && cmd+=(-o "$opts")
    cmd+=("$in" "$out")
}

declare -A results
for place in "${places[@]}"; do
    pname=${place%%|*}
    pdir=${place#*|}
    work=$(mktemp -d "$pdir/vdisk-compare.XXXXXX")
    trap 'rm -rf "$work"' EXIT
    src=$work/input.raw
    python3 - "$src" "$SIZE_MIB" <<'EOF'
import os, sys
with open(sys.argv[1], "wb") as f:
    for i in range(int(sys.argv[2])):
        f.write(b"\0" * (1 << 20) if i % 4 == 3 else os.urandom(1 << 20))
EOF
    # Inputs of the other formats, made once by qemu-img.
    declare -A inputs=([raw]=$src)
    for row in "${rows[@]}"; do
        in_name=${row%%->*}
        if [[ -z ${inputs[$in_name]:-} ]]; then
            convert_cmd qemu raw "$src" "$in_name" "$work/input.$in_name"
            "${cmd[@]}"
            inputs[$in_name]=$work/input.$in_name
        fi
    done
    sync
    for row in "${rows[@]}"; do
        in_name=${row%%->*}
        out_name=${row#*->}
        out=$work/out.$out_name
        for tool in vdisk qemu; do
            convert_cmd "$tool" "$in_name" "${inputs[$in_name]}" "$out_name" "$out"
            # Correctness first: the output must hold the input's contents.
            rm -f "$out"
            "${cmd[@]}" >/dev/null
            out_fmt=${QEMU_OUT[$out_name]%%|*}
            qemu-img compare -q -f raw -F "$out_fmt" "$src" "$out" ||
                { echo "$row ($pname): $tool output differs from the input" >&2; exit 1; }
            results[$pname,$row,$tool]=$(median_seconds "$out" "${cmd[@]}")
        done
        rm -f "$out"
    done
    rm -rf "$work"
    unset inputs
done

printf '%s MiB input (3/4 random, 1/4 zero), median of %s runs; ratio = qemu-img time / vdisk time\n\n' \
    "$SIZE_MIB" "$RUNS"
header="| row |"
sep="|---|"
for place in "${places[@]}"; do
    pname=${place%%|*}
    header+=" $pname vdisk | $pname qemu-img | $pname ratio |"
    sep+="---:|---:|---:|"
done
echo "$header"
echo "$sep"
for row in "${rows[@]}"; do
    line="| $row |"
    for place in "${places[@]}"; do
        pname=${place%%|*}
        v=${results[$pname,$row,vdisk]}
        q=${results[$pname,$row,qemu]}
        line+=$(awk -v v="$v" -v q="$q" 'BEGIN { printf " %.3fs | %.3fs | %.2fx |", v, q, (v > 0 ? q / v : 0) }')
    done
    echo "$line"
done
