//! Helpers for the integration tests that check the engines against other tools and against real
//! images: one version of each, shared by every crate of the workspace.
//!
//! - Host tools: [`have`], [`tools_available`] / [`qemu_img_available`] (report why a test is
//!   skipped), [`run`] / [`run_tool`] (panic with the tool's output when it fails),
//!   [`qemu_check_and_compare`] (QEMU accepts an image and reads it as a raw file holds),
//!   [`pyvhdi_digest`] (what libyal's libvhdi reads).
//! - Disks: [`read_all`], [`content_digest`] (the digest the manifests record), [`sha256_hex`].
//! - Test data: [`shared_testdata`] locates `../shared/testdata` (or `$VDISK_TESTDATA`);
//!   [`Manifest`] reads a `manifest.json` and [`Manifest::images`] yields its entries with each
//!   image decompressed ([`decompress_xz`]) into a temporary directory.
//! - Skips: [`skip_external`] (a missing tool or the absent test data; fails the test instead
//!   when [`REQUIRE_EXTERNAL`] is set, as CI does) and [`report_skip`] (a host that cannot do
//!   something, e.g. make device nodes). Both write to the process's stderr directly, which the
//!   test harness does not capture: a skip shows in plain `cargo test` output, beside the
//!   test's `ok`, without `--nocapture`.
//!
//! ```no_run
//! use disk_core::testing::interop::{Manifest, content_digest};
//! use disk_core::Format;
//!
//! let Some(manifest) = Manifest::shared("my_test") else { return };
//! let tmp = tempfile::tempdir().unwrap();
//! for (entry, path) in manifest.images(tmp.path(), |e| e.format == Some(Format::Vhd)) {
//!     // open `path`, then compare with entry.virtual_size and entry.content_digest
//! }
//! ```

use crate::{Allocation, Disk, Format, Result, bytes, display_chain};
use sha2::{Digest, Sha256};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The chunk size of [`content_digest`]: 1 MiB.
pub const DIGEST_CHUNK: u64 = 1 << 20;

/// The environment variable that turns skips for lack of external tools or test data into
/// failures: when it is `1` ([`skip_external`]). `.ci/run` sets it, so CI cannot pass with
/// interop tests silently skipped.
pub const REQUIRE_EXTERNAL: &str = "VDISK_REQUIRE_EXTERNAL";

/// Reports on stderr that `test` (or a part of it: say so in `test`) is skipped, and why:
/// `TEST: skipped, REASON`. Written to the process's stderr directly rather than with
/// `eprintln!`, which the test harness captures: the line shows in plain `cargo test` output.
/// For what a host cannot do (device nodes, FIFOs); a missing tool or test data goes through
/// [`skip_external`].
pub fn report_skip(test: &str, reason: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{test}: skipped, {reason}");
}

/// `test` (or a part of it) cannot run because an external tool or the shared test data is
/// missing (`reason`): reported as [`report_skip`] does, or, when [`REQUIRE_EXTERNAL`] is `1`,
/// a panic that fails the test.
#[track_caller]
pub fn skip_external(test: &str, reason: &str) {
    if std::env::var_os(REQUIRE_EXTERNAL).is_some_and(|v| v == "1") {
        panic!("{test}: {reason}, and {REQUIRE_EXTERNAL}=1 requires it");
    }
    report_skip(test, reason);
}

/// Whether `tool --version` (or `tool -V`, libyal's tools' spelling) runs and exits 0.
pub fn have(tool: &str) -> bool {
    ["--version", "-V"]
        .into_iter()
        .any(|flag| Command::new(tool).arg(flag).output().is_ok_and(|o| o.status.success()))
}

/// Whether every one of `tools` is installed ([`have`]). When one is missing, reports
/// `TEST: skipped, TOOL is not installed` through [`skip_external`] (a failure under
/// [`REQUIRE_EXTERNAL`]).
#[track_caller]
pub fn tools_available(test: &str, tools: &[&str]) -> bool {
    match tools.iter().find(|tool| !have(tool)) {
        Some(missing) => {
            skip_external(test, &format!("{missing} is not installed"));
            false
        }
        None => true,
    }
}

/// Whether `qemu-img` is installed; reports why `test` is skipped otherwise ([`tools_available`]).
#[track_caller]
pub fn qemu_img_available(test: &str) -> bool {
    tools_available(test, &["qemu-img"])
}

