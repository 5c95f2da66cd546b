//! Open a differencing chain under a same-directory policy and serve reads from several threads.
//!
//! A differencing image names its parent by path, and the image may come from someone else: a
//! hostile one could name `/etc/shadow` or a device as its parent and have its contents served
//! to a guest. vdisk opens a file an image names only through the [`vdisk::Resolver`] the caller
//! passes in [`OpenOptions::resolver`]; the default refuses all of them. This program uses
//! [`FsResolver`] with [`FsPolicy::SameDirectory`] (the `vdisk` tool's default): a parent must be
//! a plain regular file in the child's own directory. A parent anywhere else (`../x.vhdx`, an
//! absolute path into another directory, a symbolic link) is refused with
//! [`ErrorKind::ExternalFileDenied`] and the open fails.
//!
//! The opened [`Image`] is one [`Disk`] for the whole chain (reads fall through to the parent
//! where the child holds nothing). It is `Send + Sync` and every read names its own offset, so
//! any number of threads read through one `&Image` at once with no lock of the caller's:
//! here [`std::thread::scope`] threads each take every n-th 64 KiB chunk of the disk.
//!
//! ```text
//! cargo run -p vdisk --example chain_readers                    # builds a chain in a temp dir
//! cargo run -p vdisk --example chain_readers -- child.vhdx [THREADS]
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use vdisk::{CreateOptions, Disk, ErrorKind, Format, FsPolicy, FsResolver, Image, OpenOptions, Options};

/// The unit each thread reads.
const CHUNK: usize = 64 * 1024;

/// Open `path` and its parents, allowing only parents in the same directory.
fn open_same_dir(path: &Path) -> vdisk::Result<Image> {
    let policy = Arc::new(FsResolver::new(FsPolicy::SameDirectory));
    vdisk::open(path, &OpenOptions::new().resolver(policy))
}

/// Read the whole disk with `threads` threads, thread `t` taking chunks `t`, `t + threads`, ...;
/// `visit` sees each chunk with its first LBA. Returns how many chunks each thread read.
fn read_concurrently(image: &Image, threads: usize, visit: impl Fn(u64, &[u8]) + Sync) -> vdisk::Result<Vec<u64>> {
    let threads = threads.max(1);
    let ss = image.sector_size() as usize;
    let per_chunk = (CHUNK / ss).max(1) as u64;
    let total = image.sector_count();
    let chunks = total.div_ceil(per_chunk);
    std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads as u64)
            .map(|t| {
                let visit = &visit;
                scope.spawn(move || -> vdisk::Result<u64> {
                    let mut buf = vec![0u8; per_chunk as usize * ss];
                    let mut done = 0;
                    for chunk in (t..chunks).step_by(threads) {
                        let lba = chunk * per_chunk;
                        let sectors = per_chunk.min(total - lba) as usize;
                        let buf = &mut buf[..sectors * ss];
                        image.read(lba, buf)?;
                        visit(lba, buf);
                        done += 1;
                    }
                    Ok(done)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().expect("a reader thread panicked"))
            .collect()
    })
}

/// A recognisable byte for offset `i` of layer `seed`, never zero.
fn pattern(seed: u8, i: usize) -> u8 {
    ((i % 251) as u8 ^ seed) | 1
}

/// Create `base.<format>` (data in most places) and `child.<format>` on top of it (naming
/// `base.<format>`, a plain name in the same directory), with the child overwriting some
/// ranges and discarding one; returns the child's path and what the chain must read as.
fn build_chain(dir: &Path, format: Format, options: &str, size: u64) -> vdisk::Result<(PathBuf, Vec<u8>)> {
    let base = dir.join(format!("base.{format}"));
    let mut create = CreateOptions::new(format, size);
    create.options = Options::parse(options)?;
    vdisk::create(&base, &create)?;
    let mut expected = vec![0u8; size as usize];
    {
        let image = vdisk::open(&base, &OpenOptions::new().writable(true))?;
        // Everything but the last quarter holds data in the base.
        let end = size as usize / 4 * 3;
        let data: Vec<u8> = (0..end).map(|i| pattern(0x10, i)).collect();
        image.write(0, &data)?;
        expected[..end].copy_from_slice(&data);
        image.flush()?;
    }
    let child = dir.join(format!("child.{format}"));
    let mut create = CreateOptions::new(format, size);
    create.backing = Some(format!("base.{format}"));
    vdisk::create(&child, &create)?;
    {
        let policy = Arc::new(FsResolver::new(FsPolicy::SameDirectory));
        let image = vdisk::open(&child, &OpenOptions::new().writable(true).resolver(policy))?;
        // Overwrites that start and end inside chunks, one reaching into the empty quarter.
        for (lba, len) in [(7u64, 3000usize), (1000, 70_000), (size / 512 / 4 * 3 - 4, 8192)] {
            let at = lba as usize * 512;
            let len = len / 512 * 512;
            let data: Vec<u8> = (0..len).map(|i| pattern(0xa0, at + i)).collect();
            image.write(lba, &data)?;
            expected[at..at + len].copy_from_slice(&data);
        }
        // A discard in the child hides the parent's data: it reads as zeros.
        image.discard(600, 40)?;
        expected[600 * 512..640 * 512].fill(0);
        image.flush()?;
    }
    Ok((child, expected))
}

