//! Every resize is crash-safe: the power fails at each write and each flush of the resize, and
//! the image that survives (every [`CrashMode`]) must open with the old size or the new one and
//! hold the old data on the common prefix (of the old and the new size); resizing it again must then finish the job.

use disk_core::testing::{CrashMode, CrashStorage, for_each_crash};
use disk_core::{
    CreateSpec, Disk, Driver, Image, MemStorage, NoExtraFiles, OpenOptions, Options, Result, Storage, bytes,
};
use disk_resize::{ResizeOptions, SizeChange, resize_storage};
use std::sync::Arc;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

fn open(driver: &dyn Driver, storage: Arc<dyn Storage>, writable: bool) -> Result<Image> {
    let o = OpenOptions::new();
    Ok(Image::single(driver.open(storage, &o.context(None, writable))?, None))
}

/// A new image with recognisable data spread over it (also in its last sector).
fn image_with_data(driver: &dyn Driver, size: u64, options: &str) -> (MemStorage, Vec<u8>) {
    let storage = Arc::new(MemStorage::new());
    driver
        .create(
            &*storage,
            CreateSpec {
                size,
                options: Options::parse(options).unwrap(),
                backing: None,
                path: None,
                files: &NoExtraFiles,
            },
        )
        .unwrap();
    {
        let disk = open(driver, storage.clone(), true).unwrap();
        for (i, at) in [0, 70 * KIB % size, size / 3, size / 2 + 3 * 512, size - 4 * KIB]
            .into_iter()
            .enumerate()
        {
            let at = at / 512 * 512;
            let data = vec![0x11 * (i as u8 + 1); 4096.min((size - at) as usize)];
            bytes::write_bytes(&disk, at, &data).unwrap();
        }
        disk.flush().unwrap();
    }
    let contents = read_all(&open(driver, storage.clone(), false).unwrap());
    (storage.snapshot(), contents)
}

fn read_all(disk: &dyn Disk) -> Vec<u8> {
    read_prefix(disk, disk.virtual_size())
}

fn read_prefix(disk: &dyn Disk, len: u64) -> Vec<u8> {
    let mut buf = vec![0u8; len.min(disk.virtual_size()) as usize];
    disk.read(0, &mut buf).unwrap();
    buf
}

/// Whether everything from byte `from` reads as zeros (only stored runs are read).
fn zeros_from(disk: &Image, from: u64) -> bool {
    let top = disk.top();
    let end = disk.sector_count();
    let mut lba = from / 512;
    while lba < end {
        let st = top.block_status(lba, end - lba).unwrap();
        let n = st.sectors.clamp(1, end - lba);
        if st.allocation == disk_core::Allocation::Data {
            let n = n.min(2048);
            let mut buf = vec![0u8; (n * 512) as usize];
            disk.read(lba, &mut buf).unwrap();
            if buf.iter().any(|&b| b != 0) {
                return false;
            }
            lba += n;
            continue;
        }
        lba += n;
    }
    true
}

/// Check one recovered image: old or new size, the old data on the common prefix, zeros past
/// the old end; then a second resize completes and `check` is clean.
fn verify(driver: &dyn Driver, storage: MemStorage, old: &[u8], new_size: u64, what: &str, zeros: bool) {
    let storage = Arc::new(storage);
    let disk = open(driver, storage.clone(), false).unwrap_or_else(|e| panic!("{what}: does not open: {e}"));
    let size = disk.virtual_size();
    assert!(
        size == old.len() as u64 || size == new_size,
        "{what}: size {size}, expected {} or {new_size}",
        old.len()
    );
    let now = read_prefix(&disk, old.len() as u64);
    // Past a smaller new end, data the caller gave up may already be gone.
    let common = now.len().min(old.len()).min(new_size as usize);
    if let Some(i) = (0..common).find(|&i| now[i] != old[i]) {
        panic!("{what}: byte {i} changed");
    }
    drop(disk);
    let opts = ResizeOptions {
        shrink: true,
        allow_data_loss: true,
        format: None,
    };
    resize_storage(
        storage.clone(),
        driver,
        None,
        &OpenOptions::new(),
        SizeChange::To(new_size),
        &opts,
        &disk_core::NoExtraFiles,
    )
    .unwrap_or_else(|e| panic!("{what}: resizing again: {e}"));
    let disk = open(driver, storage, false).unwrap();
    assert_eq!(disk.virtual_size(), new_size, "{what}");
    let now = read_prefix(&disk, old.len() as u64);
    let common = now.len().min(old.len());
    assert!(now[..common] == old[..common], "{what}: data after the second resize");
    if zeros {
        assert!(zeros_from(&disk, common as u64), "{what}: new space is not zeros");
    }
    let report = disk.top().check(disk_core::Repair::None).unwrap();
    assert!(report.corruptions.is_empty(), "{what}: {:?}", report.corruptions);
}

