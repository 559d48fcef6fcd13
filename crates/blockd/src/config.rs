//! Resource files: one TOML file per resource in the config directory.
//!
//! Every problem is reported with the file, the line and what to change; a directory
//! with any bad file is rejected whole, so the running configuration is never half
//! replaced. The format is documented in docs/resource-files.md.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;
use toml::Spanned;

/// Largest resource file we read; a real one is a few hundred bytes.
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// Most resource files in one directory.
pub const MAX_RESOURCES: usize = 4096;
/// Most volumes per resource.
pub const MAX_VOLUMES: usize = 64;
/// Most nodes one replicated resource may list.
pub const MAX_NODES: usize = 16;
/// Shortest accepted shared secret.
pub const MIN_SECRET: usize = 8;
/// Default time after which a silent peer counts as gone.
pub const DEFAULT_TIMEOUT_MS: u64 = 2000;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {msg}")]
    At {
        path: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },
    #[error("{dir}: {msg}")]
    Dir { dir: PathBuf, msg: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceConfig {
    pub name: String,
    pub file: PathBuf,
    pub volumes: BTreeMap<u32, VolumeConfig>,
    /// Replication settings; `None` for a resource that lives on this node only.
    pub repl: Option<ReplConfig>,
}

/// How a resource is replicated: every node holding it and the shared options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplConfig {
    pub nodes: Vec<NodeConfig>,
    pub secret: String,
    pub protocol: ProtocolOpt,
    /// Majority quorum (true) or none.
    pub quorum: bool,
    pub split_brain: SplitBrainOpt,
    /// A peer silent for this long is disconnected.
    pub timeout_ms: u64,
    /// Resync bytes per second, over all peers (None: unlimited).
    pub resync_rate: Option<u64>,
    /// Checksum-based resync (`csums-alg = "sha256"`).
    pub resync_csums: bool,
    /// What a primary does with I/O while it has no quorum.
    pub on_no_quorum: OnNoQuorumOpt,
    /// A second node may be primary too (live migration; protocol C only).
    pub allow_two_primaries: bool,
}

/// `on-no-quorum`: a primary without quorum fails I/O, or holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnNoQuorumOpt {
    #[default]
    IoError,
    SuspendIo,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeConfig {
    pub name: String,
    pub id: u8,
    pub address: SocketAddr,
    pub diskless: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolOpt {
    A,
    C,
}

/// What to do automatically after a split brain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SplitBrainOpt {
    Disconnect,
    DiscardZeroChanges,
    DiscardLeastChanges,
    /// The node promoted last (or first) loses its changes; when that cannot be told
    /// (a node restarted since), as discard-least-changes.
    DiscardYoungerPrimary,
    DiscardOlderPrimary,
    /// Discard the changes of the named node.
    DiscardNode(String),
}