/// Create `outside/base.<format>` and `images/child-{rel,abs}.<format>` naming it by a path
/// that leads out of the child's directory (`../outside/base.<format>`, or the absolute path);
/// returns the child's path.
fn chain_with_outside_parent(
    dir: &Path,
    format: Format,
    absolute: bool,
) -> Result<PathBuf, Box<dyn std::error::Error>> {
    let outside = dir.join("outside");
    let images = dir.join("images");
    std::fs::create_dir_all(&outside)?;
    std::fs::create_dir_all(&images)?;
    let base = outside.join(format!("base.{format}"));
    if !base.exists() {
        vdisk::create(&base, &CreateOptions::new(format, 4 << 20))?;
    }
    let name = if absolute {
        base.to_str().ok_or("a temporary path that is not UTF-8")?.to_string()
    } else {
        format!("../outside/base.{format}")
    };
    let child = images.join(format!("child-{}.{format}", if absolute { "abs" } else { "rel" }));
    let mut create = CreateOptions::new(format, 4 << 20);
    // Whoever creates the child chooses its parent, so `create` opens it (to record its identity).
    create.backing = Some(name);
    vdisk::create(&child, &create)?;
    Ok(child)
}

/// Build a chain in a temporary directory, read it with several threads, and show a parent
/// outside the directory refused.
fn demo(threads: usize) -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let (child, expected) = build_chain(dir.path(), Format::Vhdx, "block_size=1M", 8 << 20)?;
    let image = open_same_dir(&child)?;
    describe(&image);
    let mismatched = AtomicU64::new(0);
    let per_thread = read_concurrently(&image, threads, |lba, data| {
        let at = lba as usize * 512;
        if data != &expected[at..at + data.len()] {
            mismatched.fetch_add(1, Ordering::Relaxed);
        }
    })?;
    let mismatched = mismatched.into_inner();
    println!(
        "{threads} threads read {per_thread:?} chunks of 64 KiB; chunks differing from what was written: {mismatched}"
    );
    if mismatched != 0 {
        return Err("the chain read back wrong".into());
    }
    for absolute in [false, true] {
        let child = chain_with_outside_parent(dir.path(), Format::Vhdx, absolute)?;
        let Err(e) = open_same_dir(&child) else {
            return Err("a parent outside the directory was opened".into());
        };
        println!(
            "a parent named {} outside the directory: {} ({})",
            if absolute { "absolutely" } else { "relatively" },
            e.kind(),
            e
        );
        if e.kind() != ErrorKind::ExternalFileDenied {
            return Err(format!("expected a refusal, got {e}").into());
        }
    }
    Ok(())
}

/// Print the chain's layers.
fn describe(image: &Image) {
    for (depth, (layer, path)) in image.layers().enumerate() {
        let where_ = path.map_or_else(|| "(no path)".to_string(), |p| p.display().to_string());
        println!(
            "layer {depth}: {} {} bytes, {where_}",
            layer.info().format,
            layer.virtual_size()
        );
    }
}