/// Resize with a crash at every write and flush, checking every crash mode.
///
/// A fixed VHD that grows keeps its old footer inside the new space until the last step: a
/// crash before it leaves the new size with that one sector not zeroed (`stale_footer`).
fn crash_everywhere(driver: &dyn Driver, size: u64, options: &str, new_size: u64) -> u64 {
    let stale_footer = options.contains("fixed") && new_size > size;
    let (base, old) = image_with_data(driver, size, options);
    crash_image_everywhere(driver, base, old, options, new_size, stale_footer)
}

/// [`crash_everywhere`] on a prepared image `base` whose own layer reads `old`.
fn crash_image_everywhere(
    driver: &dyn Driver,
    base: MemStorage,
    old: Vec<u8>,
    options: &str,
    new_size: u64,
    stale_footer: bool,
) -> u64 {
    let size = old.len() as u64;
    let opts = ResizeOptions {
        shrink: true,
        allow_data_loss: true,
        format: None,
    };
    let run = |storage: Arc<CrashStorage>| {
        resize_storage(
            storage,
            driver,
            None,
            &OpenOptions::new(),
            SizeChange::To(new_size),
            &opts,
            &disk_core::NoExtraFiles,
        )
    };
    let mut checked = 0;
    let dry = for_each_crash(&base, 7, run, |crash, image| {
        let what = format!("{options}: {size} -> {new_size}, {crash}");
        verify(driver, image, &old, new_size, &what, !stale_footer);
        checked += 1;
    });
    let finished = dry.crash_image(CrashMode::LoseAll);
    verify(
        driver,
        finished,
        &old,
        new_size,
        &format!("{options}: {size} -> {new_size} finished"),
        true,
    );
    checked
}

#[test]
fn vhd_fixed_resize_is_crash_safe() {
    let d = vhd1::VhdDriver;
    assert!(crash_everywhere(&d, 4 * MIB, "subformat=fixed", 6 * MIB) > 0);
    crash_everywhere(&d, 4 * MIB, "subformat=fixed", 3 * MIB + 512);
}

#[test]
fn vhd_dynamic_resize_is_crash_safe() {
    let d = vhd1::VhdDriver;
    // BAT grows inside its sector; then BAT moves to the end (blocks follow it).
    crash_everywhere(&d, 256 * KIB, "block_size=4K", 300 * KIB + 512);
    crash_everywhere(&d, 256 * KIB, "block_size=4K", MIB);
    // Shrinking frees the blocks past the end and cuts the file.
    crash_everywhere(&d, 256 * KIB, "block_size=4K", 100 * KIB - 512);
}

#[test]
fn vmdk_sparse_resize_is_crash_safe() {
    let d = vmdk::VmdkDriver;
    // Inside the grain directory's sector; then new directories at the end of the file.
    crash_everywhere(&d, MIB, "", 3 * MIB / 2 + 512);
    crash_everywhere(&d, MIB, "zeroed_grain=on", 5 << 30);
    crash_everywhere(&d, MIB, "", MIB / 2 - 512);
}

