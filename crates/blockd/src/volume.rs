//! A volume on a local backing file: data at offset 0, metadata at the end
//! (`replica::md`). Opening marks the metadata dirty; a clean close clears the mark, so
//! the next open knows whether the previous run ended in a crash.
//!
//! Online grow ([`LocalVolume::grow`]) extends a backing *file* and moves the metadata
//! to its new end in steps, each made durable before the next:
//!
//! 1. one write of the two superblock slots at the new end, extending the file: the
//!    new layout, `FLAG_GROWING` and the old size (`grow_from`); the bitmaps are still
//!    at their old place, and the old superblock is still valid where it was;
//! 2. the bitmaps copied to their new place (the bits for new blocks clear);
//! 3. a superblock with `FLAG_GROW_MOVED`: the bitmaps are at the new place;
//! 4. the old metadata area, now part of the data, cleared to zeros;
//! 5. a superblock without the grow flags.
//!
//! A crash before step 1 is durable leaves the old file (this relies on the file
//! system not exposing an extended size before the data of the extending write, as
//! ext4 in its default data=ordered mode and XFS guarantee); after it, the open finds
//! the flags and finishes the steps left. The new area reads as zeros: the extended
//! part of the file is a hole, and the old metadata area is cleared in step 4.

use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use nbd::{BlockDevice, DeviceError};
use replica::md::{self, Layout, MdError, Superblock};
use rustix::fs::{FallocateFlags, FlockOperation};
use rustix::io::ReadWriteFlags;
use thiserror::Error;

use crate::config::VolumeConfig;

#[derive(Debug, Error)]
pub enum VolumeError {
    #[error(
        "backing {path} does not exist; set `size` for this volume in the resource file so tandem creates it, or create it yourself"
    )]
    Missing { path: PathBuf },
    #[error("backing {path}: {what}: {source}")]
    Io {
        path: PathBuf,
        what: &'static str,
        source: io::Error,
    },
    #[error(
        "backing {path} is in use by another process (it holds the lock); stop that process or fix the backing path"
    )]
    Busy { path: PathBuf },
    #[error(
        "backing {path} has no tandem metadata at its end; if it is new, run `tandem local create-md {resource}` to initialise it (this overwrites its last {md_bytes} bytes); if it was resized, restore its previous size"
    )]
    NoMetadata {
        path: PathBuf,
        resource: String,
        md_bytes: u64,
    },
    #[error(
        "backing {path} already has tandem metadata; `create-md --force` overwrites it and resets the volume's replication state"
    )]
    HasMetadata { path: PathBuf },
    #[error("backing {path}: {source}")]
    Md { path: PathBuf, source: MdError },
    #[error(
        "backing {path} is {actual} bytes but its metadata was made for {recorded} bytes; restore the original size (grow a volume with `tandem local resize`, which moves the metadata)"
    )]
    SizeChanged {
        path: PathBuf,
        recorded: u64,
        actual: u64,
    },
    #[error(
        "backing {path} holds {current} bytes; shrinking to {asked} is not supported (nothing was changed)"
    )]
    Shrink {
        path: PathBuf,
        current: u64,
        asked: u64,
    },
    #[error(
        "backing {path}: growing from {current} to {asked} bytes is too little: the metadata moves past the old end, so grow by at least {md} bytes"
    )]
    GrowTooSmall {
        path: PathBuf,
        current: u64,
        asked: u64,
        md: u64,
    },
    #[error(
        "backing {path} is not a regular file; online grow supports backing files only (nothing was changed)"
    )]
    NotAFile { path: PathBuf },
}

/// Counters shown by status and read by benchmarks.
#[derive(Debug, Default)]
pub struct IoStats {
    pub read_bytes: AtomicU64,
    pub written_bytes: AtomicU64,
    pub flushes: AtomicU64,
}

#[derive(Debug)]
pub struct LocalVolume {
    file: File,
    path: PathBuf,
    /// Exported bytes (grows with [`LocalVolume::grow`]).
    data_size: AtomicU64,
    thick: bool,
    sb: Mutex<Superblock>,
    /// The previous run closed the volume cleanly.
    pub was_clean: bool,
    closed: AtomicBool,
    pub stats: IoStats,
}

fn io_err<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(io::Error) -> VolumeError + 'a {
    move |source| VolumeError::Io {
        path: path.to_owned(),
        what,
        source,
    }
}

fn random_bytes<const N: usize>() -> io::Result<[u8; N]> {
    use std::io::Read;
    let mut b = [0u8; N];
    File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b)
}

