//! The bodies of the fuzz targets in `fuzz/`, shared with a stable-toolchain test
//! (`tests/fuzz_corpus.rs`) that replays the committed corpus, so a regression input fails
//! `cargo test` without nightly or cargo-fuzz.
//!
//! Every target must return normally for every input: errors are fine, panics (including the
//! contract checks below) are bugs.

use crate::{Allocation, Disk, Format, Image, MemStorage, OpenOptions, Repair, Storage, open_storage, probe};
use std::sync::Arc;

/// Inputs longer than this are ignored (a fuzzer gains nothing from them).
pub const MAX_INPUT: usize = 16 << 20;

/// At most this many bytes of the virtual disk are read per opened image.
pub const MAX_READ: u64 = 64 << 20;

/// At most this many `block_status` runs are visited per opened image.
const MAX_RUNS: u32 = 4096;

/// The largest single read.
const MAX_CHUNK: u64 = 1 << 20;

/// A fuzz target: takes the raw input bytes.
pub type Target = fn(&[u8]);

/// Every target by its name, which is also its directory under `fuzz/corpus/`.
pub fn targets() -> &'static [(&'static str, Target)] {
    &[("probe_open", probe_open), ("vmdk_descriptor", vmdk_descriptor)]
}

/// Treat `data` as an image held in memory (its length the limit, so nothing can grow it):
/// probe it, then open it read-only (probed, and as each format in turn) with the default
/// resolver, which refuses every parent and extent file. For each image that opens: `info`,
/// `check`, and a walk over the disk by `block_status`, reading data runs in bounded chunks
/// (at most [`MAX_READ`] bytes, `MAX_RUNS` runs) and the first sector of the other runs. Then a
/// writable copy gets a few writes, which must read back after a flush and a reopen.
pub fn probe_open(data: &[u8]) {
    if data.len() > MAX_INPUT {
        return;
    }
    let storage = MemStorage::with_limit(data.len() as u64);
    if storage.write_at(data, 0).is_err() {
        return;
    }
    let storage: Arc<dyn Storage> = Arc::new(storage);
    let _ = probe(&*storage, None);
    for format in std::iter::once(None).chain(Format::ALL.into_iter().map(Some)) {
        let options = OpenOptions::new().format(format);
        if let Ok(image) = open_storage(storage.clone(), None, &options) {
            exercise(&image);
        }
    }
    write_a_few(data);
}

/// How much a writable copy may grow while a few sectors are written (new blocks, logs).
const WRITE_GROWTH: u64 = 64 << 20;

/// Open a writable copy of `data` (probed), write a pattern to the first, a middle and the last
/// sector, flush, reopen read-only and check that whatever was accepted reads back: a hostile
/// image may refuse writes, never corrupt what it accepted or panic.
fn write_a_few(data: &[u8]) {
    let storage = MemStorage::with_limit(data.len() as u64 + WRITE_GROWTH);
    if storage.write_at(data, 0).is_err() {
        return;
    }
    let storage: Arc<dyn Storage> = Arc::new(storage);
    let Ok(image) = open_storage(storage.clone(), None, &OpenOptions::new().writable(true)) else {
        return;
    };
    let n = image.sector_count();
    let ss = image.sector_size() as usize;
    let mut written = Vec::new();
    for (i, lba) in [0, n / 2, n.saturating_sub(1)].into_iter().enumerate() {
        if lba >= n || written.iter().any(|&(l, _)| l == lba) {
            continue;
        }
        let pattern = 0xa0 + i as u8;
        if image.write(lba, &vec![pattern; ss]).is_ok() {
            written.push((lba, pattern));
        }
    }
    if image.flush().is_err() {
        return;
    }
    drop(image);
    let Ok(image) = open_storage(storage, None, &OpenOptions::new()) else {
        panic!("an image that accepted writes and a flush no longer opens");
    };
    let mut buf = vec![0u8; ss];
    for (lba, pattern) in written {
        // A raw file of odd length keeps its length: only the part inside it holds data.
        let inside = image.virtual_size().saturating_sub(lba * ss as u64).min(ss as u64) as usize;
        if image.read(lba, &mut buf).is_ok() {
            assert!(
                buf[..inside].iter().all(|&b| b == pattern),
                "sector {lba} does not read back what was written"
            );
        }
    }
}

/// Read through an opened image within the budgets, checking the [`Disk`] contract.
fn exercise(image: &Image) {
    let _ = image.info();
    for (layer, _) in image.layers() {
        let _ = layer.info();
        let _ = layer.check(Repair::None);
    }
    let ss = u64::from(image.sector_size());
    assert!(ss == 512 || ss == 4096, "sector size {ss}");
    assert!(image.is_read_only(), "opened read-only but writable");
    let n = image.sector_count();
    let mut one = vec![0u8; ss as usize];
    assert!(image.read(n, &mut one).is_err(), "read past the end succeeded");
    assert!(image.block_status(n, 1).is_err(), "block_status past the end succeeded");
    if n > 0 {
        let _ = image.read(n - 1, &mut one);
    }

    let mut budget = MAX_READ;
    let mut buf = Vec::new();
    let mut lba = 0u64;
    for _ in 0..MAX_RUNS {
        if lba >= n || budget < ss {
            break;
        }
        let Ok(st) = image.block_status(lba, n - lba) else {
            break;
        };
        assert!(
            st.sectors >= 1 && st.sectors <= n - lba,
            "block_status({lba}, {}) returned a run of {} sectors",
            n - lba,
            st.sectors
        );
        let data = st.allocation == Allocation::Data;
        let sectors = if data {
            st.sectors.min(MAX_CHUNK / ss).min(budget / ss)
        } else {
            1
        };
        buf.resize((sectors * ss) as usize, 0);
        if image.read(lba, &mut buf).is_ok() && !data {
            assert!(
                buf.iter().all(|&b| b == 0),
                "sector {lba} is {:?} by block_status but does not read as zeros",
                st.allocation
            );
        }
        budget -= sectors * ss;
        lba += if data { sectors } else { st.sectors };
    }
}

/// Parse `data` as a VMDK text descriptor; whatever parses must render to text that parses
/// back to the same entries and extents (the writer keeps what the reader understood).
pub fn vmdk_descriptor(data: &[u8]) {
    if data.len() > MAX_INPUT {
        return;
    }
    let Ok(parsed) = crate::vmdk::descriptor::Descriptor::parse(data) else {
        return;
    };
    let text = parsed.render();
    let again = crate::vmdk::descriptor::Descriptor::parse(text.as_bytes())
        .unwrap_or_else(|e| panic!("a rendered descriptor does not parse: {e}\n{text}"));
    assert!(
        parsed.entries().eq(again.entries()),
        "entries changed by a render/parse round trip"
    );
    assert_eq!(
        parsed.extents(),
        again.extents(),
        "extents changed by a render/parse round trip"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_inputs_do_not_panic() {
        for input in [&b""[..], b"\0", b"vhdxfile", b"KDMV", b"conectix", &[0xffu8; 4096][..]] {
            probe_open(input);
        }
    }
}