/// A parent with data and a child with its own data and zeros, in memory; the child's view.
fn chain_in_memory(driver: &dyn Driver, options: &str) -> (MemStorage, MemStorage, Vec<u8>) {
    let size = 2 * MIB;
    let parent = Arc::new(MemStorage::new());
    let spec = |backing| CreateSpec {
        size,
        options: Options::parse(options).unwrap(),
        backing,
        path: None,
        files: &NoExtraFiles,
    };
    driver.create(&*parent, spec(None)).unwrap();
    {
        let disk = open(driver, parent.clone(), true).unwrap();
        bytes::write_bytes(&disk, 0, &vec![0x11; 300 * KIB as usize]).unwrap();
        bytes::write_bytes(&disk, MIB, &vec![0x12; 64 * KIB as usize]).unwrap();
        disk.flush().unwrap();
    }
    let child = Arc::new(MemStorage::new());
    {
        let image = open(driver, parent.clone(), false).unwrap();
        let backing = disk_core::BackingSpec {
            recorded: "parent".into(),
            absolute: None,
            image: &image,
        };
        driver.create(&*child, spec(Some(backing))).unwrap();
    }
    let resolver = Arc::new(disk_core::MemResolver::new());
    resolver.insert("parent", Arc::new(parent.snapshot()));
    {
        let disk = open_chain(driver, child.clone(), resolver, true).unwrap();
        bytes::write_bytes(&disk, 100 * KIB, &vec![0x21; 100 * KIB as usize]).unwrap();
        bytes::write_bytes(&disk, 1500 * KIB, &vec![0x22; 4096]).unwrap();
        disk.write_zeroes(MIB / 512, 16).unwrap();
        disk.flush().unwrap();
    }
    let resolver = Arc::new(disk_core::MemResolver::new());
    resolver.insert("parent", Arc::new(parent.snapshot()));
    let view = read_all(&open_chain(driver, child.clone(), resolver, false).unwrap());
    (parent.snapshot(), child.snapshot(), view)
}

fn open_chain(
    driver: &dyn Driver,
    child: Arc<dyn Storage>,
    resolver: Arc<disk_core::MemResolver>,
    writable: bool,
) -> Result<Image> {
    let mut o = OpenOptions::new().resolver(resolver).writable(writable);
    // A commit changes a VMDK parent's CID before the child is relinked.
    o.verify_parents = false;
    let top = driver.open(child, &o.context(None, writable))?;
    Image::open_chain(top, None, &o, &|_, s, ctx| driver.open(s, ctx))
}

/// Commit with a crash at every write and flush of the parent: the child's view never changes.
fn commit_crash_everywhere(driver: &dyn Driver, options: &str) {
    let (parent, child, view) = chain_in_memory(driver, options);
    let child = Arc::new(child);
    let run = |storage: Arc<CrashStorage>| -> Result<()> {
        let resolver = Arc::new(disk_core::MemResolver::new());
        resolver.insert("parent", Arc::new(parent.snapshot()));
        let chain = open_chain(driver, child.clone(), resolver, false)?;
        let target = open(driver, storage, true)?;
        disk_core::ops::commit_data(&chain, &target, |_, _| {})?;
        Ok(())
    };
    let dry = for_each_crash(&parent, 3, run, |what, image| {
        let resolver = Arc::new(disk_core::MemResolver::new());
        resolver.insert("parent", Arc::new(image));
        let chain =
            open_chain(driver, child.clone(), resolver, false).unwrap_or_else(|e| panic!("{options}: {what}: {e}"));
        assert!(read_all(&chain) == view, "{options}: {what}: the child's view changed");
    });
    let committed = open(driver, Arc::new(dry.crash_image(CrashMode::LoseAll)), false).unwrap();
    assert!(
        read_all(&committed) == view,
        "{options}: the parent reads as the child did"
    );
}

#[test]
fn commit_never_changes_the_childs_view() {
    commit_crash_everywhere(&vhd1::VhdDriver, "block_size=64K");
    commit_crash_everywhere(&vmdk::VmdkDriver, "");
    commit_crash_everywhere(&vhdx::VhdxDriver, "block_size=1M");
}