/// Reads the newest valid superblock of an open backing file of `size` bytes.
fn read_sb(file: &File, path: &Path, size: u64) -> Result<Superblock, VolumeError> {
    let usable = size / md::MD_BLOCK * md::MD_BLOCK;
    let start = usable
        .checked_sub(2 * md::MD_BLOCK)
        .ok_or(VolumeError::Md {
            path: path.to_owned(),
            source: MdError::NotFound,
        })?;
    let mut slots = vec![0u8; 2 * md::MD_BLOCK as usize];
    file.read_exact_at(&mut slots, start)
        .map_err(io_err(path, "read superblock"))?;
    let (a, b) = slots.split_at(md::MD_BLOCK as usize);
    Superblock::pick(a, b).map_err(|source| VolumeError::Md {
        path: path.to_owned(),
        source,
    })
}

fn write_sb(file: &File, path: &Path, sb: &Superblock) -> Result<(), VolumeError> {
    file.write_all_at(&sb.encode(), sb.layout.sb_slot(sb.slot()))
        .map_err(io_err(path, "write superblock"))?;
    file.sync_data().map_err(io_err(path, "sync superblock"))
}

fn file_size(file: &File, path: &Path) -> Result<u64, VolumeError> {
    // Works for regular files and block devices alike.
    let mut f = file;
    io::Seek::seek(&mut f, io::SeekFrom::End(0)).map_err(io_err(path, "size"))
}

fn lock(file: &File, path: &Path) -> Result<(), VolumeError> {
    rustix::fs::flock(file, FlockOperation::NonBlockingLockExclusive).map_err(|e| {
        if e == rustix::io::Errno::WOULDBLOCK {
            VolumeError::Busy {
                path: path.to_owned(),
            }
        } else {
            VolumeError::Io {
                path: path.to_owned(),
                what: "lock",
                source: e.into(),
            }
        }
    })
}

/// Reads what the metadata says about a backing file without opening it for use.
pub fn peek(path: &Path) -> Result<Superblock, VolumeError> {
    let file = File::open(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            VolumeError::Missing {
                path: path.to_owned(),
            }
        } else {
            VolumeError::Io {
                path: path.to_owned(),
                what: "open",
                source: e,
            }
        }
    })?;
    let size = file_size(&file, path)?;
    read_sb(&file, path, size)
}

/// Initialises metadata on the volume's backing file, creating the file when it does
/// not exist and the config gives a size. Refuses to overwrite valid metadata unless
/// `force`.
pub fn create_md(cfg: &VolumeConfig, force: bool) -> Result<Superblock, VolumeError> {
    create_md_open(cfg, force).map(|(_, sb)| sb)
}

/// Initialises metadata on a backing volume that was just created and reads as zeros
/// on every node that holds the resource (thin or sparse volumes made together for a
/// new resource): the volume starts UpToDate as node `node_id`'s replica of
/// `generation`, with clear bitmaps, so peers seeded alike need no initial sync.
/// Refuses a volume that already has metadata: seeding is for new volumes only.
pub fn seed_md(
    cfg: &VolumeConfig,
    node_id: u8,
    generation: u64,
) -> Result<Superblock, VolumeError> {
    let (file, sb) = create_md_open(cfg, false)?;
    let mut seeded = sb.next();
    seeded.node_id = u32::from(node_id);
    seeded.disk_state = md::DiskState::UpToDate;
    seeded.current_uuid = generation;
    write_sb(&file, &cfg.backing, &seeded)?;
    Ok(seeded)
}

fn create_md_open(cfg: &VolumeConfig, force: bool) -> Result<(File, Superblock), VolumeError> {
    let path = &cfg.backing;
    let file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let size = cfg
                .size
                .ok_or_else(|| VolumeError::Missing { path: path.clone() })?;
            // Check the size before creating anything.
            Layout::compute(size, cfg.max_peers, md::DEFAULT_AL_SLOTS).map_err(|source| {
                VolumeError::Md {
                    path: path.clone(),
                    source,
                }
            })?;
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(path)
                .map_err(io_err(path, "create"))?;
            let sized = if cfg.preallocate {
                rustix::fs::fallocate(&f, FallocateFlags::empty(), 0, size).map_err(io::Error::from)
            } else {
                f.set_len(size)
            };
            if let Err(e) = sized {
                let _ = std::fs::remove_file(path);
                return Err(VolumeError::Io {
                    path: path.clone(),
                    what: "allocate",
                    source: e,
                });
            }
            f
        }
        Err(e) => {
            return Err(VolumeError::Io {
                path: path.clone(),
                what: "open",
                source: e,
            });
        }
    };
    lock(&file, path)?;
    let size = file_size(&file, path)?;
    match read_sb(&file, path, size) {
        Ok(_) if !force => return Err(VolumeError::HasMetadata { path: path.clone() }),
        _ => {}
    }
    let layout = Layout::compute(size, cfg.max_peers, md::DEFAULT_AL_SLOTS).map_err(|source| {
        VolumeError::Md {
            path: path.clone(),
            source,
        }
    })?;
    // Clear bitmaps, activity log and the second superblock slot, so nothing of an
    // earlier format or run can be mistaken for current state.
    zero_range(
        &file,
        layout.bitmap_offset,
        layout.backing_size - layout.bitmap_offset,
    )
    .map_err(io_err(path, "clear metadata area"))?;
    let uuid = random_bytes::<16>().map_err(io_err(path, "random"))?;
    let generation = u64::from_le_bytes(random_bytes::<8>().map_err(io_err(path, "random"))?) | 1;
    let sb = Superblock::new(layout, uuid, generation);
    write_sb(&file, path, &sb)?;
    Ok((file, sb))
}

