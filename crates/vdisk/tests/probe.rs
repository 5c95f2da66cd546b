//! Probing through the registered drivers: each format crate's magic and checks, asked in the
//! fixed order (VHDX, VMDK, VHD, raw last).

use std::path::Path;
use vdisk::{Format, MemStorage};

fn probe_bytes(bytes: &[u8], name: Option<&str>) -> Format {
    vdisk::probe(&MemStorage::from_bytes(bytes), name.map(Path::new)).unwrap()
}

fn footer(valid: bool) -> Vec<u8> {
    let mut f = vec![0u8; 512];
    f[..8].copy_from_slice(b"conectix");
    f[20] = 7;
    let sum = f.iter().fold(0u32, |a, &b| a.wrapping_add(u32::from(b)));
    let ck = if valid { !sum } else { 1 };
    f[64..68].copy_from_slice(&ck.to_be_bytes());
    f
}

#[test]
fn recognises_each_signature() {
    assert_eq!(probe_bytes(b"", None), Format::Raw);
    assert_eq!(probe_bytes(b"vhdxfile\0\0", None), Format::Vhdx);
    assert_eq!(probe_bytes(b"KDMV\x01\0\0\0", None), Format::Vmdk);
    assert_eq!(probe_bytes(b"COWD\x01\0\0\0", None), Format::Vmdk);
    assert_eq!(
        probe_bytes(&[0xbe, 0xba, 0xfe, 0xca, 0, 0, 0, 0, 1], None),
        Format::Vmdk
    );
    assert_eq!(probe_bytes(b"conectix", None), Format::Vhd);
    let desc = b"# Disk DescriptorFile\nversion=1\nCID=fffffffe\ncreateType=\"monolithicFlat\"\n";
    assert_eq!(probe_bytes(desc, None), Format::Vmdk);
    assert_eq!(probe_bytes(b"version=1\r\ncreateType=\"vmfs\"\r\n", None), Format::Vmdk);
    assert_eq!(probe_bytes(b"createType is just text\n", None), Format::Raw);
    assert_eq!(probe_bytes(&[0u8; 4096], None), Format::Raw);
}

#[test]
fn fixed_vhd_footer_at_end() {
    let mut img = vec![0u8; 4096];
    img.extend(footer(true));
    assert_eq!(probe_bytes(&img, None), Format::Vhd);
    let mut img = vec![0u8; 4096];
    img.extend(footer(false));
    assert_eq!(probe_bytes(&img, Some("disk.img")), Format::Raw);
    assert_eq!(probe_bytes(&img, Some("disk.VHD")), Format::Vhd);
    // A footer alone (empty fixed disk) and the old 511-byte footer.
    assert_eq!(probe_bytes(&footer(true), None), Format::Vhd);
    let mut img = vec![0u8; 1024];
    img.extend(&footer(true)[..511]);
    assert_eq!(probe_bytes(&img, Some("old.vhd")), Format::Vhd);
}

#[test]
fn earlier_formats_win() {
    // A VHDX signature wins over a VHD footer at the end; a VMDK magic over a VHD cookie
    // further on.
    let mut img = b"vhdxfile".to_vec();
    img.resize(4096, 0);
    img.extend(footer(true));
    assert_eq!(probe_bytes(&img, Some("d.vhd")), Format::Vhdx);
    let mut img = b"KDMV\x01\0\0\0".to_vec();
    img.resize(4096, 0);
    img.extend(footer(true));
    assert_eq!(probe_bytes(&img, None), Format::Vmdk);
    // The registry lists the engines in that order, raw last.
    let order: Vec<_> = vdisk::drivers().iter().map(|d| d.format()).collect();
    assert_eq!(order, Format::ALL);
}
