use super::*;
use crate::cluster::{NodeCreate, ResourceGroupCreate, Spawn, StoragePoolCreate};
use crate::objects::{ProviderKind, SelectFilter};
use crate::props::PropsModify;

/// Three satellites with a FILE_THIN pool "pool" each, a group placing 2 diskful
/// replicas and a tiebreaker, and resource "vm" spawned (1 GiB).
fn spawned() -> Cluster {
    let mut c = Cluster::new();
    for i in 1..=3 {
        let name = format!("n{i}");
        c.create_node(NodeCreate::satellite(&name, &format!("10.0.0.{i}")))
            .unwrap();
        let mut sp = StoragePoolCreate::new("pool", ProviderKind::FileThin);
        sp.props
            .insert("StorDriver/FileDir".into(), format!("/var/lib/tandem/{i}"));
        c.create_storage_pool(&name, sp).unwrap();
    }
    c.create_resource_group(ResourceGroupCreate {
        name: "grp".into(),
        select_filter: SelectFilter {
            place_count: Some(2),
            storage_pool_list: vec!["pool".into()],
            diskless_on_remaining: Some(true),
            ..SelectFilter::default()
        },
        ..ResourceGroupCreate::default()
    })
    .unwrap();
    c.spawn(
        "grp",
        Spawn {
            resource_definition_name: "vm".into(),
            volume_sizes: vec![1024 * 1024],
            partial: true,
            ..Spawn::default()
        },
    )
    .unwrap();
    c.modify_resource_definition(
        "vm",
        &crate::ResourceDefinitionModify {
            props: PropsModify {
                override_props: [
                    (KEY_SHARED_SECRET.to_owned(), "s3cr3t-s3cr3t".to_owned()),
                    (
                        KEY_INITIAL_GENERATION.to_owned(),
                        "00000000000000ab".to_owned(),
                    ),
                    (KEY_INITIAL_NODES.to_owned(), "n1,n2".to_owned()),
                ]
                .into(),
                ..PropsModify::default()
            },
            ..Default::default()
        },
    )
    .unwrap();
    c
}

fn rd_prop(c: &mut Cluster, key: &str, value: &str) {
    c.modify_resource_definition(
        "vm",
        &crate::ResourceDefinitionModify {
            props: PropsModify::set(key, value),
            ..Default::default()
        },
    )
    .unwrap();
}

#[test]
fn spawned_resource_on_each_node() {
    let mut c = spawned();
    c.modify_node(
        "n2",
        &crate::NodeModify {
            props: PropsModify::set(KEY_REPLICATION_PORT, "7100"),
            ..Default::default()
        },
    )
    .unwrap();
    c.modify_controller_props(&PropsModify::set("StorDriver/Extra", "x"))
        .unwrap();
    let d = desired_state(&c, "N1", 42).unwrap();
    assert_eq!(d.generation, 42);
    assert_eq!(d.node, "n1");
    assert!(!d.lost);
    // The diskless pool is not there; the data pool with its props and the inherited one.
    assert_eq!(d.pools.len(), 1, "{:?}", d.pools);
    assert_eq!(d.pools[0].name, "pool");
    assert_eq!(d.pools[0].provider_kind, ProviderKind::FileThin);
    assert_eq!(d.pools[0].props["StorDriver/FileDir"], "/var/lib/tandem/1");
    assert_eq!(d.pools[0].props["StorDriver/Extra"], "x");
    assert_eq!(d.resources.len(), 1);
    let r = &d.resources[0];
    assert_eq!(r.name, "vm");
    assert_eq!(r.secret, "s3cr3t-s3cr3t");
    assert_eq!(r.protocol, "C");
    // A tiebreaker exists: auto quorum.
    assert_eq!(r.quorum, "majority");
    assert_eq!(r.on_no_quorum, "io-error");
    assert!(!r.allow_two_primaries);
    assert_eq!(r.split_brain, "disconnect");
    assert_eq!(r.resync_rate, None);
    assert_eq!(r.verify_alg, "crc32c");
    assert_eq!(r.volumes.len(), 1);
    assert_eq!(r.volumes[0].number, 0);
    assert_eq!(r.volumes[0].size_kib, 1024 * 1024);
    assert_eq!(r.volumes[0].pool.as_deref(), Some("pool"));
    let nodes: Vec<(&str, u8, &str, bool)> = r
        .nodes
        .iter()
        .map(|n| (n.name.as_str(), n.id, n.address.as_str(), n.diskless))
        .collect();
    assert_eq!(nodes.len(), 3);
    let tb = c.resource_definition("vm").unwrap().tiebreaker().unwrap();
    for (name, id, addr, diskless) in &nodes {
        let want_port = if *name == "n2" { 7100 } else { 7000 };
        assert_eq!(*addr, format!("10.0.0.{}:{want_port}", &name[1..]));
        assert_eq!(*diskless, *name == tb.node_name);
        assert_eq!(*id, c.resource("vm", name).unwrap().node_id);
    }
    assert_eq!(r.initial_generation, Some(0xab));
    assert_eq!(r.initial_nodes, ["n1", "n2"]);
    // The tiebreaker's volume has no pool; every node lists the same nodes.
    let t = desired_state(&c, &tb.node_name, 1).unwrap();
    assert_eq!(t.resources[0].volumes[0].pool, None);
    assert_eq!(t.resources[0].nodes, r.nodes);
}

