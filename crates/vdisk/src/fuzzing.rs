//! The bodies of the fuzz targets in `fuzz/`, shared with a stable-toolchain test
//! (`tests/fuzz_corpus.rs`) that replays the committed corpus, so a regression input fails
//! `cargo test` without nightly or cargo-fuzz.
//!
//! Every target must return normally for every input: errors are fine, panics (including the
//! contract checks below) are bugs.

use crate::{
    Allocation, Disk, Error, ErrorKind, Format, Image, MemStorage, OpenOptions, Repair, Resolver, Storage,
    open_storage, probe,
};
use disk_core::{CreateSpec, FileRequest, MemResolver, Opened, Options};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

/// Inputs longer than this are ignored (a fuzzer gains nothing from them).
pub const MAX_INPUT: usize = 16 << 20;

/// At most this many bytes of the virtual disk are read per opened image.
pub const MAX_READ: u64 = 64 << 20;

/// At most this many `block_status` runs are visited per opened image.
const MAX_RUNS: u32 = 4096;

/// The largest single read.
const MAX_CHUNK: u64 = 1 << 20;

/// A fuzz target: takes the raw input bytes.
pub type Target = fn(&[u8]);

/// Every target by its name, which is also its directory under `fuzz/corpus/`.
pub fn targets() -> &'static [(&'static str, Target)] {
    &[
        ("multi_file", multi_file),
        ("ops_vhd", ops_vhd),
        ("ops_vhdx", ops_vhdx),
        ("ops_vmdk", ops_vmdk),
        ("probe_open", probe_open),
        ("vhdx_log", vhdx_log),
        ("vmdk_descriptor", vmdk_descriptor),
    ]
}

/// Treat `data` as an image held in memory (its length the limit, so nothing can grow it):
/// probe it, then open it read-only (probed, and as each format in turn) with the default
/// resolver, which refuses every parent and extent file. For each image that opens: `info`,
/// `check`, and a walk over the disk by `block_status`, reading data runs in bounded chunks
/// (at most [`MAX_READ`] bytes, `MAX_RUNS` runs) and the first sector of the other runs. Then a
/// writable copy gets a few writes, which must read back after a flush and a reopen.
pub fn probe_open(data: &[u8]) {
    if data.len() > MAX_INPUT {
        return;
    }
    let storage = MemStorage::with_limit(data.len() as u64);
    if storage.write_at(data, 0).is_err() {
        return;
    }
    let storage: Arc<dyn Storage> = Arc::new(storage);
    let _ = probe(&*storage, None);
    for format in std::iter::once(None).chain(Format::ALL.into_iter().map(Some)) {
        let options = OpenOptions::new().format(format);
        if let Ok(image) = open_storage(storage.clone(), None, &options) {
            exercise(&image);
        }
    }
    write_a_few(data);
}

/// How much a writable copy may grow while a few sectors are written (new blocks, logs).
const WRITE_GROWTH: u64 = 64 << 20;

/// Separates the files of a [`multi_file`] input: the image first, then the files it may name.
pub const FILE_SEPARATOR: &[u8] = b"--vdisk-fuzz-file--";

/// At most this many extra files in a [`multi_file`] input.
const MAX_EXTRA_FILES: usize = 8;

/// A resolver for fuzzing: each distinct name an image asks for gets the next unused file of
/// the input, so the fuzzer reaches parents and extents without guessing their names. Files
/// are in memory with a size limit; nothing on the host is ever opened.
#[derive(Debug)]
struct PoolResolver {
    pool: Vec<Arc<MemStorage>>,
    given: Mutex<HashMap<String, usize>>,
}

impl PoolResolver {
    fn new(parts: &[&[u8]]) -> Option<Self> {
        let mut pool = Vec::new();
        for part in parts {
            let storage = MemStorage::with_limit(part.len() as u64 + WRITE_GROWTH);
            storage.write_at(part, 0).ok()?;
            pool.push(Arc::new(storage));
        }
        Some(PoolResolver {
            pool,
            given: Mutex::new(HashMap::new()),
        })
    }
}

