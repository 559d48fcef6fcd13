//! FILE and FILE_THIN: one file `<dir>/<name>.img` per backing volume, preallocated
//! with `fallocate` (FILE) or sparse (FILE_THIN), as LINSTOR's file providers name them.
//! blockd serves the file directly (no loop device).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use model::ProviderKind;
use rustix::fs::FallocateFlags;

use crate::error::Cause;
use crate::{Capacity, Provider, StorageError, VolumeInfo, check_volume_name};

/// Files are sized in whole 4 KiB pages.
const GRANULARITY: u64 = 4096;
/// The most entries `list` reads from a pool directory.
const MAX_DIR_ENTRIES: usize = 1_000_000;
const SUFFIX: &str = ".img";

#[derive(Debug, Clone)]
pub struct FileProvider {
    dir: PathBuf,
    thin: bool,
}

impl FileProvider {
    /// A provider for the files in `dir` (absolute); `thin`: sparse files (FILE_THIN).
    /// Touches nothing: a missing directory shows in the first call that needs it.
    pub fn new(dir: impl Into<PathBuf>, thin: bool) -> Result<Self, StorageError> {
        let dir = dir.into();
        if !dir.is_absolute() {
            return Err(StorageError::PoolConfig {
                pool: dir.display().to_string(),
                kind: if thin { "FILE_THIN" } else { "FILE" },
                key: crate::KEY_STOR_POOL_NAME,
                example: "/var/lib/tandem/pool1",
                problem: format!("the directory {} is not an absolute path", dir.display()),
            });
        }
        Ok(Self { dir, thin })
    }

    fn path_of(&self, name: &str) -> Result<PathBuf, StorageError> {
        check_volume_name(name)?;
        Ok(self.dir.join(format!("{name}{SUFFIX}")))
    }

    fn pool_label(&self) -> String {
        format!("directory {}", self.dir.display())
    }

    fn dir_missing(&self) -> StorageError {
        StorageError::PoolMissing {
            what: format!("storage pool {}", self.pool_label()),
            cause: Cause(None),
        }
    }

    /// The regular file `path`, None when it does not exist; anything else there
    /// (a symlink, a directory) is refused.
    fn stat(&self, path: &Path) -> Result<Option<std::fs::Metadata>, StorageError> {
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_file() => Ok(Some(m)),
            Ok(_) => Err(StorageError::ForeignFile {
                path: path.to_owned(),
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if self.dir.is_dir() {
                    Ok(None)
                } else {
                    Err(self.dir_missing())
                }
            }
            Err(e) => Err(StorageError::io("inspect", path, e)),
        }
    }

    fn info(name: &str, path: PathBuf, size: u64) -> VolumeInfo {
        VolumeInfo {
            name: name.to_owned(),
            path,
            size,
        }
    }

    fn free_bytes(&self) -> Result<u64, StorageError> {
        let st = statvfs(&self.dir).map_err(|e| self.statvfs_err(e))?;
        Ok(st.f_bavail.saturating_mul(st.f_frsize))
    }

    fn statvfs_err(&self, e: io::Error) -> StorageError {
        if e.kind() == io::ErrorKind::NotFound {
            self.dir_missing()
        } else {
            StorageError::io("read the capacity of", &self.dir, e)
        }
    }

    /// Sizes a file: allocated blocks for FILE, a sparse length for FILE_THIN.
    fn allocate(&self, f: &File, size: u64) -> io::Result<()> {
        if self.thin {
            f.set_len(size)
        } else {
            rustix::fs::fallocate(f, FallocateFlags::empty(), 0, size).map_err(io::Error::from)
        }
    }

    fn alloc_error(&self, name: &str, path: &Path, size: u64, e: io::Error) -> StorageError {
        if e.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error())
            || e.kind() == io::ErrorKind::StorageFull
        {
            StorageError::NoSpace {
                name: name.to_owned(),
                pool: self.pool_label(),
                size,
                cause: Cause(None),
            }
        } else if e.raw_os_error() == Some(rustix::io::Errno::OPNOTSUPP.raw_os_error()) {
            StorageError::Io {
                what: "preallocate (this filesystem has no fallocate; use FILE_THIN here)",
                path: path.to_owned(),
                source: e,
            }
        } else {
            StorageError::io("size", path, e)
        }
    }
}

fn statvfs(dir: &Path) -> io::Result<rustix::fs::StatVfs> {
    rustix::fs::statvfs(dir).map_err(io::Error::from)
}

/// Makes the directory entry of a new or removed file durable.
fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::io("sync the directory", dir, e))
}