#[test]
fn options_map_to_blockd_words() {
    let mut c = spawned();
    rd_prop(&mut c, options::KEY_PROTOCOL, "A");
    rd_prop(&mut c, options::KEY_QUORUM, "off");
    rd_prop(&mut c, options::KEY_ON_NO_QUORUM, "suspend-io");
    rd_prop(&mut c, options::KEY_RESYNC_RATE, "100M");
    rd_prop(&mut c, options::KEY_VERIFY_ALG, "crc32c");
    rd_prop(&mut c, options::KEY_CSUMS_ALG, "sha256");
    rd_prop(&mut c, options::KEY_AFTER_SB_0PRI, "discard-zero-changes");
    let r = &desired_state(&c, "n1", 1).unwrap().resources[0];
    assert_eq!(r.protocol, "A");
    assert_eq!(r.quorum, "off");
    assert_eq!(r.on_no_quorum, "suspend-io");
    assert_eq!(r.resync_rate, Some(100 * 1024 * 1024));
    assert_eq!(r.verify_alg, "crc32c");
    assert_eq!(r.csums_alg.as_deref(), Some("sha256"));
    assert_eq!(r.split_brain, "discard-zero-changes");
    // A rate below blockd's minimum is raised to it.
    rd_prop(&mut c, options::KEY_RESYNC_RATE, "1");
    let r = &desired_state(&c, "n1", 1).unwrap().resources[0];
    assert_eq!(r.resync_rate, Some(RESYNC_RATE_MIN_BYTES));
    rd_prop(&mut c, options::KEY_PROTOCOL, "C");
    rd_prop(&mut c, options::KEY_ALLOW_TWO_PRIMARIES, "yes");
    assert!(desired_state(&c, "n1", 1).unwrap().resources[0].allow_two_primaries);
}

#[test]
fn split_brain_mapping() {
    let mut c = spawned();
    let diskful: Vec<String> = {
        let rd = c.resource_definition("vm").unwrap();
        rd.resources
            .values()
            .filter(|r| !r.is_diskless())
            .map(|r| r.node_name.clone())
            .collect()
    };
    let set_on = |c: &mut Cluster, node: &str, v: &str| {
        c.modify_resource("vm", node, &PropsModify::set(options::KEY_AFTER_SB_0PRI, v))
            .unwrap();
    };
    let sb = |c: &Cluster| split_brain(c, c.resource_definition("vm").unwrap()).unwrap();
    rd_prop(&mut c, options::KEY_AFTER_SB_0PRI, "discard-least-changes");
    assert_eq!(sb(&c), "discard-least-changes");
    // Different values on the replicas: a human decides.
    set_on(&mut c, &diskful[0], "discard-zero-changes");
    assert_eq!(sb(&c), "disconnect");
    // One replica discards its own changes, the other the peer's.
    set_on(&mut c, &diskful[0], "discard-local");
    set_on(&mut c, &diskful[1], "discard-remote");
    assert_eq!(sb(&c), format!("discard-node-{}", diskful[0]));
    // Every node's file says the same.
    for n in ["n1", "n2", "n3"] {
        assert_eq!(
            desired_state(&c, n, 1).unwrap().resources[0].split_brain,
            format!("discard-node-{}", diskful[0])
        );
    }
    // Both discard their own: contradictory.
    set_on(&mut c, &diskful[1], "discard-local");
    assert_eq!(sb(&c), "disconnect");
    rd_prop(
        &mut c,
        options::KEY_AFTER_SB_0PRI,
        "discard-younger-primary",
    );
    set_on(&mut c, &diskful[0], "discard-younger-primary");
    set_on(&mut c, &diskful[1], "discard-younger-primary");
    assert_eq!(sb(&c), "discard-younger-primary");
    // Mixed between the replicas: a human decides.
    set_on(&mut c, &diskful[1], "discard-older-primary");
    assert_eq!(sb(&c), "disconnect");
}