impl Resolver for PoolResolver {
    fn open(&self, request: &FileRequest<'_>) -> crate::Result<Opened> {
        let mut given = disk_core::sync::lock(&self.given);
        let next = given.len();
        let index = *given.entry(request.recorded.to_string()).or_insert(next);
        match self.pool.get(index) {
            Some(storage) => Ok(Opened {
                storage: storage.clone(),
                path: PathBuf::from(format!("fuzz-file-{index}")),
            }),
            None => Err(Error::new(ErrorKind::NotFound, "no such file in the fuzz input")),
        }
    }
}

/// Split a [`multi_file`] input into the image and up to [`MAX_EXTRA_FILES`] other files.
fn split_files(data: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut rest = data;
    while parts.len() < MAX_EXTRA_FILES {
        match rest.windows(FILE_SEPARATOR.len()).position(|w| w == FILE_SEPARATOR) {
            Some(at) => {
                parts.push(&rest[..at]);
                rest = &rest[at + FILE_SEPARATOR.len()..];
            }
            None => break,
        }
    }
    parts.push(rest);
    parts
}

/// An image with the files it names: the input is the image, then other files, separated by
/// [`FILE_SEPARATOR`]; every name the image records (parent, extent) is served the next file
/// (see `PoolResolver`). Opened read-only (probed, then as each format) and exercised like
/// [`probe_open`]; then a writable copy with copies of the files gets a few writes that must
/// read back, and must not change which files the image names.
pub fn multi_file(data: &[u8]) {
    if data.len() > MAX_INPUT {
        return;
    }
    let parts = split_files(data);
    let (image_bytes, files) = parts.split_first().expect("split gives at least one part");
    let storage = MemStorage::with_limit(image_bytes.len() as u64);
    if storage.write_at(image_bytes, 0).is_err() {
        return;
    }
    let storage: Arc<dyn Storage> = Arc::new(storage);
    for format in std::iter::once(None).chain(Format::ALL.into_iter().map(Some)) {
        let Some(resolver) = PoolResolver::new(files) else {
            return;
        };
        let mut options = OpenOptions::new().format(format).resolver(Arc::new(resolver));
        options.missing_parent = crate::MissingParent::Placeholder;
        if let Ok(image) = open_storage(storage.clone(), Some(std::path::Path::new("fuzz-image")), &options) {
            exercise(&image);
        }
    }
    if let Some(resolver) = PoolResolver::new(files) {
        write_a_few_with(image_bytes, Arc::new(resolver));
    }
}

/// Open a writable copy of `data` (probed), write a pattern to the first, a middle and the last
/// sector, flush, reopen read-only and check that whatever was accepted reads back: a hostile
/// image may refuse writes, never corrupt what it accepted or panic.
fn write_a_few(data: &[u8]) {
    write_a_few_with(data, Arc::new(crate::DenyExternal));
}

/// [`write_a_few`] with the files the image names served by `resolver`. The writes must not
/// change which parent the image names (a guest write landing on metadata could).
fn write_a_few_with(data: &[u8], resolver: Arc<dyn Resolver>) {
    let storage = MemStorage::with_limit(data.len() as u64 + WRITE_GROWTH);
    if storage.write_at(data, 0).is_err() {
        return;
    }
    let storage: Arc<dyn Storage> = Arc::new(storage);
    let name = Some(std::path::Path::new("fuzz-image"));
    let options = OpenOptions::new().writable(true).resolver(resolver.clone());
    let Ok(image) = open_storage(storage.clone(), name, &options) else {
        return;
    };
    let parent_before = image.top().parent().cloned();
    let n = image.sector_count();
    let ss = image.sector_size() as usize;
    let mut written = Vec::new();
    for (i, lba) in [0, n / 2, n.saturating_sub(1)].into_iter().enumerate() {
        if lba >= n || written.iter().any(|&(l, _)| l == lba) {
            continue;
        }
        let pattern = 0xa0 + i as u8;
        if image.write(lba, &vec![pattern; ss]).is_ok() {
            written.push((lba, pattern));
        }
    }
    if image.flush().is_err() {
        return;
    }
    drop(image);
    let mut options = OpenOptions::new().resolver(resolver);
    options.missing_parent = crate::MissingParent::Placeholder;
    let image = match open_storage(storage, name, &options) {
        Ok(image) => image,
        Err(e) => panic!("an image that accepted writes and a flush no longer opens: {e}"),
    };
    assert_eq!(
        image.top().parent().cloned(),
        parent_before,
        "guest writes changed the parent the image names"
    );
    let mut buf = vec![0u8; ss];
    for (lba, pattern) in written {
        // A raw file of odd length keeps its length: only the part inside it holds data.
        let inside = image.virtual_size().saturating_sub(lba * ss as u64).min(ss as u64) as usize;
        if image.read(lba, &mut buf).is_ok() {
            assert!(
                buf[..inside].iter().all(|&b| b == pattern),
                "sector {lba} does not read back what was written"
            );
        }
    }
}

