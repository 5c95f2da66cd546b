//! Hostile descriptors and requests: flat extents with huge offsets or a partial last sector,
//! too many extents, one sparse file named twice, and discards whose size must not decide the
//! size of a buffer.

mod common;

use common::{create, open};
use disk_core::{
    Allocation, BackingSpec, CreateSpec, Disk, Driver, ErrorKind, FsPolicy, FsResolver, Image, MemResolver, MemStorage,
    NoExtraFiles, OpenContext, OpenOptions, Options,
};
use std::sync::Arc;
use vmdk::VmdkDriver;

fn descriptor(create_type: &str, extents: &str) -> String {
    format!(
        "# Disk DescriptorFile\nversion=1\nCID=0000abcd\nparentCID=ffffffff\ncreateType=\"{create_type}\"\n\n{extents}\n"
    )
}

#[test]
fn partial_last_sector_of_a_flat_extent_is_data() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.bin"), vec![0xab; 700]).unwrap();
    let path = dir.path().join("d.vmdk");
    std::fs::write(&path, descriptor("monolithicFlat", "RW 4 FLAT \"a.bin\" 0")).unwrap();
    let disk = open(&path, false).unwrap();
    let st = disk.block_status(1, 3).unwrap();
    assert_eq!((st.sectors, st.allocation), (1, Allocation::Data), "{st:?}");
    let st = disk.block_status(2, 2).unwrap();
    assert_eq!(st.allocation, Allocation::Zero);
    let mut buf = vec![0xffu8; 512];
    disk.read(1, &mut buf).unwrap();
    assert!(buf[..188].iter().all(|&b| b == 0xab));
    assert!(buf[188..].iter().all(|&b| b == 0));
}

#[test]
fn flat_extent_offsets_that_wrap_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.bin"), vec![0xab; 4096]).unwrap();
    let path = dir.path().join("d.vmdk");
    // offset * 512 fits in 64 bits, offset * 512 + 4 sectors does not.
    let offset = u64::MAX / 512;
    std::fs::write(
        &path,
        descriptor("monolithicFlat", &format!("RW 4 FLAT \"a.bin\" {offset}")),
    )
    .unwrap();
    let Err(e) = open(&path, false) else {
        panic!("a flat extent ending past 2^64 bytes was accepted");
    };
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
}

#[test]
fn extent_count_is_capped_and_sparse_files_back_one_extent() {
    let dir = tempfile::tempdir().unwrap();
    create(&dir.path().join("s.vmdk"), 1 << 20, "", None).unwrap();
    // Two extents on one sparse file would allocate grains over each other.
    let path = dir.path().join("d.vmdk");
    std::fs::write(
        &path,
        descriptor(
            "twoGbMaxExtentSparse",
            "RW 2048 SPARSE \"s.vmdk\"\nRW 2048 SPARSE \"s.vmdk\"",
        ),
    )
    .unwrap();
    let Err(e) = open(&path, false) else {
        panic!("one sparse file backing two extents was accepted");
    };
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    // Thousands of lines naming one flat file: refused past the cap, never opened per line.
    std::fs::write(dir.path().join("f.bin"), vec![1u8; 512]).unwrap();
    let many = "RW 1 FLAT \"f.bin\" 0\n".repeat(vmdk::descriptor::MAX_EXTENTS + 1);
    std::fs::write(&path, descriptor("monolithicFlat", &many)).unwrap();
    assert!(open(&path, false).is_err());
    let some = "RW 1 FLAT \"f.bin\" 0\n".repeat(4000);
    std::fs::write(&path, descriptor("monolithicFlat", &some)).unwrap();
    let disk = open(&path, false).unwrap();
    assert_eq!(disk.sector_count(), 4000);
}

#[test]
fn discard_on_a_large_child_needs_no_large_buffer() {
    // The old code allocated one zero buffer for the whole range (107 GB for 100 GiB). The
    // child lives in memory with a size limit, so a regression fails instead of filling a disk.
    fn ctx(resolver: &dyn disk_core::Resolver, writable: bool) -> OpenContext<'_> {
        OpenContext {
            path: None,
            writable,
            resolver,
            lenient: false,
            repair: false,
            locking: disk_core::Locking::Auto,
        }
    }
    let shared = Arc::new(MemResolver::new());
    let resolver = &*shared;
    let parent = Arc::new(MemStorage::new());
    let spec = |size, backing| CreateSpec {
        size,
        options: Options::parse("").unwrap(),
        backing,
        path: None,
        files: &NoExtraFiles,
    };
    VmdkDriver.create(&*parent, spec(1 << 20, None)).unwrap();
    let p = Image::single(VmdkDriver.open(parent.clone(), &ctx(resolver, true)).unwrap(), None);
    p.write(0, &[0x33; 65536]).unwrap();
    p.flush().unwrap();
    let p = Image::single(VmdkDriver.open(parent.clone(), &ctx(resolver, false)).unwrap(), None);
    resolver.insert("p.vmdk", parent);
    let size = 100u64 << 30;
    let child = Arc::new(MemStorage::with_limit(64 << 20));
    let backing = BackingSpec {
        recorded: "p.vmdk".into(),
        absolute: None,
        image: &p,
    };
    VmdkDriver.create(&*child, spec(size, Some(backing))).unwrap();
    let top = VmdkDriver.open(child.clone(), &ctx(resolver, true)).unwrap();
    let options = OpenOptions::new().writable(true).resolver(shared.clone());
    let disk = Image::open_chain(top, None, &options, &|_, s, c| VmdkDriver.open(s, c)).unwrap();
    disk.discard(0, size / 512).unwrap();
    disk.flush().unwrap();
    let mut buf = vec![0xffu8; 65536];
    disk.read(0, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0), "the parent's data shows through");
}

#[test]
fn an_extent_may_not_be_the_descriptor_itself() {
    // Guest writes through such an extent would rewrite the descriptor (a new parent hint).
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.vmdk");
    let text = descriptor("monolithicFlat", "RW 16 FLAT \"d.vmdk\" 0");
    std::fs::write(&path, &text).unwrap();
    // With locking, the extent's open already finds the descriptor locked; without, the engine
    // itself refuses the extent.
    let Err(e) = open(&path, true) else {
        panic!("an extent naming its own descriptor was accepted");
    };
    assert_eq!(e.kind(), ErrorKind::Locked, "{e}");
    let unlocked = OpenOptions::new()
        .writable(true)
        .resolver(Arc::new(FsResolver::new(FsPolicy::SameDirectory)))
        .locking(disk_core::Locking::Off);
    let Err(e) = common::open_with(&path, &unlocked) else {
        panic!("an extent naming its own descriptor was accepted");
    };
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
}