/// Runs `cmd` and returns its stdout as text. Panics, showing the command, its stdout and its
/// stderr, when it cannot be started or exits with a failure status.
#[track_caller]
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: cannot run: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `program` with `args` through [`run`]: stdout as text, a panic on failure.
#[track_caller]
pub fn run_tool<I, S>(program: &str, args: I) -> String
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    run(Command::new(program).args(args))
}

/// QEMU accepts `image` (format `format`, QEMU's name: `vpc`, `vhdx`, `vmdk`, ...) and reads
/// exactly what the raw file `raw` holds: `qemu-img check -f FORMAT IMAGE` finds no errors (exit
/// 63, "this format has no check", as for `vpc`, passes) and `qemu-img compare -f FORMAT -F raw
/// IMAGE RAW` reports them identical. Panics, with QEMU's output, otherwise.
#[track_caller]
pub fn qemu_check_and_compare(image: &Path, format: &str, raw: &Path) {
    let check = Command::new("qemu-img")
        .args(["check", "-f", format])
        .arg(image)
        .output()
        .unwrap_or_else(|e| panic!("running qemu-img: {e}"));
    assert!(
        matches!(check.status.code(), Some(0 | 63)),
        "qemu-img check -f {format} {} failed ({}):\n{}{}",
        image.display(),
        check.status,
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    run(Command::new("qemu-img")
        .args(["compare", "-f", format, "-F", "raw"])
        .arg(image)
        .arg(raw));
}

/// The sha256 of `data`, as lowercase hex.
pub fn sha256_hex(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

/// The whole guest view of `disk`, in memory (only for small test disks). Panics when a read
/// fails.
#[track_caller]
pub fn read_all(disk: &dyn Disk) -> Vec<u8> {
    let len = usize::try_from(disk.virtual_size()).expect("the disk fits in memory");
    let mut data = vec![0u8; len];
    bytes::read_bytes(disk, 0, &mut data).unwrap_or_else(|e| panic!("reading the whole disk: {}", display_chain(&e)));
    data
}

/// The content digest the test-data manifests record for a disk (their `content_digest`; the
/// `digest` function of `testdata/generate.sh` computes the same): sha256 over every
/// [`DIGEST_CHUNK`] (1 MiB) chunk of the guest view that is not all zeros, each preceded by its
/// chunk index as 8 little-endian bytes. The last chunk may be short. An all-zero disk digests
/// to `e3b0c442...`, the sha256 of nothing.
///
/// Runs that [`Disk::block_status`] reports as holding no data (zero or unallocated) are
/// skipped without reading, so sparse multi-GiB images digest quickly.
///
/// # Errors
///
/// The first error of a block-status query or a read: a disk that must be refused when read
/// (a missing parent, damaged tables) makes the digest fail.
pub fn content_digest(disk: &dyn Disk) -> Result<String> {
    let size = disk.virtual_size();
    let sector = u64::from(disk.sector_size());
    let sectors = disk.sector_count();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; DIGEST_CHUNK as usize];
    let mut chunk = 0u64;
    while chunk * DIGEST_CHUNK < size {
        let start = chunk * DIGEST_CHUNK;
        let len = DIGEST_CHUNK.min(size - start);
        // Walk the runs without data from the chunk's first sector; they may reach far past it.
        let end = (start + len).div_ceil(sector).min(sectors);
        let mut lba = start / sector;
        while lba < end {
            let status = disk.block_status(lba, sectors - lba)?;
            if status.allocation == Allocation::Data {
                break;
            }
            lba += status.sectors.max(1);
        }
        if lba >= end {
            // No data in this chunk: continue at the chunk where the hole ends.
            chunk = (lba * sector / DIGEST_CHUNK).max(chunk + 1);
            continue;
        }
        let piece = &mut buf[..len as usize];
        bytes::read_bytes(disk, start, piece)?;
        if piece.iter().any(|&b| b != 0) {
            hasher.update(chunk.to_le_bytes());
            hasher.update(&*piece);
        }
        chunk += 1;
    }
    Ok(format!("{:x}", hasher.finalize()))
}

/// `(sha256 of the guest view, media size)` of a VHD or VHDX image as libyal's libvhdi reads it
/// (the `pyvhdi` Python bindings), with `parent` attached for a differencing image; `None` when
/// no `python3` can import `pyvhdi`.
///
/// Reads are 64 KiB: libvhdi 20210425 misreads differencing images in reads that cross a block
/// boundary.
pub fn pyvhdi_digest(image: &Path, parent: Option<&Path>) -> Option<(String, u64)> {
    const SCRIPT: &str = r#"
import hashlib, sys, pyvhdi
f = pyvhdi.file(); f.open(sys.argv[1])
if len(sys.argv) > 2:
    p = pyvhdi.file(); p.open(sys.argv[2]); f.set_parent(p)
h = hashlib.sha256(); size = f.get_media_size(); pos = 0
while pos < size:
    b = f.read_buffer_at_offset(min(1 << 16, size - pos), pos); h.update(b); pos += len(b)
print(h.hexdigest(), size)
"#;
    let python = ["/usr/bin/python3", "python3"].into_iter().find(|p| {
        Command::new(p)
            .args(["-c", "import pyvhdi"])
            .output()
            .is_ok_and(|o| o.status.success())
    })?;
    let mut cmd = Command::new(python);
    cmd.args(["-c", SCRIPT]).arg(image);
    if let Some(p) = parent {
        cmd.arg(p);
    }
    let text = run(&mut cmd);
    let (digest, size) = text
        .trim()
        .split_once(' ')
        .unwrap_or_else(|| panic!("pyvhdi: unexpected output {text:?}"));
    Some((digest.to_string(), size.parse().expect("pyvhdi prints the media size")))
}

/// The directory of real images made by other tools: `$VDISK_TESTDATA` when set, else
/// `../shared/testdata` beside the workspace. `None` when it holds no `manifest.json`.
pub fn shared_testdata() -> Option<PathBuf> {
    let dir = shared_testdata_dir();
    dir.join("manifest.json").is_file().then_some(dir)
}

/// Where [`shared_testdata`] looks.
fn shared_testdata_dir() -> PathBuf {
    std::env::var_os("VDISK_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata"))
}