/// Read through an opened image within the budgets, checking the [`Disk`] contract.
fn exercise(image: &Image) {
    let _ = image.info();
    for (layer, _) in image.layers() {
        let _ = layer.info();
        let _ = layer.check(Repair::None);
    }
    let ss = u64::from(image.sector_size());
    assert!(ss == 512 || ss == 4096, "sector size {ss}");
    assert!(image.is_read_only(), "opened read-only but writable");
    let n = image.sector_count();
    let mut one = vec![0u8; ss as usize];
    assert!(image.read(n, &mut one).is_err(), "read past the end succeeded");
    assert!(image.block_status(n, 1).is_err(), "block_status past the end succeeded");
    if n > 0 {
        let _ = image.read(n - 1, &mut one);
    }

    let mut budget = MAX_READ;
    let mut buf = Vec::new();
    let mut lba = 0u64;
    for _ in 0..MAX_RUNS {
        if lba >= n || budget < ss {
            break;
        }
        let Ok(st) = image.block_status(lba, n - lba) else {
            break;
        };
        assert!(
            st.sectors >= 1 && st.sectors <= n - lba,
            "block_status({lba}, {}) returned a run of {} sectors",
            n - lba,
            st.sectors
        );
        let data = st.allocation == Allocation::Data;
        let sectors = if data {
            st.sectors.min(MAX_CHUNK / ss).min(budget / ss)
        } else {
            1
        };
        buf.resize((sectors * ss) as usize, 0);
        if image.read(lba, &mut buf).is_ok() && !data {
            assert!(
                buf.iter().all(|&b| b == 0),
                "sector {lba} is {:?} by block_status but does not read as zeros",
                st.allocation
            );
        }
        budget -= sectors * ss;
        lba += if data { sectors } else { st.sectors };
    }
}

/// Scan `data` as a VHDX log, as opening an image does: the input is the log GUID (16 bytes),
/// the image file's length (8 bytes, little-endian), then the log (cut to whole 4 KiB pages).
/// Whatever the log holds, the scan returns (a damaged log is an error), and what it finds
/// stays within the bounds the scan promises.
pub fn vhdx_log(data: &[u8]) {
    if data.len() > MAX_INPUT || data.len() < 24 {
        return;
    }
    let (head, log) = data.split_at(24);
    let mut guid = [0u8; 16];
    guid.copy_from_slice(&head[..16]);
    let mut len = [0u8; 8];
    len.copy_from_slice(&head[16..]);
    let file_len = u64::from_le_bytes(len);
    let log = &log[..log.len() / 4096 * 4096];
    if let Ok(Some(summary)) = crate::vhdx::scan_log(log, disk_core::guid::MsGuid(guid), file_len) {
        assert!(
            summary.entries >= 1 && summary.entries <= log.len() / 4096,
            "{summary:?}"
        );
        assert!(summary.changes <= log.len() / 16, "{summary:?}");
    }
}

/// Parse `data` as a VMDK text descriptor; whatever parses must render to text that parses
/// back to the same entries and extents (the writer keeps what the reader understood).
pub fn vmdk_descriptor(data: &[u8]) {
    if data.len() > MAX_INPUT {
        return;
    }
    let Ok(parsed) = crate::vmdk::descriptor::Descriptor::parse(data) else {
        return;
    };
    let text = parsed.render();
    let again = crate::vmdk::descriptor::Descriptor::parse(text.as_bytes())
        .unwrap_or_else(|e| panic!("a rendered descriptor does not parse: {e}\n{text}"));
    assert!(
        parsed.entries().eq(again.entries()),
        "entries changed by a render/parse round trip"
    );
    assert_eq!(
        parsed.extents(),
        again.extents(),
        "extents changed by a render/parse round trip"
    );
}

