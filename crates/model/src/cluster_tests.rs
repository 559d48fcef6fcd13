use super::*;
use crate::options::{OnNoQuorum, Protocol, Quorum};

const GIB: u64 = 1024 * 1024;

fn rg(name: &str, filter: SelectFilter) -> ResourceGroupCreate {
    ResourceGroupCreate {
        name: name.into(),
        select_filter: filter,
        ..ResourceGroupCreate::default()
    }
}

fn place(n: u32, dor: bool) -> SelectFilter {
    SelectFilter {
        place_count: Some(n),
        storage_pool_list: vec!["pool".into()],
        diskless_on_remaining: Some(dor),
        ..SelectFilter::default()
    }
}

/// `n` satellites, each with a ZFS_THIN pool "pool" of `free` KiB.
fn cluster(n: usize, free: u64) -> Cluster {
    let mut c = Cluster::new();
    for i in 1..=n {
        let name = format!("node{i}");
        c.create_node(NodeCreate::satellite(&name, &format!("10.0.0.{i}")))
            .unwrap();
        c.create_storage_pool(&name, StoragePoolCreate::new("pool", ProviderKind::ZfsThin))
            .unwrap();
        c.report_storage_pool_capacity(&name, "pool", free, 10 * free)
            .unwrap();
    }
    c
}

fn spawn(c: &mut Cluster, rg_name: &str, rd: &str, size: u64) -> Result<SpawnOutcome, ModelError> {
    c.spawn(
        rg_name,
        Spawn {
            resource_definition_name: rd.into(),
            volume_sizes: vec![size],
            partial: true,
            ..Spawn::default()
        },
    )
}

fn roles(c: &Cluster, rd: &str) -> (Vec<String>, Vec<String>, Vec<String>) {
    let rd = c.resource_definition(rd).unwrap();
    let mut diskful = vec![];
    let mut diskless = vec![];
    let mut tb = vec![];
    for r in rd.resources.values() {
        if r.is_tiebreaker() {
            tb.push(r.node_name.clone());
        } else if r.is_diskless() {
            diskless.push(r.node_name.clone());
        } else {
            diskful.push(r.node_name.clone());
        }
    }
    (diskful, diskless, tb)
}

#[test]
fn issue_acceptance_flow_two_diskful_and_a_tiebreaker() {
    // The sequence of the issue: three nodes, a pool on each, a group with place
    // count 2 and diskless-on-remaining, a volume group, spawn 1 GiB.
    let mut c = cluster(3, 100 * GIB);
    c.create_resource_group(rg("grp", place(2, true))).unwrap();
    c.create_volume_group("grp", VolumeGroupCreate::default())
        .unwrap();
    let out = c
        .spawn(
            "grp",
            Spawn {
                resource_definition_name: "vm-100-disk-0".into(),
                volume_sizes: vec![GIB],
                ..Spawn::default()
            },
        )
        .unwrap();
    assert_eq!(out.port, 7000);
    assert_eq!(out.volume_numbers, [0]);
    let (diskful, diskless, tb) = roles(&c, "vm-100-disk-0");
    assert_eq!(diskful.len(), 2);
    assert!(diskless.is_empty());
    assert_eq!(tb.len(), 1);
    let rd = c.resource_definition("VM-100-DISK-0").unwrap();
    let mut ids: Vec<u8> = rd.resources.values().map(|r| r.node_id).collect();
    ids.sort();
    assert_eq!(ids, [0, 1, 2]);
    for r in rd.resources.values() {
        let v = &r.volumes[&0];
        if r.is_diskless() {
            assert_eq!(v.storage_pool_name, DEFAULT_DISKLESS_POOL);
            assert_eq!(v.provider_kind, ProviderKind::Diskless);
        } else {
            assert_eq!(v.storage_pool_name, "pool");
            assert_eq!(v.provider_kind, ProviderKind::ZfsThin);
        }
    }
    let o = c.resource_options("vm-100-disk-0", Some("node1")).unwrap();
    assert_eq!(o.quorum, Quorum::Majority);
    assert_eq!(o.on_no_quorum, OnNoQuorum::IoError);
    // Nodes are OFFLINE until satellites exist: placed anyway, and said so.
    let notes = out.placement.unwrap().notes;
    assert!(notes.iter().any(|n| n.contains("Offline")), "{notes:?}");
}

