//! LVM and LVM_THIN: logical volumes of a volume group, or thin volumes of a thin pool,
//! through LVM's command-line tools and their JSON reports (`--reportformat json
//! --units b --nosuffix`: sizes as exact byte counts).
//!
//! | operation | LVM | LVM_THIN |
//! |---|---|---|
//! | list, get | `lvs … -o lv_name,lv_size,pool_lv,lv_attr,vg_extent_size <vg>` (LVs without a pool) | the same (LVs whose pool is the thin pool) |
//! | create | `lvcreate --yes --size <KiB>k --name <lv> <vg>` | `lvcreate --yes --type thin --virtualsize <KiB>k --thinpool <pool> --name <lv> <vg>` |
//! | grow | `lvextend --size <KiB>k <vg>/<lv>` | the same |
//! | delete | `lvremove --yes <vg>/<lv>` | the same |
//! | capacity | `vgs … -o vg_name,vg_size,vg_free <vg>` | `lvs … -o lv_name,lv_size,data_percent,lv_attr <vg>/<pool>` |
//!
//! LVM rounds sizes up to whole extents (4 MiB by default); the volume's real size is
//! read back with `lvs` after every change.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use model::ProviderKind;
use serde_json::Value;

use crate::error::{Cause, command_line};
use crate::props::check_lvm_name;
use crate::runner::{args, failure, run};
use crate::{Capacity, CmdOutput, Provider, Runner, StorageError, VolumeInfo, check_volume_name};

const LVS_FIELDS: &str = "lv_name,lv_size,pool_lv,lv_attr,vg_extent_size";
const THIN_POOL_FIELDS: &str = "lv_name,lv_size,data_percent,lv_attr";
const VGS_FIELDS: &str = "vg_name,vg_size,vg_free";
/// Sizes go to LVM in KiB (`<n>k`), as LINSTOR passes them.
const KIB: u64 = 1024;

#[derive(Debug, Clone)]
pub struct LvmProvider {
    vg: String,
    thin_pool: Option<String>,
    runner: Arc<dyn Runner>,
    device_wait: Option<Duration>,
}

/// One LV of an `lvs` report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LvRow {
    pub name: String,
    pub size: u64,
    pub pool_lv: String,
    pub attr: String,
    pub extent_size: u64,
}

/// What an LVM tool's stderr says went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    VgMissing,
    ThinPoolMissing,
    LvExists,
    LvMissing,
    NoSpace,
    Busy,
    Other,
}

impl LvmProvider {
    /// A provider for volume group `vg`, or for thin pool `vg/<thin_pool>` (LVM_THIN).
    /// Runs nothing; waits up to [`crate::DEFAULT_DEVICE_WAIT`] for new devices.
    pub fn new(
        vg: impl Into<String>,
        thin_pool: Option<String>,
        runner: Arc<dyn Runner>,
    ) -> Result<Self, StorageError> {
        let vg = vg.into();
        let kind = if thin_pool.is_some() {
            "LVM_THIN"
        } else {
            "LVM"
        };
        let bad = |problem: String| StorageError::PoolConfig {
            pool: match &thin_pool {
                Some(tp) => format!("{vg}/{tp}"),
                None => vg.clone(),
            },
            kind,
            key: crate::KEY_STOR_POOL_NAME,
            example: if thin_pool.is_some() {
                "vg0/thinpool"
            } else {
                "vg0"
            },
            problem,
        };
        check_lvm_name(&vg).map_err(|p| bad(format!("volume group {vg:?}: {p}")))?;
        if let Some(tp) = &thin_pool {
            check_lvm_name(tp).map_err(|p| bad(format!("thin pool {tp:?}: {p}")))?;
        }
        Ok(Self {
            vg,
            thin_pool,
            runner,
            device_wait: Some(crate::DEFAULT_DEVICE_WAIT),
        })
    }

    /// How long `create` waits for the new LV's device node; None: not checked.
    pub fn with_device_wait(mut self, wait: Option<Duration>) -> Self {
        self.device_wait = wait;
        self
    }

    fn pool_label(&self) -> String {
        match &self.thin_pool {
            Some(tp) => format!("thin pool {}/{tp}", self.vg),
            None => format!("volume group {}", self.vg),
        }
    }

    fn device_path(&self, name: &str) -> PathBuf {
        PathBuf::from(format!("/dev/{}/{name}", self.vg))
    }

    /// Whether an LV of the volume group belongs to this pool: thick LVs (no pool,
    /// not a pool themselves) for LVM, the thin pool's volumes for LVM_THIN.
    fn ours(&self, row: &LvRow) -> bool {
        if crate::parse_volume_name(&row.name).is_none() {
            return false;
        }
        match &self.thin_pool {
            Some(tp) => row.pool_lv == *tp,
            None => row.pool_lv.is_empty() && !row.attr.starts_with(['t', 'V']),
        }
    }

    fn info(&self, row: &LvRow) -> VolumeInfo {
        VolumeInfo {
            name: row.name.clone(),
            path: self.device_path(&row.name),
            size: row.size,
        }
    }

    /// Runs an LVM tool; its stdout on success, the classified error otherwise.
    fn run_ok(
        &self,
        program: &str,
        a: &[String],
        name: Option<&str>,
        size: u64,
    ) -> Result<CmdOutput, StorageError> {
        let out = run(self.runner.as_ref(), program, a)?;
        if out.success {
            return Ok(out);
        }
        Err(self.error(program, a, &out, name, size))
    }

