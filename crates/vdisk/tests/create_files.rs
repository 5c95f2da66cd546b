//! `create` never writes through a link left where it puts its temporary file or extent files.

#![cfg(unix)]

use vdisk::{CreateOptions, Format, Options};

#[test]
fn links_at_new_file_names_are_replaced_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    // The temporary name create uses beside the target.
    let temp = dir.path().join(format!(".disk.raw.vdisk-tmp-{}", std::process::id()));
    std::os::unix::fs::symlink(&victim, &temp).unwrap();
    vdisk::create(dir.path().join("disk.raw"), &CreateOptions::new(Format::Raw, 1 << 20)).unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert_eq!(std::fs::metadata(dir.path().join("disk.raw")).unwrap().len(), 1 << 20);

    // An extent file name of a new flat VMDK, as a symbolic link and as a hard link.
    let flat = dir.path().join("d-flat.vmdk");
    for link in [
        |v: &std::path::Path, l: &std::path::Path| std::os::unix::fs::symlink(v, l),
        |v: &std::path::Path, l: &std::path::Path| std::fs::hard_link(v, l),
    ] {
        link(&victim, &flat).unwrap();
        let mut c = CreateOptions::new(Format::Vmdk, 1 << 20);
        c.options = Options::parse("subformat=monolithicFlat").unwrap();
        vdisk::create(dir.path().join("d.vmdk"), &c).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        let meta = std::fs::symlink_metadata(&flat).unwrap();
        assert!(meta.file_type().is_file() && meta.len() == 1 << 20);
        std::fs::remove_file(&flat).unwrap();
    }
}

/// Every option a driver lists for `create -o help` is one its `create` takes, at its listed
/// default; an unknown one is refused.
#[test]
fn listed_create_options_are_accepted_at_their_defaults() {
    let dir = tempfile::tempdir().unwrap();
    for driver in vdisk::drivers() {
        let format = driver.format();
        for (i, o) in driver.create_options().iter().enumerate() {
            assert!(!o.help.is_empty() && !o.default.is_empty(), "{format}: {o:?}");
            let path = dir.path().join(format!("{format}-{i}.img"));
            let mut options = CreateOptions::new(format, 16 << 20);
            options.options = Options::parse(&format!("{}={}", o.name, o.default)).unwrap();
            vdisk::create(&path, &options).unwrap_or_else(|e| panic!("{format} {}={}: {e}", o.name, o.default));
        }
        let mut options = CreateOptions::new(format, 16 << 20);
        options.options = Options::parse("no_such_option=1").unwrap();
        assert!(vdisk::create(dir.path().join(format!("{format}-bad.img")), &options).is_err());
    }
}
