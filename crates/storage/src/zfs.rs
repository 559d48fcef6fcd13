//! ZFS and ZFS_THIN: zvols directly under a zpool or dataset, through `zfs` and its
//! scripted output (`-H`: no header, tab-separated; `-p`: exact numbers).
//!
//! | operation | command |
//! |---|---|
//! | list, get | `zfs list -Hp -d 1 -t volume -o name,volsize <dataset>` |
//! | create | `zfs create [-s] -V <bytes> <dataset>/<name>` (`-s`, sparse: ZFS_THIN) |
//! | grow | `zfs set volsize=<bytes> <dataset>/<name>` |
//! | delete | `zfs destroy <dataset>/<name>` (never `-r`: snapshots or clones stop it) |
//! | capacity | `zfs get -Hp -o property,value available,used <dataset>` |
//!
//! Sizes are rounded up to whole MiB: a zvol's size must be a multiple of its
//! volblocksize, which is at most 1 MiB unless the pool was set up for larger blocks.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use model::ProviderKind;

use crate::error::{Cause, command_line};
use crate::props::check_zfs_dataset;
use crate::runner::{args, failure, run};
use crate::{Capacity, CmdOutput, Provider, Runner, StorageError, VolumeInfo, check_volume_name};

const GRANULARITY: u64 = 1 << 20;

#[derive(Debug, Clone)]
pub struct ZfsProvider {
    dataset: String,
    thin: bool,
    runner: Arc<dyn Runner>,
    device_wait: Option<Duration>,
}

/// What `zfs`'s stderr says went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    PoolMissing,
    Exists,
    VolumeMissing,
    NoSpace,
    Busy,
    HasDependents,
    Other,
}

impl ZfsProvider {
    /// A provider for the zvols under `dataset` (a zpool or a dataset in one);
    /// `thin`: sparse zvols (ZFS_THIN). Runs nothing; waits up to
    /// [`crate::DEFAULT_DEVICE_WAIT`] for new devices.
    pub fn new(
        dataset: impl Into<String>,
        thin: bool,
        runner: Arc<dyn Runner>,
    ) -> Result<Self, StorageError> {
        let dataset = dataset.into();
        check_zfs_dataset(&dataset).map_err(|p| StorageError::PoolConfig {
            pool: dataset.clone(),
            kind: if thin { "ZFS_THIN" } else { "ZFS" },
            key: crate::KEY_STOR_POOL_NAME,
            example: "tank",
            problem: format!("dataset {dataset:?}: {p}"),
        })?;
        Ok(Self {
            dataset,
            thin,
            runner,
            device_wait: Some(crate::DEFAULT_DEVICE_WAIT),
        })
    }

    /// How long `create` waits for the new zvol's device node; None: not checked.
    pub fn with_device_wait(mut self, wait: Option<Duration>) -> Self {
        self.device_wait = wait;
        self
    }

    fn full(&self, name: &str) -> String {
        format!("{}/{name}", self.dataset)
    }

    fn pool_label(&self) -> String {
        format!("dataset {}", self.dataset)
    }

