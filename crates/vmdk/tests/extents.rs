//! Hand-made descriptors: FLAT offsets, ZERO and VMFS extents, COWD extents, and the file gate.

mod common;

use common::open;
use disk_core::{Disk, ErrorKind};

fn descriptor(create_type: &str, extents: &str) -> String {
    format!(
        "# Disk DescriptorFile\r\nversion=1\r\nCID=0000abcd\r\nparentCID=ffffffff\r\ncreateType=\"{create_type}\"\r\n\r\n{extents}\r\n# comment kept\r\nddb.adapterType = \"lsilogic\"\r\n"
    )
}

#[test]
fn flat_offsets_zero_and_vmfs_extents() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = vec![0u8; 8192];
    a[1024..1536].fill(0xaa); // extent sector 0 at file offset 2 sectors
    a[2560..3072].fill(0xbb); // extent sector 3
    std::fs::write(dir.path().join("a.bin"), &a).unwrap();
    std::fs::write(dir.path().join("b-flat.vmdk"), vec![0xcc; 1024]).unwrap();
    let text = descriptor(
        "vmfs",
        "RW 4 FLAT \"a.bin\" 2\r\nRDONLY 3 ZERO\r\nRW 4 VMFS \"b-flat.vmdk\"\r\n",
    );
    let path = dir.path().join("d.vmdk");
    std::fs::write(&path, &text).unwrap();
    let disk = open(&path, false).unwrap();
    assert_eq!(disk.sector_count(), 11);
    let mut buf = vec![0u8; 11 * 512];
    disk.read(0, &mut buf).unwrap();
    assert!(buf[..512].iter().all(|&b| b == 0xaa));
    assert!(buf[512..1536].iter().all(|&b| b == 0));
    assert!(buf[1536..2048].iter().all(|&b| b == 0xbb));
    assert!(buf[2048..3584].iter().all(|&b| b == 0), "ZERO extent");
    assert!(buf[3584..4608].iter().all(|&b| b == 0xcc));
    assert!(buf[4608..].iter().all(|&b| b == 0), "past the end of a short flat file");
    let st = disk.block_status(4, 7).unwrap();
    assert_eq!((st.sectors, st.allocation), (3, disk_core::Allocation::Zero));
    // Writing into the RDONLY extent is refused; the RW extent takes writes in place. (The
    // reader goes first: its locks on the extents would keep a writer out.)
    drop(disk);
    let rw = open(&path, true).unwrap();
    assert_eq!(rw.write(5, &[1u8; 512]).unwrap_err().kind(), ErrorKind::ReadOnly);
    rw.write(7, &[7u8; 512]).unwrap();
    rw.flush().unwrap();
    assert!(
        std::fs::read(dir.path().join("b-flat.vmdk")).unwrap()[..512]
            .iter()
            .all(|&b| b == 7)
    );
    // The descriptor was rewritten with a new CID, keeping comments and CRLF.
    let after = std::fs::read_to_string(&path).unwrap();
    assert!(!after.contains("CID=0000abcd"));
    assert!(after.contains("# comment kept\r\nddb.adapterType = \"lsilogic\"\r\n"));
}

#[test]
fn extents_outside_the_directory_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("img");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(dir.path().join("secret"), b"secret").unwrap();
    for name in ["/etc/passwd", "../secret", "/dev/zero"] {
        let path = sub.join("evil.vmdk");
        std::fs::write(
            &path,
            descriptor("monolithicFlat", &format!("RW 1 FLAT \"{name}\" 0\n")),
        )
        .unwrap();
        let e = open(&path, false).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ExternalFileDenied, "{name}: {e}");
    }
    // With the default resolver nothing outside is opened at all.
    let path = sub.join("evil.vmdk");
    let options = disk_core::OpenOptions::new();
    let e = common::open_with(&path, &options).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ExternalFileDenied);
}

/// A COWD (vmfsSparse) extent: 2 grains of 8 sectors, grain 1 allocated.
fn cowd() -> Vec<u8> {
    let mut f = vec![0u8; 2048 + 512 + 4096 * 4 + 4096];
    f[0..4].copy_from_slice(b"COWD");
    let put = |f: &mut Vec<u8>, at: usize, v: u32| f[at..at + 4].copy_from_slice(&v.to_le_bytes());
    put(&mut f, 4, 1); // version
    put(&mut f, 12, 16); // numSectors
    put(&mut f, 16, 8); // grainSize
    put(&mut f, 20, 4); // gdOffset (sectors)
    put(&mut f, 24, 1); // numGDEntries
    put(&mut f, 2048, 5); // GD[0] -> GT at sector 5
    let gt = 5 * 512;
    let data_sector = (2048 + 512 + 4096 * 4) / 512;
    put(&mut f, gt + 4, data_sector as u32); // GT[1]
    let d = data_sector * 512;
    f[d..d + 4096].fill(0x3c);
    f
}

#[test]
fn cowd_extent_reads_read_only() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("x-delta.vmdk"), cowd()).unwrap();
    let path = dir.path().join("x.vmdk");
    std::fs::write(&path, descriptor("vmfsSparse", "RW 16 VMFSSPARSE \"x-delta.vmdk\"\n")).unwrap();
    let disk = open(&path, false).unwrap();
    let mut buf = vec![0u8; 16 * 512];
    disk.read(0, &mut buf).unwrap();
    assert!(buf[..4096].iter().all(|&b| b == 0));
    assert!(buf[4096..].iter().all(|&b| b == 0x3c));
    drop(disk);
    let rw = open(&path, true).unwrap();
    assert_eq!(rw.write(0, &[0u8; 512]).unwrap_err().kind(), ErrorKind::Unsupported);
    drop(rw);
    // A bare COWD file opens too.
    let bare = open(&dir.path().join("x-delta.vmdk"), false).unwrap();
    assert_eq!(bare.virtual_size(), 16 * 512);
}

#[test]
fn absurd_sizes_fail_without_allocating() {
    let dir = tempfile::tempdir().unwrap();
    let mut h = vec![0u8; 1024];
    h[0..4].copy_from_slice(b"KDMV");
    h[4..8].copy_from_slice(&1u32.to_le_bytes());
    h[12..20].copy_from_slice(&(1u64 << 61).to_le_bytes()); // capacity
    h[20..28].copy_from_slice(&128u64.to_le_bytes()); // grain
    h[44..48].copy_from_slice(&512u32.to_le_bytes());
    h[56..64].copy_from_slice(&1u64.to_le_bytes()); // gdOffset
    let path = dir.path().join("huge.vmdk");
    std::fs::write(&path, &h).unwrap();
    assert_eq!(open(&path, false).unwrap_err().kind(), ErrorKind::Corrupt);
    std::fs::write(
        &path,
        descriptor(
            "monolithicFlat",
            "RW 36028797018963968 ZERO\nRW 36028797018963968 ZERO\n",
        ),
    )
    .unwrap();
    assert_eq!(open(&path, false).unwrap_err().kind(), ErrorKind::Corrupt);
}
