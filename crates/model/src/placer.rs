//! The auto-placer: which nodes get the diskful replicas of a resource, which get
//! diskless ones, and where the quorum tiebreaker goes.
//!
//! LINSTOR's pipeline (linstor.md §1.10: filter storage pools, rate them, select a
//! group under the same/different constraints) with one scoring strategy, free space
//! (LINSTOR's default weight, `MaxFreeSpace` 1.0). The selection is an exhaustive
//! depth-first search over the candidates in score order, so it finds a placement
//! whenever one exists, and the one it finds prefers the emptiest pools.
//!
//! Deliberate differences from LINSTOR, for the controller before satellites exist:
//! - OFFLINE nodes are placed on (LINSTOR skips them): until satellites run every node
//!   is OFFLINE; the replica is desired state that the satellite creates when it
//!   connects. The placement notes say so.
//! - A pool that has not reported its capacity is eligible, ranked after every pool
//!   that has; the placement notes say so. Thin pools are not over-subscribed.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::cluster::Cluster;
use crate::error::ModelError;
use crate::name;
use crate::objects::{
    ConnectionStatus, DEFAULT_DISKLESS_POOL, NODE_ID_MAX, Node, ProviderKind, ResourceDefinition,
    SelectFilter, StoragePool,
};
use crate::options::{self, KEY_AUTOPLACE_TARGET};

/// Upper bound on search steps; far beyond any real cluster (32 replicas at most).
const SEARCH_BUDGET: u64 = 5_000_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskfulPick {
    pub node: String,
    pub storage_pool: String,
    pub provider_kind: ProviderKind,
    /// The pool's free space when chosen; None if it has not reported yet.
    pub free_capacity: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DisklessPick {
    pub node: String,
    pub storage_pool: String,
    pub tie_breaker: bool,
}

/// The replicas to add (and tiebreaker changes) for one resource.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub diskful: Vec<DiskfulPick>,
    pub diskless: Vec<DisklessPick>,
    /// An existing diskless replica (node name) that becomes the tiebreaker.
    pub promote_tiebreaker: Option<String>,
    /// The existing tiebreaker (node name) that is no longer needed and goes.
    pub remove_tiebreaker: Option<String>,
    /// Things the user should know (OFFLINE nodes, unknown capacity, no tiebreaker).
    pub notes: Vec<String>,
}

/// What a placement starts from.
pub(crate) struct PlaceInput<'a> {
    pub resource: &'a str,
    pub filter: &'a SelectFilter,
    /// What each diskful replica needs in its pool (sum of the volume sizes).
    pub size_kib: u64,
    /// The resource definition if it exists (its replicas count and stay).
    pub existing: Option<&'a ResourceDefinition>,
    /// `DrbdOptions/auto-add-quorum-tiebreaker` is not False and quorum is not off.
    pub tiebreaker_allowed: bool,
}

/// Whether `node` may receive new replicas from the auto-placer at all.
pub(crate) fn autoplace_target(cluster: &Cluster, node: &Node) -> bool {
    if !node.accepts_new_resources() {
        return false;
    }
    let eff = crate::props::lookup(
        [
            (
                &node.props,
                crate::props::PropSource::Node(node.name.clone()),
            ),
            (
                cluster.controller_props(),
                crate::props::PropSource::Controller,
            ),
        ],
        KEY_AUTOPLACE_TARGET,
    );
    options::flag(eff.as_ref(), true)
}

/// The diskless pool a diskless replica on `node` would use.
pub(crate) fn diskless_pool<'a>(node: &'a Node, filter: &SelectFilter) -> Option<&'a StoragePool> {
    let is_dl = |p: &&StoragePool| p.provider_kind.is_diskless();
    if !filter.storage_pool_diskless_list.is_empty() {
        return filter
            .storage_pool_diskless_list
            .iter()
            .find_map(|n| node.storage_pool(n).filter(is_dl));
    }
    node.storage_pool(DEFAULT_DISKLESS_POOL)
        .filter(is_dl)
        .or_else(|| node.storage_pools.values().find(is_dl))
}