    fn device_path(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("/dev/zvol/{}/{name}", self.dataset))
    }

    fn info(&self, name: &str, size: u64) -> VolumeInfo {
        VolumeInfo {
            name: name.to_owned(),
            path: self.device_path(name),
            size,
        }
    }

    fn classify(&self, stderr: &str, name: Option<&str>) -> Failure {
        let s = stderr.to_ascii_lowercase();
        if s.contains("dataset already exists") {
            return Failure::Exists;
        }
        if s.contains("out of space") || s.contains("greater than available space") {
            return Failure::NoSpace;
        }
        if s.contains("no such pool") || s.contains("parent does not exist") {
            return Failure::PoolMissing;
        }
        if s.contains("dataset does not exist") {
            let vol_quoted = name.map(|n| format!("'{}'", self.full(n).to_ascii_lowercase()));
            return match vol_quoted {
                Some(q) if s.contains(&q) => Failure::VolumeMissing,
                _ => Failure::PoolMissing,
            };
        }
        if s.contains("is busy") {
            return Failure::Busy;
        }
        if s.contains("has children") || s.contains("has dependent clones") {
            return Failure::HasDependents;
        }
        Failure::Other
    }

    /// Runs `zfs`; its output on success, the classified error otherwise.
    fn zfs(&self, a: &[String], name: Option<&str>, size: u64) -> Result<CmdOutput, StorageError> {
        let out = run(self.runner.as_ref(), "zfs", a)?;
        if out.success {
            return Ok(out);
        }
        let f = failure("zfs", a, &out);
        let name_s = name.unwrap_or_default().to_owned();
        Err(match self.classify(&out.stderr, name) {
            Failure::PoolMissing => StorageError::PoolMissing {
                what: format!("ZFS {}", self.pool_label()),
                cause: Cause(Some(f)),
            },
            Failure::Exists if name.is_some() => StorageError::AlreadyExists {
                name: name_s,
                pool: self.pool_label(),
                cause: Cause(Some(f)),
            },
            Failure::VolumeMissing => StorageError::NotFound {
                name: name_s,
                pool: self.pool_label(),
                cause: Cause(Some(f)),
            },
            Failure::NoSpace if name.is_some() => StorageError::NoSpace {
                name: name_s,
                pool: self.pool_label(),
                size,
                cause: Cause(Some(f)),
            },
            Failure::Busy if name.is_some() => StorageError::Busy {
                name: name_s,
                cause: Cause(Some(f)),
            },
            Failure::HasDependents if name.is_some() => StorageError::HasDependents {
                name: name_s,
                cause: Cause(Some(f)),
            },
            _ => StorageError::ToolFailed(f),
        })
    }

    /// The zvols directly under the dataset that carry tandem names.
    fn volumes(&self) -> Result<Vec<(String, u64)>, StorageError> {
        let a = args(&[
            "list",
            "-Hp",
            "-d",
            "1",
            "-t",
            "volume",
            "-o",
            "name,volsize",
            &self.dataset,
        ]);
        let out = self.zfs(&a, None, 0)?;
        let rows = parse_list(&command_line("zfs", &a), &out.stdout)?;
        let prefix = format!("{}/", self.dataset);
        Ok(rows
            .into_iter()
            .filter_map(|(full, size)| {
                let name = full.strip_prefix(&prefix)?;
                crate::parse_volume_name(name)?;
                Some((name.to_owned(), size))
            })
            .collect())
    }

    fn find(&self, name: &str) -> Result<Option<u64>, StorageError> {
        check_volume_name(name)?;
        Ok(self
            .volumes()?
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, size)| size))
    }

    fn read_back(&self, name: &str, after: &str) -> Result<VolumeInfo, StorageError> {
        match self.find(name)? {
            Some(size) => Ok(self.info(name, size)),
            None => Err(StorageError::BadOutput {
                command: format!("zfs list {}", self.dataset),
                problem: format!(
                    "{after} succeeded but zfs list does not show {}",
                    self.full(name)
                ),
                excerpt: String::new(),
            }),
        }
    }
}

impl Provider for ZfsProvider {
    fn kind(&self) -> ProviderKind {
        if self.thin {
            ProviderKind::ZfsThin
        } else {
            ProviderKind::Zfs
        }
    }

    fn create(&self, name: &str, size: u64) -> Result<VolumeInfo, StorageError> {
        check_volume_name(name)?;
        let bytes = crate::round_size(name, size, GRANULARITY)?;
        let bytes_s = bytes.to_string();
        let full = self.full(name);
        let a = if self.thin {
            args(&["create", "-s", "-V", &bytes_s, &full])
        } else {
            args(&["create", "-V", &bytes_s, &full])
        };
        self.zfs(&a, Some(name), bytes)?;
        crate::wait_for_device(name, &self.device_path(name), self.device_wait)?;
        self.read_back(name, "zfs create")
    }

    fn grow(&self, name: &str, size: u64) -> Result<VolumeInfo, StorageError> {
        let Some(current) = self.find(name)? else {
            return Err(StorageError::NotFound {
                name: name.to_owned(),
                pool: self.pool_label(),
                cause: Cause(None),
            });
        };
        if !crate::needs_grow(name, current, size, GRANULARITY)? {
            return Ok(self.info(name, current));
        }
        let bytes = crate::round_size(name, size, GRANULARITY)?;
        let a = args(&["set", &format!("volsize={bytes}"), &self.full(name)]);
        self.zfs(&a, Some(name), bytes)?;
        self.read_back(name, "zfs set volsize")
    }

