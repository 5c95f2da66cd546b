//! Helpers shared by the facade's integration tests.

use sha2::{Digest, Sha256};
use vdisk::Disk;

const MIB: u64 = 1 << 20;

/// sha256 over every non-zero 1 MiB chunk, each preceded by its index (8 bytes LE): the
/// manifest's `content_digest` (see ../shared/tools/content-digest).
pub fn content_digest(disk: &dyn Disk) -> vdisk::Result<String> {
    let size = disk.virtual_size();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; MIB as usize];
    let ss = u64::from(disk.sector_size());
    let mut pos = 0u64;
    while pos < size {
        let len = MIB.min(size - pos);
        // Skip chunks that are entirely unallocated or zero according to block status.
        let st = disk.block_status(pos / ss, len.div_ceil(ss))?;
        if st.allocation != vdisk::Allocation::Data && st.sectors * ss >= len {
            pos += len;
            continue;
        }
        let chunk = &mut buf[..len as usize];
        vdisk::bytes::read_bytes(disk, pos, chunk)?;
        if chunk.iter().any(|&b| b != 0) {
            hasher.update((pos / MIB).to_le_bytes());
            hasher.update(&*chunk);
        }
        pos += len;
    }
    Ok(format!("{:x}", hasher.finalize()))
}
