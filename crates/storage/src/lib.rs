//! tandem's storage providers: where the backing volumes of a node's storage pools live.
//!
//! One [`Provider`] per storage pool creates, grows, lists and removes the pool's
//! backing volumes and reports its capacity. The kinds are LINSTOR's:
//!
//! - `FILE` / `FILE_THIN` ([`FileProvider`]): one preallocated (`fallocate`) or sparse
//!   file `<dir>/<name>.img` per volume. Real, and what tests and the playground use.
//! - `LVM` / `LVM_THIN` ([`LvmProvider`]): logical volumes of a volume group, or thin
//!   volumes of a thin pool, through `lvcreate`, `lvextend`, `lvremove`, `lvs`, `vgs`.
//! - `ZFS` / `ZFS_THIN` ([`ZfsProvider`]): zvols (sparse with `-s` for thin) through
//!   `zfs create -V`, `zfs set volsize`, `zfs destroy`, `zfs list -Hp`, `zfs get -Hp`.
//!
//! The command-line providers run their tools through a [`Runner`] ([`SystemRunner`]
//! runs them for real, with a timeout and bounded output). Their tests check every
//! command line and feed back recorded outputs (tests/data): the machines tandem is
//! developed and tested on have no device-mapper and no ZFS, so nothing here is tested
//! against a live volume group or zpool. docs/storage.md has the details.
//!
//! Backing volumes are named as LINSTOR names them, `<resource>_<5-digit volume>`
//! ([`volume_name`]). A provider refuses every other name, so it can never touch a
//! file, LV or zvol that tandem did not create.

mod error;
mod file;
mod lvm;
mod props;
mod runner;
mod zfs;

#[cfg(test)]
mod testutil;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use model::ProviderKind;
use model::satellite::DesiredPool;

pub use error::{Cause, CommandFailure, StorageError};
pub use file::FileProvider;
pub use lvm::LvmProvider;
pub use props::{
    KEY_FILE_DIR, KEY_LVM_VG, KEY_STOR_POOL_NAME, KEY_THIN_POOL, KEY_WAIT_TIMEOUT_AFTER_CREATE,
    KEY_ZPOOL, KEY_ZPOOL_THIN,
};
pub use runner::{CmdOutput, Runner, SystemRunner};
pub use zfs::ZfsProvider;

/// The largest backing volume any provider creates: 1 EiB (far beyond any real disk,
/// small enough that rounding and byte/KiB arithmetic cannot overflow).
pub const MAX_VOLUME_BYTES: u64 = 1 << 60;

/// How long LVM and ZFS providers wait, by default, for a new volume's device node to
/// appear (LINSTOR's default for `StorDriver/WaitTimeoutAfterCreate`).
pub const DEFAULT_DEVICE_WAIT: Duration = Duration::from_millis(5000);

/// The backing volume name of a resource's volume: `<resource>_<volume, 5 digits>`,
/// e.g. `r1_00000` (LINSTOR's `%s_%05d`).
pub fn volume_name(resource: &str, volume: u32) -> String {
    format!("{resource}_{volume:05}")
}

/// The inverse of [`volume_name`]: `Some((resource, volume))` when `name` follows the
/// pattern exactly (a valid LINSTOR resource name, `_`, the volume number zero-padded
/// to 5 digits), otherwise None. Providers only ever touch names for which this is Some.
pub fn parse_volume_name(name: &str) -> Option<(String, u32)> {
    let (resource, number) = name.rsplit_once('_')?;
    if number.len() < 5 || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let volume: u32 = number.parse().ok()?;
    if format!("{volume:05}") != number {
        return None;
    }
    model::name::check_resource_name(resource).ok()?;
    Some((resource.to_owned(), volume))
}

/// Refuses a name that is not tandem's pattern: the one guard between a provider and a
/// foreign file, LV or zvol.
pub(crate) fn check_volume_name(name: &str) -> Result<(), StorageError> {
    match parse_volume_name(name) {
        Some(_) => Ok(()),
        None => Err(StorageError::InvalidName {
            name: name.to_owned(),
        }),
    }
}

/// `size` rounded up to a multiple of `granularity` (a power of two), checked against
/// [`MAX_VOLUME_BYTES`].
pub(crate) fn round_size(name: &str, size: u64, granularity: u64) -> Result<u64, StorageError> {
    if size == 0 {
        return Err(StorageError::InvalidSize {
            name: name.to_owned(),
            size,
            reason: "a backing volume needs at least one byte",
        });
    }
    if size > MAX_VOLUME_BYTES {
        return Err(StorageError::InvalidSize {
            name: name.to_owned(),
            size,
            reason: "larger than 1 EiB, the most tandem creates",
        });
    }
    Ok(size.div_ceil(granularity) * granularity)
}

