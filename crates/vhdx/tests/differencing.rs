//! Differencing VHDX: parent locator and linkage, partial writes through the sector bitmap,
//! reads falling through to the parent, discard, and the conformance suite on a child.

mod common;

use common::{create_in, open_layer};
use disk_core::mapping::{Mapping, Run, WriteRun};
use disk_core::testing::{self, Capabilities, Config, ImageFactory};
use disk_core::{
    BackingSpec, BlockStatus, Disk, Driver, ErrorKind, Format, Image, Layer, LayerInfo, MemResolver, MemStorage,
    OpenOptions, Result, Storage,
};
use std::sync::Arc;
use vhdx::VhdxDriver;

const MIB: u64 = 1 << 20;

fn create_child(storage: &dyn Storage, parent: &Arc<MemStorage>, size: u64, opts: &str) -> Result<()> {
    let parent_img = Image::single(open_layer(parent.clone(), false)?, None);
    let backing = BackingSpec {
        recorded: "parent.vhdx".into(),
        absolute: Some(std::path::Path::new("/images/parent.vhdx")),
        image: &parent_img,
    };
    create_in(storage, size, opts, Some(backing), None)
}

fn open_chain(child: Arc<dyn Storage>, parent: &Arc<MemStorage>, writable: bool) -> Result<Image> {
    let resolver = Arc::new(MemResolver::new());
    resolver.insert("parent.vhdx", parent.clone());
    let opts = OpenOptions::default().resolver(resolver).writable(writable);
    Image::open_chain(open_layer(child, writable)?, None, &opts, &|_, s, ctx| {
        VhdxDriver.open(s, ctx)
    })
}

fn fill(disk: &dyn Disk, byte_offset: u64, len: u64, seed: u8) -> Vec<u8> {
    let buf: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31) ^ seed).collect();
    disk.write(byte_offset / 512, &buf).unwrap();
    buf
}

#[test]
fn child_reads_parent_and_own_sectors() {
    let size = 6 * MIB;
    let parent = Arc::new(MemStorage::new());
    create_in(&*parent, size, "block_size=1M", None, None).unwrap();
    let mut expected = vec![0u8; size as usize];
    {
        let p = Image::single(open_layer(parent.clone(), true).unwrap(), None);
        for (off, len, seed) in [(0, 3 * MIB, 1u8), (4 * MIB, MIB + 512 * 3, 2)] {
            let data = fill(&p, off, len, seed);
            expected[off as usize..(off + len) as usize].copy_from_slice(&data);
        }
        p.flush().unwrap();
    }
    let child = Arc::new(MemStorage::new());
    create_child(&*child, &parent, size, "block_size=1M").unwrap();
    {
        let c = open_chain(child.clone(), &parent, true).unwrap();
        assert_eq!(common::read_all(&c), expected, "a new child reads as its parent");
        // Partial writes (sector bitmap), a whole block, a write into a parent-less area.
        for (off, len, seed) in [
            (512, 1024, 7u8),
            (MIB + 4096, 8192, 8),
            (2 * MIB, MIB, 9),
            (5 * MIB + 512, 512, 10),
        ] {
            let data = fill(&c, off, len, seed);
            expected[off as usize..(off + len) as usize].copy_from_slice(&data);
        }
        // Discard: afterwards zeros, never the parent's data.
        c.discard((MIB + 8192) / 512, 16).unwrap();
        expected[(MIB + 8192) as usize..(MIB + 8192 + 16 * 512) as usize].fill(0);
        c.discard(0, 2048).unwrap();
        expected[..MIB as usize].fill(0);
        assert_eq!(common::read_all(&c), expected);
        let st = c.block_status(4 * MIB / 512, 16).unwrap();
        assert_eq!(st.depth, 1, "unwritten child sectors come from the parent");
        c.flush().unwrap();
    }
    let c = open_chain(child.clone(), &parent, false).unwrap();
    assert_eq!(common::read_all(&c), expected, "after reopening");
    let info = c.info();
    assert_eq!(info.backing_filename.as_deref(), Some("parent.vhdx"));
    // relative_path as Hyper-V writes it (disk_core::relative_locator), shown as named.
    assert_eq!(c.top().parent().unwrap().locators[0], ".\\parent.vhdx");
    assert_eq!(
        c.top().check(disk_core::Repair::None).unwrap().corruptions,
        disk_core::Findings::new()
    );
}

#[test]
fn linkage_is_verified() {
    let parent = Arc::new(MemStorage::new());
    create_in(&*parent, 4 * MIB, "block_size=1M", None, None).unwrap();
    let child = Arc::new(MemStorage::new());
    create_child(&*child, &parent, 4 * MIB, "").unwrap();
    open_chain(child.clone(), &parent, false).unwrap();
    // Changing the parent's data gives it a new DataWriteGuid: the child no longer matches.
    {
        let p = Image::single(open_layer(parent.clone(), true).unwrap(), None);
        p.write(0, &[1u8; 512]).unwrap();
    }
    let e = open_chain(child, &parent, false).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ParentMismatch, "{e}");
}