/// Open an existing image (with its same-directory parents) and read all of it concurrently.
fn read_existing(path: &Path, threads: usize) -> Result<(), Box<dyn std::error::Error>> {
    let image = match open_same_dir(path) {
        Ok(image) => image,
        Err(e) if e.kind() == ErrorKind::ExternalFileDenied => {
            return Err(format!("{e}\n(only parents in the image's own directory are opened)").into());
        }
        Err(e) => return Err(e.into()),
    };
    describe(&image);
    let nonzero_sectors = AtomicU64::new(0);
    let ss = image.sector_size() as usize;
    let per_thread = read_concurrently(&image, threads, |_, data| {
        let n = data.chunks(ss).filter(|s| s.iter().any(|&b| b != 0)).count();
        nonzero_sectors.fetch_add(n as u64, Ordering::Relaxed);
    })?;
    println!(
        "{threads} threads read {} sectors ({per_thread:?} chunks each): {} hold non-zero data",
        image.sector_count(),
        nonzero_sectors.into_inner()
    );
    Ok(())
}

/// The program: `args` are the command line after the program name.
fn run(args: &[String]) -> Result<(), Box<dyn std::error::Error>> {
    let threads = match args.get(1) {
        Some(n) => n.parse().map_err(|_| format!("THREADS must be a number, not '{n}'"))?,
        None => 4,
    };
    match args.first() {
        Some(path) => read_existing(Path::new(path), threads),
        None => demo(threads),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    run(&args)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn threads_read_the_chain_as_written() {
        for (format, options) in [
            (Format::Vhdx, "block_size=1M"),
            (Format::Vhd, "subformat=dynamic"),
            (Format::Vmdk, "subformat=monolithicSparse"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let (child, expected) = build_chain(dir.path(), format, options, 8 << 20).unwrap();
            let image = open_same_dir(&child).unwrap();
            assert_eq!(image.depth(), 2, "{format}: child and base");
            // Every chunk is checked, and every chunk is read exactly once.
            let seen = Mutex::new(vec![0u8; expected.len()]);
            let per_thread = read_concurrently(&image, 4, |lba, data| {
                let at = lba as usize * 512;
                assert!(
                    data == &expected[at..at + data.len()],
                    "{format}: chunk at sector {lba}"
                );
                seen.lock().unwrap()[at..at + data.len()].copy_from_slice(data);
            })
            .unwrap();
            assert_eq!(per_thread, [32, 32, 32, 32], "{format}: 128 chunks over 4 threads");
            assert!(seen.into_inner().unwrap() == expected, "{format}");
            // Odd thread counts and more threads than chunks.
            for threads in [3, 200] {
                let per_thread = read_concurrently(&image, threads, |lba, data| {
                    let at = lba as usize * 512;
                    assert!(
                        data == &expected[at..at + data.len()],
                        "{format}: chunk at sector {lba}"
                    );
                })
                .unwrap();
                assert_eq!(per_thread.iter().sum::<u64>(), 128);
            }
        }
    }

    #[test]
    fn parents_outside_the_directory_are_refused() {
        for format in [Format::Vhdx, Format::Vhd, Format::Vmdk] {
            let dir = tempfile::tempdir().unwrap();
            for absolute in [false, true] {
                let child = chain_with_outside_parent(dir.path(), format, absolute).unwrap();
                let e = open_same_dir(&child).unwrap_err();
                assert_eq!(
                    e.kind(),
                    ErrorKind::ExternalFileDenied,
                    "{format} (absolute: {absolute}): {e}"
                );
                // The chain itself is sound: a policy that allows any path opens it.
                let any = Arc::new(FsResolver::new(FsPolicy::Any));
                let image = vdisk::open(&child, &OpenOptions::new().resolver(any)).unwrap();
                assert_eq!(image.depth(), 2, "{format} (absolute: {absolute})");
            }
        }
    }

    #[test]
    fn the_default_resolver_refuses_even_a_parent_beside_the_child() {
        let dir = tempfile::tempdir().unwrap();
        let (child, _) = build_chain(dir.path(), Format::Vhdx, "block_size=1M", 4 << 20).unwrap();
        let e = vdisk::open(&child, &OpenOptions::new()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ExternalFileDenied, "{e}");
    }

    #[test]
    fn main_runs_without_arguments_and_with_a_path() {
        run(&[]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (child, _) = build_chain(dir.path(), Format::Vmdk, "", 2 << 20).unwrap();
        run(&[child.to_str().unwrap().to_string(), "3".into()]).unwrap();
        assert!(run(&[child.to_str().unwrap().to_string(), "x".into()]).is_err());
    }
}
