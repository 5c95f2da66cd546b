//! Regenerates the VHDX seeds of the fuzz corpus (`fuzz/corpus/probe_open/`):
//! `cargo test -p vhdx --test fuzz_seeds -- --ignored`.

mod common;

use disk_core::Disk;

#[test]
#[ignore = "writes into fuzz/corpus; run by hand"]
fn regenerate_fuzz_seeds() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/probe_open");
    if !dir.is_dir() {
        eprintln!("skipping: no fuzz corpus directory");
        return;
    }
    let storage = common::create_mem(3 << 20, "block_size=1M").unwrap();
    std::fs::write(dir.join("real_vdisk_dynamic.vhdx"), storage.to_vec()).unwrap();
    // A dirty log: the image as it is on disk right after a logged allocation, before the log
    // is marked empty (what a crash at that point leaves; opening replays it).
    let disk = common::open_mem(&storage, true).unwrap();
    disk.write(1, &[0x5a; 512]).unwrap();
    std::fs::write(dir.join("real_vdisk_dirty_log.vhdx"), storage.to_vec()).unwrap();
    drop(disk);
}