#[test]
fn deleted_and_other_nodes_resources_are_not_desired() {
    let mut c = spawned();
    let tb = c
        .resource_definition("vm")
        .unwrap()
        .tiebreaker()
        .unwrap()
        .node_name
        .clone();
    c.delete_resource_definition("vm").unwrap();
    let d = desired_state(&c, &tb, 7).unwrap();
    assert!(d.resources.is_empty());
    assert_eq!(d.pools.len(), 1);
    assert!(matches!(
        desired_state(&c, "nope", 1),
        Err(ModelError::NotFound { .. })
    ));
    let l = lost_state("n9", d.pools.clone(), 9);
    assert!(l.lost && l.resources.is_empty() && l.generation == 9 && l.pools == d.pools);
}

#[test]
fn addresses() {
    let mut c = Cluster::new();
    c.create_node(NodeCreate::satellite("aa", "fd00::1"))
        .unwrap();
    let n = c.node("aa").unwrap();
    assert_eq!(satellite_address(n).unwrap(), "[fd00::1]:3366");
    assert_eq!(replication_address(n).unwrap(), "[fd00::1]:7000");
    c.create_net_interface(
        "aa",
        crate::NetInterface {
            name: "stlt".into(),
            address: "10.1.1.1".into(),
            satellite_port: Some(4000),
            satellite_encryption_type: None,
            is_active: true,
        },
    )
    .unwrap();
    let n = c.node("aa").unwrap();
    // The controller talks to the active interface; peers replicate over `default`.
    assert_eq!(satellite_address(n).unwrap(), "10.1.1.1:4000");
    assert_eq!(replication_address(n).unwrap(), "[fd00::1]:7000");
}

#[test]
fn satellite_props_are_checked_when_set() {
    let mut c = spawned();
    let set = |c: &mut Cluster, k: &str, v: &str| {
        c.modify_resource_definition(
            "vm",
            &crate::ResourceDefinitionModify {
                props: PropsModify::set(k, v),
                ..Default::default()
            },
        )
    };
    assert!(set(&mut c, KEY_INITIAL_GENERATION, "0").is_err());
    assert!(set(&mut c, KEY_INITIAL_GENERATION, "xyz").is_err());
    assert!(set(&mut c, KEY_INITIAL_GENERATION, "11112222333344445").is_err());
    assert!(set(&mut c, KEY_INITIAL_GENERATION, "0123456789abcdef").is_ok());
    assert!(set(&mut c, KEY_SHARED_SECRET, "short").is_err());
    assert!(set(&mut c, KEY_SHARED_SECRET, "long enough").is_err());
    assert!(set(&mut c, KEY_SHARED_SECRET, "longenough").is_ok());
    let np = |c: &mut Cluster, v: &str| {
        c.modify_node(
            "n1",
            &crate::NodeModify {
                props: PropsModify::set(KEY_REPLICATION_PORT, v),
                ..Default::default()
            },
        )
    };
    assert!(np(&mut c, "0").is_err());
    assert!(np(&mut c, "70000").is_err());
    assert!(np(&mut c, "7001").is_ok());
}

#[test]
fn reports_are_cleared() {
    let mut c = spawned();
    c.report_storage_pool_capacity("n1", "pool", 5, 10).unwrap();
    c.set_connection_status("n1", crate::ConnectionStatus::Online)
        .unwrap();
    c.clear_reports();
    let n = c.node("n1").unwrap();
    assert_eq!(n.connection_status, crate::ConnectionStatus::Offline);
    assert_eq!(n.storage_pool("pool").unwrap().free_capacity, None);
    let dl = n.storage_pool(crate::DEFAULT_DISKLESS_POOL).unwrap();
    assert_eq!(dl.free_capacity, Some(crate::cluster::DISKLESS_CAPACITY));
}
