//! What the controller knows about its satellites right now, in memory only: the link
//! to each (address, last contact, errors), the observed state each reported, the
//! generations pushed and acknowledged, and the tombstones of deleted nodes (mirrored
//! from the database). None of it is stored: a node's connection status and its pools'
//! capacities are laid over the cluster when it is shown or changed
//! ([`Live::overlay`]), so a satellite going on- or offline costs no database write.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use model::name::key;
use model::satellite::{ObservedPool, ObservedResource, ObservedState};
use model::{Cluster, ConnectionStatus};
use tokio::sync::watch;

use crate::store::Tombstone;

/// Timings of the satellite links.
#[derive(Debug, Clone)]
pub struct SyncConfig {
    /// How often the observed state is read from a satellite that answers.
    pub poll_interval: Duration,
    /// A node is ONLINE while its last successful poll is at most this old.
    pub online_window: Duration,
    /// An unchanged desired state is pushed again this often (a satellite that lost its
    /// state gets it back).
    pub repush_interval: Duration,
    pub connect_timeout: Duration,
    /// For reading the observed state.
    pub request_timeout: Duration,
    /// For pushing the desired state (the satellite persists it before it answers).
    pub push_timeout: Duration,
    /// Polls of a satellite that does not answer back off up to this.
    pub max_backoff: Duration,
    /// After a change, wait this long for more before pushing (spawn storms).
    pub debounce: Duration,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(1),
            online_window: Duration::from_secs(5),
            repush_interval: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            request_timeout: Duration::from_secs(2),
            push_timeout: Duration::from_secs(5),
            max_backoff: Duration::from_secs(4),
            debounce: Duration::from_millis(30),
        }
    }
}

/// Desired-state generations: wall-clock microseconds, but always above every
/// generation issued or seen before (`max(previous + 1, now)`). Across a controller
/// restart they keep growing with the clock, without a database write per push; a clock
/// that was set back is caught by the satellite's observed generation, which is read
/// before the first push and raises the floor ([`GenerationClock::observe`]).
#[derive(Debug, Default)]
pub struct GenerationClock {
    last: Mutex<u64>,
}

impl GenerationClock {
    pub fn next(&self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let mut last = lock(&self.last);
        *last = last.saturating_add(1).max(now);
        *last
    }

