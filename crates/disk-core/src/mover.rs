//! The I/O core: moves guest data between caller buffers and host files as the engines'
//! mappings ([`crate::mapping`]) say, for every format. No engine lock is held while data moves;
//! only a [`Pin`] on layers that have an [`IoGate`](crate::mapping::IoGate).

use crate::disk::Disk;
use crate::error::{Error, IoResultExt, Result};
use crate::layer::Layer;
use crate::mapping::{Fill, Mapping, Pin, WriteTarget};
use crate::storage::Storage;
use std::sync::Arc;

/// Host file `file` of `layer`, or an error naming the engine's inconsistent answer.
fn host(layer: &dyn Layer, file: usize) -> Result<&Arc<dyn Storage>> {
    layer
        .host_file(file)
        .ok_or_else(|| Error::corrupt(format!("the image maps data to file {file}, which it does not have")))
}

/// Read `buf` (whole sectors from `lba`, range already validated) from `layer`, taking what the
/// layer does not hold from `below`.
pub fn read_layer(layer: &dyn Layer, lba: u64, buf: &mut [u8], below: &dyn Disk) -> Result<()> {
    let ss = layer.sector_size() as usize;
    let total = (buf.len() / ss) as u64;
    let mut done = 0u64;
    while done < total {
        let at = lba + done;
        let pin = Pin::of(layer.io_gate());
        let run = layer.map(at, total - done)?;
        let n = run.sectors.clamp(1, total - done);
        let piece = &mut buf[(done as usize) * ss..((done + n) as usize) * ss];
        match run.mapping {
            Mapping::Data { file, offset } => host(layer, file)?
                .read_at(piece, offset)
                .io_context("reading data", offset)?,
            Mapping::Zero => piece.fill(0),
            Mapping::Unallocated => {
                drop(pin);
                below.read(at, piece)?;
            }
            Mapping::Special => layer.read_special(at, piece, below)?,
        }
        done += n;
    }
    Ok(())
}

/// Write `buf` (whole sectors from `lba`, range validated, layer writable) to `layer`: for each
/// run the engine maps (allocating where needed), write the data, then complete the mapping so
/// the engine publishes its metadata. A failed data write abandons the run's reservation.
pub fn write_layer(layer: &dyn Layer, lba: u64, buf: &[u8], below: &dyn Disk) -> Result<()> {
    let ss = layer.sector_size() as usize;
    let total = (buf.len() / ss) as u64;
    let mut done = 0u64;
    let mut unit_buf = Vec::new();
    while done < total {
        let at = lba + done;
        let _pin = Pin::of(layer.io_gate());
        let rest = &buf[(done as usize) * ss..];
        if is_zero(&rest[..ss]) {
            // Zeros where the layer already reads zeros need no write (and no allocation).
            let run = layer.map(at, total - done)?;
            let n = run.sectors.clamp(1, total - done);
            if run.mapping == Mapping::Zero && is_zero(&rest[..n as usize * ss]) {
                done += n;
                continue;
            }
        }
        let run = layer.map_for_write(at, total - done)?;
        let n = run.sectors.clamp(1, total - done);
        let piece = &buf[(done as usize) * ss..((done + n) as usize) * ss];
        match run.target {
            WriteTarget::Host { file, offset } => host(layer, file)?
                .write_at(piece, offset)
                .io_context("writing data", offset)?,
            WriteTarget::Unit {
                file,
                offset,
                lba: unit_lba,
                sectors,
                fill,
            } => {
                let end = unit_lba.checked_add(sectors);
                if at < unit_lba || end.is_none_or(|e| at + n > e) {
                    return Err(Error::corrupt(format!(
                        "the image mapped sectors {at}+{n} into a unit {unit_lba}+{sectors} that does not hold them"
                    )));
                }
                unit_buf.clear();
                unit_buf.resize(sectors as usize * ss, 0);
                if fill == Fill::Below {
                    let inside = below.sector_count().saturating_sub(unit_lba).min(sectors);
                    if inside > 0 {
                        below.read(unit_lba, &mut unit_buf[..inside as usize * ss])?;
                    }
                }
                let from = (at - unit_lba) as usize * ss;
                unit_buf[from..from + piece.len()].copy_from_slice(piece);
                host(layer, file)?
                    .write_at(&unit_buf, offset)
                    .io_context("writing a new unit", offset)?;
            }
            WriteTarget::Engine => layer.write_special(at, piece, below)?,
        }
        run.completion.complete()?;
        done += n;
    }
    Ok(())
}

/// Whether every byte is zero (compared 16 bytes at a time, which the compiler vectorises).
pub fn is_zero(buf: &[u8]) -> bool {
    let (blocks, tail) = buf.as_chunks::<16>();
    blocks.iter().all(|b| *b == [0u8; 16]) && tail.iter().all(|&b| b == 0)
}

/// Write zeros over `count` sectors from `lba` of `layer` through [`write_layer`], for engines
/// that store zeros as data.
pub fn write_zero_data(layer: &dyn Layer, lba: u64, count: u64, below: &dyn Disk) -> Result<()> {
    crate::disk::for_zero_chunks(layer.sector_size(), lba, count, |pos, zeros| {
        write_layer(layer, pos, zeros, below)
    })
}

/// Most writes [`write_scattered`] keeps in flight at once.
const SCATTERED_QUEUE: usize = 8;

/// Write metadata pieces `(offset, bytes)` to `storage`: sorted, neighbours merged into one
/// write, and the resulting writes issued from up to eight threads at once (a flush after many
/// scattered allocations touches many tables; a device serves them in parallel). `what` names
/// the structure in errors. The caller orders this against flushes: nothing here flushes.
pub fn write_scattered(storage: &dyn Storage, mut writes: Vec<(u64, Vec<u8>)>, what: &str) -> Result<()> {
    writes.sort_by_key(|&(at, _)| at);
    let mut runs: Vec<(u64, Vec<u8>)> = Vec::new();
    for (at, bytes) in writes {
        match runs.last_mut() {
            Some((start, buf)) if *start + buf.len() as u64 == at => buf.extend_from_slice(&bytes),
            _ => runs.push((at, bytes)),
        }
    }
    let write = |(at, bytes): &(u64, Vec<u8>)| storage.write_at(bytes, *at).io_context(what, *at);
    if runs.len() < 2 {
        return runs.iter().try_for_each(write);
    }
    let per = runs.len().div_ceil(SCATTERED_QUEUE);
    std::thread::scope(|scope| {
        let handles: Vec<_> = runs
            .chunks(per)
            .map(|chunk| scope.spawn(move || chunk.iter().try_for_each(write)))
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
    })
}