#[test]
fn tiebreaker_only_for_an_even_count_with_a_spare_node() {
    let mut c = cluster(3, 100 * GIB);
    c.create_resource_group(rg("two", place(2, false))).unwrap();
    c.create_resource_group(rg("three", place(3, false)))
        .unwrap();
    spawn(&mut c, "two", "r2", GIB).unwrap();
    let (d, _, tb) = roles(&c, "r2");
    assert_eq!((d.len(), tb.len()), (2, 1));
    spawn(&mut c, "three", "r3", GIB).unwrap();
    let (d, _, tb) = roles(&c, "r3");
    assert_eq!((d.len(), tb.len()), (3, 0));
    assert_eq!(
        c.resource_options("r3", None).unwrap().quorum,
        Quorum::Majority
    );

    let mut small = cluster(2, 100 * GIB);
    small
        .create_resource_group(rg("two", place(2, false)))
        .unwrap();
    let out = spawn(&mut small, "two", "rr", GIB).unwrap();
    let (d, _, tb) = roles(&small, "rr");
    assert_eq!((d.len(), tb.len()), (2, 0));
    assert!(
        out.placement
            .unwrap()
            .notes
            .iter()
            .any(|n| n.contains("tiebreaker"))
    );
    // Two diskful without a tiebreaker: quorum would stop both halves, so it is off.
    assert_eq!(
        small.resource_options("rr", None).unwrap().quorum,
        Quorum::Off
    );
}

#[test]
fn auto_tiebreaker_can_be_switched_off() {
    let mut c = cluster(3, 100 * GIB);
    c.modify_controller_props(&PropsModify::set(options::KEY_AUTO_TIEBREAKER, "False"))
        .unwrap();
    c.create_resource_group(rg("two", place(2, false))).unwrap();
    spawn(&mut c, "two", "rr", GIB).unwrap();
    assert!(roles(&c, "rr").2.is_empty());
}

#[test]
fn placement_prefers_free_space_and_skips_full_pools() {
    let mut c = cluster(4, 10 * GIB);
    c.report_storage_pool_capacity("node3", "pool", 50 * GIB, 100 * GIB)
        .unwrap();
    c.report_storage_pool_capacity("node4", "pool", 40 * GIB, 100 * GIB)
        .unwrap();
    c.report_storage_pool_capacity("node1", "pool", GIB / 2, 100 * GIB)
        .unwrap();
    c.create_resource_group(rg("gg", place(2, false))).unwrap();
    spawn(&mut c, "gg", "rr", GIB).unwrap();
    let (mut d, _, tb) = roles(&c, "rr");
    d.sort();
    assert_eq!(d, ["node3", "node4"]);
    // The tiebreaker goes to a spare node; node1's pool is too full for data but a
    // diskless replica needs no space.
    assert_eq!(tb.len(), 1);
}

#[test]
fn impossible_placement_says_why_and_changes_nothing() {
    let mut c = cluster(1, 100 * GIB);
    c.create_node(NodeCreate::satellite("node2", "10.0.0.2"))
        .unwrap();
    c.create_resource_group(rg("gg", place(2, true))).unwrap();
    let before = c.clone();
    let e = spawn(&mut c, "gg", "rr", GIB).unwrap_err();
    assert_eq!(c, before);
    assert!(
        e.to_string().contains(
            "not enough nodes with storage pool 'pool' and 1048576 KiB free: need 2, have 1"
        ),
        "{e}"
    );
    assert!(
        e.correction()
            .contains("create storage pool 'pool' on more nodes"),
        "{}",
        e.correction()
    );
}

#[test]
fn spawn_without_place_count_creates_definitions_only() {
    let mut c = cluster(2, 100 * GIB);
    let out = spawn(&mut c, DEFAULT_RESOURCE_GROUP, "rr", GIB).unwrap();
    assert!(out.placement.is_none());
    assert!(out.notes[0].contains("no place count"));
    assert!(c.resource_definition("rr").unwrap().resources.is_empty());
    assert_eq!(
        c.resource_definition("rr").unwrap().volume_definitions[&0].size_kib,
        GIB
    );
}

