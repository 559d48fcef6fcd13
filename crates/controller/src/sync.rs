//! The sync loop: one task per satellite (every node that runs one, and every
//! tombstone) and a supervisor.
//!
//! A link task computes its node's desired state from the current cluster; when it
//! differs from the last one it takes a new generation ([`crate::live::GenerationClock`]).
//! It reads the observed state every `poll_interval` (backing off to `max_backoff`
//! while the satellite does not answer) and pushes the desired state when the
//! satellite has not acknowledged this generation, when the satellite reports an older
//! one, and every `repush_interval` anyway. Any mutation wakes it at once (after a
//! short debounce that gathers a burst of changes into one push).
//!
//! A tombstone's link pushes `lost: true` with no resources until the satellite
//! acknowledged it and reports no resources and nothing being removed; then the
//! tombstone is dropped.
//!
//! The supervisor starts and ends link tasks as nodes and tombstones come and go, and
//! removes `Tandem/InitialGeneration` / `Tandem/InitialNodes` from a resource
//! definition once every initial replica reported UpToDate.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use model::name::key;
use model::satellite::{self, DesiredState, KEY_INITIAL_GENERATION, KEY_INITIAL_NODES};
use model::{Cluster, PropsModify, ResourceDefinitionModify};
use tokio::task::{AbortHandle, JoinHandle, JoinSet};

use crate::Controller;
use crate::live::{Link, Observed};
use crate::satclient::SatClient;

/// Starts the sync loop on the current tokio runtime. It runs until the runtime ends
/// or the handle is aborted (which ends every link task too).
pub fn spawn(ctl: Arc<Controller>) -> JoinHandle<()> {
    tokio::spawn(supervise(ctl))
}

async fn supervise(ctl: Arc<Controller>) {
    let mut changed = ctl.live().subscribe();
    // Definitions of older databases get their secrets now (an empty change does it).
    let c = ctl.clone();
    if let Ok(Err(e)) = tokio::task::spawn_blocking(move || c.mutate(|_| Ok(()))).await {
        tracing::error!("giving resource definitions their secrets: {e}");
    }
    // Owned here: when this task ends or is aborted, the link tasks end with it.
    let mut set = JoinSet::new();
    let mut tasks: BTreeMap<String, AbortHandle> = BTreeMap::new();
    loop {
        let cluster = ctl.snapshot();
        let mut want: BTreeSet<String> = cluster
            .nodes()
            .filter(|n| n.node_type.runs_satellite())
            .map(|n| key(&n.name))
            .collect();
        want.extend(ctl.live().tombstones().iter().map(|t| key(&t.node)));
        while set.try_join_next().is_some() {}
        tasks.retain(|_, h| !h.is_finished());
        for k in want {
            tasks
                .entry(k.clone())
                .or_insert_with(|| set.spawn(link_task(ctl.clone(), k)));
        }
        finish_initial(&ctl, &cluster).await;
        tokio::select! {
            r = changed.changed() => if r.is_err() { return },
            () = tokio::time::sleep(ctl.live().cfg.poll_interval) => {}
        }
    }
}

