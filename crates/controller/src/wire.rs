//! LINSTOR's v1 JSON: request bodies as python-linstor and the linstor client send them
//! (unknown fields are ignored, as LINSTOR's Jackson mapper does), their conversion into
//! the model's requests (which may refuse what tandem does not do), and the response
//! objects shaped from the model.

use std::collections::{BTreeMap, BTreeSet};

use model::{
    Cluster, ModelError, NetInterface, Node, NodeType, Props, PropsModify, Resource,
    ResourceDefinition, ResourceGroup, SelectFilter, StoragePool, VolumeDefinition,
    VolumeDefinitionFlag, VolumeGroup, VolumeGroupFlag,
};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::live::{LiveView, RscObs};
use crate::rc::{self, ApiCallRc, Ctx, Op};
use model::ObjectKind;

/// The largest request body accepted (LINSTOR's bodies are small; a spawn with 1,000
/// volumes is ~20 KiB).
pub const MAX_BODY: usize = 1 << 20;

fn unsupported(field: &str, what: &str, correction: &str) -> ModelError {
    ModelError::InvalidValue {
        field: field.to_owned(),
        reason: format!("tandem does not support {what}"),
        correction: correction.to_owned(),
    }
}

/// Layers tandem provides: its own replication (in DRBD's place) over storage.
fn check_layers(field: &str, layers: &[String]) -> Result<(), ModelError> {
    for l in layers {
        let u = l.to_ascii_uppercase();
        if u != "DRBD" && u != "STORAGE" {
            return Err(unsupported(
                field,
                &format!("the layer '{l}'"),
                "leave the layer list out, or use DRBD,STORAGE",
            ));
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct PropsModifyReq {
    pub override_props: Props,
    pub delete_props: Vec<String>,
    pub delete_namespaces: Vec<String>,
}

impl PropsModifyReq {
    pub fn into_model(self) -> PropsModify {
        PropsModify {
            override_props: self.override_props,
            delete_props: self.delete_props,
            delete_namespaces: self.delete_namespaces,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct NetInterfaceReq {
    pub name: String,
    pub address: String,
    pub satellite_port: Option<u16>,
    pub satellite_encryption_type: Option<String>,
    pub is_active: Option<bool>,
}

impl NetInterfaceReq {
    pub fn into_model(self) -> Result<NetInterface, ModelError> {
        Ok(NetInterface {
            name: self.name,
            address: self.address,
            satellite_port: self.satellite_port,
            satellite_encryption_type: self
                .satellite_encryption_type
                .map(|t| t.parse())
                .transpose()?,
            is_active: self.is_active.unwrap_or(false),
        })
    }

    pub fn into_modify(self) -> Result<model::NetInterfaceModify, ModelError> {
        Ok(model::NetInterfaceModify {
            address: (!self.address.is_empty()).then_some(self.address),
            satellite_port: self.satellite_port,
            satellite_encryption_type: self
                .satellite_encryption_type
                .map(|t| t.parse())
                .transpose()?,
            is_active: self.is_active,
        })
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct NodeCreateReq {
    pub name: String,
    #[serde(rename = "type")]
    pub node_type: String,
    pub net_interfaces: Vec<NetInterfaceReq>,
    pub props: Props,
}

impl NodeCreateReq {
    pub fn into_model(self) -> Result<model::NodeCreate, ModelError> {
        let node_type: NodeType = if self.node_type.is_empty() {
            NodeType::Satellite
        } else {
            self.node_type.parse()?
        };
        Ok(model::NodeCreate {
            name: self.name,
            node_type,
            net_interfaces: self
                .net_interfaces
                .into_iter()
                .map(NetInterfaceReq::into_model)
                .collect::<Result<_, _>>()?,
            props: self.props,
        })
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct NodeModifyReq {
    pub node_type: Option<String>,
    #[serde(flatten)]
    pub props: PropsModifyReq,
}

impl NodeModifyReq {
    pub fn into_model(self) -> Result<model::NodeModify, ModelError> {
        Ok(model::NodeModify {
            node_type: self.node_type.map(|t| t.parse()).transpose()?,
            props: self.props.into_model(),
        })
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct StoragePoolCreateReq {
    pub storage_pool_name: String,
    pub provider_kind: String,
    pub props: Props,
    pub free_space_mgr_name: Option<String>,
    pub external_locking: bool,
}

impl StoragePoolCreateReq {
    pub fn into_model(self) -> Result<model::StoragePoolCreate, ModelError> {
        Ok(model::StoragePoolCreate {
            name: self.storage_pool_name,
            provider_kind: self.provider_kind.parse()?,
            props: self.props,
            shared_space: self.free_space_mgr_name.filter(|s| !s.is_empty()),
            external_locking: self.external_locking,
        })
    }
}

/// OpenAPI `AutoSelectFilter`, every field LINSTOR's clients may send.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SelectFilterReq {
    pub place_count: Option<u32>,
    pub additional_place_count: Option<u32>,
    pub node_name_list: Vec<String>,
    /// Pre-1.1.0 clients send one pool here instead of `storage_pool_list`.
    pub storage_pool: Option<String>,
    pub storage_pool_list: Vec<String>,
    pub storage_pool_diskless_list: Vec<String>,
    pub not_place_with_rsc: Vec<String>,
    pub not_place_with_rsc_regex: Option<String>,
    pub replicas_on_same: Vec<String>,
    pub replicas_on_different: Vec<String>,
    pub x_replicas_on_different_map: BTreeMap<String, i64>,
    pub layer_stack: Vec<String>,
    pub provider_list: Vec<String>,
    pub diskless_on_remaining: Option<bool>,
    pub diskless_type: Option<String>,
}

impl SelectFilterReq {
    /// The model's filter. `additional_place_count` needs the current diskful count
    /// (autoplace); elsewhere pass None and it is refused.
    pub fn into_model(self, diskful_now: Option<usize>) -> Result<SelectFilter, ModelError> {
        check_layers("layer_stack", &self.layer_stack)?;
        if !self.x_replicas_on_different_map.is_empty() {
            return Err(unsupported(
                "x_replicas_on_different_map",
                "x-replicas-on-different",
                "use replicas_on_different",
            ));
        }
        if self.diskless_type.as_deref().is_some_and(|t| !t.is_empty()) {
            return Err(unsupported(
                "diskless_type",
                "choosing the diskless type",
                "leave diskless_type out",
            ));
        }
        let mut place_count = self.place_count;
        if let Some(extra) = self.additional_place_count.filter(|n| *n > 0) {
            let Some(now) = diskful_now else {
                return Err(unsupported(
                    "additional_place_count",
                    "additional_place_count here",
                    "give place_count",
                ));
            };
            let now = u32::try_from(now).unwrap_or(u32::MAX);
            place_count = Some(now.saturating_add(extra));
        }
        let mut pools = self.storage_pool_list;
        if pools.is_empty()
            && let Some(p) = self.storage_pool.filter(|p| !p.is_empty())
        {
            pools.push(p);
        }
        Ok(SelectFilter {
            place_count,
            node_name_list: self.node_name_list,
            storage_pool_list: pools,
            storage_pool_diskless_list: self.storage_pool_diskless_list,
            not_place_with_rsc: self.not_place_with_rsc,
            not_place_with_rsc_regex: self.not_place_with_rsc_regex.filter(|r| !r.is_empty()),
            replicas_on_same: self.replicas_on_same,
            replicas_on_different: self.replicas_on_different,
            provider_list: self
                .provider_list
                .iter()
                .map(|p| p.parse())
                .collect::<Result<_, _>>()?,
            diskless_on_remaining: self.diskless_on_remaining,
        })
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ResourceGroupCreateReq {
    pub name: String,
    pub description: String,
    pub props: Props,
    pub select_filter: SelectFilterReq,
    pub peer_slots: Option<u8>,
}

impl ResourceGroupCreateReq {
    pub fn into_model(self) -> Result<model::ResourceGroupCreate, ModelError> {
        Ok(model::ResourceGroupCreate {
            name: self.name,
            description: self.description,
            props: self.props,
            select_filter: self.select_filter.into_model(None)?,
            peer_slots: self.peer_slots,
        })
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ResourceGroupModifyReq {
    pub description: Option<String>,
    #[serde(flatten)]
    pub props: PropsModifyReq,
    pub select_filter: Option<SelectFilterReq>,
    pub peer_slots: Option<u8>,
}

impl ResourceGroupModifyReq {
    pub fn into_model(self) -> Result<model::ResourceGroupModify, ModelError> {
        Ok(model::ResourceGroupModify {
            description: self.description,
            props: self.props.into_model(),
            select_filter: self.select_filter.map(|f| f.into_model(None)).transpose()?,
            peer_slots: self.peer_slots,
        })
    }
}

fn vg_flags(flags: &[String]) -> Result<BTreeSet<VolumeGroupFlag>, ModelError> {
    flags
        .iter()
        .map(|f| match f.to_ascii_uppercase().as_str() {
            "GROSS_SIZE" => Ok(VolumeGroupFlag::GrossSize),
            _ => Err(unsupported(
                "flags",
                &format!("the volume group flag '{f}'"),
                "use GROSS_SIZE or no flag",
            )),
        })
        .collect()
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct VolumeGroupCreateReq {
    pub volume_number: Option<u32>,
    pub props: Props,
    pub flags: Vec<String>,
}

impl VolumeGroupCreateReq {
    pub fn into_model(self) -> Result<model::VolumeGroupCreate, ModelError> {
        Ok(model::VolumeGroupCreate {
            volume_number: self.volume_number,
            props: self.props,
            flags: vg_flags(&self.flags)?,
        })
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SpawnReq {
    pub resource_definition_name: String,
    pub resource_definition_external_name: Option<String>,
    pub volume_sizes: Vec<u64>,
    pub select_filter: SelectFilterReq,
    pub partial: bool,
    pub definitions_only: bool,
    pub peer_slots: Option<u8>,
    pub volume_passphrases: Vec<String>,
    pub resource_definition_props: Props,
}

impl SpawnReq {
    pub fn into_model(self) -> Result<model::Spawn, ModelError> {
        if self
            .resource_definition_external_name
            .as_deref()
            .is_some_and(|n| !n.is_empty())
        {
            return Err(unsupported(
                "resource_definition_external_name",
                "external names",
                "give resource_definition_name",
            ));
        }
        if !self.volume_passphrases.is_empty() {
            return Err(unsupported(
                "volume_passphrases",
                "encrypted volumes",
                "leave volume_passphrases out",
            ));
        }
        Ok(model::Spawn {
            resource_definition_name: self.resource_definition_name,
            volume_sizes: self.volume_sizes,
            partial: self.partial,
            definitions_only: self.definitions_only,
            select_filter: self.select_filter.into_model(None)?,
            resource_definition_props: self.resource_definition_props,
            peer_slots: self.peer_slots,
        })
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct LayerDataReq {
    #[serde(rename = "type")]
    pub kind: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ResourceDefinitionReq {
    pub name: String,
    pub external_name: Option<String>,
    pub resource_group_name: Option<String>,
    pub props: Props,
    pub layer_data: Vec<LayerDataReq>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ResourceDefinitionCreateReq {
    pub resource_definition: ResourceDefinitionReq,
    pub drbd_port: Option<u16>,
    pub drbd_secret: Option<String>,
    pub drbd_peer_slots: Option<u8>,
    pub drbd_transport_type: Option<String>,
}

impl ResourceDefinitionCreateReq {
    pub fn into_model(self) -> Result<model::ResourceDefinitionCreate, ModelError> {
        let rd = self.resource_definition;
        if rd.name.is_empty() && rd.external_name.as_deref().is_some_and(|n| !n.is_empty()) {
            return Err(unsupported(
                "external_name",
                "external names",
                "give the resource definition a name",
            ));
        }
        let layers: Vec<String> = rd.layer_data.into_iter().map(|l| l.kind).collect();
        check_layers("layer_data", &layers)?;
        if self
            .drbd_transport_type
            .as_deref()
            .is_some_and(|t| !t.eq_ignore_ascii_case("IP"))
        {
            return Err(unsupported(
                "drbd_transport_type",
                "transports other than IP",
                "leave drbd_transport_type out",
            ));
        }
        let mut props = rd.props;
        // LINSTOR's field for the secret; without it the controller makes one.
        if let Some(s) = self.drbd_secret.filter(|s| !s.is_empty()) {
            props.insert(model::satellite::KEY_SHARED_SECRET.into(), s);
        }
        Ok(model::ResourceDefinitionCreate {
            name: rd.name,
            resource_group: rd.resource_group_name.filter(|g| !g.is_empty()),
            props,
            port: self.drbd_port,
            peer_slots: self.drbd_peer_slots,
        })
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ResourceDefinitionModifyReq {
    #[serde(flatten)]
    pub props: PropsModifyReq,
    pub drbd_port: Option<u16>,
    pub drbd_peer_slots: Option<u8>,
    pub layer_stack: Vec<String>,
    pub resource_group: Option<String>,
}

impl ResourceDefinitionModifyReq {
    pub fn into_model(self) -> Result<model::ResourceDefinitionModify, ModelError> {
        check_layers("layer_stack", &self.layer_stack)?;
        Ok(model::ResourceDefinitionModify {
            props: self.props.into_model(),
            resource_group: self.resource_group.filter(|g| !g.is_empty()),
            port: self.drbd_port,
            peer_slots: self.drbd_peer_slots,
        })
    }
}

fn vd_flags(flags: &[String]) -> Result<BTreeSet<VolumeDefinitionFlag>, ModelError> {
    flags
        .iter()
        .map(|f| match f.to_ascii_uppercase().as_str() {
            "GROSS_SIZE" => Ok(VolumeDefinitionFlag::GrossSize),
            _ => Err(unsupported(
                "flags",
                &format!("the volume definition flag '{f}'"),
                "use GROSS_SIZE or no flag",
            )),
        })
        .collect()
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct VolumeDefinitionReq {
    pub volume_number: Option<u32>,
    pub size_kib: u64,
    pub props: Props,
    pub flags: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct VolumeDefinitionCreateReq {
    pub volume_definition: VolumeDefinitionReq,
    pub drbd_minor_number: Option<u32>,
    pub passphrase: Option<String>,
}

impl VolumeDefinitionCreateReq {
    pub fn into_model(self) -> Result<model::VolumeDefinitionCreate, ModelError> {
        if self.passphrase.as_deref().is_some_and(|p| !p.is_empty()) {
            return Err(unsupported(
                "passphrase",
                "encrypted volumes",
                "leave passphrase out",
            ));
        }
        let vd = self.volume_definition;
        Ok(model::VolumeDefinitionCreate {
            volume_number: vd.volume_number,
            size_kib: vd.size_kib,
            props: vd.props,
            flags: vd_flags(&vd.flags)?,
        })
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct VolumeDefinitionModifyReq {
    pub size_kib: Option<u64>,
    #[serde(flatten)]
    pub props: PropsModifyReq,
    pub flags: Vec<String>,
}

impl VolumeDefinitionModifyReq {
    pub fn check(&self) -> Result<(), ModelError> {
        if !self.flags.is_empty() {
            return Err(unsupported(
                "flags",
                "changing volume definition flags",
                "leave flags out",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ResourceReq {
    pub node_name: String,
    pub props: Props,
    pub flags: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ResourceCreateReq {
    pub resource: ResourceReq,
    pub layer_list: Vec<String>,
    pub drbd_node_id: Option<u8>,
    pub drbd_tcp_ports: Vec<u16>,
    pub drbd_client: Option<bool>,
}

impl ResourceCreateReq {
    /// The model request for resource `rsc`; `node` from the path wins over the body.
    pub fn into_model(
        self,
        rsc: &str,
        node: Option<&str>,
    ) -> Result<model::ResourceCreate, ModelError> {
        check_layers("layer_list", &self.layer_list)?;
        let mut diskless = self.drbd_client.unwrap_or(false);
        for f in &self.resource.flags {
            match f.to_ascii_uppercase().as_str() {
                "DISKLESS" | "DRBD_DISKLESS" => diskless = true,
                _ => {
                    return Err(unsupported(
                        "flags",
                        &format!("the resource flag '{f}'"),
                        "use DRBD_DISKLESS for a diskless replica, or no flag",
                    ));
                }
            }
        }
        let mut props = self.resource.props;
        let storage_pool = props.remove(model::cluster::KEY_STOR_POOL_NAME);
        Ok(model::ResourceCreate {
            resource: rsc.to_owned(),
            node: node.map_or(self.resource.node_name, str::to_owned),
            storage_pool,
            diskless,
            node_id: self.drbd_node_id,
            props,
        })
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct AutoPlaceReq {
    pub diskless_on_remaining: Option<bool>,
    pub select_filter: SelectFilterReq,
    pub layer_list: Vec<String>,
}

impl AutoPlaceReq {
    pub fn into_model(self, diskful_now: usize) -> Result<SelectFilter, ModelError> {
        check_layers("layer_list", &self.layer_list)?;
        let mut f = self.select_filter.into_model(Some(diskful_now))?;
        if self.diskless_on_remaining.is_some() {
            f.diskless_on_remaining = self.diskless_on_remaining;
        }
        Ok(f)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct MakeAvailableReq {
    pub diskful: bool,
    pub layer_list: Vec<String>,
    pub drbd_tcp_ports: Vec<u16>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SizeInfoReq {
    pub select_filter: Option<SelectFilterReq>,
    pub ignore_cache_older_than_sec: Option<i64>,
}

/// Parses every request body type and converts it as the handlers do: what the fuzz
/// target drives. Never panics; returns how many conversions succeeded.
pub fn parse_all(bytes: &[u8]) -> usize {
    fn p<T: serde::de::DeserializeOwned>(b: &[u8]) -> Option<T> {
        serde_json::from_slice(b).ok()
    }
    let mut ok = 0;
    let mut count = |r: bool| ok += usize::from(r);
    count(p::<PropsModifyReq>(bytes).is_some());
    count(p::<NodeCreateReq>(bytes).is_some_and(|r| r.into_model().is_ok()));
    count(p::<NodeModifyReq>(bytes).is_some_and(|r| r.into_model().is_ok()));
    count(
        p::<NetInterfaceReq>(bytes)
            .is_some_and(|r| r.clone().into_model().is_ok() && r.into_modify().is_ok()),
    );
    count(p::<StoragePoolCreateReq>(bytes).is_some_and(|r| r.into_model().is_ok()));
    count(p::<ResourceGroupCreateReq>(bytes).is_some_and(|r| r.into_model().is_ok()));
    count(p::<ResourceGroupModifyReq>(bytes).is_some_and(|r| r.into_model().is_ok()));
    count(p::<VolumeGroupCreateReq>(bytes).is_some_and(|r| r.into_model().is_ok()));
    count(p::<SpawnReq>(bytes).is_some_and(|r| r.into_model().is_ok()));
    count(p::<ResourceDefinitionCreateReq>(bytes).is_some_and(|r| r.into_model().is_ok()));
    count(p::<ResourceDefinitionModifyReq>(bytes).is_some_and(|r| r.into_model().is_ok()));
    count(p::<VolumeDefinitionCreateReq>(bytes).is_some_and(|r| r.into_model().is_ok()));
    count(p::<VolumeDefinitionModifyReq>(bytes).is_some_and(|r| r.check().is_ok()));
    count(
        p::<Vec<ResourceCreateReq>>(bytes)
            .is_some_and(|v| v.into_iter().all(|r| r.into_model("rsc", None).is_ok())),
    );
    count(p::<ResourceCreateReq>(bytes).is_some_and(|r| r.into_model("rsc", Some("node")).is_ok()));
    count(p::<AutoPlaceReq>(bytes).is_some_and(|r| r.into_model(1).is_ok()));
    count(p::<MakeAvailableReq>(bytes).is_some());
    count(
        p::<SizeInfoReq>(bytes)
            .is_some_and(|r| r.select_filter.is_none_or(|f| f.into_model(None).is_ok())),
    );
    ok
}

// ---- responses ----

fn flags<T: serde::Serialize>(set: &BTreeSet<T>) -> Value {
    json!(set)
}

pub fn net_interface(ni: &NetInterface) -> Value {
    json!({
        "name": ni.name,
        "address": ni.address,
        "satellite_port": ni.satellite_port,
        "satellite_encryption_type": ni.satellite_encryption_type.map(|t| match t {
            model::EncryptionType::Plain => "PLAIN",
            model::EncryptionType::Ssl => "SSL",
        }),
        "is_active": ni.is_active,
    })
}

pub fn node_type(t: NodeType) -> &'static str {
    match t {
        NodeType::Controller => "CONTROLLER",
        NodeType::Satellite => "SATELLITE",
        NodeType::Combined => "COMBINED",
        NodeType::Auxiliary => "AUXILIARY",
    }
}

/// A node with its satellite's connection status (`live`; the stored one is OFFLINE).
pub fn node(n: &Node, live: &LiveView) -> Value {
    json!({
        "name": n.name,
        "type": node_type(n.node_type),
        "flags": flags(&n.flags),
        "props": n.props,
        "net_interfaces": n.net_interfaces.iter().map(net_interface).collect::<Vec<_>>(),
        "connection_status": live.status(&n.name),
        // Until a satellite reports, nothing is known about its providers and layers.
        "storage_providers": [],
        "resource_layers": [],
        "unsupported_providers": {},
        "unsupported_layers": {},
    })
}

/// A pool with the capacity its satellite last reported (kept while the satellite is
/// away, with a warning saying since when) and its errors as `reports`.
pub fn storage_pool(sp: &StoragePool, live: &LiveView) -> Value {
    let mut sp = sp.clone();
    let mut reports: Vec<ApiCallRc> = Vec::new();
    let ctx = Ctx::new(Op::Query, ObjectKind::StoragePool);
    if !sp.provider_kind.is_diskless()
        && let Some((p, current)) = live.pool(&sp.node_name, &sp.storage_pool_name)
    {
        if let (Some(free), Some(total)) = (p.free_capacity_kib, p.total_capacity_kib) {
            sp.free_capacity = Some(free.min(total));
            sp.total_capacity = Some(total);
        }
        if let Some(e) = &p.error {
            reports.push(ApiCallRc {
                correction: Some(
                    "check the pool on the node (StorDriver/StorPoolName and the volume \
                     group, zpool or directory it names)"
                        .into(),
                ),
                ..ctx.warn(
                    0,
                    format!(
                        "storage pool '{}' on node '{}': {e}",
                        sp.storage_pool_name, sp.node_name
                    ),
                )
            });
        }
        if !current {
            reports.push(ctx.warn(
                rc::WARN_NOT_CONNECTED,
                format!(
                    "the satellite of node '{}' does not answer: the capacity is the last one \
                     it reported",
                    sp.node_name
                ),
            ));
        }
    }
    let sp = &sp;
    let mut v = json!({
        "storage_pool_name": sp.storage_pool_name,
        "node_name": sp.node_name,
        "provider_kind": sp.provider_kind,
        "props": sp.props,
        "static_traits": {
            "Provisioning": if sp.provider_kind.is_thin() { "Thin" } else { "Fat" },
            "SupportsSnapshots": "false",
        },
        "free_space_mgr_name": sp.shared_space.clone()
            .unwrap_or_else(|| format!("{}:{}", sp.node_name, sp.storage_pool_name)),
        "reports": reports,
        "supports_snapshots": false,
        "external_locking": sp.external_locking,
    });
    if let Some(obj) = v.as_object_mut() {
        if let Some(f) = sp.free_capacity {
            obj.insert("free_capacity".into(), json!(f));
        }
        if let Some(t) = sp.total_capacity {
            obj.insert("total_capacity".into(), json!(t));
        }
        if let Some(s) = &sp.shared_space {
            obj.insert("shared_space".into(), json!(s));
        }
    }
    v
}

pub fn select_filter(f: &SelectFilter) -> Value {
    let mut v = json!({
        "storage_pool_list": f.storage_pool_list,
        "storage_pool_diskless_list": f.storage_pool_diskless_list,
        "node_name_list": f.node_name_list,
        "not_place_with_rsc": f.not_place_with_rsc,
        "replicas_on_same": f.replicas_on_same,
        "replicas_on_different": f.replicas_on_different,
        "provider_list": f.provider_list,
        "layer_stack": ["DRBD", "STORAGE"],
    });
    if let Some(obj) = v.as_object_mut() {
        if let Some(n) = f.place_count {
            obj.insert("place_count".into(), json!(n));
        }
        if let [one] = f.storage_pool_list.as_slice() {
            obj.insert("storage_pool".into(), json!(one));
        }
        if let Some(r) = &f.not_place_with_rsc_regex {
            obj.insert("not_place_with_rsc_regex".into(), json!(r));
        }
        if let Some(d) = f.diskless_on_remaining {
            obj.insert("diskless_on_remaining".into(), json!(d));
        }
    }
    v
}

pub fn resource_group(g: &ResourceGroup) -> Value {
    let mut v = json!({
        "name": g.name,
        "description": g.description,
        "props": g.props,
        "select_filter": select_filter(&g.select_filter),
    });
    if let (Some(obj), Some(p)) = (v.as_object_mut(), g.peer_slots) {
        obj.insert("peer_slots".into(), json!(p));
    }
    v
}

pub fn volume_group(vg: &VolumeGroup) -> Value {
    json!({
        "volume_number": vg.volume_number,
        "props": vg.props,
        "flags": flags(&vg.flags),
    })
}

pub fn volume_definition(vd: &VolumeDefinition) -> Value {
    json!({
        "volume_number": vd.volume_number,
        "size_kib": vd.size_kib,
        "props": vd.props,
        "flags": flags(&vd.flags),
        "layer_data": [
            {"type": "DRBD", "data": {"volume_number": vd.volume_number}},
            {"type": "STORAGE"},
        ],
    })
}

fn peer_slots(rd: &ResourceDefinition) -> u8 {
    rd.peer_slots.unwrap_or(7)
}

pub fn resource_definition(rd: &ResourceDefinition, with_vds: bool) -> Value {
    let mut v = json!({
        "name": rd.name,
        "resource_group_name": rd.resource_group_name,
        "props": rd.props,
        "flags": [],
        "layer_data": [
            {"type": "DRBD", "data": {
                "port": rd.port,
                "peer_slots": peer_slots(rd),
                "transport_type": "IP",
                "down": false,
            }},
            {"type": "STORAGE"},
        ],
    });
    if with_vds && let Some(obj) = v.as_object_mut() {
        obj.insert(
            "volume_definitions".into(),
            rd.volume_definitions
                .values()
                .map(volume_definition)
                .collect::<Vec<_>>()
                .into(),
        );
    }
    v
}

/// The stable device path a volume gets on its node (DESIGN.md §4).
pub fn device_path(r: &Resource, vnr: u32) -> String {
    format!("/dev/tandem/{}/{vnr}", r.name)
}

/// The volume's `state` (`disk_state`, `replication_states`, and for a replica being
/// synced `replication_state` `SyncTarget` with `done_percentage`) and `reports` (what
/// the satellite says is wrong and what to do), from what its satellite observed.
fn volume_state(r: &Resource, vnr: u32, obs: RscObs<'_>) -> (Value, Vec<ApiCallRc>) {
    let ctx = Ctx::new(Op::Query, ObjectKind::Volume);
    let o = match obs {
        RscObs::Unknown => return (json!({"disk_state": "Unknown"}), Vec::new()),
        RscObs::Missing { applied } => {
            let report = if applied {
                ctx.warn(
                    0,
                    format!(
                        "the satellite of node '{}' applied its desired state but does not \
                         report resource '{}'",
                        r.node_name, r.name
                    ),
                )
            } else {
                ctx.info(
                    0,
                    format!(
                        "resource '{}' is being created on node '{}' (the satellite is applying \
                         the desired state)",
                        r.name, r.node_name
                    ),
                )
            };
            return (json!({"disk_state": "Unknown"}), vec![report]);
        }
        RscObs::Reported(o) => o,
    };
    let v = o.volumes.iter().find(|v| v.number == vnr);
    let disk = v
        .and_then(|v| v.disk_state.clone())
        .unwrap_or_else(|| "Unknown".into());
    let mut state = serde_json::Map::new();
    state.insert("disk_state".into(), json!(disk));
    let repl: serde_json::Map<String, Value> = o
        .peers
        .iter()
        .map(|p| {
            let mut m = serde_json::Map::new();
            m.insert("replication_state".into(), json!(p.replication));
            if let Some(d) = p.resync_done_percent {
                m.insert("done_percentage".into(), json!(d));
            }
            (p.name.clone(), Value::Object(m))
        })
        .collect();
    if let Some(p) = o
        .peers
        .iter()
        .filter(|p| p.replication == "SyncTarget")
        .min_by(|a, b| {
            let pct = |p: &model::satellite::ObservedPeer| p.resync_done_percent.unwrap_or(0.0);
            pct(a).total_cmp(&pct(b))
        })
    {
        state.insert("replication_state".into(), json!("SyncTarget"));
        if let Some(d) = p.resync_done_percent {
            state.insert("done_percentage".into(), json!(d));
        }
    }
    state.insert("replication_states".into(), Value::Object(repl));
    let mut reports = Vec::new();
    if let Some(e) = &o.error {
        reports.push(ctx.warn(0, format!("{} on node '{}': {e}", r.name, r.node_name)));
    }
    if let Some(h) = v.and_then(|v| v.hint.as_ref()) {
        reports.push(ApiCallRc {
            correction: Some(h.clone()),
            ..ctx.warn(
                0,
                format!(
                    "{} volume {vnr} on node '{}' is {disk} and needs a human: {h}",
                    r.name, r.node_name
                ),
            )
        });
    }
    (Value::Object(state), reports)
}

/// `ResourceWithVolumes` (`/v1/view/resources`) with what the node's satellite
/// observed: `state.in_use` (its role), per volume `state` and `reports`, and the
/// replication connections. While the satellite is not reachable the resource's use is
/// unknown (`state` is empty) and every disk state is `Unknown`.
pub fn resource(rd: &ResourceDefinition, r: &Resource, obs: RscObs<'_>) -> Value {
    let reported = match obs {
        RscObs::Reported(o) => Some(o),
        _ => None,
    };
    let vols: Vec<Value> = r
        .volumes
        .values()
        .map(|v| {
            let size = rd
                .volume_definitions
                .get(&v.volume_number)
                .map(|vd| vd.size_kib);
            let (state, reports) = volume_state(r, v.volume_number, obs);
            json!({
                "volume_number": v.volume_number,
                "storage_pool_name": v.storage_pool_name,
                "provider_kind": v.provider_kind,
                "device_path": device_path(r, v.volume_number),
                "props": v.props,
                "flags": [],
                "state": state,
                "reports": reports,
                "layer_data_list": [
                    {"type": "DRBD", "data": {
                        "drbd_volume_definition": {"volume_number": v.volume_number},
                        "device_path": device_path(r, v.volume_number),
                        "usable_size_kib": size,
                    }},
                    {"type": "STORAGE", "data": {"volume_number": v.volume_number}},
                ],
            })
        })
        .collect();
    let drbd_vols: Vec<Value> = r
        .volumes
        .values()
        .map(|v| {
            json!({
                "drbd_volume_definition": {"volume_number": v.volume_number},
                "device_path": device_path(r, v.volume_number),
                "usable_size_kib": rd.volume_definitions.get(&v.volume_number).map(|vd| vd.size_kib),
            })
        })
        .collect();
    let connections: serde_json::Map<String, Value> = reported
        .map(|o| {
            o.peers
                .iter()
                .map(|p| {
                    (
                        p.name.clone(),
                        json!({"connected": p.connection == "Connected", "message": p.connection}),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    let state = match reported.and_then(|o| o.role.as_deref()) {
        Some(role) => json!({"in_use": role.eq_ignore_ascii_case("Primary")}),
        None => json!({}),
    };
    let mut v = json!({
        "name": r.name,
        "node_name": r.node_name,
        "props": r.props,
        "flags": flags(&r.flags),
        "layer_object": {
            "type": "DRBD",
            "children": [{"type": "STORAGE", "storage": {"storage_volumes": []}}],
            "drbd": {
                "drbd_resource_definition": {
                    "peer_slots": peer_slots(rd),
                    "port": rd.port,
                    "transport_type": "IP",
                    "down": false,
                },
                "node_id": r.node_id,
                "peer_slots": peer_slots(rd),
                "drbd_volumes": drbd_vols,
                "connections": connections,
            },
        },
        "state": state,
        "volumes": vols,
    });
    if let Some(mp) = reported.and_then(|o| o.volumes.iter().find_map(|v| v.may_promote))
        && let Some(d) = v
            .pointer_mut("/layer_object/drbd")
            .and_then(Value::as_object_mut)
    {
        d.insert("may_promote".into(), json!(mp));
    }
    v
}

/// `QuerySizeInfoResponseSpaceInfo` for a filter: capacity and free space of the pools
/// the filter may place diskful replicas in, as satellites reported them, and the
/// largest volume place_count replicas on distinct nodes could hold. Pools that have not
/// reported count as 0 and are named in the reports.
pub fn size_info(c: &Cluster, f: &SelectFilter) -> (Value, Vec<String>) {
    let mut capacity: u64 = 0;
    let mut available: u64 = 0;
    let mut per_node: Vec<u64> = Vec::new();
    let mut unknown = Vec::new();
    for n in c.nodes().filter(|n| n.accepts_new_resources()) {
        if !f.node_name_list.is_empty()
            && !f
                .node_name_list
                .iter()
                .any(|x| x.eq_ignore_ascii_case(&n.name))
        {
            continue;
        }
        let mut best = 0;
        for sp in n.storage_pools.values().filter(|sp| {
            !sp.provider_kind.is_diskless()
                && (f.storage_pool_list.is_empty()
                    || f.storage_pool_list
                        .iter()
                        .any(|p| p.eq_ignore_ascii_case(&sp.storage_pool_name)))
                && (f.provider_list.is_empty() || f.provider_list.contains(&sp.provider_kind))
        }) {
            match (sp.free_capacity, sp.total_capacity) {
                (Some(free), Some(total)) => {
                    capacity = capacity.saturating_add(total);
                    available = available.saturating_add(free);
                    best = best.max(free);
                }
                _ => unknown.push(format!("{}/{}", n.name, sp.storage_pool_name)),
            }
        }
        per_node.push(best);
    }
    per_node.sort_unstable_by(|a, b| b.cmp(a));
    let want = usize::try_from(f.place_count.unwrap_or(1)).unwrap_or(usize::MAX);
    let max_vlm = if want == 0 || per_node.len() < want {
        0
    } else {
        per_node[want - 1]
    };
    let mut reports = Vec::new();
    if !unknown.is_empty() {
        reports.push(format!(
            "no satellite has reported the capacity of {} (counted as 0)",
            unknown.join(", ")
        ));
    }
    (
        json!({
            "max_vlm_size_in_kib": max_vlm,
            "available_size_in_kib": available,
            "capacity_in_kib": capacity,
            "next_spawn_result": [],
        }),
        reports,
    )
}

/// `GET /v1/satellites` (tandem's own): every satellite link, of nodes and of
/// tombstones, with what is wrong in `status_lines` (each says why and what to do).
pub fn satellites(c: &Cluster, live: &LiveView) -> Vec<Value> {
    let mut out = Vec::new();
    for n in c.nodes().filter(|n| n.node_type.runs_satellite()) {
        let link = live.link(&n.name);
        let address = link
            .map(|l| l.address.clone())
            .or_else(|| model::satellite::satellite_address(n))
            .unwrap_or_default();
        out.push(satellite_entry(&n.name, &address, false, link, live));
    }
    for t in live.tombstones.values() {
        let link = live
            .links
            .get(&model::name::key(&t.node))
            .filter(|l| l.lost);
        let mut e = satellite_entry(&t.node, &t.address, true, link, live);
        if let Some(o) = e.as_object_mut() {
            o.insert("lost_since_ms".into(), json!(t.created_ms));
        }
        out.push(e);
    }
    out
}

fn satellite_entry(
    node: &str,
    address: &str,
    lost: bool,
    link: Option<&crate::live::Link>,
    live: &LiveView,
) -> Value {
    let now = live.now;
    let status = link.map_or(model::ConnectionStatus::Offline, |l| {
        l.status(now, live.window)
    });
    let online = status == model::ConnectionStatus::Online;
    let obs = link.and_then(|l| l.observed.as_ref());
    let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let mut lines = Vec::new();
    let who = if lost {
        format!("{node} (deleted node)")
    } else {
        node.to_owned()
    };
    match (status, link) {
        (model::ConnectionStatus::Online, _) => {}
        (model::ConnectionStatus::HostnameMismatch, Some(l)) => lines.push(format!(
            "{who}: the satellite at {address} says it is node '{}': nothing is pushed to it; \
             fix the node's address (tandem node interface modify) or the satellite's node name",
            l.other_node().unwrap_or_default()
        )),
        (_, l) => {
            let why = l
                .and_then(|l| l.error.clone())
                .unwrap_or_else(|| "not contacted yet".into());
            let since = match l {
                Some(l) => match l.last_ok {
                    Some(t) => format!(
                        "has not answered for {}",
                        crate::live::ago(now.saturating_duration_since(t))
                    ),
                    None => format!(
                        "has not answered since the controller started trying {} ago",
                        crate::live::ago(now.saturating_duration_since(l.started))
                    ),
                },
                None => "has not been contacted yet".into(),
            };
            lines.push(if lost {
                format!(
                    "{who}: OFFLINE: the satellite at {address} {since} ({why}); it removes \
                     the node's volumes and resource files when it answers. If the machine is \
                     gone for good: tandem node lost {node} (forgets this cleanup)"
                )
            } else {
                format!(
                    "{who}: OFFLINE: the satellite at {address} {since} ({why}); changes are \
                     applied when it answers. Start it (tandem satellite) on {node}, or if the \
                     node is gone for good: tandem node lost {node}"
                )
            });
        }
    }
    if let Some(e) = link.and_then(|l| l.push_error.as_ref()) {
        lines.push(format!("{who}: desired state not accepted: {e}"));
    }
    if let Some(o) = obs.filter(|_| online) {
        for e in &o.state.errors {
            lines.push(format!("{who}: {e}"));
        }
        for r in &o.state.removing {
            lines.push(format!("{who}: removing '{}': {}", r.name, r.reason));
        }
        if lost && o.state.removing.is_empty() && !o.state.resources.is_empty() {
            lines.push(format!(
                "{who}: the satellite still reports {} resources; waiting for it to remove them",
                o.state.resources.len()
            ));
        }
    }
    json!({
        "node": node,
        "address": address,
        "lost": lost,
        "connection_status": status,
        "last_answer_ms_ago": link.and_then(|l| l.last_ok).map(|t| ms(now.saturating_duration_since(t))),
        "failing_for_ms": link.and_then(|l| l.failing_since).map(|t| ms(now.saturating_duration_since(t))),
        "error": link.and_then(|l| l.error.clone()),
        "push_error": link.and_then(|l| l.push_error.clone()),
        "desired_generation": link.map_or(0, |l| l.desired_generation),
        "acked_generation": link.map_or(0, |l| l.acked_generation),
        "observed_generation": obs.map(|o| o.state.generation),
        "applied": obs.map(|o| o.state.applied),
        "errors": obs.map(|o| o.state.errors.clone()).unwrap_or_default(),
        "removing": obs.map(|o| o.state.removing.clone()).unwrap_or_default(),
        "status_lines": lines,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::ProviderKind;

    #[test]
    fn python_linstor_bodies_convert() {
        let b = br#"{"name": "alpha", "type": "Satellite", "net_interfaces": [{"name": "default",
            "address": "10.0.0.1", "satellite_port": 3366, "satellite_encryption_type": "Plain",
            "is_active": true}]}"#;
        let n = serde_json::from_slice::<NodeCreateReq>(b)
            .unwrap()
            .into_model()
            .unwrap();
        assert_eq!(n.node_type, NodeType::Satellite);
        assert_eq!(n.net_interfaces[0].satellite_port, Some(3366));
        let b = br#"{"storage_pool_name": "pool_ssd", "provider_kind": "ZFS_THIN",
            "props": {"StorDriver/StorPoolName": "tank/thin"}}"#;
        let sp = serde_json::from_slice::<StoragePoolCreateReq>(b)
            .unwrap()
            .into_model()
            .unwrap();
        assert_eq!(sp.provider_kind, ProviderKind::ZfsThin);
        let b = br#"{"name": "grp", "select_filter": {"place_count": 2, "storage_pool": "p1",
            "diskless_on_remaining": true, "layer_stack": ["DRBD", "STORAGE"]}}"#;
        let g = serde_json::from_slice::<ResourceGroupCreateReq>(b)
            .unwrap()
            .into_model()
            .unwrap();
        assert_eq!(g.select_filter.storage_pool_list, ["p1"]);
        assert_eq!(g.select_filter.diskless_on_remaining, Some(true));
        let b = br#"[{"resource": {"node_name": "alpha", "props": {"StorPoolName": "p1"}}},
            {"resource": {"node_name": "gamma", "flags": ["DRBD_DISKLESS"]}}]"#;
        let rs: Vec<ResourceCreateReq> = serde_json::from_slice(b).unwrap();
        let r: Vec<_> = rs
            .into_iter()
            .map(|r| r.into_model("res", None).unwrap())
            .collect();
        assert_eq!(r[0].storage_pool.as_deref(), Some("p1"));
        assert!(!r[0].diskless && r[1].diskless);
    }

    #[test]
    fn unsupported_features_are_refused_not_ignored() {
        let b = br#"{"name": "g", "select_filter": {"layer_stack": ["LUKS", "STORAGE"]}}"#;
        let e = serde_json::from_slice::<ResourceGroupCreateReq>(b)
            .unwrap()
            .into_model()
            .unwrap_err();
        assert!(e.to_string().contains("LUKS"), "{e}");
        let b = br#"{"volume_definition": {"size_kib": 10}, "passphrase": "x"}"#;
        assert!(
            serde_json::from_slice::<VolumeDefinitionCreateReq>(b)
                .unwrap()
                .into_model()
                .is_err()
        );
        let b = br#"{"storage_pool_name": "p", "provider_kind": "SPDK"}"#;
        assert!(
            serde_json::from_slice::<StoragePoolCreateReq>(b)
                .unwrap()
                .into_model()
                .is_err()
        );
    }

    #[test]
    fn additional_place_count_adds_to_existing() {
        let b = br#"{"select_filter": {"additional_place_count": 1}}"#;
        let f = serde_json::from_slice::<AutoPlaceReq>(b)
            .unwrap()
            .into_model(2)
            .unwrap();
        assert_eq!(f.place_count, Some(3));
    }

    #[test]
    fn parse_all_survives_garbage() {
        for b in [
            &b""[..],
            b"{",
            b"[]",
            b"null",
            b"{\"name\": 5}",
            b"\xff\xfe",
        ] {
            parse_all(b);
        }
        assert!(parse_all(b"{}") > 5);
    }
}
