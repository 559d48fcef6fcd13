//! The placer's guarantees, checked on random small clusters against a brute-force
//! search over every set of nodes.

use std::collections::BTreeSet;

use proptest::prelude::*;

use crate::cluster::{Cluster, NodeCreate, ResourceCreate, ResourceDefinitionCreate, Spawn};
use crate::cluster::{ResourceGroupCreate, StoragePoolCreate};
use crate::objects::{ProviderKind, SelectFilter};
use crate::options::Quorum;
use crate::props::Props;

const POOLS: [&str; 2] = ["pool_a", "pool_b"];

#[derive(Debug, Clone)]
struct NodeSpec {
    site: Option<u8>,
    rack: Option<u8>,
    /// Per pool name: absent, or (LVM?, free KiB or unreported).
    pools: [Option<(bool, Option<u64>)>; 2],
    hosts_other: bool,
}

#[derive(Debug, Clone)]
struct FilterSpec {
    place_count: u32,
    pool_list: Vec<usize>,
    same_site: bool,
    same_fixed: Option<u8>,
    diff_rack: bool,
    diff_site: bool,
    not_with: bool,
    not_with_regex: bool,
    diskless_on_remaining: bool,
    size: u64,
}

fn node_spec() -> impl Strategy<Value = NodeSpec> {
    let pool = proptest::option::weighted(
        0.75,
        (any::<bool>(), proptest::option::weighted(0.8, 0u64..1000)),
    );
    (
        proptest::option::of(0u8..3),
        proptest::option::of(0u8..2),
        [pool.clone(), pool],
        proptest::bool::weighted(0.2),
    )
        .prop_map(|(site, rack, pools, hosts_other)| NodeSpec {
            site,
            rack,
            pools,
            hosts_other,
        })
}

fn filter_spec() -> impl Strategy<Value = FilterSpec> {
    (
        1u32..=4,
        proptest::sample::subsequence(vec![0usize, 1], 0..=2),
        proptest::bool::weighted(0.3),
        proptest::option::weighted(0.2, 0u8..3),
        proptest::bool::weighted(0.3),
        proptest::bool::weighted(0.3),
        proptest::bool::weighted(0.2),
        proptest::bool::weighted(0.2),
        any::<bool>(),
        1u64..800,
    )
        .prop_map(
            |(
                place_count,
                pool_list,
                same_site,
                same_fixed,
                diff_rack,
                diff_site,
                not_with,
                not_with_regex,
                diskless_on_remaining,
                size,
            )| FilterSpec {
                place_count,
                pool_list,
                same_site,
                same_fixed,
                diff_rack,
                diff_site,
                not_with,
                not_with_regex,
                diskless_on_remaining,
                size,
            },
        )
}

fn node_name(i: usize) -> String {
    format!("node{i}")
}

fn build(nodes: &[NodeSpec]) -> Cluster {
    let mut c = Cluster::new();
    c.create_resource_definition(ResourceDefinitionCreate {
        name: "other".into(),
        ..Default::default()
    })
    .unwrap();
    for (i, n) in nodes.iter().enumerate() {
        let mut props = Props::new();
        if let Some(s) = n.site {
            props.insert("Aux/site".into(), format!("s{s}"));
        }
        if let Some(r) = n.rack {
            props.insert("Aux/rack".into(), format!("r{r}"));
        }
        let name = node_name(i);
        c.create_node(NodeCreate {
            props,
            ..NodeCreate::satellite(&name, &format!("10.0.0.{}", i + 1))
        })
        .unwrap();
        for (p, spec) in POOLS.iter().zip(&n.pools) {
            if let Some((lvm, free)) = spec {
                let kind = if *lvm {
                    ProviderKind::Lvm
                } else {
                    ProviderKind::FileThin
                };
                c.create_storage_pool(&name, StoragePoolCreate::new(p, kind))
                    .unwrap();
                if let Some(f) = free {
                    c.report_storage_pool_capacity(&name, p, *f, 1000).unwrap();
                }
            }
        }
        if n.hosts_other {
            c.create_resource(ResourceCreate {
                resource: "other".into(),
                node: name,
                diskless: true,
                ..Default::default()
            })
            .unwrap();
        }
    }
    c
}

