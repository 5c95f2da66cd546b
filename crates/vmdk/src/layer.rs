//! A VMDK image as a [`Layer`]: its extents laid end to end, its descriptor, its parent link.

use crate::descriptor::{Access, Descriptor, ExtentType, NO_PARENT_CID};
use crate::format::SECTOR;
use crate::sparse::{GrainLoc, SparseExtent};
use crate::stream::StreamWriter;
use disk_core::mapping::{Completion, Mapping, Run, WriteRun, WriteTarget};
use disk_core::mover::write_zero_data;
use disk_core::sync::lock;
use disk_core::{
    Allocation, BlockStatus, CheckReport, Disk, Error, ErrorKind, Format, InfoValue, IoResultExt, Layer, LayerInfo,
    ParentRef, Repair, Result, Storage,
};
use std::any::Any;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

mod resize;

/// Where the descriptor lives, for rewriting it.
#[derive(Debug)]
pub(crate) enum DescriptorHome {
    /// Inside a sparse extent: `size` bytes at `offset`.
    Embedded {
        storage: Arc<dyn Storage>,
        offset: u64,
        size: u64,
    },
    /// A descriptor file of its own.
    File { storage: Arc<dyn Storage> },
    /// No descriptor (a bare COWD or seSparse extent).
    None,
}

/// The data behind one extent line.
#[derive(Debug)]
pub(crate) enum Extent {
    /// Raw data at `offset` of a file of `file_len` bytes (reads past its end are zeros).
    Flat {
        storage: Arc<dyn Storage>,
        offset: u64,
        file_len: u64,
    },
    /// Reads as zeros.
    Zero,
    /// A grain-table extent.
    Sparse(Box<SparseExtent>),
}

/// One extent with its place in the disk.
#[derive(Debug)]
pub(crate) struct ExtentSlot {
    pub start: u64,
    pub sectors: u64,
    pub access: Access,
    pub kind: ExtentType,
    pub name: String,
    pub extent: Extent,
}

/// An open VMDK image.
#[derive(Debug)]
pub struct VmdkLayer {
    descriptor: Mutex<Option<Descriptor>>,
    home: DescriptorHome,
    create_type: String,
    extents: Vec<ExtentSlot>,
    sectors: u64,
    read_only: bool,
    cid: AtomicU32,
    parent_cid: Option<u32>,
    parent: Option<ParentRef>,
    cid_updated: AtomicBool,
    stream: Option<StreamWriter>,
    /// `ddb.uuid.image` (VirtualBox) or `ddb.uuid` (VMware, 16 hex bytes), if recorded.
    disk_uuid: Option<uuid::Uuid>,
}

impl VmdkLayer {
    pub(crate) fn new(
        descriptor: Option<Descriptor>,
        home: DescriptorHome,
        create_type: String,
        extents: Vec<ExtentSlot>,
        writable: bool,
    ) -> Result<Self> {
        let sectors = extents.iter().map(|e| e.sectors).sum::<u64>();
        let (cid, parent_cid, parent) = match &descriptor {
            Some(d) => {
                let parent = d.parent_hint().map(|h| {
                    // VMware records absolute paths ("/vmfs/volumes/..."): also try the bare
                    // name beside the child, where copied chains usually are.
                    let mut locators = vec![h.to_string()];
                    if let Some(base) = h.rsplit(['/', '\\']).next().filter(|b| !b.is_empty() && *b != h) {
                        locators.push(base.to_string());
                    }
                    ParentRef {
                        format: Format::Vmdk,
                        locators,
                        display: h.to_string(),
                    }
                });
                (d.cid()?.unwrap_or(0), d.parent_cid()?, parent)
            }
            None => (0, None, None),
        };
        let stream = match extents.as_slice() {
            [slot] if writable => match &slot.extent {
                Extent::Sparse(s) if s.compressed() => StreamWriter::attach(s)?,
                _ => None,
            },
            _ => None,
        };
        let disk_uuid = descriptor.as_ref().and_then(|d| {
            let text = d.get("ddb.uuid.image").or_else(|| d.get("ddb.uuid"))?;
            let hex: String = text.chars().filter(|c| c.is_ascii_hexdigit()).collect();
            uuid::Uuid::try_parse(&hex).ok().filter(|u| !u.is_nil())
        });
        Ok(VmdkLayer {
            disk_uuid,
            descriptor: Mutex::new(descriptor),
            home,
            create_type,
            extents,
            sectors,
            read_only: !writable,
            cid: AtomicU32::new(cid),
            parent_cid,
            parent,
            cid_updated: AtomicBool::new(false),
            stream,
        })
    }

