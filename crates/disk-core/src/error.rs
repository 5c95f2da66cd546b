//! The one error type every crate of the workspace returns.
//!
//! An [`Error`] carries a stable [`ErrorKind`] that callers match on, a human message, the context
//! in which it happened (file, byte offset, on-disk structure) and the underlying cause as its
//! [`std::error::Error::source`]. Format crates may keep richer private errors and map them here.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// A stable classification of an [`Error`], for callers that branch on what went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The host storage failed (read, write, flush, resize, open).
    Io,
    /// The image's metadata is inconsistent, damaged or truncated.
    Corrupt,
    /// The image is valid but uses a feature or variant this library does not handle.
    Unsupported,
    /// A sector or byte range lies (partly) outside the disk.
    OutOfRange,
    /// A write or other change was attempted on an image opened read-only.
    ReadOnly,
    /// The caller passed an argument that cannot be honoured (misaligned buffer, bad option, ...).
    InvalidArgument,
    /// The image names another file (parent, extent) and the caller's policy refused to open it.
    ExternalFileDenied,
    /// A file (the image, a parent, an extent) does not exist.
    NotFound,
    /// A parent image does not match the identity its child recorded (UUID, linkage, CID).
    ParentMismatch,
    /// The content matches no format this library knows (only when a format was required).
    UnknownFormat,
    /// An earlier metadata update of this handle failed midway, so its view of the image is no
    /// longer known to match the file: changes are refused until the image is reopened (which
    /// recovers it, e.g. by replaying the VHDX log).
    Poisoned,
    /// Another open of a file of the image (another process, such as a running VM, or another
    /// handle) holds a lock that forbids this use of it (see [`crate::lock`]).
    Locked,
}

impl ErrorKind {
    /// A short lowercase name for the kind, stable across releases.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Io => "io",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::Unsupported => "unsupported",
            ErrorKind::OutOfRange => "out of range",
            ErrorKind::ReadOnly => "read-only",
            ErrorKind::InvalidArgument => "invalid argument",
            ErrorKind::ExternalFileDenied => "external file denied",
            ErrorKind::NotFound => "not found",
            ErrorKind::ParentMismatch => "parent mismatch",
            ErrorKind::UnknownFormat => "unknown format",
            ErrorKind::Poisoned => "poisoned",
            ErrorKind::Locked => "locked",
        }
    }

    /// How a virtual SCSI or NVMe device reports this error to its guest.
    pub fn device_status(self) -> DeviceStatus {
        match self {
            ErrorKind::OutOfRange | ErrorKind::InvalidArgument | ErrorKind::Unsupported => DeviceStatus::IllegalRequest,
            ErrorKind::ReadOnly => DeviceStatus::WriteProtected,
            ErrorKind::Corrupt | ErrorKind::ParentMismatch | ErrorKind::UnknownFormat => DeviceStatus::MediumError,
            ErrorKind::Io
            | ErrorKind::Poisoned
            | ErrorKind::ExternalFileDenied
            | ErrorKind::NotFound
            | ErrorKind::Locked => DeviceStatus::IoError,
        }
    }
}

/// The class of failure a virtual disk device reports for an [`ErrorKind`]
/// ([`ErrorKind::device_status`]): SCSI sense keys / NVMe status codes map onto these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceStatus {
    /// The request itself is invalid: a block out of range, a misaligned buffer, an operation
    /// the image cannot do (SCSI ILLEGAL REQUEST / LBA out of range; NVMe Invalid Field, LBA Out
    /// of Range).
    IllegalRequest,
    /// The disk is read-only (SCSI DATA PROTECT; NVMe Write to Read Only Range).
    WriteProtected,
    /// The data at that place cannot be read correctly: damaged metadata, a missing or wrong
    /// parent (SCSI MEDIUM ERROR / unrecovered read error; NVMe Unrecovered Read Error).
    MediumError,
    /// The host storage failed or the handle must be reopened (SCSI HARDWARE ERROR; NVMe
    /// Internal Error / Data Transfer Error).
    IoError,
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where an error happened: all parts optional, filled in by whichever layer knows them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErrorContext {
    /// The file being accessed.
    pub file: Option<PathBuf>,
    /// The byte offset in that file (or in the guest view, as the message says).
    pub offset: Option<u64>,
    /// The on-disk structure involved, by its spec name ("BAT", "footer", "grain table").
    pub structure: Option<&'static str>,
}

/// The error type of every fallible operation in this workspace.
#[derive(Debug, thiserror::Error)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    context: ErrorContext,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
}

