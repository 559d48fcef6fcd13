//! A pool's configuration from its properties, as LINSTOR's clients and older
//! LINSTOR versions set them.
//!
//! LINSTOR's REST API stores the driver pool name in `StorDriver/StorPoolName`
//! (python-linstor's `storage_pool_create`): a directory for FILE/FILE_THIN, the volume
//! group for LVM, `vg/thinpool` for LVM_THIN, the zpool or dataset for ZFS/ZFS_THIN.
//! linstor-server still accepts the older per-kind keys on creation and rewrites them
//! into that one (`StoragePools.convertStorPoolProp`: `LvmVg`, `ZPool`, `ZPoolThin`,
//! `FileDir` become `StorPoolName`, and `ThinPool` is appended as `/<thinpool>`);
//! tandem reads them as well, `StorPoolName` first.

use std::path::PathBuf;
use std::time::Duration;

use model::ProviderKind;
use model::satellite::DesiredPool;

use crate::StorageError;

pub const KEY_STOR_POOL_NAME: &str = "StorDriver/StorPoolName";
pub const KEY_FILE_DIR: &str = "StorDriver/FileDir";
pub const KEY_LVM_VG: &str = "StorDriver/LvmVg";
pub const KEY_THIN_POOL: &str = "StorDriver/ThinPool";
pub const KEY_ZPOOL: &str = "StorDriver/ZPool";
pub const KEY_ZPOOL_THIN: &str = "StorDriver/ZPoolThin";
/// Milliseconds LVM and ZFS providers wait for a new volume's device node (LINSTOR's
/// key; default [`crate::DEFAULT_DEVICE_WAIT`]).
pub const KEY_WAIT_TIMEOUT_AFTER_CREATE: &str = "StorDriver/WaitTimeoutAfterCreate";

/// The longest accepted `StorDriver/WaitTimeoutAfterCreate`: 10 minutes.
const MAX_DEVICE_WAIT_MS: u64 = 600_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PoolConfig {
    File {
        dir: PathBuf,
        thin: bool,
    },
    Lvm {
        vg: String,
        thin_pool: Option<String>,
        device_wait: Duration,
    },
    Zfs {
        dataset: String,
        thin: bool,
        device_wait: Duration,
    },
}

