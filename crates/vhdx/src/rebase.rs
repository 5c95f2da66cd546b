//! Recording a new parent (`rebase -u`): the parent locator item is rewritten through the log,
//! together with its metadata table entry, so a crash leaves the old locator or the new one.

use crate::create::{ParentInfo, parent_locator};
use crate::format::*;
use crate::layer::VhdxLayer;
use crate::write::Txn;
use disk_core::sync::lock;
use disk_core::{Error, IoResultExt, NewParent, Result};
use zerocopy::{FromBytes, IntoBytes};

impl VhdxLayer {
    /// Point this differencing image at `parent` (see the module docs). The handle is stale
    /// afterwards: reopen the image.
    pub(crate) fn set_parent_in_place(&self, parent: Option<&NewParent<'_>>) -> Result<()> {
        self.check_writable()?;
        let Some(parent) = parent else {
            return Err(Error::unsupported(
                "a VHDX child cannot be made standalone by changing its parent reference alone; convert it instead",
            ));
        };
        if !self.meta.has_parent {
            return Err(Error::unsupported("only a differencing VHDX records a parent"));
        }
        let Some(p) = parent.layer.as_any().downcast_ref::<VhdxLayer>() else {
            return Err(Error::invalid_argument("the parent of a VHDX must be a VHDX"));
        };
        if p.meta.logical_sector_size != self.meta.logical_sector_size {
            return Err(Error::invalid_argument(
                "the parent's logical sector size differs from the child's",
            ));
        }
        let item = parent_locator(&ParentInfo::new(
            p.data_write_guid(),
            parent.recorded,
            parent.absolute,
            parent.child,
        ));
        let region = self.regions.metadata;
        let mut table = vec![0u8; METADATA_TABLE_SIZE];
        self.file
            .read_at(&mut table, region.offset)
            .io_context("reading the metadata table", region.offset)?;
        let bad = || Error::corrupt("metadata table changed under us").in_structure("metadata");
        let (hdr, rest) = MetadataTableHeader::read_from_prefix(&table).map_err(|_| bad())?;
        let (entries, _) = <[MetadataTableEntry]>::ref_from_prefix_with_elems(rest, usize::from(hdr.entry_count.get()))
            .map_err(|_| bad())?;
        let index = entries
            .iter()
            .position(|e| e.item_id == ITEM_PARENT_LOCATOR)
            .ok_or_else(bad)?;
        let old = &entries[index];
        let new_len = item.len() as u64;
        let offset = if new_len <= u64::from(old.length.get()) {
            u64::from(old.offset.get())
        } else {
            let end = entries
                .iter()
                .map(|e| u64::from(e.offset.get()) + u64::from(e.length.get()))
                .max()
                .unwrap_or(METADATA_TABLE_SIZE as u64);
            end.div_ceil(8) * 8
        };
        if offset + new_len > region.length.min(16 * MIB) {
            return Err(Error::unsupported(
                "no room left in the metadata region for a new parent locator",
            ));
        }
        let mut txn = Txn::default();
        txn.patches.push((region.offset + offset, item));
        // Both fit in u32: the item lies inside the first 16 MiB of the region (checked above).
        let mut entry = *old;
        entry.offset.set(offset as u32);
        entry.length.set(new_len as u32);
        let entry_at = size_of::<MetadataTableHeader>() + index * size_of::<MetadataTableEntry>();
        txn.patches
            .push((region.offset + entry_at as u64, entry.as_bytes().to_vec()));
        let mut st = lock(&self.state);
        if !st.session_started {
            // The guest-visible data stays the same: a new FileWriteGuid only, so that children
            // of this image keep matching its DataWriteGuid.
            let guid = disk_core::guid::MsGuid::from_uuid(disk_core::guid::new_uuid());
            self.update_header(&mut st, |h| h.file_write_guid = guid)?;
            self.update_header(&mut st, |_| {})?;
        }
        self.commit(&mut st, txn)?;
        if !st.header.log_guid.is_nil() {
            self.update_header(&mut st, |h| h.log_guid = disk_core::guid::MsGuid::NIL)?;
        }
        Ok(())
    }
}
