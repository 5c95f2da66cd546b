//! An embedder that moves the payload bytes itself, asking vdisk only *where* they go.
//!
//! A hypervisor doing io_uring, `O_DIRECT` or DMA from guest memory does not want a library to
//! copy its data. vdisk's mapping API answers where guest sectors live in the host files, and the
//! embedder does the I/O (contract: the `disk_core::mapping` module docs):
//!
//! - [`Image::map_write`] resolves the next run of a write to a [`WriteTarget`], allocating a
//!   block or grain if needed, and hands over the host file ([`vdisk::Storage`]):
//!   - `Host { offset }`: write the data at `offset` (here with [`vdisk::Storage::write_at`],
//!     a `pwrite` on the host file);
//!   - `Unit { lba, sectors, fill, .. }`: a newly allocated unit (a VMDK grain) written whole,
//!     the sectors the write does not cover taken from [`Image::read_below`] (`Fill::Below`,
//!     copy-on-write over a parent) or zeros;
//!   - `Engine`: only the engine can write these sectors (a streamOptimized VMDK compresses
//!     them): drop the mapping and use [`Disk::write`].
//!
//!   After the data write, [`WriteMapping::complete`] publishes the metadata (BAT entry, sector
//!   bitmap, grain table entry). Dropping the mapping instead abandons the reservation.
//! - [`Image::map_read`] resolves the next run of a read, through the parents, to a
//!   [`ReadSource`]: `Host { storage, offset }` (read it there), `Zero`, or `Engine`
//!   (compressed data: read through [`Disk::read`]).
//! - A mapping pins the space it names while alive (no discard can move it), and it stays on
//!   the thread that made it: map, do the I/O, complete, in one place.
//! - Completed writes are visible at once and durable after [`Disk::flush`].
//!
//! The program copies a raw file into a new VHDX this way, leaving all-zero MiBs unallocated,
//! then reads the image back through mapped reads, compares with the raw file, and flushes:
//!
//! ```text
//! cargo run -p vdisk --example own_io                      # a generated raw file, in a temp dir
//! cargo run -p vdisk --example own_io -- disk.raw          # writes disk.vhdx beside it
//! cargo run -p vdisk --example own_io -- disk.raw out.vhdx
//! ```
//!
//! [`WriteMapping::complete`]: vdisk::disk_core::WriteMapping::complete
//! [`WriteTarget`]: vdisk::disk_core::mapping::WriteTarget
//! [`ReadSource`]: vdisk::disk_core::ReadSource

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use vdisk::disk_core::ReadSource;
use vdisk::disk_core::mapping::{Fill, WriteTarget};
use vdisk::{CreateOptions, Disk, Error, Format, Image, OpenOptions, Options};

/// How much of the raw file is copied per step.
const CHUNK: usize = 1 << 20;

/// What the mappings pointed at, counted per run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Stats {
    /// Write runs to an allocated or freshly reserved host range.
    host_writes: u64,
    /// Write runs to a new unit written whole (VMDK grains).
    unit_writes: u64,
    /// Of those, units whose other sectors came from the parent (copy-on-write).
    units_filled_from_below: u64,
    /// Write runs the engine did (streamOptimized VMDK).
    engine_writes: u64,
    /// Chunks not written because they hold only zeros.
    zero_chunks_skipped: u64,
    /// Read runs from a host file.
    host_reads: u64,
    /// Read runs that read as zeros.
    zero_reads: u64,
    /// Read runs the engine decoded.
    engine_reads: u64,
}

