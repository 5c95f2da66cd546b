//! `check` and `check -r` on hostile images: every conflict reported, writes refused until a
//! repair, and `-r all` leaving an image that opens writable, passes `qemu-img check` and keeps
//! its sound data.

mod common;

use common::*;
use std::os::unix::fs::FileExt;

/// A dynamic VHD (BAT at 1536, 2 MiB blocks) with blocks 1 and 2 written, then BAT entry 0
/// zeroed: block 0 would lie on the footer copy and the dynamic header.
fn hostile_vhd(dir: &std::path::Path) -> String {
    let path = dir.join("h.vhd");
    let p = path.to_str().unwrap().to_string();
    ok(&vdisk(["create", "-f", "vhd", &p, "8M"]));
    ok(&vdisk([
        "io",
        "-c",
        "write -P 0x11 2M 64K",
        "-c",
        "write -P 0x22 4M 64K",
        &p,
    ]));
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(&0u32.to_be_bytes(), 1536).unwrap();
    p
}

#[test]
fn hostile_vhd_is_refused_reported_and_repaired() {
    let (_d, dir) = temp();
    let p = hostile_vhd(&dir);
    let before = std::fs::read(&p).unwrap();
    // A guest write would have landed on the dynamic header: refused, file untouched.
    let e = clean_error(&vdisk(["io", "-c", "write -P 0x33 0 4K", &p]), 1);
    assert!(e.contains("footer") && e.contains("check -r"), "{e}");
    assert_eq!(std::fs::read(&p).unwrap(), before);
    // Read-only commands still work on what is sound.
    ok(&vdisk(["io", "-r", "-c", "read -P 0x11 2M 64K", &p]));
    let out = vdisk(["check", "--output", "json", &p]);
    assert_eq!(out.status.code(), Some(2), "{}", stdout(&out));
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["corruptions"], 1, "{report}");
    let details = report["corruption-details"].to_string();
    assert!(details.contains("BAT entry 0"), "{details}");
    // -r leaks does not touch corruptions; -r all frees the entry.
    assert_eq!(vdisk(["check", "-r", "leaks", &p]).status.code(), Some(2));
    let text = ok(&vdisk(["check", "-r", "all", &p]));
    assert!(text.contains("repaired") && text.contains("BAT entry 0"), "{text}");
    ok(&vdisk(["check", &p]));
    ok(&vdisk([
        "io",
        "-c",
        "write -P 0x44 0 4K",
        "-c",
        "read -P 0x11 2M 64K",
        "-c",
        "read -P 0x22 4M 64K",
        &p,
    ]));
    // QEMU reads the repaired image the same way (qemu-img has no check for vpc).
    if qemu_img_available("hostile_vhd_is_refused_reported_and_repaired (QEMU read-back)") {
        let raw = dir.join("h.raw");
        let r = raw.to_str().unwrap();
        assert_eq!(
            qemu_img(["convert", "-f", "vpc", "-O", "raw", &p, r]).status.code(),
            Some(0)
        );
        let data = std::fs::read(&raw).unwrap();
        assert!(data[..4096].iter().all(|&b| b == 0x44));
        assert!(data[4096..2 << 20].iter().all(|&b| b == 0));
        assert!(data[2 << 20..(2 << 20) + 65536].iter().all(|&b| b == 0x11));
        assert!(data[4 << 20..(4 << 20) + 65536].iter().all(|&b| b == 0x22));
    }
}

#[test]
fn check_details_are_bounded() {
    let (_d, dir) = temp();
    let path = dir.join("many.vhd");
    let p = path.to_str().unwrap().to_string();
    // 64 GiB with 512 KiB blocks: 131072 BAT entries, each set past the end of the file.
    ok(&vdisk(["create", "-f", "vhd", "-o", "block_size=512K", &p, "64G"]));
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    let entries = vec![0x7fu8; 131072 * 4];
    f.write_all_at(&entries, 1536).unwrap();
    let out = vdisk(["check", "--output", "json", &p]);
    assert_eq!(out.status.code(), Some(2));
    let report: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(report["corruptions"], 131072, "every entry is counted");
    let details = report["corruption-details"].as_array().unwrap();
    assert!(details.len() <= 1001, "{} details", details.len());
    assert_eq!(details.last().unwrap(), &serde_json::json!("and 130072 more"));
    let text = stdout(&vdisk(["check", &p]));
    assert!(text.contains("ERROR and 130072 more"), "{}", &text[text.len() - 300..]);
    assert!(text.contains("131072 errors were found"));
}

/// A VMDK child whose `parentCID` is the wildcard would accept any file its hint reaches as the
/// parent: refused unless `--trust-unlinked-parent`.
#[test]
fn wildcard_parent_cid_needs_an_opt_in() {
    let (_d, dir) = temp();
    let parent = dir.join("p.vmdk");
    let child = dir.join("c.vmdk");
    let (p, c) = (parent.to_str().unwrap(), child.to_str().unwrap());
    ok(&vdisk(["create", "-f", "vmdk", p, "1M"]));
    ok(&vdisk(["io", "-c", "write -P 0x5a 0 64K", p]));
    ok(&vdisk(["create", "-f", "vmdk", "-b", p, "-F", "vmdk", c]));
    ok(&vdisk(["io", "-r", "-c", "read -P 0x5a 0 64K", c]));
    // Same length, so the embedded descriptor keeps its layout.
    let bytes = std::fs::read(&child).unwrap();
    let key = b"parentCID=";
    let at = bytes.windows(key.len()).position(|w| w == key).expect("a parentCID") + key.len();
    let end = at + bytes[at..].iter().position(|b| !b.is_ascii_hexdigit()).unwrap();
    let mut patched = bytes[..at].to_vec();
    patched.extend_from_slice(&b"ffffffff"[..end - at]);
    patched.extend_from_slice(&bytes[end..]);
    std::fs::write(&child, &patched).unwrap();
    let e = clean_error(&vdisk(["io", "-r", "-c", "read -P 0x5a 0 64K", c]), 1);
    assert!(e.contains("no identity for its parent"), "{e}");
    ok(&vdisk([
        "--trust-unlinked-parent",
        "io",
        "-r",
        "-c",
        "read -P 0x5a 0 64K",
        c,
    ]));
}
