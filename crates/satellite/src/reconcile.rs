//! One reconcile pass: make the node match the desired state (backing volumes through
//! the storage providers, blockd resource files, `adjust`), remove what is no longer
//! desired, and describe what is there.
//!
//! Every step is idempotent, so a pass interrupted by a crash is simply run again. The
//! ledger (`ledger.json`) records each backing volume before it is created, so the
//! satellite only ever deletes volumes it made, and knows whether a volume is new
//! (then it may start UpToDate without an initial sync) or was lost and remade (then
//! it always takes a full resync from its peers).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use blockd::admin::{self, Request, ResourceStatus, Status};
use blockd::config::VolumeConfig;
use model::satellite::{
    DesiredPool, DesiredResource, DesiredState, ObservedPeer, ObservedPool, ObservedRemoval,
    ObservedResource, ObservedState, ObservedVolume,
};
use serde::{Deserialize, Serialize};
use storage::{Provider, Runner};

use crate::render::{self, LocalVolume};
use crate::store;

/// Peer slots in the metadata of volumes the satellite creates (blockd's default).
pub const MAX_PEERS: u32 = replica::md::DEFAULT_MAX_PEERS;
/// How long a blockd admin call may take (`adjust` may wait for connections to drain).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Pool capacity is read at most this often (LVM and ZFS run a command for it).
const CAPACITY_EVERY: Duration = Duration::from_secs(5);

/// A backing volume this satellite created (or adopted), kept until it is deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub resource: String,
    pub volume: u32,
    pub pool: DesiredPool,
    /// The provider's name for it (`<resource>_<5 digits>`).
    pub name: String,
    /// Metadata was written on it (or found on it). False between creating the volume
    /// and writing its metadata: a crash there leaves a volume that is still new.
    pub md_written: bool,
    /// It was created before and vanished: never seed it again.
    #[serde(default)]
    pub remade: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    pub volumes: Vec<LedgerEntry>,
}

impl Ledger {
    fn find(&self, resource: &str, volume: u32) -> Option<&LedgerEntry> {
        self.volumes
            .iter()
            .find(|e| e.resource == resource && e.volume == volume)
    }
    fn upsert(&mut self, e: LedgerEntry) {
        match self
            .volumes
            .iter_mut()
            .find(|x| x.resource == e.resource && x.volume == e.volume)
        {
            Some(x) => *x = e,
            None => self.volumes.push(e),
        }
    }
}

/// Where things are on this node.
#[derive(Debug, Clone)]
pub struct Paths {
    pub node: String,
    pub state_dir: PathBuf,
    pub config_dir: PathBuf,
    pub admin_socket: PathBuf,
}

/// The reconciler's memory between passes.
#[derive(Debug)]
pub struct Reconciler {
    paths: Paths,
    runner: Arc<dyn Runner>,
    ledger: Ledger,
    providers: BTreeMap<String, (DesiredPool, Box<dyn Provider>)>,
    capacity: BTreeMap<String, ObservedPool>,
    capacity_at: Option<Instant>,
    /// Files changed and blockd has not applied them yet.
    adjust_pending: bool,
    /// When a grow was last asked for, per resource.
    grow_tried: BTreeMap<String, Instant>,
}

/// What one pass decided for one resource.
struct Prepared {
    file: Option<String>,
    error: Option<String>,
    /// Backing bytes each diskful volume here should have: (volume, size).
    sizes: Vec<(u32, u64)>,
}

/// A grow is tried again at most this often.
const GROW_RETRY: Duration = Duration::from_secs(10);