/// Decompresses `src` (`NAME.xz`) with `xz -dc` into `NAME` in the directory `into`, returning
/// the new file's path. Panics when `xz` fails.
#[track_caller]
pub fn decompress_xz(src: &Path, into: &Path) -> PathBuf {
    let name = src.file_name().expect("a file name").to_string_lossy();
    let out = into.join(name.strip_suffix(".xz").unwrap_or(&name));
    let file = std::fs::File::create(&out).unwrap_or_else(|e| panic!("{}: {e}", out.display()));
    let status = Command::new("xz")
        .arg("-dc")
        .arg(src)
        .stdout(file)
        .status()
        .unwrap_or_else(|e| panic!("running xz: {e}"));
    assert!(status.success(), "xz -dc {} failed", src.display());
    out
}

/// What a manifest entry's image must do (`expect`; `ok` when absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Must open and read: virtual size and content digest as recorded.
    Ok,
    /// Must be refused with a clear error, at open or when read; never a panic or a huge
    /// allocation.
    Error,
    /// Its parent is missing: `info` must work and show the parent; reading must fail cleanly.
    Info,
    /// Damaged checksums: refused cleanly, or readable when opened leniently.
    Lenient,
    /// A subformat beyond the first goals: read as recorded, or refused as unsupported.
    Stretch,
}

/// One image of a `manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestEntry {
    /// Relative to the manifest's directory, e.g. `qemu-iotests/iotest-dynamic-1G.vhdx.xz`.
    pub path: String,
    /// What the image must do.
    pub expect: Expect,
    /// The image's format: the entry's `format`, else what its name says (`vhd`/`vhdf`: VHD,
    /// `vhdx`/`avhdx`: VHDX, `vmdk`/`img`: VMDK, `raw`), `None` for another extension.
    pub format: Option<Format>,
    /// The guest-visible size in bytes, as QEMU computes it.
    pub virtual_size: Option<u64>,
    /// The [`content_digest`] of the guest view (after log replay for a dirty VHDX).
    pub content_digest: Option<String>,
    /// A VHDX whose log must be replayed (it is dirty).
    pub replay: bool,
    /// The tool that wrote the image.
    pub creator: Option<String>,
    /// What makes the image interesting.
    pub note: Option<String>,
}