impl PoolConfig {
    pub(crate) fn resolve(pool: &DesiredPool) -> Result<Self, StorageError> {
        let kind = pool.provider_kind;
        let get = |key: &str| {
            pool.props
                .get(key)
                .map(|v| v.trim())
                .filter(|v| !v.is_empty())
        };
        let err =
            |key: &'static str, example: &'static str, problem: String| StorageError::PoolConfig {
                pool: pool.name.clone(),
                kind: kind.as_str(),
                key,
                example,
                problem,
            };
        let pool_name = get(KEY_STOR_POOL_NAME);
        match kind {
            ProviderKind::Diskless => Err(StorageError::Unsupported {
                pool: pool.name.clone(),
                kind,
            }),
            ProviderKind::File | ProviderKind::FileThin => {
                let example = "/var/lib/tandem/pool1";
                let Some(dir) = pool_name.or_else(|| get(KEY_FILE_DIR)) else {
                    return Err(err(
                        KEY_STOR_POOL_NAME,
                        example,
                        format!(
                            "no directory given (neither {KEY_STOR_POOL_NAME} nor {KEY_FILE_DIR} is set)"
                        ),
                    ));
                };
                let dir = PathBuf::from(dir);
                if !dir.is_absolute() {
                    return Err(err(
                        KEY_STOR_POOL_NAME,
                        example,
                        format!("the directory {} is not an absolute path", dir.display()),
                    ));
                }
                Ok(Self::File {
                    dir,
                    thin: kind == ProviderKind::FileThin,
                })
            }
            ProviderKind::Lvm => {
                let example = "vg0";
                let Some(vg) = pool_name.or_else(|| get(KEY_LVM_VG)) else {
                    return Err(err(
                        KEY_STOR_POOL_NAME,
                        example,
                        format!(
                            "no volume group given (neither {KEY_STOR_POOL_NAME} nor {KEY_LVM_VG} is set)"
                        ),
                    ));
                };
                check_lvm_name(vg).map_err(|p| {
                    err(
                        KEY_STOR_POOL_NAME,
                        example,
                        format!("volume group {vg:?}: {p}"),
                    )
                })?;
                Ok(Self::Lvm {
                    vg: vg.to_owned(),
                    thin_pool: None,
                    device_wait: device_wait(pool, &err)?,
                })
            }
            ProviderKind::LvmThin => {
                let example = "vg0/thinpool";
                let thin = get(KEY_THIN_POOL);
                let (vg, thin_pool) = match (pool_name.or_else(|| get(KEY_LVM_VG)), thin) {
                    (Some(name), _) if name.contains('/') => match name.split_once('/') {
                        Some((vg, tp)) => (vg, tp),
                        None => (name, ""),
                    },
                    (Some(vg), Some(tp)) => (vg, tp),
                    (None, Some(tp)) if tp.contains('/') => match tp.split_once('/') {
                        Some((vg, tp)) => (vg, tp),
                        None => (tp, ""),
                    },
                    (Some(vg), None) => {
                        return Err(err(
                            KEY_STOR_POOL_NAME,
                            example,
                            format!(
                                "{vg:?} names no thin pool: LVM_THIN needs <volume group>/<thin pool>"
                            ),
                        ));
                    }
                    (None, _) => {
                        return Err(err(
                            KEY_STOR_POOL_NAME,
                            example,
                            format!(
                                "no thin pool given (neither {KEY_STOR_POOL_NAME} nor {KEY_LVM_VG} with {KEY_THIN_POOL} is set)"
                            ),
                        ));
                    }
                };
                check_lvm_name(vg).map_err(|p| {
                    err(
                        KEY_STOR_POOL_NAME,
                        example,
                        format!("volume group {vg:?}: {p}"),
                    )
                })?;
                check_lvm_name(thin_pool).map_err(|p| {
                    err(
                        KEY_STOR_POOL_NAME,
                        example,
                        format!("thin pool {thin_pool:?}: {p}"),
                    )
                })?;
                Ok(Self::Lvm {
                    vg: vg.to_owned(),
                    thin_pool: Some(thin_pool.to_owned()),
                    device_wait: device_wait(pool, &err)?,
                })
            }
            ProviderKind::Zfs | ProviderKind::ZfsThin => {
                let thin = kind == ProviderKind::ZfsThin;
                let example = if thin { "tank/thin" } else { "tank" };
                let legacy = if thin {
                    get(KEY_ZPOOL_THIN).or_else(|| get(KEY_ZPOOL))
                } else {
                    get(KEY_ZPOOL).or_else(|| get(KEY_ZPOOL_THIN))
                };
                let Some(dataset) = pool_name.or(legacy) else {
                    return Err(err(
                        KEY_STOR_POOL_NAME,
                        example,
                        format!(
                            "no zpool or dataset given (neither {KEY_STOR_POOL_NAME} nor {} is set)",
                            if thin { KEY_ZPOOL_THIN } else { KEY_ZPOOL }
                        ),
                    ));
                };
                check_zfs_dataset(dataset).map_err(|p| {
                    err(
                        KEY_STOR_POOL_NAME,
                        example,
                        format!("dataset {dataset:?}: {p}"),
                    )
                })?;
                Ok(Self::Zfs {
                    dataset: dataset.to_owned(),
                    thin,
                    device_wait: device_wait(pool, &err)?,
                })
            }
        }
    }
}

fn device_wait(
    pool: &DesiredPool,
    err: &impl Fn(&'static str, &'static str, String) -> StorageError,
) -> Result<Duration, StorageError> {
    let Some(v) = pool.props.get(KEY_WAIT_TIMEOUT_AFTER_CREATE) else {
        return Ok(crate::DEFAULT_DEVICE_WAIT);
    };
    match v.trim().parse::<u64>() {
        Ok(ms) if ms <= MAX_DEVICE_WAIT_MS => Ok(Duration::from_millis(ms)),
        _ => Err(err(
            KEY_WAIT_TIMEOUT_AFTER_CREATE,
            "5000",
            format!("{v:?} is not a number of milliseconds from 0 to {MAX_DEVICE_WAIT_MS}"),
        )),
    }
}

/// LVM's rules for VG and LV names (lvm(8) "VALID NAMES"): `[a-zA-Z0-9+_.-]`, not
/// starting with `-`, not `.` or `..`, at most 127 characters. Also keeps every name
/// tandem passes to a tool from looking like an option.
pub(crate) fn check_lvm_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 127 {
        return Err("must be 1 to 127 characters".into());
    }
    if name.starts_with('-') {
        return Err("must not start with '-'".into());
    }
    if name == "." || name == ".." {
        return Err("must not be '.' or '..'".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "+_.-".contains(*c)))
    {
        return Err(format!(
            "must only contain letters, digits and + _ . - (found {c:?})"
        ));
    }
    Ok(())
}