/// Write `data` (whole sectors) at `lba` through [`Image::map_write`], doing the data I/O here.
fn write_mapped(image: &Image, lba: u64, data: &[u8], stats: &mut Stats) -> vdisk::Result<()> {
    let ss = image.sector_size() as usize;
    let total = (data.len() / ss) as u64;
    let mut done = 0u64;
    while done < total {
        let at = lba + done;
        let mapping = image.map_write(at, total - done)?;
        let n = mapping.sectors.min(total - done);
        let piece = &data[done as usize * ss..(done + n) as usize * ss];
        let storage = mapping.storage.clone();
        match mapping.target {
            WriteTarget::Host { offset, .. } => {
                let storage = storage.expect("a host target comes with its file");
                storage
                    .write_at(piece, offset)
                    .map_err(|e| Error::io(e, "writing mapped data"))?;
                stats.host_writes += 1;
            }
            WriteTarget::Unit {
                offset,
                lba: unit_lba,
                sectors,
                fill,
                ..
            } => {
                // The whole unit: what lies below (or zeros), with our sectors in their place.
                let mut whole = vec![0u8; sectors as usize * ss];
                if fill == Fill::Below {
                    // A unit may reach past the end of the disk (a last, partial grain).
                    let inside = image.sector_count().saturating_sub(unit_lba).min(sectors) as usize;
                    image.read_below(unit_lba, &mut whole[..inside * ss])?;
                    stats.units_filled_from_below += 1;
                }
                let from = (at - unit_lba) as usize * ss;
                whole[from..from + piece.len()].copy_from_slice(piece);
                let storage = storage.expect("a unit target comes with its file");
                storage
                    .write_at(&whole, offset)
                    .map_err(|e| Error::io(e, "writing a mapped unit"))?;
                stats.unit_writes += 1;
            }
            WriteTarget::Engine => {
                // The mapping must be gone before the engine writes (it holds a pin).
                drop(mapping);
                image.write(at, piece)?;
                stats.engine_writes += 1;
                done += n;
                continue;
            }
        }
        // Data first, then the metadata that points at it.
        mapping.complete()?;
        done += n;
    }
    Ok(())
}

/// Fill `buf` (whole sectors) from `lba` through [`Image::map_read`], doing the data I/O here.
fn read_mapped(image: &Image, lba: u64, buf: &mut [u8], stats: &mut Stats) -> vdisk::Result<()> {
    let ss = image.sector_size() as usize;
    let total = (buf.len() / ss) as u64;
    let mut done = 0u64;
    while done < total {
        let mapping = image.map_read(lba + done, total - done)?;
        let n = mapping.sectors.min(total - done);
        let piece = &mut buf[done as usize * ss..(done + n) as usize * ss];
        match &mapping.source {
            ReadSource::Host { storage, offset, .. } => {
                storage
                    .read_at(piece, *offset)
                    .map_err(|e| Error::io(e, "reading mapped data"))?;
                stats.host_reads += 1;
            }
            ReadSource::Zero => {
                piece.fill(0);
                stats.zero_reads += 1;
            }
            ReadSource::Engine => {
                image.read(lba + done, piece)?;
                stats.engine_reads += 1;
            }
        }
        done += n;
    }
    Ok(())
}