/// One operation of an [`ops_vhd`]-style sequence, decoded from 8 input bytes.
#[derive(Debug, Clone, Copy)]
enum Op {
    Write { lba: u64, count: u64, pattern: u8 },
    Zeroes { lba: u64, count: u64 },
    Discard { lba: u64, count: u64 },
    Flush,
    Reopen,
}

impl Op {
    fn decode(b: &[u8], sectors: u64) -> Op {
        let lba = u64::from(u32::from_le_bytes([b[1], b[2], b[3], b[4]])) % sectors.max(1);
        let count = (u64::from(b[5]) % 64 + 1).min(sectors - lba);
        match b[0] % 8 {
            0..=2 => Op::Write {
                lba,
                count,
                pattern: b[7] | 1,
            },
            3 => Op::Zeroes { lba, count },
            4 => Op::Discard { lba, count },
            5 | 6 => Op::Flush,
            _ => Op::Reopen,
        }
    }
}

/// At most this many operations per input.
const MAX_OPS: usize = 256;

/// New images the ops targets start from, by format: `(-o options, virtual size)`.
fn fresh_variants(format: Format) -> &'static [(&'static str, u64)] {
    match format {
        Format::Vhd => &[
            ("subformat=dynamic", 6 << 20),
            ("subformat=fixed", 3 << 20),
            ("block_size=512K", 5 << 20),
        ],
        Format::Vhdx => &[
            ("", 6 << 20),
            ("block_size=1M,log_size=1M", 5 << 20),
            ("subformat=fixed", 3 << 20),
        ],
        Format::Vmdk => &[
            ("", 6 << 20),
            ("subformat=monolithicFlat", 3 << 20),
            ("subformat=twoGbMaxExtentSparse", 5 << 20),
        ],
        _ => &[("", 3 << 20)],
    }
}

/// Write, zero, discard, flush and reopen sequences against a model, on a new image of `format`
/// (input byte 0, bit 0 clear; bits 1..3 choose the options) or on the input's own image (bit 0
/// set: the bytes after the operations). Input: flags, the operation count `n` (byte 1), then
/// `n` operations of 8 bytes. On a new image every operation must succeed; on a hostile one an
/// operation may fail, but what was accepted must read back, also after a reopen, and the image
/// must keep naming the same parent.
fn ops(format: Format, data: &[u8]) {
    if data.len() > MAX_INPUT || data.len() < 2 {
        return;
    }
    let own_image = data[0] & 1 == 1;
    let n = usize::from(data[1]).min(MAX_OPS).min((data.len() - 2) / 8);
    let (op_bytes, rest) = data[2..].split_at(n * 8);
    let files = Arc::new(MemResolver::new());
    let storage = MemStorage::with_limit(if own_image { rest.len() as u64 } else { 0 } + WRITE_GROWTH);
    if own_image {
        if storage.write_at(rest, 0).is_err() {
            return;
        }
    } else {
        let variants = fresh_variants(format);
        let (opts, size) = variants[usize::from(data[0] >> 1) % variants.len()];
        let spec = CreateSpec {
            size,
            options: Options::parse(opts).expect("fixed option strings parse"),
            backing: None,
            path: Some(std::path::Path::new("fuzz-image")),
            files: &*files,
        };
        if let Err(e) = crate::driver(format).and_then(|d| d.create(&storage, spec)) {
            panic!("creating a {format} image with '{opts}' failed: {e}");
        }
    }
    let storage: Arc<dyn Storage> = Arc::new(storage);
    let name = Some(std::path::Path::new("fuzz-image"));
    let options = OpenOptions::new()
        .writable(true)
        .format(Some(format))
        .resolver(files.clone());
    let open = || open_storage(storage.clone(), name, &options);
    let mut image = match open() {
        Ok(image) => image,
        Err(_) if own_image => return,
        Err(e) => panic!("a new {format} image does not open: {e}"),
    };
    let parent = image.top().parent().cloned();
    let ss = u64::from(image.sector_size());
    let sectors = image.sector_count();
    if sectors == 0 {
        return;
    }
    // What sectors must hold: bounded by MAX_OPS * 64 entries.
    let mut model: BTreeMap<u64, u8> = BTreeMap::new();
    let must = |r: crate::Result<()>, what: &str| {
        if let Err(e) = &r {
            assert!(own_image, "{what} on a new {format} image failed: {e}");
        }
        r.is_ok()
    };
    for chunk in op_bytes.chunks_exact(8) {
        let op = Op::decode(chunk, sectors);
        let (lba, count, fill) = match op {
            Op::Write { lba, count, pattern } => {
                let ok = must(image.write(lba, &vec![pattern; (count * ss) as usize]), "write");
                (lba, count, ok.then_some(pattern))
            }
            Op::Zeroes { lba, count } => (
                lba,
                count,
                must(image.write_zeroes(lba, count), "write_zeroes").then_some(0),
            ),
            Op::Discard { lba, count } => (lba, count, must(image.discard(lba, count), "discard").then_some(0)),
            Op::Flush => {
                must(image.flush(), "flush");
                continue;
            }
            Op::Reopen => {
                if !must(image.flush(), "flush") {
                    return;
                }
                drop(image);
                image = match open() {
                    Ok(image) => image,
                    Err(e) => panic!("a {format} image that accepted writes and a flush no longer opens: {e}"),
                };
                assert_eq!(image.top().parent().cloned(), parent, "writes changed the parent");
                verify(&image, &model, ss);
                continue;
            }
        };
        for s in lba..lba + count {
            match fill {
                Some(p) => model.insert(s, p),
                None => model.remove(&s),
            };
        }
        if fill.is_some() {
            let mut buf = vec![0u8; (count * ss) as usize];
            image.read(lba, &mut buf).expect("reading what was just written");
            assert!(
                buf.iter().all(|&b| Some(b) == fill),
                "{op:?} on {format} does not read back"
            );
        }
    }
    if !must(image.flush(), "flush") {
        return;
    }
    drop(image);
    let image = match open_storage(
        storage.clone(),
        name,
        &OpenOptions::new().format(Some(format)).resolver(files),
    ) {
        Ok(image) => image,
        Err(e) => panic!("a {format} image that accepted writes and a flush no longer opens: {e}"),
    };
    assert_eq!(image.top().parent().cloned(), parent, "writes changed the parent");
    verify(&image, &model, ss);
    if !own_image {
        let report = image.top().check(Repair::None).expect("check of a new image");
        assert_eq!(
            report.corruptions.count(),
            0,
            "{format}: check after writes: {report:?}"
        );
    }
}