impl ManifestEntry {
    /// The image's file name once decompressed: the last component of `path` without `.xz`.
    pub fn name(&self) -> &str {
        let name = self.path.rsplit('/').next().unwrap_or(&self.path);
        name.strip_suffix(".xz").unwrap_or(name)
    }

    fn parse(value: &serde_json::Value) -> ManifestEntry {
        let text = |key: &str| value.get(key).and_then(|v| v.as_str()).map(str::to_string);
        let path = text("path").unwrap_or_else(|| panic!("manifest entry without a path: {value}"));
        let expect = match text("expect").as_deref() {
            None | Some("ok") => Expect::Ok,
            Some("error") => Expect::Error,
            Some("info") => Expect::Info,
            Some("lenient") => Expect::Lenient,
            Some("stretch") => Expect::Stretch,
            Some(other) => panic!("{path}: unknown expectation {other:?}"),
        };
        let format = match text("format") {
            Some(name) => Some(name.parse().unwrap_or_else(|e| panic!("{path}: {e}"))),
            None => format_by_name(&path),
        };
        ManifestEntry {
            expect,
            format,
            virtual_size: value.get("virtual_size").and_then(|v| v.as_u64()),
            content_digest: text("content_digest"),
            replay: value.get("replay").and_then(|v| v.as_bool()) == Some(true),
            creator: text("creator"),
            note: text("note"),
            path,
        }
    }
}

/// The format the manifests' file names say: by extension, ignoring `.xz`.
fn format_by_name(path: &str) -> Option<Format> {
    let name = path.strip_suffix(".xz").unwrap_or(path);
    let ext = Path::new(name).extension()?.to_str()?.to_ascii_lowercase();
    match ext.as_str() {
        "vhd" | "vhdf" => Some(Format::Vhd),
        "vhdx" | "avhdx" => Some(Format::Vhdx),
        "vmdk" | "img" => Some(Format::Vmdk),
        "raw" => Some(Format::Raw),
        _ => None,
    }
}

/// A `manifest.json`: the images of a test-data directory and what each must do.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The directory holding `manifest.json` and the images.
    pub dir: PathBuf,
    /// The entries, in the manifest's order.
    pub entries: Vec<ManifestEntry>,
}

impl Manifest {
    /// Reads `dir/manifest.json` (a JSON array of entries). Panics when it is missing or
    /// malformed.
    #[track_caller]
    pub fn load(dir: &Path) -> Manifest {
        let file = dir.join("manifest.json");
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let entries = json
            .as_array()
            .unwrap_or_else(|| panic!("{}: not an array", file.display()))
            .iter()
            .map(ManifestEntry::parse)
            .collect();
        Manifest {
            dir: dir.to_path_buf(),
            entries,
        }
    }

    /// The manifest of [`shared_testdata`]. `None`, after reporting why `test` is skipped
    /// ([`skip_external`]: a failure under [`REQUIRE_EXTERNAL`]), when the directory is absent
    /// or `xz` (which its images need) is not installed.
    #[track_caller]
    pub fn shared(test: &str) -> Option<Manifest> {
        let Some(dir) = shared_testdata() else {
            let reason = format!(
                "no test data: {} has no manifest.json (set VDISK_TESTDATA to the directory)",
                shared_testdata_dir().display()
            );
            skip_external(test, &reason);
            return None;
        };
        tools_available(test, &["xz"]).then(|| Manifest::load(&dir))
    }

    /// The image of `entry`, usable in place: decompressed into `into` when it is `.xz`,
    /// else the file in the manifest's directory itself (which must then not be written).
    #[track_caller]
    pub fn unpack(&self, entry: &ManifestEntry, into: &Path) -> PathBuf {
        let src = self.dir.join(&entry.path);
        if entry.path.ends_with(".xz") {
            decompress_xz(&src, into)
        } else {
            src
        }
    }