fn filter(f: &FilterSpec) -> SelectFilter {
    let mut same = vec![];
    if f.same_site {
        same.push("Aux/site".to_owned());
    }
    if let Some(s) = f.same_fixed {
        same.push(format!("Aux/site=s{s}"));
    }
    let mut diff = vec![];
    if f.diff_rack {
        diff.push("Aux/rack".to_owned());
    }
    if f.diff_site {
        diff.push("Aux/site".to_owned());
    }
    SelectFilter {
        place_count: Some(f.place_count),
        storage_pool_list: f.pool_list.iter().map(|&i| POOLS[i].to_owned()).collect(),
        replicas_on_same: same,
        replicas_on_different: diff,
        not_place_with_rsc: if f.not_with {
            vec!["OTHER".into()]
        } else {
            vec![]
        },
        not_place_with_rsc_regex: f.not_with_regex.then(|| "^oth".to_owned()),
        diskless_on_remaining: Some(f.diskless_on_remaining),
        ..SelectFilter::default()
    }
}

/// Whether node `i` may hold a diskful replica, ignoring the other replicas.
fn node_fits(n: &NodeSpec, f: &FilterSpec) -> bool {
    let pool_ok = POOLS.iter().enumerate().any(|(pi, _)| {
        (f.pool_list.is_empty() || f.pool_list.contains(&pi))
            && n.pools[pi].is_some_and(|(_, free)| free.is_none_or(|fr| fr >= f.size))
    });
    let same_ok =
        (!f.same_site || n.site.is_some()) && f.same_fixed.is_none_or(|s| n.site == Some(s));
    pool_ok && same_ok && !((f.not_with || f.not_with_regex) && n.hosts_other)
}

fn set_ok(nodes: &[NodeSpec], set: &[usize], f: &FilterSpec) -> bool {
    let all_same = |vals: Vec<Option<u8>>| vals.windows(2).all(|w| w[0] == w[1]);
    let distinct = |vals: Vec<Option<u8>>| {
        let present: Vec<u8> = vals.into_iter().flatten().collect();
        present.iter().collect::<BTreeSet<_>>().len() == present.len()
    };
    set.iter().all(|&i| node_fits(&nodes[i], f))
        && (!f.same_site || all_same(set.iter().map(|&i| nodes[i].site).collect()))
        && (!f.diff_rack || distinct(set.iter().map(|&i| nodes[i].rack).collect()))
        && (!f.diff_site || distinct(set.iter().map(|&i| nodes[i].site).collect()))
}