impl ReplConfig {
    pub fn node(&self, name: &str) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.name == name)
    }
    pub fn node_by_id(&self, id: u8) -> Option<&NodeConfig> {
        self.nodes.iter().find(|n| n.id == id)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeConfig {
    pub number: u32,
    pub backing: PathBuf,
    /// Size to create the backing file with when it does not exist.
    pub size: Option<u64>,
    pub preallocate: bool,
    pub nbd_tcp: Option<SocketAddr>,
    pub max_peers: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawResource {
    name: Option<Spanned<String>>,
    #[serde(default)]
    volume: Vec<Spanned<RawVolume>>,
    #[serde(default)]
    node: Vec<Spanned<RawNode>>,
    secret: Option<Spanned<String>>,
    protocol: Option<Spanned<String>>,
    quorum: Option<Spanned<String>>,
    split_brain: Option<Spanned<String>>,
    timeout_ms: Option<Spanned<i64>>,
    resync_rate: Option<Spanned<String>>,
    on_no_quorum: Option<Spanned<String>>,
    allow_two_primaries: Option<Spanned<bool>>,
    verify_alg: Option<Spanned<String>>,
    csums_alg: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawNode {
    name: Spanned<String>,
    id: Spanned<i64>,
    address: Spanned<String>,
    #[serde(default)]
    diskless: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawVolume {
    number: Spanned<i64>,
    backing: Option<Spanned<String>>,
    size: Option<Spanned<SizeValue>>,
    #[serde(default)]
    preallocate: bool,
    nbd_tcp: Option<Spanned<String>>,
    max_peers: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SizeValue {
    Bytes(i64),
    Text(String),
}

/// Names as LINSTOR allows them: a letter or `_` first, then letters, digits, `_`, `-`;
/// 2 to 48 characters.
pub fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !(2..=48).contains(&name.len()) || !first_ok || !rest_ok {
        return Err(format!(
            "invalid resource name {name:?}: use 2-48 characters, a letter or '_' first, then letters, digits, '_' or '-'"
        ));
    }
    Ok(())
}

/// Node names are host names: 1 to 63 letters, digits, '-', '_' or '.', starting with
/// a letter or digit.
pub fn check_node_name(name: &str) -> Result<(), String> {
    let first_ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !(1..=63).contains(&name.len()) || !first_ok || !rest_ok {
        return Err(format!(
            "invalid node name {name:?}: use 1-63 letters, digits, '-', '_' or '.', a letter or digit first (usually the host name)"
        ));
    }
    Ok(())
}

/// Parses sizes like `4096`, `512K`, `10MiB`, `1.5G` (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {s:?} (use K, M, G or T, binary)"
            ));
        }
    };
    let bad = || format!("invalid size {s:?}: expected a number with an optional unit, like 10G");
    let bytes = if num.contains('.') {
        let v: f64 = num.parse().map_err(|_| bad())?;
        let b = v * mult as f64;
        if !(0.0..1.8e19).contains(&b) {
            return Err(bad());
        }
        b as u64
    } else {
        num.parse::<u64>()
            .map_err(|_| bad())?
            .checked_mul(mult)
            .ok_or_else(bad)?
    };
    Ok(bytes)
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()
        .iter()
        .take(offset)
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Parses one resource file's text. `path` is used for the name and in messages.
pub fn parse_resource(path: &Path, text: &str) -> Result<ResourceConfig, ConfigError> {
    let at = |span: std::ops::Range<usize>, msg: String| ConfigError::At {
        path: path.to_owned(),
        line: line_of(text, span.start),
        msg,
    };
    let raw: RawResource = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_of(text, s.start)).unwrap_or(1);
        ConfigError::At {
            path: path.to_owned(),
            line,
            msg: e.message().trim().to_owned(),
        }
    })?;
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default()
        .to_owned();
    let name = match raw.name {
        Some(n) if *n.get_ref() != stem => {
            return Err(at(
                n.span(),
                format!(
                    "name {:?} differs from the file name {stem:?}; rename the file to {}.toml",
                    n.get_ref(),
                    n.get_ref()
                ),
            ));
        }
        _ => stem,
    };
    check_name(&name).map_err(|msg| ConfigError::File {
        path: path.to_owned(),
        msg,
    })?;
    if raw.volume.is_empty() {
        return Err(ConfigError::File {
            path: path.to_owned(),
            msg: "no [[volume]] section: a resource needs at least one volume".into(),
        });
    }
    if raw.volume.len() > MAX_VOLUMES {
        return Err(ConfigError::File {
            path: path.to_owned(),
            msg: format!(
                "{} volumes exceed the limit of {MAX_VOLUMES}",
                raw.volume.len()
            ),
        });
    }
    let raw_repl = RawRepl {
        node: raw.node,
        secret: raw.secret,
        protocol: raw.protocol,
        quorum: raw.quorum,
        split_brain: raw.split_brain,
        timeout_ms: raw.timeout_ms,
        resync_rate: raw.resync_rate,
        on_no_quorum: raw.on_no_quorum,
        allow_two_primaries: raw.allow_two_primaries,
        verify_alg: raw.verify_alg,
        csums_alg: raw.csums_alg,
    };
    let mut volumes = BTreeMap::new();
    for v in raw.volume {
        let vspan = v.span();
        let v = v.into_inner();
        let number = u32::try_from(*v.number.get_ref())
            .ok()
            .filter(|n| *n < 65536)
            .ok_or_else(|| {
                at(
                    v.number.span(),
                    format!(
                        "volume number {} is out of range 0..65535",
                        v.number.get_ref()
                    ),
                )
            })?;
        let backing = match &v.backing {
            Some(b) => {
                let p = PathBuf::from(b.get_ref());
                if !p.is_absolute() {
                    return Err(at(
                        b.span(),
                        format!("backing {:?} must be an absolute path", b.get_ref()),
                    ));
                }
                p
            }
            // Only a diskless node of a replicated resource has no backing; checked
            // when the daemon knows which node it is.
            None if !raw_repl.node.is_empty() => PathBuf::new(),
            None => {
                return Err(at(
                    vspan,
                    format!("volume {number} has no backing = \"/path/to/file-or-device\""),
                ));
            }
        };
        let size = match v.size {
            None => None,
            Some(s) => {
                let span = s.span();
                let bytes = match s.into_inner() {
                    SizeValue::Bytes(b) => {
                        u64::try_from(b).map_err(|_| "size must not be negative".to_owned())
                    }
                    SizeValue::Text(t) => parse_size(&t),
                }
                .map_err(|m| at(span.clone(), m))?;
                Some(bytes)
            }
        };
        let nbd_tcp = match v.nbd_tcp {
            None => None,
            Some(a) => Some(a.get_ref().parse::<SocketAddr>().map_err(|_| {
                at(
                    a.span(),
                    format!(
                        "nbd-tcp {:?} is not an address like 127.0.0.1:10809",
                        a.get_ref()
                    ),
                )
            })?),
        };
        let max_peers = match v.max_peers {
            None => replica::md::DEFAULT_MAX_PEERS,
            Some(m) => u32::try_from(*m.get_ref())
                .ok()
                .filter(|m| (1..=replica::md::MAX_PEERS).contains(m))
                .ok_or_else(|| {
                    at(
                        m.span(),
                        format!("max-peers must be 1..={}", replica::md::MAX_PEERS),
                    )
                })?,
        };
        let vc = VolumeConfig {
            number,
            backing,
            size,
            preallocate: v.preallocate,
            nbd_tcp,
            max_peers,
        };
        if volumes.insert(number, vc).is_some() {
            return Err(at(vspan, format!("volume number {number} appears twice")));
        }
    }
    let repl = parse_repl(&raw_repl, &at, path, volumes.len())?;
    Ok(ResourceConfig {
        name,
        file: path.to_owned(),
        volumes,
        repl,
    })
}