    /// The entries `filter` accepts, in order, each with its image [unpacked](Self::unpack).
    ///
    /// Each compressed image is decompressed into its own subdirectory of `into` (names
    /// repeat across sources, and a differencing image must not find another's file as its
    /// parent), which is deleted when the iterator moves on, so `into` holds one image at a
    /// time. Tests may write into these copies.
    pub fn images<'a, F>(
        &'a self,
        into: &'a Path,
        mut filter: F,
    ) -> impl Iterator<Item = (&'a ManifestEntry, PathBuf)> + 'a
    where
        F: FnMut(&ManifestEntry) -> bool + 'a,
    {
        let mut previous: Option<PathBuf> = None;
        self.entries
            .iter()
            .enumerate()
            .filter(move |(_, entry)| filter(entry))
            .map(move |(index, entry)| {
                if let Some(dir) = previous.take() {
                    let _ = std::fs::remove_dir_all(dir);
                }
                if !entry.path.ends_with(".xz") {
                    return (entry, self.dir.join(&entry.path));
                }
                let dir = into.join(format!("image{index}"));
                std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
                let path = self.unpack(entry, &dir);
                previous = Some(dir);
                (entry, path)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Image, MemStorage, RawLayer, Storage};
    use std::sync::Arc;

    /// A raw in-memory disk of `size` bytes holding `pieces` of (offset, bytes).
    fn raw_disk(size: u64, pieces: &[(u64, &[u8])]) -> Image {
        let storage = Arc::new(MemStorage::new());
        storage.set_len(size).unwrap();
        for &(offset, data) in pieces {
            storage.write_at(data, offset).unwrap();
        }
        Image::single(Box::new(RawLayer::open(storage, false).unwrap()), None)
    }

    #[test]
    fn sha256_known_answers() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            sha256_hex(&[b'a'; 1_000_000]),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"
        );
    }

    #[test]
    fn digest_of_an_all_zero_disk_is_the_digest_of_nothing() {
        let disk = raw_disk(5 << 20, &[]);
        assert_eq!(content_digest(&disk).unwrap(), sha256_hex(b""));
        // Zeros written as data are skipped too.
        let zeros = vec![0u8; 3 << 20];
        let disk = raw_disk(5 << 20, &[(1 << 20, &zeros)]);
        assert_eq!(content_digest(&disk).unwrap(), sha256_hex(b""));
    }

    /// Known answer computed independently with Python's hashlib, as `testdata/generate.sh`
    /// does:
    ///
    /// ```python
    /// import hashlib
    /// MiB = 1 << 20
    /// data = bytearray(3 * MiB + 4096)
    /// data[0:3] = b"abc"; data[2 * MiB + 512:2 * MiB + 1024] = b"\x5a" * 512
    /// data[3 * MiB + 4095] = 0xff
    /// h = hashlib.sha256()
    /// for i in range(0, len(data), MiB):
    ///     c = bytes(data[i:i + MiB])
    ///     if c.strip(b"\0"):
    ///         h.update((i // MiB).to_bytes(8, "little")); h.update(c)
    /// print(h.hexdigest())
    /// ```
    #[test]
    fn digest_known_answer() {
        let disk = raw_disk(
            (3 << 20) + 4096,
            &[
                (0, b"abc"),
                ((2 << 20) + 512, &[0x5a; 512]),
                ((3 << 20) + 4095, &[0xff]),
            ],
        );
        assert_eq!(
            content_digest(&disk).unwrap(),
            "ed1eceb6569fe47036aeb8aff180f05bb37d08bd37e57a2bdbf95616e6895f1d"
        );
    }

    /// A disk whose block status reports the middle as a hole, longer than a chunk and not
    /// ending on a chunk boundary: the chunk where the hole ends is still read.
    #[test]
    fn holes_ending_inside_a_chunk_are_read_after() {
        let data = [0x11u8; 512];
        let storage = Arc::new(MemStorage::new());
        storage.set_len(8 << 20).unwrap();
        storage.write_at(&data, (5 << 20) + (512 << 10) + 4096).unwrap();
        let disk = Image::single(Box::new(RawLayer::open(storage, false).unwrap()), None);
        let hole = disk.block_status(0, disk.sector_count()).unwrap();
        assert_ne!(hole.allocation, Allocation::Data);
        assert!(hole.sectors > 2048 && !hole.sectors.is_multiple_of(2048), "{hole:?}");
        let mut expected = Sha256::new();
        let mut chunk = vec![0u8; 1 << 20];
        chunk[(512 << 10) + 4096..(512 << 10) + 4096 + 512].copy_from_slice(&data);
        expected.update(5u64.to_le_bytes());
        expected.update(&chunk);
        assert_eq!(content_digest(&disk).unwrap(), format!("{:x}", expected.finalize()));
    }

    #[test]
    fn read_all_reads_the_guest_view() {
        let disk = raw_disk(8192, &[(4096, b"xyz")]);
        let data = read_all(&disk);
        assert_eq!(data.len(), 8192);
        assert_eq!(&data[4096..4099], b"xyz");
        assert!(data[..4096].iter().all(|&b| b == 0));
    }

    #[test]
    fn manifest_entries_parse_and_name_their_format() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("manifest.json"),
            r#"[
                {"path": "a/x.vhdx.xz", "expect": "info", "virtual_size": 42},
                {"path": "b/y.img.xz", "expect": "ok", "content_digest": "00", "replay": true},
                {"path": "plain.bin", "format": "vpc"}
            ]"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("plain.bin"), b"raw").unwrap();
        let manifest = Manifest::load(dir.path());
        let [a, b, c] = &manifest.entries[..] else {
            panic!("{:?}", manifest.entries)
        };
        assert_eq!(
            (a.expect, a.format, a.virtual_size, a.name()),
            (Expect::Info, Some(Format::Vhdx), Some(42), "x.vhdx")
        );
        assert_eq!(
            (b.format, b.replay, b.content_digest.as_deref()),
            (Some(Format::Vmdk), true, Some("00"))
        );
        assert_eq!((c.expect, c.format), (Expect::Ok, Some(Format::Vhd)));
        // Uncompressed images are used in place.
        let tmp = tempfile::tempdir().unwrap();
        let images: Vec<_> = manifest.images(tmp.path(), |e| e.format == Some(Format::Vhd)).collect();
        assert_eq!(images, [(c, dir.path().join("plain.bin"))]);
    }

    #[test]
    fn xz_images_are_unpacked_one_at_a_time() {
        if !tools_available("xz_images_are_unpacked_one_at_a_time", &["xz"]) {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in [("one.vhd", "first"), ("two.vhd", "second")] {
            std::fs::create_dir_all(dir.path().join("sub")).unwrap();
            let path = dir.path().join("sub").join(name);
            std::fs::write(&path, text).unwrap();
            run(Command::new("xz").arg(&path));
        }
        std::fs::write(
            dir.path().join("manifest.json"),
            r#"[{"path": "sub/one.vhd.xz"}, {"path": "sub/two.vhd.xz"}]"#,
        )
        .unwrap();
        let manifest = Manifest::load(dir.path());
        let tmp = tempfile::tempdir().unwrap();
        let mut seen = Vec::new();
        let mut last: Option<PathBuf> = None;
        for (entry, path) in manifest.images(tmp.path(), |_| true) {
            if let Some(last) = &last {
                assert!(!last.exists(), "the previous image is gone");
            }
            assert_eq!(path.file_name().unwrap().to_str(), Some(entry.name()));
            seen.push(std::fs::read_to_string(&path).unwrap());
            last = Some(path);
        }
        assert_eq!(seen, ["first", "second"]);
    }

    #[test]
    fn qemu_accepts_a_raw_image_as_itself_only() {
        if !qemu_img_available("qemu_accepts_a_raw_image_as_itself_only") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let (image, same, other) = (dir.path().join("i"), dir.path().join("s"), dir.path().join("o"));
        std::fs::write(&image, [7u8; 4096]).unwrap();
        std::fs::write(&same, [7u8; 4096]).unwrap();
        std::fs::write(&other, [8u8; 4096]).unwrap();
        // `raw` has no check: exit 63 passes.
        qemu_check_and_compare(&image, "raw", &same);
        let differs = std::panic::catch_unwind(|| qemu_check_and_compare(&image, "raw", &other));
        assert!(differs.is_err(), "different contents must fail the compare");
    }

    #[test]
    fn run_returns_stdout_and_panics_on_failure() {
        assert_eq!(run_tool("sh", ["-c", "echo hi"]), "hi\n");
        let failed = std::panic::catch_unwind(|| run_tool("sh", ["-c", "echo oops >&2; exit 3"]));
        let message = failed.unwrap_err();
        let message = message.downcast_ref::<String>().unwrap();
        assert!(message.contains("oops"), "{message}");
        assert!(!have("surely-not-an-installed-tool"));
    }
}