/// Read up to `buf.len()` bytes from `file`; a short count only at the end of the file.
fn read_chunk(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Copy the raw file `raw` into a new image at `out` (`format`, `options`) with mapped writes,
/// flush it, and check every byte through mapped reads. The virtual size is the raw file's
/// length rounded up to whole sectors.
fn import(raw: &Path, out: &Path, format: Format, options: &str) -> Result<Stats, Box<dyn std::error::Error>> {
    let mut source = File::open(raw)?;
    let len = source.metadata()?.len();
    let mut create = CreateOptions::new(format, len.div_ceil(512) * 512);
    create.options = Options::parse(options)?;
    vdisk::create(out, &create)?;
    let image = vdisk::open(out, &OpenOptions::new().writable(true))?;
    let ss = image.sector_size() as usize;
    let mut stats = Stats::default();

    let mut chunk = vec![0u8; CHUNK];
    let mut lba = 0u64;
    loop {
        let n = read_chunk(&mut source, &mut chunk)?;
        if n == 0 {
            break;
        }
        // The last chunk is padded with zeros to a whole sector.
        let padded = n.div_ceil(ss) * ss;
        chunk[n..padded].fill(0);
        if chunk[..padded].iter().all(|&b| b == 0) {
            // A new image reads zeros there already: leave it unallocated.
            stats.zero_chunks_skipped += 1;
        } else {
            write_mapped(&image, lba, &chunk[..padded], &mut stats)?;
        }
        lba += (padded / ss) as u64;
    }
    // Completed writes are visible now; the flush makes them (and their metadata) durable.
    image.flush()?;

    // Read back through mapped reads and compare with the raw file.
    let mut source = File::open(raw)?;
    let mut expected = vec![0u8; CHUNK];
    let mut back = vec![0u8; CHUNK];
    let mut lba = 0u64;
    loop {
        let n = read_chunk(&mut source, &mut expected)?;
        if n == 0 {
            break;
        }
        let padded = n.div_ceil(ss) * ss;
        read_mapped(&image, lba, &mut back[..padded], &mut stats)?;
        if back[..n] != expected[..n] || back[n..padded].iter().any(|&b| b != 0) {
            return Err(format!("mapped read of sectors from {lba} differs from the raw file").into());
        }
        lba += (padded / ss) as u64;
    }
    Ok(stats)
}

/// A raw file of `len` bytes: patterned MiBs with all-zero MiBs between them.
fn sample_raw(path: &Path, len: usize) -> std::io::Result<()> {
    let data: Vec<u8> = (0..len)
        .map(|i| {
            if (i / CHUNK) % 3 == 1 {
                0
            } else {
                (i % 253) as u8 ^ (i / 4096) as u8 | 1
            }
        })
        .collect();
    std::fs::write(path, data)
}

/// The program: `args` are the command line after the program name.
fn run(args: &[PathBuf]) -> Result<(), Box<dyn std::error::Error>> {
    let _temp;
    let (raw, out) = match args {
        [] => {
            let dir = tempfile::tempdir()?;
            let raw = dir.path().join("sample.raw");
            sample_raw(&raw, 6 * CHUNK + 1000)?;
            let out = dir.path().join("sample.vhdx");
            _temp = dir;
            (raw, out)
        }
        [raw] => (raw.clone(), raw.with_extension("vhdx")),
        [raw, out] => (raw.clone(), out.clone()),
        _ => return Err("usage: own_io [RAW_FILE [OUT.vhdx]]".into()),
    };
    let stats = import(&raw, &out, Format::Vhdx, "")?;
    println!(
        "copied {} into {} with mapped writes: {stats:#?}",
        raw.display(),
        out.display()
    );
    println!("every byte read back through map_read matches the raw file");
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    run(&args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vdisk::Allocation;

    fn raw_bytes(path: &Path, sectors: u64) -> Vec<u8> {
        let mut data = std::fs::read(path).unwrap();
        data.resize(sectors as usize * 512, 0);
        data
    }

    /// Import a sample into `format`, then compare with `Disk::read` on a fresh open.
    fn round_trip(format: Format, options: &str) -> Stats {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("in.raw");
        sample_raw(&raw, 5 * CHUNK + 1000).unwrap();
        let out = dir.path().join(format!("out.{format}"));
        let stats = import(&raw, &out, format, options).unwrap();
        assert_eq!(stats.zero_chunks_skipped, 2, "{format}");

        let image = vdisk::open(&out, &OpenOptions::new()).unwrap();
        let sectors = image.sector_count();
        assert_eq!(sectors, (5 * CHUNK as u64 + 1000).div_ceil(512));
        let mut all = vec![0u8; sectors as usize * 512];
        image.read(0, &mut all).unwrap();
        assert!(all == raw_bytes(&raw, sectors), "{format}: Disk::read after reopening");
        // Mapped reads on the reopened image agree with Disk::read.
        let mut mapped = vec![0u8; all.len()];
        read_mapped(&image, 0, &mut mapped, &mut Stats::default()).unwrap();
        assert!(mapped == all, "{format}: mapped reads after reopening");
        // The skipped MiB stayed unallocated (where it is an allocation unit of its own: a
        // 2 MiB VHD block also holds the MiB before it).
        if image.optimal_io_alignment() <= CHUNK as u64 {
            let skipped = image.block_status(2048, 2048).unwrap();
            assert_ne!(skipped.allocation, Allocation::Data, "{format}: {skipped:?}");
        }
        stats
    }

    #[test]
    fn vhdx_import_round_trips() {
        let stats = round_trip(Format::Vhdx, "block_size=1M");
        assert!(stats.host_writes >= 4 && stats.unit_writes == 0 && stats.engine_writes == 0);
        assert!(stats.host_reads > 0 && stats.zero_reads > 0);
    }

    #[test]
    fn vhd_import_round_trips() {
        let stats = round_trip(Format::Vhd, "subformat=dynamic");
        assert!(stats.host_writes >= 4);
    }

    #[test]
    fn vmdk_import_writes_whole_grains() {
        let stats = round_trip(Format::Vmdk, "subformat=monolithicSparse");
        assert!(stats.unit_writes > 0, "{stats:?}");
    }

    #[test]
    fn stream_vmdk_import_goes_through_the_engine() {
        let stats = round_trip(Format::Vmdk, "subformat=streamOptimized");
        assert!(stats.engine_writes > 0 && stats.engine_reads > 0, "{stats:?}");
    }

    /// Unaligned mapped writes into a child: a VMDK grain is filled from the parent
    /// (`Fill::Below`), VHD and VHDX fall through to the parent for the rest of the block.
    #[test]
    fn child_writes_fill_from_the_parent() {
        for (format, options) in [
            (Format::Vmdk, "subformat=monolithicSparse"),
            (Format::Vhdx, "block_size=1M"),
            (Format::Vhd, "subformat=dynamic"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let raw = dir.path().join("in.raw");
            sample_raw(&raw, 3 * CHUNK).unwrap();
            let base = dir.path().join(format!("base.{format}"));
            import(&raw, &base, format, options).unwrap();
            let child = dir.path().join(format!("child.{format}"));
            let mut create = CreateOptions::new(format, 3 * CHUNK as u64);
            create.backing = Some(format!("base.{format}"));
            vdisk::create(&child, &create).unwrap();

            let resolver = std::sync::Arc::new(vdisk::FsResolver::new(vdisk::FsPolicy::SameDirectory));
            let image = vdisk::open(&child, &OpenOptions::new().writable(true).resolver(resolver.clone())).unwrap();
            let mut expected = raw_bytes(&raw, image.sector_count());
            let mut stats = Stats::default();
            for (lba, len) in [(3u64, 1536usize), (130, 512), (4090, 8192)] {
                let data = vec![0x5a; len];
                write_mapped(&image, lba, &data, &mut stats).unwrap();
                expected[lba as usize * 512..lba as usize * 512 + len].copy_from_slice(&data);
            }
            let mut mapped = vec![0u8; expected.len()];
            read_mapped(&image, 0, &mut mapped, &mut stats).unwrap();
            assert!(mapped == expected, "{format}: mapped reads through the chain");
            image.flush().unwrap();
            drop(image);
            let image = vdisk::open(&child, &OpenOptions::new().resolver(resolver)).unwrap();
            let mut all = vec![0u8; expected.len()];
            image.read(0, &mut all).unwrap();
            assert!(all == expected, "{format}: Disk::read of the child after reopening");
            if format == Format::Vmdk {
                assert!(stats.units_filled_from_below >= 3, "{stats:?}");
            }
        }
    }

    #[test]
    fn main_runs_without_arguments_and_with_a_raw_file() {
        run(&[]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("given.raw");
        sample_raw(&raw, 2 * CHUNK + 512).unwrap();
        run(std::slice::from_ref(&raw)).unwrap();
        let image = vdisk::open(dir.path().join("given.vhdx"), &OpenOptions::new()).unwrap();
        assert_eq!(image.info().format, Format::Vhdx);
    }
}
