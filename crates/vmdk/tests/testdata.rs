//! Every VMDK in the shared test data meets its manifest entry.

mod common;

use common::{content_digest, open, testdata};
use disk_core::Disk;
use std::process::Command;

/// Minimal extraction of `"key": value` from one manifest object (the manifest is flat JSON).
fn field<'a>(obj: &'a str, key: &str) -> Option<&'a str> {
    let at = obj.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = obj[at..].trim_start();
    if let Some(s) = rest.strip_prefix('"') {
        s.find('"').map(|e| &s[..e])
    } else {
        let end = rest.find([',', '}']).unwrap_or(rest.len());
        Some(rest[..end].trim())
    }
}

#[test]
fn shared_testdata_vmdks_meet_the_manifest() {
    let Some(root) = testdata() else {
        eprintln!("skipping: ../shared/testdata is absent");
        return;
    };
    let manifest = std::fs::read_to_string(root.join("manifest.json")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for obj in manifest.split('{').skip(1) {
        let Some(path) = field(obj, "path") else { continue };
        let name = path.trim_end_matches(".xz");
        if !name.ends_with(".vmdk") && !name.contains("vmdk") {
            continue;
        }
        let expect = field(obj, "expect").unwrap();
        let file = tmp.path().join(name.replace('/', "_"));
        let out = Command::new("xz").arg("-dc").arg(root.join(path)).output().unwrap();
        assert!(out.status.success(), "xz {path}");
        std::fs::write(&file, &out.stdout).unwrap();
        let started = std::time::Instant::now();
        let result = std::panic::catch_unwind(|| open(&file, false));
        let result = result.unwrap_or_else(|_| panic!("{path}: open panicked"));
        match expect {
            "ok" | "stretch" => {
                let disk = match result {
                    Ok(d) => d,
                    Err(e) if expect == "stretch" => {
                        eprintln!("{path}: stretch goal not met: {e}");
                        continue;
                    }
                    Err(e) => panic!("{path}: {e}"),
                };
                let size: u64 = field(obj, "virtual_size").unwrap().parse().unwrap();
                assert_eq!(disk.virtual_size(), size, "{path}: virtual size");
                let digest = content_digest(&disk);
                assert_eq!(digest, field(obj, "content_digest").unwrap(), "{path}: content digest");
                if name.contains("sesparse") {
                    // Also as QEMU reads it: through a descriptor naming it as a SESPARSE extent.
                    let desc = tmp.path().join("sesparse-desc.vmdk");
                    let extent = file.file_name().unwrap().to_string_lossy().into_owned();
                    let text = format!(
                        "# Disk DescriptorFile\nversion=1\nCID=fffffffe\nparentCID=ffffffff\ncreateType=\"seSparse\"\n\nRW {} SESPARSE \"{extent}\"\n",
                        size / 512
                    );
                    std::fs::write(&desc, text).unwrap();
                    let via = open(&desc, false).unwrap();
                    assert_eq!(content_digest(&via), digest, "{path} through a descriptor");
                }
            }
            "error" => {
                // Either refused at open or when reading; never a panic or a huge allocation.
                if let Ok(disk) = result {
                    let read_all = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        let mut buf = vec![0u8; 1 << 20];
                        let mut pos = 0;
                        while pos < disk.virtual_size().min(64 << 20) {
                            let n = (1u64 << 20).min(disk.virtual_size() - pos) as usize;
                            disk_core::bytes::read_bytes(&disk, pos, &mut buf[..n])?;
                            pos += n as u64;
                        }
                        Ok::<_, disk_core::Error>(())
                    }));
                    assert!(
                        matches!(read_all, Ok(Err(_))),
                        "{path}: expected a clean error, got {:?}",
                        read_all.map(|r| r.map(|_| ()))
                    );
                }
            }
            other => panic!("{path}: unexpected expectation {other}"),
        }
        eprintln!("{path}: {expect} in {:?}", started.elapsed());
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} VMDK entries checked");
}
