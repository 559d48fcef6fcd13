//! The desired state of one node ([`DesiredState`]), computed from the cluster: what
//! the controller pushes to the node's satellite. Pure: the controller supplies the
//! generation.
//!
//! How LINSTOR's objects map onto it:
//!
//! - **pools**: the node's storage pools that hold data (diskless pools need nothing on
//!   the node and are left out), each with its own properties plus the `StorDriver/...`
//!   keys it inherits from the node and the controller;
//! - **resources**: every resource placed on the node (one flagged `DELETE` is not:
//!   deletion is desired state), with
//!   - the options of [`Cluster::resource_options`] for the resource on this node, in
//!     the words of blockd's resource files (protocol `C`/`A`, quorum `majority`/`off`,
//!     on-no-quorum `io-error`/`suspend-io`, allow-two-primaries, verify-alg, `crc32c`
//!     when unset);
//!   - `split_brain` from `after-sb-0pri` (see [`split_brain`]);
//!   - `resync_rate` in bytes/s from `resync-rate` (KiB/s) when the property is set,
//!     raised to blockd's minimum of 64 KiB/s; unset means unlimited (DRBD's own
//!     default of 250 KiB/s is only the start value of its dynamic controller, and
//!     blockd backs off by itself while clients write);
//!   - the volumes with the definition's size and the replica's pool (none when the
//!     replica is diskless);
//!   - every node of the resource with its node id, `diskless` flag and replication
//!     address: the node's `default` interface (or its first) and its
//!     `Tandem/ReplicationPort` property (7000 when unset);
//!   - the secret from `DrbdOptions/Net/shared-secret`, and the initial generation and
//!     nodes from `Tandem/InitialGeneration` / `Tandem/InitialNodes` while they are set.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use crate::cluster::Cluster;
use crate::error::{ModelError, ObjectKind};
use crate::objects::{DEFAULT_NET_INTERFACE, Node, ResourceDefinition, ResourceFlag};
use crate::options::{self, AfterSb0Pri, OnNoQuorum, Protocol, Quorum};
use crate::props::PropSource;
use crate::satellite::{
    DEFAULT_REPLICATION_PORT, DEFAULT_SATELLITE_PORT, DesiredNode, DesiredPool, DesiredResource,
    DesiredState, DesiredVolume, KEY_INITIAL_GENERATION, KEY_INITIAL_NODES, KEY_REPLICATION_PORT,
    KEY_SHARED_SECRET,
};

/// blockd's smallest resync rate limit, bytes/s.
pub const RESYNC_RATE_MIN_BYTES: u64 = 64 * 1024;
/// The digest blockd verifies with when `verify-alg` is unset.
pub const DEFAULT_VERIFY_ALG: &str = "crc32c";
/// Property namespace of the storage drivers, inherited by pools from node and controller.
const STOR_DRIVER_NS: &str = "StorDriver/";

/// Where the controller reaches the node's satellite, `host:port`: the interface the
/// controller uses for it (`is_active`, LINSTOR's `StltCon`), else `default`, else the
/// first one; its `satellite_port` or 3366. None for a node without interfaces.
pub fn satellite_address(node: &Node) -> Option<String> {
    let ni = node
        .net_interfaces
        .iter()
        .find(|n| n.is_active)
        .or_else(|| node.net_interface(DEFAULT_NET_INTERFACE))
        .or_else(|| node.net_interfaces.first())?;
    let port = ni.satellite_port.unwrap_or(DEFAULT_SATELLITE_PORT);
    Some(host_port(&ni.address, port))
}

/// `a.b.c.d:port` or `[v6]:port`; a malformed address is passed through as it is.
fn host_port(address: &str, port: u16) -> String {
    match address.trim().parse::<IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, port).to_string(),
        Err(_) => format!("{}:{port}", address.trim()),
    }
}

/// The node's blockd replication port (`Tandem/ReplicationPort`, default 7000).
pub fn replication_port(node: &Node) -> Result<u16, ModelError> {
    match node.props.get(KEY_REPLICATION_PORT) {
        None => Ok(DEFAULT_REPLICATION_PORT),
        Some(v) => options::parse_port(KEY_REPLICATION_PORT, v),
    }
}

