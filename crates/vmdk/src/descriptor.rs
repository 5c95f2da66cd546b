//! The text descriptor: `key=value` lines, extent lines and the `ddb.*` disk database.
//!
//! The descriptor is kept as its lines, so rewriting it (a new CID, a new parent) changes only the
//! lines touched: comments, blank lines, unknown keys, quoting and CRLF line ends survive.

#![warn(clippy::arithmetic_side_effects)]

use disk_core::{Error, Result};
use std::fmt::Write as _;

/// Largest descriptor accepted (embedded or standalone).
pub const MAX_DESCRIPTOR_BYTES: u64 = 1 << 20;
/// Most extent lines accepted: 16 TiB in 2 GiB extents (VMware's hosted products stop at
/// 8 TiB; QEMU has no limit). Each extent costs a file handle and its tables, so the bound keeps
/// a hostile descriptor from asking for thousands of each.
pub const MAX_EXTENTS: usize = 8192;
/// The `parentCID` value of an image without a parent.
pub const NO_PARENT_CID: u32 = 0xffff_ffff;

/// Access an extent line grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// `RW`.
    ReadWrite,
    /// `RDONLY`.
    ReadOnly,
    /// `NOACCESS`.
    NoAccess,
}

impl Access {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "RW" => Some(Access::ReadWrite),
            "RDONLY" => Some(Access::ReadOnly),
            "NOACCESS" => Some(Access::NoAccess),
            _ => None,
        }
    }
    /// The keyword as written in the descriptor.
    pub fn as_str(self) -> &'static str {
        match self {
            Access::ReadWrite => "RW",
            Access::ReadOnly => "RDONLY",
            Access::NoAccess => "NOACCESS",
        }
    }
}

/// The kind of an extent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtentType {
    /// `SPARSE`: a hosted sparse (KDMV) extent.
    Sparse,
    /// `FLAT`: raw data at an offset of a file.
    Flat,
    /// `ZERO`: reads as zeros, no file.
    Zero,
    /// `VMFS`: an ESX flat extent.
    Vmfs,
    /// `VMFSSPARSE`: an ESX COWD extent.
    VmfsSparse,
    /// `VMFSRDM` / `VMFSRAW`: a raw device mapping (treated as flat).
    VmfsRaw,
    /// `SESPARSE`: an ESX space-efficient sparse extent.
    SeSparse,
}

impl ExtentType {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "SPARSE" => Some(ExtentType::Sparse),
            "FLAT" => Some(ExtentType::Flat),
            "ZERO" => Some(ExtentType::Zero),
            "VMFS" => Some(ExtentType::Vmfs),
            "VMFSSPARSE" => Some(ExtentType::VmfsSparse),
            "VMFSRDM" | "VMFSRAW" => Some(ExtentType::VmfsRaw),
            "SESPARSE" => Some(ExtentType::SeSparse),
            _ => None,
        }
    }
    /// The keyword as written in the descriptor.
    pub fn as_str(self) -> &'static str {
        match self {
            ExtentType::Sparse => "SPARSE",
            ExtentType::Flat => "FLAT",
            ExtentType::Zero => "ZERO",
            ExtentType::Vmfs => "VMFS",
            ExtentType::VmfsSparse => "VMFSSPARSE",
            ExtentType::VmfsRaw => "VMFSRDM",
            ExtentType::SeSparse => "SESPARSE",
        }
    }
}

/// One extent line: `ACCESS SECTORS TYPE ["FILE" [OFFSET]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtentLine {
    /// Access.
    pub access: Access,
    /// Size in sectors.
    pub sectors: u64,
    /// Kind.
    pub kind: ExtentType,
    /// File name as recorded (absent for `ZERO`).
    pub file: Option<String>,
    /// Sector offset in the file (flat extents).
    pub offset: u64,
}

