//! Replays every committed fuzz input (`fuzz/corpus/<target>/*`) through the target's body on the
//! stable toolchain, so regressions the fuzzers once found fail plain `cargo test`.

use std::path::Path;

#[test]
fn fuzz_corpus_replays_without_panics() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus");
    let mut dirs: Vec<_> = std::fs::read_dir(&corpus)
        .unwrap_or_else(|e| panic!("{}: {e}", corpus.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    let mut replayed = 0;
    for dir in dirs {
        let name = dir.file_name().expect("name").to_string_lossy().into_owned();
        let target = vdisk::fuzzing::targets()
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| *t)
            .unwrap_or_else(|| panic!("fuzz/corpus/{name}: no such target in vdisk::fuzzing::targets()"));
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .expect("corpus directory")
            .map(|e| e.expect("directory entry").path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        for file in files {
            let data = std::fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
            eprintln!("{name}: {}", file.display());
            target(&data);
            replayed += 1;
        }
    }
    assert!(replayed > 0, "no corpus inputs found under {}", corpus.display());
}

/// The real log seed reaches the replay code: its scan finds an active sequence.
#[test]
fn vhdx_log_seed_has_an_active_sequence() {
    let seed = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/corpus/vhdx_log/seed_real_log");
    let data = std::fs::read(&seed).unwrap();
    let mut guid = [0u8; 16];
    guid.copy_from_slice(&data[..16]);
    let file_len = u64::from_le_bytes(data[16..24].try_into().unwrap());
    let summary = vdisk::vhdx::scan_log(&data[24..], vdisk::disk_core::guid::MsGuid(guid), file_len)
        .unwrap()
        .expect("an active sequence");
    assert!(summary.entries >= 1 && summary.changes >= 1, "{summary:?}");
}