/// Creates `path` (never over an existing file), sizes it with `size_it`, makes it
/// durable; on any error after the file appeared, removes it again, so a failed create
/// leaves no file of the wrong size behind.
fn create_file(
    path: &Path,
    size_it: impl FnOnce(&File) -> Result<(), StorageError>,
) -> Result<(), StorageError> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| StorageError::io("create", path, e))?;
    let sized =
        size_it(&f).and_then(|()| f.sync_all().map_err(|e| StorageError::io("sync", path, e)));
    drop(f);
    if let Err(e) = sized {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(())
}

impl Provider for FileProvider {
    fn kind(&self) -> ProviderKind {
        if self.thin {
            ProviderKind::FileThin
        } else {
            ProviderKind::File
        }
    }

    fn create(&self, name: &str, size: u64) -> Result<VolumeInfo, StorageError> {
        let path = self.path_of(name)?;
        let size = crate::round_size(name, size, GRANULARITY)?;
        if self.stat(&path)?.is_some() {
            return Err(StorageError::AlreadyExists {
                name: name.to_owned(),
                pool: self.pool_label(),
                cause: Cause(None),
            });
        }
        // Refuse before allocating: a FILE volume that cannot fit would otherwise fill
        // the filesystem before failing.
        if !self.thin && size > self.free_bytes()? {
            return Err(StorageError::NoSpace {
                name: name.to_owned(),
                pool: self.pool_label(),
                size,
                cause: Cause(None),
            });
        }
        let result = create_file(&path, |f| {
            self.allocate(f, size)
                .map_err(|e| self.alloc_error(name, &path, size, e))
        });
        match result {
            Err(StorageError::Io { source, .. })
                if source.kind() == io::ErrorKind::AlreadyExists =>
            {
                return Err(StorageError::AlreadyExists {
                    name: name.to_owned(),
                    pool: self.pool_label(),
                    cause: Cause(None),
                });
            }
            Err(StorageError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Err(self.dir_missing());
            }
            r => r?,
        }
        sync_dir(&self.dir)?;
        Ok(Self::info(name, path, size))
    }

    fn grow(&self, name: &str, size: u64) -> Result<VolumeInfo, StorageError> {
        let path = self.path_of(name)?;
        let Some(meta) = self.stat(&path)? else {
            return Err(StorageError::NotFound {
                name: name.to_owned(),
                pool: self.pool_label(),
                cause: Cause(None),
            });
        };
        let current = meta.len();
        if !crate::needs_grow(name, current, size, GRANULARITY)? {
            return Ok(Self::info(name, path, current));
        }
        let size = crate::round_size(name, size, GRANULARITY)?;
        if !self.thin && size - current > self.free_bytes()? {
            return Err(StorageError::NoSpace {
                name: name.to_owned(),
                pool: self.pool_label(),
                size,
                cause: Cause(None),
            });
        }
        let f = OpenOptions::new()
            .write(true)
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(&path)
            .map_err(|e| StorageError::io("open", &path, e))?;
        self.allocate(&f, size)
            .map_err(|e| self.alloc_error(name, &path, size, e))?;
        f.sync_all()
            .map_err(|e| StorageError::io("sync", &path, e))?;
        Ok(Self::info(name, path, size))
    }