    fn classify(&self, stderr: &str, name: Option<&str>) -> Failure {
        let s = stderr.to_ascii_lowercase();
        let vg = self.vg.to_ascii_lowercase();
        if s.contains(&format!("volume group \"{vg}\" not found")) {
            return Failure::VgMissing;
        }
        if let Some(tp) = &self.thin_pool {
            let tp = tp.to_ascii_lowercase();
            if s.contains(&format!("pool {tp} not found in volume group"))
                || s.contains(&format!("failed to find logical volume \"{vg}/{tp}\""))
            {
                return Failure::ThinPoolMissing;
            }
        }
        if s.contains("already exists in volume group") {
            return Failure::LvExists;
        }
        if s.contains("insufficient free space") || s.contains("reached threshold") {
            return Failure::NoSpace;
        }
        if let Some(n) = name {
            let n = n.to_ascii_lowercase();
            if s.contains(&format!("failed to find logical volume \"{vg}/{n}\""))
                || s.contains(&format!("logical volume {n} not found in volume group"))
            {
                return Failure::LvMissing;
            }
        }
        if s.contains(" in use") {
            return Failure::Busy;
        }
        Failure::Other
    }

    fn error(
        &self,
        program: &str,
        a: &[String],
        out: &CmdOutput,
        name: Option<&str>,
        size: u64,
    ) -> StorageError {
        let f = failure(program, a, out);
        let name_s = name.unwrap_or_default().to_owned();
        match self.classify(&out.stderr, name) {
            Failure::VgMissing => StorageError::PoolMissing {
                what: format!("volume group {}", self.vg),
                cause: Cause(Some(f)),
            },
            Failure::ThinPoolMissing => StorageError::PoolMissing {
                what: self.pool_label(),
                cause: Cause(Some(f)),
            },
            Failure::LvExists if name.is_some() => StorageError::AlreadyExists {
                name: name_s,
                pool: format!("volume group {}", self.vg),
                cause: Cause(Some(f)),
            },
            Failure::NoSpace if name.is_some() => StorageError::NoSpace {
                name: name_s,
                pool: self.pool_label(),
                size,
                cause: Cause(Some(f)),
            },
            Failure::LvMissing => StorageError::NotFound {
                name: name_s,
                pool: self.pool_label(),
                cause: Cause(Some(f)),
            },
            Failure::Busy if name.is_some() => StorageError::Busy {
                name: name_s,
                cause: Cause(Some(f)),
            },
            _ => StorageError::ToolFailed(f),
        }
    }

    /// Every LV of the volume group.
    fn lvs(&self) -> Result<Vec<LvRow>, StorageError> {
        let a = args(&[
            "--reportformat",
            "json",
            "--units",
            "b",
            "--nosuffix",
            "-o",
            LVS_FIELDS,
            &self.vg,
        ]);
        let out = self.run_ok("lvs", &a, None, 0)?;
        parse_lvs(&command_line("lvs", &a), &out.stdout)
    }

    fn find(&self, name: &str) -> Result<Option<LvRow>, StorageError> {
        check_volume_name(name)?;
        Ok(self
            .lvs()?
            .into_iter()
            .find(|r| r.name == name && self.ours(r)))
    }

    fn read_back(&self, name: &str, after: &str) -> Result<VolumeInfo, StorageError> {
        match self.find(name)? {
            Some(row) => Ok(self.info(&row)),
            None => Err(StorageError::BadOutput {
                command: format!("lvs {}", self.vg),
                problem: format!(
                    "{after} succeeded but lvs does not list {name} in the {}",
                    self.pool_label()
                ),
                excerpt: String::new(),
            }),
        }
    }
}

impl Provider for LvmProvider {
    fn kind(&self) -> ProviderKind {
        if self.thin_pool.is_some() {
            ProviderKind::LvmThin
        } else {
            ProviderKind::Lvm
        }
    }

    fn create(&self, name: &str, size: u64) -> Result<VolumeInfo, StorageError> {
        check_volume_name(name)?;
        let kib = crate::round_size(name, size, KIB)? / KIB;
        let size_arg = format!("{kib}k");
        let a = match &self.thin_pool {
            None => args(&["--yes", "--size", &size_arg, "--name", name, &self.vg]),
            Some(tp) => args(&[
                "--yes",
                "--type",
                "thin",
                "--virtualsize",
                &size_arg,
                "--thinpool",
                tp,
                "--name",
                name,
                &self.vg,
            ]),
        };
        self.run_ok("lvcreate", &a, Some(name), kib * KIB)?;
        crate::wait_for_device(name, &self.device_path(name), self.device_wait)?;
        self.read_back(name, "lvcreate")
    }

    fn grow(&self, name: &str, size: u64) -> Result<VolumeInfo, StorageError> {
        let Some(row) = self.find(name)? else {
            return Err(StorageError::NotFound {
                name: name.to_owned(),
                pool: self.pool_label(),
                cause: Cause(None),
            });
        };
        let granularity = row.extent_size.max(KIB);
        if !crate::needs_grow(name, row.size, size, granularity)? {
            return Ok(self.info(&row));
        }
        let kib = crate::round_size(name, size, KIB)? / KIB;
        let a = args(&["--size", &format!("{kib}k"), &format!("{}/{name}", self.vg)]);
        self.run_ok("lvextend", &a, Some(name), kib * KIB)?;
        self.read_back(name, "lvextend")
    }

