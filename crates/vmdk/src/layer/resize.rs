//! Resizing a VMDK and changing its parent: extents grow, shrink or are added, then the
//! descriptor is rewritten.
//!
//! - monolithicSparse: the extent header is the switch (see the sparse extent's resize); the
//!   embedded descriptor's extent line follows, writing only the sectors that change.
//! - monolithicFlat: the flat file grows first (its new part cleared), then the descriptor.
//! - twoGbMaxExtent*: the last extent grows up to 2 GiB, new extent files follow, then the
//!   descriptor; shrinking drops trailing extents from the descriptor (their files stay).
//! - streamOptimized, COWD, seSparse, ZERO and ESX extents: refused.
//!
//! A descriptor is rewritten in one write, padded with blank lines to its old length: an
//! embedded descriptor that fits one sector (as single-extent descriptors do) switches
//! atomically; a descriptor file should be changed through a copy renamed over it, as
//! `vdisk::resize` and `vdisk::rebase` do.

use super::{DescriptorHome, Extent, VmdkLayer};
use crate::create::{MAX_SIZE, SPLIT_SECTORS, write_sparse};
use crate::descriptor::{Access, Descriptor, ExtentLine, ExtentType, NO_PARENT_CID};
use crate::format::SECTOR;
use disk_core::sync::lock;
use disk_core::{Error, FileCreator, IoResultExt, NewParent, Result};

/// Write `desc` where it lives, as one write no shorter than `old_len` bytes (blank lines pad it),
/// and for an embedded descriptor only the sectors that change.
fn rewrite_descriptor(home: &DescriptorHome, desc: &Descriptor, old_len: usize) -> Result<()> {
    let mut text = desc.render_checked()?.into_bytes();
    if text.len() < old_len {
        text.resize(old_len, b'\n');
    }
    match home {
        DescriptorHome::Embedded { storage, offset, size } => {
            if text.len() as u64 > *size {
                return Err(Error::unsupported(
                    "the descriptor no longer fits its space in the extent",
                ));
            }
            let mut old = vec![0u8; *size as usize];
            storage
                .read_at(&mut old, *offset)
                .io_context("reading the descriptor", *offset)?;
            let mut new = text;
            new.resize(*size as usize, 0);
            let ss = SECTOR as usize;
            let first = (0..new.len() / ss).find(|&i| new[i * ss..(i + 1) * ss] != old[i * ss..(i + 1) * ss]);
            let last = (0..new.len() / ss).rfind(|&i| new[i * ss..(i + 1) * ss] != old[i * ss..(i + 1) * ss]);
            if let (Some(a), Some(b)) = (first, last) {
                let at = offset + (a * ss) as u64;
                storage
                    .write_at(&new[a * ss..(b + 1) * ss], at)
                    .io_context("writing the descriptor", at)?;
            }
            storage.flush().io_context("flushing the descriptor", 0)
        }
        DescriptorHome::File { storage } => {
            storage.write_at(&text, 0).io_context("writing the descriptor", 0)?;
            storage.flush().io_context("flushing the descriptor", 0)
        }
        DescriptorHome::None => Err(Error::unsupported(
            "this VMDK has no descriptor to record the change in",
        )),
    }
}

impl VmdkLayer {
    /// The largest virtual size: 2 TiB for sparse extents (32-bit grain table entries), 2^63
    /// bytes otherwise.
    pub(crate) fn size_limit(&self) -> Option<u64> {
        let sparse = self.extents.iter().any(|s| matches!(s.extent, Extent::Sparse(_)));
        Some(if sparse { MAX_SIZE } else { 1 << 63 })
    }

