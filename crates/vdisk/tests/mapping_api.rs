//! The public mapping API (`Image::map_read`, `Image::map_write`): an embedder that moves the
//! data itself, following the contract, gets the same disk as one going through `Disk`.

use std::path::Path;
use std::sync::Arc;
use vdisk::disk_core::mapping::{Fill, WriteTarget};
use vdisk::disk_core::{FsPolicy, FsResolver, ReadSource};
use vdisk::{CreateOptions, Disk, Format, Image, OpenOptions, Options};

const SIZE: u64 = 8 << 20;

fn opts(writable: bool) -> OpenOptions {
    OpenOptions::new()
        .writable(writable)
        .resolver(Arc::new(FsResolver::new(FsPolicy::SameDirectory)))
}

/// Write `data` at `lba` through `map_write`, doing the data I/O ourselves.
fn write_mapped(image: &Image, lba: u64, data: &[u8]) {
    let ss = image.sector_size() as usize;
    let total = (data.len() / ss) as u64;
    let mut done = 0u64;
    while done < total {
        let at = lba + done;
        let m = image.map_write(at, total - done).unwrap();
        let n = m.sectors.min(total - done);
        let piece = &data[done as usize * ss..(done + n) as usize * ss];
        match m.target {
            WriteTarget::Host { offset, .. } => m.storage.as_ref().unwrap().write_at(piece, offset).unwrap(),
            WriteTarget::Unit {
                offset,
                lba: unit,
                sectors,
                fill,
                ..
            } => {
                let mut whole = vec![0u8; sectors as usize * ss];
                if fill == Fill::Below {
                    let inside = image.sector_count().saturating_sub(unit).min(sectors) as usize;
                    image.read_below(unit, &mut whole[..inside * ss]).unwrap();
                }
                let from = (at - unit) as usize * ss;
                whole[from..from + piece.len()].copy_from_slice(piece);
                m.storage.as_ref().unwrap().write_at(&whole, offset).unwrap();
            }
            WriteTarget::Engine => {
                drop(m);
                image.write(at, piece).unwrap();
                done += n;
                continue;
            }
        }
        m.complete().unwrap();
        done += n;
    }
}

/// Read the whole disk through `map_read`, doing the data I/O ourselves.
fn read_mapped(image: &Image) -> Vec<u8> {
    let ss = image.sector_size() as usize;
    let total = image.sector_count();
    let mut out = vec![0u8; total as usize * ss];
    let mut lba = 0;
    while lba < total {
        let m = image.map_read(lba, total - lba).unwrap();
        let piece = &mut out[lba as usize * ss..(lba + m.sectors) as usize * ss];
        match &m.source {
            ReadSource::Host { storage, offset, .. } => storage.read_at(piece, *offset).unwrap(),
            ReadSource::Zero => piece.fill(0),
            ReadSource::Engine => image.read(lba, piece).unwrap(),
        }
        lba += m.sectors;
    }
    out
}

fn create(path: &Path, format: Format, options: &str, backing: Option<&str>) {
    let mut c = CreateOptions::new(format, SIZE);
    c.options = Options::parse(options).unwrap();
    c.backing = backing.map(str::to_string);
    vdisk::create(path, &c).unwrap();
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 241) as u8 ^ seed | 1).collect()
}

#[test]
fn embedder_io_matches_disk_io() {
    let dir = tempfile::tempdir().unwrap();
    for (format, options) in [
        (Format::Vhd, "subformat=dynamic"),
        (Format::Vhdx, "block_size=1M"),
        (Format::Vmdk, "subformat=monolithicSparse"),
        (Format::Raw, ""),
    ] {
        let base = dir.path().join(format!("base.{format}"));
        create(&base, format, options, None);
        let image = vdisk::open(&base, &opts(true)).unwrap();
        let mut expected = vec![0u8; SIZE as usize];
        // Within one unit, across unit boundaries, and a large run.
        for (lba, len) in [(3u64, 1024usize), (2040, 8192), (4096, 3 << 20)] {
            let data = pattern(lba as u8, len);
            write_mapped(&image, lba, &data);
            expected[lba as usize * 512..lba as usize * 512 + len].copy_from_slice(&data);
        }
        assert!(read_mapped(&image) == expected, "{format}: mapped reads");
        image.flush().unwrap();
        drop(image);
        let image = vdisk::open(&base, &opts(false)).unwrap();
        let mut all = vec![0u8; SIZE as usize];
        image.read(0, &mut all).unwrap();
        assert!(all == expected, "{format}: Disk reads after reopening");
        if format == Format::Raw {
            continue;
        }
        // A child: partial units are filled from the parent (VMDK) or fall through (VHD, VHDX).
        let child = dir.path().join(format!("child.{format}"));
        create(&child, format, "", Some(&format!("base.{format}")));
        let image = vdisk::open(&child, &opts(true)).unwrap();
        let data = pattern(0x77, 4096);
        write_mapped(&image, 2045, &data);
        expected[2045 * 512..2045 * 512 + 4096].copy_from_slice(&data);
        assert!(
            read_mapped(&image) == expected,
            "{format}: mapped reads through the chain"
        );
        image.flush().unwrap();
        drop(image);
        let image = vdisk::open(&child, &opts(false)).unwrap();
        image.read(0, &mut all).unwrap();
        assert!(all == expected, "{format}: child after reopening");
    }
}

#[test]
fn mappings_refuse_bad_ranges_and_read_only_images() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.vhdx");
    create(&path, Format::Vhdx, "block_size=1M", None);
    let image = vdisk::open(&path, &opts(false)).unwrap();
    let sectors = image.sector_count();
    for (lba, count) in [(sectors, 1), (sectors - 1, 2), (u64::MAX, 1), (0, u64::MAX)] {
        let e = image.map_read(lba, count).unwrap_err();
        assert_eq!(e.kind(), vdisk::ErrorKind::OutOfRange, "map_read({lba}, {count})");
    }
    assert_eq!(
        image.map_read(0, 0).unwrap_err().kind(),
        vdisk::ErrorKind::InvalidArgument
    );
    assert_eq!(image.map_write(0, 1).unwrap_err().kind(), vdisk::ErrorKind::ReadOnly);
    drop(image);
    let writable = vdisk::open(&path, &opts(true)).unwrap();
    assert_eq!(
        writable.map_write(sectors, 1).unwrap_err().kind(),
        vdisk::ErrorKind::OutOfRange
    );
    let mut buf = [0u8; 100];
    assert_eq!(
        writable.read_below(0, &mut buf).unwrap_err().kind(),
        vdisk::ErrorKind::InvalidArgument
    );
}
