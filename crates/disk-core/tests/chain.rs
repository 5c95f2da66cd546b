//! Chains of layers: parents opened only through the resolver, with cycle and depth limits,
//! identity checks, placeholders for missing parents, and reads/status falling through.

use disk_core::mapping::{Mapping, Run, WriteRun};
use disk_core::{
    Allocation, BlockStatus, DenyExternal, Disk, Error, ErrorKind, Format, Image, Layer, LayerInfo, MemResolver,
    MemStorage, MissingParent, OpenContext, OpenOptions, ParentRef, Result, Storage, ops,
};
use std::any::Any;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A test layer stored as text: line 1 = "size=N parent=NAME id=X parent_id=Y", then
/// "sector=byte" lines. Enough to exercise chain logic without a real format.
struct TextLayer {
    size_sectors: u64,
    id: String,
    parent: Option<(ParentRef, String)>,
    sectors: Mutex<BTreeMap<u64, u8>>,
}

fn encode(size: u64, id: &str, parent: Option<(&str, &str)>, sectors: &[(u64, u8)]) -> Arc<MemStorage> {
    let mut text = format!("size={size} id={id}");
    if let Some((name, pid)) = parent {
        text += &format!(" parent={name} parent_id={pid}");
    }
    for (s, b) in sectors {
        text += &format!("\n{s}={b}");
    }
    Arc::new(MemStorage::from_bytes(text.as_bytes()))
}

fn open_text(storage: Arc<dyn Storage>, _ctx: &OpenContext<'_>) -> Result<Box<dyn Layer>> {
    let mut buf = vec![0u8; storage.len().unwrap() as usize];
    storage.read_at(&mut buf, 0).unwrap();
    let text = String::from_utf8(buf).unwrap();
    let mut lines = text.lines();
    let head: BTreeMap<&str, &str> = lines
        .next()
        .unwrap()
        .split(' ')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let parent = head.get("parent").map(|name| {
        (
            ParentRef {
                format: Format::Raw,
                locators: vec!["missing-first".into(), name.to_string()],
                display: name.to_string(),
            },
            head["parent_id"].to_string(),
        )
    });
    let sectors = lines
        .filter_map(|l| l.split_once('='))
        .map(|(s, b)| (s.parse().unwrap(), b.parse().unwrap()))
        .collect();
    Ok(Box::new(TextLayer {
        size_sectors: head["size"].parse().unwrap(),
        id: head["id"].to_string(),
        parent,
        sectors: Mutex::new(sectors),
    }))
}

impl Layer for TextLayer {
    fn format(&self) -> Format {
        Format::Raw
    }
    fn sector_size(&self) -> u32 {
        512
    }
    fn virtual_size(&self) -> u64 {
        self.size_sectors * 512
    }
    fn is_read_only(&self) -> bool {
        false
    }
    fn map(&self, lba: u64, _count: u64) -> Result<Run> {
        let here = self.sectors.lock().unwrap().contains_key(&lba);
        Ok(Run {
            sectors: 1,
            mapping: if here { Mapping::Special } else { Mapping::Unallocated },
        })
    }
    fn map_for_write(&self, _lba: u64, count: u64) -> Result<WriteRun<'_>> {
        Ok(WriteRun::engine(count))
    }
    fn host_file(&self, _file: usize) -> Option<&Arc<dyn Storage>> {
        None
    }
    fn read_special(&self, lba: u64, buf: &mut [u8], _below: &dyn Disk) -> Result<()> {
        for (i, chunk) in buf.chunks_mut(512).enumerate() {
            chunk.fill(self.sectors.lock().unwrap()[&(lba + i as u64)]);
        }
        Ok(())
    }
    fn write_zeroes(&self, lba: u64, count: u64, below: &dyn Disk) -> Result<()> {
        self.discard(lba, count, below)
    }
    fn write_special(&self, lba: u64, buf: &[u8], _below: &dyn Disk) -> Result<()> {
        for (i, chunk) in buf.chunks(512).enumerate() {
            self.sectors.lock().unwrap().insert(lba + i as u64, chunk[0]);
        }
        Ok(())
    }
    fn discard(&self, lba: u64, count: u64, _below: &dyn Disk) -> Result<()> {
        for s in lba..lba + count {
            self.sectors.lock().unwrap().insert(s, 0);
        }
        Ok(())
    }
    fn flush(&self) -> Result<()> {
        Ok(())
    }
    fn block_status(&self, lba: u64, _count: u64) -> Result<BlockStatus> {
        let here = self.sectors.lock().unwrap().contains_key(&lba);
        Ok(BlockStatus::new(
            1,
            if here {
                Allocation::Data
            } else {
                Allocation::Unallocated
            },
        ))
    }
    fn parent(&self) -> Option<&ParentRef> {
        self.parent.as_ref().map(|(p, _)| p)
    }
    fn verify_parent(&self, parent: &dyn Layer) -> Result<()> {
        let parent = parent.as_any().downcast_ref::<TextLayer>().expect("same format");
        match &self.parent {
            Some((_, id)) if *id == parent.id => Ok(()),
            _ => Err(Error::new(ErrorKind::ParentMismatch, "parent id differs")),
        }
    }
    fn info(&self) -> LayerInfo {
        let mut info = LayerInfo::new(Format::Raw, self.virtual_size());
        info.backing_filename = self.parent.as_ref().map(|(p, _)| p.display.clone());
        info
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

fn open(top: Arc<MemStorage>, resolver: Arc<MemResolver>, tweak: impl FnOnce(&mut OpenOptions)) -> Result<Image> {
    let mut options = OpenOptions::new().resolver(resolver);
    tweak(&mut options);
    let ctx = options.context(None, true);
    let layer = open_text(top, &ctx)?;
    Image::open_chain(layer, None, &options, &|_, storage, ctx| open_text(storage, ctx))
}

fn byte_at(disk: &dyn Disk, lba: u64) -> u8 {
    let mut buf = [0u8; 512];
    disk.read(lba, &mut buf).unwrap();
    buf[0]
}

#[test]
fn reads_fall_through_to_parents_and_status_reports_depth() {
    let r = Arc::new(MemResolver::new());
    r.insert("base", encode(4, "B", None, &[(0, 1), (1, 1)]));
    r.insert("mid", encode(4, "M", Some(("base", "B")), &[(1, 2)]));
    let top = encode(8, "T", Some(("mid", "M")), &[(2, 3)]);
    let image = open(top, r, |_| {}).unwrap();
    assert_eq!(image.depth(), 3);
    assert_eq!([0, 1, 2, 3, 5].map(|l| byte_at(&image, l)), [1, 2, 3, 0, 0]);
    let depth = |lba| image.block_status(lba, 1).unwrap();
    assert_eq!((depth(0).allocation, depth(0).depth), (Allocation::Data, 2));
    assert_eq!((depth(1).allocation, depth(1).depth), (Allocation::Data, 1));
    assert_eq!((depth(2).allocation, depth(2).depth), (Allocation::Data, 0));
    assert_eq!((depth(3).allocation, depth(3).depth), (Allocation::Unallocated, 2));
    // Past the parent's end (the child is larger): zeros, unallocated.
    assert_eq!(depth(6).allocation, Allocation::Unallocated);

    // Writes go to the top layer only.
    image.write(0, &[9u8; 512]).unwrap();
    assert_eq!(byte_at(&image, 0), 9);
    let map = ops::map(&image).unwrap();
    assert_eq!(map.iter().map(|e| e.length).sum::<u64>(), image.virtual_size());
}

#[test]
fn parents_need_the_callers_permission() {
    let top = encode(4, "T", Some(("base", "B")), &[]);
    let options = OpenOptions::new().resolver(Arc::new(DenyExternal));
    let layer = open_text(top.clone(), &options.context(None, false)).unwrap();
    let err = Image::open_chain(layer, None, &options, &|_, s, c| open_text(s, c)).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::ExternalFileDenied);
}

