//! Stream-optimized sessions: an acknowledged write survives a later failing command (the image
//! is dropped without a flush), and refused writes leave an existing stream image untouched.

use disk_core::{
    CreateSpec, DenyExternal, Disk, Driver, ErrorKind, Image, MemStorage, NoExtraFiles, OpenContext, Options,
};
use std::sync::Arc;
use vmdk::VmdkDriver;

fn open(storage: &Arc<MemStorage>, writable: bool) -> disk_core::Result<Image> {
    let ctx = OpenContext {
        path: None,
        writable,
        resolver: &DenyExternal,
        lenient: false,
        repair: false,
        locking: disk_core::Locking::Auto,
    };
    Ok(Image::single(VmdkDriver.open(storage.clone(), &ctx)?, None))
}

fn stream_image() -> Arc<MemStorage> {
    let storage = Arc::new(MemStorage::new());
    let spec = CreateSpec {
        size: 4 << 20,
        options: Options::parse("subformat=streamOptimized").unwrap(),
        backing: None,
        path: None,
        files: &NoExtraFiles,
    };
    VmdkDriver.create(&*storage, spec).unwrap();
    storage
}

#[test]
fn acknowledged_stream_writes_survive_a_failing_command() {
    let storage = stream_image();
    {
        let disk = open(&storage, true).unwrap();
        disk.write(0, &[0x5a; 65536]).unwrap();
        disk.write(256, &[0x6b; 4096]).unwrap();
        // The next command fails (a stream is written front to back); no flush follows.
        assert_eq!(disk.write(0, &[1; 512]).unwrap_err().kind(), ErrorKind::Unsupported);
    }
    let disk = open(&storage, false).unwrap();
    let mut buf = vec![0u8; 65536];
    disk.read(0, &mut buf).unwrap();
    assert!(buf.iter().all(|&b| b == 0x5a));
    disk.read(256, &mut buf[..4096]).unwrap();
    assert!(buf[..4096].iter().all(|&b| b == 0x6b));
    assert!(
        disk_core::Layer::check(disk.top(), disk_core::Repair::None)
            .unwrap()
            .is_clean()
    );

    // Written once, the image is an existing stream: writes and discards are refused before
    // anything (not even the CID) changes.
    let before = storage.to_vec();
    let disk = open(&storage, true).unwrap();
    assert_eq!(disk.write(1024, &[2; 512]).unwrap_err().kind(), ErrorKind::Unsupported);
    assert!(disk.discard(0, 8).is_err());
    disk.flush().unwrap();
    drop(disk);
    assert!(storage.to_vec() == before, "a refused write changed the file");
}