#[test]
fn ports_lowest_free_from_the_controller_range_never_shared() {
    let mut c = Cluster::new();
    let rd = |n: &str, port: Option<u16>| ResourceDefinitionCreate {
        name: n.into(),
        port,
        ..ResourceDefinitionCreate::default()
    };
    assert_eq!(c.create_resource_definition(rd("a1", None)).unwrap(), 7000);
    assert_eq!(c.create_resource_definition(rd("a2", None)).unwrap(), 7001);
    assert_eq!(
        c.create_resource_definition(rd("a3", Some(7002))).unwrap(),
        7002
    );
    assert_eq!(c.create_resource_definition(rd("a4", None)).unwrap(), 7003);
    // An allocated port is never handed out again.
    let e = c
        .create_resource_definition(rd("a5", Some(7001)))
        .unwrap_err();
    assert!(e.to_string().contains("a2"), "{e}");
    c.delete_resource_definition("a2").unwrap();
    assert_eq!(c.create_resource_definition(rd("a5", None)).unwrap(), 7001);
    // The range comes from TcpPortAutoRange.
    c.modify_controller_props(&PropsModify::set("TcpPortAutoRange", "9000-9001"))
        .unwrap();
    assert_eq!(c.create_resource_definition(rd("b1", None)).unwrap(), 9000);
    assert_eq!(c.create_resource_definition(rd("b2", None)).unwrap(), 9001);
    let before = c.clone();
    let e = c.create_resource_definition(rd("b3", None)).unwrap_err();
    assert!(
        matches!(
            e,
            ModelError::Exhausted {
                lo: 9000,
                hi: 9001,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(c, before);
    assert!(
        c.modify_controller_props(&PropsModify::set("TcpPortAutoRange", "9001-9000"))
            .is_err()
    );
    // Moving a definition to a taken port is refused; to a free one works.
    assert!(
        c.modify_resource_definition(
            "b1",
            &ResourceDefinitionModify {
                port: Some(9001),
                ..Default::default()
            }
        )
        .is_err()
    );
    c.modify_resource_definition(
        "b1",
        &ResourceDefinitionModify {
            port: Some(9100),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(c.resource_definition("b1").unwrap().port, 9100);
}

#[test]
fn node_ids_lowest_free_per_resource() {
    let mut c = cluster(4, 100 * GIB);
    // No automatic tiebreaker here: it would take an id of its own.
    c.modify_controller_props(&PropsModify::set(options::KEY_AUTO_TIEBREAKER, "false"))
        .unwrap();
    c.create_resource_definition(ResourceDefinitionCreate {
        name: "rr".into(),
        ..Default::default()
    })
    .unwrap();
    let mk = |node: &str, id: Option<u8>| ResourceCreate {
        resource: "rr".into(),
        node: node.into(),
        storage_pool: Some("pool".into()),
        node_id: id,
        ..ResourceCreate::default()
    };
    c.create_resource(mk("node1", None)).unwrap();
    c.create_resource(mk("node2", Some(5))).unwrap();
    c.create_resource(mk("node3", None)).unwrap();
    let id = |c: &Cluster, n: &str| c.resource("rr", n).unwrap().node_id;
    assert_eq!(
        (id(&c, "node1"), id(&c, "node2"), id(&c, "node3")),
        (0, 5, 1)
    );
    let before = c.clone();
    assert!(c.create_resource(mk("node4", Some(5))).is_err());
    assert!(c.create_resource(mk("node4", Some(32))).is_err());
    assert_eq!(c, before);
    c.delete_resource("rr", "node1", false).unwrap();
    c.create_resource(mk("node4", None)).unwrap();
    assert_eq!(id(&c, "node4"), 0);
}

#[test]
fn properties_inherit_closest_first() {
    let mut c = cluster(2, 100 * GIB);
    c.create_resource_group(rg("gg", SelectFilter::default()))
        .unwrap();
    c.create_resource_definition(ResourceDefinitionCreate {
        name: "rr".into(),
        resource_group: Some("gg".into()),
        ..Default::default()
    })
    .unwrap();
    c.create_resource(ResourceCreate {
        resource: "rr".into(),
        node: "node1".into(),
        storage_pool: Some("pool".into()),
        ..Default::default()
    })
    .unwrap();
    let k = "Aux/x";
    let src = |c: &Cluster| c.effective_prop("rr", Some("node1"), k).unwrap();
    assert_eq!(src(&c), None);
    c.modify_controller_props(&PropsModify::set(k, "c"))
        .unwrap();
    assert_eq!(src(&c).unwrap().source, PropSource::Controller);
    c.modify_node(
        "node1",
        &NodeModify {
            props: PropsModify::set(k, "n"),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(src(&c).unwrap().source, PropSource::Node("node1".into()));
    c.modify_resource_group(
        "gg",
        &ResourceGroupModify {
            props: PropsModify::set(k, "gg"),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(
        src(&c).unwrap().source,
        PropSource::ResourceGroup("gg".into())
    );
    c.modify_resource_definition(
        "rr",
        &ResourceDefinitionModify {
            props: PropsModify::set(k, "rd"),
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(src(&c).unwrap().value, "rd");
    c.modify_resource("rr", "node1", &PropsModify::set(k, "rr"))
        .unwrap();
    let e = src(&c).unwrap();
    assert_eq!(
        (e.value.as_str(), e.source),
        ("rr", PropSource::Resource("node1".into()))
    );
    // Without a node: the definition's view (no resource, no node level).
    assert_eq!(
        c.effective_prop("rr", None, k).unwrap().unwrap().value,
        "rd"
    );
    // Deleting at the closest level uncovers the next one.
    c.modify_resource(
        "rr",
        "node1",
        &PropsModify {
            delete_props: vec![k.into()],
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(src(&c).unwrap().value, "rd");
    assert_eq!(
        c.effective_prop("rr", Some("node2"), k)
            .unwrap()
            .unwrap()
            .value,
        "rd"
    );
}

#[test]
fn drbd_options_come_from_the_chain() {
    let mut c = cluster(3, 100 * GIB);
    c.create_resource_group(rg("gg", place(3, false))).unwrap();
    c.modify_resource_group(
        "gg",
        &ResourceGroupModify {
            props: PropsModify {
                override_props: [
                    (options::KEY_PROTOCOL.to_owned(), "A".to_owned()),
                    (options::KEY_RESYNC_RATE.to_owned(), "40M".to_owned()),
                ]
                .into(),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .unwrap();
    spawn(&mut c, "gg", "rr", GIB).unwrap();
    let o = c.resource_options("rr", Some("node2")).unwrap();
    assert_eq!(o.protocol, Protocol::A);
    assert_eq!(o.resync_rate_kib, 40 * 1024);
    assert!(o.sources.contains(&(
        options::KEY_PROTOCOL.to_owned(),
        PropSource::ResourceGroup("gg".into())
    )));
    c.modify_resource("rr", "node2", &PropsModify::set(options::KEY_PROTOCOL, "C"))
        .unwrap();
    assert_eq!(
        c.resource_options("rr", Some("node2")).unwrap().protocol,
        Protocol::C
    );
    assert_eq!(
        c.resource_options("rr", Some("node1")).unwrap().protocol,
        Protocol::A
    );
    // A value tandem cannot honour is refused when set, anywhere.
    let before = c.clone();
    let e = c
        .modify_resource_definition(
            "rr",
            &ResourceDefinitionModify {
                props: PropsModify::set(options::KEY_QUORUM, "2"),
                ..Default::default()
            },
        )
        .unwrap_err();
    assert!(
        e.correction().contains("majority or off"),
        "{}",
        e.correction()
    );
    assert_eq!(c, before);
}

#[test]
fn bad_input_changes_nothing() {
    let mut c = cluster(2, 100 * GIB);
    c.create_resource_group(rg("gg", place(2, false))).unwrap();
    c.create_volume_group("gg", VolumeGroupCreate::default())
        .unwrap();
    c.spawn(
        "gg",
        Spawn {
            resource_definition_name: "used".into(),
            volume_sizes: vec![GIB],
            ..Spawn::default()
        },
    )
    .unwrap();
    c.create_resource_definition(ResourceDefinitionCreate {
        name: "x1".into(),
        ..Default::default()
    })
    .unwrap();
    c.create_node(NodeCreate {
        node_type: NodeType::Controller,
        ..NodeCreate::satellite("ctrl", "10.0.0.99")
    })
    .unwrap();
    c.create_node(NodeCreate::satellite("bare", "10.0.0.98"))
        .unwrap();
    c.delete_storage_pool("bare", DEFAULT_DISKLESS_POOL)
        .unwrap();
    type Op = Box<dyn Fn(&mut Cluster) -> Result<(), ModelError>>;
    let ops: Vec<(&str, Op)> = vec![
        (
            "bad node name",
            Box::new(|c| c.create_node(NodeCreate::satellite("bad_name", "10.0.0.9"))),
        ),
        (
            "duplicate node, other case",
            Box::new(|c| c.create_node(NodeCreate::satellite("NODE1", "10.0.0.9"))),
        ),
        (
            "no interface",
            Box::new(|c| {
                let mut n = NodeCreate::satellite("node9", "10.0.0.9");
                n.net_interfaces.clear();
                c.create_node(n)
            }),
        ),
        (
            "host name as address",
            Box::new(|c| c.create_node(NodeCreate::satellite("node9", "node9.lan"))),
        ),
        (
            "bad node prop",
            Box::new(|c| {
                let mut n = NodeCreate::satellite("node9", "10.0.0.9");
                n.props.insert("Aux//x".into(), "1".into());
                c.create_node(n)
            }),
        ),
        (
            "pool on unknown node",
            Box::new(|c| {
                c.create_storage_pool("node9", StoragePoolCreate::new("pool", ProviderKind::Lvm))
            }),
        ),
        (
            "duplicate pool",
            Box::new(|c| {
                c.create_storage_pool("node1", StoragePoolCreate::new("POOL", ProviderKind::Lvm))
            }),
        ),
        (
            "short pool name",
            Box::new(|c| {
                c.create_storage_pool("node1", StoragePoolCreate::new("p", ProviderKind::Lvm))
            }),
        ),
        (
            "pool with storage named like the default diskless pool",
            Box::new(|c| {
                c.create_storage_pool(
                    "bare",
                    StoragePoolCreate::new(DEFAULT_DISKLESS_POOL, ProviderKind::Lvm),
                )
            }),
        ),
        (
            "bad regex",
            Box::new(|c| {
                c.create_resource_group(rg(
                    "g2",
                    SelectFilter {
                        not_place_with_rsc_regex: Some("[".into()),
                        ..SelectFilter::default()
                    },
                ))
            }),
        ),
        (
            "duplicate group",
            Box::new(|c| c.create_resource_group(rg("G", SelectFilter::default()))),
        ),
        (
            "place count 0",
            Box::new(|c| {
                c.modify_resource_group(
                    "gg",
                    &ResourceGroupModify {
                        select_filter: Some(SelectFilter {
                            place_count: Some(0),
                            ..SelectFilter::default()
                        }),
                        props: PropsModify::set("Aux/ok", "1"),
                        ..Default::default()
                    },
                )
            }),
        ),
        (
            "delete group in use",
            Box::new(|c| c.delete_resource_group("gg")),
        ),
        (
            "delete default group",
            Box::new(|c| c.delete_resource_group("dfltrscgrp")),
        ),
        (
            "spawn too many",
            Box::new(|c| {
                c.spawn(
                    "gg",
                    Spawn {
                        resource_definition_name: "new".into(),
                        volume_sizes: vec![GIB],
                        select_filter: SelectFilter {
                            place_count: Some(3),
                            ..SelectFilter::default()
                        },
                        ..Spawn::default()
                    },
                )
                .map(drop)
            }),
        ),
        (
            "spawn too big",
            Box::new(|c| {
                c.spawn(
                    "gg",
                    Spawn {
                        resource_definition_name: "new".into(),
                        volume_sizes: vec![1000 * GIB],
                        ..Spawn::default()
                    },
                )
                .map(drop)
            }),
        ),
        (
            "spawn sizes mismatch",
            Box::new(|c| {
                c.spawn(
                    "gg",
                    Spawn {
                        resource_definition_name: "new".into(),
                        volume_sizes: vec![GIB, GIB],
                        ..Spawn::default()
                    },
                )
                .map(drop)
            }),
        ),
        (
            "spawn zero size",
            Box::new(|c| {
                c.spawn(
                    "gg",
                    Spawn {
                        resource_definition_name: "new".into(),
                        volume_sizes: vec![0],
                        ..Spawn::default()
                    },
                )
                .map(drop)
            }),
        ),
        (
            "spawn existing",
            Box::new(|c| {
                c.spawn(
                    "gg",
                    Spawn {
                        resource_definition_name: "USED".into(),
                        volume_sizes: vec![GIB],
                        ..Spawn::default()
                    },
                )
                .map(drop)
            }),
        ),
        (
            "spawn reserved name",
            Box::new(|c| {
                c.spawn(
                    "gg",
                    Spawn {
                        resource_definition_name: "all".into(),
                        volume_sizes: vec![GIB],
                        ..Spawn::default()
                    },
                )
                .map(drop)
            }),
        ),
        (
            "spawn bad DrbdOptions",
            Box::new(|c| {
                c.spawn(
                    "gg",
                    Spawn {
                        resource_definition_name: "new".into(),
                        volume_sizes: vec![GIB],
                        resource_definition_props: [(
                            options::KEY_ON_NO_QUORUM.to_owned(),
                            "panic".to_owned(),
                        )]
                        .into(),
                        ..Spawn::default()
                    },
                )
                .map(drop)
            }),
        ),
        (
            "delete node with resources",
            Box::new(|c| c.delete_node("node1")),
        ),
        (
            "delete pool in use",
            Box::new(|c| c.delete_storage_pool("node1", "pool")),
        ),
        (
            "shrink",
            Box::new(|c| c.resize_volume_definition("used", 0, GIB - 1)),
        ),
        (
            "resize missing volume",
            Box::new(|c| c.resize_volume_definition("used", 1, 2 * GIB)),
        ),
        (
            "resource twice",
            Box::new(|c| {
                c.create_resource(ResourceCreate {
                    resource: "used".into(),
                    node: "node1".into(),
                    storage_pool: Some("pool".into()),
                    ..Default::default()
                })
                .map(drop)
            }),
        ),
        (
            "diskful in diskless pool",
            Box::new(|c| {
                c.create_resource(ResourceCreate {
                    resource: "x1".into(),
                    node: "node1".into(),
                    storage_pool: Some(DEFAULT_DISKLESS_POOL.into()),
                    ..Default::default()
                })
                .map(drop)
            }),
        ),
        (
            "diskless in diskful pool",
            Box::new(|c| {
                c.create_resource(ResourceCreate {
                    resource: "x1".into(),
                    node: "node1".into(),
                    storage_pool: Some("pool".into()),
                    diskless: true,
                    ..Default::default()
                })
                .map(drop)
            }),
        ),
        (
            "resource in missing pool",
            Box::new(|c| {
                c.create_resource(ResourceCreate {
                    resource: "used".into(),
                    node: "node9".into(),
                    storage_pool: Some("pool".into()),
                    ..Default::default()
                })
                .map(drop)
            }),
        ),
        (
            "rd in missing group",
            Box::new(|c| {
                c.create_resource_definition(ResourceDefinitionCreate {
                    name: "x2".into(),
                    resource_group: Some("nogroup".into()),
                    ..Default::default()
                })
                .map(drop)
            }),
        ),
        (
            "rd peer slots",
            Box::new(|c| {
                c.create_resource_definition(ResourceDefinitionCreate {
                    name: "x2".into(),
                    peer_slots: Some(32),
                    ..Default::default()
                })
                .map(drop)
            }),
        ),
        (
            "vd number taken",
            Box::new(|c| {
                c.create_volume_definition(
                    "used",
                    VolumeDefinitionCreate {
                        volume_number: Some(0),
                        size_kib: GIB,
                        ..Default::default()
                    },
                )
                .map(drop)
            }),
        ),
        (
            "deactivate the active interface",
            Box::new(|c| {
                c.modify_net_interface(
                    "node1",
                    "default",
                    &NetInterfaceModify {
                        is_active: Some(false),
                        ..Default::default()
                    },
                )
            }),
        ),
        (
            "delete the active interface",
            Box::new(|c| c.delete_net_interface("node1", "default")),
        ),
        (
            "controller node gets a pool",
            Box::new(|c| {
                c.create_storage_pool("ctrl", StoragePoolCreate::new("pool", ProviderKind::File))
            }),
        ),
        (
            "satellite with resources becomes controller",
            Box::new(|c| {
                c.modify_node(
                    "node1",
                    &NodeModify {
                        node_type: Some(NodeType::Controller),
                        ..Default::default()
                    },
                )
            }),
        ),
    ];
    for (what, op) in ops {
        let mut work = c.clone();
        let e = op(&mut work).expect_err(what);
        assert!(!e.correction().is_empty(), "{what}: no correction");
        assert!(!e.cause().is_empty(), "{what}: no cause");
        assert_eq!(work, c, "{what}: changed the cluster");
    }
}

#[test]
fn delete_keeps_or_moves_the_tiebreaker() {
    // 3 diskful on 3 nodes; deleting one with keep_tiebreaker leaves it as tiebreaker.
    let mut c = cluster(3, 100 * GIB);
    c.create_resource_group(rg("gg", place(3, false))).unwrap();
    spawn(&mut c, "gg", "rr", GIB).unwrap();
    let out = c.delete_resource("rr", "node3", true).unwrap();
    assert!(out.kept_as_tiebreaker);
    let r = c.resource("rr", "node3").unwrap();
    assert!(r.is_tiebreaker() && r.is_diskless());
    assert_eq!(r.volumes[&0].storage_pool_name, DEFAULT_DISKLESS_POOL);
    // Deleting a diskful one without keep: odd count, the tiebreaker goes too.
    let out = c.delete_resource("rr", "node2", false).unwrap();
    assert_eq!(out.tiebreaker_removed.as_deref(), Some("node3"));
    assert_eq!(roles(&c, "rr"), (vec!["node1".to_owned()], vec![], vec![]));

    // 3 diskful on 4 nodes; deleting one without keep adds a tiebreaker on the spare.
    let mut c = cluster(4, 100 * GIB);
    c.create_resource_group(rg("gg", place(3, false))).unwrap();
    spawn(&mut c, "gg", "rr", GIB).unwrap();
    let (d, _, _) = roles(&c, "rr");
    let victim = d[0].clone();
    let out = c.delete_resource("rr", &victim, false).unwrap();
    let tb = out.tiebreaker_added.unwrap();
    assert_ne!(tb, victim);
    assert!(c.resource("rr", &tb).unwrap().is_tiebreaker());
    // Adding a diskful replica by hand makes the count odd: the tiebreaker goes.
    let spare = c
        .nodes()
        .map(|n| n.name.clone())
        .find(|n| c.resource("rr", n).is_none())
        .unwrap();
    let out = c
        .create_resource(ResourceCreate {
            resource: "rr".into(),
            node: spare,
            storage_pool: Some("pool".into()),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(out.tiebreaker_removed, Some(tb));
}

#[test]
fn autoplace_adds_to_existing_replicas() {
    let mut c = cluster(4, 100 * GIB);
    c.create_resource_group(rg("gg", place(2, false))).unwrap();
    spawn(&mut c, "gg", "rr", GIB).unwrap();
    let (d2, _, tb) = roles(&c, "rr");
    assert_eq!((d2.len(), tb.len()), (2, 1));
    let p = c
        .autoplace(
            "rr",
            &SelectFilter {
                place_count: Some(3),
                ..SelectFilter::default()
            },
        )
        .unwrap();
    assert_eq!(p.diskful.len(), 1);
    assert_eq!(p.remove_tiebreaker, tb.first().cloned());
    let (d3, _, tb) = roles(&c, "rr");
    assert_eq!((d3.len(), tb.len()), (3, 0));
    // Already at the count: nothing to do.
    let p = c.autoplace("rr", &SelectFilter::default()).unwrap();
    assert!(p.diskful.is_empty() && p.diskless.is_empty());
}

#[test]
fn lost_node_takes_its_resources() {
    let mut c = cluster(4, 100 * GIB);
    c.create_resource_group(rg("gg", place(3, false))).unwrap();
    spawn(&mut c, "gg", "rr", GIB).unwrap();
    let (d, _, _) = roles(&c, "rr");
    assert!(c.delete_node(&d[0]).is_err());
    let out = c.lose_node(&d[0]).unwrap();
    assert_eq!(out.len(), 1);
    assert!(c.node(&d[0]).is_none());
    let (d2, _, tb) = roles(&c, "rr");
    assert_eq!((d2.len(), tb.len()), (2, 1));
}

#[test]
fn make_available_adds_a_client_or_a_disk() {
    let mut c = cluster(3, 100 * GIB);
    c.create_resource_group(rg("gg", place(1, false))).unwrap();
    spawn(&mut c, "gg", "rr", GIB).unwrap();
    let (d, _, _) = roles(&c, "rr");
    let other: Vec<String> = c
        .nodes()
        .map(|n| n.name.clone())
        .filter(|n| *n != d[0])
        .collect();
    c.make_available("rr", &other[0], false).unwrap();
    let r = c.resource("rr", &other[0]).unwrap();
    assert!(r.is_diskless());
    // Asking again is a no-op; asking for a disk gives it one. Two diskful: tiebreaker.
    let before = c.clone();
    c.make_available("rr", &other[0], false).unwrap();
    assert_eq!(c, before);
    c.make_available("rr", &other[0], true).unwrap();
    assert!(!c.resource("rr", &other[0]).unwrap().is_diskless());
    let (d, _, tb) = roles(&c, "rr");
    assert_eq!((d.len(), tb,), (2, vec![other[1].clone()]));
    // A definition without replicas gets a diskful one first.
    c.create_resource_definition(ResourceDefinitionCreate {
        name: "fresh".into(),
        resource_group: Some("gg".into()),
        ..Default::default()
    })
    .unwrap();
    c.make_available("fresh", "node1", false).unwrap();
    assert!(!c.resource("fresh", "node1").unwrap().is_diskless());
}

#[test]
fn volumes_follow_definitions() {
    let mut c = cluster(3, 100 * GIB);
    c.create_resource_group(rg("gg", place(2, false))).unwrap();
    spawn(&mut c, "gg", "rr", GIB).unwrap();
    let v = c
        .create_volume_definition(
            "rr",
            VolumeDefinitionCreate {
                size_kib: 2 * GIB,
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(v, 1);
    for r in c.resource_definition("rr").unwrap().resources.values() {
        assert_eq!(r.volumes.len(), 2);
        let pools: BTreeSet<_> = r.volumes.values().map(|v| &v.storage_pool_name).collect();
        assert_eq!(pools.len(), 1, "one pool per replica");
    }
    c.resize_volume_definition("rr", 1, 3 * GIB).unwrap();
    assert_eq!(
        c.resource_definition("rr").unwrap().volume_definitions[&1].size_kib,
        3 * GIB
    );
    c.delete_volume_definition("rr", 0).unwrap();
    for r in c.resource_definition("rr").unwrap().resources.values() {
        assert_eq!(r.volumes.keys().copied().collect::<Vec<_>>(), [1]);
    }
}

#[test]
fn names_compare_ignoring_case_and_keep_their_spelling() {
    let mut c = Cluster::new();
    c.create_node(NodeCreate::satellite("Alpha", "10.0.0.1"))
        .unwrap();
    assert!(matches!(
        c.create_node(NodeCreate::satellite("ALPHA", "10.0.0.2")),
        Err(ModelError::Exists {
            kind: ObjectKind::Node,
            ..
        })
    ));
    assert_eq!(c.node("alpha").unwrap().name, "Alpha");
    let n = c.node("alpha").unwrap();
    assert!(n.storage_pool("dfltdisklessstorpool").is_some());
    let ni = &n.net_interfaces[0];
    assert_eq!((ni.satellite_port, ni.is_active), (Some(3366), true));
    assert_eq!(n.connection_status, ConnectionStatus::Offline);
}

#[test]
fn serde_round_trip() {
    let mut c = cluster(3, 100 * GIB);
    c.create_resource_group(rg("gg", place(2, true))).unwrap();
    spawn(&mut c, "gg", "rr", GIB).unwrap();
    c.modify_controller_props(&PropsModify::set("Aux/x", "y"))
        .unwrap();
    let json = serde_json::to_string(&c).unwrap();
    let back: Cluster = serde_json::from_str(&json).unwrap();
    assert_eq!(back, c);
    assert!(json.contains("\"TIE_BREAKER\""), "{json}");
    assert!(json.contains("\"ZFS_THIN\""));
}
