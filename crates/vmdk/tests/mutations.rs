//! Damaged images never panic: seeds mutated at random are opened and read through, and must
//! either work or fail with an error (a cheap stand-in for the fuzz target, run on every test).

use disk_core::{Disk, Driver, Image, MemResolver, MemStorage, OpenContext, Storage};
use std::sync::Arc;
use vmdk::VmdkDriver;

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn exercise(bytes: &[u8], resolver: &MemResolver) {
    let storage = Arc::new(MemStorage::new());
    storage.write_at(bytes, 0).unwrap();
    let ctx = OpenContext {
        path: None,
        writable: false,
        resolver,
        lenient: false,
        repair: false,
        locking: disk_core::Locking::Auto,
    };
    let Ok(layer) = VmdkDriver.open(storage, &ctx) else {
        return;
    };
    let disk = Image::single(layer, None);
    let _ = disk_core::Layer::info(disk.top());
    let _ = disk_core::Layer::check(disk.top(), disk_core::Repair::None);
    let sectors = disk.sector_count().min(4096);
    let mut buf = vec![0u8; 64 * 512];
    let mut lba = 0;
    while lba < sectors {
        let n = (sectors - lba).min(64);
        if disk.read(lba, &mut buf[..(n * 512) as usize]).is_err() {
            break;
        }
        let _ = disk.block_status(lba, n);
        lba += n;
    }
}

fn seeds() -> Vec<Vec<u8>> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/probe_open");
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().contains("vmdk"))
                .filter_map(|e| std::fs::read(e.path()).ok())
                .collect()
        })
        .unwrap_or_default();
    // A descriptor naming in-memory extents, so extent parsing is mutated too.
    out.push(
        b"# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"twoGbMaxExtentFlat\"\n\
          RW 8 FLAT \"f\" 1\nRW 4 ZERO\nRW 2048 SPARSE \"s\"\n"
            .to_vec(),
    );
    out
}

#[test]
fn mutated_images_fail_cleanly() {
    let resolver = MemResolver::new();
    let flat = Arc::new(MemStorage::new());
    flat.write_at(&[7u8; 8192], 0).unwrap();
    resolver.insert("f", flat);
    let sparse = Arc::new(MemStorage::new());
    let seeds = seeds();
    if let Some(s) = seeds.iter().find(|s| s.starts_with(b"KDMV")) {
        sparse.write_at(s, 0).unwrap();
    }
    resolver.insert("s", sparse);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for seed in &seeds {
        exercise(seed, &resolver);
        for _ in 0..150 {
            let mut m = seed.clone();
            if m.is_empty() {
                continue;
            }
            for _ in 0..1 + rng.next() % 8 {
                let at = if rng.next().is_multiple_of(2) {
                    (rng.next() % m.len().min(2048) as u64) as usize
                } else {
                    (rng.next() % m.len() as u64) as usize
                };
                match rng.next() % 4 {
                    0 => m[at] = rng.next() as u8,
                    1 => m[at] = 0xff,
                    2 => m[at] ^= 1 << (rng.next() % 8),
                    _ => m.truncate(at.max(1)),
                }
            }
            exercise(&m, &resolver);
        }
    }
}
