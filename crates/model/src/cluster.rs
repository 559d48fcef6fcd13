//! The whole cluster and every change to it. Each mutation checks everything first and
//! only then changes anything, so an error leaves the cluster exactly as it was (the
//! controller can then answer the ApiCallRc error and write nothing to its DB).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, ObjectKind};
use crate::name::{self, key};
use crate::objects::{
    ConnectionStatus, DEFAULT_DISKLESS_POOL, DEFAULT_RESOURCE_GROUP, DEFAULT_SATELLITE_PORT_PLAIN,
    DEFAULT_SATELLITE_PORT_SSL, EncryptionType, NODE_ID_MAX, NetInterface, Node, NodeType,
    ProviderKind, Resource, ResourceDefinition, ResourceFlag, ResourceGroup, SelectFilter,
    StoragePool, Volume, VolumeDefinition, VolumeDefinitionFlag, VolumeGroup, VolumeGroupFlag,
};
use crate::options::{
    self, DEFAULT_TCP_PORT_RANGE, KEY_AUTO_TIEBREAKER, KEY_QUORUM, KEY_TCP_PORT_RANGE,
    ResourceOptions,
};
use crate::placer::{self, DisklessPick, PlaceInput, Placement, TieBreaker};
use crate::props::{self, EffectiveProp, PropSource, Props, PropsModify};

/// Resource / volume prop naming the storage pool (LINSTOR `KEY_STOR_POOL_NAME`).
pub const KEY_STOR_POOL_NAME: &str = "StorPoolName";
/// What a diskless pool reports as free and total space: never the limit, and still an
/// int64 in LINSTOR's JSON (LINSTOR reports Long.MAX_VALUE, `DisklessProvider.java` L35).
pub const DISKLESS_CAPACITY: u64 = i64::MAX as u64;
/// Volume numbers (LINSTOR `VolumeNumber` 0..=65535; tandem's resource files too).
pub const VOLUME_NUMBER_MAX: u32 = 65_535;
/// Sizes travel as int64 KiB in LINSTOR's API.
pub const SIZE_KIB_MAX: u64 = i64::MAX as u64;
/// DRBD peer slots, 1..=31 (tandem's `max-peers` too).
pub const PEER_SLOTS_MAX: u8 = 31;

#[derive(Debug, Clone)]
pub struct NodeCreate {
    pub name: String,
    pub node_type: NodeType,
    pub net_interfaces: Vec<NetInterface>,
    pub props: Props,
}