impl ExtentLine {
    fn render(&self) -> String {
        let mut s = format!("{} {} {}", self.access.as_str(), self.sectors, self.kind.as_str());
        if let Some(f) = &self.file {
            let _ = write!(s, " \"{f}\"");
            if matches!(self.kind, ExtentType::Flat | ExtentType::Vmfs | ExtentType::VmfsRaw) {
                let _ = write!(s, " {}", self.offset);
            }
        }
        s
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Line {
    /// A comment, a blank line or anything else kept verbatim.
    Verbatim(String),
    /// `key=value`; `raw` is the original text while the value is unchanged.
    Entry {
        key: String,
        value: String,
        raw: Option<String>,
    },
    /// An extent line; `raw` as for entries.
    Extent { extent: ExtentLine, raw: Option<String> },
}

/// A parsed descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Descriptor {
    lines: Vec<Line>,
    crlf: bool,
}

fn corrupt(msg: impl Into<String>) -> Error {
    Error::corrupt(msg).in_structure("descriptor")
}

/// Strip one pair of surrounding double quotes.
fn unquote(v: &str) -> &str {
    let v = v.trim();
    v.strip_prefix('"').and_then(|i| i.strip_suffix('"')).unwrap_or(v)
}

fn parse_extent(line: &str, number: usize) -> Result<ExtentLine> {
    let bad = |why: &str| corrupt(format!("extent line {number} ('{line}'): {why}"));
    let mut rest = line.trim();
    let mut word = || {
        let t = rest.trim_start();
        let end = t.find(char::is_whitespace).unwrap_or(t.len());
        let (w, r) = t.split_at(end);
        rest = r;
        w
    };
    let access = Access::parse(word()).ok_or_else(|| bad("bad access"))?;
    let sectors: u64 = word().parse().map_err(|_| bad("bad sector count"))?;
    let kind = ExtentType::parse(word()).ok_or_else(|| bad("unknown extent type"))?;
    let t = rest.trim();
    let (file, tail) = if let Some(q) = t.strip_prefix('"') {
        let end = q.find('"').ok_or_else(|| bad("unterminated file name"))?;
        (Some(q[..end].to_string()), q[end..].get(1..).unwrap_or("").trim())
    } else if t.is_empty() {
        (None, "")
    } else {
        let end = t.find(char::is_whitespace).unwrap_or(t.len());
        (Some(t[..end].to_string()), t[end..].trim())
    };
    let offset = if tail.is_empty() {
        0
    } else {
        let first = tail.split_whitespace().next().unwrap_or("");
        first.parse().map_err(|_| bad("bad offset"))?
    };
    if file.is_none() && kind != ExtentType::Zero {
        return Err(bad("missing file name"));
    }
    Ok(ExtentLine {
        access,
        sectors,
        kind,
        file,
        offset,
    })
}

impl Descriptor {
    /// Parse descriptor text (trailing NUL padding of an embedded descriptor is ignored).
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        if bytes.len() as u64 > MAX_DESCRIPTOR_BYTES {
            return Err(corrupt(format!("descriptor of {} bytes is too large", bytes.len())));
        }
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        let text = String::from_utf8_lossy(&bytes[..end]);
        let mut lines = Vec::new();
        let mut crlf = false;
        let mut extents = 0usize;
        let body = text.strip_suffix('\n').unwrap_or(&text);
        for (i, raw) in body.split('\n').enumerate() {
            let line = match raw.strip_suffix('\r') {
                Some(l) => {
                    crlf = true;
                    l
                }
                None => raw,
            };
            let t = line.trim();
            let first = t.split_whitespace().next().unwrap_or("");
            if t.is_empty() || t.starts_with('#') {
                lines.push(Line::Verbatim(line.to_string()));
            } else if Access::parse(first).is_some() {
                extents = extents.saturating_add(1);
                if extents > MAX_EXTENTS {
                    return Err(corrupt(format!("more than {MAX_EXTENTS} extents")));
                }
                lines.push(Line::Extent {
                    extent: parse_extent(t, i.saturating_add(1))?,
                    raw: Some(line.to_string()),
                });
            } else if let Some((k, v)) = t.split_once('=') {
                lines.push(Line::Entry {
                    key: k.trim().to_string(),
                    value: unquote(v).to_string(),
                    raw: Some(line.to_string()),
                });
            } else {
                lines.push(Line::Verbatim(line.to_string()));
            }
        }
        Ok(Descriptor { lines, crlf })
    }