/// Every sector the model knows reads as it says.
fn verify(image: &Image, model: &BTreeMap<u64, u8>, ss: u64) {
    let mut buf = vec![0u8; ss as usize];
    for (&lba, &pattern) in model {
        image.read(lba, &mut buf).expect("reading an acknowledged write back");
        assert!(
            buf.iter().all(|&b| b == pattern),
            "sector {lba} lost its acknowledged write"
        );
    }
}

/// Write, zero, discard, flush and reopen sequences against a model on VHD images (input
/// layout in `fuzz/README.md`): acknowledged writes must read back, also after a reopen.
pub fn ops_vhd(data: &[u8]) {
    ops(Format::Vhd, data);
}

/// The sequences of [`ops_vhd`], on VHDX images.
pub fn ops_vhdx(data: &[u8]) {
    ops(Format::Vhdx, data);
}

/// The sequences of [`ops_vhd`], on VMDK images.
pub fn ops_vmdk(data: &[u8]) {
    ops(Format::Vmdk, data);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sequence touching every operation kind, on a new image of every variant of each format.
    #[test]
    fn ops_on_new_images() {
        let mut ops_bytes = Vec::new();
        for (i, kind) in [0u8, 3, 0, 4, 5, 1, 7, 2, 4, 7].into_iter().enumerate() {
            let lba = (i as u32) * 1500;
            ops_bytes.extend_from_slice(&[kind, lba as u8, (lba >> 8) as u8, 0, 0, 40, 0, 0x5a]);
        }
        for variant in 0..3u8 {
            for target in [ops_vhd, ops_vhdx, ops_vmdk] {
                let mut input = vec![variant << 1, 10];
                input.extend_from_slice(&ops_bytes);
                target(&input);
            }
        }
    }

    #[test]
    fn odd_inputs_do_not_panic() {
        for input in [&b""[..], b"\0", b"vhdxfile", b"KDMV", b"conectix", &[0xffu8; 4096][..]] {
            probe_open(input);
            multi_file(input);
        }
    }
}
