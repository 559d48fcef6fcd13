//! What the controller and a satellite tell each other: the desired state of one node
//! (pushed by the controller, persisted and applied by the satellite) and the state the
//! satellite observed (polled by the controller). Plain serde types, JSON on the wire.
//!
//! The controller sends a node's complete desired state every time, with a generation
//! that grows with every change; the satellite applies the newest generation it was
//! given, idempotently, and keeps applying it while the controller is away.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::objects::ProviderKind;

pub use crate::desired::{
    desired_pools, desired_state, lost_state, replication_address, satellite_address,
};

/// The satellite's default port (LINSTOR's plain satellite port).
pub const DEFAULT_SATELLITE_PORT: u16 = 3366;
/// Node property: the TCP port blockd listens on for its peers (every resource of the
/// node shares it). The address is the node's default net interface.
pub const KEY_REPLICATION_PORT: &str = "Tandem/ReplicationPort";
pub const DEFAULT_REPLICATION_PORT: u16 = 7000;
/// Resource definition property: the shared secret peers prove they know, generated
/// by the controller when the definition is created (LINSTOR's key).
pub const KEY_SHARED_SECRET: &str = "DrbdOptions/Net/shared-secret";
/// Resource definition property: the generation (16 hex digits) that new, zero-filled
/// replicas created together at spawn time start from as UpToDate, so that no initial
/// sync copies zeros. Removed once every initial replica reported UpToDate.
pub const KEY_INITIAL_GENERATION: &str = "Tandem/InitialGeneration";
/// Resource definition property: the nodes (comma separated) whose replicas were
/// placed together when the definition got its first resources.
pub const KEY_INITIAL_NODES: &str = "Tandem/InitialNodes";

/// Limits on what a satellite accepts from the controller.
pub const MAX_DESIRED_BYTES: usize = 16 << 20;
pub const MAX_RESOURCES_PER_NODE: usize = 4096;

/// The whole desired state of one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DesiredState {
    /// Grows with every change of this node's desired state (never reused, also not
    /// after a controller restart).
    pub generation: u64,
    /// The node this state is for; a satellite refuses a state for another node.
    pub node: String,
    /// The node was removed with `node lost` (or deleted): remove every resource and
    /// backing volume this satellite created, then report an empty state.
    #[serde(default)]
    pub lost: bool,
    #[serde(default)]
    pub pools: Vec<DesiredPool>,
    #[serde(default)]
    pub resources: Vec<DesiredResource>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredPool {
    pub name: String,
    pub provider_kind: ProviderKind,
    /// The pool's effective properties. The storage providers (crate `storage`,
    /// docs/storage.md) take the driver pool from `StorDriver/StorPoolName`, as
    /// LINSTOR's clients set it: a directory for FILE/FILE_THIN, the volume group for
    /// LVM, `vg/thinpool` for LVM_THIN, the zpool or dataset for ZFS/ZFS_THIN; without
    /// it, from the older per-kind keys `StorDriver/FileDir`, `StorDriver/LvmVg` (with
    /// `StorDriver/ThinPool` for LVM_THIN), `StorDriver/ZPool`, `StorDriver/ZPoolThin`.
    /// `StorDriver/WaitTimeoutAfterCreate` (ms) bounds the wait for a new device node.
    #[serde(default)]
    pub props: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredResource {
    pub name: String,
    pub secret: String,
    /// Options in the words of blockd's resource files (resource-files.md).
    pub protocol: String,
    pub quorum: String,
    pub on_no_quorum: String,
    pub allow_two_primaries: bool,
    pub split_brain: String,
    /// Bytes per second; None: unlimited.
    #[serde(default)]
    pub resync_rate: Option<u64>,
    pub verify_alg: String,
    /// Checksum-based resync (`csums-alg`); None: off.
    #[serde(default)]
    pub csums_alg: Option<String>,
    pub volumes: Vec<DesiredVolume>,
    /// Every node of the resource, this one included.
    pub nodes: Vec<DesiredNode>,
    /// See [`KEY_INITIAL_GENERATION`]: present while the resource is new, for the
    /// nodes named in `initial_nodes`.
    #[serde(default)]
    pub initial_generation: Option<u64>,
    #[serde(default)]
    pub initial_nodes: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredVolume {
    pub number: u32,
    /// Usable size the volume definition asks for, KiB. The backing volume is larger
    /// by tandem's metadata.
    pub size_kib: u64,
    /// The storage pool on this node; None on a diskless node.
    #[serde(default)]
    pub pool: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredNode {
    pub name: String,
    pub id: u8,
    /// `host:port` where the node's blockd listens for peers.
    pub address: String,
    pub diskless: bool,
}

/// What a satellite saw on its node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ObservedState {
    pub node: String,
    /// The newest desired generation it holds (0: none yet).
    pub generation: u64,
    /// Whether everything of that generation is applied; otherwise `errors` and the
    /// resources' `error` say what is not.
    pub applied: bool,
    #[serde(default)]
    pub errors: Vec<String>,
    #[serde(default)]
    pub pools: Vec<ObservedPool>,
    #[serde(default)]
    pub resources: Vec<ObservedResource>,
    /// Resources being removed (backing volumes or files still present), with why
    /// they are still there.
    #[serde(default)]
    pub removing: Vec<ObservedRemoval>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedPool {
    pub name: String,
    /// KiB; None when the pool could not be read (`error` says why).
    #[serde(default)]
    pub free_capacity_kib: Option<u64>,
    #[serde(default)]
    pub total_capacity_kib: Option<u64>,
    #[serde(default)]
    pub error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObservedResource {
    pub name: String,
    /// Why the resource is not as desired here, and what resolves it.
    #[serde(default)]
    pub error: Option<String>,
    /// `Primary` / `Secondary`; None when blockd does not serve it.
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub volumes: Vec<ObservedVolume>,
    #[serde(default)]
    pub peers: Vec<ObservedPeer>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObservedVolume {
    pub number: u32,
    /// blockd's disk state (`UpToDate`, `Inconsistent`, `Diskless`, ...); None when the
    /// volume is not open.
    #[serde(default)]
    pub disk_state: Option<String>,
    #[serde(default)]
    pub quorum: Option<bool>,
    #[serde(default)]
    pub may_promote: Option<bool>,
    /// Exported bytes.
    #[serde(default)]
    pub size: Option<u64>,
    #[serde(default)]
    pub nbd_uri: Option<String>,
    /// Backing device or file.
    #[serde(default)]
    pub backing: Option<String>,
    /// Present when the state needs a human: the command that resolves it.
    #[serde(default)]
    pub hint: Option<String>,
    #[serde(default)]
    pub resync_left_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObservedPeer {
    pub name: String,
    /// `StandAlone`, `Connecting`, `Handshake`, `Connected`.
    pub connection: String,
    /// `Off`, `Established`, `SyncSource`, `SyncTarget`.
    pub replication: String,
    #[serde(default)]
    pub disk_state: Option<String>,
    #[serde(default)]
    pub out_of_sync_bytes: u64,
    #[serde(default)]
    pub resync_done_percent: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedRemoval {
    pub name: String,
    pub reason: String,
}
