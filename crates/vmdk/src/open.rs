//! Opening a VMDK: the sparse/COWD/seSparse headers, the descriptor and every extent.

#![warn(clippy::arithmetic_side_effects)]

use crate::descriptor::{Access, Descriptor, ExtentType, MAX_DESCRIPTOR_BYTES, looks_like_descriptor};
use crate::format::{
    self, CowdHeader, SECTOR, SeSparseConstHeader, SeSparseVolatileHeader, SparseExtentHeader, StreamFooter,
};
use crate::layer::{DescriptorHome, Extent, ExtentSlot, VmdkLayer};
use crate::sparse::{Flavor, Layout, MIN_KDMV_GRAIN_SECTORS, SparseExtent, check_layout, newline_ok, read_directory};
use disk_core::{Error, ErrorKind, FileKind, IoResultExt, OpenContext, Result, SpaceKind, Storage};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use zerocopy::FromBytes;

fn read_struct<T: FromBytes>(storage: &dyn Storage, offset: u64, what: &'static str) -> Result<T> {
    let mut buf = vec![0u8; size_of::<T>()];
    storage
        .read_at(&mut buf, offset)
        .io_context("reading a header", offset)
        .map_err(|e| e.in_structure(what))?;
    T::read_from_bytes(&buf).map_err(|_| Error::corrupt("short header").in_structure(what))
}

fn file_len(storage: &dyn Storage) -> Result<u64> {
    storage.len().io_context("reading the file size", 0)
}

/// The kinds of sparse extent file, told apart by the magic their header starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SparseKind {
    /// A hosted sparse extent ([`SparseExtentHeader`], `KDMV`).
    Kdmv,
    /// An ESX vmfsSparse extent ([`CowdHeader`], `COWD`).
    Cowd,
    /// An ESX seSparse extent ([`SeSparseConstHeader`]).
    SeSparse,
}

impl SparseKind {
    /// The kind of sparse extent a file starting with `head` is (`None`: not a sparse extent).
    pub(crate) fn of(head: &[u8]) -> Option<SparseKind> {
        if head.starts_with(&format::SPARSE_MAGIC.to_le_bytes()) {
            Some(SparseKind::Kdmv)
        } else if head.starts_with(&format::COWD_MAGIC.to_le_bytes()) {
            Some(SparseKind::Cowd)
        } else if head.starts_with(&format::SESPARSE_MAGIC.to_le_bytes()) {
            Some(SparseKind::SeSparse)
        } else {
            None
        }
    }
}

/// A sparse extent file's extent and, for KDMV, the embedded descriptor bytes.
pub(crate) struct OpenedSparse {
    pub extent: SparseExtent,
    pub descriptor: Option<(Vec<u8>, u64, u64)>,
}

/// Open a KDMV, COWD or seSparse extent from `storage`, for writing if `writable`, and map its
/// space (see [`SparseExtent::map_on_open`]).
pub(crate) fn open_sparse(storage: Arc<dyn Storage>, writable: bool) -> Result<OpenedSparse> {
    let opened = open_sparse_layout(storage)?;
    opened.extent.map_on_open(writable)?;
    Ok(opened)
}

/// Open a KDMV, COWD or seSparse extent from `storage`, its space not mapped yet.
fn open_sparse_layout(storage: Arc<dyn Storage>) -> Result<OpenedSparse> {
    let len = file_len(&*storage)?;
    if len < SECTOR {
        return Err(Error::corrupt(format!("sparse extent of {len} bytes is truncated")));
    }
    let mut magic = [0u8; 8];
    storage.read_at(&mut magic, 0).io_context("reading the magic", 0)?;
    match SparseKind::of(&magic) {
        Some(SparseKind::Kdmv) => open_kdmv(storage, len),
        Some(SparseKind::Cowd) => open_cowd(storage, len),
        Some(SparseKind::SeSparse) => open_sesparse(storage, len),
        None => Err(Error::corrupt(
            "extent is not a sparse VMDK extent (no KDMV, COWD or seSparse magic)",
        )),
    }
}