/// The best diskful pool on `node` for `size_kib` under `filter`: most free space,
/// unreported last, then by name. The second value says whether any pool matched
/// the filter's names and kinds at all (for the error message).
pub(crate) fn best_pool<'a>(
    node: &'a Node,
    filter: &SelectFilter,
    size_kib: u64,
) -> (Option<&'a StoragePool>, bool) {
    let mut matched = false;
    let mut best: Option<&StoragePool> = None;
    for p in node.storage_pools.values() {
        if p.provider_kind.is_diskless() {
            continue;
        }
        if !filter.storage_pool_list.is_empty()
            && !filter
                .storage_pool_list
                .iter()
                .any(|n| n.eq_ignore_ascii_case(&p.storage_pool_name))
        {
            continue;
        }
        if !filter.provider_list.is_empty() && !filter.provider_list.contains(&p.provider_kind) {
            continue;
        }
        matched = true;
        if p.free_capacity.is_some_and(|f| f < size_kib) {
            continue;
        }
        if best.is_none_or(|b| score(p) > score(b)) {
            best = Some(p);
        }
    }
    (best, matched)
}

/// Higher is better: known free space beats unknown.
fn score(p: &StoragePool) -> (bool, u64) {
    (p.free_capacity.is_some(), p.free_capacity.unwrap_or(0))
}

/// Whether `node` holds a resource the filter keeps away from.
fn conflicts(
    cluster: &Cluster,
    node: &Node,
    filter: &SelectFilter,
    re: Option<&regex_lite::Regex>,
) -> Option<String> {
    if filter.not_place_with_rsc.is_empty() && re.is_none() {
        return None;
    }
    let nk = name::key(&node.name);
    cluster
        .resource_definitions()
        .filter(|rd| {
            rd.resources
                .get(&nk)
                .is_some_and(|r| !r.flags.contains(&crate::objects::ResourceFlag::Delete))
        })
        .map(|rd| &rd.name)
        .find(|n| {
            filter
                .not_place_with_rsc
                .iter()
                .any(|x| x.eq_ignore_ascii_case(n))
                || re.is_some_and(|re| re.is_match(n))
        })
        .cloned()
}

struct Cand<'a> {
    node: &'a Node,
    pool: &'a StoragePool,
    same: Vec<String>,
    diff: Vec<Option<String>>,
}

struct Search<'a, 'b> {
    cands: &'b [Cand<'a>],
    need: usize,
    same: Vec<Option<String>>,
    used: Vec<BTreeSet<String>>,
    chosen: Vec<usize>,
    steps: u64,
}

impl Search<'_, '_> {
    fn fits(&self, c: &Cand<'_>) -> bool {
        self.same
            .iter()
            .zip(&c.same)
            .all(|(s, v)| s.as_ref().is_none_or(|s| s == v))
            && c.diff
                .iter()
                .zip(&self.used)
                .all(|(v, used)| v.as_ref().is_none_or(|v| !used.contains(v)))
    }

    /// An upper bound on how many more replicas candidates from `start` on can add.
    fn bound(&self, start: usize) -> usize {
        let rest = &self.cands[start..];
        let mut best = rest.iter().filter(|c| self.fits(c)).count();
        for k in 0..self.used.len() {
            let mut vals = BTreeSet::new();
            let mut unkeyed = 0;
            for c in rest.iter().filter(|c| self.fits(c)) {
                match &c.diff[k] {
                    Some(v) => {
                        vals.insert(v);
                    }
                    None => unkeyed += 1,
                }
            }
            best = best.min(vals.len() + unkeyed);
        }
        best
    }

    /// Depth-first in score order; Err when the budget ran out.
    fn run(&mut self, start: usize) -> Result<bool, ()> {
        if self.chosen.len() == self.need {
            return Ok(true);
        }
        self.steps += 1;
        if self.steps > SEARCH_BUDGET {
            return Err(());
        }
        if self.bound(start) < self.need - self.chosen.len() {
            return Ok(false);
        }
        for i in start..self.cands.len() {
            if self.cands.len() - i < self.need - self.chosen.len() {
                break;
            }
            let c = &self.cands[i];
            if !self.fits(c) {
                continue;
            }
            let saved = self.same.clone();
            for (s, v) in self.same.iter_mut().zip(&c.same) {
                if s.is_none() {
                    *s = Some(v.clone());
                }
            }
            let mut added = Vec::new();
            for (k, v) in c.diff.iter().enumerate() {
                if let Some(v) = v
                    && self.used[k].insert(v.clone())
                {
                    added.push((k, v.clone()));
                }
            }
            self.chosen.push(i);
            if self.run(i + 1)? {
                return Ok(true);
            }
            self.chosen.pop();
            for (k, v) in added {
                self.used[k].remove(&v);
            }
            self.same = saved;
        }
        Ok(false)
    }
}

