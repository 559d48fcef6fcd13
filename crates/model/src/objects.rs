//! The cluster's objects with LINSTOR's names and fields (OpenAPI `Node`, `NetInterface`,
//! `StoragePool`, `ResourceGroup`, `VolumeGroup`, `AutoSelectFilter`,
//! `ResourceDefinition`, `VolumeDefinition`, `Resource`, `Volume`). Serde here is the
//! storage form; the REST layer shapes the JSON LINSTOR's clients expect from them.

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::ModelError;
use crate::name;
use crate::props::{self, Props};

/// Every node gets this diskless pool (LINSTOR `LinStor.DISKLESS_STOR_POOL_NAME`).
pub const DEFAULT_DISKLESS_POOL: &str = "DfltDisklessStorPool";
/// Resource definitions without a group belong to this one (`InternalApiConsts.DEFAULT_RSC_GRP_NAME`).
pub const DEFAULT_RESOURCE_GROUP: &str = "DfltRscGrp";
/// DRBD node ids are 0..=31 (`NodeId.java` NODE_ID_MAX 31), so at most 32 replicas.
pub const NODE_ID_MAX: u8 = 31;
/// The implicit first interface (`NetInterfaceName.DEFAULT_NET_INTERFACE_NAME`).
pub const DEFAULT_NET_INTERFACE: &str = "default";
/// Satellite port when none is given (`consts.json` DFLT_STLT_PORT_PLAIN / _SSL).
pub const DEFAULT_SATELLITE_PORT_PLAIN: u16 = 3366;
pub const DEFAULT_SATELLITE_PORT_SSL: u16 = 3367;

fn parse_loose<T: Copy>(s: &str, table: &[(&str, T)], what: &str) -> Result<T, ModelError> {
    let norm = |x: &str| x.to_ascii_uppercase().replace(['_', '-'], "");
    let want = norm(s.trim());
    table
        .iter()
        .find(|(n, _)| norm(n) == want)
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            ModelError::invalid(
                what,
                format!("'{s}' is not a {what}"),
                format!(
                    "use one of: {}",
                    table.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ")
                ),
            )
        })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum NodeType {
    Controller,
    Satellite,
    Combined,
    Auxiliary,
}

