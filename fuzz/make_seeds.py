#!/usr/bin/env python3
"""Regenerate the hand-made seed inputs in corpus/probe_open/.

Tiny inputs that reach each format's parser: raw bytes, a fixed VHD footer, the VHDX file
identifier, a VMDK sparse header with an embedded descriptor, a text VMDK descriptor. Real images
(made by qemu-img or the format engines) are added beside them as `real_*`.
"""
import os
import struct
import uuid

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus", "probe_open")


def write(name, data):
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)


def vhd_footer(size, disk_type, data_offset):
    f = bytearray(512)
    f[0:8] = b"conectix"
    struct.pack_into(">IIQI", f, 8, 2, 0x00010000, data_offset, 0)  # features, version, offset, timestamp
    f[28:32] = b"vdsk"
    struct.pack_into(">I", f, 32, 0x00010000)
    f[36:40] = b"Wi2k"
    struct.pack_into(">QQ", f, 40, size, size)
    struct.pack_into(">HBB", f, 56, 4, 16, 17)  # cylinders, heads, sectors per track
    struct.pack_into(">I", f, 60, disk_type)
    f[68:84] = uuid.UUID("6a1f0b2c-3d4e-4f50-8a61-72839405a6b7").bytes
    checksum = (~sum(f)) & 0xFFFFFFFF
    struct.pack_into(">I", f, 64, checksum)
    return bytes(f)


def vmdk_sparse():
    descriptor = (
        b"# Disk DescriptorFile\nversion=1\nCID=12345678\nparentCID=ffffffff\n"
        b'createType="monolithicSparse"\n\n# Extent description\nRW 2048 SPARSE "seed.vmdk"\n\n'
        b'# The Disk Data Base\n#DDB\n\nddb.adapterType = "ide"\nddb.geometry.cylinders = "2"\n'
    )
    h = bytearray(512)
    h[0:4] = b"KDMV"
    # version, flags, capacity, grainSize, descriptorOffset, descriptorSize, numGTEsPerGT,
    # rgdOffset, gdOffset, overHead
    struct.pack_into("<IIQQQQIQQQ", h, 4, 1, 3, 2048, 128, 1, 1, 512, 0, 2, 7)
    struct.pack_into("<B4s", h, 72, 0, b"\n \r\n")  # uncleanShutdown, line-ending check bytes
    body = bytearray(2 * 512)
    body[0 : len(descriptor)] = descriptor
    struct.pack_into("<I", body, 512, 3)  # grain directory entry 0 -> grain table at sector 3
    return bytes(h) + bytes(body) + bytes(4 * 512)  # one empty grain table: nothing allocated


def main():
    os.makedirs(OUT, exist_ok=True)
    write("raw_empty", b"")
    write("raw_text.img", (b"vdisk seed: plain bytes are a raw image. " * 40)[:1536])
    write("vhd_fixed_footer.vhd", bytes(2048) + vhd_footer(2048, 2, 0xFFFFFFFFFFFFFFFF))
    write("vhdx_identifier.vhdx", b"vhdxfile" + "vdisk seed".encode("utf-16-le") + bytes(512 - 28))
    write("vmdk_sparse_header.vmdk", vmdk_sparse())
    write(
        "vmdk_descriptor.vmdk",
        b"# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\n"
        b'createType="monolithicFlat"\n\nRW 2048 FLAT "seed-flat.img" 0\n',
    )


if __name__ == "__main__":
    main()