fn open_kdmv(storage: Arc<dyn Storage>, len: u64) -> Result<OpenedSparse> {
    let header: SparseExtentHeader = read_struct(&*storage, 0, "sparse extent header")?;
    let version = header.version.get();
    if !(1..=3).contains(&version) {
        return Err(Error::unsupported(format!("sparse extent version {version}")).in_structure("sparse extent header"));
    }
    let mut h = header;
    let mut reserved = vec![(0, SECTOR, SpaceKind::Header)];
    if h.gd_offset.get() == format::GD_AT_END {
        const FOOTER_LEN: u64 = size_of::<StreamFooter>() as u64;
        if len < FOOTER_LEN + SECTOR {
            return Err(Error::corrupt("stream-optimized extent is too short for a footer").in_structure("footer"));
        }
        let at = len.saturating_sub(FOOTER_LEN);
        let footer: StreamFooter = read_struct(&*storage, at, "footer")?;
        if footer.footer_marker.marker_type.get() != format::MARKER_FOOTER
            || footer.footer.magic_number.get() != format::SPARSE_MAGIC
            || footer.eos_marker.marker_type.get() != format::MARKER_EOS
        {
            return Err(
                Error::corrupt("grain directory is at the end but no valid footer is there")
                    .in_structure("footer")
                    .at_offset(at),
            );
        }
        h = footer.footer;
        reserved.push((at, FOOTER_LEN, SpaceKind::Footer));
        if h.gd_offset.get() == format::GD_AT_END {
            return Err(Error::corrupt("footer has no grain directory offset").in_structure("footer"));
        }
    }
    let flags = h.flags.get();
    if flags & format::FLAG_VALID_NEWLINE_TEST != 0 && !newline_ok(&h) {
        return Err(
            Error::corrupt("newline check bytes are damaged (file transferred in text mode?)")
                .in_structure("sparse extent header"),
        );
    }
    let compressed = flags & format::FLAG_COMPRESSED != 0;
    if compressed && h.compress_algorithm.get() != format::COMPRESSION_DEFLATE {
        return Err(Error::unsupported(format!(
            "compression algorithm {}",
            h.compress_algorithm.get()
        )));
    }
    let capacity = h.capacity.get();
    let grain = h.grain_size.get();
    let gtes = u64::from(h.num_gtes_per_gt.get());
    if grain < MIN_KDMV_GRAIN_SECTORS {
        return Err(Error::corrupt(format!(
            "grain size of {grain} sectors is below the {MIN_KDMV_GRAIN_SECTORS} sectors (4 KiB) VMware's specification requires"
        ))
        .in_structure("sparse extent header"));
    }
    let gd_count = check_layout(capacity, grain, gtes, "sparse extent header")?;
    let to_bytes = |s: u64, what: &'static str| {
        s.checked_mul(SECTOR)
            .ok_or_else(|| Error::corrupt(format!("{what} offset overflows")).in_structure("sparse extent header"))
    };
    let gd_offset = to_bytes(h.gd_offset.get(), "grain directory")?;
    let gd = read_directory(&*storage, gd_offset, gd_count, 4, len, "grain directory")?;
    let rgd = if flags & format::FLAG_REDUNDANT_GD != 0 && h.rgd_offset.get() != 0 {
        let o = to_bytes(h.rgd_offset.get(), "redundant grain directory")?;
        Some((
            read_directory(&*storage, o, gd_count, 4, len, "redundant grain directory")?,
            o,
        ))
    } else {
        None
    };
    let descriptor = if header.descriptor_offset.get() != 0 && header.descriptor_size.get() != 0 {
        let off = to_bytes(header.descriptor_offset.get(), "descriptor")?;
        let size = header
            .descriptor_size
            .get()
            .checked_mul(SECTOR)
            .filter(|&s| s <= MAX_DESCRIPTOR_BYTES)
            .ok_or_else(|| Error::corrupt("embedded descriptor is too large").in_structure("descriptor"))?;
        let avail = len.saturating_sub(off).min(size);
        let mut buf = vec![0u8; avail as usize];
        storage
            .read_at(&mut buf, off)
            .io_context("reading the descriptor", off)?;
        reserved.push((off, size, SpaceKind::Descriptor));
        Some((buf, off, size))
    } else {
        None
    };
    let layout = Layout {
        flavor: Flavor::Kdmv {
            compressed,
            markers: flags & format::FLAG_MARKERS != 0,
            zero_gte: flags & format::FLAG_ZEROED_GRAIN_GTE != 0,
        },
        capacity,
        grain,
        gtes,
        entry_size: 4,
        gd,
        gd_offset,
        rgd,
        reserved,
        data_start: h.over_head.get().saturating_mul(SECTOR),
    };
    Ok(OpenedSparse {
        extent: SparseExtent::new(storage, layout, len),
        descriptor,
    })
}