#[test]
fn missing_parent_placeholder_keeps_metadata_and_fails_reads() {
    let top = encode(4, "T", Some(("base", "B")), &[(0, 7)]);
    let r = Arc::new(MemResolver::new());
    assert_eq!(
        open(top.clone(), r.clone(), |_| {}).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    let image = open(top, r, |o| o.missing_parent = MissingParent::Placeholder).unwrap();
    assert!(image.has_missing_parent());
    assert_eq!(image.info().backing_filename.as_deref(), Some("base"));
    assert_eq!(byte_at(&image, 0), 7, "the child's own sectors still read");
    let mut buf = [0u8; 512];
    assert_eq!(image.read(1, &mut buf).unwrap_err().kind(), ErrorKind::NotFound);
}

#[test]
fn identity_mismatch_is_refused_unless_disabled() {
    let r = Arc::new(MemResolver::new());
    r.insert("base", encode(4, "OTHER", None, &[]));
    let top = encode(4, "T", Some(("base", "B")), &[]);
    assert_eq!(
        open(top.clone(), r.clone(), |_| {}).unwrap_err().kind(),
        ErrorKind::ParentMismatch
    );
    assert!(open(top, r, |o| o.verify_parents = false).is_ok());
}

#[test]
fn cycles_and_depth_are_bounded() {
    let r = Arc::new(MemResolver::new());
    r.insert("a", encode(4, "A", Some(("b", "B")), &[]));
    r.insert("b", encode(4, "B", Some(("a", "A")), &[]));
    // The top is opened from memory (no path), so the loop is detected when "a" comes again.
    let err = open(encode(4, "T", Some(("a", "A")), &[]), r.clone(), |_| {}).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Corrupt, "{err}");

    let r = Arc::new(MemResolver::new());
    for i in 0..10 {
        r.insert(
            &format!("l{i}"),
            encode(
                4,
                &format!("L{i}"),
                Some((&format!("l{}", i + 1), &format!("L{}", i + 1))),
                &[],
            ),
        );
    }
    r.insert("l10", encode(4, "L10", None, &[]));
    let top = encode(4, "T", Some(("l0", "L0")), &[]);
    assert_eq!(open(top.clone(), r.clone(), |_| {}).unwrap().depth(), 12);
    let err = open(top, r, |o| o.max_chain_depth = 5).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
}

#[test]
fn out_of_range_and_bad_buffers_are_errors() {
    let image = open(encode(4, "T", None, &[]), Arc::new(MemResolver::new()), |_| {}).unwrap();
    let mut buf = vec![0u8; 1024];
    assert_eq!(image.read(3, &mut buf).unwrap_err().kind(), ErrorKind::OutOfRange);
    assert_eq!(
        image.read(u64::MAX, &mut buf).unwrap_err().kind(),
        ErrorKind::OutOfRange
    );
    assert_eq!(
        image.read(0, &mut buf[..100]).unwrap_err().kind(),
        ErrorKind::InvalidArgument
    );
    assert_eq!(image.discard(u64::MAX, 2).unwrap_err().kind(), ErrorKind::OutOfRange);
    assert_eq!(image.block_status(4, 1).unwrap_err().kind(), ErrorKind::OutOfRange);
    assert_eq!(
        image.write_zeroes(1, u64::MAX).unwrap_err().kind(),
        ErrorKind::OutOfRange
    );
}