    fn refuse_resize(&self) -> Result<()> {
        if self.read_only {
            return Err(Error::read_only());
        }
        if self.stream.is_some() || self.create_type == "streamOptimized" {
            return Err(Error::unsupported(
                "streamOptimized VMDK images cannot be resized (convert to monolithicSparse, resize, convert back)",
            ));
        }
        for slot in &self.extents {
            let ok = match &slot.extent {
                Extent::Sparse(s) => s.supports_writes(),
                Extent::Flat { .. } => slot.kind == ExtentType::Flat,
                Extent::Zero => false,
            };
            if !ok || slot.access != Access::ReadWrite {
                return Err(Error::unsupported(format!(
                    "extent '{}' ({}, {}) cannot be resized",
                    slot.name,
                    slot.kind.as_str(),
                    slot.access.as_str()
                )));
            }
        }
        Ok(())
    }

    /// Resize (see the module docs).
    pub(crate) fn resize_in_place(&self, new_size: u64, files: &dyn FileCreator) -> Result<()> {
        self.refuse_resize()?;
        if new_size == 0 || !new_size.is_multiple_of(SECTOR) {
            return Err(Error::invalid_argument(format!(
                "a VMDK cannot be {new_size} bytes: the size must be a positive number of 512-byte sectors"
            )));
        }
        if self.size_limit().is_some_and(|max| new_size > max) {
            return Err(Error::invalid_argument("sparse VMDK images are limited to 2 TiB"));
        }
        let new_sectors = new_size / SECTOR;
        if new_sectors == self.sectors {
            return Ok(());
        }
        let mut guard = lock(&self.descriptor);
        let Some(desc) = guard.as_mut() else {
            return Err(Error::unsupported(
                "this VMDK has no descriptor to record the new size in",
            ));
        };
        // Refused before anything changes if the rewritten descriptor would not say the same.
        desc.check_rewritable()?;
        let old_len = desc.render().len();
        let mut lines: Vec<ExtentLine> = desc.extents().into_iter().cloned().collect();
        if lines.len() != self.extents.len() {
            return Err(Error::unsupported("the descriptor's extents do not match the image"));
        }
        let split = self.create_type.starts_with("twoGbMaxExtent");
        let embedded = matches!(self.home, DescriptorHome::Embedded { .. });
        if embedded {
            let Extent::Sparse(s) = &self.extents[0].extent else {
                return Err(Error::unsupported("embedded descriptor without a sparse extent"));
            };
            s.resize(new_sectors)?;
            lines[0].sectors = new_sectors;
        } else if new_sectors > self.sectors {
            self.grow_extents(&mut lines, new_sectors, split, files)?;
        } else {
            // The descriptor drops the sectors first; extents shrink after it.
            let mut left = new_sectors;
            let mut keep = 0;
            for line in &mut lines {
                if left == 0 {
                    break;
                }
                line.sectors = line.sectors.min(left);
                left -= line.sectors;
                keep += 1;
            }
            lines.truncate(keep);
        }
        desc.set_extents(&lines);
        let heads: u64 = desc
            .get("ddb.geometry.heads")
            .and_then(|h| h.parse().ok())
            .unwrap_or(16);
        if heads > 0 && desc.get("ddb.geometry.cylinders").is_some() {
            desc.set(
                "ddb.geometry.cylinders",
                &(new_sectors / (heads * 63)).min(65535).to_string(),
            );
        }
        rewrite_descriptor(&self.home, desc, old_len)?;
        if !embedded && new_sectors < self.sectors {
            // Sparse extents that got smaller record it in their header too.
            for (slot, line) in self.extents.iter().zip(&lines) {
                if let Extent::Sparse(s) = &slot.extent
                    && line.sectors < s.capacity
                {
                    s.resize(line.sectors)?;
                }
            }
        }
        Ok(())
    }