/// Grow's rule, shared by every provider: a request that rounds up to less than the
/// current size is a shrink (refused); one at or below the current size otherwise
/// changes nothing (`Ok(false)`); a larger one grows (`Ok(true)`).
pub(crate) fn needs_grow(
    name: &str,
    current: u64,
    requested: u64,
    granularity: u64,
) -> Result<bool, StorageError> {
    let rounded = round_size(name, requested, granularity)?;
    if rounded < current {
        return Err(StorageError::Shrink {
            name: name.to_owned(),
            current,
            requested,
        });
    }
    Ok(requested > current)
}

/// A backing volume as a provider sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    /// The backing volume name (`r1_00000`).
    pub name: String,
    /// The block device or file to give blockd.
    pub path: PathBuf,
    /// Size in bytes.
    pub size: u64,
}

/// A pool's capacity, in KiB as LINSTOR reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub free_kib: u64,
    pub total_kib: u64,
}

/// A storage pool's backing volumes. Every method refuses names that do not follow
/// [`volume_name`]'s pattern.
pub trait Provider: Send + Sync + std::fmt::Debug {
    fn kind(&self) -> ProviderKind;
    /// Creates a new backing volume of at least `size` bytes (rounded up to the
    /// provider's granularity). Error if it exists.
    fn create(&self, name: &str, size: u64) -> Result<VolumeInfo, StorageError>;
    /// Grows to at least `size` bytes; never shrinks (error). A size that the current
    /// size already covers (also after rounding) changes nothing.
    fn grow(&self, name: &str, size: u64) -> Result<VolumeInfo, StorageError>;
    /// Removes it; Ok(()) when it does not exist (idempotent).
    fn delete(&self, name: &str) -> Result<(), StorageError>;
    fn get(&self, name: &str) -> Result<Option<VolumeInfo>, StorageError>;
    /// Volumes in this pool whose names follow volume_name's pattern, sorted by name.
    fn list(&self) -> Result<Vec<VolumeInfo>, StorageError>;
    fn capacity(&self) -> Result<Capacity, StorageError>;
    /// Whether a new volume reads as zeros (thin LVM, ZFS, sparse/fallocated files:
    /// yes; thick LVM: no).
    fn zeroed_on_create(&self) -> bool;
}

/// The provider for a pool, configured from its properties (docs/storage.md lists
/// them): `StorDriver/StorPoolName` as LINSTOR's clients set it, or the older
/// per-kind keys (`StorDriver/FileDir`, `StorDriver/LvmVg` + `StorDriver/ThinPool`,
/// `StorDriver/ZPool`, `StorDriver/ZPoolThin`). Runs no command and touches no disk.
pub fn open(
    pool: &DesiredPool,
    runner: Arc<dyn Runner>,
) -> Result<Box<dyn Provider>, StorageError> {
    let cfg = props::PoolConfig::resolve(pool)?;
    Ok(match cfg {
        props::PoolConfig::File { dir, thin } => Box::new(FileProvider::new(dir, thin)?),
        props::PoolConfig::Lvm {
            vg,
            thin_pool,
            device_wait,
        } => Box::new(LvmProvider::new(vg, thin_pool, runner)?.with_device_wait(Some(device_wait))),
        props::PoolConfig::Zfs {
            dataset,
            thin,
            device_wait,
        } => Box::new(ZfsProvider::new(dataset, thin, runner)?.with_device_wait(Some(device_wait))),
    })
}