/// The replication part of a resource file.
struct RawRepl {
    node: Vec<Spanned<RawNode>>,
    secret: Option<Spanned<String>>,
    protocol: Option<Spanned<String>>,
    quorum: Option<Spanned<String>>,
    split_brain: Option<Spanned<String>>,
    timeout_ms: Option<Spanned<i64>>,
    resync_rate: Option<Spanned<String>>,
    on_no_quorum: Option<Spanned<String>>,
    allow_two_primaries: Option<Spanned<bool>>,
    verify_alg: Option<Spanned<String>>,
    csums_alg: Option<Spanned<String>>,
}

fn parse_repl(
    raw: &RawRepl,
    at: &dyn Fn(std::ops::Range<usize>, String) -> ConfigError,
    path: &Path,
    volumes: usize,
) -> Result<Option<ReplConfig>, ConfigError> {
    let file_err = |msg: String| ConfigError::File {
        path: path.to_owned(),
        msg,
    };
    if raw.node.is_empty() {
        let stray = [
            raw.secret.as_ref().map(|s| ("secret", s.span())),
            raw.protocol.as_ref().map(|s| ("protocol", s.span())),
            raw.quorum.as_ref().map(|s| ("quorum", s.span())),
            raw.split_brain.as_ref().map(|s| ("split-brain", s.span())),
            raw.timeout_ms.as_ref().map(|s| ("timeout-ms", s.span())),
            raw.resync_rate.as_ref().map(|s| ("resync-rate", s.span())),
            raw.on_no_quorum
                .as_ref()
                .map(|s| ("on-no-quorum", s.span())),
            raw.allow_two_primaries
                .as_ref()
                .map(|s| ("allow-two-primaries", s.span())),
            raw.verify_alg.as_ref().map(|s| ("verify-alg", s.span())),
            raw.csums_alg.as_ref().map(|s| ("csums-alg", s.span())),
        ];
        if let Some((key, span)) = stray.into_iter().flatten().next() {
            return Err(at(
                span,
                format!(
                    "{key} only applies to a replicated resource: add [[node]] sections or remove it"
                ),
            ));
        }
        return Ok(None);
    }
    if volumes != 1 {
        return Err(file_err(format!(
            "a replicated resource has exactly one [[volume]] today ({volumes} given); use one resource per disk"
        )));
    }
    if raw.node.len() < 2 || raw.node.len() > MAX_NODES {
        return Err(file_err(format!(
            "a replicated resource lists 2 to {MAX_NODES} [[node]] sections ({} given)",
            raw.node.len()
        )));
    }
    let mut nodes: Vec<NodeConfig> = Vec::new();
    for n in &raw.node {
        let span = n.span();
        let n = n.get_ref();
        check_node_name(n.name.get_ref()).map_err(|m| at(n.name.span(), m))?;
        let id = u8::try_from(*n.id.get_ref())
            .ok()
            .filter(|i| u32::from(*i) <= replica::md::MAX_PEERS)
            .ok_or_else(|| {
                at(
                    n.id.span(),
                    format!(
                        "node id {} is out of range 0..={}",
                        n.id.get_ref(),
                        replica::md::MAX_PEERS
                    ),
                )
            })?;
        let address = n.address.get_ref().parse::<SocketAddr>().map_err(|_| {
            at(
                n.address.span(),
                format!(
                    "address {:?} is not an address like 192.168.1.10:7000",
                    n.address.get_ref()
                ),
            )
        })?;
        for o in &nodes {
            let clash = if o.name == *n.name.get_ref() {
                Some(format!("node name {:?}", o.name))
            } else if o.id == id {
                Some(format!("node id {id}"))
            } else if o.address == address {
                Some(format!("address {address}"))
            } else {
                None
            };
            if let Some(what) = clash {
                return Err(at(span, format!("{what} appears twice")));
            }
        }
        nodes.push(NodeConfig {
            name: n.name.get_ref().clone(),
            id,
            address,
            diskless: n.diskless,
        });
    }
    if nodes.iter().all(|n| n.diskless) {
        return Err(file_err(
            "every node is diskless: at least one needs a disk".into(),
        ));
    }
    let secret = match &raw.secret {
        None => return Err(file_err("a replicated resource needs secret = \"...\" (the same on every node, at least 8 characters)".into())),
        Some(s) if s.get_ref().len() < MIN_SECRET => {
            return Err(at(s.span(), format!("secret is shorter than {MIN_SECRET} characters")));
        }
        Some(s) => s.get_ref().clone(),
    };
    let protocol = match raw
        .protocol
        .as_ref()
        .map(|p| (p.get_ref().as_str(), p.span()))
    {
        None | Some(("C" | "c", _)) => ProtocolOpt::C,
        Some(("A" | "a", _)) => ProtocolOpt::A,
        Some((other, span)) => {
            return Err(at(
                span,
                format!(
                    "protocol {other:?} is unknown: use \"C\" (synchronous) or \"A\" (asynchronous)"
                ),
            ));
        }
    };
    let quorum = match raw
        .quorum
        .as_ref()
        .map(|p| (p.get_ref().as_str(), p.span()))
    {
        None | Some(("majority", _)) => true,
        Some(("off", _)) => false,
        Some((other, span)) => {
            return Err(at(
                span,
                format!("quorum {other:?} is unknown: use \"majority\" or \"off\""),
            ));
        }
    };
    let split_brain = match raw
        .split_brain
        .as_ref()
        .map(|p| (p.get_ref().as_str(), p.span()))
    {
        None | Some(("disconnect", _)) => SplitBrainOpt::Disconnect,
        Some(("discard-zero-changes", _)) => SplitBrainOpt::DiscardZeroChanges,
        Some(("discard-least-changes", _)) => SplitBrainOpt::DiscardLeastChanges,
        Some(("discard-younger-primary", _)) => SplitBrainOpt::DiscardYoungerPrimary,
        Some(("discard-older-primary", _)) => SplitBrainOpt::DiscardOlderPrimary,
        Some((other, span)) => match other.strip_prefix("discard-node-") {
            Some(name) if nodes.iter().any(|n| n.name == name) => {
                SplitBrainOpt::DiscardNode(name.to_owned())
            }
            _ => {
                return Err(at(
                    span,
                    format!(
                        "split-brain {other:?} is unknown: use disconnect, discard-zero-changes, discard-least-changes, discard-younger-primary, discard-older-primary or discard-node-<name of a listed node>"
                    ),
                ));
            }
        },
    };
    let timeout_ms = match &raw.timeout_ms {
        None => DEFAULT_TIMEOUT_MS,
        Some(t) => u64::try_from(*t.get_ref())
            .ok()
            .filter(|t| (200..=60_000).contains(t))
            .ok_or_else(|| at(t.span(), "timeout-ms must be 200..=60000".into()))?,
    };
    let resync_rate = match &raw.resync_rate {
        None => None,
        Some(r) if r.get_ref() == "unlimited" => None,
        Some(r) => Some(
            parse_size(r.get_ref())
                .ok()
                .filter(|b| *b >= 64 << 10)
                .ok_or_else(|| {
                    at(
                        r.span(),
                        format!(
                            "resync-rate {:?} is not a rate: give bytes per second of at least 64K, e.g. \"100M\", or \"unlimited\"",
                            r.get_ref()
                        ),
                    )
                })?,
        ),
    };
    let on_no_quorum = match raw
        .on_no_quorum
        .as_ref()
        .map(|o| (o.get_ref().as_str(), o.span()))
    {
        None | Some(("io-error", _)) => OnNoQuorumOpt::IoError,
        Some(("suspend-io", _)) => OnNoQuorumOpt::SuspendIo,
        Some((other, span)) => {
            return Err(at(
                span,
                format!(
                    "on-no-quorum {other:?} is unknown: use \"io-error\" (I/O fails while quorum is lost) or \"suspend-io\" (I/O waits for quorum)"
                ),
            ));
        }
    };
    let allow_two_primaries = raw
        .allow_two_primaries
        .as_ref()
        .is_some_and(|a| *a.get_ref());
    if let Some(a) = &raw.allow_two_primaries
        && *a.get_ref()
        && protocol != ProtocolOpt::C
    {
        return Err(at(
            a.span(),
            "allow-two-primaries = true needs protocol = \"C\": a write must be on both primaries before it completes".into(),
        ));
    }
    if let Some(v) = &raw.verify_alg
        && v.get_ref() != "crc32c"
    {
        return Err(at(
            v.span(),
            format!(
                "verify-alg {:?} is not supported: online verify compares CRC32C digests; use \"crc32c\"",
                v.get_ref()
            ),
        ));
    }
    let resync_csums = match &raw.csums_alg {
        None => false,
        Some(v) if v.get_ref() == "sha256" => true,
        Some(v) => {
            return Err(at(
                v.span(),
                format!(
                    "csums-alg {:?} is not supported: checksum-based resync compares SHA-256 digests; use \"sha256\", or leave it out to copy every out-of-sync block",
                    v.get_ref()
                ),
            ));
        }
    };
    Ok(Some(ReplConfig {
        nodes,
        secret,
        protocol,
        quorum,
        split_brain,
        timeout_ms,
        resync_rate,
        resync_csums,
        on_no_quorum,
        allow_two_primaries,
    }))
}

