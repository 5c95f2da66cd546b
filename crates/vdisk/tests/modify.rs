//! The facade's in-place changes: flatten, commit then empty/remove, rebase refusals.

use std::path::Path;
use vdisk::{CreateOptions, Disk, ErrorKind, Format, FsPolicy, FsResolver, OpenOptions, bytes};

fn opts() -> OpenOptions {
    OpenOptions::new().resolver(std::sync::Arc::new(FsResolver::new(FsPolicy::Any)))
}

fn chain(dir: &Path, format: Format, child_options: &str) -> Vec<u8> {
    let ext = format.to_string();
    let base = dir.join(format!("base.{ext}"));
    vdisk::create(&base, &CreateOptions::new(format, 4 << 20)).unwrap();
    let disk = vdisk::open(&base, &opts().writable(true)).unwrap();
    bytes::write_bytes(&disk, 0, &vec![1u8; 1 << 20]).unwrap();
    disk.flush().unwrap();
    drop(disk);
    let child = dir.join(format!("child.{ext}"));
    let mut c = CreateOptions::new(format, 4 << 20);
    c.backing = Some(format!("base.{ext}"));
    c.options = vdisk::Options::parse(child_options).unwrap();
    vdisk::create(&child, &c).unwrap();
    let disk = vdisk::open(&child, &opts().writable(true)).unwrap();
    bytes::write_bytes(&disk, 512 << 10, &vec![2u8; 1 << 20]).unwrap();
    disk.flush().unwrap();
    let mut view = vec![0u8; 4 << 20];
    disk.read(0, &mut view).unwrap();
    view
}

fn read(path: &Path) -> Vec<u8> {
    let disk = vdisk::open(path, &opts()).unwrap();
    let mut v = vec![0u8; disk.virtual_size() as usize];
    disk.read(0, &mut v).unwrap();
    v
}

/// VHD, VMDK, and VHDX when its engine can create images here.
fn formats() -> Vec<Format> {
    let dir = tempfile::tempdir().unwrap();
    match vdisk::create(dir.path().join("p.vhdx"), &CreateOptions::new(Format::Vhdx, 1 << 20)) {
        Ok(()) => vec![Format::Vhd, Format::Vhdx, Format::Vmdk],
        Err(e) => {
            eprintln!("vhdx skipped: {e}");
            vec![Format::Vhd, Format::Vmdk]
        }
    }
}

#[test]
fn flatten_makes_a_standalone_copy_in_place() {
    for format in formats() {
        let dir = tempfile::tempdir().unwrap();
        let view = chain(dir.path(), format, "");
        let child = dir.path().join(format!("child.{format}"));
        vdisk::flatten(&child, &opts()).unwrap();
        std::fs::remove_file(dir.path().join(format!("base.{format}"))).unwrap();
        let image = vdisk::open(&child, &OpenOptions::new()).unwrap();
        assert!(image.top().parent().is_none(), "{format}");
        assert!(read(&child) == view, "{format}");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no temporary file left"
        );
        // Standalone: nothing to do.
        vdisk::flatten(&child, &opts()).unwrap();
    }
}

#[test]
fn flatten_refuses_multi_file_images() {
    let dir = tempfile::tempdir().unwrap();
    chain(dir.path(), Format::Vmdk, "subformat=twoGbMaxExtentSparse");
    let child = dir.path().join("child.vmdk");
    let before = std::fs::read(&child).unwrap();
    let e = vdisk::flatten(&child, &opts()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported);
    assert_eq!(std::fs::read(&child).unwrap(), before);
}

#[test]
fn commit_then_remove_and_empty() {
    let dir = tempfile::tempdir().unwrap();
    let view = chain(dir.path(), Format::Vhd, "block_size=512K");
    let child = dir.path().join("child.vhd");
    let base = dir.path().join("base.vhd");
    vdisk::commit_then(&child, &opts(), vdisk::AfterCommit::Empty).unwrap();
    assert!(read(&base) == view);
    assert!(read(&child) == view);
    let emptied = vdisk::open(&child, &opts()).unwrap();
    assert_eq!(emptied.top().info().cluster_size, Some(512 << 10), "block size kept");
    assert_eq!(vdisk::disk_resize::smallest_safe_size(emptied.top()).unwrap(), 0);
    drop(emptied);
    vdisk::commit_then(&child, &opts(), vdisk::AfterCommit::Remove).unwrap();
    assert!(!child.exists());
    let e = vdisk::commit(&base, &opts()).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::InvalidArgument);
}

#[test]
fn commit_in_a_deeper_chain_keeps_every_view() {
    for format in formats() {
        let dir = tempfile::tempdir().unwrap();
        let middle_view = chain(dir.path(), format, "");
        // A third level on top of the child.
        let top = dir.path().join(format!("top.{format}"));
        let mut c = CreateOptions::new(format, 4 << 20);
        c.backing = Some(format!("child.{format}"));
        // The backing file's own parent is opened only with the caller's permission.
        assert_eq!(
            vdisk::create(&top, &c).unwrap_err().kind(),
            ErrorKind::ExternalFileDenied,
            "create refuses the backing chain's files by default"
        );
        assert!(!top.exists());
        c.resolver = opts().resolver;
        vdisk::create(&top, &c).unwrap();
        let disk = vdisk::open(&top, &opts().writable(true)).unwrap();
        bytes::write_bytes(&disk, 3 << 20, &vec![3u8; 600 << 10]).unwrap();
        bytes::write_bytes(&disk, 100 << 10, &[4u8; 4096]).unwrap();
        disk.flush().unwrap();
        drop(disk);
        let top_view = read(&top);
        let base = dir.path().join(format!("base.{format}"));
        let base_view = read(&base);
        vdisk::commit(&top, &opts()).unwrap();
        let middle = dir.path().join(format!("child.{format}"));
        assert!(read(&top) == top_view, "{format}: top");
        assert!(read(&middle) == top_view, "{format}: the middle now reads as the top");
        assert!(read(&base) == base_view, "{format}: the base is untouched");
        assert!(middle_view != top_view);
    }
}