fn resource_counts(cluster: &Cluster) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for rd in cluster.resource_definitions() {
        for k in rd.resources.keys() {
            *m.entry(k.clone()).or_insert(0) += 1;
        }
    }
    m
}

/// What to do about the tiebreaker of a resource with `diskful` diskful replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TieBreaker {
    Keep,
    /// Mark the new diskless pick with this index.
    MarkNew(usize),
    /// Make this existing diskless client (node name) the tiebreaker.
    Promote(String),
    /// Add a diskless tiebreaker here.
    Add(DisklessPick),
    /// The existing tiebreaker (node name) is not needed.
    Remove(String),
    /// Needed, but no node can take it.
    Missing,
}

/// A tiebreaker exists iff the diskful count is even and at least 2 (and the policy
/// allows it), there is a node for it. Preference: an existing diskless client, a new
/// diskless replica of this placement, then the spare node with the fewest resources.
pub(crate) fn tiebreaker(
    cluster: &Cluster,
    filter: &SelectFilter,
    allowed: bool,
    diskful: usize,
    rd: Option<&ResourceDefinition>,
    new_diskless: &[DisklessPick],
    taken: &BTreeSet<String>,
) -> TieBreaker {
    let needed = diskful >= 2 && diskful.is_multiple_of(2);
    let existing_tb = rd.and_then(|rd| rd.tiebreaker());
    match (needed, existing_tb) {
        (true, Some(_)) => return TieBreaker::Keep,
        (false, Some(tb)) => return TieBreaker::Remove(tb.node_name.clone()),
        (false, None) => return TieBreaker::Keep,
        (true, None) if !allowed => return TieBreaker::Keep,
        (true, None) => {}
    }
    if let Some(client) = rd.and_then(|rd| rd.resources.values().find(|r| r.is_diskless())) {
        return TieBreaker::Promote(client.node_name.clone());
    }
    if !new_diskless.is_empty() {
        return TieBreaker::MarkNew(0);
    }
    let counts = resource_counts(cluster);
    let spare = cluster
        .nodes()
        .filter(|n| !taken.contains(&name::key(&n.name)) && autoplace_target(cluster, n))
        .filter_map(|n| diskless_pool(n, filter).map(|p| (n, p)))
        .min_by_key(|(n, _)| {
            (
                counts.get(&name::key(&n.name)).copied().unwrap_or(0),
                name::key(&n.name),
            )
        });
    match spare {
        Some((n, p)) => TieBreaker::Add(DisklessPick {
            node: n.name.clone(),
            storage_pool: p.storage_pool_name.clone(),
            tie_breaker: true,
        }),
        None => TieBreaker::Missing,
    }
}

fn describe_pools(filter: &SelectFilter) -> String {
    let mut s = if filter.storage_pool_list.is_empty() {
        "a diskful storage pool".to_owned()
    } else {
        let names: Vec<_> = filter
            .storage_pool_list
            .iter()
            .map(|n| format!("'{n}'"))
            .collect();
        format!("storage pool {}", names.join(" or "))
    };
    if !filter.provider_list.is_empty() {
        let kinds: Vec<_> = filter.provider_list.iter().map(|k| k.as_str()).collect();
        s += &format!(" of kind {}", kinds.join(" or "));
    }
    s
}