/// Every subset of `k` of `0..n`, by recursion.
fn exists_valid(nodes: &[NodeSpec], f: &FilterSpec, start: usize, set: &mut Vec<usize>) -> bool {
    if set.len() == f.place_count as usize {
        return set_ok(nodes, set, f);
    }
    for i in start..nodes.len() {
        set.push(i);
        if exists_valid(nodes, f, i + 1, set) {
            return true;
        }
        set.pop();
    }
    false
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn placer_guarantees(
        nodes in proptest::collection::vec(node_spec(), 1..=6),
        fs in filter_spec(),
    ) {
        let mut c = build(&nodes);
        c.create_resource_group(ResourceGroupCreate {
            name: "gg".into(),
            select_filter: filter(&fs),
            ..Default::default()
        }).unwrap();
        let before = c.clone();
        let possible = exists_valid(&nodes, &fs, 0, &mut vec![]);
        let res = c.spawn("gg", Spawn {
            resource_definition_name: "res".into(),
            volume_sizes: vec![fs.size],
            partial: true,
            ..Spawn::default()
        });
        // Failure iff no valid placement exists; a failure changes nothing.
        prop_assert_eq!(res.is_ok(), possible, "{:?}", res);
        if res.is_err() {
            prop_assert_eq!(&c, &before);
            return Ok(());
        }
        let rd = c.resource_definition("res").unwrap();
        let idx = |name: &str| nodes.iter().enumerate().position(|(i, _)| node_name(i) == name).unwrap();
        let diskful: Vec<usize> = rd.resources.values().filter(|r| !r.is_diskless()).map(|r| idx(&r.node_name)).collect();
        let tbs: Vec<usize> = rd.resources.values().filter(|r| r.is_tiebreaker()).map(|r| idx(&r.node_name)).collect();

        // Diskful count is the place count, on distinct nodes (one resource per node
        // key, and node ids unique).
        prop_assert_eq!(diskful.len(), fs.place_count as usize);
        let ids: BTreeSet<u8> = rd.resources.values().map(|r| r.node_id).collect();
        prop_assert_eq!(ids.len(), rd.resources.len());
        let names: BTreeSet<String> = rd.resources.values().map(|r| r.node_name.to_ascii_uppercase()).collect();
        prop_assert_eq!(names.len(), rd.resources.len());

        // Each diskful replica sits in a listed pool with room (or unreported).
        for r in rd.resources.values().filter(|r| !r.is_diskless()) {
            let pool = c.storage_pool(&r.node_name, r.storage_pool().unwrap()).unwrap();
            prop_assert!(!pool.provider_kind.is_diskless());
            prop_assert!(fs.pool_list.is_empty() || fs.pool_list.iter().any(|&i| POOLS[i] == pool.storage_pool_name));
            prop_assert!(pool.free_capacity.is_none_or(|f| f >= fs.size));
        }
        // The constraints hold, as the brute force defines them.
        prop_assert!(set_ok(&nodes, &diskful, &fs), "{:?}", diskful);

        // A tiebreaker iff the diskful count is even and a node is left for it.
        let even = fs.place_count >= 2 && fs.place_count % 2 == 0;
        let spare = nodes.len() > fs.place_count as usize;
        prop_assert_eq!(tbs.len(), usize::from(even && spare));
        // Diskless on remaining: every other node has a diskless replica.
        if fs.diskless_on_remaining {
            prop_assert_eq!(rd.resources.len(), nodes.len());
        } else {
            prop_assert_eq!(rd.resources.len(), diskful.len() + tbs.len());
        }
        // Quorum defaults to majority exactly when a tiebreaker or 3+ diskful exist.
        let q = c.resource_options("res", None).unwrap().quorum;
        prop_assert_eq!(q == Quorum::Majority, !tbs.is_empty() || diskful.len() >= 3);
    }
}

#[test]
fn search_prefers_free_space_but_finds_constrained_sets() {
    // The two emptiest pools share a rack; replicas-on-different must skip one.
    let mk = |rack: u8, free: u64| NodeSpec {
        site: Some(0),
        rack: Some(rack),
        pools: [Some((true, Some(free))), None],
        hosts_other: false,
    };
    let nodes = vec![mk(0, 900), mk(0, 800), mk(1, 100)];
    let mut c = build(&nodes);
    let fs = FilterSpec {
        place_count: 2,
        pool_list: vec![],
        same_site: false,
        same_fixed: None,
        diff_rack: true,
        diff_site: false,
        not_with: false,
        not_with_regex: false,
        diskless_on_remaining: false,
        size: 50,
    };
    c.create_resource_group(ResourceGroupCreate {
        name: "gg".into(),
        select_filter: filter(&fs),
        ..Default::default()
    })
    .unwrap();
    let out = c
        .spawn(
            "gg",
            Spawn {
                resource_definition_name: "rr".into(),
                volume_sizes: vec![50],
                partial: true,
                ..Spawn::default()
            },
        )
        .unwrap();
    let mut picked: Vec<_> = out
        .placement
        .unwrap()
        .diskful
        .into_iter()
        .map(|d| d.node)
        .collect();
    picked.sort();
    assert_eq!(picked, ["node0", "node2"]);
    // Impossible constraints are named in the error.
    let mut c = build(&[mk(0, 900), mk(0, 800)]);
    c.create_resource_group(ResourceGroupCreate {
        name: "gg".into(),
        select_filter: filter(&fs),
        ..Default::default()
    })
    .unwrap();
    let e = c
        .spawn(
            "gg",
            Spawn {
                resource_definition_name: "rr".into(),
                volume_sizes: vec![50],
                partial: true,
                ..Spawn::default()
            },
        )
        .unwrap_err();
    assert!(e.to_string().contains("replicas-on-different"), "{e}");
}