/// Rename the child's `parent_linkage` key (same length, so the locator stays well formed): the
/// child then records no identity for its parent.
fn strip_linkage(child: &MemStorage) {
    let key: Vec<u8> = "parent_linkage".encode_utf16().flat_map(u16::to_le_bytes).collect();
    let bytes = child.to_vec();
    let at = bytes
        .windows(key.len())
        .position(|w| w == key)
        .expect("a parent_linkage key");
    child.write_at(b"X", (at + key.len() - 2) as u64).unwrap();
}

#[test]
fn a_child_without_parent_linkage_needs_an_opt_in() {
    let parent = Arc::new(MemStorage::new());
    create_in(&*parent, 4 * MIB, "block_size=1M", None, None).unwrap();
    let child = Arc::new(MemStorage::new());
    create_child(&*child, &parent, 4 * MIB, "").unwrap();
    assert!(open_layer(child.clone(), false).unwrap().parent_identity_recorded());
    strip_linkage(&child);
    let layer = open_layer(child.clone(), false).unwrap();
    assert!(!layer.parent_identity_recorded());
    let e = open_chain(child.clone(), &parent, false).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::ParentMismatch, "{e}");
    let resolver = Arc::new(MemResolver::new());
    resolver.insert("parent.vhdx", parent.clone());
    let opts = OpenOptions {
        trust_unlinked_parent: true,
        ..OpenOptions::default().resolver(resolver)
    };
    Image::open_chain(layer, None, &opts, &|_, s, ctx| VhdxDriver.open(s, ctx)).unwrap();
}

#[test]
fn child_sector_size_must_match() {
    let parent = Arc::new(MemStorage::new());
    create_in(&*parent, 4 * MIB, "logical_sector_size=4096", None, None).unwrap();
    let child = MemStorage::new();
    let e = create_child(&child, &parent, 4 * MIB, "logical_sector_size=512").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
    create_child(&child, &parent, 4 * MIB, "").unwrap();
}

/// Children of an all-zero parent (some of it allocated), for the conformance suite.
struct DiffFactory {
    parent: Arc<MemStorage>,
}

impl DiffFactory {
    fn new() -> Self {
        let parent = Arc::new(MemStorage::new());
        create_in(&*parent, testing::DEFAULT_SIZE, "block_size=1M", None, None).unwrap();
        let p = Image::single(open_layer(parent.clone(), true).unwrap(), None);
        p.write(0, &vec![0u8; 2 * MIB as usize]).unwrap();
        drop(p);
        DiffFactory { parent }
    }
}

impl ImageFactory for DiffFactory {
    fn name(&self) -> String {
        "vhdx differencing (block_size=1M)".into()
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            discard_frees_space: false,
            granularity: MIB,
            offsets_in_storage: false,
            ..Capabilities::default()
        }
    }
    fn create(&self, storage: Arc<dyn Storage>, size: u64) -> Result<()> {
        create_child(&*storage, &self.parent, size, "block_size=1M")
    }
    fn open(&self, storage: Arc<dyn Storage>, writable: bool) -> Result<Image> {
        Ok(Image::single(
            Box::new(Flat(open_chain(storage, &self.parent, writable)?)),
            None,
        ))
    }
}

/// A chain seen as one standalone layer (the suite checks block status of standalone images).
struct Flat(Image);