fn open_cowd(storage: Arc<dyn Storage>, len: u64) -> Result<OpenedSparse> {
    let h: CowdHeader = read_struct(&*storage, 0, "COWD header")?;
    let capacity = u64::from(h.num_sectors.get());
    let grain = u64::from(h.grain_size.get());
    let gtes = u64::from(format::COWD_GTES_PER_GT);
    let needed = check_layout(capacity, grain, gtes, "COWD header")?;
    let count = u64::from(h.num_gd_entries.get());
    if count < needed {
        return Err(Error::corrupt(format!(
            "COWD grain directory has {count} entries, {needed} needed"
        )));
    }
    let gd_offset = u64::from(h.gd_offset.get()) * SECTOR;
    let gd = read_directory(&*storage, gd_offset, count, 4, len, "grain directory")?;
    let layout = Layout {
        flavor: Flavor::Cowd,
        capacity,
        grain,
        gtes,
        entry_size: 4,
        gd,
        gd_offset,
        rgd: None,
        reserved: vec![(0, SECTOR, SpaceKind::Header)],
        data_start: 0,
    };
    Ok(OpenedSparse {
        extent: SparseExtent::new(storage, layout, len),
        descriptor: None,
    })
}

fn open_sesparse(storage: Arc<dyn Storage>, len: u64) -> Result<OpenedSparse> {
    let h: SeSparseConstHeader = read_struct(&*storage, 0, "seSparse header")?;
    let bad = |why: String| Error::corrupt(why).in_structure("seSparse header");
    if h.version.get() != 0x0000_0002_0000_0001 {
        return Err(Error::unsupported(format!("seSparse version {:#x}", h.version.get())));
    }
    if h.grain_size.get() != 8 || h.grain_table_size.get() != 64 || h.flags.get() != 0 {
        return Err(bad(format!(
            "unexpected grain size {}, grain table size {} or flags {:#x}",
            h.grain_size.get(),
            h.grain_table_size.get(),
            h.flags.get()
        )));
    }
    let vol_off = h
        .volatile_header_offset
        .get()
        .checked_mul(SECTOR)
        .ok_or_else(|| bad("volatile header offset overflows".into()))?;
    let v: SeSparseVolatileHeader = read_struct(&*storage, vol_off, "seSparse volatile header")?;
    if v.magic.get() != format::SESPARSE_VOLATILE_MAGIC {
        return Err(bad("bad volatile header magic".into()));
    }
    if v.replay_journal.get() != 0 {
        return Err(Error::unsupported("seSparse journal replay is not supported"));
    }
    let capacity = h.capacity.get();
    let gtes = 64 * SECTOR / 8;
    let needed = check_layout(capacity, 8, gtes, "seSparse header")?;
    let count = h
        .grain_dir_size
        .get()
        .checked_mul(SECTOR / 8)
        .ok_or_else(|| bad("grain directory size overflows".into()))?;
    if count < needed {
        return Err(bad(format!("grain directory has {count} entries, {needed} needed")));
    }
    let gd_offset = h
        .grain_dir_offset
        .get()
        .checked_mul(SECTOR)
        .ok_or_else(|| bad("grain directory offset overflows".into()))?;
    let gd = read_directory(&*storage, gd_offset, needed, 8, len, "grain directory")?;
    let layout = Layout {
        flavor: Flavor::SeSparse {
            gt_base: h.grain_tables_offset.get(),
            grains_base: h.grains_offset.get(),
        },
        capacity,
        grain: 8,
        gtes,
        entry_size: 8,
        gd,
        gd_offset,
        rgd: None,
        reserved: vec![(0, SECTOR, SpaceKind::Header)],
        data_start: 0,
    };
    Ok(OpenedSparse {
        extent: SparseExtent::new(storage, layout, len),
        descriptor: None,
    })
}