#[test]
fn shrink_refuses_a_descriptor_it_cannot_rewrite_and_keeps_every_extent() {
    // An unquoted extent name with a '"' parses, but the writer would quote it into another
    // name: the old code rewrote the descriptor, could not reopen it, then deleted every extent.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.vmdk");
    let mut c = CreateOptions::new(Format::Vmdk, 5 << 30);
    c.options = vdisk::Options::parse("subformat=twoGbMaxExtentSparse").unwrap();
    vdisk::create(&path, &c).unwrap();
    std::fs::rename(dir.path().join("s-s001.vmdk"), dir.path().join("x\"s001.vmdk")).unwrap();
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("\"s-s001.vmdk\"", "x\"s001.vmdk");
    std::fs::write(&path, &text).unwrap();
    let before: Vec<_> = {
        let mut v: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        v.sort();
        v
    };
    assert_eq!(before.len(), 4);
    let options = vdisk::disk_resize::ResizeOptions {
        shrink: true,
        allow_data_loss: true,
        format: None,
    };
    let open = OpenOptions::new().resolver(std::sync::Arc::new(FsResolver::new(FsPolicy::SameDirectory)));
    let e = vdisk::resize(&path, vdisk::disk_resize::SizeChange::To(1 << 30), &options, &open).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Unsupported, "{e}");
    let mut after: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    after.sort();
    assert_eq!(after, before);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
}

/// Counts the files an image asks its resolver for (extents), passing each on to `FsResolver`.
#[derive(Debug)]
struct Counting(FsResolver, std::sync::atomic::AtomicUsize);

impl vdisk::Resolver for Counting {
    fn open(&self, request: &vdisk::disk_core::FileRequest<'_>) -> vdisk::Result<vdisk::disk_core::Opened> {
        self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.0.open(request)
    }
}

#[test]
fn resize_opens_the_image_once() {
    use vdisk::disk_resize::{ResizeOptions, SizeChange};
    let dir = tempfile::tempdir().unwrap();
    // A raw file: probed, grown; a missing file and a forced wrong format change nothing.
    let raw = dir.path().join("d.img");
    std::fs::write(&raw, vec![1u8; 1000]).unwrap();
    let o = OpenOptions::new();
    let r = vdisk::resize(&raw, SizeChange::Grow(24), &ResizeOptions::default(), &o).unwrap();
    assert_eq!((r.format, r.old_size, r.new_size), (Format::Raw, 1000, 1024));
    assert_eq!(std::fs::metadata(&raw).unwrap().len(), 1024);
    let missing = dir.path().join("missing");
    let e = vdisk::resize(&missing, SizeChange::Grow(1), &ResizeOptions::default(), &o).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(!missing.exists());
    let forced = ResizeOptions {
        format: Some(Format::Vhdx),
        ..ResizeOptions::default()
    };
    vdisk::resize(&raw, SizeChange::Grow(1), &forced, &o).unwrap_err();
    assert_eq!(std::fs::read(&raw).unwrap(), [vec![1u8; 1000], vec![0; 24]].concat());

    // A split VMDK (descriptor file and 2 GiB extents): growing it opens each extent once, and
    // a shrink reopens the image once afterwards (to cut its tail and find dropped extents).
    let split = dir.path().join("s.vmdk");
    let mut c = CreateOptions::new(Format::Vmdk, 3 << 30);
    c.options = vdisk::Options::parse("subformat=twoGbMaxExtentSparse").unwrap();
    vdisk::create(&split, &c).unwrap();
    let counting = std::sync::Arc::new(Counting(FsResolver::new(FsPolicy::SameDirectory), Default::default()));
    let o = OpenOptions::new().resolver(counting.clone());
    let opened = || counting.1.swap(0, std::sync::atomic::Ordering::Relaxed);
    let r = vdisk::resize(&split, SizeChange::To(4 << 30), &ResizeOptions::default(), &o).unwrap();
    assert_eq!((r.format, r.new_size), (Format::Vmdk, 4 << 30));
    assert_eq!(opened(), 2, "two extents, each opened once");
    let shrink = ResizeOptions {
        shrink: true,
        ..ResizeOptions::default()
    };
    vdisk::resize(&split, SizeChange::To(1 << 30), &shrink, &o).unwrap();
    assert_eq!(
        opened(),
        2 + 1,
        "two extents to shrink, then the one left when reopened"
    );
    assert!(!dir.path().join("s-s002.vmdk").exists());
    let image = vdisk::open(&split, &o).unwrap();
    assert_eq!(image.virtual_size(), 1 << 30);
}