/// Removes the initial generation of definitions whose initial replicas all report
/// UpToDate on every volume (or that have none of them left).
async fn finish_initial(ctl: &Arc<Controller>, c: &Cluster) {
    let view = ctl.live().view();
    let mut done = Vec::new();
    for rd in c
        .resource_definitions()
        .filter(|rd| rd.props.contains_key(KEY_INITIAL_GENERATION))
    {
        let initial: Vec<&str> = rd
            .props
            .get(KEY_INITIAL_NODES)
            .map(|v| v.split(',').map(str::trim).collect())
            .unwrap_or_default();
        let all_up = rd
            .resources
            .values()
            .filter(|r| !r.is_diskless())
            .filter(|r| initial.iter().any(|n| n.eq_ignore_ascii_case(&r.node_name)))
            .all(|r| {
                let Some(obs) = view.observed(&r.node_name) else {
                    return false;
                };
                obs.resource(&rd.name).is_some_and(|o| {
                    r.volumes.keys().all(|vnr| {
                        o.volumes.iter().any(|v| {
                            v.number == *vnr && v.disk_state.as_deref() == Some("UpToDate")
                        })
                    })
                })
            });
        if all_up {
            done.push(rd.name.clone());
        }
    }
    if done.is_empty() {
        return;
    }
    let c = ctl.clone();
    let res = tokio::task::spawn_blocking(move || {
        c.mutate(|c| {
            for name in &done {
                if c.resource_definition(name).is_some() {
                    c.modify_resource_definition(
                        name,
                        &ResourceDefinitionModify {
                            props: PropsModify {
                                delete_props: vec![
                                    KEY_INITIAL_GENERATION.into(),
                                    KEY_INITIAL_NODES.into(),
                                ],
                                ..PropsModify::default()
                            },
                            ..ResourceDefinitionModify::default()
                        },
                    )?;
                }
            }
            Ok(done)
        })
    })
    .await;
    match res {
        Ok(Ok(done)) => {
            tracing::info!(resources = ?done, "initial replicas are UpToDate: initial generation removed");
        }
        Ok(Err(e)) => tracing::error!("removing initial generations: {e}"),
        Err(e) => tracing::error!("removing initial generations: {e}"),
    }
}

/// Whom a link talks to and what it tells them.
#[derive(Debug, Clone, PartialEq)]
enum Target {
    Node { name: String, address: String },
    Lost { name: String, address: String },
}

fn target(ctl: &Controller, c: &Cluster, k: &str) -> Option<Result<Target, String>> {
    if let Some(n) = c.node(k).filter(|n| n.node_type.runs_satellite()) {
        return Some(match satellite::satellite_address(n) {
            Some(address) => Ok(Target::Node {
                name: n.name.clone(),
                address,
            }),
            None => Err(n.name.clone()),
        });
    }
    ctl.live().tombstone(k).map(|t| {
        Ok(Target::Lost {
            name: t.node,
            address: t.address,
        })
    })
}

struct LinkRun {
    ctl: Arc<Controller>,
    name: String,
    address: String,
    lost: bool,
    client: SatClient,
    /// The last desired state computed (generation 0) and the generation it got.
    content: Option<DesiredState>,
    generation: u64,
    /// A new generation is needed even if the content did not change (refused push).
    regenerate: bool,
    acked: u64,
    last_push: Option<Instant>,
    push_backoff_until: Option<Instant>,
    next_poll: Instant,
    poll_failures: u32,
    /// The observed state and when it was read.
    observed: Option<(Arc<Observed>, Instant)>,
    snapshot: Option<Arc<Cluster>>,
}

async fn link_task(ctl: Arc<Controller>, k: String) {
    let mut changed = ctl.live().subscribe();
    let cfg = ctl.live().cfg.clone();
    let mut run: Option<LinkRun> = None;
    loop {
        let snap = ctl.snapshot();
        let t = match target(&ctl, &snap, &k) {
            None => {
                ctl.live().remove_link(&k);
                return;
            }
            Some(Err(name)) => {
                ctl.live().update(&name, "", false, |l| {
                    l.push_error = Some(format!(
                        "node '{name}' has no network interface to reach its satellite; \
                         add one (node interface create {name} default IP)"
                    ));
                });
                run = None;
                tokio::select! {
                    r = changed.changed() => if r.is_err() { return },
                    () = tokio::time::sleep(cfg.max_backoff) => {}
                }
                continue;
            }
            Some(Ok(t)) => t,
        };
        let (name, address, lost) = match &t {
            Target::Node { name, address } => (name.clone(), address.clone(), false),
            Target::Lost { name, address } => (name.clone(), address.clone(), true),
        };
        let r = match &mut run {
            Some(r) if r.address == address && r.lost == lost => r,
            _ => run.insert(LinkRun::new(&ctl, &name, &address, lost)),
        };
        r.name = name;
        if r.step(&snap).await {
            return;
        }
        let wake = r.next_wake(&cfg);
        tokio::select! {
            res = changed.changed() => {
                if res.is_err() { return }
                tokio::time::sleep(cfg.debounce).await;
            }
            () = tokio::time::sleep_until(wake.into()) => {}
        }
    }
}