impl Layer for Flat {
    fn format(&self) -> Format {
        Format::Vhdx
    }
    fn sector_size(&self) -> u32 {
        self.0.sector_size()
    }
    fn virtual_size(&self) -> u64 {
        self.0.virtual_size()
    }
    fn is_read_only(&self) -> bool {
        self.0.is_read_only()
    }
    fn map(&self, _lba: u64, count: u64) -> Result<Run> {
        Ok(Run {
            sectors: count,
            mapping: Mapping::Special,
        })
    }
    fn map_for_write(&self, _lba: u64, count: u64) -> Result<WriteRun<'_>> {
        Ok(WriteRun::engine(count))
    }
    fn host_file(&self, _file: usize) -> Option<&Arc<dyn Storage>> {
        None
    }
    fn read_special(&self, lba: u64, buf: &mut [u8], _below: &dyn Disk) -> Result<()> {
        self.0.read(lba, buf)
    }
    fn write_special(&self, lba: u64, buf: &[u8], _below: &dyn Disk) -> Result<()> {
        self.0.write(lba, buf)
    }
    fn write_zeroes(&self, lba: u64, count: u64, _below: &dyn Disk) -> Result<()> {
        self.0.write_zeroes(lba, count)
    }
    fn discard(&self, lba: u64, count: u64, _below: &dyn Disk) -> Result<()> {
        self.0.discard(lba, count)
    }
    fn flush(&self) -> Result<()> {
        self.0.flush()
    }
    fn block_status(&self, lba: u64, count: u64) -> Result<BlockStatus> {
        let mut s = self.0.block_status(lba, count)?;
        if s.depth > 0 {
            s.depth = 0;
            s.offset = None;
        }
        Ok(s)
    }
    fn info(&self) -> LayerInfo {
        self.0.info()
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

#[test]
fn differencing_conformance() {
    let f = DiffFactory::new();
    testing::check_boundaries(&f);
    testing::check_discard(&f);
    testing::check_read_only(&f);
    testing::check_model(&f, &Config::from_env());
    let light = Config {
        max_crash_points: 24,
        ..Config::from_env()
    };
    testing::check_crash_consistency(&f, &light);
    testing::check_io_errors(&f, &light);
}

#[test]
fn rebase_records_the_new_parent_and_linkage() {
    let size = 4 * MIB;
    let a = Arc::new(MemStorage::new());
    create_in(&*a, size, "block_size=1M", None, None).unwrap();
    {
        let p = Image::single(open_layer(a.clone(), true).unwrap(), None);
        fill(&p, 0, 2 * MIB, 3);
    }
    // B: same contents, another identity (a copy that was written to).
    let b = Arc::new(a.snapshot());
    {
        let p = Image::single(open_layer(b.clone(), true).unwrap(), None);
        let mut sector = vec![0u8; 512];
        p.read(0, &mut sector).unwrap();
        p.write(0, &sector).unwrap();
    }
    let child = Arc::new(MemStorage::new());
    create_child(&*child, &a, size, "block_size=1M").unwrap();
    {
        let c = open_chain(child.clone(), &a, true).unwrap();
        c.write(5, &[0xee; 512]).unwrap();
    }
    let expected = common::read_all(&open_chain(child.clone(), &a, false).unwrap());
    assert_eq!(
        open_chain(child.clone(), &b, false).unwrap_err().kind(),
        ErrorKind::ParentMismatch
    );
    // Record B (under a longer name, so the locator item moves) and open the chain through it.
    let name = "a-much-longer-name-for-the-new-parent-image.vhdx";
    let data_guid = |s: &Arc<MemStorage>| {
        let l = open_layer(s.clone(), false).unwrap();
        l.as_any().downcast_ref::<vhdx::VhdxLayer>().unwrap().data_write_guid()
    };
    let before = data_guid(&child);
    {
        let layer = open_layer(child.clone(), true).unwrap();
        let b_layer = open_layer(b.clone(), false).unwrap();
        layer
            .set_parent(Some(&disk_core::NewParent {
                recorded: name,
                absolute: None,
                child: None,
                layer: &*b_layer,
            }))
            .unwrap();
    }
    let resolver = Arc::new(MemResolver::new());
    resolver.insert(name, b.clone());
    let opts = OpenOptions::default().resolver(resolver);
    let c = Image::open_chain(open_layer(child.clone(), false).unwrap(), None, &opts, &|_, s, ctx| {
        VhdxDriver.open(s, ctx)
    })
    .unwrap();
    assert_eq!(c.info().backing_filename.as_deref(), Some(name));
    assert_eq!(common::read_all(&c), expected);
    assert!(c.top().check(disk_core::Repair::None).unwrap().is_clean());
    assert_eq!(data_guid(&child), before, "the child's own children still match it");
}

#[test]
fn shrinking_a_child_gives_back_dropped_sector_bitmaps() {
    // With 1 MiB blocks one sector bitmap block covers 4 GiB: the second chunk's is dropped.
    let size = 6 << 30;
    let parent = Arc::new(MemStorage::new());
    create_in(&*parent, size, "block_size=1M", None, None).unwrap();
    let child = Arc::new(MemStorage::new());
    create_child(&*child, &parent, size, "block_size=1M").unwrap();
    let kept = {
        let c = open_chain(child.clone(), &parent, true).unwrap();
        let kept = fill(&c, 4096, 4096, 1);
        fill(&c, (5 << 30) + 4096, 4096, 2);
        c.flush().unwrap();
        kept
    };
    let before = child.len().unwrap();
    open_layer(child.clone(), true)
        .unwrap()
        .resize(1 << 30, &disk_core::NoExtraFiles)
        .unwrap();
    let after = child.len().unwrap();
    assert!(
        after + 2 * MIB <= before,
        "the dropped block and bitmap are cut: {before} -> {after}"
    );
    let r = open_layer(child.clone(), false)
        .unwrap()
        .check(disk_core::Repair::None)
        .unwrap();
    assert!(r.leaks.is_empty() && r.corruptions.is_empty(), "{r:?}");
    assert_eq!(r.image_end_offset, Some(after), "the file ends at its last structure");
    let c = open_chain(child.clone(), &parent, false).unwrap();
    let mut buf = vec![0u8; 4096];
    c.read(8, &mut buf).unwrap();
    assert_eq!(buf, kept);
}