    /// The content ID (`CID`).
    pub fn cid(&self) -> u32 {
        self.cid.load(Ordering::Acquire)
    }

    /// The parent's CID recorded in this image (`parentCID`), if any.
    pub fn parent_cid(&self) -> Option<u32> {
        self.parent_cid
    }

    /// `createType`.
    pub fn create_type(&self) -> &str {
        &self.create_type
    }

    /// The slot holding sector `lba` (which must be in range).
    fn slot_index(&self, lba: u64) -> usize {
        self.extents.partition_point(|s| s.start + s.sectors <= lba)
    }

    /// The extent holding sector `lba`: its index (the host file number mappings use), the
    /// slot, and `lba`'s sector within the extent.
    fn slot_at(&self, lba: u64) -> Result<(usize, &ExtentSlot, u64)> {
        let index = self.slot_index(lba);
        let slot = self
            .extents
            .get(index)
            .ok_or_else(|| Error::out_of_range(format!("sector {lba} lies past the last extent")))?;
        Ok((index, slot, lba - slot.start))
    }

    /// Visit the extent pieces of `[lba, lba+count)`: (slot, first sector in the extent, count,
    /// sector offset into the request).
    fn pieces(&self, lba: u64, count: u64, mut f: impl FnMut(&ExtentSlot, u64, u64, u64) -> Result<()>) -> Result<()> {
        let mut done = 0u64;
        let mut i = self.slot_index(lba);
        while done < count {
            let Some(slot) = self.extents.get(i) else {
                return Err(Error::out_of_range(format!(
                    "sector {} lies past the last extent",
                    lba + done
                )));
            };
            let at = lba + done;
            let local = at - slot.start;
            let n = (slot.sectors - local).min(count - done);
            if n > 0 {
                f(slot, local, n, done)?;
            }
            done += n;
            i += 1;
        }
        Ok(())
    }

    /// Give the image a new CID the first time it is written in this session.
    fn touch_cid(&self) -> Result<()> {
        if self.cid_updated.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let mut guard = lock(&self.descriptor);
        let Some(desc) = guard.as_mut() else {
            return Ok(());
        };
        let old = self.cid();
        let new = crate::create::new_cid_other_than(old);
        desc.set_cid(new);
        write_descriptor(&self.home, desc)?;
        self.cid.store(new, Ordering::Release);
        Ok(())
    }

    /// Refuse writing when an extent's space map has conflicts (entries pointing past the end
    /// of their file or onto other structures): the first one, naming the extent file.
    pub(crate) fn refuse_writes_if_conflicted(&self) -> Result<()> {
        for slot in &self.extents {
            if let Extent::Sparse(s) = &slot.extent {
                s.refuse_writes_if_conflicted()
                    .map_err(|e| e.with_file(std::path::Path::new(&slot.name)))?;
            }
        }
        Ok(())
    }

    /// Refuse a write into `slot` before anything (the CID) is changed.
    fn check_writable(&self, slot: &ExtentSlot) -> Result<()> {
        if slot.access != Access::ReadWrite {
            return Err(Error::new(
                ErrorKind::ReadOnly,
                format!("extent '{}' is {}", slot.name, slot.access.as_str()),
            ));
        }
        match &slot.extent {
            Extent::Zero => Err(Error::unsupported("cannot write to a ZERO extent")),
            Extent::Sparse(s) if self.stream.is_none() && s.compressed() => Err(Error::unsupported(
                "random writes into an existing streamOptimized image are not supported \
                 (convert it to monolithicSparse first)",
            )),
            Extent::Sparse(s) if self.stream.is_none() && !s.supports_writes() => Err(Error::unsupported(
                "writing to COWD (vmfsSparse) and seSparse extents is not supported",
            )),
            _ => Ok(()),
        }
    }
}