/// ZFS's rules for dataset names (zfs(8) "ZFS Component Naming Requirements"), a bit
/// stricter: components of `[a-zA-Z0-9_.:-]` separated by `/`, the pool name starting
/// with a letter, no snapshot (`@`) or bookmark (`#`), at most 200 characters (ZFS's
/// limit is 255 for the whole name, and the volume name is appended).
pub(crate) fn check_zfs_dataset(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 200 {
        return Err("must be 1 to 200 characters".into());
    }
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err("the pool name must start with a letter".into());
    }
    for comp in name.split('/') {
        if comp.is_empty() {
            return Err("must not have empty components (leading, trailing or double '/')".into());
        }
        if comp == "." || comp == ".." {
            return Err("must not have '.' or '..' components".into());
        }
        if let Some(c) = comp
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "_.:-".contains(*c)))
        {
            return Err(format!(
                "must only contain letters, digits, _ . : - and '/' between components (found {c:?})"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn pool(kind: ProviderKind, props: &[(&str, &str)]) -> DesiredPool {
        DesiredPool {
            name: "pool1".into(),
            provider_kind: kind,
            props: props
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    fn resolve(kind: ProviderKind, props: &[(&str, &str)]) -> Result<PoolConfig, StorageError> {
        PoolConfig::resolve(&pool(kind, props))
    }

    fn lvm(vg: &str, thin: Option<&str>) -> PoolConfig {
        PoolConfig::Lvm {
            vg: vg.into(),
            thin_pool: thin.map(Into::into),
            device_wait: crate::DEFAULT_DEVICE_WAIT,
        }
    }

    #[test]
    fn stor_pool_name_as_linstor_clients_set_it() {
        use ProviderKind::*;
        assert_eq!(
            resolve(File, &[(KEY_STOR_POOL_NAME, "/srv/p")]).unwrap(),
            PoolConfig::File {
                dir: "/srv/p".into(),
                thin: false
            }
        );
        assert_eq!(
            resolve(FileThin, &[(KEY_STOR_POOL_NAME, "/srv/p")]).unwrap(),
            PoolConfig::File {
                dir: "/srv/p".into(),
                thin: true
            }
        );
        assert_eq!(
            resolve(Lvm, &[(KEY_STOR_POOL_NAME, "vg0")]).unwrap(),
            lvm("vg0", None)
        );
        assert_eq!(
            resolve(LvmThin, &[(KEY_STOR_POOL_NAME, "vg0/thin")]).unwrap(),
            lvm("vg0", Some("thin"))
        );
        assert_eq!(
            resolve(ZfsThin, &[(KEY_STOR_POOL_NAME, "tank/tandem")]).unwrap(),
            PoolConfig::Zfs {
                dataset: "tank/tandem".into(),
                thin: true,
                device_wait: crate::DEFAULT_DEVICE_WAIT
            }
        );
    }

    #[test]
    fn older_per_kind_keys() {
        use ProviderKind::*;
        assert_eq!(
            resolve(File, &[(KEY_FILE_DIR, "/srv/p")]).unwrap(),
            PoolConfig::File {
                dir: "/srv/p".into(),
                thin: false
            }
        );
        assert_eq!(
            resolve(Lvm, &[(KEY_LVM_VG, "vg0")]).unwrap(),
            lvm("vg0", None)
        );
        assert_eq!(
            resolve(LvmThin, &[(KEY_LVM_VG, "vg0"), (KEY_THIN_POOL, "thin")]).unwrap(),
            lvm("vg0", Some("thin"))
        );
        // LINSTOR appends ThinPool to the pool name: StorPoolName=vg0 + ThinPool=thin.
        assert_eq!(
            resolve(
                LvmThin,
                &[(KEY_STOR_POOL_NAME, "vg0"), (KEY_THIN_POOL, "thin")]
            )
            .unwrap(),
            lvm("vg0", Some("thin"))
        );
        assert_eq!(
            resolve(LvmThin, &[(KEY_THIN_POOL, "vg0/thin")]).unwrap(),
            lvm("vg0", Some("thin"))
        );
        let zfs = |ds: &str, thin| PoolConfig::Zfs {
            dataset: ds.into(),
            thin,
            device_wait: crate::DEFAULT_DEVICE_WAIT,
        };
        assert_eq!(
            resolve(Zfs, &[(KEY_ZPOOL, "tank")]).unwrap(),
            zfs("tank", false)
        );
        assert_eq!(
            resolve(ZfsThin, &[(KEY_ZPOOL_THIN, "tank/t")]).unwrap(),
            zfs("tank/t", true)
        );
        // StorPoolName wins over the older keys.
        assert_eq!(
            resolve(
                Zfs,
                &[(KEY_STOR_POOL_NAME, "tank/new"), (KEY_ZPOOL, "tank/old")]
            )
            .unwrap(),
            zfs("tank/new", false)
        );
    }

    #[test]
    fn missing_or_invalid_properties_say_which_key_and_an_example() {
        use ProviderKind::*;
        type Case<'a> = (ProviderKind, &'a [(&'a str, &'a str)], &'a str);
        let cases: &[Case] = &[
            (
                File,
                &[],
                "e.g. StorDriver/StorPoolName=/var/lib/tandem/pool1",
            ),
            (
                File,
                &[(KEY_STOR_POOL_NAME, "pool")],
                "not an absolute path",
            ),
            (
                FileThin,
                &[(KEY_STOR_POOL_NAME, "  ")],
                "no directory given",
            ),
            (Lvm, &[], "e.g. StorDriver/StorPoolName=vg0"),
            (
                Lvm,
                &[(KEY_STOR_POOL_NAME, "-vg")],
                "must not start with '-'",
            ),
            (Lvm, &[(KEY_STOR_POOL_NAME, "vg 0")], "found ' '"),
            (
                LvmThin,
                &[(KEY_STOR_POOL_NAME, "vg0")],
                "names no thin pool",
            ),
            (LvmThin, &[], "e.g. StorDriver/StorPoolName=vg0/thinpool"),
            (LvmThin, &[(KEY_STOR_POOL_NAME, "vg0/")], "thin pool \"\""),
            (LvmThin, &[(KEY_STOR_POOL_NAME, "vg0/a/b")], "found '/'"),
            (Zfs, &[], "e.g. StorDriver/StorPoolName=tank"),
            (ZfsThin, &[], "StorDriver/ZPoolThin"),
            (Zfs, &[(KEY_STOR_POOL_NAME, "/tank")], "start with a letter"),
            (Zfs, &[(KEY_STOR_POOL_NAME, "tank//x")], "empty components"),
            (Zfs, &[(KEY_STOR_POOL_NAME, "tank@snap")], "found '@'"),
            (Zfs, &[(KEY_STOR_POOL_NAME, "tank/../x")], "'..'"),
            (
                Zfs,
                &[
                    (KEY_STOR_POOL_NAME, "tank"),
                    (KEY_WAIT_TIMEOUT_AFTER_CREATE, "soon"),
                ],
                "StorDriver/WaitTimeoutAfterCreate=5000",
            ),
        ];
        for (kind, props, needle) in cases {
            let e = resolve(*kind, props).unwrap_err();
            let msg = e.to_string();
            assert!(matches!(e, StorageError::PoolConfig { .. }), "{msg}");
            assert!(msg.contains(needle), "{kind:?} {props:?}: {msg}");
            assert!(msg.contains("pool1"), "{msg}");
        }
    }

    #[test]
    fn the_documented_example_message() {
        let e = resolve(ProviderKind::LvmThin, &[(KEY_STOR_POOL_NAME, "vg0")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "storage pool pool1 (LVM_THIN): \"vg0\" names no thin pool: LVM_THIN needs \
             <volume group>/<thin pool>; set the pool property StorDriver/StorPoolName, e.g. \
             StorDriver/StorPoolName=vg0/thinpool"
        );
    }

    #[test]
    fn device_wait_from_linstor_key() {
        let c = resolve(
            ProviderKind::Lvm,
            &[
                (KEY_STOR_POOL_NAME, "vg0"),
                (KEY_WAIT_TIMEOUT_AFTER_CREATE, "250"),
            ],
        )
        .unwrap();
        assert_eq!(
            c,
            PoolConfig::Lvm {
                vg: "vg0".into(),
                thin_pool: None,
                device_wait: Duration::from_millis(250)
            }
        );
    }
}
