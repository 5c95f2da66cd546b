//! A toy allocating format, to show that the suite catches the bugs it is meant to catch.
//!
//! Layout: sector 0 holds a header (`TOYDISK\0`, virtual size, block size), sectors 1..8 a table
//! of little-endian `u64` block offsets (0 = unallocated), data blocks are appended from 4 KiB
//! on. A correct engine writes a new block, flushes, then writes the table sector (VHD's order).
//! Each [`Bug`] breaks one rule.

use crate::disk::{Allocation, BlockStatus, Disk};
use crate::error::{Error, IoResultExt, Result};
use crate::image::Image;
use crate::layer::{Layer, LayerInfo};
use crate::mapping::{Mapping, Run, WriteRun};
use crate::probe::Format;
use crate::storage::Storage;
use crate::testing::conformance::{Capabilities, ImageFactory};
use std::any::Any;
use std::sync::{Arc, Mutex};

const MAGIC: &[u8; 8] = b"TOYDISK\0";
const BLOCK: u64 = 64 << 10;
const SECTOR: u64 = 512;
const DATA_START: u64 = 4096;

/// What the toy engine gets wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bug {
    /// Nothing.
    None,
    /// No flush between a new block's data and its table entry.
    NoFlushBeforeTable,
    /// Discard and write_zeroes do nothing.
    IgnoresDiscard,
    /// Errors of data writes are dropped.
    SwallowsWriteErrors,
}

struct Toy {
    storage: Arc<dyn Storage>,
    size: u64,
    writable: bool,
    bug: Bug,
    state: Mutex<(Vec<u64>, u64)>,
}