    /// A new descriptor with the standard header comment and no entries.
    pub fn new() -> Self {
        Descriptor {
            lines: vec![Line::Verbatim("# Disk DescriptorFile".into())],
            crlf: false,
        }
    }

    /// Append a comment or blank line.
    pub fn push_comment(&mut self, text: &str) {
        self.lines.push(Line::Verbatim(text.to_string()));
    }

    /// Append an extent line.
    pub fn push_extent(&mut self, extent: ExtentLine) {
        self.lines.push(Line::Extent { extent, raw: None });
    }

    /// The value of `key` (quotes removed), keys compared case-sensitively as VMware does.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.lines.iter().find_map(|l| match l {
            Line::Entry { key: k, value, .. } if k == key => Some(value.as_str()),
            _ => None,
        })
    }

    /// Set `key` to `value`, replacing the existing line or appending a new one (after the last
    /// header entry for plain keys, at the end for `ddb.*` keys).
    pub fn set(&mut self, key: &str, value: &str) {
        for l in &mut self.lines {
            if let Line::Entry { key: k, value: v, raw } = l
                && k == key
            {
                if v != value {
                    *v = value.to_string();
                    *raw = None;
                }
                return;
            }
        }
        let entry = Line::Entry {
            key: key.to_string(),
            value: value.to_string(),
            raw: None,
        };
        if key.starts_with("ddb.") {
            self.lines.push(entry);
        } else {
            let at = self
                .lines
                .iter()
                .rposition(|l| matches!(l, Line::Entry { key, .. } if !key.starts_with("ddb.")))
                .map_or(self.lines.len(), |i| i.saturating_add(1));
            self.lines.insert(at, entry);
        }
    }

    /// Remove `key`, if present.
    pub fn remove(&mut self, key: &str) {
        self.lines
            .retain(|l| !matches!(l, Line::Entry { key: k, .. } if k == key));
    }

    /// Every `key=value` pair, in order.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &str)> {
        self.lines.iter().filter_map(|l| match l {
            Line::Entry { key, value, .. } => Some((key.as_str(), value.as_str())),
            _ => None,
        })
    }

    /// The extent lines, in order.
    pub fn extents(&self) -> Vec<&ExtentLine> {
        self.lines
            .iter()
            .filter_map(|l| match l {
                Line::Extent { extent, .. } => Some(extent),
                _ => None,
            })
            .collect()
    }

    /// Replace the extent lines with `extents` (where the old ones were; appended if none).
    pub fn set_extents(&mut self, extents: &[ExtentLine]) {
        let at = self
            .lines
            .iter()
            .position(|l| matches!(l, Line::Extent { .. }))
            .unwrap_or(self.lines.len());
        let old: Vec<ExtentLine> = self.extents().into_iter().cloned().collect();
        if old == extents {
            return;
        }
        self.lines.retain(|l| !matches!(l, Line::Extent { .. }));
        for (i, e) in extents.iter().enumerate() {
            self.lines.insert(
                at.saturating_add(i),
                Line::Extent {
                    extent: e.clone(),
                    raw: None,
                },
            );
        }
    }

    /// `createType`.
    pub fn create_type(&self) -> Option<&str> {
        self.get("createType")
    }

    /// Parse a hexadecimal CID value.
    fn cid_value(&self, key: &str) -> Result<Option<u32>> {
        self.get(key)
            .map(|v| u32::from_str_radix(v.trim(), 16).map_err(|_| corrupt(format!("{key} '{v}' is not hexadecimal"))))
            .transpose()
    }

    /// `CID`: the content ID (changes whenever the disk is written).
    pub fn cid(&self) -> Result<Option<u32>> {
        self.cid_value("CID")
    }

    /// `parentCID`: the parent's CID when the child was made, [`NO_PARENT_CID`] for none.
    pub fn parent_cid(&self) -> Result<Option<u32>> {
        self.cid_value("parentCID")
    }

    /// Set `CID`.
    pub fn set_cid(&mut self, cid: u32) {
        self.set("CID", &format!("{cid:08x}"));
    }

    /// `parentFileNameHint`.
    pub fn parent_hint(&self) -> Option<&str> {
        self.get("parentFileNameHint").filter(|s| !s.is_empty())
    }

    /// [`Descriptor::render`], refused unless parsing the text gives back the same entries and
    /// extents: a value or file name the writer cannot express (a `"` in a file name, a line
    /// break) must never turn into a different descriptor on disk.
    pub fn render_checked(&self) -> Result<String> {
        let text = self.render();
        self.same_as_parsed(&text)?;
        Ok(text)
    }

    /// Refuse a descriptor some line of which would change meaning if it were rewritten
    /// (every line rendered afresh, as a change of extents or keys renders them). Call this
    /// before changing anything that will be recorded in the descriptor.
    pub fn check_rewritable(&self) -> Result<()> {
        let mut fresh = self.clone();
        for l in &mut fresh.lines {
            match l {
                Line::Entry { raw, .. } | Line::Extent { raw, .. } => *raw = None,
                Line::Verbatim(_) => {}
            }
        }
        fresh.same_as_parsed(&fresh.render())
    }

    fn same_as_parsed(&self, text: &str) -> Result<()> {
        let back = Descriptor::parse(text.as_bytes()).map_err(|e| {
            Error::unsupported(format!(
                "the descriptor cannot be written back faithfully ({}); nothing was changed",
                e.message()
            ))
            .in_structure("descriptor")
        })?;
        let entries = |d: &Descriptor| {
            d.entries()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        };
        let extents = |d: &Descriptor| d.extents().into_iter().cloned().collect::<Vec<_>>();
        if entries(&back) != entries(self) || extents(&back) != extents(self) {
            let bad = extents(self)
                .into_iter()
                .zip(extents(&back).into_iter().map(Some).chain(std::iter::repeat(None)))
                .find(|(a, b)| Some(a) != b.as_ref())
                .map(|(a, _)| format!("extent '{}'", a.file.unwrap_or_default()))
                .unwrap_or_else(|| "an entry".into());
            return Err(Error::unsupported(format!(
                "the descriptor cannot be written back faithfully: {bad} has a name or value the \
                 descriptor syntax cannot express (a quote or a line break); nothing was changed"
            ))
            .in_structure("descriptor"));
        }
        Ok(())
    }

    /// Render the descriptor, with the line ends it was read with.
    pub fn render(&self) -> String {
        let nl = if self.crlf { "\r\n" } else { "\n" };
        let mut out = String::new();
        for l in &self.lines {
            match l {
                Line::Verbatim(s) => out.push_str(s),
                Line::Entry { raw: Some(r), .. } | Line::Extent { raw: Some(r), .. } => out.push_str(r),
                Line::Entry { key, value, raw: None } => {
                    let numeric = matches!(key.as_str(), "version" | "CID" | "parentCID");
                    if numeric {
                        let _ = write!(out, "{key}={value}");
                    } else if key.starts_with("ddb.") {
                        let _ = write!(out, "{key} = \"{value}\"");
                    } else {
                        let _ = write!(out, "{key}=\"{value}\"");
                    }
                }
                Line::Extent { extent, raw: None } => out.push_str(&extent.render()),
            }
            out.push_str(nl);
        }
        out
    }
}

