//! Write tiny VHDs for the fuzz corpus: `cargo run -p vhd1 --example fuzz_seeds -- DIR`.

use disk_core::{
    BackingSpec, CreateSpec, Disk, Driver, Image, MemStorage, NoExtraFiles, OpenOptions, Options, Storage,
};
use std::sync::Arc;
use vhd1::VhdDriver;

fn create(size: u64, options: &str, backing: Option<BackingSpec<'_>>) -> Arc<MemStorage> {
    let s = Arc::new(MemStorage::new());
    let spec = CreateSpec {
        size,
        options: Options::parse(options).unwrap(),
        backing,
        path: None,
        files: &NoExtraFiles,
    };
    VhdDriver.create(&*s, spec).unwrap();
    s
}

fn open(s: &Arc<MemStorage>, writable: bool) -> Image {
    let opts = OpenOptions::new().writable(writable);
    Image::single(VhdDriver.open(s.clone(), &opts.context(None, writable)).unwrap(), None)
}

fn main() {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).expect("output directory"));
    let dynamic = create(64 << 10, "block_size=4K", None);
    {
        let d = open(&dynamic, true);
        d.write(0, &[0xab; 512]).unwrap();
        d.write(9, &[0xcd; 1024]).unwrap();
        d.write(127, &[0xef; 512]).unwrap();
        d.flush().unwrap();
    }
    std::fs::write(dir.join("vhd_vdisk_dynamic_4k.vhd"), dynamic.to_vec()).unwrap();

    let parent = open(&dynamic, false);
    let child = create(
        64 << 10,
        "block_size=4K",
        Some(BackingSpec {
            recorded: "parent.vhd".into(),
            absolute: None,
            image: &parent,
        }),
    );
    {
        let d = open(&child, true);
        d.write(10, &[0x12; 512]).unwrap();
        d.discard(40, 3).unwrap();
        d.flush().unwrap();
    }
    std::fs::write(dir.join("vhd_vdisk_differencing_4k.vhd"), child.to_vec()).unwrap();

    let fixed = create(16 << 10, "subformat=fixed", None);
    std::fs::write(dir.join("vhd_vdisk_fixed_16k.vhd"), fixed.to_vec()).unwrap();

    // A BAT entry pointing far past the end of the file.
    let bad = MemStorage::from_bytes(&dynamic.to_vec());
    bad.write_at(&0x0fff_0000u32.to_be_bytes(), 1536 + 8).unwrap();
    std::fs::write(dir.join("vhd_bat_past_eof.vhd"), bad.to_vec()).unwrap();
}