/// `rebase -u` switches with one atomic sector write (VMDK: the embedded descriptor's sector;
/// VHD: the footer copy's pointer to a new dynamic header): after a crash the child records the
/// old parent or the new one, never a mix.
fn set_parent_is_atomic(driver: &dyn Driver, options: &str) {
    let (parent, child, _) = chain_in_memory(driver, options);
    let other = Arc::new(MemStorage::new());
    driver
        .create(
            &*other,
            CreateSpec {
                size: MIB,
                options: Options::parse(options).unwrap(),
                backing: None,
                path: None,
                files: &NoExtraFiles,
            },
        )
        .unwrap();
    let other_layer = driver
        .open(other.clone(), &OpenOptions::new().context(None, false))
        .unwrap();
    let new_name = "other-parent-with-a-longer-name.img";
    let run = |storage: Arc<CrashStorage>| -> Result<()> {
        let layer = driver.open(storage, &OpenOptions::new().context(None, true))?;
        layer.set_parent(Some(&disk_core::NewParent {
            recorded: new_name,
            absolute: None,
            child: None,
            layer: &*other_layer,
        }))
    };
    let old_parent = driver
        .open(Arc::new(parent), &OpenOptions::new().context(None, false))
        .unwrap();
    let dry = for_each_crash(&child, 5, run, |what, image| {
        let layer = driver
            .open(Arc::new(image), &OpenOptions::new().context(None, false))
            .unwrap_or_else(|e| panic!("{options}: {what}: {e}"));
        let names = layer.parent().map(|p| p.locators.clone()).unwrap_or_default();
        let ok = if names.iter().any(|n| n.ends_with(new_name)) {
            layer.verify_parent(&*other_layer).is_ok()
        } else if names.iter().any(|n| n.ends_with("parent")) {
            layer.verify_parent(&*old_parent).is_ok()
        } else {
            false
        };
        assert!(ok, "{options}: {what}: parent {names:?} with the wrong identity");
    });
    let done = driver
        .open(
            Arc::new(dry.crash_image(CrashMode::LoseAll)),
            &OpenOptions::new().context(None, false),
        )
        .unwrap();
    assert!(done.verify_parent(&*other_layer).is_ok(), "{options}");
    assert!(done.check(disk_core::Repair::None).unwrap().is_clean(), "{options}");
}

#[test]
fn set_parent_is_atomic_vmdk() {
    set_parent_is_atomic(&vmdk::VmdkDriver, "");
}

#[test]
fn set_parent_is_atomic_vhd() {
    set_parent_is_atomic(&vhd1::VhdDriver, "block_size=64K");
}

#[test]
fn differencing_children_resize_crash_safely() {
    // VHD: past its BAT's sector, where locators follow the BAT (the BAT moves).
    for (driver, options, grown) in [
        (&vhd1::VhdDriver as &dyn Driver, "block_size=64K", 9 * MIB + 512),
        (&vmdk::VmdkDriver as &dyn Driver, "", 9 * MIB + 512),
        (&vhdx::VhdxDriver as &dyn Driver, "block_size=1M", 3 * MIB + 512),
    ] {
        let (_, child, _) = chain_in_memory(driver, options);
        // The child's own layer (its parent's sectors read as zeros here).
        let old = read_all(&open(driver, Arc::new(child.snapshot()), false).unwrap());
        crash_image_everywhere(driver, child.snapshot(), old.clone(), options, grown, false);
        crash_image_everywhere(driver, child, old, options, MIB + 512, false);
    }
}

#[test]
fn vhdx_resize_is_crash_safe() {
    let d = vhdx::VhdxDriver;
    crash_everywhere(&d, 3 * MIB, "block_size=1M", 9 * MIB + 512);
    crash_everywhere(&d, 3 * MIB, "block_size=1M", MIB + 512);
    crash_everywhere(&d, 2 * MIB, "subformat=fixed,block_size=1M", 3 * MIB);
}