impl LinkRun {
    fn new(ctl: &Arc<Controller>, name: &str, address: &str, lost: bool) -> Self {
        let cfg = &ctl.live().cfg;
        ctl.live().update(name, address, lost, |_| {});
        Self {
            ctl: ctl.clone(),
            name: name.to_owned(),
            address: address.to_owned(),
            lost,
            client: SatClient::new(address, cfg.connect_timeout),
            content: None,
            generation: 0,
            regenerate: false,
            acked: 0,
            last_push: None,
            push_backoff_until: None,
            next_poll: Instant::now(),
            poll_failures: 0,
            observed: None,
            snapshot: None,
        }
    }

    fn update<R>(&self, f: impl FnOnce(&mut Link) -> R) -> R {
        self.ctl
            .live()
            .update(&self.name, &self.address, self.lost, f)
    }

    /// One round: desired state, poll, push. True when the link is done (its tombstone
    /// was dropped).
    async fn step(&mut self, snap: &Arc<Cluster>) -> bool {
        let cfg = self.ctl.live().cfg.clone();
        self.compute(snap);
        let now = Instant::now();
        if now >= self.next_poll {
            self.poll(&cfg).await;
        }
        self.push(&cfg).await;
        self.tombstone_done().await
    }

    fn compute(&mut self, snap: &Arc<Cluster>) {
        if self.lost {
            let Some(t) = self.ctl.live().tombstone(&self.name) else {
                return;
            };
            self.set_content(satellite::lost_state(&t.node, t.pools, 0));
            return;
        }
        if self.snapshot.as_ref().is_some_and(|s| Arc::ptr_eq(s, snap)) {
            return;
        }
        self.snapshot = Some(snap.clone());
        match satellite::desired_state(snap, &self.name, 0) {
            Ok(d) => self.set_content(d),
            Err(e) => {
                let msg = format!("cannot make the desired state: {e} ({})", e.correction());
                tracing::warn!(node = %self.name, "{msg}");
                self.update(|l| l.push_error = Some(msg));
            }
        }
    }

    fn set_content(&mut self, d: DesiredState) {
        if self.content.as_ref() != Some(&d) {
            self.content = Some(d);
            self.generation = 0;
        }
    }

    async fn poll(&mut self, cfg: &crate::SyncConfig) {
        let res = self.client.observed(cfg.request_timeout).await;
        let now = Instant::now();
        match res {
            Ok(state) => {
                self.ctl.live().clock.observe(state.generation);
                let obs = Arc::new(Observed::new(state, now));
                if self.poll_failures > 0 || self.observed.is_none() {
                    tracing::info!(node = %self.name, addr = %self.address, "satellite answers");
                }
                self.observed = Some((obs.clone(), now));
                self.poll_failures = 0;
                self.next_poll = now + cfg.poll_interval;
                self.update(|l| {
                    l.last_ok = Some(now);
                    l.failing_since = None;
                    l.error = None;
                    l.observed = Some(obs);
                });
            }
            Err(e) => {
                if self.poll_failures == 0 {
                    tracing::warn!(node = %self.name, "satellite does not answer: {e}");
                }
                self.poll_failures = self.poll_failures.saturating_add(1);
                let backoff = cfg
                    .poll_interval
                    .saturating_mul(1 << self.poll_failures.min(6))
                    .min(cfg.max_backoff)
                    .max(cfg.poll_interval);
                self.next_poll = now + backoff;
                self.update(|l| {
                    l.failing_since.get_or_insert(now);
                    l.error = Some(e.to_string());
                });
            }
        }
    }