/// Reads every `*.toml` file in `dir`. Cross-file conflicts (the same backing file or
/// TCP address twice) are reported naming both files.
pub fn load_dir(dir: &Path) -> Result<BTreeMap<String, ResourceConfig>, ConfigError> {
    let derr = |msg: String| ConfigError::Dir {
        dir: dir.to_owned(),
        msg,
    };
    let entries =
        std::fs::read_dir(dir).map_err(|e| derr(format!("cannot read config directory: {e}")))?;
    let mut files = Vec::new();
    for e in entries {
        let e = e.map_err(|e| derr(format!("cannot list config directory: {e}")))?;
        let p = e.path();
        if p.extension().is_some_and(|x| x == "toml") {
            files.push(p);
        }
    }
    files.sort();
    if files.len() > MAX_RESOURCES {
        return Err(derr(format!(
            "{} resource files exceed the limit of {MAX_RESOURCES}",
            files.len()
        )));
    }
    let mut out: BTreeMap<String, ResourceConfig> = BTreeMap::new();
    let mut backings: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
    let mut addrs: BTreeMap<SocketAddr, PathBuf> = BTreeMap::new();
    for path in files {
        let read = |e| ConfigError::Read {
            path: path.clone(),
            source: e,
        };
        let meta = std::fs::metadata(&path).map_err(read)?;
        if meta.len() > MAX_FILE_BYTES {
            return Err(ConfigError::File {
                path,
                msg: format!(
                    "{} bytes exceed the {MAX_FILE_BYTES}-byte limit for a resource file",
                    meta.len()
                ),
            });
        }
        let text = std::fs::read_to_string(&path).map_err(read)?;
        let res = parse_resource(&path, &text)?;
        for v in res.volumes.values() {
            if v.backing.as_os_str().is_empty() {
                // A diskless node's volume.
            } else if let Some(other) = backings.insert(v.backing.clone(), path.clone()) {
                return Err(ConfigError::File {
                    path,
                    msg: format!(
                        "backing {} is also used by {}",
                        v.backing.display(),
                        other.display()
                    ),
                });
            }
            if let Some(a) = v.nbd_tcp
                && let Some(other) = addrs.insert(a, path.clone())
            {
                return Err(ConfigError::File {
                    path,
                    msg: format!("nbd-tcp {a} is also used by {}", other.display()),
                });
            }
        }
        out.insert(res.name.clone(), res);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ResourceConfig, ConfigError> {
        parse_resource(Path::new("/etc/tandem/r0.toml"), text)
    }

    #[test]
    fn a_full_file_parses() {
        let r = parse(
            r#"
name = "r0"
[[volume]]
number = 0
backing = "/var/lib/tandem/r0-0.img"
size = "10GiB"
preallocate = true
nbd-tcp = "127.0.0.1:10809"

[[volume]]
number = 1
backing = "/var/lib/tandem/r0-1.img"
size = 1048576
"#,
        )
        .unwrap();
        assert_eq!(r.name, "r0");
        assert_eq!(r.volumes[&0].size, Some(10 << 30));
        assert!(r.volumes[&0].preallocate);
        assert_eq!(
            r.volumes[&0].nbd_tcp,
            Some("127.0.0.1:10809".parse().unwrap())
        );
        assert_eq!(r.volumes[&1].size, Some(1 << 20));
        assert_eq!(r.volumes[&1].max_peers, replica::md::DEFAULT_MAX_PEERS);
    }

    #[test]
    fn errors_name_the_file_and_line() {
        let cases = [
            (
                "[[volume]]\nnumber = 0\nbacking = \"/x\"\nsize = \"10QB\"\n",
                4,
                "unknown size unit",
            ),
            (
                "[[volume]]\nnumber = 0\nbacking = \"relative.img\"\n",
                3,
                "absolute",
            ),
            (
                "[[volume]]\nnumber = 0\nbacking = \"/x\"\ncolour = 1\n",
                4,
                "unknown field",
            ),
            (
                "[[volume]]\nnumber = 0\nbacking = \"/x\"\n[[volume]]\nnumber = 0\nbacking = \"/y\"\n",
                4,
                "twice",
            ),
            (
                "[[volume]]\nnumber = -1\nbacking = \"/x\"\n",
                2,
                "out of range",
            ),
            (
                "name = \"other\"\n[[volume]]\nnumber = 0\nbacking = \"/x\"\n",
                1,
                "differs from the file name",
            ),
            ("[[volume]\nnumber = 0\n", 1, ""),
            (
                "[[volume]]\nnumber = 0\nbacking = \"/x\"\nnbd-tcp = \"nowhere\"\n",
                4,
                "not an address",
            ),
        ];
        for (text, line, what) in cases {
            let e = parse(text).unwrap_err().to_string();
            assert!(
                e.starts_with(&format!("/etc/tandem/r0.toml:{line}: ")),
                "{e}"
            );
            assert!(e.contains(what), "{e}");
        }
        let e = parse("").unwrap_err().to_string();
        assert!(e.contains("no [[volume]]"), "{e}");
    }

    #[test]
    fn replication_options_parse_or_say_what_is_supported() {
        let repl = |opts: &str| {
            format!(
                "secret = \"s3cret-s3cret\"\n{opts}\n[[node]]\nname = \"a\"\nid = 0\naddress = \"127.0.0.1:7000\"\n[[node]]\nname = \"b\"\nid = 1\naddress = \"127.0.0.1:7001\"\n[[volume]]\nnumber = 0\nbacking = \"/x\"\nsize = \"64M\"\n"
            )
        };
        let ok = parse(&repl("resync-rate = \"100M\"\non-no-quorum = \"io-error\"\nallow-two-primaries = false\nverify-alg = \"crc32c\"")).unwrap();
        let ok = ok.repl.unwrap();
        assert_eq!(ok.resync_rate, Some(100 << 20));
        assert_eq!(ok.on_no_quorum, OnNoQuorumOpt::IoError);
        let default = parse(&repl("")).unwrap().repl.unwrap();
        assert_eq!(default.resync_rate, None);
        assert_eq!(default.on_no_quorum, OnNoQuorumOpt::IoError);
        assert!(!default.allow_two_primaries);
        for (word, opt) in [
            (
                "discard-younger-primary",
                SplitBrainOpt::DiscardYoungerPrimary,
            ),
            ("discard-older-primary", SplitBrainOpt::DiscardOlderPrimary),
        ] {
            let c = parse(&repl(&format!("split-brain = \"{word}\""))).unwrap();
            assert_eq!(c.repl.unwrap().split_brain, opt);
        }
        let two = parse(&repl("allow-two-primaries = true")).unwrap();
        assert!(two.repl.unwrap().allow_two_primaries);
        let suspend = parse(&repl("on-no-quorum = \"suspend-io\"")).unwrap();
        assert_eq!(suspend.repl.unwrap().on_no_quorum, OnNoQuorumOpt::SuspendIo);
        for (opts, what) in [
            ("resync-rate = \"fast\"", "not a rate"),
            ("resync-rate = \"1K\"", "at least 64K"),
            ("on-no-quorum = \"panic\"", "unknown: use \"io-error\""),
            (
                "allow-two-primaries = true\nprotocol = \"A\"",
                "needs protocol = \"C\"",
            ),
            ("verify-alg = \"md5\"", "crc32c"),
        ] {
            let e = parse(&repl(opts)).unwrap_err().to_string();
            assert!(e.starts_with("/etc/tandem/r0.toml:2: "), "{e}");
            assert!(e.contains(what), "{opts}: {e}");
        }
        let e = parse("resync-rate = \"10M\"\n[[volume]]\nnumber = 0\nbacking = \"/x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("only applies to a replicated resource"), "{e}");
    }

    #[test]
    fn names_follow_linstor_rules() {
        assert!(check_name("vm-100-disk-0").is_ok());
        assert!(check_name("_x").is_ok());
        assert!(check_name("1abc").is_err());
        assert!(check_name("a").is_err());
        assert!(check_name("a.b").is_err());
        assert!(check_name(&"a".repeat(49)).is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("2 MiB"), Ok(2 << 20));
        assert!(parse_size("G").is_err());
        assert!(parse_size("99999999999999T").is_err());
    }

    #[test]
    fn directory_conflicts_name_both_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(
            d.path().join("aa.toml"),
            "[[volume]]\nnumber = 0\nbacking = \"/x\"\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("bb.toml"),
            "[[volume]]\nnumber = 0\nbacking = \"/x\"\n",
        )
        .unwrap();
        std::fs::write(d.path().join("notes.txt"), "ignored").unwrap();
        let e = load_dir(d.path()).unwrap_err().to_string();
        assert!(e.contains("bb.toml") && e.contains("aa.toml"), "{e}");
        std::fs::write(
            d.path().join("bb.toml"),
            "[[volume]]\nnumber = 0\nbacking = \"/y\"\n",
        )
        .unwrap();
        let all = load_dir(d.path()).unwrap();
        assert_eq!(all.keys().collect::<Vec<_>>(), vec!["aa", "bb"]);
    }
}

#[cfg(test)]
mod doc_tests {
    /// The commented example in docs/ must stay a valid resource file.
    #[test]
    fn documented_example_parses() {
        let text = include_str!("../../../docs/examples/vm-100-disk-0.toml");
        let r = super::parse_resource(
            std::path::Path::new("/etc/tandem/resources/vm-100-disk-0.toml"),
            text,
        )
        .unwrap();
        assert_eq!(r.name, "vm-100-disk-0");
        assert_eq!(r.volumes[&0].size, Some(32 << 30));
    }
}