    /// A generation seen elsewhere (a satellite holds it): later ones are higher.
    pub fn observe(&self, generation: u64) {
        let mut last = lock(&self.last);
        *last = (*last).max(generation);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A satellite's report with indexes by name.
#[derive(Debug)]
pub struct Observed {
    pub state: ObservedState,
    pub at: Instant,
    resources: HashMap<String, usize>,
    pools: HashMap<String, usize>,
}

impl Observed {
    pub fn new(state: ObservedState, at: Instant) -> Self {
        let resources = state
            .resources
            .iter()
            .enumerate()
            .map(|(i, r)| (key(&r.name), i))
            .collect();
        let pools = state
            .pools
            .iter()
            .enumerate()
            .map(|(i, p)| (key(&p.name), i))
            .collect();
        Self {
            state,
            at,
            resources,
            pools,
        }
    }

    pub fn resource(&self, name: &str) -> Option<&ObservedResource> {
        self.resources
            .get(&key(name))
            .and_then(|&i| self.state.resources.get(i))
    }

    pub fn pool(&self, name: &str) -> Option<&ObservedPool> {
        self.pools
            .get(&key(name))
            .and_then(|&i| self.state.pools.get(i))
    }
}

/// The link to one satellite: of a node, or of a tombstone.
#[derive(Debug, Clone)]
pub struct Link {
    pub node: String,
    pub address: String,
    /// The node is gone and this link pushes its tombstone.
    pub lost: bool,
    pub started: Instant,
    /// The last poll that answered.
    pub last_ok: Option<Instant>,
    /// Since when polls fail (None while they succeed).
    pub failing_since: Option<Instant>,
    /// Why the last poll failed.
    pub error: Option<String>,
    /// The last report (kept while the satellite is away: capacities stay known).
    pub observed: Option<Arc<Observed>>,
    pub desired_generation: u64,
    pub acked_generation: u64,
    /// Why the last push failed, or the desired state could not be made.
    pub push_error: Option<String>,
}

impl Link {
    fn new(node: &str, address: &str, lost: bool) -> Self {
        Self {
            node: node.to_owned(),
            address: address.to_owned(),
            lost,
            started: Instant::now(),
            last_ok: None,
            failing_since: None,
            error: None,
            observed: None,
            desired_generation: 0,
            acked_generation: 0,
            push_error: None,
        }
    }

    /// The satellite at the address reports another node's state.
    pub fn other_node(&self) -> Option<&str> {
        self.observed
            .as_ref()
            .map(|o| o.state.node.as_str())
            .filter(|n| !n.eq_ignore_ascii_case(&self.node))
    }

    pub fn status(&self, now: Instant, window: Duration) -> ConnectionStatus {
        let fresh = self
            .last_ok
            .is_some_and(|t| now.saturating_duration_since(t) <= window);
        match (fresh, self.other_node()) {
            (true, Some(_)) => ConnectionStatus::HostnameMismatch,
            (true, None) => ConnectionStatus::Online,
            (false, _) => ConnectionStatus::Offline,
        }
    }
}

#[derive(Debug, Default)]
struct Inner {
    links: BTreeMap<String, Link>,
    tombstones: BTreeMap<String, Tombstone>,
}

/// The controller's live knowledge of its satellites.
#[derive(Debug)]
pub struct Live {
    inner: Mutex<Inner>,
    changed: watch::Sender<u64>,
    pub clock: GenerationClock,
    pub cfg: SyncConfig,
}

impl Live {
    pub fn new(cfg: SyncConfig, tombstones: Vec<Tombstone>) -> Self {
        let (changed, _) = watch::channel(0);
        Self {
            inner: Mutex::new(Inner {
                links: BTreeMap::new(),
                tombstones: tombstones.into_iter().map(|t| (key(&t.node), t)).collect(),
            }),
            changed,
            clock: GenerationClock::default(),
            cfg,
        }
    }

    /// Wakes everything that waits for a change of the cluster or the tombstones.
    pub fn notify(&self) {
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn set_tombstones(&self, list: Vec<Tombstone>) {
        lock(&self.inner).tombstones = list.into_iter().map(|t| (key(&t.node), t)).collect();
        self.notify();
    }

    pub fn tombstone(&self, node: &str) -> Option<Tombstone> {
        lock(&self.inner).tombstones.get(&key(node)).cloned()
    }

    pub fn tombstones(&self) -> Vec<Tombstone> {
        lock(&self.inner).tombstones.values().cloned().collect()
    }

    /// Changes the link of `node` (made if missing) under the lock.
    pub fn update<R>(
        &self,
        node: &str,
        address: &str,
        lost: bool,
        f: impl FnOnce(&mut Link) -> R,
    ) -> R {
        let mut inner = lock(&self.inner);
        let link = inner
            .links
            .entry(key(node))
            .or_insert_with(|| Link::new(node, address, lost));
        if link.address != address || link.lost != lost {
            // Another satellite (or the same one as a tombstone): start afresh.
            *link = Link::new(node, address, lost);
        }
        link.node = node.to_owned();
        f(link)
    }

    pub fn remove_link(&self, node: &str) {
        lock(&self.inner).links.remove(&key(node));
    }

    pub fn link(&self, node: &str) -> Option<Link> {
        lock(&self.inner).links.get(&key(node)).cloned()
    }

    /// A consistent copy of every link for one request.
    pub fn view(&self) -> LiveView {
        let inner = lock(&self.inner);
        LiveView {
            links: inner.links.clone(),
            tombstones: inner.tombstones.clone(),
            now: Instant::now(),
            window: self.cfg.online_window,
        }
    }

    /// Lays what satellites reported over `c`: connection statuses and the capacities
    /// of reported pools (the last report, also while the satellite is away).
    pub fn overlay(&self, c: &mut Cluster) {
        self.view().overlay(c);
    }
}

/// Links as of one moment.
#[derive(Debug, Clone)]
pub struct LiveView {
    pub links: BTreeMap<String, Link>,
    pub tombstones: BTreeMap<String, Tombstone>,
    pub now: Instant,
    pub window: Duration,
}

/// What is known about one resource on one node.
#[derive(Debug, Clone, Copy)]
pub enum RscObs<'a> {
    /// The satellite is not reachable (or was never): nothing is known.
    Unknown,
    /// The satellite answers but does not report the resource.
    Missing {
        /// It applied the newest desired state (so the resource should be there).
        applied: bool,
    },
    Reported(&'a ObservedResource),
}

impl LiveView {
    pub fn link(&self, node: &str) -> Option<&Link> {
        self.links.get(&key(node)).filter(|l| !l.lost)
    }

    pub fn status(&self, node: &str) -> ConnectionStatus {
        self.link(node).map_or(ConnectionStatus::Offline, |l| {
            l.status(self.now, self.window)
        })
    }

    pub fn online(&self, node: &str) -> bool {
        self.status(node) == ConnectionStatus::Online
    }

    /// The report of a node whose satellite is online.
    pub fn observed(&self, node: &str) -> Option<&Observed> {
        if !self.online(node) {
            return None;
        }
        self.link(node)?.observed.as_deref()
    }

    pub fn resource(&self, node: &str, rsc: &str) -> RscObs<'_> {
        match self.observed(node) {
            None => RscObs::Unknown,
            Some(o) => match o.resource(rsc) {
                Some(r) => RscObs::Reported(r),
                None => RscObs::Missing {
                    applied: o.state.applied,
                },
            },
        }
    }

    /// The last report of a pool, and whether it is current (satellite online).
    pub fn pool(&self, node: &str, pool: &str) -> Option<(&ObservedPool, bool)> {
        let link = self.link(node)?;
        let p = link.observed.as_ref()?.pool(pool)?;
        Some((p, self.online(node)))
    }

    pub fn overlay(&self, c: &mut Cluster) {
        let names: Vec<String> = c.nodes().map(|n| n.name.clone()).collect();
        for name in names {
            let status = self.status(&name);
            let _ = c.set_connection_status(&name, status);
            let Some(obs) = self.link(&name).and_then(|l| l.observed.clone()) else {
                continue;
            };
            for p in &obs.state.pools {
                if let (Some(free), Some(total)) = (p.free_capacity_kib, p.total_capacity_kib) {
                    // A pool the node no longer has, or a diskless one, is skipped.
                    if c.storage_pool(&name, &p.name)
                        .is_some_and(|sp| !sp.provider_kind.is_diskless())
                    {
                        let _ =
                            c.report_storage_pool_capacity(&name, &p.name, free.min(total), total);
                    }
                }
            }
        }
    }
}

/// `12 s`, `3 min`, `2 h`: how long, for status lines.
pub fn ago(d: Duration) -> String {
    let s = d.as_secs();
    if s < 120 {
        format!("{s} s")
    } else if s < 7200 {
        format!("{} min", s / 60)
    } else {
        format!("{} h", s / 3600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generations_grow_past_what_was_seen() {
        let c = GenerationClock::default();
        let a = c.next();
        let b = c.next();
        assert!(b > a);
        c.observe(u64::MAX - 10);
        assert_eq!(c.next(), u64::MAX - 9);
        // Lower observations do not move it back.
        c.observe(5);
        assert_eq!(c.next(), u64::MAX - 8);
    }

    #[test]
    fn status_follows_the_last_answer() {
        let mut l = Link::new("n1", "127.0.0.1:1", false);
        let now = Instant::now();
        let w = Duration::from_secs(5);
        assert_eq!(l.status(now, w), ConnectionStatus::Offline);
        l.last_ok = Some(now);
        assert_eq!(l.status(now, w), ConnectionStatus::Online);
        assert_eq!(
            l.status(now + Duration::from_secs(6), w),
            ConnectionStatus::Offline
        );
        l.observed = Some(Arc::new(Observed::new(
            ObservedState {
                node: "other".into(),
                ..ObservedState::default()
            },
            now,
        )));
        assert_eq!(l.status(now, w), ConnectionStatus::HostnameMismatch);
    }
}