    async fn push(&mut self, cfg: &crate::SyncConfig) {
        let now = Instant::now();
        let Some(content) = &self.content else {
            return;
        };
        // Only to a satellite that answers, and is the right one.
        let Some((obs, obs_at)) = self.observed.clone() else {
            return;
        };
        if self.poll_failures > 0 {
            return;
        }
        if !obs.state.node.eq_ignore_ascii_case(&self.name) {
            self.update(|l| {
                l.push_error = Some(format!(
                    "the satellite at {} is node '{}', not '{}': nothing is pushed to it",
                    self.address, obs.state.node, self.name
                ));
            });
            return;
        }
        if self.push_backoff_until.is_some_and(|t| now < t) {
            return;
        }
        let obs_gen = obs.state.generation;
        if self.generation == 0
            || self.regenerate
            || (self.acked != self.generation && self.generation <= obs_gen)
        {
            self.generation = self.ctl.live().clock.next();
            self.regenerate = false;
            let g = self.generation;
            self.update(|l| l.desired_generation = g);
        }
        let seen_after_push = self.last_push.is_none_or(|p| obs_at > p);
        let due = self.acked != self.generation
            || (seen_after_push && obs_gen < self.generation)
            || self
                .last_push
                .is_none_or(|p| now.saturating_duration_since(p) >= cfg.repush_interval);
        if !due {
            return;
        }
        let mut d = content.clone();
        d.generation = self.generation;
        let res = self.client.push(&d, cfg.push_timeout).await;
        let now = Instant::now();
        self.last_push = Some(now);
        match res {
            Ok(g) if g == self.generation => {
                tracing::debug!(node = %self.name, generation = g, lost = self.lost, "desired state pushed");
                self.acked = g;
                self.push_backoff_until = None;
                self.update(|l| {
                    l.acked_generation = g;
                    l.push_error = None;
                });
                // See the result soon.
                self.next_poll = self.next_poll.min(now + cfg.poll_interval / 4);
            }
            Ok(g) => {
                // The satellite holds something newer (a clock set back, another
                // controller): take a generation above it.
                self.ctl.live().clock.observe(g);
                self.regenerate = true;
                self.update(|l| {
                    l.push_error = Some(format!(
                        "the satellite kept generation {g} instead of {}; pushing a newer one",
                        d.generation
                    ));
                });
            }
            Err(e) => {
                if e.is_refusal() {
                    tracing::warn!(node = %self.name, "satellite refused the desired state: {e}");
                    self.regenerate = true;
                } else {
                    tracing::warn!(node = %self.name, "pushing the desired state: {e}");
                }
                self.push_backoff_until = Some(now + cfg.max_backoff);
                self.update(|l| l.push_error = Some(e.to_string()));
            }
        }
    }

    /// For a tombstone: drops it once the satellite is clean.
    async fn tombstone_done(&mut self) -> bool {
        if !self.lost || self.acked == 0 || self.acked != self.generation {
            return false;
        }
        let Some((obs, at)) = &self.observed else {
            return false;
        };
        let clean = self.last_push.is_some_and(|p| *at > p)
            && obs.state.generation >= self.acked
            && obs.state.applied
            && obs.state.resources.is_empty()
            && obs.state.removing.is_empty();
        if !clean {
            return false;
        }
        let ctl = self.ctl.clone();
        let name = self.name.clone();
        match tokio::task::spawn_blocking(move || ctl.forget_tombstone(&name)).await {
            Ok(Ok(_)) => {
                tracing::info!(node = %self.name, addr = %self.address, "satellite of the removed node is clean: tombstone dropped");
                self.ctl.live().remove_link(&self.name);
                true
            }
            Ok(Err(e)) => {
                tracing::error!(node = %self.name, "dropping the tombstone: {e}");
                false
            }
            Err(e) => {
                tracing::error!(node = %self.name, "dropping the tombstone: {e}");
                false
            }
        }
    }

    /// When to look again without a change.
    fn next_wake(&self, cfg: &crate::SyncConfig) -> Instant {
        let mut t = self.next_poll;
        if let Some(p) = self.last_push {
            t = t.min(p + cfg.repush_interval);
        }
        if let Some(b) = self.push_backoff_until {
            t = t.min(b);
        }
        t.max(Instant::now() + Duration::from_millis(1))
    }
}