impl Drop for VmdkLayer {
    /// Pending grain table entries are written, and a stream-optimized session is finalised,
    /// when the image is dropped without a flush (a later command failed, the caller returned
    /// early): otherwise acknowledged writes would be lost (and an appended stream, which has
    /// replaced the empty directory and footer, unreadable). Errors cannot be reported here;
    /// `flush` reports them.
    fn drop(&mut self) {
        // Grain table entries of completed writes still waiting for a flush.
        for slot in &self.extents {
            if let Extent::Sparse(s) = &slot.extent
                && s.flush_pending().is_ok()
            {
                let _ = s.storage.flush();
            }
        }
        if let (Some(w), Some(slot)) = (&self.stream, self.extents.first())
            && let Extent::Sparse(s) = &slot.extent
            && w.finish(s).is_ok()
        {
            let _ = s.storage.flush();
        }
    }
}

/// Byte offset of extent sector `local` in a flat extent file whose data starts at `offset`
/// (the opener checked that the extent's end fits; a damaged value is an error, never a wrap).
fn flat_at(offset: u64, local: u64) -> Result<u64> {
    local
        .checked_mul(SECTOR)
        .and_then(|l| l.checked_add(offset))
        .ok_or_else(|| Error::corrupt("flat extent offset overflows").in_structure("descriptor"))
}

/// Whether `below` reads as zeros from `lba` (past its end it does), and for how many sectors
/// (at least 1, at most `count`) that stays so.
fn below_zero_run(below: &dyn Disk, lba: u64, count: u64) -> Result<(bool, u64)> {
    let end = below.sector_count();
    if lba >= end {
        return Ok((true, count));
    }
    let st = below.block_status(lba, count.min(end - lba))?;
    let zero = matches!(st.allocation, Allocation::Zero | Allocation::Unallocated);
    Ok((zero, st.sectors.clamp(1, count)))
}

/// Write `desc` back where it came from.
pub(crate) fn write_descriptor(home: &DescriptorHome, desc: &Descriptor) -> Result<()> {
    let text = desc.render_checked()?.into_bytes();
    match home {
        DescriptorHome::Embedded { storage, offset, size } => {
            if text.len() as u64 > *size {
                return Err(Error::unsupported(
                    "the descriptor no longer fits its space in the extent",
                ));
            }
            let mut buf = text;
            buf.resize(*size as usize, 0);
            storage
                .write_at(&buf, *offset)
                .io_context("writing the descriptor", *offset)
        }
        DescriptorHome::File { storage } => {
            storage.write_at(&text, 0).io_context("writing the descriptor", 0)?;
            storage
                .set_len(text.len() as u64)
                .io_context("writing the descriptor", 0)
        }
        DescriptorHome::None => Ok(()),
    }
}

impl Layer for VmdkLayer {
    fn format(&self) -> Format {
        Format::Vmdk
    }
    fn sector_size(&self) -> u32 {
        SECTOR as u32
    }
    fn virtual_size(&self) -> u64 {
        self.sectors * SECTOR
    }
    fn is_read_only(&self) -> bool {
        self.read_only
    }
    fn disk_id(&self) -> Option<uuid::Uuid> {
        self.disk_uuid
    }

    fn map(&self, lba: u64, count: u64) -> Result<Run> {
        let (file, slot, local) = self.slot_at(lba)?;
        let n = (slot.sectors - local).min(count);
        let (mapping, sectors) = match &slot.extent {
            Extent::Zero => (Mapping::Zero, n),
            Extent::Flat { offset, file_len, .. } => {
                let at = flat_at(*offset, local)?;
                // Whole sectors inside the file map to it; a partial last one reads zero-padded.
                match file_len.saturating_sub(at) / SECTOR {
                    0 => (Mapping::Special, n),
                    inside => (Mapping::Data { file, offset: at }, inside.min(n)),
                }
            }
            Extent::Sparse(_) if self.stream.is_some() => (Mapping::Special, n),
            Extent::Sparse(s) => {
                let (loc, run) = s.run(local, n)?;
                let mapping = match loc {
                    GrainLoc::Data(offset) => Mapping::Data { file, offset },
                    GrainLoc::Zero => Mapping::Zero,
                    GrainLoc::Unallocated => Mapping::Unallocated,
                    GrainLoc::Compressed(_) => Mapping::Special,
                };
                (mapping, run.clamp(1, n))
            }
        };
        Ok(Run { sectors, mapping })
    }