impl Toy {
    fn open(storage: Arc<dyn Storage>, writable: bool, bug: Bug) -> Result<Toy> {
        let mut head = [0u8; 24];
        storage.read_at(&mut head, 0).io_context("reading the header", 0)?;
        if &head[..8] != MAGIC {
            return Err(Error::corrupt("bad magic"));
        }
        let size = u64::from_le_bytes(head[8..16].try_into().expect("8"));
        let blocks = size.div_ceil(BLOCK);
        let len = storage.len().io_context("size", 0)?;
        let mut raw = vec![0u8; (blocks * 8) as usize];
        storage
            .read_at(&mut raw, SECTOR)
            .io_context("reading the table", SECTOR)?;
        let table: Vec<u64> = raw
            .chunks(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8")))
            .collect();
        if let Some(bad) = table.iter().find(|&&o| o != 0 && (o < DATA_START || o + BLOCK > len)) {
            return Err(Error::corrupt(format!(
                "table entry {bad} points outside the file of {len} bytes"
            )));
        }
        let next = len.max(DATA_START).div_ceil(SECTOR) * SECTOR;
        Ok(Toy {
            storage,
            size,
            writable,
            bug,
            state: Mutex::new((table, next)),
        })
    }

    fn write_entry(&self, table: &[u64], index: usize) -> Result<()> {
        let first = index / 64 * 64;
        let mut sector = vec![0u8; SECTOR as usize];
        for (i, e) in table[first..table.len().min(first + 64)].iter().enumerate() {
            sector[i * 8..i * 8 + 8].copy_from_slice(&e.to_le_bytes());
        }
        let at = SECTOR + (first as u64 / 64) * SECTOR;
        self.storage.write_at(&sector, at).io_context("writing the table", at)
    }

    fn data_write(&self, buf: &[u8], at: u64) -> Result<()> {
        let r = self.storage.write_at(buf, at).io_context("writing data", at);
        if self.bug == Bug::SwallowsWriteErrors {
            Ok(())
        } else {
            r
        }
    }
}

impl Layer for Toy {
    fn format(&self) -> Format {
        Format::Raw
    }
    fn sector_size(&self) -> u32 {
        SECTOR as u32
    }
    fn virtual_size(&self) -> u64 {
        self.size
    }
    fn is_read_only(&self) -> bool {
        !self.writable
    }
    fn map(&self, lba: u64, max: u64) -> Result<Run> {
        let state = self.state.lock().expect("lock");
        let (block, within) = ((lba * SECTOR) / BLOCK, (lba * SECTOR) % BLOCK);
        let sectors = ((BLOCK - within) / SECTOR).min(max);
        Ok(match state.0[block as usize] {
            0 => Run {
                sectors,
                mapping: Mapping::Unallocated,
            },
            o => Run {
                sectors,
                mapping: Mapping::data(o + within),
            },
        })
    }
    fn map_for_write(&self, _lba: u64, count: u64) -> Result<WriteRun<'_>> {
        // The toy writes (with its deliberate bugs) on its own.
        Ok(WriteRun::engine(count))
    }
    fn host_file(&self, file: usize) -> Option<&Arc<dyn Storage>> {
        (file == 0).then_some(&self.storage)
    }
    fn write_special(&self, lba: u64, buf: &[u8], _below: &dyn Disk) -> Result<()> {
        let mut state = self.state.lock().expect("lock");
        let mut done = 0usize;
        while done < buf.len() {
            let pos = lba * SECTOR + done as u64;
            let (block, within) = ((pos / BLOCK) as usize, pos % BLOCK);
            let n = ((BLOCK - within) as usize).min(buf.len() - done);
            let piece = &buf[done..done + n];
            match state.0[block] {
                0 => {
                    let offset = state.1;
                    state.1 += BLOCK;
                    let mut data = vec![0u8; BLOCK as usize];
                    data[within as usize..within as usize + n].copy_from_slice(piece);
                    self.data_write(&data, offset)?;
                    if self.bug != Bug::NoFlushBeforeTable {
                        self.storage.flush().io_context("flushing", 0)?;
                    }
                    let mut table = state.0.clone();
                    table[block] = offset;
                    self.write_entry(&table, block)?;
                    state.0 = table;
                }
                o => self.data_write(piece, o + within)?,
            }
            done += n;
        }
        Ok(())
    }
    fn write_zeroes(&self, lba: u64, count: u64, below: &dyn Disk) -> Result<()> {
        self.discard(lba, count, below)
    }
    fn discard(&self, lba: u64, count: u64, _below: &dyn Disk) -> Result<()> {
        if self.bug == Bug::IgnoresDiscard {
            return Ok(());
        }
        let mut state = self.state.lock().expect("lock");
        let (start, end) = (lba * SECTOR, (lba + count) * SECTOR);
        let mut pos = start;
        while pos < end {
            let (block, within) = ((pos / BLOCK) as usize, pos % BLOCK);
            let n = (BLOCK - within).min(end - pos);
            let o = state.0[block];
            if o != 0 && n == BLOCK {
                let mut table = state.0.clone();
                table[block] = 0;
                self.write_entry(&table, block)?;
                state.0 = table;
            } else if o != 0 {
                self.storage
                    .write_at(&vec![0u8; n as usize], o + within)
                    .io_context("zeroing", o + within)?;
            }
            pos += n;
        }
        Ok(())
    }
    fn flush(&self) -> Result<()> {
        self.storage.flush().io_context("flushing", 0)
    }
    fn block_status(&self, lba: u64, count: u64) -> Result<BlockStatus> {
        let state = self.state.lock().expect("lock");
        let (block, within) = ((lba * SECTOR) / BLOCK, (lba * SECTOR) % BLOCK);
        let sectors = ((BLOCK - within) / SECTOR).min(count);
        Ok(match state.0[block as usize] {
            0 => BlockStatus::new(sectors, Allocation::Unallocated),
            o => BlockStatus::data_at(sectors, o + within),
        })
    }
    fn info(&self) -> LayerInfo {
        LayerInfo::new(Format::Raw, self.size)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Creates and opens toy images with a given bug.
pub(crate) struct ToyFactory(pub(crate) Bug);

impl ImageFactory for ToyFactory {
    fn name(&self) -> String {
        format!("toy ({:?})", self.0)
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            discard_frees_space: true,
            granularity: BLOCK,
            ..Capabilities::default()
        }
    }
    fn create(&self, storage: Arc<dyn Storage>, size: u64) -> Result<()> {
        assert!(size.div_ceil(BLOCK) * 8 <= DATA_START - SECTOR);
        let mut head = vec![0u8; DATA_START as usize];
        head[..8].copy_from_slice(MAGIC);
        head[8..16].copy_from_slice(&size.to_le_bytes());
        storage.write_at(&head, 0).io_context("creating", 0)?;
        storage.flush().io_context("flushing", 0)
    }
    fn open(&self, storage: Arc<dyn Storage>, writable: bool) -> Result<Image> {
        Ok(Image::single(Box::new(Toy::open(storage, writable, self.0)?), None))
    }
}