impl Default for Descriptor {
    fn default() -> Self {
        Self::new()
    }
}

/// Whether `bytes` look like the start of a text descriptor.
pub(crate) fn looks_like_descriptor(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(4096)]);
    text.lines().any(|l| {
        let l = l.trim();
        l.starts_with("# Disk DescriptorFile") || l.starts_with("createType")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const QEMU: &str = "# Disk DescriptorFile\nversion=1\nCID=52e9f1a3\nparentCID=ffffffff\ncreateType=\"twoGbMaxExtentFlat\"\n\n# Extent description\nRW 4194304 FLAT \"t-f001.vmdk\" 0\nRW 2048 FLAT \"t f002.vmdk\" 0\nRDONLY 100 ZERO\nNOACCESS 8 SPARSE \"s.vmdk\"\n\n# The Disk Data Base\n#DDB\n\nddb.virtualHWVersion = \"4\"\nddb.adapterType = \"ide\"\nddb.custom.thing = \"x y\"\n";

    #[test]
    fn parse_and_roundtrip() {
        let d = Descriptor::parse(QEMU.as_bytes()).unwrap();
        assert_eq!(d.create_type(), Some("twoGbMaxExtentFlat"));
        assert_eq!(d.cid().unwrap(), Some(0x52e9_f1a3));
        assert_eq!(d.parent_cid().unwrap(), Some(NO_PARENT_CID));
        let e = d.extents();
        assert_eq!(e.len(), 4);
        assert_eq!(e[1].file.as_deref(), Some("t f002.vmdk"));
        assert_eq!(e[2].kind, ExtentType::Zero);
        assert_eq!(e[2].file, None);
        assert_eq!(e[3].access, Access::NoAccess);
        assert_eq!(d.get("ddb.adapterType"), Some("ide"));
        assert_eq!(d.render(), QEMU);
    }

    #[test]
    fn rewrite_keeps_unknown_lines_and_crlf() {
        let text = QEMU.replace('\n', "\r\n");
        let mut d = Descriptor::parse(text.as_bytes()).unwrap();
        d.set_cid(0x1234);
        d.set("parentFileNameHint", "p.vmdk");
        d.set("ddb.uuid", "abc");
        let out = d.render();
        assert!(out.contains("CID=00001234\r\n"));
        assert!(out.contains("createType=\"twoGbMaxExtentFlat\"\r\nparentFileNameHint=\"p.vmdk\"\r\n"));
        assert!(out.contains("ddb.custom.thing = \"x y\"\r\n"));
        assert!(out.ends_with("ddb.uuid = \"abc\"\r\n"));
        let again = Descriptor::parse(out.as_bytes()).unwrap();
        assert_eq!(again.parent_hint(), Some("p.vmdk"));
    }

    #[test]
    fn names_the_writer_cannot_express_are_refused() {
        let text = "# Disk DescriptorFile\nCID=1\ncreateType=\"twoGbMaxExtentSparse\"\nRW 8 SPARSE a\"b.vmdk\nRW 8 SPARSE \"c.vmdk\"\n";
        let mut d = Descriptor::parse(text.as_bytes()).unwrap();
        assert_eq!(d.extents()[0].file.as_deref(), Some("a\"b.vmdk"));
        // Untouched, it renders verbatim; rewritten, the name would change.
        assert_eq!(d.render_checked().unwrap(), text);
        assert!(d.check_rewritable().is_err());
        let lines: Vec<ExtentLine> = d.extents().into_iter().cloned().collect();
        d.set_extents(&lines[..1]);
        assert!(d.render_checked().is_err());
        let mut ok = Descriptor::parse(QEMU.as_bytes()).unwrap();
        ok.check_rewritable().unwrap();
        ok.set("parentFileNameHint", "x\ny");
        assert!(ok.render_checked().is_err());
    }

    #[test]
    fn nul_padding_and_errors() {
        let mut b = QEMU.as_bytes().to_vec();
        b.resize(10240, 0);
        assert_eq!(Descriptor::parse(&b).unwrap().extents().len(), 4);
        assert!(Descriptor::parse(b"RW x SPARSE \"a\"").is_err());
        assert!(Descriptor::parse(b"RW 1 BOGUS \"a\"").is_err());
        assert!(Descriptor::parse(b"RW 1 FLAT \"a").is_err());
        assert!(Descriptor::parse(b"RW 1 FLAT").is_err());
        assert!(Descriptor::parse(b"CID=zz").unwrap().cid().is_err());
        let many = "RW 1 ZERO\n".repeat(MAX_EXTENTS + 1);
        assert!(Descriptor::parse(many.as_bytes()).is_err());
        assert!(Descriptor::parse(&vec![b'#'; (MAX_DESCRIPTOR_BYTES + 1) as usize]).is_err());
    }
}
