//! The hypervisor-facing `Disk` surface on every format: vectored I/O with scatter lists that
//! split sectors, FUA, zeroing with an unmap hint, declared discard behaviour and alignment, a
//! stable disk id, and errors classified for a virtual device.

use std::io::{IoSlice, IoSliceMut};
use vdisk::{CreateOptions, DeviceStatus, Disk, ErrorKind, Format, OpenOptions, Options};

const SIZE: u64 = 8 << 20;

fn formats() -> [(Format, &'static str); 4] {
    [
        (Format::Vhd, "subformat=dynamic"),
        (Format::Vhdx, "block_size=1M"),
        (Format::Vmdk, "subformat=monolithicSparse"),
        (Format::Raw, ""),
    ]
}

#[test]
fn vectored_fua_zeroes_and_declarations() {
    let dir = tempfile::tempdir().unwrap();
    for (format, opts) in formats() {
        let path = dir.path().join(format!("surface.{format}"));
        let mut create = CreateOptions::new(format, SIZE);
        create.options = Options::parse(opts).unwrap();
        vdisk::create(&path, &create).unwrap();
        let disk = vdisk::open(&path, &OpenOptions::new().writable(true)).unwrap();
        // A gather list whose pieces split sectors: 100 + 924 + 1024 bytes = 4 sectors.
        let data: Vec<u8> = (0..2048u32).map(|i| (i % 251) as u8 + 1).collect();
        let (a, rest) = data.split_at(100);
        let (b, c) = rest.split_at(924);
        disk.write_vectored(2047, &[IoSlice::new(a), IoSlice::new(b), IoSlice::new(c)], true)
            .unwrap();
        let mut x = vec![0u8; 1000];
        let mut y = vec![0u8; 1048];
        disk.read_vectored(2047, &mut [IoSliceMut::new(&mut x), IoSliceMut::new(&mut y)])
            .unwrap();
        assert_eq!([x, y].concat(), data, "{format}");
        assert!(disk.is_fua_respected());
        // A FUA write is durable: a second handle sees it without a flush of the first (that
        // handle shares the image with the writer, as `qemu-img -U` would).
        let other = vdisk::open(&path, &OpenOptions::new().locking(vdisk::Locking::ForceShare)).unwrap();
        let mut back = vec![0u8; 2048];
        other.read(2047, &mut back).unwrap();
        assert_eq!(back, data, "{format}: FUA write visible to a fresh open");
        drop(other);
        // Zeroing with and without the unmap hint reads zeros.
        disk.write_zeroes_unmap(2047, 2, true).unwrap();
        disk.write_zeroes_unmap(2049, 2, false).unwrap();
        disk.read(2047, &mut back).unwrap();
        assert!(back.iter().all(|&b| b == 0), "{format}");
        let behavior = disk.discard_behavior();
        assert!(behavior.reads_zeros);
        assert!(disk.optimal_io_alignment().is_power_of_two());
        if format != Format::Raw {
            assert!(disk.optimal_io_alignment() >= 4096, "{format}: a block or grain");
            let id = disk.disk_id().expect("every container format records a disk id");
            drop(disk);
            let again = vdisk::open(&path, &OpenOptions::new()).unwrap();
            assert_eq!(again.disk_id(), Some(id), "{format}: the id is stable across opens");
        }
    }
}

#[test]
fn errors_map_to_device_statuses() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.vhdx");
    vdisk::create(&path, &CreateOptions::new(Format::Vhdx, SIZE)).unwrap();
    let ro = vdisk::open(&path, &OpenOptions::new()).unwrap();
    let e = ro.write(0, &[0u8; 512]).unwrap_err();
    assert_eq!(e.kind().device_status(), DeviceStatus::WriteProtected);
    let mut buf = [0u8; 512];
    let e = ro.read(SIZE / 512, &mut buf).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::OutOfRange);
    assert_eq!(e.kind().device_status(), DeviceStatus::IllegalRequest);
    assert_eq!(ErrorKind::Corrupt.device_status(), DeviceStatus::MediumError);
    assert_eq!(ErrorKind::Poisoned.device_status(), DeviceStatus::IoError);
}