/// `host:port` where the node's blockd listens for its peers.
pub fn replication_address(node: &Node) -> Result<String, ModelError> {
    let ni = node
        .net_interface(DEFAULT_NET_INTERFACE)
        .or_else(|| node.net_interfaces.first())
        .ok_or_else(|| {
            ModelError::invalid(
                "net_interfaces",
                format!(
                    "node '{}' has no network interface for replication",
                    node.name
                ),
                format!(
                    "give the node an interface: node interface create {} default IP",
                    node.name
                ),
            )
        })?;
    Ok(host_port(&ni.address, replication_port(node)?))
}

/// The node's pools that hold data, with their effective driver properties.
pub fn desired_pools(c: &Cluster, node: &Node) -> Vec<DesiredPool> {
    let inherited = |k: &String| k.starts_with(STOR_DRIVER_NS);
    node.storage_pools
        .values()
        .filter(|p| !p.provider_kind.is_diskless())
        .map(|p| {
            let mut props: BTreeMap<String, String> = c
                .controller_props()
                .iter()
                .chain(&node.props)
                .filter(|(k, _)| inherited(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            props.extend(p.props.iter().map(|(k, v)| (k.clone(), v.clone())));
            DesiredPool {
                name: p.storage_pool_name.clone(),
                provider_kind: p.provider_kind,
                props,
            }
        })
        .collect()
}

/// The whole desired state of `node`. Fails when the node does not exist or a
/// resource on it cannot be described (a broken option value, a node of the resource
/// without an interface).
pub fn desired_state(c: &Cluster, node: &str, generation: u64) -> Result<DesiredState, ModelError> {
    let n = c.node(node).ok_or_else(|| ModelError::NotFound {
        kind: ObjectKind::Node,
        name: node.to_owned(),
    })?;
    let mut resources = Vec::new();
    if n.node_type.runs_satellite() {
        for rd in c.resource_definitions() {
            if let Some(r) = rd.resource(&n.name)
                && !r.flags.contains(&ResourceFlag::Delete)
            {
                resources.push(desired_resource(c, rd, n)?);
            }
        }
    }
    Ok(DesiredState {
        generation,
        node: n.name.clone(),
        lost: false,
        pools: if n.node_type.runs_satellite() {
            desired_pools(c, n)
        } else {
            Vec::new()
        },
        resources,
    })
}

/// What a satellite is told for a node that was deleted or lost: remove everything.
pub fn lost_state(node: &str, pools: Vec<DesiredPool>, generation: u64) -> DesiredState {
    DesiredState {
        generation,
        node: node.to_owned(),
        lost: true,
        pools,
        resources: Vec::new(),
    }
}

fn desired_resource(
    c: &Cluster,
    rd: &ResourceDefinition,
    node: &Node,
) -> Result<DesiredResource, ModelError> {
    let own = rd
        .resource(&node.name)
        .ok_or_else(|| ModelError::NotFound {
            kind: ObjectKind::Resource,
            name: format!("{} on node {}", rd.name, node.name),
        })?;
    let o = c.resource_options(&rd.name, Some(&node.name))?;
    let rate_set = o
        .sources
        .iter()
        .any(|(k, s)| k == options::KEY_RESYNC_RATE && *s != PropSource::Default);
    let resync_rate = rate_set.then(|| {
        o.resync_rate_kib
            .saturating_mul(1024)
            .max(RESYNC_RATE_MIN_BYTES)
    });
    let volumes = own
        .volumes
        .values()
        .map(|v| DesiredVolume {
            number: v.volume_number,
            size_kib: rd
                .volume_definitions
                .get(&v.volume_number)
                .map_or(0, |vd| vd.size_kib),
            pool: (!own.is_diskless()).then(|| v.storage_pool_name.clone()),
        })
        .collect();
    let mut nodes = Vec::new();
    for r in rd
        .resources
        .values()
        .filter(|r| !r.flags.contains(&ResourceFlag::Delete))
    {
        let peer = c.node(&r.node_name).ok_or_else(|| ModelError::NotFound {
            kind: ObjectKind::Node,
            name: r.node_name.clone(),
        })?;
        nodes.push(DesiredNode {
            name: peer.name.clone(),
            id: r.node_id,
            address: replication_address(peer)?,
            diskless: r.is_diskless(),
        });
    }
    let initial_generation = rd
        .props
        .get(KEY_INITIAL_GENERATION)
        .map(|v| options::parse_generation(KEY_INITIAL_GENERATION, v))
        .transpose()?;
    let initial_nodes = match initial_generation {
        None => Vec::new(),
        Some(_) => rd
            .props
            .get(KEY_INITIAL_NODES)
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
    };
    Ok(DesiredResource {
        name: rd.name.clone(),
        secret: rd.props.get(KEY_SHARED_SECRET).cloned().unwrap_or_default(),
        protocol: match o.protocol {
            Protocol::C => "C",
            Protocol::A => "A",
        }
        .to_owned(),
        quorum: match o.quorum {
            Quorum::Majority => "majority",
            Quorum::Off => "off",
        }
        .to_owned(),
        on_no_quorum: match o.on_no_quorum {
            OnNoQuorum::IoError => "io-error",
            OnNoQuorum::SuspendIo => "suspend-io",
        }
        .to_owned(),
        allow_two_primaries: o.allow_two_primaries,
        split_brain: split_brain(c, rd)?,
        resync_rate,
        verify_alg: o
            .verify_alg
            .unwrap_or_else(|| DEFAULT_VERIFY_ALG.to_owned()),
        csums_alg: o.csums_alg,
        volumes,
        nodes,
        initial_generation,
        initial_nodes,
    })
}

/// blockd's `split-brain` for the resource, the same on every node, from the
/// effective `DrbdOptions/Net/after-sb-0pri` of each diskful replica (after-sb-1pri and
/// -2pri have no counterpart: a blockd split brain is always resolved with no primary):
///
/// - `disconnect`, `discard-zero-changes`, `discard-least-changes`,
///   `discard-younger-primary`, `discard-older-primary` set alike on every diskful
///   replica: the same word;
/// - `discard-local` on exactly one diskful replica and `discard-remote` on all others:
///   `discard-node-NAME` with that replica's node (its changes are discarded);
/// - anything else (values that differ between replicas): `disconnect`, and a human
///   decides
///   (`tandem local connect --discard-my-data`).
pub fn split_brain(c: &Cluster, rd: &ResourceDefinition) -> Result<String, ModelError> {
    let mut values = Vec::new();
    for r in rd
        .resources
        .values()
        .filter(|r| !r.is_diskless() && !r.flags.contains(&ResourceFlag::Delete))
    {
        let v = match c.effective_prop(&rd.name, Some(&r.node_name), options::KEY_AFTER_SB_0PRI)? {
            Some(e) => AfterSb0Pri::parse(options::KEY_AFTER_SB_0PRI, &e.value)?,
            None => AfterSb0Pri::Disconnect,
        };
        values.push((r.node_name.as_str(), v));
    }
    let disconnect = || Ok("disconnect".to_owned());
    let Some(&(_, first)) = values.first() else {
        return disconnect();
    };
    if values.iter().all(|(_, v)| *v == first)
        && matches!(
            first,
            AfterSb0Pri::DiscardZeroChanges
                | AfterSb0Pri::DiscardLeastChanges
                | AfterSb0Pri::DiscardYoungerPrimary
                | AfterSb0Pri::DiscardOlderPrimary
        )
    {
        return Ok(first.as_str().to_owned());
    }
    let locals: Vec<&str> = values
        .iter()
        .filter(|(_, v)| *v == AfterSb0Pri::DiscardLocal)
        .map(|(n, _)| *n)
        .collect();
    if let [loser] = locals.as_slice()
        && values
            .iter()
            .all(|(n, v)| n == loser || *v == AfterSb0Pri::DiscardRemote)
    {
        return Ok(format!("discard-node-{loser}"));
    }
    disconnect()
}

#[cfg(test)]
#[path = "desired_tests.rs"]
mod tests;