    fn map_for_write(&self, lba: u64, count: u64) -> Result<WriteRun<'_>> {
        if self.read_only {
            return Err(Error::read_only());
        }
        let (file, slot, local) = self.slot_at(lba)?;
        self.check_writable(slot)?;
        self.touch_cid()?;
        let n = (slot.sectors - local).min(count);
        match &slot.extent {
            Extent::Zero => Err(Error::unsupported("cannot write to a ZERO extent")),
            Extent::Flat { offset, .. } => Ok(WriteRun {
                sectors: n,
                target: WriteTarget::Host {
                    file,
                    offset: flat_at(*offset, local)?,
                },
                completion: Completion::none(),
            }),
            Extent::Sparse(_) if self.stream.is_some() => Ok(WriteRun::engine(n)),
            Extent::Sparse(s) => s.map_write(local, n, lba, file),
        }
    }

    fn host_file(&self, file: usize) -> Option<&Arc<dyn Storage>> {
        match &self.extents.get(file)?.extent {
            Extent::Flat { storage, .. } => Some(storage),
            Extent::Sparse(s) => Some(&s.storage),
            Extent::Zero => None,
        }
    }

    fn read_special(&self, lba: u64, buf: &mut [u8], below: &dyn Disk) -> Result<()> {
        let count = buf.len() as u64 / SECTOR;
        self.pieces(lba, count, |slot, local, n, done| {
            let piece = &mut buf[(done * SECTOR) as usize..((done + n) * SECTOR) as usize];
            match &slot.extent {
                Extent::Zero => piece.fill(0),
                Extent::Flat {
                    storage,
                    offset,
                    file_len,
                } => {
                    let at = flat_at(*offset, local)?;
                    let inside = file_len.saturating_sub(at).min(piece.len() as u64) as usize;
                    let (head, tail) = piece.split_at_mut(inside);
                    storage.read_at(head, at).io_context("reading a flat extent", at)?;
                    tail.fill(0);
                }
                Extent::Sparse(s) => match &self.stream {
                    Some(w) => w.read(s, local, piece, lba + done, below)?,
                    None => s.read(local, piece, lba + done, below)?,
                },
            }
            Ok(())
        })
    }

    fn write_special(&self, lba: u64, buf: &[u8], _below: &dyn Disk) -> Result<()> {
        let count = buf.len() as u64 / SECTOR;
        self.pieces(lba, count, |slot, local, n, done| {
            let piece = &buf[(done * SECTOR) as usize..((done + n) * SECTOR) as usize];
            match (&slot.extent, &self.stream) {
                (Extent::Sparse(s), Some(w)) => w.write(s, local, piece),
                _ => Err(Error::unsupported(
                    "only streamOptimized extents are written by the engine",
                )),
            }
        })
    }

    fn write_zeroes(&self, lba: u64, count: u64, below: &dyn Disk) -> Result<()> {
        if self.stream.is_some() {
            // Zero grains are never stored in a stream: writing zero buffers costs nothing.
            return write_zero_data(self, lba, count, below);
        }
        // Discarding already guarantees zeros (never the parent's data), without storing any.
        self.discard(lba, count, below)
    }

    fn discard(&self, lba: u64, count: u64, below: &dyn Disk) -> Result<()> {
        if self.read_only {
            return Err(Error::read_only());
        }
        if self.stream.is_some() {
            return Err(Error::unsupported("discard is not supported on streamOptimized images"));
        }
        self.pieces(lba, count, |slot, _, _, _| match slot.extent {
            Extent::Zero => Ok(()),
            _ => self.check_writable(slot),
        })?;
        self.touch_cid()?;
        let standalone = self.parent.is_none();
        self.pieces(lba, count, |slot, local, n, done| match &slot.extent {
            Extent::Zero => Ok(()),
            Extent::Flat { storage, offset, .. } => {
                let at = flat_at(*offset, local)?;
                storage.punch_hole(at, n * SECTOR).io_context("discarding", at)
            }
            Extent::Sparse(s) => {
                if self.stream.is_some() || s.compressed() {
                    return Err(Error::unsupported("discard is not supported on streamOptimized images"));
                }
                let g0 = local.div_ceil(s.grain);
                // The last grain of an extent counts as whole: nothing lies past the capacity.
                let end = local + n;
                let g1 = if end >= s.capacity {
                    end.div_ceil(s.grain)
                } else {
                    end / s.grain
                };
                let zeros_in = |from: u64, to: u64| -> Result<()> {
                    if to <= from {
                        return Ok(());
                    }
                    write_zero_data(self, lba + done + (from - local), to - from, below)
                };
                if g1 > g0 && (standalone || s.has_zero_gte()) {
                    zeros_in(local, g0 * s.grain)?;
                    s.unmap_grains(g0, g1 - g0, s.has_zero_gte())?;
                    zeros_in(g1 * s.grain, local + n)
                } else {
                    // Write zeros, allocating only where something else would show through.
                    let mut at = local;
                    while at < local + n {
                        let (loc, run) = s.run(at, local + n - at)?;
                        let run = run.clamp(1, local + n - at);
                        match loc {
                            GrainLoc::Data(_) | GrainLoc::Compressed(_) => zeros_in(at, at + run)?,
                            GrainLoc::Zero => {}
                            // Only where the parent would show something other than zeros.
                            GrainLoc::Unallocated if !standalone => {
                                let mut p = at;
                                while p < at + run {
                                    let (zero, k) = below_zero_run(below, lba + done + (p - local), at + run - p)?;
                                    if !zero {
                                        zeros_in(p, p + k)?;
                                    }
                                    p += k;
                                }
                            }
                            GrainLoc::Unallocated => {}
                        }
                        at += run;
                    }
                    Ok(())
                }
            }
        })
    }

    fn flush(&self) -> Result<()> {
        if let (Some(w), Some(slot)) = (&self.stream, self.extents.first())
            && let Extent::Sparse(s) = &slot.extent
        {
            w.finish(s)?;
        }
        for slot in &self.extents {
            match &slot.extent {
                Extent::Flat { storage, .. } => storage.flush().io_context("flushing an extent", 0)?,
                Extent::Sparse(s) => {
                    s.flush_pending()?;
                    s.storage.flush().io_context("flushing an extent", 0)?;
                }
                Extent::Zero => {}
            }
        }
        if let DescriptorHome::File { storage } = &self.home {
            storage.flush().io_context("flushing the descriptor", 0)?;
        }
        Ok(())
    }

    fn block_status(&self, lba: u64, count: u64) -> Result<BlockStatus> {
        let (_, slot, local) = self.slot_at(lba)?;
        let n = (slot.sectors - local).min(count).max(1);
        Ok(match &slot.extent {
            Extent::Zero => BlockStatus::new(n, Allocation::Zero),
            Extent::Flat {
                storage,
                offset,
                file_len,
            } => {
                // Holes in the host file (and the part past its end) read as zeros.
                let at = flat_at(*offset, local)?;
                // A final partial sector holds data too (read with zero padding).
                let inside = file_len.saturating_sub(at);
                if inside == 0 {
                    BlockStatus::new(n, Allocation::Zero)
                } else {
                    let (data, bytes) = storage
                        .allocation(at, inside.min(n.saturating_mul(SECTOR)))
                        .io_context("querying holes", at)?;
                    if data {
                        BlockStatus::data_at(bytes.div_ceil(SECTOR).clamp(1, n), at)
                    } else if bytes >= SECTOR {
                        // A hole still lies at its own place in the flat file.
                        BlockStatus {
                            offset: Some(at),
                            ..BlockStatus::new((bytes / SECTOR).min(n), Allocation::Zero)
                        }
                    } else {
                        BlockStatus::data_at(1, at)
                    }
                }
            }
            Extent::Sparse(s) => {
                if let Some(w) = &self.stream
                    && let Some(st) = w.block_status(s, local, n)
                {
                    return Ok(st);
                }
                let (loc, run) = s.run(local, n)?;
                let run = run.clamp(1, n);
                match loc {
                    GrainLoc::Data(o) => BlockStatus::data_at(run, o),
                    GrainLoc::Zero => BlockStatus::new(run, Allocation::Zero),
                    GrainLoc::Unallocated => BlockStatus::new(run, Allocation::Unallocated),
                    GrainLoc::Compressed(_) => {
                        let mut m = run;
                        while m < n {
                            let (l, r) = s.run(local + m, n - m)?;
                            if !matches!(l, GrainLoc::Compressed(_)) {
                                break;
                            }
                            m += r.max(1);
                        }
                        BlockStatus::compressed(m.min(n))
                    }
                }
            }
        })
    }

    fn parent(&self) -> Option<&ParentRef> {
        self.parent.as_ref()
    }

    /// A child without a `parentCID`, or with the wildcard `ffffffff`, accepts any parent:
    /// the caller must opt in before such a chain is opened.
    fn parent_identity_recorded(&self) -> bool {
        self.parent.is_none() || self.parent_cid.is_some_and(|c| c != NO_PARENT_CID)
    }

    fn verify_parent(&self, parent: &dyn Layer) -> Result<()> {
        let (Some(p), Some(want)) = (parent.as_any().downcast_ref::<VmdkLayer>(), self.parent_cid) else {
            return Ok(());
        };
        if want != NO_PARENT_CID && p.cid() != want {
            return Err(Error::new(
                ErrorKind::ParentMismatch,
                format!(
                    "parentCID {want:08x} does not match the parent's CID {:08x} (the parent was modified after the child was made)",
                    p.cid()
                ),
            ));
        }
        Ok(())
    }

    fn info(&self) -> LayerInfo {
        let mut info = LayerInfo::new(Format::Vmdk, self.virtual_size());
        info.cluster_size = self.extents.iter().find_map(|s| match &s.extent {
            Extent::Sparse(x) => Some(x.grain_bytes()),
            _ => None,
        });
        if let Some(p) = &self.parent {
            info.backing_filename = Some(p.display.clone());
            info.backing_format = Some(Format::Vmdk);
        }
        let extents = self
            .extents
            .iter()
            .map(|s| {
                let mut m: Vec<(String, InfoValue)> = vec![
                    ("filename".into(), s.name.clone().into()),
                    ("format".into(), s.kind.as_str().into()),
                    ("virtual-size".into(), (s.sectors * SECTOR).into()),
                ];
                if let Extent::Sparse(x) = &s.extent {
                    m.push(("cluster-size".into(), x.grain_bytes().into()));
                    m.push(("compressed".into(), x.compressed().into()));
                }
                InfoValue::Map(m)
            })
            .collect();
        info.specific = vec![
            ("cid".into(), u64::from(self.cid()).into()),
            (
                "parent-cid".into(),
                u64::from(self.parent_cid.unwrap_or(NO_PARENT_CID)).into(),
            ),
            ("create-type".into(), self.create_type.clone().into()),
            ("extents".into(), InfoValue::List(extents)),
        ];
        info
    }

    fn check(&self, repair: Repair) -> Result<CheckReport> {
        if repair != Repair::None && self.read_only {
            return Err(Error::read_only());
        }
        let mut report = CheckReport::default();
        let mut allocated = 0u64;
        let mut total = 0u64;
        for slot in &self.extents {
            if let Extent::Sparse(s) = &slot.extent {
                let r = &mut report;
                let n = s.check(
                    &slot.name,
                    repair,
                    !self.read_only && self.stream.is_none(),
                    &mut r.corruptions,
                    &mut r.leaks,
                    &mut r.repaired,
                )?;
                allocated = allocated.saturating_add(n);
                total = total.saturating_add(s.capacity.div_ceil(s.grain));
            }
        }
        if total > 0 {
            report.allocated_clusters = Some(allocated);
            report.total_clusters = Some(total);
        }
        Ok(report)
    }

    fn resize(self: Box<Self>, new_size: u64, files: &dyn disk_core::FileCreator) -> Result<()> {
        self.resize_in_place(new_size, files)?;
        self.flush()
    }

    fn max_virtual_size(&self) -> Option<u64> {
        self.size_limit()
    }

    fn set_parent(self: Box<Self>, parent: Option<&disk_core::NewParent<'_>>) -> Result<()> {
        self.set_parent_in_place(parent)?;
        self.flush()
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