/// Parse an embedded descriptor: like QEMU, one without a `CID` is refused (a truncated or
/// half-written image).
fn embedded_descriptor(bytes: &[u8]) -> Result<Descriptor> {
    let d = Descriptor::parse(bytes)?;
    if d.cid()?.is_none() {
        return Err(
            Error::corrupt("embedded descriptor has no CID (damaged or incomplete image)").in_structure("descriptor"),
        );
    }
    Ok(d)
}

/// Open one VMDK image (one layer) from `storage`.
pub(crate) fn open_layer(storage: Arc<dyn Storage>, ctx: &OpenContext<'_>) -> Result<VmdkLayer> {
    let len = file_len(&*storage)?;
    let mut magic = [0u8; 8];
    let n = len.min(8) as usize;
    storage.read_at(&mut magic[..n], 0).io_context("reading the magic", 0)?;
    // A file shorter than the magic reads as zero-padded (and is then refused as truncated).
    if SparseKind::of(&magic).is_some() {
        let opened = open_sparse(storage.clone(), ctx.writable)?;
        let capacity = opened.extent.capacity;
        let (descriptor, home) = match &opened.descriptor {
            Some((bytes, off, size)) => (
                Some(embedded_descriptor(bytes)?),
                DescriptorHome::Embedded {
                    storage: storage.clone(),
                    offset: *off,
                    size: *size,
                },
            ),
            None => (None, DescriptorHome::None),
        };
        let create_type = match (&descriptor, &opened.extent.flavor) {
            (Some(d), _) if d.create_type().is_some() => d.create_type().unwrap_or_default().to_string(),
            (_, Flavor::Kdmv { compressed: true, .. }) => "streamOptimized".into(),
            (_, Flavor::Kdmv { .. }) => "monolithicSparse".into(),
            (_, Flavor::Cowd) => "vmfsSparse".into(),
            (_, Flavor::SeSparse { .. }) => "seSparse".into(),
        };
        let name = ctx
            .path
            .and_then(|p| p.file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let slot = ExtentSlot {
            start: 0,
            sectors: capacity,
            access: Access::ReadWrite,
            kind: ExtentType::Sparse,
            name,
            extent: Extent::Sparse(Box::new(opened.extent)),
        };
        let layer = VmdkLayer::new(descriptor, home, create_type, vec![slot], ctx.writable)?;
        return refuse_conflicted_writes(layer, ctx);
    }
    if len > MAX_DESCRIPTOR_BYTES {
        return Err(Error::new(
            ErrorKind::UnknownFormat,
            "not a VMDK: no sparse magic, and too large for a descriptor",
        ));
    }
    let mut text = vec![0u8; len as usize];
    storage.read_at(&mut text, 0).io_context("reading the descriptor", 0)?;
    if !looks_like_descriptor(&text) {
        return Err(Error::new(
            ErrorKind::UnknownFormat,
            "not a VMDK: no sparse magic and no text descriptor",
        ));
    }
    let descriptor = Descriptor::parse(&text)?;
    let create_type = descriptor
        .create_type()
        .ok_or_else(|| Error::corrupt("descriptor has no createType").in_structure("descriptor"))?
        .to_string();
    let mut slots = Vec::new();
    let mut start = 0u64;
    // Each file is opened once, whatever the number of lines naming it; a table-based extent
    // file may back only one extent (two would allocate grains over each other).
    let mut flat_files: HashMap<String, (Arc<dyn Storage>, std::path::PathBuf, u64)> = HashMap::new();
    let mut sparse_files: HashSet<std::path::PathBuf> = HashSet::new();
    // The byte ranges flat extents take in their files: two that overlap alias guest sectors
    // (a write to one changes the other), which a writable open refuses.
    let mut flat_ranges: Vec<(std::path::PathBuf, u64, u64, usize)> = Vec::new();
    // An extent that is the descriptor file itself would let guest writes rewrite the
    // descriptor (a new parent, new extents).
    let me = ctx.path.map(|p| p.canonicalize().unwrap_or_else(|_| p.to_path_buf()));
    let not_me = |name: &str, path: &std::path::Path| -> Result<()> {
        if me.as_deref() == Some(path) {
            return Err(
                Error::corrupt(format!("extent '{name}' is the descriptor file itself")).in_structure("descriptor")
            );
        }
        Ok(())
    };
    for line in descriptor.extents() {
        let extent = match line.kind {
            ExtentType::Zero => Extent::Zero,
            ExtentType::Flat | ExtentType::Vmfs | ExtentType::VmfsRaw => {
                let name = line.file.as_deref().unwrap_or_default();
                let (storage, path, flen) = match flat_files.get(name) {
                    Some(known) => known.clone(),
                    None => {
                        let opened = ctx.open_external(name, FileKind::Extent)?;
                        not_me(name, &opened.path)?;
                        if sparse_files.contains(&opened.path) {
                            return Err(Error::corrupt(format!(
                                "extent file '{name}' is named by a sparse extent and a flat one"
                            ))
                            .in_structure("descriptor"));
                        }
                        let flen = file_len(&*opened.storage).map_err(|e| e.with_file(&opened.path))?;
                        let entry = (opened.storage, opened.path, flen);
                        flat_files.insert(name.to_string(), entry.clone());
                        entry
                    }
                };
                let offset = line
                    .offset
                    .checked_mul(SECTOR)
                    .filter(|o| {
                        line.sectors
                            .checked_mul(SECTOR)
                            .and_then(|l| l.checked_add(*o))
                            .is_some()
                    })
                    .ok_or_else(|| {
                        Error::corrupt(format!(
                            "flat extent '{name}' at sector {} of {} sectors ends past 2^64 bytes",
                            line.offset, line.sectors
                        ))
                        .in_structure("descriptor")
                    })?;
                let end = offset.saturating_add(line.sectors.saturating_mul(SECTOR));
                let index = slots.len();
                if ctx.writable
                    && let Some(&(_, _, _, other)) = flat_ranges
                        .iter()
                        .find(|(p, from, to, _)| *p == path && *from < end && offset < *to)
                {
                    return Err(Error::corrupt(format!(
                        "flat extents {other} and {index} take overlapping bytes of '{name}': a write to one \
                         would change the other"
                    ))
                    .in_structure("descriptor"));
                }
                flat_ranges.push((path, offset, end, index));
                Extent::Flat {
                    storage,
                    offset,
                    file_len: flen,
                }
            }
            _ => {
                let name = line.file.as_deref().unwrap_or_default();
                let opened = ctx.open_external(name, FileKind::Extent)?;
                not_me(name, &opened.path)?;
                if flat_files.values().any(|(_, p, _)| *p == opened.path) || !sparse_files.insert(opened.path.clone()) {
                    return Err(Error::corrupt(format!(
                        "extent file '{name}' is named by more than one extent, and it is not a flat file"
                    ))
                    .in_structure("descriptor"));
                }
                let what = |e: Error| e.with_file(&opened.path);
                Extent::Sparse(Box::new(
                    open_sparse(opened.storage.clone(), ctx.writable).map_err(what)?.extent,
                ))
            }
        };
        let end = start
            .checked_add(line.sectors)
            .filter(|e| e.checked_mul(SECTOR).is_some())
            .ok_or_else(|| Error::corrupt("extents add up to more than 2^64 bytes").in_structure("descriptor"))?;
        slots.push(ExtentSlot {
            start,
            sectors: line.sectors,
            access: line.access,
            kind: line.kind,
            name: line.file.clone().unwrap_or_default(),
            extent,
        });
        start = end;
    }
    if slots.is_empty() {
        return Err(Error::corrupt("descriptor lists no extents").in_structure("descriptor"));
    }
    let layer = VmdkLayer::new(
        Some(descriptor),
        DescriptorHome::File { storage },
        create_type,
        slots,
        ctx.writable,
    )?;
    refuse_conflicted_writes(layer, ctx)
}

/// A writable open of an image whose space map has conflicts is refused (unless the caller is
/// repairing it): a write could land on metadata or on other data.
fn refuse_conflicted_writes(layer: VmdkLayer, ctx: &OpenContext<'_>) -> Result<VmdkLayer> {
    if ctx.writable && !ctx.repair {
        layer.refuse_writes_if_conflicted()?;
    }
    Ok(layer)
}