pub(crate) fn place(cluster: &Cluster, input: &PlaceInput<'_>) -> Result<Placement, ModelError> {
    let filter = input.filter;
    filter.validate()?;
    let re = filter.regex()?;
    let resource = input.resource;
    let place_count = filter.place_count.ok_or_else(|| {
        ModelError::invalid(
            "place_count",
            "the select filter has no place count",
            "give a place count (resource-group modify --place-count N, or with the request)",
        )
    })? as usize;
    let existing: Vec<_> = input
        .existing
        .map(|rd| rd.resources.values().collect())
        .unwrap_or_default();
    let taken_existing: BTreeSet<String> =
        existing.iter().map(|r| name::key(&r.node_name)).collect();
    let existing_diskful: Vec<&Node> = existing
        .iter()
        .filter(|r| !r.is_diskless())
        .filter_map(|r| cluster.node(&r.node_name))
        .collect();
    let need = place_count.saturating_sub(existing_diskful.len());

    // Constraints fixed by replicas that already exist.
    let same_keys = filter.same_constraints();
    let mut same: Vec<Option<String>> = Vec::new();
    for (k, fixed) in &same_keys {
        let mut val = fixed.clone();
        for n in &existing_diskful {
            if let Some(v) = n.props.get(k) {
                match &val {
                    Some(x) if x != v => {
                        return Err(ModelError::NotEnoughNodes {
                            resource: resource.to_owned(),
                            reason: format!(
                                "replicas-on-same '{k}': the existing replicas have '{v}' and \
                                 '{x}', no value satisfies both"
                            ),
                            correction: "drop the constraint, or move the existing replicas"
                                .to_owned(),
                        });
                    }
                    _ => val = Some(v.clone()),
                }
            }
        }
        same.push(val);
    }
    let used: Vec<BTreeSet<String>> = filter
        .replicas_on_different
        .iter()
        .map(|k| {
            existing_diskful
                .iter()
                .filter_map(|n| n.props.get(k).cloned())
                .collect()
        })
        .collect();

    // Filter: nodes and their best pool.
    let mut node_ok = 0usize;
    let mut with_pool = 0usize;
    let mut cands: Vec<Cand<'_>> = Vec::new();
    for node in cluster.nodes() {
        if taken_existing.contains(&name::key(&node.name)) || !autoplace_target(cluster, node) {
            continue;
        }
        if !filter.node_name_list.is_empty()
            && !filter
                .node_name_list
                .iter()
                .any(|n| n.eq_ignore_ascii_case(&node.name))
        {
            continue;
        }
        if conflicts(cluster, node, filter, re.as_ref()).is_some() {
            continue;
        }
        let Some(same_vals) = same_keys
            .iter()
            .map(|(k, _)| node.props.get(k).cloned())
            .collect::<Option<Vec<_>>>()
        else {
            continue; // a node without a replicas-on-same property never qualifies
        };
        if same_keys
            .iter()
            .zip(&same_vals)
            .any(|((_, fixed), v)| fixed.as_ref().is_some_and(|f| f != v))
        {
            continue;
        }
        node_ok += 1;
        let (pool, matched) = best_pool(node, filter, input.size_kib);
        if matched {
            with_pool += 1;
        }
        if let Some(pool) = pool {
            cands.push(Cand {
                node,
                pool,
                same: same_vals,
                diff: filter
                    .replicas_on_different
                    .iter()
                    .map(|k| node.props.get(k).cloned())
                    .collect(),
            });
        }
    }
    cands.sort_by(|a, b| {
        score(b.pool)
            .cmp(&score(a.pool))
            .then_with(|| name::key(&a.node.name).cmp(&name::key(&b.node.name)))
    });

    let mut search = Search {
        cands: &cands,
        need,
        same,
        used,
        chosen: Vec::new(),
        steps: 0,
    };
    let found = search.run(0).map_err(|()| ModelError::NotEnoughNodes {
        resource: resource.to_owned(),
        reason: format!(
            "the search over {} candidate nodes took too long",
            cands.len()
        ),
        correction: "narrow the select filter (node list, storage pools)".to_owned(),
    })?;
    if !found {
        let pools = describe_pools(filter);
        let reason = if cands.len() < need {
            let mut r = format!(
                "not enough nodes with {pools} and {} KiB free: need {need}, have {}",
                input.size_kib,
                cands.len()
            );
            if with_pool > cands.len() {
                r += &format!(
                    " ({} more have the pool but too little free space)",
                    with_pool - cands.len()
                );
            }
            if !existing_diskful.is_empty() {
                r += &format!(
                    " besides the {} existing diskful replicas",
                    existing_diskful.len()
                );
            }
            r
        } else {
            format!(
                "{} nodes have {pools} with {} KiB free, but no {need} of them satisfy \
                 replicas-on-same {:?} and replicas-on-different {:?}",
                cands.len(),
                input.size_kib,
                filter.replicas_on_same,
                filter.replicas_on_different
            )
        };
        let correction = if node_ok == 0 && need > 0 {
            "add nodes, or relax the node list, do-not-place-with and replicas-on-same filters"
                .to_owned()
        } else {
            format!(
                "create {pools} on more nodes, free space, lower the place count, or relax \
                 replicas-on-same/different"
            )
        };
        return Err(ModelError::NotEnoughNodes {
            resource: resource.to_owned(),
            reason,
            correction,
        });
    }
    let picked: Vec<&Cand<'_>> = search.chosen.iter().map(|&i| &cands[i]).collect();
    if existing.len() + picked.len() > usize::from(NODE_ID_MAX) + 1 {
        return Err(ModelError::Exhausted {
            what: format!("node id of resource '{resource}'"),
            lo: 0,
            hi: u32::from(NODE_ID_MAX),
        });
    }

    let mut p = Placement::default();
    let mut taken = taken_existing;
    for c in &picked {
        taken.insert(name::key(&c.node.name));
        p.diskful.push(DiskfulPick {
            node: c.node.name.clone(),
            storage_pool: c.pool.storage_pool_name.clone(),
            provider_kind: c.pool.provider_kind,
            free_capacity: c.pool.free_capacity,
        });
        if c.node.connection_status != ConnectionStatus::Online {
            p.notes.push(format!(
                "node '{}' is {:?}: its replica is created when its satellite connects",
                c.node.name, c.node.connection_status
            ));
        }
        if c.pool.free_capacity.is_none() {
            p.notes.push(format!(
                "storage pool '{}' on node '{}' has not reported its free space; placed \
                 without a space check",
                c.pool.storage_pool_name, c.node.name
            ));
        }
    }
    if filter.diskless_on_remaining == Some(true) {
        for node in cluster.nodes() {
            if taken.contains(&name::key(&node.name)) || !autoplace_target(cluster, node) {
                continue;
            }
            if let Some(pool) = diskless_pool(node, filter) {
                p.diskless.push(DisklessPick {
                    node: node.name.clone(),
                    storage_pool: pool.storage_pool_name.clone(),
                    tie_breaker: false,
                });
            }
        }
        if existing.len() + picked.len() + p.diskless.len() > usize::from(NODE_ID_MAX) + 1 {
            let room = (usize::from(NODE_ID_MAX) + 1).saturating_sub(existing.len() + picked.len());
            p.diskless.truncate(room);
            p.notes
                .push("diskless replicas stop at 32 replicas per resource".to_owned());
        }
        for d in &p.diskless {
            taken.insert(name::key(&d.node));
        }
    }
    let diskful = existing_diskful.len() + picked.len();
    match tiebreaker(
        cluster,
        filter,
        input.tiebreaker_allowed,
        diskful,
        input.existing,
        &p.diskless,
        &taken,
    ) {
        TieBreaker::Keep => {}
        TieBreaker::MarkNew(i) => p.diskless[i].tie_breaker = true,
        TieBreaker::Promote(n) => p.promote_tiebreaker = Some(n),
        TieBreaker::Add(d) => {
            if existing.len() + picked.len() + p.diskless.len() <= usize::from(NODE_ID_MAX) {
                p.diskless.push(d);
            }
        }
        TieBreaker::Remove(n) => p.remove_tiebreaker = Some(n),
        TieBreaker::Missing => p.notes.push(format!(
            "no node is left for a diskless tiebreaker: with {diskful} diskful replicas a \
             split in half stops I/O on both sides (add a node for quorum)"
        )),
    }
    Ok(p)
}

#[cfg(test)]
#[path = "placer_tests.rs"]
mod tests;
