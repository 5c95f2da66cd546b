#!/usr/bin/env bash
# Regenerates the sample images in this directory with qemu-img/qemu-io and records what QEMU
# reads from each (virtual size and content digest: see `digest` below and
# disk_core::testing::interop::content_digest) in manifest.json. The images are tiny (mostly
# unallocated), so they live in git.
#
# Usage: testdata/generate.sh   (needs qemu-img, qemu-io, python3)
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Writes a recognisable pattern at a few offsets: the first sector, a block boundary, the end.
fill() { # FORMAT FILE SIZE
  qemu-io -f "$1" \
    -c "write -P 0x11 0 4k" \
    -c "write -P 0x22 1020k 8k" \
    -c "write -P 0x33 2M 64k" \
    -c "write -P 0x44 $(( $3 - 512 )) 512" "$2" >/dev/null
}

make() { # NAME FORMAT OPTIONS SIZE
  rm -f "$1"
  qemu-img create -q -f "$2" ${3:+-o "$3"} "$1" "$4"
  fill "$2" "$1" "$4"
}

size=$((4 * 1024 * 1024))
make sample-dynamic.vhd vpc "subformat=dynamic" $size
make sample-dynamic.vhdx vhdx "subformat=dynamic,block_size=1M" $size
make sample-sparse.vmdk vmdk "subformat=monolithicSparse" $size
# streamOptimized images are written once, sequentially: convert from a filled raw image.
qemu-img create -q -f raw "$tmp/fill.raw" $size && fill raw "$tmp/fill.raw" $size
rm -f sample-stream.vmdk
qemu-img convert -f raw -O vmdk -o subformat=streamOptimized "$tmp/fill.raw" sample-stream.vmdk
# A raw image with a hole in the middle (git stores the zeros compactly).
rm -f sample.raw && qemu-img create -q -f raw sample.raw 1M && qemu-io -f raw -c "write -P 0x55 0 4k" -c "write -P 0x66 1020k 4k" sample.raw >/dev/null

python3 - "$tmp" <<'PY'
import hashlib, json, os, subprocess, sys
tmp = sys.argv[1]
MiB = 1 << 20
def digest(raw, size):
    h = hashlib.sha256()
    with open(raw, "rb") as f:
        for i in range(0, size, MiB):
            b = f.read(MiB)
            if b.strip(b"\0"):
                h.update((i // MiB).to_bytes(8, "little")); h.update(b)
    return h.hexdigest()
fmts = {".vhd": "vpc", ".vhdx": "vhdx", ".vmdk": "vmdk", ".raw": "raw"}
out = []
for name in sorted(os.listdir(".")):
    ext = os.path.splitext(name)[1]
    if ext not in fmts:
        continue
    info = json.loads(subprocess.check_output(["qemu-img", "info", "--output=json", "-f", fmts[ext], name]))
    raw = os.path.join(tmp, name + ".raw")
    subprocess.check_call(["qemu-img", "convert", "-f", fmts[ext], "-O", "raw", name, raw])
    out.append({"path": name, "format": "vhd" if fmts[ext] == "vpc" else fmts[ext],
                "virtual_size": info["virtual-size"], "content_digest": digest(raw, info["virtual-size"])})
with open("manifest.json", "w") as f:
    json.dump(out, f, indent=2); f.write("\n")
PY
echo "regenerated: $(ls sample*)"