    fn delete(&self, name: &str) -> Result<(), StorageError> {
        let path = self.path_of(name)?;
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.file_type().is_file() => {}
            Ok(_) => return Err(StorageError::ForeignFile { path }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StorageError::io("inspect", &path, e)),
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StorageError::io("remove", &path, e)),
        }
        sync_dir(&self.dir)
    }

    fn get(&self, name: &str) -> Result<Option<VolumeInfo>, StorageError> {
        let path = self.path_of(name)?;
        Ok(self.stat(&path)?.map(|m| Self::info(name, path, m.len())))
    }

    fn list(&self) -> Result<Vec<VolumeInfo>, StorageError> {
        let rd = std::fs::read_dir(&self.dir).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                self.dir_missing()
            } else {
                StorageError::io("list", &self.dir, e)
            }
        })?;
        let mut out = Vec::new();
        for (i, entry) in rd.enumerate() {
            if i >= MAX_DIR_ENTRIES {
                return Err(StorageError::io(
                    "list",
                    &self.dir,
                    io::Error::other(format!(
                        "more than {MAX_DIR_ENTRIES} entries; keep only backing files in a pool directory"
                    )),
                ));
            }
            let entry = entry.map_err(|e| StorageError::io("list", &self.dir, e))?;
            let file_name = entry.file_name();
            let Some(name) = file_name.to_str().and_then(|n| n.strip_suffix(SUFFIX)) else {
                continue;
            };
            if crate::parse_volume_name(name).is_none() {
                continue;
            }
            // Not followed: a symlink or directory with a tandem name is not ours.
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StorageError::io("inspect", &entry.path(), e)),
            };
            if !meta.file_type().is_file() {
                continue;
            }
            out.push(Self::info(name, entry.path(), meta.len()));
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn capacity(&self) -> Result<Capacity, StorageError> {
        let st = statvfs(&self.dir).map_err(|e| self.statvfs_err(e))?;
        Ok(Capacity {
            free_kib: st.f_bavail.saturating_mul(st.f_frsize) / 1024,
            total_kib: st.f_blocks.saturating_mul(st.f_frsize) / 1024,
        })
    }

    fn zeroed_on_create(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn providers() -> (tempfile::TempDir, FileProvider, FileProvider) {
        let dir = tempfile::tempdir().unwrap();
        let thick = FileProvider::new(dir.path(), false).unwrap();
        let thin = FileProvider::new(dir.path(), true).unwrap();
        (dir, thick, thin)
    }

    #[test]
    fn create_get_grow_delete() {
        let (dir, thick, thin) = providers();
        for (p, name) in [(&thick, "r1_00000"), (&thin, "r2_00003")] {
            let v = p.create(name, 1_000_000).unwrap();
            assert_eq!(v.size, 1_003_520, "rounded up to 4 KiB");
            assert_eq!(v.path, dir.path().join(format!("{name}.img")));
            assert_eq!(std::fs::metadata(&v.path).unwrap().len(), v.size);
            assert_eq!(p.get(name).unwrap(), Some(v.clone()));
            assert_eq!(std::fs::metadata(&v.path).unwrap().mode() & 0o777, 0o600);
            // The data reads as zeros.
            assert!(std::fs::read(&v.path).unwrap().iter().all(|b| *b == 0));

            let e = p.create(name, 4096).unwrap_err();
            assert!(matches!(e, StorageError::AlreadyExists { .. }), "{e}");

            let g = p.grow(name, 2 << 20).unwrap();
            assert_eq!(g.size, 2 << 20);
            assert_eq!(std::fs::metadata(&v.path).unwrap().len(), 2 << 20);
            // Already as large: nothing changes.
            assert_eq!(p.grow(name, 2 << 20).unwrap(), g);
            assert_eq!(p.grow(name, (2 << 20) - 100).unwrap(), g);
            let e = p.grow(name, 1 << 20).unwrap_err();
            assert!(matches!(e, StorageError::Shrink { .. }), "{e}");
            assert_eq!(std::fs::metadata(&v.path).unwrap().len(), 2 << 20);

            p.delete(name).unwrap();
            assert!(!v.path.exists());
            assert_eq!(p.get(name).unwrap(), None);
            p.delete(name).unwrap();
            let e = p.grow(name, 1 << 20).unwrap_err();
            assert!(matches!(e, StorageError::NotFound { .. }), "{e}");
        }
    }

    #[test]
    fn thick_files_are_allocated_thin_files_sparse() {
        let (_dir, thick, thin) = providers();
        let a = thick.create("a1_00000", 8 << 20).unwrap();
        let b = thin.create("b1_00000", 8 << 20).unwrap();
        let allocated = |p: &Path| std::fs::metadata(p).unwrap().blocks() * 512;
        assert!(allocated(&a.path) >= 8 << 20);
        assert!(allocated(&b.path) < 1 << 20);
        thick.grow("a1_00000", 16 << 20).unwrap();
        assert!(allocated(&a.path) >= 16 << 20);
        thin.grow("b1_00000", 16 << 20).unwrap();
        assert!(allocated(&b.path) < 1 << 20);
        assert!(thick.zeroed_on_create() && thin.zeroed_on_create());
        assert_eq!(thick.kind(), ProviderKind::File);
        assert_eq!(thin.kind(), ProviderKind::FileThin);
    }

    #[test]
    fn list_only_shows_tandem_files() {
        let (dir, thick, _) = providers();
        thick.create("r1_00000", 4096).unwrap();
        thick.create("r1_00001", 8192).unwrap();
        thick.create("other_00000", 4096).unwrap();
        for foreign in [
            "notes.txt",
            "r1_00000.img.bak",
            "r1_0000.img",
            "vm-100-disk-0.raw",
            "r1_00002",
        ] {
            std::fs::write(dir.path().join(foreign), b"x").unwrap();
        }
        std::fs::create_dir(dir.path().join("d1_00000.img")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("s1_00000.img")).unwrap();
        let names: Vec<_> = thick
            .list()
            .unwrap()
            .into_iter()
            .map(|v| (v.name, v.size))
            .collect();
        assert_eq!(
            names,
            [
                ("other_00000".to_owned(), 4096),
                ("r1_00000".to_owned(), 4096),
                ("r1_00001".to_owned(), 8192)
            ]
        );
    }

    #[test]
    fn foreign_names_and_escapes_are_refused() {
        let (dir, thick, thin) = providers();
        let outside = dir.path().parent().unwrap().join("x_00000.img");
        for p in [&thick, &thin] {
            for name in [
                "../x_00000",
                "/etc/passwd",
                "a/b_00000",
                "notes",
                "r1_00000.img",
                "",
                "..",
            ] {
                for e in [
                    p.create(name, 4096).unwrap_err(),
                    p.grow(name, 4096).unwrap_err(),
                    p.delete(name).unwrap_err(),
                    p.get(name).unwrap_err(),
                ] {
                    assert!(matches!(e, StorageError::InvalidName { .. }), "{name}: {e}");
                }
            }
        }
        assert!(!outside.exists());

        // A symlink or directory with a tandem name is not followed, grown or removed.
        let target = dir.path().join("target");
        std::fs::write(&target, b"keep").unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join("s1_00000.img")).unwrap();
        std::fs::create_dir(dir.path().join("d1_00000.img")).unwrap();
        for name in ["s1_00000", "d1_00000"] {
            for e in [
                thick.get(name).unwrap_err(),
                thick.grow(name, 1 << 20).unwrap_err(),
                thick.delete(name).unwrap_err(),
                thick.create(name, 4096).unwrap_err(),
            ] {
                assert!(matches!(e, StorageError::ForeignFile { .. }), "{name}: {e}");
            }
        }
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        assert!(dir.path().join("s1_00000.img").exists());
    }

    #[test]
    fn capacity_from_statvfs() {
        let (dir, thick, _) = providers();
        let c = thick.capacity().unwrap();
        let st = rustix::fs::statvfs(dir.path()).unwrap();
        assert_eq!(c.total_kib, st.f_blocks * st.f_frsize / 1024);
        assert!(c.free_kib <= c.total_kib);
        assert!(c.free_kib > 0);
    }

    #[test]
    fn a_missing_directory_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = FileProvider::new(dir.path().join("nope"), false).unwrap();
        for e in [
            p.create("r1_00000", 4096).unwrap_err(),
            p.list().unwrap_err(),
            p.capacity().unwrap_err(),
            p.get("r1_00000").unwrap_err(),
            p.grow("r1_00000", 4096).unwrap_err(),
        ] {
            assert!(matches!(e, StorageError::PoolMissing { .. }), "{e}");
            assert!(e.to_string().contains("nope"), "{e}");
        }
        // Deleting from a missing directory: nothing there, nothing to do.
        p.delete("r1_00000").unwrap();
        assert!(FileProvider::new("relative/dir", false).is_err());
    }

    #[test]
    fn too_large_for_the_filesystem_is_refused_before_allocating() {
        let (dir, thick, _) = providers();
        let free = thick.capacity().unwrap().free_kib * 1024;
        let e = thick.create("big_00000", free + (1 << 30)).unwrap_err();
        assert!(matches!(e, StorageError::NoSpace { .. }), "{e}");
        assert!(!dir.path().join("big_00000.img").exists());
        thick.create("big_00000", 4096).unwrap();
        let e = thick.grow("big_00000", free + (1 << 30)).unwrap_err();
        assert!(matches!(e, StorageError::NoSpace { .. }), "{e}");
        assert_eq!(thick.get("big_00000").unwrap().unwrap().size, 4096);
        let e = thick.create("zero_00000", 0).unwrap_err();
        assert!(matches!(e, StorageError::InvalidSize { .. }), "{e}");
    }

    #[test]
    fn a_failed_create_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r1_00000.img");
        let e = create_file(&path, |f| {
            f.set_len(12345).unwrap();
            Err(StorageError::io(
                "size",
                &path,
                io::Error::other("injected failure"),
            ))
        })
        .unwrap_err();
        assert!(e.to_string().contains("injected failure"), "{e}");
        assert!(!path.exists());
        // And create never replaces an existing file.
        std::fs::write(&path, b"data").unwrap();
        let e = create_file(&path, |_| Ok(())).unwrap_err();
        assert!(
            matches!(&e, StorageError::Io { source, .. } if source.kind() == io::ErrorKind::AlreadyExists),
            "{e}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), b"data");
    }
}