impl NodeCreate {
    /// A satellite with one `default` interface.
    pub fn satellite(name: &str, address: &str) -> Self {
        Self {
            name: name.to_owned(),
            node_type: NodeType::Satellite,
            net_interfaces: vec![NetInterface::new(
                crate::objects::DEFAULT_NET_INTERFACE,
                address,
            )],
            props: Props::new(),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct NodeModify {
    pub node_type: Option<NodeType>,
    pub props: PropsModify,
}

#[derive(Debug, Clone, Default)]
pub struct NetInterfaceModify {
    pub address: Option<String>,
    pub satellite_port: Option<u16>,
    pub satellite_encryption_type: Option<EncryptionType>,
    pub is_active: Option<bool>,
}

#[derive(Debug, Clone)]
pub struct StoragePoolCreate {
    pub name: String,
    pub provider_kind: ProviderKind,
    pub props: Props,
    pub shared_space: Option<String>,
    pub external_locking: bool,
}

impl StoragePoolCreate {
    pub fn new(name: &str, provider_kind: ProviderKind) -> Self {
        Self {
            name: name.to_owned(),
            provider_kind,
            props: Props::new(),
            shared_space: None,
            external_locking: false,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct ResourceGroupCreate {
    pub name: String,
    pub description: String,
    pub props: Props,
    pub select_filter: SelectFilter,
    pub peer_slots: Option<u8>,
}

#[derive(Debug, Clone, Default)]
pub struct ResourceGroupModify {
    pub description: Option<String>,
    pub props: PropsModify,
    /// Fields set here replace the group's (see [`SelectFilter::merged`]).
    pub select_filter: Option<SelectFilter>,
    pub peer_slots: Option<u8>,
}

#[derive(Debug, Clone, Default)]
pub struct VolumeGroupCreate {
    /// None: the lowest free number.
    pub volume_number: Option<u32>,
    pub props: Props,
    pub flags: BTreeSet<VolumeGroupFlag>,
}

#[derive(Debug, Clone, Default)]
pub struct ResourceDefinitionCreate {
    pub name: String,
    /// None: `DfltRscGrp`.
    pub resource_group: Option<String>,
    pub props: Props,
    /// None: the lowest free port of `TcpPortAutoRange`.
    pub port: Option<u16>,
    pub peer_slots: Option<u8>,
}

#[derive(Debug, Clone, Default)]
pub struct ResourceDefinitionModify {
    pub props: PropsModify,
    pub resource_group: Option<String>,
    pub port: Option<u16>,
    pub peer_slots: Option<u8>,
}

#[derive(Debug, Clone, Default)]
pub struct VolumeDefinitionCreate {
    /// None: the lowest free number.
    pub volume_number: Option<u32>,
    pub size_kib: u64,
    pub props: Props,
    pub flags: BTreeSet<VolumeDefinitionFlag>,
}

#[derive(Debug, Clone, Default)]
pub struct ResourceCreate {
    pub resource: String,
    pub node: String,
    /// None: the `StorPoolName` property, or the group's only storage pool; for a
    /// diskless resource the node's `DfltDisklessStorPool`.
    pub storage_pool: Option<String>,
    pub diskless: bool,
    /// None: the lowest free id.
    pub node_id: Option<u8>,
    pub props: Props,
}

#[derive(Debug, Clone, Default)]
pub struct Spawn {
    pub resource_definition_name: String,
    pub volume_sizes: Vec<u64>,
    /// Allow a number of sizes different from the number of volume groups.
    pub partial: bool,
    /// Create the definitions only, place nothing.
    pub definitions_only: bool,
    /// Overrides for the group's select filter.
    pub select_filter: SelectFilter,
    pub resource_definition_props: Props,
    pub peer_slots: Option<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpawnOutcome {
    pub port: u16,
    pub volume_numbers: Vec<u32>,
    /// None when nothing was placed (definitions only, or no place count).
    pub placement: Option<Placement>,
    pub notes: Vec<String>,
}

/// What a resource delete did besides deleting.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteOutcome {
    /// The resource stayed as the diskless tiebreaker (keep_tiebreaker).
    pub kept_as_tiebreaker: bool,
    pub tiebreaker_removed: Option<String>,
    pub tiebreaker_added: Option<String>,
    pub notes: Vec<String>,
}

/// All objects of one cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    controller_props: Props,
    nodes: BTreeMap<String, Node>,
    resource_groups: BTreeMap<String, ResourceGroup>,
    resource_definitions: BTreeMap<String, ResourceDefinition>,
}

impl Default for Cluster {
    fn default() -> Self {
        Self::new()
    }
}

fn lowest_free<T: Ord + Copy>(used: &BTreeSet<T>, range: impl Iterator<Item = T>) -> Option<T> {
    range.into_iter().find(|n| !used.contains(n))
}

fn props_from(p: &Props) -> Result<Props, ModelError> {
    props::apply(
        &Props::new(),
        &PropsModify {
            override_props: p.clone(),
            ..PropsModify::default()
        },
    )
}

fn check_peer_slots(p: Option<u8>) -> Result<(), ModelError> {
    match p {
        Some(n) if n == 0 || n > PEER_SLOTS_MAX => Err(ModelError::invalid(
            "peer_slots",
            format!("{n} is not between 1 and {PEER_SLOTS_MAX}"),
            "use 1..=31 peer slots (7 is the default)",
        )),
        _ => Ok(()),
    }
}

fn check_size(size_kib: u64) -> Result<(), ModelError> {
    if size_kib == 0 || size_kib > SIZE_KIB_MAX {
        return Err(ModelError::invalid(
            "size_kib",
            format!("{size_kib} KiB is not a volume size"),
            "give a size of at least 1 KiB (sizes are in KiB)",
        ));
    }
    Ok(())
}

fn check_volume_number(n: u32) -> Result<(), ModelError> {
    if n > VOLUME_NUMBER_MAX {
        return Err(ModelError::invalid(
            "volume_number",
            format!("{n} is above {VOLUME_NUMBER_MAX}"),
            "use a volume number of 0..=65535",
        ));
    }
    Ok(())
}

fn lowest_volume_number(used: impl Iterator<Item = u32>) -> Result<u32, ModelError> {
    let used: BTreeSet<u32> = used.collect();
    lowest_free(&used, 0..=VOLUME_NUMBER_MAX).ok_or(ModelError::Exhausted {
        what: "volume number".into(),
        lo: 0,
        hi: VOLUME_NUMBER_MAX,
    })
}

impl Cluster {
    /// An empty cluster with LINSTOR's default resource group.
    pub fn new() -> Self {
        let mut resource_groups = BTreeMap::new();
        resource_groups.insert(
            key(DEFAULT_RESOURCE_GROUP),
            ResourceGroup {
                name: DEFAULT_RESOURCE_GROUP.to_owned(),
                description: String::new(),
                props: Props::new(),
                select_filter: SelectFilter::default(),
                peer_slots: None,
                volume_groups: BTreeMap::new(),
            },
        );
        Self {
            controller_props: Props::new(),
            nodes: BTreeMap::new(),
            resource_groups,
            resource_definitions: BTreeMap::new(),
        }
    }

    /// Puts checked maps together (see `load.rs`, which checks them).
    pub(crate) fn assemble(
        controller_props: Props,
        nodes: BTreeMap<String, Node>,
        resource_groups: BTreeMap<String, ResourceGroup>,
        resource_definitions: BTreeMap<String, ResourceDefinition>,
    ) -> Self {
        Self {
            controller_props,
            nodes,
            resource_groups,
            resource_definitions,
        }
    }

    // ---- reading ----

    pub fn controller_props(&self) -> &Props {
        &self.controller_props
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(&key(name))
    }

    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values()
    }

    pub fn storage_pool(&self, node: &str, pool: &str) -> Option<&StoragePool> {
        self.node(node)?.storage_pool(pool)
    }

    pub fn resource_group(&self, name: &str) -> Option<&ResourceGroup> {
        self.resource_groups.get(&key(name))
    }

    pub fn resource_groups(&self) -> impl Iterator<Item = &ResourceGroup> {
        self.resource_groups.values()
    }

    pub fn resource_definition(&self, name: &str) -> Option<&ResourceDefinition> {
        self.resource_definitions.get(&key(name))
    }

    pub fn resource_definitions(&self) -> impl Iterator<Item = &ResourceDefinition> {
        self.resource_definitions.values()
    }

    pub fn resource(&self, resource: &str, node: &str) -> Option<&Resource> {
        self.resource_definition(resource)?.resource(node)
    }

    /// Every resource of every definition.
    pub fn resources(&self) -> impl Iterator<Item = &Resource> {
        self.resource_definitions
            .values()
            .flat_map(|rd| rd.resources.values())
    }

    fn node_ref(&self, name: &str) -> Result<&Node, ModelError> {
        self.node(name)
            .ok_or_else(|| ModelError::not_found(ObjectKind::Node, name))
    }

    fn rg_ref(&self, name: &str) -> Result<&ResourceGroup, ModelError> {
        self.resource_group(name)
            .ok_or_else(|| ModelError::not_found(ObjectKind::ResourceGroup, name))
    }

    fn rd_ref(&self, name: &str) -> Result<&ResourceDefinition, ModelError> {
        self.resource_definition(name)
            .ok_or_else(|| ModelError::not_found(ObjectKind::ResourceDefinition, name))
    }

    // ---- properties ----

    /// The inheritance chain of a resource definition (`node` None) or of its resource
    /// on `node`, closest first: resource → resource definition → resource group →
    /// node → controller (LINSTOR's order for resource-level DRBD options,
    /// `ConfFileBuilder.java` L156–161).
    pub fn prop_chain(
        &self,
        resource: &str,
        node: Option<&str>,
    ) -> Result<Vec<(&Props, PropSource)>, ModelError> {
        let rd = self.rd_ref(resource)?;
        let rg = self.rg_ref(&rd.resource_group_name)?;
        let mut chain = Vec::new();
        let node = node.map(|n| self.node_ref(n)).transpose()?;
        if let Some(n) = node
            && let Some(r) = rd.resource(&n.name)
        {
            chain.push((&r.props, PropSource::Resource(n.name.clone())));
        }
        chain.push((&rd.props, PropSource::ResourceDefinition(rd.name.clone())));
        chain.push((&rg.props, PropSource::ResourceGroup(rg.name.clone())));
        if let Some(n) = node {
            chain.push((&n.props, PropSource::Node(n.name.clone())));
        }
        chain.push((&self.controller_props, PropSource::Controller));
        Ok(chain)
    }

    /// The effective value of `key` and where it came from.
    pub fn effective_prop(
        &self,
        resource: &str,
        node: Option<&str>,
        key: &str,
    ) -> Result<Option<EffectiveProp>, ModelError> {
        Ok(props::lookup(self.prop_chain(resource, node)?, key))
    }

    /// Every effective property.
    pub fn effective_props(
        &self,
        resource: &str,
        node: Option<&str>,
    ) -> Result<BTreeMap<String, EffectiveProp>, ModelError> {
        let mut out = BTreeMap::new();
        for (p, source) in self.prop_chain(resource, node)? {
            for (k, v) in p {
                out.entry(k.clone()).or_insert_with(|| EffectiveProp {
                    value: v.clone(),
                    source: source.clone(),
                });
            }
        }
        Ok(out)
    }

    /// tandem's options for a resource (on `node`, or as defined). Unset quorum is
    /// majority when a tiebreaker or at least three diskful replicas exist.
    pub fn resource_options(
        &self,
        resource: &str,
        node: Option<&str>,
    ) -> Result<ResourceOptions, ModelError> {
        let rd = self.rd_ref(resource)?;
        let auto_quorum = rd.tiebreaker().is_some() || rd.diskful_count() >= 3;
        let eff = self.effective_props(resource, node)?;
        ResourceOptions::from_props(|k| eff.get(k).cloned(), eff.keys().cloned(), auto_quorum)
    }

    /// Whether a tiebreaker may be added under this chain.
    fn tiebreaker_allowed(chain: &[(&Props, PropSource)]) -> bool {
        let lookup = |k| props::lookup(chain.iter().map(|(p, s)| (*p, s.clone())), k);
        options::flag(lookup(KEY_AUTO_TIEBREAKER).as_ref(), true)
            && lookup(KEY_QUORUM).is_none_or(|q| !q.value.trim().eq_ignore_ascii_case("off"))
    }

    pub fn modify_controller_props(&mut self, m: &PropsModify) -> Result<(), ModelError> {
        self.controller_props = props::apply(&self.controller_props, m)?;
        Ok(())
    }

    // ---- nodes ----

    pub fn create_node(&mut self, req: NodeCreate) -> Result<(), ModelError> {
        name::check_node_name(&req.name)?;
        if self.node(&req.name).is_some() {
            return Err(ModelError::exists(ObjectKind::Node, &req.name));
        }
        if req.net_interfaces.is_empty() && req.node_type != NodeType::Auxiliary {
            return Err(ModelError::invalid(
                "net_interfaces",
                format!("node '{}' has no network interface", req.name),
                "give the node's IP address (node create NAME IP)",
            ));
        }
        let mut seen = BTreeSet::new();
        for ni in &req.net_interfaces {
            ni.validate()?;
            if !seen.insert(key(&ni.name)) {
                return Err(ModelError::exists(ObjectKind::NetInterface, &ni.name));
            }
        }
        let props = props_from(&req.props)?;
        let mut nis = req.net_interfaces;
        let ctrl = req.node_type == NodeType::Controller;
        for ni in &mut nis {
            ni.address = ni.address.trim().to_owned();
            let enc = *ni
                .satellite_encryption_type
                .get_or_insert(EncryptionType::Plain);
            ni.satellite_port.get_or_insert(match (enc, ctrl) {
                (EncryptionType::Plain, false) => DEFAULT_SATELLITE_PORT_PLAIN,
                (EncryptionType::Ssl, false) => DEFAULT_SATELLITE_PORT_SSL,
                (EncryptionType::Plain, true) => 3370,
                (EncryptionType::Ssl, true) => 3371,
            });
        }
        if !nis.iter().any(|n| n.is_active)
            && let Some(first) = nis.first_mut()
        {
            first.is_active = true;
        }
        let mut node = Node {
            name: req.name,
            node_type: req.node_type,
            flags: BTreeSet::new(),
            props,
            net_interfaces: nis,
            connection_status: ConnectionStatus::Offline,
            storage_pools: BTreeMap::new(),
        };
        if node.node_type.runs_satellite() {
            add_default_diskless_pool(&mut node);
        }
        self.nodes.insert(key(&node.name), node);
        Ok(())
    }

    pub fn modify_node(&mut self, name: &str, m: &NodeModify) -> Result<(), ModelError> {
        let node = self.node_ref(name)?;
        let props = props::apply(&node.props, &m.props)?;
        if let Some(t) = m.node_type
            && !t.runs_satellite()
        {
            let has_rsc = self
                .resources()
                .any(|r| r.node_name.eq_ignore_ascii_case(name));
            let has_pool = node
                .storage_pools
                .values()
                .any(|p| !p.provider_kind.is_diskless());
            if has_rsc || has_pool {
                return Err(ModelError::InUse {
                    kind: ObjectKind::Node,
                    name: node.name.clone(),
                    reason: format!(
                        "a {t:?} node runs no satellite, but this one holds resources or storage pools"
                    ),
                    correction: "delete its resources and storage pools first".into(),
                });
            }
        }
        let node = self.node_mut(name)?;
        node.props = props;
        if let Some(t) = m.node_type {
            node.node_type = t;
            if t.runs_satellite() {
                add_default_diskless_pool(node);
            } else {
                node.storage_pools.clear();
            }
        }
        Ok(())
    }

    /// The satellite's connection state (the satellite layer reports it).
    pub fn set_connection_status(
        &mut self,
        node: &str,
        status: ConnectionStatus,
    ) -> Result<(), ModelError> {
        self.node_mut(node)?.connection_status = status;
        Ok(())
    }

    /// Forgets everything satellites reported: every node OFFLINE, the capacity of
    /// every pool with storage unknown. The controller keeps reports in memory and lays
    /// them over the cluster when it uses it; the stored cluster holds none.
    pub fn clear_reports(&mut self) {
        for n in self.nodes.values_mut() {
            n.connection_status = ConnectionStatus::Offline;
            for sp in n.storage_pools.values_mut() {
                if !sp.provider_kind.is_diskless() {
                    sp.free_capacity = None;
                    sp.total_capacity = None;
                }
            }
        }
    }

    /// Deletes a node that holds no resources.
    pub fn delete_node(&mut self, name: &str) -> Result<(), ModelError> {
        let node = self.node_ref(name)?;
        let held: Vec<_> = self
            .resources()
            .filter(|r| r.node_name.eq_ignore_ascii_case(name))
            .map(|r| r.name.clone())
            .collect();
        if !held.is_empty() {
            return Err(ModelError::InUse {
                kind: ObjectKind::Node,
                name: node.name.clone(),
                reason: format!("the node holds resources: {}", held.join(", ")),
                correction: "delete those resources first, or use 'node lost' if the node is \
                             gone for good"
                    .into(),
            });
        }
        self.nodes.remove(&key(name));
        Ok(())
    }

    /// Forgets a node that is gone for good, with its resources (`node lost`).
    /// Returns, per affected resource, what happened to its tiebreaker.
    pub fn lose_node(&mut self, name: &str) -> Result<Vec<(String, DeleteOutcome)>, ModelError> {
        self.node_ref(name)?;
        let nk = key(name);
        let affected: Vec<String> = self
            .resource_definitions
            .values()
            .filter(|rd| rd.resources.contains_key(&nk))
            .map(|rd| rd.name.clone())
            .collect();
        let mut out = Vec::new();
        for rd_name in affected {
            let mut outcome = DeleteOutcome::default();
            if let Some(rd) = self.resource_definitions.get_mut(&key(&rd_name)) {
                rd.resources.remove(&nk);
            }
            self.fix_tiebreaker(&rd_name, &nk, &mut outcome);
            out.push((rd_name, outcome));
        }
        self.nodes.remove(&nk);
        Ok(out)
    }

    fn node_mut(&mut self, name: &str) -> Result<&mut Node, ModelError> {
        self.nodes
            .get_mut(&key(name))
            .ok_or_else(|| ModelError::not_found(ObjectKind::Node, name))
    }

    // ---- net interfaces ----

    pub fn create_net_interface(&mut self, node: &str, ni: NetInterface) -> Result<(), ModelError> {
        let n = self.node_ref(node)?;
        ni.validate()?;
        if n.net_interface(&ni.name).is_some() {
            return Err(ModelError::exists(ObjectKind::NetInterface, &ni.name));
        }
        let mut ni = ni;
        ni.address = ni.address.trim().to_owned();
        let n = self.node_mut(node)?;
        if ni.is_active {
            for other in &mut n.net_interfaces {
                other.is_active = false;
            }
        }
        n.net_interfaces.push(ni);
        Ok(())
    }

    pub fn modify_net_interface(
        &mut self,
        node: &str,
        name: &str,
        m: &NetInterfaceModify,
    ) -> Result<(), ModelError> {
        let n = self.node_ref(node)?;
        let mut ni = n
            .net_interface(name)
            .cloned()
            .ok_or_else(|| ModelError::not_found(ObjectKind::NetInterface, name))?;
        if let Some(a) = &m.address {
            ni.address = a.trim().to_owned();
        }
        if let Some(p) = m.satellite_port {
            ni.satellite_port = Some(p);
        }
        if let Some(e) = m.satellite_encryption_type {
            ni.satellite_encryption_type = Some(e);
        }
        if m.is_active == Some(false) && ni.is_active {
            return Err(ModelError::invalid(
                "is_active",
                "the controller needs one active interface to reach the satellite",
                "make another interface active instead",
            ));
        }
        if let Some(a) = m.is_active {
            ni.is_active = a;
        }
        ni.validate()?;
        let n = self.node_mut(node)?;
        for other in &mut n.net_interfaces {
            if other.name.eq_ignore_ascii_case(name) {
                *other = ni.clone();
            } else if ni.is_active {
                other.is_active = false;
            }
        }
        Ok(())
    }

    pub fn delete_net_interface(&mut self, node: &str, name: &str) -> Result<(), ModelError> {
        let n = self.node_ref(node)?;
        let ni = n
            .net_interface(name)
            .ok_or_else(|| ModelError::not_found(ObjectKind::NetInterface, name))?;
        if ni.is_active {
            return Err(ModelError::InUse {
                kind: ObjectKind::NetInterface,
                name: ni.name.clone(),
                reason: "the controller reaches the satellite through this interface".into(),
                correction: "make another interface active first (or delete the node)".into(),
            });
        }
        self.node_mut(node)?
            .net_interfaces
            .retain(|n| !n.name.eq_ignore_ascii_case(name));
        Ok(())
    }

    // ---- storage pools ----

    pub fn create_storage_pool(
        &mut self,
        node: &str,
        req: StoragePoolCreate,
    ) -> Result<(), ModelError> {
        let n = self.node_ref(node)?;
        name::check_storage_pool_name(&req.name)?;
        if !n.node_type.runs_satellite() {
            return Err(ModelError::invalid(
                "node",
                format!(
                    "node '{}' is a {:?} node and runs no satellite",
                    n.name, n.node_type
                ),
                "create storage pools on Satellite or Combined nodes",
            ));
        }
        if n.storage_pool(&req.name).is_some() {
            return Err(ModelError::exists(ObjectKind::StoragePool, &req.name));
        }
        if req.name.eq_ignore_ascii_case(DEFAULT_DISKLESS_POOL) && !req.provider_kind.is_diskless()
        {
            return Err(ModelError::invalid(
                "provider_kind",
                format!("'{DEFAULT_DISKLESS_POOL}' is the name of the default diskless pool"),
                "choose another name for a pool with storage",
            ));
        }
        let props = props_from(&req.props)?;
        let node_name = n.name.clone();
        let diskless = req.provider_kind.is_diskless();
        self.node_mut(node)?.storage_pools.insert(
            key(&req.name),
            StoragePool {
                storage_pool_name: req.name,
                node_name,
                provider_kind: req.provider_kind,
                props,
                free_capacity: diskless.then_some(DISKLESS_CAPACITY),
                total_capacity: diskless.then_some(DISKLESS_CAPACITY),
                shared_space: req.shared_space,
                external_locking: req.external_locking,
            },
        );
        Ok(())
    }

    pub fn modify_storage_pool(
        &mut self,
        node: &str,
        pool: &str,
        m: &PropsModify,
    ) -> Result<(), ModelError> {
        let sp = self.pool_ref(node, pool)?;
        let props = props::apply(&sp.props, m)?;
        self.pool_mut(node, pool)?.props = props;
        Ok(())
    }

    /// The satellite's report of a pool's capacity, in KiB.
    pub fn report_storage_pool_capacity(
        &mut self,
        node: &str,
        pool: &str,
        free_kib: u64,
        total_kib: u64,
    ) -> Result<(), ModelError> {
        self.pool_ref(node, pool)?;
        if free_kib > total_kib {
            return Err(ModelError::invalid(
                "free_capacity",
                format!("free {free_kib} KiB is more than total {total_kib} KiB"),
                "report free <= total",
            ));
        }
        let sp = self.pool_mut(node, pool)?;
        sp.free_capacity = Some(free_kib);
        sp.total_capacity = Some(total_kib);
        Ok(())
    }

    pub fn delete_storage_pool(&mut self, node: &str, pool: &str) -> Result<(), ModelError> {
        let sp = self.pool_ref(node, pool)?;
        let nk = key(node);
        let users: Vec<_> = self
            .resource_definitions
            .values()
            .filter_map(|rd| rd.resources.get(&nk))
            .filter(|r| {
                r.props
                    .get(KEY_STOR_POOL_NAME)
                    .is_some_and(|p| p.eq_ignore_ascii_case(pool))
                    || r.volumes
                        .values()
                        .any(|v| v.storage_pool_name.eq_ignore_ascii_case(pool))
            })
            .map(|r| r.name.clone())
            .collect();
        if !users.is_empty() {
            return Err(ModelError::InUse {
                kind: ObjectKind::StoragePool,
                name: sp.storage_pool_name.clone(),
                reason: format!("resources use it on this node: {}", users.join(", ")),
                correction: "delete those resources (or move them) first".into(),
            });
        }
        self.node_mut(node)?.storage_pools.remove(&key(pool));
        Ok(())
    }

    fn pool_ref(&self, node: &str, pool: &str) -> Result<&StoragePool, ModelError> {
        self.node_ref(node)?
            .storage_pool(pool)
            .ok_or_else(|| ModelError::not_found(ObjectKind::StoragePool, format!("{node}/{pool}")))
    }

    fn pool_mut(&mut self, node: &str, pool: &str) -> Result<&mut StoragePool, ModelError> {
        self.node_mut(node)?
            .storage_pools
            .get_mut(&key(pool))
            .ok_or_else(|| ModelError::not_found(ObjectKind::StoragePool, format!("{node}/{pool}")))
    }

    // ---- resource groups and volume groups ----

    pub fn create_resource_group(&mut self, req: ResourceGroupCreate) -> Result<(), ModelError> {
        name::check_resource_group_name(&req.name)?;
        if self.resource_group(&req.name).is_some() {
            return Err(ModelError::exists(ObjectKind::ResourceGroup, &req.name));
        }
        req.select_filter.validate()?;
        check_peer_slots(req.peer_slots)?;
        let props = props_from(&req.props)?;
        self.resource_groups.insert(
            key(&req.name),
            ResourceGroup {
                name: req.name,
                description: req.description,
                props,
                select_filter: req.select_filter,
                peer_slots: req.peer_slots,
                volume_groups: BTreeMap::new(),
            },
        );
        Ok(())
    }

    pub fn modify_resource_group(
        &mut self,
        name: &str,
        m: &ResourceGroupModify,
    ) -> Result<(), ModelError> {
        let rg = self.rg_ref(name)?;
        let props = props::apply(&rg.props, &m.props)?;
        let filter = match &m.select_filter {
            Some(f) => {
                let merged = rg.select_filter.merged(f);
                merged.validate()?;
                merged
            }
            None => rg.select_filter.clone(),
        };
        check_peer_slots(m.peer_slots)?;
        let rg = self.rg_mut(name)?;
        rg.props = props;
        rg.select_filter = filter;
        if let Some(d) = &m.description {
            rg.description = d.clone();
        }
        if m.peer_slots.is_some() {
            rg.peer_slots = m.peer_slots;
        }
        Ok(())
    }

    pub fn delete_resource_group(&mut self, name: &str) -> Result<(), ModelError> {
        let rg = self.rg_ref(name)?;
        if rg.name.eq_ignore_ascii_case(DEFAULT_RESOURCE_GROUP) {
            return Err(ModelError::InUse {
                kind: ObjectKind::ResourceGroup,
                name: rg.name.clone(),
                reason: "the default resource group always exists".into(),
                correction: "modify it instead".into(),
            });
        }
        let users: Vec<_> = self
            .resource_definitions
            .values()
            .filter(|rd| rd.resource_group_name.eq_ignore_ascii_case(name))
            .map(|rd| rd.name.clone())
            .collect();
        if !users.is_empty() {
            return Err(ModelError::InUse {
                kind: ObjectKind::ResourceGroup,
                name: rg.name.clone(),
                reason: format!("resource definitions belong to it: {}", users.join(", ")),
                correction: "delete them or move them to another group (resource-definition \
                             modify --resource-group) first"
                    .into(),
            });
        }
        self.resource_groups.remove(&key(name));
        Ok(())
    }

    fn rg_mut(&mut self, name: &str) -> Result<&mut ResourceGroup, ModelError> {
        self.resource_groups
            .get_mut(&key(name))
            .ok_or_else(|| ModelError::not_found(ObjectKind::ResourceGroup, name))
    }

    /// Returns the volume number.
    pub fn create_volume_group(
        &mut self,
        rg: &str,
        req: VolumeGroupCreate,
    ) -> Result<u32, ModelError> {
        let g = self.rg_ref(rg)?;
        let vnr = match req.volume_number {
            Some(n) => {
                check_volume_number(n)?;
                if g.volume_groups.contains_key(&n) {
                    return Err(ModelError::exists(
                        ObjectKind::VolumeGroup,
                        format!("{}/{n}", g.name),
                    ));
                }
                n
            }
            None => lowest_volume_number(g.volume_groups.keys().copied())?,
        };
        let props = props_from(&req.props)?;
        self.rg_mut(rg)?.volume_groups.insert(
            vnr,
            VolumeGroup {
                volume_number: vnr,
                props,
                flags: req.flags,
            },
        );
        Ok(vnr)
    }

    pub fn modify_volume_group(
        &mut self,
        rg: &str,
        vnr: u32,
        m: &PropsModify,
    ) -> Result<(), ModelError> {
        let g = self.rg_ref(rg)?;
        let vg = g.volume_groups.get(&vnr).ok_or_else(|| {
            ModelError::not_found(ObjectKind::VolumeGroup, format!("{}/{vnr}", g.name))
        })?;
        let props = props::apply(&vg.props, m)?;
        if let Some(vg) = self.rg_mut(rg)?.volume_groups.get_mut(&vnr) {
            vg.props = props;
        }
        Ok(())
    }

    pub fn delete_volume_group(&mut self, rg: &str, vnr: u32) -> Result<(), ModelError> {
        let g = self.rg_ref(rg)?;
        if !g.volume_groups.contains_key(&vnr) {
            return Err(ModelError::not_found(
                ObjectKind::VolumeGroup,
                format!("{}/{vnr}", g.name),
            ));
        }
        self.rg_mut(rg)?.volume_groups.remove(&vnr);
        Ok(())
    }

    // ---- resource definitions and volume definitions ----

    /// The controller's TCP port range (`TcpPortAutoRange`, default 7000-7999).
    pub fn tcp_port_range(&self) -> (u16, u16) {
        self.controller_props
            .get(KEY_TCP_PORT_RANGE)
            .and_then(|v| options::parse_port_range(KEY_TCP_PORT_RANGE, v).ok())
            .unwrap_or(DEFAULT_TCP_PORT_RANGE)
    }

    /// A port for a new or moved resource: the requested one if free, else the lowest
    /// free one of the range. Ports stay with their resource until it is deleted.
    fn port_for(&self, wanted: Option<u16>, owner: Option<&str>) -> Result<u16, ModelError> {
        let used: BTreeSet<u16> = self
            .resource_definitions
            .values()
            .filter(|rd| owner.is_none_or(|o| !rd.name.eq_ignore_ascii_case(o)))
            .map(|rd| rd.port)
            .collect();
        match wanted {
            Some(0) => Err(ModelError::invalid(
                "port",
                "port 0 is not a port",
                "give 1..=65535, or leave it out to get a free one",
            )),
            Some(p) if used.contains(&p) => {
                let holder = self
                    .resource_definitions
                    .values()
                    .find(|rd| rd.port == p)
                    .map(|rd| rd.name.clone())
                    .unwrap_or_default();
                Err(ModelError::InUse {
                    kind: ObjectKind::ResourceDefinition,
                    name: holder,
                    reason: format!("TCP port {p} is allocated to it"),
                    correction: "choose another port, or leave it out to get a free one".into(),
                })
            }
            Some(p) => Ok(p),
            None => {
                let (lo, hi) = self.tcp_port_range();
                lowest_free(&used, lo..=hi).ok_or(ModelError::Exhausted {
                    what: "TCP port".into(),
                    lo: lo.into(),
                    hi: hi.into(),
                })
            }
        }
    }

    /// Checks a new resource definition; returns it (without volumes) ready to insert.
    fn check_new_rd(
        &self,
        req: &ResourceDefinitionCreate,
    ) -> Result<ResourceDefinition, ModelError> {
        name::check_resource_name(&req.name)?;
        if self.resource_definition(&req.name).is_some() {
            return Err(ModelError::exists(
                ObjectKind::ResourceDefinition,
                &req.name,
            ));
        }
        let rg = self.rg_ref(
            req.resource_group
                .as_deref()
                .unwrap_or(DEFAULT_RESOURCE_GROUP),
        )?;
        check_peer_slots(req.peer_slots)?;
        let props = props_from(&req.props)?;
        let port = self.port_for(req.port, None)?;
        Ok(ResourceDefinition {
            name: req.name.clone(),
            resource_group_name: rg.name.clone(),
            props,
            port,
            peer_slots: req.peer_slots.or(rg.peer_slots),
            volume_definitions: BTreeMap::new(),
            resources: BTreeMap::new(),
        })
    }

    /// Returns the allocated TCP port.
    pub fn create_resource_definition(
        &mut self,
        req: ResourceDefinitionCreate,
    ) -> Result<u16, ModelError> {
        let rd = self.check_new_rd(&req)?;
        let port = rd.port;
        self.resource_definitions.insert(key(&rd.name), rd);
        Ok(port)
    }

    pub fn modify_resource_definition(
        &mut self,
        name: &str,
        m: &ResourceDefinitionModify,
    ) -> Result<(), ModelError> {
        let rd = self.rd_ref(name)?;
        let props = props::apply(&rd.props, &m.props)?;
        let rg = m
            .resource_group
            .as_deref()
            .map(|g| self.rg_ref(g).map(|g| g.name.clone()))
            .transpose()?;
        let port = match m.port {
            Some(p) if p != rd.port => Some(self.port_for(Some(p), Some(name))?),
            _ => None,
        };
        check_peer_slots(m.peer_slots)?;
        let rd = self.rd_mut(name)?;
        rd.props = props;
        if let Some(g) = rg {
            rd.resource_group_name = g;
        }
        if let Some(p) = port {
            rd.port = p;
        }
        if m.peer_slots.is_some() {
            rd.peer_slots = m.peer_slots;
        }
        Ok(())
    }

    /// Deletes a resource definition with all its resources (desired state: the
    /// satellites remove them) and frees its port.
    pub fn delete_resource_definition(&mut self, name: &str) -> Result<Vec<String>, ModelError> {
        let rd = self.rd_ref(name)?;
        let nodes = rd.resources.values().map(|r| r.node_name.clone()).collect();
        self.resource_definitions.remove(&key(name));
        Ok(nodes)
    }

    fn rd_mut(&mut self, name: &str) -> Result<&mut ResourceDefinition, ModelError> {
        self.resource_definitions
            .get_mut(&key(name))
            .ok_or_else(|| ModelError::not_found(ObjectKind::ResourceDefinition, name))
    }

    /// Adds a volume to the definition and to every resource of it. Returns the number.
    pub fn create_volume_definition(
        &mut self,
        resource: &str,
        req: VolumeDefinitionCreate,
    ) -> Result<u32, ModelError> {
        let rd = self.rd_ref(resource)?;
        check_size(req.size_kib)?;
        let vnr = match req.volume_number {
            Some(n) => {
                check_volume_number(n)?;
                if rd.volume_definitions.contains_key(&n) {
                    return Err(ModelError::exists(
                        ObjectKind::VolumeDefinition,
                        format!("{}/{n}", rd.name),
                    ));
                }
                n
            }
            None => lowest_volume_number(rd.volume_definitions.keys().copied())?,
        };
        let props = props_from(&req.props)?;
        let rd = self.rd_mut(resource)?;
        rd.volume_definitions.insert(
            vnr,
            VolumeDefinition {
                volume_number: vnr,
                size_kib: req.size_kib,
                props,
                flags: req.flags,
            },
        );
        let nodes = self.nodes.clone();
        if let Some(rd) = self.resource_definitions.get_mut(&key(resource)) {
            for r in rd.resources.values_mut() {
                add_volume(r, vnr, &nodes);
            }
        }
        Ok(vnr)
    }

    /// Grows a volume; tandem (like LINSTOR since 1.33.3) does not shrink.
    pub fn resize_volume_definition(
        &mut self,
        resource: &str,
        vnr: u32,
        size_kib: u64,
    ) -> Result<(), ModelError> {
        let rd = self.rd_ref(resource)?;
        let vd = rd.volume_definitions.get(&vnr).ok_or_else(|| {
            ModelError::not_found(ObjectKind::VolumeDefinition, format!("{}/{vnr}", rd.name))
        })?;
        check_size(size_kib)?;
        if size_kib < vd.size_kib {
            return Err(ModelError::invalid(
                "size_kib",
                format!(
                    "{size_kib} KiB is smaller than the current {} KiB; volumes do not shrink",
                    vd.size_kib
                ),
                "give a size at least as large as the current one, or create a new, smaller \
                 volume and copy the data",
            ));
        }
        if let Some(vd) = self.rd_mut(resource)?.volume_definitions.get_mut(&vnr) {
            vd.size_kib = size_kib;
        }
        Ok(())
    }

    pub fn modify_volume_definition(
        &mut self,
        resource: &str,
        vnr: u32,
        m: &PropsModify,
    ) -> Result<(), ModelError> {
        let rd = self.rd_ref(resource)?;
        let vd = rd.volume_definitions.get(&vnr).ok_or_else(|| {
            ModelError::not_found(ObjectKind::VolumeDefinition, format!("{}/{vnr}", rd.name))
        })?;
        let props = props::apply(&vd.props, m)?;
        if let Some(vd) = self.rd_mut(resource)?.volume_definitions.get_mut(&vnr) {
            vd.props = props;
        }
        Ok(())
    }

    /// Removes a volume from the definition and from every resource of it.
    pub fn delete_volume_definition(&mut self, resource: &str, vnr: u32) -> Result<(), ModelError> {
        let rd = self.rd_ref(resource)?;
        if !rd.volume_definitions.contains_key(&vnr) {
            return Err(ModelError::not_found(
                ObjectKind::VolumeDefinition,
                format!("{}/{vnr}", rd.name),
            ));
        }
        let rd = self.rd_mut(resource)?;
        rd.volume_definitions.remove(&vnr);
        for r in rd.resources.values_mut() {
            r.volumes.remove(&vnr);
        }
        Ok(())
    }

    // ---- resources ----

    /// The pool a resource create without an explicit pool uses.
    fn default_pool(&self, rd: &ResourceDefinition, node: &Node) -> Option<String> {
        let chain = self.prop_chain(&rd.name, Some(&node.name)).ok()?;
        if let Some(p) = props::lookup(chain, KEY_STOR_POOL_NAME) {
            return Some(p.value);
        }
        let rg = self.resource_group(&rd.resource_group_name)?;
        match rg.select_filter.storage_pool_list.as_slice() {
            [one] => Some(one.clone()),
            _ => None,
        }
    }

    pub fn create_resource(&mut self, req: ResourceCreate) -> Result<DeleteOutcome, ModelError> {
        let rd = self.rd_ref(&req.resource)?;
        let node = self.node_ref(&req.node)?;
        if !node.accepts_new_resources() {
            return Err(ModelError::invalid(
                "node",
                format!(
                    "node '{}' ({:?}, flags {:?}) takes no new resources",
                    node.name, node.node_type, node.flags
                ),
                "choose a Satellite or Combined node that is not being deleted or evacuated",
            ));
        }
        if rd.resource(&node.name).is_some() {
            return Err(ModelError::exists(
                ObjectKind::Resource,
                format!("{} on node {}", rd.name, node.name),
            ));
        }
        let pool_name = match (&req.storage_pool, req.diskless) {
            (Some(p), _) => p.clone(),
            (None, true) => DEFAULT_DISKLESS_POOL.to_owned(),
            (None, false) => self.default_pool(rd, node).ok_or_else(|| {
                ModelError::invalid(
                    "storage_pool",
                    format!(
                        "no storage pool given for the diskful resource '{}' on node '{}'",
                        rd.name, node.name
                    ),
                    "name a storage pool, set the StorPoolName property, or give the resource \
                     group exactly one storage pool",
                )
            })?,
        };
        let pool = node.storage_pool(&pool_name).ok_or_else(|| {
            ModelError::not_found(
                ObjectKind::StoragePool,
                format!("{}/{pool_name}", node.name),
            )
        })?;
        if pool.provider_kind.is_diskless() != req.diskless {
            return Err(ModelError::invalid(
                "storage_pool",
                format!(
                    "storage pool '{}' is {} but the resource is {}",
                    pool.storage_pool_name,
                    pool.provider_kind.as_str(),
                    if req.diskless { "diskless" } else { "diskful" }
                ),
                if req.diskless {
                    "use a DISKLESS pool such as DfltDisklessStorPool"
                } else {
                    "use a pool with storage, or create the resource diskless"
                },
            ));
        }
        let used: BTreeSet<u8> = rd.resources.values().map(|r| r.node_id).collect();
        let node_id = match req.node_id {
            Some(id) if id > NODE_ID_MAX => {
                return Err(ModelError::invalid(
                    "node_id",
                    format!("{id} is above {NODE_ID_MAX}"),
                    "use a node id of 0..=31, or leave it out",
                ));
            }
            Some(id) if used.contains(&id) => {
                return Err(ModelError::InUse {
                    kind: ObjectKind::Resource,
                    name: rd.name.clone(),
                    reason: format!("node id {id} is taken in this resource"),
                    correction: "choose another node id, or leave it out to get a free one".into(),
                });
            }
            Some(id) => id,
            None => lowest_free(&used, 0..=NODE_ID_MAX).ok_or(ModelError::Exhausted {
                what: format!("node id of resource '{}'", rd.name),
                lo: 0,
                hi: NODE_ID_MAX.into(),
            })?,
        };
        let mut props = props_from(&req.props)?;
        props.insert(KEY_STOR_POOL_NAME.into(), pool.storage_pool_name.clone());
        let mut r = Resource {
            name: rd.name.clone(),
            node_name: node.name.clone(),
            props,
            flags: if req.diskless {
                [ResourceFlag::Diskless, ResourceFlag::DrbdDiskless].into()
            } else {
                BTreeSet::new()
            },
            node_id,
            volumes: BTreeMap::new(),
        };
        for &vnr in rd.volume_definitions.keys() {
            add_volume(&mut r, vnr, &self.nodes);
        }
        let rd_name = rd.name.clone();
        let nk = key(&node.name);
        self.rd_mut(&rd_name)?.resources.insert(nk.clone(), r);
        let mut outcome = DeleteOutcome::default();
        self.fix_tiebreaker(&rd_name, &nk, &mut outcome);
        Ok(outcome)
    }

    pub fn modify_resource(
        &mut self,
        resource: &str,
        node: &str,
        m: &PropsModify,
    ) -> Result<(), ModelError> {
        let r = self.rsc_ref(resource, node)?;
        let props = props::apply(&r.props, m)?;
        if let Some(r) = self
            .resource_definitions
            .get_mut(&key(resource))
            .and_then(|rd| rd.resources.get_mut(&key(node)))
        {
            r.props = props;
        }
        Ok(())
    }

    fn rsc_ref(&self, resource: &str, node: &str) -> Result<&Resource, ModelError> {
        let rd = self.rd_ref(resource)?;
        rd.resource(node).ok_or_else(|| {
            ModelError::not_found(ObjectKind::Resource, format!("{} on node {node}", rd.name))
        })
    }

    /// Deletes the resource on `node`. With `keep_tiebreaker`, a resource whose removal
    /// would leave an even number of diskful replicas without a tiebreaker stays as the
    /// diskless tiebreaker instead (LINSTOR's `keep_tiebreaker`).
    pub fn delete_resource(
        &mut self,
        resource: &str,
        node: &str,
        keep_tiebreaker: bool,
    ) -> Result<DeleteOutcome, ModelError> {
        let r = self.rsc_ref(resource, node)?.clone();
        let rd_name = self.rd_ref(resource)?.name.clone();
        let nk = key(node);
        let mut outcome = DeleteOutcome::default();
        if keep_tiebreaker {
            let rd = self.rd_ref(resource)?;
            let diskful_after = rd.diskful_count() - usize::from(!r.is_diskless());
            let tb_elsewhere = rd
                .resources
                .values()
                .any(|x| x.is_tiebreaker() && !x.node_name.eq_ignore_ascii_case(node));
            let allowed = Self::tiebreaker_allowed(&self.prop_chain(resource, None)?);
            let n = self.node_ref(node)?;
            let dl_pool = placer::diskless_pool(n, &SelectFilter::default());
            if allowed
                && diskful_after >= 2
                && diskful_after.is_multiple_of(2)
                && !tb_elsewhere
                && let Some(pool) = dl_pool
            {
                let pool = pool.storage_pool_name.clone();
                let nodes = self.nodes.clone();
                if let Some(x) = self.rd_mut(resource)?.resources.get_mut(&nk) {
                    x.flags = [
                        ResourceFlag::Diskless,
                        ResourceFlag::DrbdDiskless,
                        ResourceFlag::TieBreaker,
                    ]
                    .into();
                    x.props.insert(KEY_STOR_POOL_NAME.into(), pool);
                    let vnrs: Vec<u32> = x.volumes.keys().copied().collect();
                    x.volumes.clear();
                    for v in vnrs {
                        add_volume(x, v, &nodes);
                    }
                }
                outcome.kept_as_tiebreaker = true;
                return Ok(outcome);
            }
        }
        self.rd_mut(resource)?.resources.remove(&nk);
        if r.is_tiebreaker() {
            // Asked for by name: do not put another one in its place.
            outcome.notes.push(format!(
                "the tiebreaker of '{rd_name}' on node '{}' was deleted as asked",
                r.node_name
            ));
            return Ok(outcome);
        }
        self.fix_tiebreaker(&rd_name, &nk, &mut outcome);
        Ok(outcome)
    }

    /// After replicas changed: drop a tiebreaker that is no longer needed, or make or
    /// add one that now is. `avoid` is a node key not to put it on.
    fn fix_tiebreaker(&mut self, rd_name: &str, avoid: &str, outcome: &mut DeleteOutcome) {
        let Some(rd) = self.resource_definition(rd_name) else {
            return;
        };
        let Ok(chain) = self.prop_chain(rd_name, None) else {
            return;
        };
        let allowed = Self::tiebreaker_allowed(&chain);
        let filter = self
            .resource_group(&rd.resource_group_name)
            .map(|g| g.select_filter.clone())
            .unwrap_or_default();
        let mut taken: BTreeSet<String> = rd.resources.keys().cloned().collect();
        taken.insert(avoid.to_owned());
        let action = placer::tiebreaker(
            self,
            &filter,
            allowed,
            rd.diskful_count(),
            Some(rd),
            &[],
            &taken,
        );
        let nodes = self.nodes.clone();
        let used: BTreeSet<u8> = rd.resources.values().map(|r| r.node_id).collect();
        let rd_display = rd.name.clone();
        let Some(rd) = self.resource_definitions.get_mut(&key(rd_name)) else {
            return;
        };
        match action {
            TieBreaker::Keep | TieBreaker::MarkNew(_) => {}
            TieBreaker::Remove(n) => {
                rd.resources.remove(&key(&n));
                outcome.tiebreaker_removed = Some(n);
            }
            TieBreaker::Promote(n) => {
                if let Some(r) = rd.resources.get_mut(&key(&n)) {
                    r.flags.insert(ResourceFlag::TieBreaker);
                }
                outcome.tiebreaker_added = Some(n);
            }
            TieBreaker::Add(pick) => {
                if let Some(id) = lowest_free(&used, 0..=NODE_ID_MAX) {
                    let r = new_resource(rd, &pick, id, &nodes);
                    rd.resources.insert(key(&pick.node), r);
                    outcome.tiebreaker_added = Some(pick.node);
                }
            }
            TieBreaker::Missing => outcome.notes.push(format!(
                "resource '{rd_display}' has an even number of diskful replicas and no node is \
                 left for a diskless tiebreaker (add a node for quorum)"
            )),
        }
    }

    // ---- placement ----

    /// Places the resource by its group's select filter with `over` overriding fields
    /// (`resource-definition auto-place`). Replicas that exist count toward place_count.
    pub fn autoplace(
        &mut self,
        resource: &str,
        over: &SelectFilter,
    ) -> Result<Placement, ModelError> {
        let rd = self.rd_ref(resource)?;
        let rg = self.rg_ref(&rd.resource_group_name)?;
        let filter = rg.select_filter.merged(over);
        let allowed = Self::tiebreaker_allowed(&self.prop_chain(resource, None)?);
        let p = placer::place(
            self,
            &PlaceInput {
                resource: &rd.name,
                filter: &filter,
                size_kib: rd.total_size_kib(),
                existing: Some(rd),
                tiebreaker_allowed: allowed,
            },
        )?;
        let name = rd.name.clone();
        self.apply_placement(&name, &p);
        Ok(p)
    }

    /// Where the resource would go, without placing it.
    pub fn plan_placement(
        &self,
        resource: &str,
        over: &SelectFilter,
    ) -> Result<Placement, ModelError> {
        let rd = self.rd_ref(resource)?;
        let rg = self.rg_ref(&rd.resource_group_name)?;
        let filter = rg.select_filter.merged(over);
        placer::place(
            self,
            &PlaceInput {
                resource: &rd.name,
                filter: &filter,
                size_kib: rd.total_size_kib(),
                existing: Some(rd),
                tiebreaker_allowed: Self::tiebreaker_allowed(&self.prop_chain(resource, None)?),
            },
        )
    }

    fn apply_placement(&mut self, rd_name: &str, p: &Placement) {
        let nodes = &self.nodes;
        let Some(rd) = self.resource_definitions.get_mut(&key(rd_name)) else {
            return;
        };
        if let Some(n) = &p.remove_tiebreaker {
            rd.resources.remove(&key(n));
        }
        if let Some(n) = &p.promote_tiebreaker
            && let Some(r) = rd.resources.get_mut(&key(n))
        {
            r.flags.insert(ResourceFlag::TieBreaker);
        }
        for d in &p.diskful {
            let used: BTreeSet<u8> = rd.resources.values().map(|r| r.node_id).collect();
            let Some(id) = lowest_free(&used, 0..=NODE_ID_MAX) else {
                return;
            };
            let mut r = Resource {
                name: rd.name.clone(),
                node_name: d.node.clone(),
                props: [(KEY_STOR_POOL_NAME.to_owned(), d.storage_pool.clone())].into(),
                flags: BTreeSet::new(),
                node_id: id,
                volumes: BTreeMap::new(),
            };
            for &vnr in rd.volume_definitions.keys() {
                add_volume(&mut r, vnr, nodes);
            }
            rd.resources.insert(key(&d.node), r);
        }
        for d in &p.diskless {
            let used: BTreeSet<u8> = rd.resources.values().map(|r| r.node_id).collect();
            let Some(id) = lowest_free(&used, 0..=NODE_ID_MAX) else {
                return;
            };
            let r = new_resource(rd, d, id, nodes);
            rd.resources.insert(key(&d.node), r);
        }
    }

    /// Creates a resource definition with one volume per size from the group's
    /// volume groups, and places it by the group's select filter (LINSTOR's
    /// `resource-group spawn-resources`). All or nothing.
    pub fn spawn(&mut self, rg: &str, req: Spawn) -> Result<SpawnOutcome, ModelError> {
        let g = self.rg_ref(rg)?.clone();
        let mut rd = self.check_new_rd(&ResourceDefinitionCreate {
            name: req.resource_definition_name.clone(),
            resource_group: Some(g.name.clone()),
            props: req.resource_definition_props.clone(),
            port: None,
            peer_slots: req.peer_slots,
        })?;
        let n_vg = g.volume_groups.len();
        if !req.partial && req.volume_sizes.len() != n_vg {
            return Err(ModelError::invalid(
                "volume_sizes",
                format!(
                    "{} sizes given but resource group '{}' has {n_vg} volume groups",
                    req.volume_sizes.len(),
                    g.name
                ),
                "give one size per volume group, create volume groups first \
                 (volume-group create), or spawn with partial",
            ));
        }
        if req.volume_sizes.is_empty() {
            return Err(ModelError::invalid(
                "volume_sizes",
                "no volume sizes given",
                "give at least one size",
            ));
        }
        let mut numbers: Vec<u32> = g.volume_groups.keys().copied().collect();
        numbers.truncate(req.volume_sizes.len());
        let mut next = numbers.last().map_or(0, |n| n + 1);
        while numbers.len() < req.volume_sizes.len() {
            check_volume_number(next)?;
            numbers.push(next);
            next += 1;
        }
        for (&vnr, &size) in numbers.iter().zip(&req.volume_sizes) {
            check_size(size)?;
            let gross = g
                .volume_groups
                .get(&vnr)
                .is_some_and(|vg| vg.flags.contains(&VolumeGroupFlag::GrossSize));
            rd.volume_definitions.insert(
                vnr,
                VolumeDefinition {
                    volume_number: vnr,
                    size_kib: size,
                    props: Props::new(),
                    flags: if gross {
                        [VolumeDefinitionFlag::GrossSize].into()
                    } else {
                        BTreeSet::new()
                    },
                },
            );
        }
        let filter = g.select_filter.merged(&req.select_filter);
        filter.validate()?;
        let mut notes = Vec::new();
        let placement = if req.definitions_only {
            notes.push("definitions only: nothing placed".to_owned());
            None
        } else if filter.place_count.is_none() {
            notes.push(format!(
                "resource group '{}' has no place count: definitions created, nothing placed",
                g.name
            ));
            None
        } else {
            let chain = vec![
                (&rd.props, PropSource::ResourceDefinition(rd.name.clone())),
                (&g.props, PropSource::ResourceGroup(g.name.clone())),
                (&self.controller_props, PropSource::Controller),
            ];
            let allowed = Self::tiebreaker_allowed(&chain);
            Some(placer::place(
                self,
                &PlaceInput {
                    resource: &rd.name,
                    filter: &filter,
                    size_kib: rd.total_size_kib(),
                    existing: None,
                    tiebreaker_allowed: allowed,
                },
            )?)
        };
        let port = rd.port;
        let name = rd.name.clone();
        self.resource_definitions.insert(key(&name), rd);
        if let Some(p) = &placement {
            self.apply_placement(&name, p);
        }
        Ok(SpawnOutcome {
            port,
            volume_numbers: numbers,
            placement,
            notes,
        })
    }

    /// Makes the resource usable on `node` (LINSTOR's `make-available`): nothing if it
    /// is there (and diskful when `diskful` is asked); a diskful replica when asked or
    /// when none exists yet; else a diskless client. A diskless replica asked to become
    /// diskful gets a pool by the group's filter.
    pub fn make_available(
        &mut self,
        resource: &str,
        node: &str,
        diskful: bool,
    ) -> Result<DeleteOutcome, ModelError> {
        let rd = self.rd_ref(resource)?;
        let n = self.node_ref(node)?;
        let existing = rd.resource(&n.name);
        if existing.is_some_and(|r| !r.is_diskless() || !diskful) {
            return Ok(DeleteOutcome {
                notes: vec![format!(
                    "'{}' is already available on '{}'",
                    rd.name, n.name
                )],
                ..DeleteOutcome::default()
            });
        }
        let want_disk = diskful || rd.diskful_count() == 0;
        if !want_disk {
            return self.create_resource(ResourceCreate {
                resource: resource.to_owned(),
                node: node.to_owned(),
                diskless: true,
                ..ResourceCreate::default()
            });
        }
        let filter = self.rg_ref(&rd.resource_group_name)?.select_filter.clone();
        let (pool, _) = placer::best_pool(n, &filter, rd.total_size_kib());
        let pool = pool.ok_or_else(|| ModelError::NotEnoughNodes {
            resource: rd.name.clone(),
            reason: format!(
                "node '{}' has no storage pool of the group's filter with {} KiB free",
                n.name,
                rd.total_size_kib()
            ),
            correction: "create a storage pool on the node, or free space".into(),
        })?;
        let pool = pool.storage_pool_name.clone();
        match existing {
            None => self.create_resource(ResourceCreate {
                resource: resource.to_owned(),
                node: node.to_owned(),
                storage_pool: Some(pool),
                ..ResourceCreate::default()
            }),
            Some(_) => {
                // A diskless replica gets its disk.
                let nodes = self.nodes.clone();
                let rd_name = rd.name.clone();
                let nk = key(node);
                if let Some(r) = self.rd_mut(resource)?.resources.get_mut(&nk) {
                    r.flags.clear();
                    r.props.insert(KEY_STOR_POOL_NAME.into(), pool);
                    let vnrs: Vec<u32> = r.volumes.keys().copied().collect();
                    r.volumes.clear();
                    for v in vnrs {
                        add_volume(r, v, &nodes);
                    }
                }
                let mut outcome = DeleteOutcome::default();
                self.fix_tiebreaker(&rd_name, &nk, &mut outcome);
                Ok(outcome)
            }
        }
    }
}

fn add_default_diskless_pool(node: &mut Node) {
    node.storage_pools
        .entry(key(DEFAULT_DISKLESS_POOL))
        .or_insert_with(|| StoragePool {
            storage_pool_name: DEFAULT_DISKLESS_POOL.to_owned(),
            node_name: node.name.clone(),
            provider_kind: ProviderKind::Diskless,
            props: Props::new(),
            free_capacity: Some(DISKLESS_CAPACITY),
            total_capacity: Some(DISKLESS_CAPACITY),
            shared_space: None,
            external_locking: false,
        });
}

/// Adds volume `vnr` to `r` in the pool its `StorPoolName` names.
fn add_volume(r: &mut Resource, vnr: u32, nodes: &BTreeMap<String, Node>) {
    let pool = r
        .props
        .get(KEY_STOR_POOL_NAME)
        .cloned()
        .unwrap_or_else(|| DEFAULT_DISKLESS_POOL.to_owned());
    let kind = nodes
        .get(&key(&r.node_name))
        .and_then(|n| n.storage_pool(&pool))
        .map_or(ProviderKind::Diskless, |p| p.provider_kind);
    r.volumes.insert(
        vnr,
        Volume {
            volume_number: vnr,
            storage_pool_name: pool,
            provider_kind: kind,
            props: Props::new(),
        },
    );
}

fn new_resource(
    rd: &ResourceDefinition,
    d: &DisklessPick,
    id: u8,
    nodes: &BTreeMap<String, Node>,
) -> Resource {
    let mut flags: BTreeSet<ResourceFlag> =
        [ResourceFlag::Diskless, ResourceFlag::DrbdDiskless].into();
    if d.tie_breaker {
        flags.insert(ResourceFlag::TieBreaker);
    }
    let mut r = Resource {
        name: rd.name.clone(),
        node_name: d.node.clone(),
        props: [(KEY_STOR_POOL_NAME.to_owned(), d.storage_pool.clone())].into(),
        flags,
        node_id: id,
        volumes: BTreeMap::new(),
    };
    for &vnr in rd.volume_definitions.keys() {
        add_volume(&mut r, vnr, nodes);
    }
    r
}

#[cfg(test)]
#[path = "cluster_tests.rs"]
mod tests;