    /// Grow the last extent (up to 2 GiB when `split`) and add new ones; flushed.
    fn grow_extents(
        &self,
        lines: &mut Vec<ExtentLine>,
        new_sectors: u64,
        split: bool,
        files: &dyn FileCreator,
    ) -> Result<()> {
        let mut extra = new_sectors - self.sectors;
        let last = self.extents.last().ok_or_else(|| Error::corrupt("no extents"))?;
        let line = lines.last_mut().ok_or_else(|| Error::corrupt("no extents"))?;
        let room = if split {
            SPLIT_SECTORS.saturating_sub(line.sectors)
        } else {
            extra
        };
        let add = room.min(extra);
        let zeroed = match &last.extent {
            Extent::Sparse(s) => s.has_zero_gte(),
            _ => false,
        };
        if add > 0 {
            let target = line.sectors + add;
            match &last.extent {
                Extent::Sparse(s) => {
                    if target != s.capacity {
                        s.resize(target)?;
                    }
                }
                Extent::Flat { storage, offset, .. } => {
                    let len = storage.len().io_context("reading the extent size", 0)?;
                    let from = offset + line.sectors * SECTOR;
                    let to = offset + target * SECTOR;
                    // Stale bytes past the old end (an earlier shrink) read as zeros from now on.
                    if len > from {
                        storage
                            .punch_hole(from, len.min(to) - from)
                            .io_context("clearing the extent's new space", from)?;
                    }
                    if len < to {
                        storage.set_len(to).io_context("extending a flat extent", to)?;
                    }
                    storage.flush().io_context("flushing a flat extent", 0)?;
                }
                Extent::Zero => return Err(Error::unsupported("cannot grow a ZERO extent")),
            }
            line.sectors = target;
            extra -= add;
        }
        let flat = matches!(last.extent, Extent::Flat { .. });
        let name = line.file.clone().unwrap_or_default();
        let stem = name
            .strip_suffix(".vmdk")
            .and_then(|n| n.rsplit_once('-'))
            .map(|(s, _)| s.to_string())
            .unwrap_or_else(|| name.trim_end_matches(".vmdk").to_string());
        let mut index = lines.len() + 1;
        while extra > 0 {
            let n = extra.min(SPLIT_SECTORS);
            let file = format!("{stem}-{}{index:03}.vmdk", if flat { 'f' } else { 's' });
            let storage = files.create_file(&file)?;
            if flat {
                storage.set_len(n * SECTOR).io_context("sizing a flat extent", 0)?;
            } else {
                write_sparse(&*storage, n, zeroed, None)?;
            }
            storage.flush().io_context("flushing a new extent", 0)?;
            lines.push(ExtentLine {
                access: Access::ReadWrite,
                sectors: n,
                kind: if flat { ExtentType::Flat } else { ExtentType::Sparse },
                file: Some(file),
                offset: 0,
            });
            extra -= n;
            index += 1;
        }
        Ok(())
    }

    /// Record a new parent (`rebase`): `parentFileNameHint` and `parentCID` (the parent's CID),
    /// or with `None` no parent at all. One descriptor write (see the module docs).
    pub(crate) fn set_parent_in_place(&self, parent: Option<&NewParent<'_>>) -> Result<()> {
        if self.read_only {
            return Err(Error::read_only());
        }
        let mut guard = lock(&self.descriptor);
        let Some(desc) = guard.as_mut() else {
            return Err(Error::unsupported("this VMDK has no descriptor to record a parent in"));
        };
        if self.create_type == "streamOptimized" {
            return Err(Error::unsupported("streamOptimized images cannot have a parent"));
        }
        let old_len = desc.render().len();
        // Changed on a copy: a descriptor that cannot be written leaves this handle as it was.
        let mut new = desc.clone();
        match parent {
            Some(p) => {
                let Some(vmdk) = p.layer.as_any().downcast_ref::<VmdkLayer>() else {
                    return Err(Error::unsupported(format!(
                        "the parent of a VMDK must be a VMDK, not {}",
                        p.layer.format()
                    )));
                };
                new.set("parentCID", &format!("{:08x}", vmdk.cid()));
                new.set("parentFileNameHint", p.recorded);
            }
            None => {
                new.set("parentCID", &format!("{NO_PARENT_CID:08x}"));
                new.remove("parentFileNameHint");
            }
        }
        rewrite_descriptor(&self.home, &new, old_len)?;
        *desc = new;
        Ok(())
    }
}