    fn delete(&self, name: &str) -> Result<(), StorageError> {
        // Only an LV of this pool is removed: the same name in another pool of the
        // volume group is not ours to touch.
        if self.find(name)?.is_none() {
            return Ok(());
        }
        let a = args(&["--yes", &format!("{}/{name}", self.vg)]);
        match self.run_ok("lvremove", &a, Some(name), 0) {
            Ok(_) | Err(StorageError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn get(&self, name: &str) -> Result<Option<VolumeInfo>, StorageError> {
        Ok(self.find(name)?.map(|r| self.info(&r)))
    }

    fn list(&self) -> Result<Vec<VolumeInfo>, StorageError> {
        let mut out: Vec<VolumeInfo> = self
            .lvs()?
            .iter()
            .filter(|r| self.ours(r))
            .map(|r| self.info(r))
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn capacity(&self) -> Result<Capacity, StorageError> {
        match &self.thin_pool {
            None => {
                let a = args(&[
                    "--reportformat",
                    "json",
                    "--units",
                    "b",
                    "--nosuffix",
                    "-o",
                    VGS_FIELDS,
                    &self.vg,
                ]);
                let out = self.run_ok("vgs", &a, None, 0)?;
                let cmd = command_line("vgs", &a);
                let rows = parse_report(&cmd, &out.stdout, "vg")?;
                let row = rows
                    .iter()
                    .find(|r| r.get("vg_name").map(String::as_str) == Some(self.vg.as_str()))
                    .ok_or_else(|| {
                        StorageError::bad_output(
                            &cmd,
                            format!("no row for volume group {}", self.vg),
                            &out.stdout,
                        )
                    })?;
                let total = size_field(&cmd, row, "vg_size", &out.stdout)?;
                let free = size_field(&cmd, row, "vg_free", &out.stdout)?;
                Ok(Capacity {
                    free_kib: free / KIB,
                    total_kib: total / KIB,
                })
            }
            Some(tp) => {
                let a = args(&[
                    "--reportformat",
                    "json",
                    "--units",
                    "b",
                    "--nosuffix",
                    "-o",
                    THIN_POOL_FIELDS,
                    &format!("{}/{tp}", self.vg),
                ]);
                let out = self.run_ok("lvs", &a, None, 0)?;
                let cmd = command_line("lvs", &a);
                let (total, used) =
                    parse_thin_pool(&cmd, &out.stdout, tp).map_err(|e| match e {
                        ThinPoolError::NotAPool(attr) => StorageError::PoolMissing {
                            what: format!(
                                "{} ({}/{tp} is an LV but not a thin pool: lv_attr {attr})",
                                self.pool_label(),
                                self.vg
                            ),
                            cause: Cause(None),
                        },
                        ThinPoolError::Bad(e) => e,
                    })?;
                Ok(Capacity {
                    free_kib: total.saturating_sub(used) / KIB,
                    total_kib: total / KIB,
                })
            }
        }
    }

    fn zeroed_on_create(&self) -> bool {
        // Unprovisioned blocks of a thin volume read as zeros; a thick LV holds
        // whatever its extents held before.
        self.thin_pool.is_some()
    }
}

/// The rows of an LVM JSON report (`{"report": [{"<kind>": [{field: value}]}]}`),
/// every value as a string (`json_std` would give numbers).
pub(crate) fn parse_report(
    cmd: &str,
    stdout: &str,
    kind: &str,
) -> Result<Vec<BTreeMap<String, String>>, StorageError> {
    let bad = |p: String| StorageError::bad_output(cmd, p, stdout);
    let v: Value =
        serde_json::from_str(stdout).map_err(|e| bad(format!("not a JSON report: {e}")))?;
    let reports = v
        .get("report")
        .and_then(Value::as_array)
        .ok_or_else(|| bad("no \"report\" array".into()))?;
    let mut rows = Vec::new();
    for r in reports {
        let Some(list) = r.get(kind) else { continue };
        let list = list
            .as_array()
            .ok_or_else(|| bad(format!("\"{kind}\" is not an array")))?;
        for item in list {
            let obj = item
                .as_object()
                .ok_or_else(|| bad(format!("a \"{kind}\" entry is not an object")))?;
            let mut row = BTreeMap::new();
            for (k, val) in obj {
                let s = match val {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Null => String::new(),
                    _ => return Err(bad(format!("field {k} is neither a string nor a number"))),
                };
                row.insert(k.clone(), s);
            }
            rows.push(row);
        }
    }
    Ok(rows)
}

fn field<'a>(
    cmd: &str,
    row: &'a BTreeMap<String, String>,
    key: &str,
    stdout: &str,
) -> Result<&'a str, StorageError> {
    row.get(key)
        .map(String::as_str)
        .ok_or_else(|| StorageError::bad_output(cmd, format!("a row has no field {key}"), stdout))
}

fn size_field(
    cmd: &str,
    row: &BTreeMap<String, String>,
    key: &str,
    stdout: &str,
) -> Result<u64, StorageError> {
    let v = field(cmd, row, key, stdout)?;
    parse_bytes(v).ok_or_else(|| {
        StorageError::bad_output(cmd, format!("{key} {v:?} is not a byte count"), stdout)
    })
}

/// A byte count as `--units b --nosuffix` prints it (a trailing `B` is accepted).
pub(crate) fn parse_bytes(s: &str) -> Option<u64> {
    let s = s.trim();
    let s = s.strip_suffix(['B', 'b']).unwrap_or(s);
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// A percentage as LVM prints it (`12.50`) in hundredths of a percent; None for an
/// empty field (the pool is not active, LVM does not know).
pub(crate) fn parse_percent(s: &str) -> Result<Option<u64>, ()> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(None);
    }
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if int.is_empty() || int.len() > 3 || !digits(int) || !digits(frac) {
        return Err(());
    }
    let int: u64 = int.parse().map_err(|_| ())?;
    let mut hundredths = int * 100;
    let mut f = frac.bytes();
    if let Some(d) = f.next() {
        hundredths += u64::from(d - b'0') * 10;
    }
    if let Some(d) = f.next() {
        hundredths += u64::from(d - b'0');
    }
    if hundredths > 10_000 {
        return Err(());
    }
    Ok(Some(hundredths))
}

pub(crate) fn parse_lvs(cmd: &str, stdout: &str) -> Result<Vec<LvRow>, StorageError> {
    parse_report(cmd, stdout, "lv")?
        .iter()
        .map(|r| {
            Ok(LvRow {
                name: field(cmd, r, "lv_name", stdout)?.to_owned(),
                size: size_field(cmd, r, "lv_size", stdout)?,
                pool_lv: field(cmd, r, "pool_lv", stdout)?.to_owned(),
                attr: field(cmd, r, "lv_attr", stdout)?.to_owned(),
                extent_size: size_field(cmd, r, "vg_extent_size", stdout)?,
            })
        })
        .collect()
}

#[derive(Debug)]
pub(crate) enum ThinPoolError {
    /// The LV exists but is no thin pool; its lv_attr.
    NotAPool(String),
    Bad(StorageError),
}

/// The thin pool's size and used bytes from its `lvs` row. An unknown data_percent
/// (an inactive pool) counts as full, as LINSTOR counts it.
pub(crate) fn parse_thin_pool(
    cmd: &str,
    stdout: &str,
    thin_pool: &str,
) -> Result<(u64, u64), ThinPoolError> {
    let rows = parse_report(cmd, stdout, "lv").map_err(ThinPoolError::Bad)?;
    let row = rows
        .iter()
        .find(|r| r.get("lv_name").map(String::as_str) == Some(thin_pool))
        .ok_or_else(|| {
            ThinPoolError::Bad(StorageError::bad_output(
                cmd,
                format!("no row for thin pool {thin_pool}"),
                stdout,
            ))
        })?;
    let attr = field(cmd, row, "lv_attr", stdout).map_err(ThinPoolError::Bad)?;
    if !attr.starts_with('t') {
        return Err(ThinPoolError::NotAPool(attr.to_owned()));
    }
    let size = size_field(cmd, row, "lv_size", stdout).map_err(ThinPoolError::Bad)?;
    let pct = field(cmd, row, "data_percent", stdout).map_err(ThinPoolError::Bad)?;
    let hundredths = parse_percent(pct)
        .map_err(|()| {
            ThinPoolError::Bad(StorageError::bad_output(
                cmd,
                format!("data_percent {pct:?} is not a percentage"),
                stdout,
            ))
        })?
        .unwrap_or(10_000);
    let used = u64::try_from(u128::from(size) * u128::from(hundredths) / 10_000).unwrap_or(size);
    Ok((size, used))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::Scripted;

    macro_rules! rec {
        ($name:literal) => {
            include_str!(concat!("../tests/data/lvm/", $name, ".txt"))
        };
    }

    const VG: &str = "tandemvg";

    fn thick(s: Scripted) -> (Arc<Scripted>, LvmProvider) {
        let s = Arc::new(s);
        let p = LvmProvider::new(VG, None, s.clone())
            .unwrap()
            .with_device_wait(None);
        (s, p)
    }

    fn thin(s: Scripted) -> (Arc<Scripted>, LvmProvider) {
        let s = Arc::new(s);
        let p = LvmProvider::new(VG, Some("thin".into()), s.clone())
            .unwrap()
            .with_device_wait(None);
        (s, p)
    }

    fn vol(name: &str, size: u64) -> VolumeInfo {
        VolumeInfo {
            name: name.into(),
            path: PathBuf::from(format!("/dev/{VG}/{name}")),
            size,
        }
    }

    #[test]
    fn list_shows_only_this_pools_tandem_volumes() {
        let (s, p) = thick(Scripted::new().expect(rec!("lvs-list")));
        assert_eq!(p.list().unwrap(), [vol("r1_00000", 12_582_912)]);
        s.done();
        let (s, p) = thin(Scripted::new().expect(rec!("lvs-list")));
        assert_eq!(
            p.list().unwrap(),
            [vol("r2_00000", 12_582_912), vol("r3_00001", 104_857_600)]
        );
        s.done();
    }

    #[test]
    fn get_finds_a_volume_only_in_its_own_pool() {
        let (s, p) = thick(
            Scripted::new()
                .expect(rec!("lvs-list"))
                .expect(rec!("lvs-list"))
                .expect(rec!("lvs-list")),
        );
        assert_eq!(
            p.get("r1_00000").unwrap(),
            Some(vol("r1_00000", 12_582_912))
        );
        // A thin volume of the same VG is not the thick pool's.
        assert_eq!(p.get("r2_00000").unwrap(), None);
        assert_eq!(p.get("r7_00000").unwrap(), None);
        s.done();
        let (s, p) = thin(Scripted::new().expect(rec!("lvs-list")));
        assert_eq!(p.get("r1_00000").unwrap(), None);
        s.done();
    }

    #[test]
    fn a_missing_volume_group_names_the_command_and_its_stderr() {
        let (s, p) = thick(Scripted::new().expect_as(
            &[
                "lvs",
                "--reportformat",
                "json",
                "--units",
                "b",
                "--nosuffix",
                "-o",
                LVS_FIELDS,
                "nosuchvg",
            ],
            rec!("lvs-list-vg-missing"),
        ));
        let p = LvmProvider {
            vg: "nosuchvg".into(),
            ..p
        };
        let e = p.list().unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, StorageError::PoolMissing { .. }), "{msg}");
        assert!(
            msg.contains("volume group nosuchvg does not exist"),
            "{msg}"
        );
        assert!(msg.contains("`lvs --reportformat json"), "{msg}");
        assert!(msg.contains("exited with status 5"), "{msg}");
        assert!(msg.contains("Volume group \"nosuchvg\" not found"), "{msg}");
        s.done();
    }

    #[test]
    fn create_thick_runs_lvcreate_and_reads_the_size_back() {
        let (s, p) = thick(
            Scripted::new()
                .expect(rec!("lvcreate"))
                .expect(rec!("lvs-list-after-create")),
        );
        // 10,486,000 bytes = 10,240.2 KiB: asked as 10241k, LVM rounds to 3 extents.
        let v = p.create("r4_00000", 10_486_000).unwrap();
        assert_eq!(v, vol("r4_00000", 12_582_912));
        s.done();
        assert!(!p.zeroed_on_create());
        assert_eq!(p.kind(), ProviderKind::Lvm);
    }

    #[test]
    fn create_thin_uses_the_thin_pool() {
        let (s, p) = thin(
            Scripted::new()
                .expect(rec!("lvcreate-thin"))
                .expect(rec!("lvs-list")),
        );
        let v = p.create("r2_00000", 10_486_000).unwrap();
        assert_eq!(v, vol("r2_00000", 12_582_912));
        s.done();
        assert!(p.zeroed_on_create());
        assert_eq!(p.kind(), ProviderKind::LvmThin);
    }

    #[test]
    fn create_failures_map_to_errors() {
        let cases: &[(&str, &str, u64)] = &[
            (rec!("lvcreate-exists"), "r4_00000", 10_486_000),
            (rec!("lvcreate-no-space"), "r5_00000", 2 << 30),
        ];
        for (r, name, size) in cases {
            let (s, p) = thick(Scripted::new().expect(r));
            let e = p.create(name, *size).unwrap_err();
            let msg = e.to_string();
            match *name {
                "r4_00000" => {
                    assert!(matches!(e, StorageError::AlreadyExists { .. }), "{msg}");
                    assert!(
                        msg.contains("already exists in volume group \"tandemvg\""),
                        "{msg}"
                    );
                }
                _ => {
                    assert!(matches!(e, StorageError::NoSpace { .. }), "{msg}");
                    assert!(
                        msg.contains("insufficient free space (173 extents): 512 required"),
                        "{msg}"
                    );
                    // The example in docs/storage.md.
                    assert_eq!(
                        msg,
                        "not enough free space in volume group tandemvg for r5_00000 (2147483648 bytes): \
                         free space in the pool, make it larger, or place the volume in another pool \
                         (`lvcreate --yes --size 2097152k --name r5_00000 tandemvg` exited with status 5: \
                         Volume group \"tandemvg\" has insufficient free space (173 extents): 512 required.)"
                    );
                }
            }
            s.done();
        }

        let s = Arc::new(Scripted::new().expect(rec!("lvcreate-vg-missing")));
        let p = LvmProvider::new("nosuchvg", None, s.clone())
            .unwrap()
            .with_device_wait(None);
        let e = p.create("r5_00000", 10_486_000).unwrap_err();
        assert!(matches!(e, StorageError::PoolMissing { .. }), "{e}");
        s.done();

        let (s, p) = thin(Scripted::new().expect(rec!("lvcreate-thin-exists")));
        let e = p.create("r2_00000", 10_486_000).unwrap_err();
        assert!(matches!(e, StorageError::AlreadyExists { .. }), "{e}");
        s.done();

        let (s, p) = thin(Scripted::new().expect(rec!("lvcreate-thin-pool-full")));
        let e = p.create("r2_00000", 10_486_000).unwrap_err();
        assert!(matches!(e, StorageError::NoSpace { .. }), "{e}");
        assert!(e.to_string().contains("thin pool tandemvg/thin"), "{e}");
        s.done();

        let s = Arc::new(Scripted::new().expect(rec!("lvcreate-thin-pool-missing")));
        let p = LvmProvider::new(VG, Some("nosuchthin".into()), s.clone())
            .unwrap()
            .with_device_wait(None);
        let e = p.create("r6_00000", 10_486_000).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, StorageError::PoolMissing { .. }), "{msg}");
        assert!(
            msg.contains("thin pool tandemvg/nosuchthin does not exist"),
            "{msg}"
        );
        s.done();
    }

    #[test]
    fn create_waits_for_the_device() {
        let s = Arc::new(Scripted::new().expect(rec!("lvcreate")));
        let p = LvmProvider::new(VG, None, s.clone())
            .unwrap()
            .with_device_wait(Some(Duration::ZERO));
        let e = p.create("r4_00000", 10_486_000).unwrap_err();
        assert!(matches!(e, StorageError::DeviceMissing { .. }), "{e}");
        assert!(e.to_string().contains("/dev/tandemvg/r4_00000"), "{e}");
        s.done();
    }

    #[test]
    fn grow_extends_and_reads_back() {
        let (s, p) = thick(
            Scripted::new()
                .expect(rec!("lvs-list-after-create"))
                .expect(rec!("lvextend"))
                .expect(rec!("lvs-list-after-extend")),
        );
        // 20,972,000 bytes = 20,480.5 KiB: asked as 20481k, LVM rounds to 6 extents.
        let v = p.grow("r4_00000", 20_972_000).unwrap();
        assert_eq!(v, vol("r4_00000", 25_165_824));
        s.done();

        // Covered by the current size (also after rounding to extents): no command.
        let (s, p) = thick(
            Scripted::new()
                .expect(rec!("lvs-list-after-extend"))
                .expect(rec!("lvs-list-after-extend")),
        );
        assert_eq!(p.grow("r4_00000", 25_165_824).unwrap().size, 25_165_824);
        assert_eq!(p.grow("r4_00000", 21_000_000).unwrap().size, 25_165_824);
        s.done();

        let (s, p) = thick(Scripted::new().expect(rec!("lvs-list-after-extend")));
        let e = p.grow("r4_00000", 12_582_912).unwrap_err();
        assert!(matches!(e, StorageError::Shrink { .. }), "{e}");
        s.done();

        let (s, p) = thick(Scripted::new().expect(rec!("lvs-list")));
        let e = p.grow("r4_00000", 1 << 30).unwrap_err();
        assert!(matches!(e, StorageError::NotFound { .. }), "{e}");
        s.done();

        // The read-back is the recorded list with r2_00000 at its new size.
        let grown = rec!("lvs-list").replace(
            r#""lv_name":"r2_00000", "lv_size":"12582912""#,
            r#""lv_name":"r2_00000", "lv_size":"25165824""#,
        );
        let (s, p) = thin(
            Scripted::new()
                .expect(rec!("lvs-list"))
                .expect(rec!("lvextend-thin"))
                .expect(&grown),
        );
        assert_eq!(p.grow("r2_00000", 20_972_000).unwrap().size, 25_165_824);
        s.done();
    }

    #[test]
    fn grow_failures_map_to_errors() {
        let (s, p) = thick(
            Scripted::new()
                .expect(rec!("lvs-list-after-create"))
                .expect(rec!("lvextend-no-space")),
        );
        let e = p.grow("r4_00000", 4 << 30).unwrap_err();
        assert!(matches!(e, StorageError::NoSpace { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("1018 extents needed, but only 170 available"),
            "{e}"
        );
        s.done();

        // Removed between lvs and lvextend.
        let (s, p) = thick(
            Scripted::new()
                .expect(rec!("lvs-list-after-create"))
                .expect_as(
                    &["lvextend", "--size", "20481k", "tandemvg/r4_00000"],
                    rec!("lvextend-missing")
                        .replace("r9_00000", "r4_00000")
                        .as_str(),
                ),
        );
        let e = p.grow("r4_00000", 20_972_000).unwrap_err();
        assert!(matches!(e, StorageError::NotFound { .. }), "{e}");
        s.done();
    }

    #[test]
    fn delete_is_idempotent_and_only_removes_its_own() {
        let (s, p) = thick(
            Scripted::new()
                .expect(rec!("lvs-list-after-create"))
                .expect(rec!("lvremove"))
                .expect(rec!("lvs-list")),
        );
        p.delete("r4_00000").unwrap();
        // Gone: no lvremove.
        p.delete("r4_00000").unwrap();
        s.done();

        // Removed between lvs and lvremove: fine.
        let (s, p) = thick(
            Scripted::new()
                .expect(rec!("lvs-list-after-create"))
                .expect(rec!("lvremove-missing")),
        );
        p.delete("r4_00000").unwrap();
        s.done();

        // A thin LV is not the thick pool's to remove.
        let (s, p) = thick(Scripted::new().expect(rec!("lvs-list")));
        p.delete("r2_00000").unwrap();
        s.done();

        let (s, p) = thin(
            Scripted::new()
                .expect(rec!("lvs-list"))
                .expect(rec!("lvremove-thin")),
        );
        p.delete("r2_00000").unwrap();
        s.done();

        let (s, p) = thick(
            Scripted::new()
                .expect(rec!("lvs-list"))
                .expect(rec!("lvremove-in-use")),
        );
        let e = p.delete("r1_00000").unwrap_err();
        assert!(matches!(e, StorageError::Busy { .. }), "{e}");
        assert!(e.to_string().contains("tandemvg/r1_00000 in use"), "{e}");
        s.done();

        let s = Arc::new(Scripted::new().expect_as(
            &[
                "lvs",
                "--reportformat",
                "json",
                "--units",
                "b",
                "--nosuffix",
                "-o",
                LVS_FIELDS,
                "nosuchvg",
            ],
            rec!("lvs-list-vg-missing"),
        ));
        let p = LvmProvider::new("nosuchvg", None, s.clone()).unwrap();
        let e = p.delete("r4_00000").unwrap_err();
        assert!(matches!(e, StorageError::PoolMissing { .. }), "{e}");
        s.done();
    }

    #[test]
    fn lvremove_failures_classify() {
        // The lvremove outputs on their own (delete checks with lvs first).
        let (_, p) = thick(Scripted::new());
        let r = crate::testutil::recording(rec!("lvremove-vg-missing"));
        let e = p.error("lvremove", &r.argv[1..], &r.output, Some("r4_00000"), 0);
        // The VG is "nosuchvg" in that recording: for provider tandemvg it is a plain failure.
        assert!(matches!(e, StorageError::ToolFailed(_)), "{e}");
        let p2 = LvmProvider::new("nosuchvg", None, Arc::new(Scripted::new())).unwrap();
        let e = p2.error("lvremove", &r.argv[1..], &r.output, Some("r4_00000"), 0);
        assert!(matches!(e, StorageError::PoolMissing { .. }), "{e}");
        let r = crate::testutil::recording(rec!("lvremove-missing"));
        let e = p.error("lvremove", &r.argv[1..], &r.output, Some("r4_00000"), 0);
        assert!(matches!(e, StorageError::NotFound { .. }), "{e}");
    }

    #[test]
    fn capacity_of_a_volume_group() {
        let (s, p) = thick(Scripted::new().expect(rec!("vgs")));
        assert_eq!(
            p.capacity().unwrap(),
            Capacity {
                free_kib: 738_197_504 / 1024,
                total_kib: 1_069_547_520 / 1024
            }
        );
        s.done();
        let (s, p) = thick(Scripted::new().expect(rec!("vgs-after-extend")));
        assert_eq!(p.capacity().unwrap().free_kib, 713_031_680 / 1024);
        s.done();
        let s = Arc::new(Scripted::new().expect(rec!("vgs-vg-missing")));
        let p = LvmProvider::new("nosuchvg", None, s.clone()).unwrap();
        let e = p.capacity().unwrap_err();
        assert!(matches!(e, StorageError::PoolMissing { .. }), "{e}");
        s.done();
    }

    #[test]
    fn capacity_of_a_thin_pool() {
        let (s, p) = thin(Scripted::new().expect(rec!("lvs-thinpool-active")));
        // 256 MiB, 12.50 % used.
        assert_eq!(
            p.capacity().unwrap(),
            Capacity {
                free_kib: 229_376,
                total_kib: 262_144
            }
        );
        s.done();
        // Inactive pool (data_percent unknown): counted as full, as LINSTOR does.
        let (s, p) = thin(Scripted::new().expect(rec!("lvs-thinpool")));
        assert_eq!(
            p.capacity().unwrap(),
            Capacity {
                free_kib: 0,
                total_kib: 262_144
            }
        );
        s.done();

        let s = Arc::new(Scripted::new().expect(rec!("lvs-thinpool-missing")));
        let p = LvmProvider::new(VG, Some("nosuchthin".into()), s.clone()).unwrap();
        let e = p.capacity().unwrap_err();
        assert!(matches!(e, StorageError::PoolMissing { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("Failed to find logical volume \"tandemvg/nosuchthin\""),
            "{e}"
        );
        s.done();

        let s = Arc::new(Scripted::new().expect(rec!("lvs-thinpool-vg-missing")));
        let p = LvmProvider::new("nosuchvg", Some("thin".into()), s.clone()).unwrap();
        let e = p.capacity().unwrap_err();
        assert!(matches!(e, StorageError::PoolMissing { .. }), "{e}");
        assert!(
            e.to_string()
                .contains("volume group nosuchvg does not exist"),
            "{e}"
        );
        s.done();

        let s = Arc::new(Scripted::new().expect(rec!("lvs-thinpool-not-a-pool")));
        let p = LvmProvider::new(VG, Some("home".into()), s.clone()).unwrap();
        let e = p.capacity().unwrap_err();
        assert!(e.to_string().contains("not a thin pool"), "{e}");
        s.done();
    }

    #[test]
    fn names_are_checked_before_anything_runs() {
        let (s, p) = thick(Scripted::new());
        for name in [
            "home",
            "thin",
            "vm-100-disk-1",
            "-rf_00000",
            "a/b_00000",
            "[thin_tdata]",
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
        assert!(LvmProvider::new("-vg", None, Arc::new(Scripted::new())).is_err());
        assert!(LvmProvider::new("vg", Some("a/b".into()), Arc::new(Scripted::new())).is_err());
    }

    #[test]
    fn missing_lvm_tools_say_what_to_install() {
        let (s, p) = thick(Scripted::new().expect_error(
            &[
                "lvs",
                "--reportformat",
                "json",
                "--units",
                "b",
                "--nosuffix",
                "-o",
                LVS_FIELDS,
                VG,
            ],
            std::io::ErrorKind::NotFound,
        ));
        let e = p.list().unwrap_err();
        assert!(e.to_string().contains("install lvm2"), "{e}");
        s.done();
        let (s, p) = thick(Scripted::new().expect_error(
            &[
                "lvs",
                "--reportformat",
                "json",
                "--units",
                "b",
                "--nosuffix",
                "-o",
                LVS_FIELDS,
                VG,
            ],
            std::io::ErrorKind::TimedOut,
        ));
        let e = p.list().unwrap_err();
        assert!(matches!(e, StorageError::ToolRun { .. }), "{e}");
        assert!(
            e.to_string().contains("could not run `lvs --reportformat"),
            "{e}"
        );
        s.done();
    }

    #[test]
    fn parsers_accept_what_lvm_prints() {
        assert_eq!(parse_bytes("1069547520"), Some(1_069_547_520));
        assert_eq!(parse_bytes("4194304B"), Some(4_194_304));
        assert_eq!(parse_bytes(""), None);
        assert_eq!(parse_bytes("1.5"), None);
        assert_eq!(parse_bytes("-1"), None);
        assert_eq!(parse_bytes("99999999999999999999999"), None);
        assert_eq!(parse_percent("12.50"), Ok(Some(1250)));
        assert_eq!(parse_percent("0.00"), Ok(Some(0)));
        assert_eq!(parse_percent("100.00"), Ok(Some(10_000)));
        assert_eq!(parse_percent("7"), Ok(Some(700)));
        assert_eq!(parse_percent("7.5"), Ok(Some(750)));
        assert_eq!(parse_percent("7.519"), Ok(Some(751)));
        assert_eq!(parse_percent(""), Ok(None));
        for bad in ["100.01", "1000", "-1", "a", ".5", "1.x", "1.2.3", "1e2"] {
            assert_eq!(parse_percent(bad), Err(()), "{bad}");
        }
        // json_std prints numbers.
        let rows = parse_lvs(
            "lvs",
            r#"{"report":[{"lv":[{"lv_name":"r1_00000","lv_size":12582912,"pool_lv":"","lv_attr":"-wi-a-----","vg_extent_size":4194304}]}],"log":[]}"#,
        )
        .unwrap();
        assert_eq!(rows[0].size, 12_582_912);
    }

    #[test]
    fn odd_output_is_an_error_never_a_panic() {
        for bad in [
            "",
            "{}",
            "[]",
            "null",
            r#"{"report": {}}"#,
            r#"{"report": [{"lv": {}}]}"#,
            r#"{"report": [{"lv": [1]}]}"#,
            r#"{"report": [{"lv": [{"lv_name": "x"}]}]}"#,
            r#"{"report": [{"lv": [{"lv_name":"x","lv_size":"-1","pool_lv":"","lv_attr":"","vg_extent_size":"1"}]}]}"#,
            r#"{"report": [{"lv": [{"lv_name":[],"lv_size":"1","pool_lv":"","lv_attr":"","vg_extent_size":"1"}]}]}"#,
        ] {
            assert!(
                matches!(parse_lvs("lvs", bad), Err(StorageError::BadOutput { .. })),
                "{bad}"
            );
        }
        // Every truncation and a byte flip at every position of every recorded report.
        for r in [
            rec!("lvs-list"),
            rec!("lvs-list-after-create"),
            rec!("vgs"),
            rec!("lvs-thinpool-active"),
            rec!("lvs-thinpool"),
        ] {
            let out = crate::testutil::recording(r).output.stdout;
            for i in 0..out.len() {
                let cut = &out.as_bytes()[..i];
                let cut = String::from_utf8_lossy(cut);
                let _ = parse_lvs("lvs", &cut);
                let _ = parse_report("vgs", &cut, "vg");
                let _ = parse_thin_pool("lvs", &cut, "thin");
                let mut flipped = out.clone().into_bytes();
                flipped[i] ^= 0x55;
                let flipped = String::from_utf8_lossy(&flipped);
                let _ = parse_lvs("lvs", &flipped);
                let _ = parse_thin_pool("lvs", &flipped, "thin");
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn lvm_parsers_never_panic(s in ".{0,400}") {
            let _ = parse_lvs("lvs", &s);
            let _ = parse_report("vgs", &s, "vg");
            let _ = parse_thin_pool("lvs", &s, "thin");
            let _ = parse_percent(&s);
            let _ = parse_bytes(&s);
        }

        #[test]
        fn lvs_json_with_arbitrary_values_never_panics(
            name in ".{0,20}", size in ".{0,24}", pool in ".{0,8}", attr in ".{0,12}", pct in ".{0,8}"
        ) {
            let row = serde_json::json!({"report": [{"lv": [{
                "lv_name": name, "lv_size": size, "pool_lv": pool, "lv_attr": attr,
                "vg_extent_size": size, "data_percent": pct,
            }]}]}).to_string();
            let _ = parse_lvs("lvs", &row);
            let _ = parse_thin_pool("lvs", &row, &name);
        }
    }
}
