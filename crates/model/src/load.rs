//! Rebuilding a [`Cluster`] from stored objects. The controller's database holds each
//! top-level object (controller properties, nodes, resource groups, resource
//! definitions) on its own; [`Cluster::from_parts`] puts them together and checks every
//! rule the mutations keep, so a damaged or hand-edited database is refused with the
//! first broken rule instead of being served.

use std::collections::{BTreeMap, BTreeSet};

use crate::cluster::Cluster;
use crate::error::{ModelError, ObjectKind};
use crate::name::{self, key};
use crate::objects::{
    DEFAULT_RESOURCE_GROUP, NODE_ID_MAX, Node, ResourceDefinition, ResourceGroup,
};
use crate::props::{self, Props, PropsModify};

fn broken(what: impl Into<String>) -> ModelError {
    ModelError::invalid(
        "stored cluster",
        what,
        "the database does not hold a consistent cluster: restore a backup, or fix the \
         named object",
    )
}

fn check_props(p: &Props) -> Result<(), ModelError> {
    props::apply(
        &Props::new(),
        &PropsModify {
            override_props: p.clone(),
            ..PropsModify::default()
        },
    )
    .map(drop)
}

impl Cluster {
    /// The cluster made of these objects, or the first rule they break. The default
    /// resource group is added when it is missing (it always exists).
    pub fn from_parts(
        controller_props: Props,
        nodes: Vec<Node>,
        resource_groups: Vec<ResourceGroup>,
        resource_definitions: Vec<ResourceDefinition>,
    ) -> Result<Cluster, ModelError> {
        check_props(&controller_props)?;
        let mut node_map = BTreeMap::new();
        for n in nodes {
            name::check_node_name(&n.name)?;
            check_props(&n.props)?;
            for ni in &n.net_interfaces {
                ni.validate()?;
            }
            for (k, sp) in &n.storage_pools {
                name::check_storage_pool_name(&sp.storage_pool_name)?;
                if *k != key(&sp.storage_pool_name) || !sp.node_name.eq_ignore_ascii_case(&n.name) {
                    return Err(broken(format!(
                        "storage pool '{}' is filed under node '{}' but names node '{}'",
                        sp.storage_pool_name, n.name, sp.node_name
                    )));
                }
                check_props(&sp.props)?;
            }
            if node_map.insert(key(&n.name), n.clone()).is_some() {
                return Err(ModelError::exists(ObjectKind::Node, &n.name));
            }
        }
        let mut rg_map = BTreeMap::new();
        for g in resource_groups {
            name::check_resource_group_name(&g.name)?;
            g.select_filter.validate()?;
            check_props(&g.props)?;
            for (n, vg) in &g.volume_groups {
                if *n != vg.volume_number {
                    return Err(broken(format!(
                        "volume group {} of '{}' is filed as {n}",
                        vg.volume_number, g.name
                    )));
                }
                check_props(&vg.props)?;
            }
            if rg_map.insert(key(&g.name), g.clone()).is_some() {
                return Err(ModelError::exists(ObjectKind::ResourceGroup, &g.name));
            }
        }
        if let Some(g) = Cluster::new().resource_group(DEFAULT_RESOURCE_GROUP) {
            rg_map
                .entry(key(DEFAULT_RESOURCE_GROUP))
                .or_insert_with(|| g.clone());
        }
        let mut rd_map = BTreeMap::new();
        let mut ports = BTreeMap::new();
        for rd in resource_definitions {
            name::check_resource_name(&rd.name)?;
            check_props(&rd.props)?;
            if !rg_map.contains_key(&key(&rd.resource_group_name)) {
                return Err(broken(format!(
                    "resource definition '{}' belongs to the missing resource group '{}'",
                    rd.name, rd.resource_group_name
                )));
            }
            if let Some(other) = ports.insert(rd.port, rd.name.clone()) {
                return Err(broken(format!(
                    "TCP port {} is allocated to both '{other}' and '{}'",
                    rd.port, rd.name
                )));
            }
            for (n, vd) in &rd.volume_definitions {
                if *n != vd.volume_number || vd.size_kib == 0 {
                    return Err(broken(format!(
                        "volume definition {n} of '{}' is malformed",
                        rd.name
                    )));
                }
                check_props(&vd.props)?;
            }
            let vnrs: BTreeSet<u32> = rd.volume_definitions.keys().copied().collect();
            let mut ids = BTreeSet::new();
            for (nk, r) in &rd.resources {
                let node = node_map.get(nk).ok_or_else(|| {
                    broken(format!(
                        "resource '{}' is on the missing node '{}'",
                        rd.name, r.node_name
                    ))
                })?;
                if !r.name.eq_ignore_ascii_case(&rd.name)
                    || !r.node_name.eq_ignore_ascii_case(&node.name)
                {
                    return Err(broken(format!(
                        "resource '{}' on '{}' is filed under '{}' on '{}'",
                        r.name, r.node_name, rd.name, node.name
                    )));
                }
                if r.node_id > NODE_ID_MAX || !ids.insert(r.node_id) {
                    return Err(broken(format!(
                        "node id {} of resource '{}' on '{}' is out of range or taken twice",
                        r.node_id, rd.name, r.node_name
                    )));
                }
                let rv: BTreeSet<u32> = r.volumes.keys().copied().collect();
                if rv != vnrs {
                    return Err(broken(format!(
                        "resource '{}' on '{}' has volumes {rv:?} but its definition {vnrs:?}",
                        rd.name, r.node_name
                    )));
                }
                for v in r.volumes.values() {
                    let pool = node.storage_pool(&v.storage_pool_name).ok_or_else(|| {
                        broken(format!(
                            "volume {} of '{}' on '{}' is in the missing pool '{}'",
                            v.volume_number, rd.name, r.node_name, v.storage_pool_name
                        ))
                    })?;
                    if pool.provider_kind.is_diskless() != r.is_diskless() {
                        return Err(broken(format!(
                            "resource '{}' on '{}' and its pool '{}' disagree on being diskless",
                            rd.name, r.node_name, v.storage_pool_name
                        )));
                    }
                }
                check_props(&r.props)?;
            }
            if rd_map.insert(key(&rd.name), rd.clone()).is_some() {
                return Err(ModelError::exists(ObjectKind::ResourceDefinition, &rd.name));
            }
        }
        Ok(Cluster::assemble(
            controller_props,
            node_map,
            rg_map,
            rd_map,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{NodeCreate, ResourceGroupCreate, Spawn, StoragePoolCreate};
    use crate::objects::{ProviderKind, SelectFilter};

    fn sample() -> Cluster {
        let mut c = Cluster::new();
        for (i, n) in ["alpha", "bravo", "charlie"].iter().enumerate() {
            c.create_node(NodeCreate::satellite(n, &format!("10.0.0.{}", i + 1)))
                .unwrap();
            c.create_storage_pool(n, StoragePoolCreate::new("pool", ProviderKind::FileThin))
                .unwrap();
        }
        c.create_resource_group(ResourceGroupCreate {
            name: "grp".into(),
            select_filter: SelectFilter {
                place_count: Some(2),
                storage_pool_list: vec!["pool".into()],
                ..SelectFilter::default()
            },
            ..ResourceGroupCreate::default()
        })
        .unwrap();
        c.spawn(
            "grp",
            Spawn {
                resource_definition_name: "r1".into(),
                volume_sizes: vec![1024],
                partial: true,
                ..Spawn::default()
            },
        )
        .unwrap();
        c
    }

    fn parts(
        c: &Cluster,
    ) -> (
        Props,
        Vec<Node>,
        Vec<ResourceGroup>,
        Vec<ResourceDefinition>,
    ) {
        (
            c.controller_props().clone(),
            c.nodes().cloned().collect(),
            c.resource_groups().cloned().collect(),
            c.resource_definitions().cloned().collect(),
        )
    }

    #[test]
    fn parts_round_trip() {
        let c = sample();
        let (p, n, g, d) = parts(&c);
        assert_eq!(Cluster::from_parts(p, n, g, d).unwrap(), c);
    }

    #[test]
    fn missing_default_group_is_added() {
        let c = Cluster::from_parts(Props::new(), vec![], vec![], vec![]).unwrap();
        assert_eq!(c, Cluster::new());
    }

    #[test]
    fn broken_references_are_refused() {
        let c = sample();
        // A resource definition whose group is gone.
        let (p, n, _, d) = parts(&c);
        let e = Cluster::from_parts(p, n, vec![], d).unwrap_err();
        assert!(e.to_string().contains("missing resource group"), "{e}");
        // A resource whose node is gone.
        let (p, mut n, g, d) = parts(&c);
        let holder = d[0].resources.values().next().unwrap().node_name.clone();
        n.retain(|x| x.name != holder);
        let e = Cluster::from_parts(p, n, g, d).unwrap_err();
        assert!(e.to_string().contains("missing node"), "{e}");
        // A resource that lacks a volume of its definition (half an object).
        let (p, n, g, mut d) = parts(&c);
        d[0].resources.values_mut().next().unwrap().volumes.clear();
        let e = Cluster::from_parts(p, n, g, d).unwrap_err();
        assert!(e.to_string().contains("has volumes"), "{e}");
        // Two definitions on one port.
        let (p, n, g, mut d) = parts(&c);
        let mut twin = d[0].clone();
        twin.name = "r2".into();
        twin.resources.clear();
        d.push(twin);
        let e = Cluster::from_parts(p, n, g, d).unwrap_err();
        assert!(e.to_string().contains("TCP port"), "{e}");
    }
}