/// Shorthand for `Result<T, disk_core::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind` with a message saying what went wrong.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            context: ErrorContext::default(),
            source: None,
        }
    }

    /// Metadata is damaged or inconsistent.
    pub fn corrupt(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Corrupt, message)
    }

    /// A valid feature this library does not handle.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, message)
    }

    /// A bad argument from the caller.
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }

    /// A range outside the disk.
    pub fn out_of_range(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::OutOfRange, message)
    }

    /// A change attempted on a read-only image.
    pub fn read_only() -> Self {
        Self::new(ErrorKind::ReadOnly, "image is open read-only")
    }

    /// A host I/O failure while doing `what` ("reading the BAT"). The kind is [`ErrorKind::NotFound`]
    /// for a missing file and [`ErrorKind::Corrupt`] for a read past the end of the file (a
    /// truncated image), otherwise [`ErrorKind::Io`].
    pub fn io(source: io::Error, what: impl Into<String>) -> Self {
        let kind = match source.kind() {
            io::ErrorKind::NotFound => ErrorKind::NotFound,
            io::ErrorKind::UnexpectedEof => ErrorKind::Corrupt,
            _ => ErrorKind::Io,
        };
        Self::new(kind, what).with_source(source)
    }

    /// Attach the underlying cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Attach the file the error concerns (kept if one is already set: the innermost wins).
    pub fn with_file(mut self, file: impl AsRef<Path>) -> Self {
        if self.context.file.is_none() {
            self.context.file = Some(file.as_ref().to_path_buf());
        }
        self
    }

    /// Attach the byte offset the error concerns (kept if one is already set).
    pub fn at_offset(mut self, offset: u64) -> Self {
        if self.context.offset.is_none() {
            self.context.offset = Some(offset);
        }
        self
    }

    /// Attach the on-disk structure the error concerns (kept if one is already set).
    pub fn in_structure(mut self, structure: &'static str) -> Self {
        if self.context.structure.is_none() {
            self.context.structure = Some(structure);
        }
        self
    }

    /// Append what the user can do about the error to its message (`MESSAGE; ADVICE`).
    pub fn with_advice(mut self, advice: impl AsRef<str>) -> Self {
        self.message.push_str("; ");
        self.message.push_str(advice.as_ref());
        self
    }

    /// The stable classification.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without context.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// File, offset and structure, as far as known.
    pub fn context(&self) -> &ErrorContext {
        &self.context
    }
}

impl fmt::Display for Error {
    /// `FILE: [STRUCTURE: ]MESSAGE[ (offset 0x..)]`; the cause is not included (see `source`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(file) = &self.context.file {
            write!(f, "{}: ", file.display())?;
        }
        if let Some(structure) = self.context.structure
            && !self.message.starts_with(structure)
        {
            write!(f, "{structure}: ")?;
        }
        f.write_str(&self.message)?;
        if let Some(offset) = self.context.offset {
            write!(f, " (offset {offset:#x})")?;
        }
        Ok(())
    }
}

/// Adds context to a `Result` in one call.
pub trait ResultExt<T> {
    /// Attach the file to the error, if any.
    fn with_file(self, file: impl AsRef<Path>) -> Result<T>;
}

impl<T> ResultExt<T> for Result<T> {
    fn with_file(self, file: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| e.with_file(file))
    }
}

/// Adds "what was being done" to an `io::Result`, turning it into a [`Result`].
pub trait IoResultExt<T> {
    /// Wrap an I/O error as [`Error::io`] with a description and the byte offset.
    fn io_context(self, what: &str, offset: u64) -> Result<T>;
}

impl<T> IoResultExt<T> for io::Result<T> {
    fn io_context(self, what: &str, offset: u64) -> Result<T> {
        self.map_err(|e| Error::io(e, what).at_offset(offset))
    }
}

/// The full message of an error with all its causes: `msg: cause: cause`.
pub fn display_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut cur = error.source();
    while let Some(cause) = cur {
        let text = cause.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_has_file_structure_and_offset() {
        let e = Error::corrupt("entry 17 points past end of file")
            .in_structure("BAT")
            .at_offset(0x1000)
            .with_file("disk.vhdx");
        assert_eq!(
            e.to_string(),
            "disk.vhdx: BAT: entry 17 points past end of file (offset 0x1000)"
        );
        assert_eq!(e.kind(), ErrorKind::Corrupt);
    }

    #[test]
    fn io_kinds_are_classified_and_chained() {
        let e = Error::io(
            io::Error::new(io::ErrorKind::UnexpectedEof, "short read"),
            "reading footer",
        );
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        assert_eq!(display_chain(&e), "reading footer: short read");
        let e = Error::io(io::Error::from(io::ErrorKind::NotFound), "opening parent");
        assert_eq!(e.kind(), ErrorKind::NotFound);
    }

    #[test]
    fn innermost_context_wins() {
        let e = Error::corrupt("x")
            .with_file("inner")
            .with_file("outer")
            .at_offset(1)
            .at_offset(2);
        assert_eq!(e.context().file.as_deref(), Some(Path::new("inner")));
        assert_eq!(e.context().offset, Some(1));
    }
}