/// The smallest backing size, a multiple of 4 MiB (LVM's default extent, so every
/// provider allocates exactly this much), whose data area holds `usable` bytes with
/// `max_peers` peer slots.
pub fn backing_size_for(usable: u64, max_peers: u32) -> Result<u64, MdError> {
    const GRAIN: u64 = 4 << 20;
    let round = |v: u64| v.div_ceil(GRAIN).saturating_mul(GRAIN);
    let usable = usable.max(md::MIN_DATA_SIZE);
    let mut size = round(usable);
    // Each step adds at least the metadata the previous size lacked; a few suffice.
    for _ in 0..16 {
        let layout = Layout::compute(size, max_peers, md::DEFAULT_AL_SLOTS)?;
        if layout.data_size >= usable {
            return Ok(size);
        }
        size = round(size.saturating_add(usable - layout.data_size));
    }
    Err(MdError::Corrupt("volume size out of range"))
}

/// The layout after growing `old` to `new_size` bytes: the new metadata area must lie
/// past the old end, so the move never overwrites the metadata it copies.
fn grow_layout(path: &Path, old: &Layout, new_size: u64) -> Result<Layout, VolumeError> {
    let new = Layout::compute(new_size, old.max_peers, old.al_slots).map_err(|source| {
        VolumeError::Md {
            path: path.to_owned(),
            source,
        }
    })?;
    if new.data_size < old.backing_size {
        return Err(VolumeError::GrowTooSmall {
            path: path.to_owned(),
            current: old.backing_size,
            asked: new_size,
            md: new.md_size(),
        });
    }
    Ok(new)
}

/// Steps 2 to 5 of a grow, from the state `sb` (which carries `FLAG_GROWING`) records;
/// stops after step `stop_after`. Returns the last superblock written.
fn finish_grow(
    file: &File,
    path: &Path,
    sb: Superblock,
    stop_after: u32,
) -> Result<Superblock, VolumeError> {
    let new = sb.layout;
    let corrupt = |what| VolumeError::Md {
        path: path.to_owned(),
        source: MdError::Corrupt(what),
    };
    let old = Layout::compute(sb.grow_from, new.max_peers, new.al_slots)
        .map_err(|_| corrupt("the size before an interrupted grow does not fit"))?;
    if sb.grow_from >= new.backing_size || new.data_size < old.backing_size {
        return Err(corrupt(
            "the size before an interrupted grow does not fit the new one",
        ));
    }
    let mut sb = sb;
    if sb.flags & md::FLAG_GROW_MOVED == 0 {
        // Step 2: the bitmaps to their new place; the new blocks' bits are clear.
        let mut buf = vec![0u8; old.bitmap_bytes as usize];
        for i in 0..=new.max_peers {
            file.read_exact_at(&mut buf, old.bitmap_at(i))
                .map_err(io_err(path, "read bitmap"))?;
            file.write_all_at(&buf, new.bitmap_at(i))
                .map_err(io_err(path, "write bitmap"))?;
            zero_range(
                file,
                new.bitmap_at(i) + old.bitmap_bytes,
                new.bitmap_bytes - old.bitmap_bytes,
            )
            .map_err(io_err(path, "clear bitmap"))?;
        }
        zero_range(file, new.al_offset, new.sb_offset - new.al_offset)
            .map_err(io_err(path, "clear activity log"))?;
        file.sync_data().map_err(io_err(path, "sync bitmaps"))?;
        if stop_after <= 2 {
            return Ok(sb);
        }
        // Step 3.
        sb = sb.next();
        sb.flags |= md::FLAG_GROW_MOVED;
        write_sb(file, path, &sb)?;
        if stop_after <= 3 {
            return Ok(sb);
        }
    }
    // Step 4: the old metadata area is data now, and new data reads as zeros.
    zero_range(file, old.data_size, old.backing_size - old.data_size)
        .map_err(io_err(path, "clear the old metadata area"))?;
    file.sync_data()
        .map_err(io_err(path, "sync the old metadata area"))?;
    if stop_after <= 4 {
        return Ok(sb);
    }
    // Step 5.
    sb = sb.next();
    sb.flags &= !(md::FLAG_GROWING | md::FLAG_GROW_MOVED);
    sb.grow_from = 0;
    write_sb(file, path, &sb)?;
    Ok(sb)
}