    fn delete(&self, name: &str) -> Result<(), StorageError> {
        // Only a zvol is destroyed: a filesystem that happens to have a tandem name
        // is not ours.
        if self.find(name)?.is_none() {
            return Ok(());
        }
        let a = args(&["destroy", &self.full(name)]);
        match self.zfs(&a, Some(name), 0) {
            Ok(_) | Err(StorageError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn get(&self, name: &str) -> Result<Option<VolumeInfo>, StorageError> {
        Ok(self.find(name)?.map(|size| self.info(name, size)))
    }

    fn list(&self) -> Result<Vec<VolumeInfo>, StorageError> {
        let mut out: Vec<VolumeInfo> = self
            .volumes()?
            .into_iter()
            .map(|(n, size)| self.info(&n, size))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn capacity(&self) -> Result<Capacity, StorageError> {
        let a = args(&[
            "get",
            "-Hp",
            "-o",
            "property,value",
            "available,used",
            &self.dataset,
        ]);
        let out = self.zfs(&a, None, 0)?;
        let (available, used) = parse_get(&command_line("zfs", &a), &out.stdout)?;
        Ok(Capacity {
            free_kib: available / 1024,
            total_kib: available.saturating_add(used) / 1024,
        })
    }

    fn zeroed_on_create(&self) -> bool {
        true
    }
}

/// `zfs list -Hp -o name,volsize` rows: name, size in bytes.
pub(crate) fn parse_list(cmd: &str, stdout: &str) -> Result<Vec<(String, u64)>, StorageError> {
    let mut rows = Vec::new();
    for line in stdout.lines() {
        if line.trim().is_empty() {
            continue;
        }
        let mut fields = line.split('\t');
        let (Some(name), Some(size), None) = (fields.next(), fields.next(), fields.next()) else {
            return Err(StorageError::bad_output(
                cmd,
                format!("line {line:?} is not <name><tab><volsize>"),
                stdout,
            ));
        };
        let size = parse_number(size).ok_or_else(|| {
            StorageError::bad_output(cmd, format!("volsize {size:?} is not a byte count"), stdout)
        })?;
        rows.push((name.to_owned(), size));
    }
    Ok(rows)
}

/// `zfs get -Hp -o property,value available,used`: (available, used) in bytes.
pub(crate) fn parse_get(cmd: &str, stdout: &str) -> Result<(u64, u64), StorageError> {
    let mut available = None;
    let mut used = None;
    for line in stdout.lines() {
        if line.trim().is_empty() {
            continue;
        }
        let Some((prop, value)) = line.split_once('\t') else {
            return Err(StorageError::bad_output(
                cmd,
                format!("line {line:?} is not <property><tab><value>"),
                stdout,
            ));
        };
        let slot = match prop {
            "available" => &mut available,
            "used" => &mut used,
            _ => continue,
        };
        *slot = Some(parse_number(value).ok_or_else(|| {
            StorageError::bad_output(cmd, format!("{prop} {value:?} is not a byte count"), stdout)
        })?);
    }
    match (available, used) {
        (Some(a), Some(u)) => Ok((a, u)),
        _ => Err(StorageError::bad_output(
            cmd,
            "available or used is missing",
            stdout,
        )),
    }
}

fn parse_number(s: &str) -> Option<u64> {
    let s = s.trim();
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Scripted;

    macro_rules! rec {
        ($name:literal) => {
            include_str!(concat!("../tests/data/zfs/", $name, ".txt"))
        };
    }

    const DS: &str = "tank/tandem";

    fn provider(s: Scripted, thin: bool) -> (Arc<Scripted>, ZfsProvider) {
        provider_on(DS, s, thin)
    }

    fn provider_on(ds: &str, s: Scripted, thin: bool) -> (Arc<Scripted>, ZfsProvider) {
        let s = Arc::new(s);
        let p = ZfsProvider::new(ds, thin, s.clone())
            .unwrap()
            .with_device_wait(None);
        (s, p)
    }

    fn vol(name: &str, size: u64) -> VolumeInfo {
        VolumeInfo {
            name: name.into(),
            path: PathBuf::from(format!("/dev/zvol/{DS}/{name}")),
            size,
        }
    }

    #[test]
    fn list_and_get_show_tandem_zvols() {
        let (s, p) = provider(
            Scripted::new()
                .expect(rec!("list"))
                .expect(rec!("list"))
                .expect(rec!("list"))
                .expect(rec!("list-empty")),
            false,
        );
        assert_eq!(
            p.list().unwrap(),
            [vol("r1_00000", 1 << 30), vol("r2_00003", 2_148_532_224)]
        );
        assert_eq!(
            p.get("r2_00003").unwrap(),
            Some(vol("r2_00003", 2_148_532_224))
        );
        assert_eq!(p.get("r7_00000").unwrap(), None);
        assert_eq!(p.list().unwrap(), []);
        s.done();
    }

    #[test]
    fn create_thick_and_sparse() {
        for (thin, r) in [(false, rec!("create")), (true, rec!("create-thin"))] {
            let (s, p) = provider(
                Scripted::new().expect(r).expect(rec!("list-after-create")),
                thin,
            );
            // Rounded up to whole MiB: 11,000,000 -> 11 MiB.
            assert_eq!(
                p.create("r5_00000", 11_000_000).unwrap(),
                vol("r5_00000", 11_534_336)
            );
            s.done();
            assert!(p.zeroed_on_create());
            assert_eq!(
                p.kind(),
                if thin {
                    ProviderKind::ZfsThin
                } else {
                    ProviderKind::Zfs
                }
            );
        }
    }

    #[test]
    fn create_failures_map_to_errors() {
        let (s, p) = provider(Scripted::new().expect(rec!("create-exists")), false);
        let e = p.create("r1_00000", 1 << 30).unwrap_err();
        assert!(matches!(e, StorageError::AlreadyExists { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("`zfs create -V 1073741824 tank/tandem/r1_00000` exited with status 1: cannot create 'tank/tandem/r1_00000': dataset already exists"),
            "{e}"
        );
        s.done();

        let (s, p) = provider(Scripted::new().expect(rec!("create-no-space")), false);
        let e = p.create("r5_00000", 1 << 40).unwrap_err();
        assert!(matches!(e, StorageError::NoSpace { .. }), "{e}");
        s.done();

        let (s, p) = provider_on(
            "tank/nosuch",
            Scripted::new().expect(rec!("create-parent-missing")),
            false,
        );
        let e = p.create("r5_00000", 1 << 20).unwrap_err();
        assert!(matches!(e, StorageError::PoolMissing { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("ZFS dataset tank/nosuch does not exist"),
            "{e}"
        );
        s.done();

        let (s, p) = provider_on(
            "nosuch",
            Scripted::new().expect(rec!("create-pool-missing")),
            false,
        );
        let e = p.create("r5_00000", 1 << 20).unwrap_err();
        assert!(matches!(e, StorageError::PoolMissing { .. }), "{e}");
        s.done();
    }

    #[test]
    fn grow_sets_volsize() {
        let (s, p) = provider(
            Scripted::new()
                .expect(rec!("list"))
                .expect(rec!("set-volsize"))
                .expect(rec!("list-after-grow")),
            false,
        );
        assert_eq!(
            p.grow("r1_00000", 2 << 30).unwrap(),
            vol("r1_00000", 2 << 30)
        );
        s.done();

        let (s, p) = provider(
            Scripted::new()
                .expect(rec!("list"))
                .expect(rec!("list"))
                .expect(rec!("list")),
            false,
        );
        assert_eq!(p.grow("r1_00000", 1 << 30).unwrap().size, 1 << 30);
        assert_eq!(p.grow("r1_00000", (1 << 30) - 4096).unwrap().size, 1 << 30);
        let e = p.grow("r1_00000", 1 << 29).unwrap_err();
        assert!(matches!(e, StorageError::Shrink { .. }), "{e}");
        s.done();

        let (s, p) = provider(Scripted::new().expect(rec!("list")), false);
        let e = p.grow("r7_00000", 1 << 30).unwrap_err();
        assert!(matches!(e, StorageError::NotFound { .. }), "{e}");
        s.done();

        let (s, p) = provider(
            Scripted::new()
                .expect(rec!("list"))
                .expect(rec!("set-volsize-no-space")),
            false,
        );
        let e = p.grow("r1_00000", 1 << 40).unwrap_err();
        assert!(matches!(e, StorageError::NoSpace { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("size is greater than available space"),
            "{e}"
        );
        s.done();
    }

    #[test]
    fn delete_is_idempotent() {
        let (s, p) = provider(
            Scripted::new()
                .expect(rec!("list"))
                .expect(rec!("destroy"))
                .expect(rec!("list-empty"))
                .expect(rec!("list"))
                .expect(rec!("destroy-missing")),
            false,
        );
        p.delete("r1_00000").unwrap();
        p.delete("r1_00000").unwrap();
        // Gone between list and destroy.
        p.delete("r1_00000").unwrap();
        s.done();

        let (s, p) = provider(
            Scripted::new()
                .expect(rec!("list"))
                .expect(rec!("destroy-busy"))
                .expect(rec!("list"))
                .expect(rec!("destroy-children")),
            false,
        );
        let e = p.delete("r1_00000").unwrap_err();
        assert!(matches!(e, StorageError::Busy { .. }), "{e}");
        let e = p.delete("r1_00000").unwrap_err();
        assert!(matches!(e, StorageError::HasDependents { .. }), "{e}");
        assert!(e.to_string().contains("r1_00000@before-upgrade"), "{e}");
        s.done();
    }

    #[test]
    fn capacity_from_available_and_used() {
        let (s, p) = provider(Scripted::new().expect(rec!("get")), true);
        assert_eq!(
            p.capacity().unwrap(),
            Capacity {
                free_kib: 53_687_091_200 / 1024,
                total_kib: (53_687_091_200 + 3_232_759_808) / 1024
            }
        );
        s.done();
        let (s, p) = provider_on(
            "tank/nosuch",
            Scripted::new().expect(rec!("get-missing")),
            true,
        );
        let e = p.capacity().unwrap_err();
        assert!(matches!(e, StorageError::PoolMissing { .. }), "{e}");
        s.done();
    }

    #[test]
    fn a_missing_dataset_or_module_is_clear() {
        let (s, p) = provider_on(
            "tank/nosuch",
            Scripted::new().expect(rec!("list-missing")),
            false,
        );
        let e = p.list().unwrap_err();
        assert!(matches!(e, StorageError::PoolMissing { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("cannot open 'tank/nosuch': dataset does not exist"),
            "{e}"
        );
        s.done();
        let (s, p) = provider(Scripted::new().expect(rec!("not-loaded")), false);
        let e = p.list().unwrap_err();
        assert!(matches!(e, StorageError::ToolFailed(_)), "{e}");
        assert!(e.to_string().contains("modprobe zfs"), "{e}");
        s.done();
        let (s, p) = provider(
            Scripted::new().expect_error(
                &[
                    "zfs",
                    "list",
                    "-Hp",
                    "-d",
                    "1",
                    "-t",
                    "volume",
                    "-o",
                    "name,volsize",
                    DS,
                ],
                std::io::ErrorKind::NotFound,
            ),
            false,
        );
        let e = p.list().unwrap_err();
        assert!(e.to_string().contains("install zfsutils-linux"), "{e}");
        s.done();
    }

    #[test]
    fn create_waits_for_the_device() {
        let s = Arc::new(Scripted::new().expect(rec!("create")));
        let p = ZfsProvider::new(DS, false, s.clone())
            .unwrap()
            .with_device_wait(Some(Duration::ZERO));
        let e = p.create("r5_00000", 11_000_000).unwrap_err();
        assert!(matches!(e, StorageError::DeviceMissing { .. }), "{e}");
        assert!(
            e.to_string().contains("/dev/zvol/tank/tandem/r5_00000"),
            "{e}"
        );
        s.done();
    }

    #[test]
    fn names_are_checked_before_anything_runs() {
        let (s, p) = provider(Scripted::new(), false);
        for name in [
            "vm-100-disk-0",
            "r1_00000@snap",
            "-r_00000",
            "a/b_00000",
            "",
        ] {
            for e in [
                p.create(name, 1 << 20).unwrap_err(),
                p.grow(name, 1 << 20).unwrap_err(),
                p.delete(name).unwrap_err(),
                p.get(name).unwrap_err(),
            ] {
                assert!(matches!(e, StorageError::InvalidName { .. }), "{name}: {e}");
            }
        }
        s.done();
        for bad in ["", "/tank", "tank/", "-tank", "tank@s", "tank/a b"] {
            assert!(
                ZfsProvider::new(bad, false, Arc::new(Scripted::new())).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn odd_output_is_an_error_never_a_panic() {
        for bad in [
            "tank/x",
            "tank/x\t",
            "tank/x\t-",
            "tank/x\t1\t2",
            "tank/x\t1.5",
            "tank/x\t99999999999999999999999",
        ] {
            assert!(
                matches!(parse_list("zfs", bad), Err(StorageError::BadOutput { .. })),
                "{bad:?}"
            );
        }
        for bad in [
            "",
            "available\t1",
            "available 1\nused 2",
            "available\tx\nused\t1",
            "used\t-",
        ] {
            assert!(
                matches!(parse_get("zfs", bad), Err(StorageError::BadOutput { .. })),
                "{bad:?}"
            );
        }
        for r in [rec!("list"), rec!("get"), rec!("list-after-create")] {
            let out = crate::testutil::recording(r).output.stdout;
            for i in 0..out.len() {
                let cut = String::from_utf8_lossy(&out.as_bytes()[..i]);
                let _ = parse_list("zfs", &cut);
                let _ = parse_get("zfs", &cut);
                let mut flipped = out.clone().into_bytes();
                flipped[i] ^= 0x55;
                let flipped = String::from_utf8_lossy(&flipped);
                let _ = parse_list("zfs", &flipped);
                let _ = parse_get("zfs", &flipped);
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn zfs_parsers_never_panic(s in "[a-z0-9_/\t\n.@ -]{0,200}|.{0,200}") {
            let _ = parse_list("zfs", &s);
            let _ = parse_get("zfs", &s);
        }
    }
}
