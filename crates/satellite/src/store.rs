//! The satellite's state directory: the newest desired state and the ledger of backing
//! volumes, each one JSON file replaced atomically (write, fsync, rename, fsync dir).

use std::io::Write;
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub const DESIRED: &str = "desired.json";
pub const LEDGER: &str = "ledger.json";
/// Larger state files are refused as damaged.
const MAX_FILE: u64 = 64 << 20;

/// Replaces `path` with `bytes` so that a crash leaves the old or the new content.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let dir = path
        .parent()
        .ok_or_else(|| format!("{} has no directory", path.display()))?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("state")
    ));
    let what = |e: std::io::Error| format!("writing {}: {e}", path.display());
    {
        let mut f = std::fs::File::create(&tmp).map_err(what)?;
        f.write_all(bytes).map_err(what)?;
        f.sync_all().map_err(what)?;
    }
    std::fs::rename(&tmp, path).map_err(what)?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(what)
}

pub fn save<T: Serialize>(path: &Path, v: &T) -> Result<(), String> {
    let bytes =
        serde_json::to_vec_pretty(v).map_err(|e| format!("encoding {}: {e}", path.display()))?;
    write_atomic(path, &bytes)
}

/// None when the file does not exist.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, String> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    if meta.len() > MAX_FILE {
        return Err(format!(
            "{} is {} bytes, more than a satellite ever writes; it is damaged: move it away and restart (the controller sends the desired state again)",
            path.display(),
            meta.len()
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map(Some).map_err(|e| {
        format!(
            "{} is damaged ({e}); move it away and restart the satellite",
            path.display()
        )
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn saved_state_loads_back_and_a_missing_file_is_none() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.json");
        assert_eq!(load::<Vec<u32>>(&p).unwrap(), None);
        save(&p, &vec![1u32, 2, 3]).unwrap();
        save(&p, &vec![4u32]).unwrap();
        assert_eq!(load::<Vec<u32>>(&p).unwrap(), Some(vec![4]));
        std::fs::write(&p, b"{not json").unwrap();
        let e = load::<Vec<u32>>(&p).unwrap_err();
        assert!(e.contains("damaged"), "{e}");
    }
}