impl NodeType {
    const NAMES: [(&'static str, NodeType); 4] = [
        ("Controller", Self::Controller),
        ("Satellite", Self::Satellite),
        ("Combined", Self::Combined),
        ("Auxiliary", Self::Auxiliary),
    ];

    /// Only nodes that run a satellite hold storage pools and resources.
    pub fn runs_satellite(self) -> bool {
        matches!(self, Self::Satellite | Self::Combined)
    }
}

impl FromStr for NodeType {
    type Err = ModelError;
    /// Case-insensitive, as LINSTOR's clients send `Satellite`, `SATELLITE` or `satellite`.
    fn from_str(s: &str) -> Result<Self, ModelError> {
        parse_loose(s, &Self::NAMES, "node type")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ConnectionStatus {
    Offline,
    Connected,
    Online,
    VersionMismatch,
    AuthenticationError,
    HostnameMismatch,
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EncryptionType {
    Plain,
    Ssl,
}

impl FromStr for EncryptionType {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, ModelError> {
        parse_loose(
            s,
            &[("PLAIN", Self::Plain), ("SSL", Self::Ssl)],
            "satellite encryption type",
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NodeFlag {
    Delete,
    Evacuate,
    Evicted,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetInterface {
    pub name: String,
    /// An IPv4 or IPv6 address (LINSTOR identifies interfaces by IP).
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub satellite_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub satellite_encryption_type: Option<EncryptionType>,
    /// Used for the controller's connection to the satellite (`StltCon`).
    #[serde(default)]
    pub is_active: bool,
}

impl NetInterface {
    pub fn new(name: &str, address: &str) -> Self {
        Self {
            name: name.to_owned(),
            address: address.to_owned(),
            satellite_port: None,
            satellite_encryption_type: None,
            is_active: false,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), ModelError> {
        name::check_net_interface_name(&self.name)?;
        if self.address.trim().parse::<std::net::IpAddr>().is_err() {
            return Err(ModelError::invalid(
                "net interface address",
                format!("'{}' is not an IP address", self.address),
                "give an IPv4 or IPv6 address such as 10.0.0.1 (not a host name)",
            ));
        }
        if self.satellite_port == Some(0) {
            return Err(ModelError::invalid(
                "satellite port",
                "port 0 is not a port",
                "use 1..=65535; 3366 is the default for PLAIN and 3367 for SSL",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    #[serde(rename = "type")]
    pub node_type: NodeType,
    #[serde(default)]
    pub flags: BTreeSet<NodeFlag>,
    #[serde(default)]
    pub props: Props,
    #[serde(default)]
    pub net_interfaces: Vec<NetInterface>,
    /// OFFLINE until a satellite connects: true, not a stub.
    pub connection_status: ConnectionStatus,
    /// Keyed by [`name::key`] of the pool name.
    #[serde(default)]
    pub storage_pools: BTreeMap<String, StoragePool>,
}

impl Node {
    pub fn storage_pool(&self, pool: &str) -> Option<&StoragePool> {
        self.storage_pools.get(&name::key(pool))
    }

    pub fn net_interface(&self, name: &str) -> Option<&NetInterface> {
        self.net_interfaces
            .iter()
            .find(|n| n.name.eq_ignore_ascii_case(name))
    }

    /// No new replicas go to a node that is being deleted, evacuated or was evicted.
    pub fn accepts_new_resources(&self) -> bool {
        self.node_type.runs_satellite() && self.flags.is_empty()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ProviderKind {
    Diskless,
    Lvm,
    LvmThin,
    Zfs,
    ZfsThin,
    File,
    FileThin,
}

impl ProviderKind {
    const NAMES: [(&'static str, ProviderKind); 7] = [
        ("DISKLESS", Self::Diskless),
        ("LVM", Self::Lvm),
        ("LVM_THIN", Self::LvmThin),
        ("ZFS", Self::Zfs),
        ("ZFS_THIN", Self::ZfsThin),
        ("FILE", Self::File),
        ("FILE_THIN", Self::FileThin),
    ];

    pub fn is_diskless(self) -> bool {
        self == Self::Diskless
    }

    pub fn is_thin(self) -> bool {
        matches!(
            self,
            Self::LvmThin | Self::ZfsThin | Self::FileThin | Self::Diskless
        )
    }

    pub fn as_str(self) -> &'static str {
        Self::NAMES
            .iter()
            .find(|(_, k)| *k == self)
            .map_or("", |(n, _)| n)
    }
}

impl FromStr for ProviderKind {
    type Err = ModelError;
    /// Accepts the REST spelling (`LVM_THIN`) and the CLI's (`lvmthin`).
    fn from_str(s: &str) -> Result<Self, ModelError> {
        parse_loose(s, &Self::NAMES, "storage provider kind")
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoragePool {
    pub storage_pool_name: String,
    pub node_name: String,
    pub provider_kind: ProviderKind,
    #[serde(default)]
    pub props: Props,
    /// KiB, as reported by the satellite; None until it reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_capacity: Option<u64>,
    /// KiB, as reported by the satellite; None until it reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_capacity: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_space: Option<String>,
    #[serde(default)]
    pub external_locking: bool,
}

/// LINSTOR's `AutoSelectFilter`, the subset tandem places by. Unset means "no constraint".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SelectFilter {
    /// Diskful replicas wanted in total (existing ones count).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub place_count: Option<u32>,
    /// Only these nodes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub node_name_list: Vec<String>,
    /// Diskful replicas only in pools of these names.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub storage_pool_list: Vec<String>,
    /// Diskless replicas only in pools of these names.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub storage_pool_diskless_list: Vec<String>,
    /// Not on a node that holds one of these resources.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_place_with_rsc: Vec<String>,
    /// Not on a node that holds a resource whose name matches (case-insensitive search).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_place_with_rsc_regex: Option<String>,
    /// Node property keys (`Aux/site`) or `key=value`: all diskful replicas share the value.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub replicas_on_same: Vec<String>,
    /// Node property keys: no two diskful replicas on nodes with the same value.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub replicas_on_different: Vec<String>,
    /// Diskful replicas only in pools of these kinds.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub provider_list: Vec<ProviderKind>,
    /// Put a diskless replica on every other node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diskless_on_remaining: Option<bool>,
}

impl SelectFilter {
    /// This filter with every field that `over` sets taken from `over`
    /// (spawn and autoplace requests override their group's filter this way).
    pub fn merged(&self, over: &SelectFilter) -> SelectFilter {
        fn pick<T: Clone>(base: &[T], over: &[T]) -> Vec<T> {
            if over.is_empty() { base } else { over }.to_vec()
        }
        SelectFilter {
            place_count: over.place_count.or(self.place_count),
            node_name_list: pick(&self.node_name_list, &over.node_name_list),
            storage_pool_list: pick(&self.storage_pool_list, &over.storage_pool_list),
            storage_pool_diskless_list: pick(
                &self.storage_pool_diskless_list,
                &over.storage_pool_diskless_list,
            ),
            not_place_with_rsc: pick(&self.not_place_with_rsc, &over.not_place_with_rsc),
            not_place_with_rsc_regex: over
                .not_place_with_rsc_regex
                .clone()
                .or_else(|| self.not_place_with_rsc_regex.clone()),
            replicas_on_same: pick(&self.replicas_on_same, &over.replicas_on_same),
            replicas_on_different: pick(&self.replicas_on_different, &over.replicas_on_different),
            provider_list: pick(&self.provider_list, &over.provider_list),
            diskless_on_remaining: over.diskless_on_remaining.or(self.diskless_on_remaining),
        }
    }

    /// `replicas_on_same` split into (key, fixed value).
    pub fn same_constraints(&self) -> Vec<(String, Option<String>)> {
        self.replicas_on_same
            .iter()
            .map(|s| match s.split_once('=') {
                Some((k, v)) => (k.to_owned(), Some(v.to_owned())),
                None => (s.clone(), None),
            })
            .collect()
    }

    pub(crate) fn regex(&self) -> Result<Option<regex_lite::Regex>, ModelError> {
        match self.not_place_with_rsc_regex.as_deref() {
            None | Some("") => Ok(None),
            Some(re) => regex_lite::RegexBuilder::new(re)
                .case_insensitive(true)
                .build()
                .map(Some)
                .map_err(|e| {
                    ModelError::invalid(
                        "not_place_with_rsc_regex",
                        format!("'{re}' is not a regular expression: {e}"),
                        "fix the expression, e.g. '^vm-1[0-9]+-'",
                    )
                }),
        }
    }

    pub fn validate(&self) -> Result<(), ModelError> {
        if let Some(n) = self.place_count
            && !(1..=u32::from(NODE_ID_MAX) + 1).contains(&n)
        {
            return Err(ModelError::invalid(
                "place_count",
                format!("{n} is not between 1 and 32"),
                "use a place count of 1..=32 (one node id per replica, 0..=31)",
            ));
        }
        for n in &self.node_name_list {
            name::check_node_name(n)?;
        }
        for p in self
            .storage_pool_list
            .iter()
            .chain(&self.storage_pool_diskless_list)
        {
            name::check_storage_pool_name(p)?;
        }
        for r in &self.not_place_with_rsc {
            name::check_resource_name(r)?;
        }
        for (k, _) in self.same_constraints() {
            props::check_key(&k)?;
        }
        for k in &self.replicas_on_different {
            props::check_key(k)?;
        }
        self.regex().map(drop)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum VolumeGroupFlag {
    GrossSize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeGroup {
    pub volume_number: u32,
    #[serde(default)]
    pub props: Props,
    #[serde(default)]
    pub flags: BTreeSet<VolumeGroupFlag>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceGroup {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub props: Props,
    #[serde(default)]
    pub select_filter: SelectFilter,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_slots: Option<u8>,
    #[serde(default)]
    pub volume_groups: BTreeMap<u32, VolumeGroup>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum VolumeDefinitionFlag {
    Encrypted,
    GrossSize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeDefinition {
    pub volume_number: u32,
    pub size_kib: u64,
    #[serde(default)]
    pub props: Props,
    #[serde(default)]
    pub flags: BTreeSet<VolumeDefinitionFlag>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceDefinition {
    pub name: String,
    pub resource_group_name: String,
    #[serde(default)]
    pub props: Props,
    /// The resource's replication port, unique in the cluster while allocated.
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_slots: Option<u8>,
    #[serde(default)]
    pub volume_definitions: BTreeMap<u32, VolumeDefinition>,
    /// Keyed by [`name::key`] of the node name.
    #[serde(default)]
    pub resources: BTreeMap<String, Resource>,
}

impl ResourceDefinition {
    pub fn resource(&self, node: &str) -> Option<&Resource> {
        self.resources.get(&name::key(node))
    }

    pub fn diskful_count(&self) -> usize {
        self.resources.values().filter(|r| !r.is_diskless()).count()
    }

    pub fn tiebreaker(&self) -> Option<&Resource> {
        self.resources.values().find(|r| r.is_tiebreaker())
    }

    /// Sum of the volume sizes: what a diskful replica needs in its pool.
    pub fn total_size_kib(&self) -> u64 {
        self.volume_definitions
            .values()
            .map(|v| v.size_kib)
            .fold(0, u64::saturating_add)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ResourceFlag {
    Delete,
    /// Holds no data (LINSTOR sets DISKLESS and DRBD_DISKLESS together).
    Diskless,
    DrbdDiskless,
    /// The diskless replica that breaks quorum ties. Other diskless replicas are clients
    /// and do not vote.
    TieBreaker,
    Inactive,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub volume_number: u32,
    pub storage_pool_name: String,
    pub provider_kind: ProviderKind,
    #[serde(default)]
    pub props: Props,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    pub name: String,
    pub node_name: String,
    #[serde(default)]
    pub props: Props,
    #[serde(default)]
    pub flags: BTreeSet<ResourceFlag>,
    /// DRBD-style node id, 0..=31, unique within the resource.
    pub node_id: u8,
    #[serde(default)]
    pub volumes: BTreeMap<u32, Volume>,
}

impl Resource {
    pub fn is_diskless(&self) -> bool {
        self.flags.contains(&ResourceFlag::DrbdDiskless)
    }

    pub fn is_tiebreaker(&self) -> bool {
        self.flags.contains(&ResourceFlag::TieBreaker)
    }

    /// The pool of its volumes (all volumes of a replica share one pool).
    pub fn storage_pool(&self) -> Option<&str> {
        self.volumes
            .values()
            .next()
            .map(|v| v.storage_pool_name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_parse_rest_and_cli_spellings() {
        assert_eq!(
            "LVM_THIN".parse::<ProviderKind>().unwrap(),
            ProviderKind::LvmThin
        );
        assert_eq!(
            "lvmthin".parse::<ProviderKind>().unwrap(),
            ProviderKind::LvmThin
        );
        assert_eq!(
            "zfsthin".parse::<ProviderKind>().unwrap(),
            ProviderKind::ZfsThin
        );
        assert_eq!("file".parse::<ProviderKind>().unwrap(), ProviderKind::File);
        let e = "spdk".parse::<ProviderKind>().unwrap_err();
        assert!(e.correction().contains("FILE_THIN"), "{}", e.correction());
        assert_eq!(
            "SATELLITE".parse::<NodeType>().unwrap(),
            NodeType::Satellite
        );
        assert_eq!("combined".parse::<NodeType>().unwrap(), NodeType::Combined);
        assert!("witness".parse::<NodeType>().is_err());
        assert_eq!(
            "Plain".parse::<EncryptionType>().unwrap(),
            EncryptionType::Plain
        );
    }

    #[test]
    fn filter_override_takes_set_fields() {
        let base = SelectFilter {
            place_count: Some(2),
            storage_pool_list: vec!["ssd".into()],
            diskless_on_remaining: Some(true),
            ..SelectFilter::default()
        };
        let over = SelectFilter {
            place_count: Some(3),
            ..SelectFilter::default()
        };
        let m = base.merged(&over);
        assert_eq!(m.place_count, Some(3));
        assert_eq!(m.storage_pool_list, ["ssd"]);
        assert_eq!(m.diskless_on_remaining, Some(true));
    }

    #[test]
    fn filter_validation() {
        let f = |f: SelectFilter| f.validate();
        assert!(
            f(SelectFilter {
                place_count: Some(0),
                ..Default::default()
            })
            .is_err()
        );
        assert!(
            f(SelectFilter {
                place_count: Some(33),
                ..Default::default()
            })
            .is_err()
        );
        assert!(
            f(SelectFilter {
                place_count: Some(32),
                ..Default::default()
            })
            .is_ok()
        );
        assert!(
            f(SelectFilter {
                not_place_with_rsc_regex: Some("(".into()),
                ..Default::default()
            })
            .is_err()
        );
        assert!(
            f(SelectFilter {
                replicas_on_same: vec!["Aux/site=a".into(), "Aux/x".into()],
                ..Default::default()
            })
            .is_ok()
        );
        assert!(
            f(SelectFilter {
                storage_pool_list: vec!["x".into()],
                ..Default::default()
            })
            .is_err()
        );
    }
}