/// Grows the backing of a volume that is not open (its resource is down here).
pub fn grow_offline(
    cfg: &VolumeConfig,
    resource: &str,
    new_size: u64,
) -> Result<Layout, VolumeError> {
    let v = LocalVolume::open(cfg, resource)?;
    let r = v.grow(new_size);
    let closed = v.close();
    let layout = r?;
    closed?;
    Ok(layout)
}

/// Makes `len` bytes at `offset` read as zeroes, keeping the file size.
fn zero_range(file: &File, offset: u64, len: u64) -> io::Result<()> {
    let keep = FallocateFlags::KEEP_SIZE;
    if rustix::fs::fallocate(file, FallocateFlags::ZERO_RANGE | keep, offset, len).is_ok() {
        return Ok(());
    }
    write_zero_bytes(file, offset, len)
}

fn write_zero_bytes(file: &File, offset: u64, len: u64) -> io::Result<()> {
    const CHUNK: u64 = 1 << 20;
    let zeros = vec![0u8; CHUNK.min(len) as usize];
    let mut done = 0;
    while done < len {
        let n = CHUNK.min(len - done) as usize;
        file.write_all_at(&zeros[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

impl LocalVolume {
    /// Opens the volume for serving. A missing backing file with a configured size is
    /// created and initialised (nothing can be lost); an existing file needs metadata.
    pub fn open(cfg: &VolumeConfig, resource: &str) -> Result<LocalVolume, VolumeError> {
        let path = &cfg.backing;
        if !path.exists() && cfg.size.is_some() {
            create_md(cfg, false)?;
            tracing::info!(backing = %path.display(), "created backing file and metadata");
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| {
                if e.kind() == io::ErrorKind::NotFound {
                    VolumeError::Missing { path: path.clone() }
                } else {
                    VolumeError::Io {
                        path: path.clone(),
                        what: "open",
                        source: e,
                    }
                }
            })?;
        lock(&file, path)?;
        // No kernel readahead: clients and resyncs read what they need in large
        // requests already, and readahead fills the page cache with large folios, which
        // make every later 4 KiB write into them slower (ext4 walks the whole folio).
        // Only advice: a filesystem that ignores it changes nothing.
        let _ = rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::Random);
        let size = file_size(&file, path)?;
        let sb = match read_sb(&file, path, size) {
            Ok(sb) => sb,
            Err(VolumeError::Md {
                source: MdError::NotFound,
                ..
            }) => {
                let md_bytes = Layout::compute(size, cfg.max_peers, md::DEFAULT_AL_SLOTS)
                    .map(|l| l.md_size())
                    .unwrap_or(0);
                return Err(VolumeError::NoMetadata {
                    path: path.clone(),
                    resource: resource.to_owned(),
                    md_bytes,
                });
            }
            Err(e) => return Err(e),
        };
        if sb.layout.backing_size != size {
            return Err(VolumeError::SizeChanged {
                path: path.clone(),
                recorded: sb.layout.backing_size,
                actual: size,
            });
        }
        let sb = if sb.flags & md::FLAG_GROWING != 0 {
            tracing::warn!(backing = %path.display(), from = sb.grow_from, to = size, "finishing an interrupted grow");
            finish_grow(&file, path, sb, u32::MAX)?
        } else {
            sb
        };
        if let Some(want) = cfg.size
            && want != size
        {
            tracing::warn!(backing = %path.display(), "the resource file says size {want} but the backing holds {size} bytes (its metadata decides; after a resize, update the file)");
        }
        let was_clean = !sb.dirty();
        if !was_clean {
            tracing::warn!(backing = %path.display(), "previous run did not close this volume cleanly");
        }
        let mut next = sb.next();
        next.flags |= md::FLAG_DIRTY;
        write_sb(&file, path, &next)?;
        Ok(LocalVolume {
            file,
            path: path.clone(),
            data_size: AtomicU64::new(sb.layout.data_size),
            thick: cfg.preallocate,
            sb: Mutex::new(next),
            was_clean,
            closed: AtomicBool::new(false),
            stats: IoStats::default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn superblock(&self) -> Option<Superblock> {
        self.sb.lock().ok().map(|s| s.clone())
    }

    /// Refuses all further I/O with ESHUTDOWN (requests already running finish).
    pub fn stop_io(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// Flushes and records a clean close in the metadata.
    pub fn close(&self) -> Result<(), VolumeError> {
        self.stop_io();
        self.file.sync_data().map_err(io_err(&self.path, "flush"))?;
        let mut sb = self.sb.lock().map_err(|_| VolumeError::Io {
            path: self.path.clone(),
            what: "close",
            source: io::Error::other("metadata lock poisoned"),
        })?;
        let mut next = sb.next();
        next.flags &= !md::FLAG_DIRTY;
        write_sb(&self.file, &self.path, &next)?;
        *sb = next;
        Ok(())
    }

    /// Reads every bitmap of the metadata as words: one per peer slot, then the
    /// resync bitmap. Only the words covering the data are returned.
    pub fn read_bitmaps(&self) -> Result<Vec<Vec<u64>>, VolumeError> {
        let layout = self.layout()?;
        let words = (layout.data_size / md::BM_BLOCK).div_ceil(64) as usize;
        let mut out = Vec::new();
        let mut buf = vec![0u8; words * 8];
        for i in 0..=layout.max_peers {
            self.file
                .read_exact_at(&mut buf, layout.bitmap_at(i))
                .map_err(io_err(&self.path, "read bitmap"))?;
            out.push(
                buf.chunks_exact(8)
                    .map(|c| {
                        let mut w = [0u8; 8];
                        w.copy_from_slice(c);
                        u64::from_le_bytes(w)
                    })
                    .collect(),
            );
        }
        Ok(out)
    }

    /// Makes a metadata change durable: the changed bitmap pages `(bitmap index,
    /// byte offset inside it, bytes)` first, then the superblock as `update` leaves
    /// it. A crash in between leaves the previous superblock, and bitmap pages only
    /// ever hold bits the core already asked for.
    pub fn write_md(
        &self,
        pages: &[(u32, u64, Vec<u8>)],
        update: impl FnOnce(&mut Superblock),
    ) -> Result<(), VolumeError> {
        let layout = self.layout()?;
        for (index, at, bytes) in pages {
            if *index > layout.max_peers || at + bytes.len() as u64 > layout.bitmap_bytes {
                return Err(VolumeError::Io {
                    path: self.path.clone(),
                    what: "write bitmap",
                    source: io::Error::other("bitmap page outside its area"),
                });
            }
            self.file
                .write_all_at(bytes, layout.bitmap_at(*index) + at)
                .map_err(io_err(&self.path, "write bitmap"))?;
        }
        if !pages.is_empty() {
            self.file
                .sync_data()
                .map_err(io_err(&self.path, "sync bitmap"))?;
        }
        let mut sb = self.sb.lock().map_err(|_| VolumeError::Io {
            path: self.path.clone(),
            what: "write metadata",
            source: io::Error::other("metadata lock poisoned"),
        })?;
        let mut next = sb.next();
        update(&mut next);
        write_sb(&self.file, &self.path, &next)?;
        *sb = next;
        Ok(())
    }

    /// Grows the backing file to `new_size` bytes and moves the metadata to its new
    /// end (the steps are in the module's documentation); data I/O within the old
    /// size may go on meanwhile, metadata writes must not. Returns the new layout.
    /// On an error the superblock in memory is the last one made durable: if it still
    /// carries `FLAG_GROWING`, the volume must not write metadata until reopened,
    /// which finishes the grow.
    pub fn grow(&self, new_size: u64) -> Result<Layout, VolumeError> {
        self.grow_until(new_size, u32::MAX)
    }

    /// [`LocalVolume::grow`], stopping after step `stop_after` (a simulated crash).
    fn grow_until(&self, new_size: u64, stop_after: u32) -> Result<Layout, VolumeError> {
        let path = &self.path;
        let mut sb = self.sb.lock().map_err(|_| VolumeError::Io {
            path: path.clone(),
            what: "grow",
            source: io::Error::other("metadata lock poisoned"),
        })?;
        let old = sb.layout;
        if new_size == old.backing_size {
            return Ok(old);
        }
        if new_size < old.backing_size {
            return Err(VolumeError::Shrink {
                path: path.clone(),
                current: old.backing_size,
                asked: new_size,
            });
        }
        let meta = self.file.metadata().map_err(io_err(path, "stat"))?;
        if !meta.file_type().is_file() {
            return Err(VolumeError::NotAFile { path: path.clone() });
        }
        let new = grow_layout(path, &old, new_size)?;
        if self.thick {
            rustix::fs::fallocate(
                &self.file,
                FallocateFlags::empty(),
                old.backing_size,
                new_size - old.backing_size,
            )
            .map_err(|e| VolumeError::Io {
                path: path.clone(),
                what: "allocate",
                source: e.into(),
            })?;
        }
        // Step 1: both slots at the new end in one write, which extends the file.
        let mut s1 = sb.next();
        s1.layout = new;
        s1.flags = (s1.flags | md::FLAG_GROWING) & !md::FLAG_GROW_MOVED;
        s1.grow_from = old.backing_size;
        let mut tail = vec![0u8; 2 * md::MD_BLOCK as usize];
        let at = (s1.slot() * md::MD_BLOCK) as usize;
        tail[at..at + md::MD_BLOCK as usize].copy_from_slice(&s1.encode());
        let extended = self
            .file
            .write_all_at(&tail, new.sb_offset)
            .and_then(|_| self.file.sync_all());
        if let Err(e) = extended {
            // Nothing of the new size may stay: the open checks the size against
            // the metadata.
            let _ = self.file.set_len(old.backing_size);
            let _ = self.file.sync_all();
            return Err(VolumeError::Io {
                path: path.clone(),
                what: "write superblock at the new end",
                source: e,
            });
        }
        *sb = s1.clone();
        if stop_after <= 1 {
            return Ok(new);
        }
        let done = finish_grow(&self.file, path, s1, stop_after);
        if let Ok(d) = &done {
            *sb = d.clone();
            if d.flags & md::FLAG_GROWING == 0 {
                self.data_size.store(new.data_size, Ordering::SeqCst);
            }
        }
        done.map(|_| new)
    }

    fn layout(&self) -> Result<Layout, VolumeError> {
        self.sb
            .lock()
            .map(|s| s.layout)
            .map_err(|_| VolumeError::Io {
                path: self.path.clone(),
                what: "read metadata",
                source: io::Error::other("metadata lock poisoned"),
            })
    }

    fn check(&self, offset: u64, len: u64) -> Result<(), DeviceError> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(DeviceError::Shutdown);
        }
        // The NBD layer checks ranges too; this guards the metadata behind the data.
        match offset.checked_add(len) {
            Some(end) if end <= self.data_size.load(Ordering::SeqCst) => Ok(()),
            _ => Err(DeviceError::NoSpace),
        }
    }

    fn sync(&self) -> Result<(), DeviceError> {
        self.stats.flushes.fetch_add(1, Ordering::Relaxed);
        self.file.sync_data().map_err(DeviceError::Io)
    }

    /// Writes back and drops this volume's pages from the page cache (pages written
    /// meanwhile stay). Called when a resync into this node finished: the copied data
    /// is not read here, and large writes leave it in large page-cache folios, which
    /// make every later 4 KiB write into them slower (ext4 walks the whole folio).
    pub fn drop_cache(&self) -> io::Result<()> {
        self.file.sync_data()?;
        rustix::fs::fadvise(&self.file, 0, None, rustix::fs::Advice::DontNeed)?;
        Ok(())
    }
}

impl BlockDevice for LocalVolume {
    fn size(&self) -> u64 {
        self.data_size.load(Ordering::SeqCst)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), DeviceError> {
        self.check(offset, buf.len() as u64)?;
        self.file.read_exact_at(buf, offset)?;
        self.stats
            .read_bytes
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> Result<(), DeviceError> {
        self.check(offset, buf.len() as u64)?;
        if fua {
            // RWF_DSYNC makes just this write durable, cheaper than a full fdatasync.
            let mut done = 0usize;
            while done < buf.len() {
                let n = rustix::io::pwritev2(
                    &self.file,
                    &[IoSlice::new(&buf[done..])],
                    offset + done as u64,
                    ReadWriteFlags::DSYNC,
                )
                .map_err(io::Error::from)?;
                if n == 0 {
                    return Err(DeviceError::Io(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "short write",
                    )));
                }
                done += n;
            }
        } else {
            self.file.write_all_at(buf, offset)?;
        }
        self.stats
            .written_bytes
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    fn flush(&self) -> Result<(), DeviceError> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(DeviceError::Shutdown);
        }
        self.sync()
    }

    fn trim(&self, offset: u64, len: u64, fua: bool) -> Result<(), DeviceError> {
        self.check(offset, len)?;
        // A preallocated volume keeps its blocks; trim is only a hint, so skip it.
        if !self.thick && len > 0 {
            let flags = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
            // A filesystem without hole punching just keeps the data.
            let _ = rustix::fs::fallocate(&self.file, flags, offset, len);
        }
        if fua { self.sync() } else { Ok(()) }
    }

    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        may_trim: bool,
        fua: bool,
    ) -> Result<(), DeviceError> {
        self.check(offset, len)?;
        if len > 0 {
            let keep = FallocateFlags::KEEP_SIZE;
            let punched = may_trim
                && !self.thick
                && rustix::fs::fallocate(
                    &self.file,
                    FallocateFlags::PUNCH_HOLE | keep,
                    offset,
                    len,
                )
                .is_ok();
            if !punched {
                zero_range(&self.file, offset, len)?;
            }
            self.stats.written_bytes.fetch_add(len, Ordering::Relaxed);
        }
        if fua { self.sync() } else { Ok(()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &Path, size: Option<u64>) -> VolumeConfig {
        VolumeConfig {
            number: 0,
            backing: dir.join("v.img"),
            size,
            preallocate: false,
            nbd_tcp: None,
            max_peers: 3,
        }
    }

    #[test]
    fn open_creates_reopens_and_tracks_clean_close() {
        let d = tempfile::tempdir().unwrap();
        let c = cfg(d.path(), Some(16 << 20));
        let v = LocalVolume::open(&c, "r0").unwrap();
        assert!(v.size() < 16 << 20 && v.size() > 15 << 20);
        assert!(v.was_clean);
        v.write_at(b"hello", 4096, true).unwrap();
        v.write_zeroes(8192, 4096, true, false).unwrap();
        assert!(matches!(
            v.write_at(b"x", v.size(), false),
            Err(DeviceError::NoSpace)
        ));
        // A second opener is refused while the first holds the lock.
        assert!(matches!(
            LocalVolume::open(&c, "r0"),
            Err(VolumeError::Busy { .. })
        ));
        // Dropped without close: next open sees an unclean shutdown.
        drop(v);
        let v = LocalVolume::open(&c, "r0").unwrap();
        assert!(!v.was_clean);
        let mut b = [0u8; 5];
        v.read_at(&mut b, 4096).unwrap();
        assert_eq!(&b, b"hello");
        v.close().unwrap();
        assert!(matches!(v.read_at(&mut b, 0), Err(DeviceError::Shutdown)));
        drop(v);
        assert!(LocalVolume::open(&c, "r0").unwrap().was_clean);
    }

    #[test]
    fn existing_file_without_metadata_is_refused_until_create_md() {
        let d = tempfile::tempdir().unwrap();
        let c = cfg(d.path(), None);
        assert!(matches!(
            LocalVolume::open(&c, "r0"),
            Err(VolumeError::Missing { .. })
        ));
        std::fs::write(&c.backing, vec![7u8; 8 << 20]).unwrap();
        let e = LocalVolume::open(&c, "r0").unwrap_err();
        assert!(e.to_string().contains("tandem local create-md r0"), "{e}");
        create_md(&c, false).unwrap();
        assert!(matches!(
            create_md(&c, false),
            Err(VolumeError::HasMetadata { .. })
        ));
        create_md(&c, true).unwrap();
        let v = LocalVolume::open(&c, "r0").unwrap();
        // Data at the start of the file is untouched by create-md.
        let mut b = [0u8; 4];
        v.read_at(&mut b, 0).unwrap();
        assert_eq!(b, [7; 4]);
    }

    #[test]
    fn seeded_metadata_is_an_up_to_date_replica_of_the_given_generation() {
        let d = tempfile::tempdir().unwrap();
        let c = cfg(d.path(), None);
        std::fs::File::create(&c.backing)
            .unwrap()
            .set_len(8 << 20)
            .unwrap();
        let sb = seed_md(&c, 2, 0xabcd).unwrap();
        assert_eq!(sb.node_id, 2);
        assert_eq!(sb.disk_state, md::DiskState::UpToDate);
        assert_eq!(sb.current_uuid, 0xabcd);
        let v = LocalVolume::open(&c, "r0").unwrap();
        let back = v.superblock().unwrap();
        assert_eq!((back.node_id, back.current_uuid), (2, 0xabcd));
        assert_eq!(back.disk_state, md::DiskState::UpToDate);
        drop(v);
        // A volume with metadata is never seeded again.
        assert!(matches!(
            seed_md(&c, 2, 0xabcd),
            Err(VolumeError::HasMetadata { .. })
        ));
    }

    #[test]
    fn backing_size_holds_the_usable_size_in_whole_4mib_steps() {
        for usable in [1u64 << 20, 4 << 20, 1 << 30, (1 << 30) + 1, 100 << 30] {
            let b = backing_size_for(usable, 7).unwrap();
            assert_eq!(b % (4 << 20), 0);
            let l = Layout::compute(b, 7, md::DEFAULT_AL_SLOTS).unwrap();
            assert!(l.data_size >= usable, "{usable}: {l:?}");
            // Not more than one step above what is needed.
            let smaller = Layout::compute(b - (4 << 20), 7, md::DEFAULT_AL_SLOTS);
            assert!(
                smaller.is_err() || smaller.unwrap().data_size < usable,
                "{usable}"
            );
        }
    }

    #[test]
    fn resized_backing_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let c = cfg(d.path(), Some(8 << 20));
        LocalVolume::open(&c, "r0").unwrap().close().unwrap();
        let f = OpenOptions::new().write(true).open(&c.backing).unwrap();
        f.set_len((8 << 20) + 1000).unwrap();
        assert!(matches!(
            LocalVolume::open(&c, "r0"),
            Err(VolumeError::SizeChanged { .. })
        ));
    }

    /// A volume of 8 MiB with a pattern in its data and bits in its bitmaps.
    fn grown_fixture(d: &Path) -> (VolumeConfig, LocalVolume, u64) {
        let c = cfg(d, Some(8 << 20));
        let v = LocalVolume::open(&c, "r0").unwrap();
        let old = v.size();
        v.write_at(&[0xab; 4096], 0, false).unwrap();
        v.write_at(&[0xcd; 4096], old - 4096, false).unwrap();
        // Bitmap 1 gets its first and last data blocks marked, the resync bitmap one.
        let last = (old / md::BM_BLOCK - 1) as usize;
        let mut page = vec![0u8; 4096];
        page[0] = 1;
        page[last / 8] |= 1 << (last % 8);
        v.write_md(&[(1, 0, page), (3, 0, vec![0x80])], |sb| {
            sb.current_uuid = 77
        })
        .unwrap();
        (c, v, old)
    }

    /// Opens the volume after a (possibly interrupted) grow: old data, bitmaps and
    /// generation intact, the new area zero; returns the backing size it opened at.
    fn check_grown(c: &VolumeConfig, old: u64) -> u64 {
        let v = LocalVolume::open(c, "r0").unwrap();
        let sb = v.superblock().unwrap();
        assert_eq!(sb.flags & (md::FLAG_GROWING | md::FLAG_GROW_MOVED), 0);
        assert_eq!(sb.current_uuid, 77);
        let size = v.size();
        if sb.layout.backing_size == 8 << 20 {
            assert_eq!(size, old);
        } else {
            assert!(size > old);
        }
        let mut b = vec![0u8; 4096];
        v.read_at(&mut b, 0).unwrap();
        assert_eq!(b, vec![0xab; 4096]);
        v.read_at(&mut b, old - 4096).unwrap();
        assert_eq!(b, vec![0xcd; 4096]);
        if size > old {
            // Everything past the old data reads as zeros, old metadata included.
            let mut rest = vec![0u8; (size - old) as usize];
            v.read_at(&mut rest, old).unwrap();
            assert!(rest.iter().all(|x| *x == 0), "new area not zero");
        }
        let bms = v.read_bitmaps().unwrap();
        let last = old / md::BM_BLOCK - 1;
        let bit = |w: &Vec<u64>, b: u64| w[(b / 64) as usize] >> (b % 64) & 1 == 1;
        let set: Vec<u64> = (0..size / md::BM_BLOCK)
            .filter(|b| bit(&bms[1], *b))
            .collect();
        assert_eq!(set, vec![0, last]);
        assert!(bit(&bms[3], 7));
        assert_eq!(bms[3].iter().map(|w| w.count_ones()).sum::<u32>(), 1);
        assert!(bms[0].iter().all(|w| *w == 0));
        v.close().unwrap();
        sb.layout.backing_size
    }

    #[test]
    fn grow_moves_the_metadata_to_the_new_end_and_keeps_everything() {
        let d = tempfile::tempdir().unwrap();
        let (c, v, old) = grown_fixture(d.path());
        let new = v.grow(24 << 20).unwrap();
        assert_eq!(v.size(), new.data_size);
        assert_eq!(std::fs::metadata(&c.backing).unwrap().len(), 24 << 20);
        v.close().unwrap();
        drop(v);
        assert_eq!(check_grown(&c, old), 24 << 20);
        // Written at the far end, then read back after a reopen.
        let v = LocalVolume::open(&c, "r0").unwrap();
        v.write_at(&[0xef; 4096], new.data_size - 4096, true)
            .unwrap();
        drop(v);
        let v = LocalVolume::open(&c, "r0").unwrap();
        let mut b = vec![0u8; 4096];
        v.read_at(&mut b, new.data_size - 4096).unwrap();
        assert_eq!(b, vec![0xef; 4096]);
    }

    #[test]
    fn a_crash_after_any_step_of_a_grow_opens_at_the_old_or_the_new_size() {
        for step in 0..=5 {
            let d = tempfile::tempdir().unwrap();
            let (c, v, old) = grown_fixture(d.path());
            if step > 0 {
                v.grow_until(24 << 20, step).unwrap();
            }
            // The crash: no close, nothing more written.
            drop(v);
            let expect = if step == 0 { 8 << 20 } else { 24 << 20 };
            assert_eq!(check_grown(&c, old), expect, "crash after step {step}");
            assert_eq!(std::fs::metadata(&c.backing).unwrap().len(), expect);
        }
    }

    #[test]
    fn a_shrink_or_a_too_small_grow_changes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let (c, v, old) = grown_fixture(d.path());
        assert!(matches!(v.grow(4 << 20), Err(VolumeError::Shrink { .. })));
        let e = v.grow((8 << 20) + 4096).unwrap_err();
        assert!(matches!(e, VolumeError::GrowTooSmall { .. }), "{e}");
        assert_eq!(v.grow(8 << 20).unwrap().backing_size, 8 << 20);
        assert_eq!(v.size(), old);
        v.close().unwrap();
        drop(v);
        assert_eq!(std::fs::metadata(&c.backing).unwrap().len(), 8 << 20);
        assert_eq!(check_grown(&c, old), 8 << 20);
    }

    #[test]
    fn too_small_size_creates_nothing() {
        let d = tempfile::tempdir().unwrap();
        let c = cfg(d.path(), Some(100 << 10));
        assert!(matches!(
            LocalVolume::open(&c, "r0"),
            Err(VolumeError::Md {
                source: MdError::TooSmall { .. },
                ..
            })
        ));
        assert!(!c.backing.exists());
    }
}
