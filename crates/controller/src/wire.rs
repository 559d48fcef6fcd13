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
        Ok(model::ResourceDefinitionCreate {
            name: rd.name,
            resource_group: rd.resource_group_name.filter(|g| !g.is_empty()),
            props: rd.props,
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

pub fn node(n: &Node) -> Value {
    json!({
        "name": n.name,
        "type": node_type(n.node_type),
        "flags": flags(&n.flags),
        "props": n.props,
        "net_interfaces": n.net_interfaces.iter().map(net_interface).collect::<Vec<_>>(),
        "connection_status": n.connection_status,
        // Until a satellite reports, nothing is known about its providers and layers.
        "storage_providers": [],
        "resource_layers": [],
        "unsupported_providers": {},
        "unsupported_layers": {},
    })
}

pub fn storage_pool(sp: &StoragePool) -> Value {
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
        "reports": [],
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

/// `ResourceWithVolumes` (`/v1/view/resources`). No satellite reports yet, so the
/// resource's use and its disks' states are unknown, and it says so.
pub fn resource(rd: &ResourceDefinition, r: &Resource) -> Value {
    let vols: Vec<Value> = r
        .volumes
        .values()
        .map(|v| {
            let size = rd
                .volume_definitions
                .get(&v.volume_number)
                .map(|vd| vd.size_kib);
            json!({
                "volume_number": v.volume_number,
                "storage_pool_name": v.storage_pool_name,
                "provider_kind": v.provider_kind,
                "device_path": device_path(r, v.volume_number),
                "props": v.props,
                "flags": [],
                "state": {"disk_state": "Unknown"},
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
    json!({
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
                "connections": {},
            },
        },
        "state": {},
        "volumes": vols,
    })
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
