//! Files created beside an image: extra files of a multi-file image (VMDK extents) and
//! temporary copies renamed over the image. One set of helpers, with the overwrite rule
//! explicit at every call.

use crate::driver::FileCreator;
use crate::{Error, FileStorage, Result, Storage};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// What creating a file does when its name is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overwrite {
    /// Fail (`AlreadyExists`) and leave the existing file alone.
    Never,
    /// Replace what is there without writing through it: the name is unlinked first (a
    /// symbolic or hard link left there, say by another user of a shared directory, is never
    /// followed) and the new file is then created exclusively, so a link raced in between makes
    /// the create fail instead.
    Replace,
}

/// Create a new, empty file at `path`, opened read-write, following `overwrite` when the name
/// is taken.
pub fn create(path: &Path, overwrite: Overwrite) -> std::io::Result<FileStorage> {
    if overwrite == Overwrite::Replace {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    FileStorage::create(path, false)
}

/// The directory holding `path` (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A hidden temporary name beside `path` (`.NAME.vdisk-PURPOSE-PID`): renaming it over `path`
/// later is atomic because both are in one directory.
pub fn temp_beside(path: &Path, purpose: &str) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    parent_dir(path).join(format!(".{name}.vdisk-{purpose}-{}", std::process::id()))
}

/// A [`FileCreator`] making files in the directory of an image, under plain names only (no
/// directory parts), with an explicit [`Overwrite`] rule. It remembers what it created, so a
/// failed operation can remove them again ([`SiblingFiles::remove_created`]).
#[derive(Debug)]
pub struct SiblingFiles {
    dir: PathBuf,
    overwrite: Overwrite,
    created: Mutex<Vec<PathBuf>>,
}

impl SiblingFiles {
    /// Files beside the image at `image`.
    pub fn beside(image: &Path, overwrite: Overwrite) -> Self {
        SiblingFiles {
            dir: parent_dir(image),
            overwrite,
            created: Mutex::default(),
        }
    }

    /// The paths created so far, oldest first.
    pub fn created(&self) -> Vec<PathBuf> {
        crate::sync::lock(&self.created).clone()
    }

    /// Remove every file created so far (best effort: for cleaning up after a failure).
    pub fn remove_created(&self) {
        for path in crate::sync::lock(&self.created).drain(..) {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl FileCreator for SiblingFiles {
    fn create_file(&self, name: &str) -> Result<Arc<dyn Storage>> {
        if name.is_empty() || name.contains(['/', '\\']) || name == ".." || name == "." {
            return Err(Error::invalid_argument(format!(
                "extra file name '{name}' must be a plain file name"
            )));
        }
        let path = self.dir.join(name);
        let storage = create(&path, self.overwrite).map_err(|e| Error::io(e, "creating file").with_file(&path))?;
        crate::sync::lock(&self.created).push(path);
        Ok(Arc::new(storage))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_beside() {
        assert_eq!(parent_dir(Path::new("a.vhd")), Path::new("."));
        assert_eq!(parent_dir(Path::new("d/a.vhd")), Path::new("d"));
        let temp = temp_beside(Path::new("d/a.vhd"), "tmp");
        assert_eq!(temp.parent(), Some(Path::new("d")));
        assert!(
            temp.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".a.vhd.vdisk-tmp-")
        );
    }

    #[test]
    fn overwrite_rules() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("image.vmdk");
        std::fs::write(dir.path().join("x.vmdk"), b"old").unwrap();
        let never = SiblingFiles::beside(&image, Overwrite::Never);
        assert!(never.create_file("x.vmdk").is_err());
        assert_eq!(std::fs::read(dir.path().join("x.vmdk")).unwrap(), b"old");
        for bad in ["", ".", "..", "a/b", "a\\b"] {
            assert!(never.create_file(bad).is_err(), "{bad}");
        }
        assert!(never.created().is_empty());

        let replace = SiblingFiles::beside(&image, Overwrite::Replace);
        replace.create_file("x.vmdk").unwrap().write_at(b"n", 0).unwrap();
        assert_eq!(std::fs::read(dir.path().join("x.vmdk")).unwrap(), b"n");
        #[cfg(unix)]
        {
            // A link at the name is replaced, never written through.
            let target = dir.path().join("target");
            std::fs::write(&target, b"keep").unwrap();
            std::os::unix::fs::symlink(&target, dir.path().join("y.vmdk")).unwrap();
            replace.create_file("y.vmdk").unwrap().write_at(b"new", 0).unwrap();
            assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        }
        assert_eq!(replace.created().len(), if cfg!(unix) { 2 } else { 1 });
        replace.remove_created();
        assert!(!dir.path().join("x.vmdk").exists());
        assert!(replace.created().is_empty());
    }
}