impl Reconciler {
    pub fn new(paths: Paths, runner: Arc<dyn Runner>) -> Result<Self, String> {
        let ledger =
            store::load::<Ledger>(&paths.state_dir.join(store::LEDGER))?.unwrap_or_default();
        Ok(Reconciler {
            paths,
            runner,
            ledger,
            providers: BTreeMap::new(),
            capacity: BTreeMap::new(),
            capacity_at: None,
            adjust_pending: true,
            grow_tried: BTreeMap::new(),
        })
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    fn save_ledger(&self) -> Result<(), String> {
        store::save(&self.paths.state_dir.join(store::LEDGER), &self.ledger)
    }

    fn provider(&mut self, pool: &DesiredPool) -> Result<&dyn Provider, String> {
        let fresh = match self.providers.get(&pool.name) {
            Some((p, _)) => p != pool,
            None => true,
        };
        if fresh {
            let p = storage::open(pool, self.runner.clone())
                .map_err(|e| format!("storage pool '{}': {e}", pool.name))?;
            self.providers.insert(pool.name.clone(), (pool.clone(), p));
        }
        self.providers
            .get(&pool.name)
            .map(|(_, p)| p.as_ref())
            .ok_or_else(|| format!("storage pool '{}' vanished", pool.name))
    }

    fn file_of(&self, resource: &str) -> PathBuf {
        self.paths.config_dir.join(format!("{resource}.toml"))
    }

    /// Every resource file in the config directory, by resource name, read once per
    /// pass (whether it is ours, whether it changed and what to remove all come from it).
    fn scan_files(&self) -> Result<BTreeMap<String, String>, String> {
        let mut out = BTreeMap::new();
        let rd = match std::fs::read_dir(&self.paths.config_dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => {
                return Err(format!("reading {}: {e}", self.paths.config_dir.display()));
            }
        };
        for ent in rd.flatten() {
            let path = ent.path();
            if path.extension().and_then(|e| e.to_str()) != Some("toml") {
                continue;
            }
            let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            if let Ok(text) = std::fs::read_to_string(&path) {
                out.insert(stem.to_owned(), text);
            }
        }
        Ok(out)
    }

    /// One pass over `desired` (None: nothing received yet; the node is left alone).
    pub fn pass(&mut self, desired: Option<&DesiredState>) -> ObservedState {
        let mut obs = ObservedState {
            node: self.paths.node.clone(),
            generation: desired.map_or(0, |d| d.generation),
            ..Default::default()
        };
        let Some(d) = desired else {
            obs.errors.push(
                "no desired state received from the controller yet; check that the controller lists this node (`tandem node list`) with this satellite's address".to_owned(),
            );
            obs.applied = false;
            return obs;
        };
        let wanted: Vec<&DesiredResource> = if d.lost {
            Vec::new()
        } else {
            d.resources.iter().collect()
        };
        let pools: BTreeMap<&str, &DesiredPool> =
            d.pools.iter().map(|p| (p.name.as_str(), p)).collect();

        let files = match self.scan_files() {
            Ok(f) => f,
            Err(e) => {
                obs.errors.push(e);
                BTreeMap::new()
            }
        };

        // 1. Backing volumes and file texts of the wanted resources.
        let mut prepared: BTreeMap<String, Prepared> = BTreeMap::new();
        for r in &wanted {
            let p = match self.prepare(r, &pools, files.get(&r.name).map(String::as_str)) {
                Ok((text, sizes)) => Prepared {
                    file: Some(text),
                    error: None,
                    sizes,
                },
                Err(e) => Prepared {
                    file: None,
                    error: Some(e),
                    sizes: Vec::new(),
                },
            };
            prepared.insert(r.name.clone(), p);
        }

        // 2. Files: write what changed, remove ours that are no longer wanted. A
        //    resource that failed to prepare keeps the file it had.
        if let Err(e) = std::fs::create_dir_all(&self.paths.config_dir) {
            obs.errors
                .push(format!("creating {}: {e}", self.paths.config_dir.display()));
        }
        for (name, p) in &mut prepared {
            let Some(text) = &p.file else { continue };
            if files.get(name) == Some(text) {
                continue;
            }
            let path = self.file_of(name);
            match store::write_atomic(&path, text.as_bytes()) {
                Ok(()) => self.adjust_pending = true,
                Err(e) => p.error = Some(e),
            }
        }
        let unwanted = files
            .iter()
            .filter(|(name, text)| render::is_managed(text) && !prepared.contains_key(*name));
        for (name, _) in unwanted {
            let path = self.file_of(name);
            match std::fs::remove_file(&path) {
                Ok(()) => self.adjust_pending = true,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => obs.errors.push(format!("removing {}: {e}", path.display())),
            }
        }

        // 3. Let blockd apply the files.
        if self.adjust_pending {
            match admin::call(
                &self.paths.admin_socket,
                &Request::Adjust { resource: None },
                ADMIN_TIMEOUT,
            ) {
                Ok(a) if a.ok => {
                    self.adjust_pending = false;
                    for line in a.message.iter().flat_map(|m| m.lines()) {
                        tracing::info!("blockd adjust: {line}");
                    }
                }
                Ok(a) => obs.errors.push(format!(
                    "blockd refused to adjust: {}",
                    a.error.unwrap_or_default()
                )),
                Err(e) => obs.errors.push(e.to_string()),
            }
        }
        let status = match admin::call(&self.paths.admin_socket, &Request::Status {}, ADMIN_TIMEOUT)
        {
            Ok(a) => a.status,
            Err(e) => {
                if !obs.errors.iter().any(|x| *x == e.to_string()) {
                    obs.errors.push(e.to_string());
                }
                None
            }
        };

        // 4. Grow volumes whose definition grew (the coordinating node asks blockd).
        if let Some(st) = &status {
            for r in &wanted {
                if let Some(p) = prepared.get_mut(&r.name)
                    && p.error.is_none()
                {
                    p.error = self.grow(r, &p.sizes, st);
                }
            }
        }

        // 5. Delete backing volumes of resources that are gone, once blockd let go.
        obs.removing = self.remove_unwanted(&prepared, status.as_ref());

        // 6. Describe.
        for r in &wanted {
            let p = prepared.get(&r.name);
            obs.resources
                .push(observe(r, p.and_then(|p| p.error.clone()), status.as_ref()));
        }
        self.observe_pools(&d.pools, &mut obs);
        obs.applied = obs.errors.is_empty()
            && !self.adjust_pending
            && prepared.values().all(|p| p.error.is_none());
        obs
    }

    /// Makes sure every backing volume of `r` exists with metadata; returns the file.
    fn prepare(
        &mut self,
        r: &DesiredResource,
        pools: &BTreeMap<&str, &DesiredPool>,
        existing: Option<&str>,
    ) -> Result<(String, Vec<(u32, u64)>), String> {
        blockd::config::check_name(&r.name)?;
        // Checked before anything is created for it.
        if existing.is_some_and(|t| !render::is_managed(t)) {
            return Err(format!(
                "{} exists and was not written by the satellite; move it away (the satellite never overwrites files it did not write)",
                self.file_of(&r.name).display()
            ));
        }
        let me = r
            .nodes
            .iter()
            .find(|n| n.name == self.paths.node)
            .ok_or_else(|| {
                format!(
                    "the controller sent resource '{}' without this node ({}) in its node list",
                    r.name, self.paths.node
                )
            })?;
        let my_id = me.id;
        let mut vols = Vec::new();
        let mut sizes = Vec::new();
        for v in &r.volumes {
            let usable = v.size_kib.saturating_mul(1024);
            let size = blockd::volume::backing_size_for(usable, MAX_PEERS)
                .map_err(|e| format!("volume {}: {e}", v.number))?;
            let backing = match (&v.pool, me.diskless) {
                (None, _) | (_, true) => None,
                (Some(pool), false) => {
                    let pool = pools.get(pool.as_str()).copied().ok_or_else(|| {
                        format!(
                            "volume {} wants storage pool '{pool}', which the controller did not describe for this node",
                            v.number
                        )
                    })?;
                    sizes.push((v.number, size));
                    Some(self.ensure_volume(r, my_id, v.number, pool, size)?)
                }
            };
            vols.push(LocalVolume {
                number: v.number,
                backing,
                size,
            });
        }
        let text = render::resource_file(&self.paths.node, r, &vols);
        render::check(&self.file_of(&r.name), &text)?;
        Ok((text, sizes))
    }

    /// Online grow when the desired size is above what blockd serves: the diskful node
    /// with the lowest node id asks its blockd to `resize`, which grows every diskful
    /// node together (docs/replication.md, "Online grow"); the others wait for it.
    /// Returns why the resource is not at its size yet, if it is not.
    fn grow(&mut self, r: &DesiredResource, sizes: &[(u32, u64)], st: &Status) -> Option<String> {
        let rs = st.resources.iter().find(|x| x.name == r.name)?;
        let coordinator = r
            .nodes
            .iter()
            .filter(|n| !n.diskless)
            .min_by_key(|n| n.id)?;
        for &(number, want) in sizes {
            let v = rs.volumes.iter().find(|v| v.number == number)?;
            let have = v.backing_size?;
            if have >= want || !v.open {
                continue;
            }
            if coordinator.name != self.paths.node {
                return Some(format!(
                    "volume {number} grows to {want} backing bytes when node {} runs the grow",
                    coordinator.name
                ));
            }
            let ready = v.disk_state.as_deref() == Some("UpToDate")
                && v.peers.iter().filter(|p| !p.diskless).all(|p| {
                    p.connection == "Connected" && p.disk_state.as_deref() == Some("UpToDate")
                });
            if !ready {
                return Some(format!(
                    "volume {number} grows to {want} backing bytes once every diskful node is connected and UpToDate"
                ));
            }
            if self
                .grow_tried
                .get(&r.name)
                .is_some_and(|t| t.elapsed() < GROW_RETRY)
            {
                return Some(format!("volume {number}: growing to {want} backing bytes"));
            }
            self.grow_tried.insert(r.name.clone(), Instant::now());
            let req = Request::Resize {
                resource: r.name.clone(),
                size: want,
                volume: Some(number),
            };
            match admin::call(&self.paths.admin_socket, &req, ADMIN_TIMEOUT) {
                Ok(a) if a.ok => {
                    tracing::info!(resource = %r.name, volume = number, size = want, "grown");
                    self.grow_tried.remove(&r.name);
                }
                Ok(a) => {
                    return Some(format!(
                        "growing volume {number} to {want} backing bytes failed (tried again in {}s): {}",
                        GROW_RETRY.as_secs(),
                        a.error.unwrap_or_default()
                    ));
                }
                Err(e) => return Some(format!("growing volume {number}: {e}")),
            }
        }
        None
    }

    fn ensure_volume(
        &mut self,
        r: &DesiredResource,
        my_id: u8,
        number: u32,
        pool: &DesiredPool,
        size: u64,
    ) -> Result<PathBuf, String> {
        let name = storage::volume_name(&r.name, number);
        let node = self.paths.node.clone();
        let entry = self.ledger.find(&r.name, number).cloned();
        let provider = self.provider(pool)?;
        let zeroed = provider.zeroed_on_create();
        let found = provider
            .get(&name)
            .map_err(|e| format!("volume {number}: {e}"))?;
        let (info, mut entry) = match (found, entry) {
            (Some(info), Some(e)) => (info, e),
            (Some(info), None) => {
                // Not made by this satellite (for example its state directory was
                // lost): adopt it only if it carries tandem metadata.
                if blockd::volume::peek(&info.path).is_err() {
                    return Err(format!(
                        "backing volume {} exists in pool '{}' but was not created by this satellite and has no tandem metadata; remove it, or run `tandem local create-md` on it if it holds this resource's data",
                        info.path.display(),
                        pool.name
                    ));
                }
                tracing::warn!(volume = %info.path.display(), "adopting an existing backing volume with tandem metadata");
                let e = LedgerEntry {
                    resource: r.name.clone(),
                    volume: number,
                    pool: pool.clone(),
                    name: name.clone(),
                    md_written: true,
                    remade: false,
                };
                self.ledger.upsert(e.clone());
                self.save_ledger()?;
                (info, e)
            }
            (None, old) => {
                let remade = old.as_ref().is_some_and(|e| e.md_written || e.remade);
                if remade {
                    tracing::warn!(resource = %r.name, volume = number, "backing volume vanished; making a new one, which will resync fully from the peers");
                }
                let e = LedgerEntry {
                    resource: r.name.clone(),
                    volume: number,
                    pool: pool.clone(),
                    name: name.clone(),
                    md_written: false,
                    remade,
                };
                // Recorded before it exists, so a crash never leaves an unknown volume.
                self.ledger.upsert(e.clone());
                self.save_ledger()?;
                let provider = self.provider(pool)?;
                let info = provider
                    .create(&name, size)
                    .map_err(|e| format!("volume {number}: {e}"))?;
                tracing::info!(resource = %r.name, volume = number, path = %info.path.display(), size, "created backing volume");
                (info, e)
            }
        };
        if !entry.md_written {
            let cfg = VolumeConfig {
                number,
                backing: info.path.clone(),
                size: Some(size),
                preallocate: false,
                nbd_tcp: None,
                max_peers: MAX_PEERS,
            };
            let seed = r.initial_generation.filter(|_| {
                !entry.remade
                    && r.initial_nodes.contains(&node)
                    && (zeroed || first_initial(r).as_deref() == Some(node.as_str()))
            });
            let written = match seed {
                Some(g) => blockd::volume::seed_md(&cfg, my_id, g),
                None => blockd::volume::create_md(&cfg, false),
            };
            match written {
                Ok(_) => {}
                // Written before a crash cut the ledger update short: it is ours.
                Err(blockd::volume::VolumeError::HasMetadata { .. }) => {}
                Err(e) => return Err(format!("volume {number}: writing metadata: {e}")),
            }
            entry.md_written = true;
            self.ledger.upsert(entry);
            self.save_ledger()?;
        }
        Ok(info.path)
    }

    /// Deletes ledger volumes whose resource is not wanted, once blockd no longer
    /// serves the resource. Returns what is still being removed, and why.
    fn remove_unwanted(
        &mut self,
        prepared: &BTreeMap<String, Prepared>,
        status: Option<&Status>,
    ) -> Vec<ObservedRemoval> {
        let mut removing = Vec::new();
        let gone: Vec<LedgerEntry> = self
            .ledger
            .volumes
            .iter()
            .filter(|e| !prepared.contains_key(&e.resource))
            .cloned()
            .collect();
        let mut changed = false;
        for e in gone {
            let reason = match status {
                None => Some("waiting for blockd to release it (blockd is not reachable)".to_owned()),
                Some(s) => s
                    .resources
                    .iter()
                    .find(|x| x.name == e.resource)
                    .map(|_| {
                        "waiting for blockd to take the resource down (its file is removed; `tandem local status` on this node shows why it stays)".to_owned()
                    }),
            };
            if let Some(reason) = reason {
                push_removal(&mut removing, &e.resource, reason);
                continue;
            }
            let done = self
                .provider(&e.pool)
                .and_then(|p| p.delete(&e.name).map_err(|x| x.to_string()));
            match done {
                Ok(()) => {
                    tracing::info!(resource = %e.resource, volume = e.volume, "deleted backing volume");
                    self.ledger
                        .volumes
                        .retain(|x| !(x.resource == e.resource && x.volume == e.volume));
                    changed = true;
                }
                Err(err) => push_removal(
                    &mut removing,
                    &e.resource,
                    format!("deleting backing volume {} failed: {err}; retrying", e.name),
                ),
            }
        }
        if changed && let Err(err) = self.save_ledger() {
            push_removal(&mut removing, "(ledger)", err);
        }
        removing
    }

    fn observe_pools(&mut self, pools: &[DesiredPool], obs: &mut ObservedState) {
        let due = self
            .capacity_at
            .is_none_or(|t| t.elapsed() >= CAPACITY_EVERY)
            || pools.iter().any(|p| !self.capacity.contains_key(&p.name));
        if due {
            self.capacity.clear();
            for pool in pools {
                let seen = match self
                    .provider(pool)
                    .and_then(|p| p.capacity().map_err(|e| e.to_string()))
                {
                    Ok(c) => ObservedPool {
                        name: pool.name.clone(),
                        free_capacity_kib: Some(c.free_kib),
                        total_capacity_kib: Some(c.total_kib),
                        error: None,
                    },
                    Err(e) => ObservedPool {
                        name: pool.name.clone(),
                        free_capacity_kib: None,
                        total_capacity_kib: None,
                        error: Some(e),
                    },
                };
                self.capacity.insert(pool.name.clone(), seen);
            }
            self.capacity_at = Some(Instant::now());
        }
        obs.pools = pools
            .iter()
            .filter_map(|p| self.capacity.get(&p.name).cloned())
            .collect();
    }
}

fn push_removal(out: &mut Vec<ObservedRemoval>, name: &str, reason: String) {
    if !out.iter().any(|r| r.name == name) {
        out.push(ObservedRemoval {
            name: name.to_owned(),
            reason,
        });
    }
}

/// The initial node that seeds the data when volumes are not zeroed on creation: the
/// one with the lowest node id.
fn first_initial(r: &DesiredResource) -> Option<String> {
    r.nodes
        .iter()
        .filter(|n| !n.diskless && r.initial_nodes.contains(&n.name))
        .min_by_key(|n| n.id)
        .map(|n| n.name.clone())
}

fn observe(
    r: &DesiredResource,
    error: Option<String>,
    status: Option<&Status>,
) -> ObservedResource {
    let rs: Option<&ResourceStatus> =
        status.and_then(|s| s.resources.iter().find(|x| x.name == r.name));
    let mut out = ObservedResource {
        name: r.name.clone(),
        error,
        role: None,
        volumes: Vec::new(),
        peers: Vec::new(),
    };
    let Some(rs) = rs else {
        if out.error.is_none() && status.is_some() {
            out.error = Some("blockd does not serve it yet".to_owned());
        }
        return out;
    };
    if out.error.is_none() {
        out.error = rs.error.clone();
    }
    for v in &rs.volumes {
        if out.role.is_none() && v.open {
            out.role = v.role.clone();
        }
        if out.error.is_none() {
            out.error = v.error.clone();
        }
        out.volumes.push(ObservedVolume {
            number: v.number,
            disk_state: if v.open { v.disk_state.clone() } else { None },
            quorum: v.quorum,
            may_promote: v.may_promote,
            size: v.size,
            nbd_uri: Some(v.nbd_uri.clone()),
            backing: (!v.backing.is_empty()).then(|| v.backing.clone()),
            hint: v.hint.clone(),
            resync_left_bytes: Some(v.resync_left_bytes),
        });
        if out.peers.is_empty() {
            out.peers = v
                .peers
                .iter()
                .map(|p| ObservedPeer {
                    name: p.name.clone(),
                    connection: p.connection.clone(),
                    replication: p.replication.clone(),
                    disk_state: p.disk_state.clone(),
                    out_of_sync_bytes: p.out_of_sync_bytes,
                    resync_done_percent: p.resync_done_percent,
                })
                .collect();
        }
    }
    out
}