/// Waits until `path` exists, up to `wait` (None: does not check). Device nodes of
/// new LVs and zvols are made by udev, which may finish after the tool returned.
pub(crate) fn wait_for_device(
    name: &str,
    path: &std::path::Path,
    wait: Option<Duration>,
) -> Result<(), StorageError> {
    let Some(wait) = wait else { return Ok(()) };
    let deadline = std::time::Instant::now() + wait;
    loop {
        if path.exists() {
            return Ok(());
        }
        if std::time::Instant::now() >= deadline {
            return Err(StorageError::DeviceMissing {
                name: name.to_owned(),
                path: path.to_owned(),
                waited_ms: u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    #[test]
    fn volume_names_follow_linstor() {
        assert_eq!(volume_name("r1", 0), "r1_00000");
        assert_eq!(volume_name("vm-100-disk-0", 7), "vm-100-disk-0_00007");
        assert_eq!(volume_name("rx", 123_456), "rx_123456");
        assert_eq!(parse_volume_name("r1_00000"), Some(("r1".into(), 0)));
        assert_eq!(
            parse_volume_name("my_res_00012"),
            Some(("my_res".into(), 12))
        );
        assert_eq!(
            parse_volume_name("vm-100-disk-0_00007"),
            Some(("vm-100-disk-0".into(), 7))
        );
        assert_eq!(parse_volume_name("rx_123456"), Some(("rx".into(), 123_456)));
        for bad in [
            "",
            "r1",
            "r1_0000",
            "r1_000000",
            "r1_0001a",
            "_00000",
            "1r_00000",
            "-r_00000",
            "../x_00000",
            "a/b_00000",
            "r1_00000.img",
            "r1_+0000",
            "r1 _00000",
            "r1_4294967296",
            "lvol0_pmspare",
            "[thin_tdata]",
            "r1_00000\n",
        ] {
            assert_eq!(parse_volume_name(bad), None, "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn volume_name_round_trips(res in "[a-zA-Z_][a-zA-Z0-9_-]{1,47}", vol in any::<u32>()) {
            prop_assume!(res.bytes().any(|b| b.is_ascii_alphabetic()));
            let name = volume_name(&res, vol);
            prop_assert_eq!(parse_volume_name(&name), Some((res, vol)));
        }

        #[test]
        fn parse_volume_name_never_panics(s in ".{0,80}") {
            if let Some((res, vol)) = parse_volume_name(&s) {
                prop_assert_eq!(volume_name(&res, vol), s);
            }
        }
    }

    #[test]
    fn rounding_and_grow_rule() {
        assert_eq!(round_size("r_00000", 1, 4096).unwrap(), 4096);
        assert_eq!(round_size("r_00000", 4096, 4096).unwrap(), 4096);
        assert!(matches!(
            round_size("r_00000", 0, 4096),
            Err(StorageError::InvalidSize { .. })
        ));
        assert!(matches!(
            round_size("r_00000", u64::MAX, 4096),
            Err(StorageError::InvalidSize { .. })
        ));
        // At or below the current size (after rounding): nothing to do.
        assert!(!needs_grow("r_00000", 8192, 8192, 4096).unwrap());
        assert!(!needs_grow("r_00000", 8192, 5000, 4096).unwrap());
        assert!(needs_grow("r_00000", 8192, 8193, 4096).unwrap());
        let e = needs_grow("r_00000", 8192, 4096, 4096).unwrap_err();
        assert!(matches!(e, StorageError::Shrink { .. }), "{e}");
        assert!(e.to_string().contains("would shrink it"), "{e}");
    }

    #[test]
    fn open_picks_the_provider_from_the_kind() {
        let runner: Arc<dyn Runner> = Arc::new(SystemRunner);
        let pool = |kind, props: &[(&str, &str)]| DesiredPool {
            name: "pool1".into(),
            provider_kind: kind,
            props: props
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
        };
        let cases = [
            (ProviderKind::File, KEY_STOR_POOL_NAME, "/srv/pool1", true),
            (
                ProviderKind::FileThin,
                KEY_STOR_POOL_NAME,
                "/srv/pool1",
                true,
            ),
            (ProviderKind::Lvm, KEY_STOR_POOL_NAME, "vg0", false),
            (ProviderKind::LvmThin, KEY_STOR_POOL_NAME, "vg0/thin", true),
            (ProviderKind::Zfs, KEY_STOR_POOL_NAME, "tank", true),
            (ProviderKind::ZfsThin, KEY_STOR_POOL_NAME, "tank/thin", true),
        ];
        for (kind, key, value, zeroed) in cases {
            let p = open(&pool(kind, &[(key, value)]), runner.clone()).unwrap();
            assert_eq!(p.kind(), kind);
            assert_eq!(p.zeroed_on_create(), zeroed, "{kind:?}");
        }
        let e = open(&pool(ProviderKind::Diskless, &[]), runner.clone()).unwrap_err();
        assert!(matches!(e, StorageError::Unsupported { .. }), "{e}");
        let e = open(&pool(ProviderKind::Lvm, &[]), runner).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("StorDriver/StorPoolName"), "{msg}");
    }

    #[test]
    fn wait_for_device_sees_a_path_appear() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev");
        assert!(wait_for_device("r_00000", &path, None).is_ok());
        let e = wait_for_device("r_00000", &path, Some(Duration::ZERO)).unwrap_err();
        assert!(matches!(e, StorageError::DeviceMissing { .. }), "{e}");
        let p2 = path.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            std::fs::write(p2, b"").unwrap();
        });
        wait_for_device("r_00000", &path, Some(Duration::from_secs(10))).unwrap();
        t.join().unwrap();
    }
}
