//! The blockd daemon: resources from the config directory, their volumes served over
//! NBD, and the admin socket that changes them.
//!
//! State changes (up, down, adjust, create-md) run one at a time under one lock and do
//! their blocking file work on tokio's blocking pool. NBD connections run on their own
//! threads (see the `nbd` crate), so the data path never waits for the control path.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nbd::{BlockDevice, ExportInfo, Exports, Limits, OpenError};
use thiserror::Error;
use tokio::task::JoinHandle;

use crate::admin::{self, PeerStatus, Request, ResourceStatus, Response, Status, VolumeStatus};
use crate::config::{self, ResourceConfig, VolumeConfig};
use crate::peer;
use crate::repl::{self, ReplVolume};
use crate::volume::{self, LocalVolume};

/// Most NBD connections one volume accepts at once.
pub const MAX_CONNS_PER_VOLUME: usize = 64;
/// How long `down` waits for running requests to finish.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Admin connections served at once.
pub const MAX_ADMIN_CONNS: usize = 32;
/// Peer handshakes in progress at once.
pub const MAX_PEER_HANDSHAKES: usize = 64;

#[derive(Debug, Error)]
pub enum DaemonError {
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "another blockd is already answering on {0}; stop it first, or give this one another --run-dir / --admin-socket"
    )]
    AlreadyRunning(PathBuf),
}

#[derive(Debug, Clone)]
pub struct Options {
    pub config_dir: PathBuf,
    pub run_dir: PathBuf,
    pub admin_socket: PathBuf,
    pub limits: Limits,
    /// The node name this daemon runs as in replicated resources.
    pub node: String,
}

/// The host name, the default node name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

impl Options {
    /// Relative paths are made absolute so that the NBD URIs in status work from any
    /// directory.
    pub fn new(config_dir: PathBuf, run_dir: PathBuf, admin_socket: Option<PathBuf>) -> Self {
        let abs = |p: PathBuf| std::path::absolute(&p).unwrap_or(p);
        let (config_dir, run_dir) = (abs(config_dir), abs(run_dir));
        let admin_socket = admin_socket
            .map(abs)
            .unwrap_or_else(|| run_dir.join("admin.sock"));
        Options {
            config_dir,
            run_dir,
            admin_socket,
            limits: Limits::default(),
            node: hostname(),
        }
    }
}

/// Live NBD connections of one volume, so `down` can end them.
#[derive(Default)]
struct Conns {
    next: AtomicU64,
    live: Mutex<HashMap<u64, Box<dyn Fn() + Send>>>,
}

impl std::fmt::Debug for Conns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conns")
            .field("live", &self.count())
            .finish()
    }
}

impl Conns {
    fn count(&self) -> usize {
        self.live.lock().map(|m| m.len()).unwrap_or(0)
    }
    fn shutdown_all(&self) {
        if let Ok(m) = self.live.lock() {
            m.values().for_each(|hook| hook());
        }
    }
}

/// A volume as served: local only, or replicated with peers.
#[derive(Debug, Clone)]
enum Dev {
    Local(Arc<LocalVolume>),
    Repl(Arc<ReplVolume>),
}

impl Dev {
    fn size(&self) -> u64 {
        match self {
            Dev::Local(d) => d.size(),
            Dev::Repl(r) => r.size(),
        }
    }
    fn local(&self) -> Option<&Arc<LocalVolume>> {
        match self {
            Dev::Local(d) => Some(d),
            Dev::Repl(r) => r.local.as_ref(),
        }
    }
}

/// Replicated volumes by resource name, for the peer listener.
type ReplIndex = Arc<Mutex<HashMap<String, Arc<ReplVolume>>>>;

#[derive(Debug)]
struct VolumeRt {
    dev: Dev,
    export_name: String,
    listeners: Vec<JoinHandle<()>>,
    conns: Arc<Conns>,
}

#[derive(Debug)]
struct ResourceRt {
    cfg: ResourceConfig,
    /// Non-empty exactly when the resource is up.
    volumes: BTreeMap<u32, VolumeRt>,
    error: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    resources: BTreeMap<String, ResourceRt>,
}

#[derive(Debug)]
pub struct Daemon {
    opts: Options,
    state: Mutex<State>,
    rt: tokio::runtime::Handle,
    repls: ReplIndex,
    peer_listeners: Mutex<BTreeMap<SocketAddr, JoinHandle<()>>>,
}

fn export_name(res: &str, vol: u32) -> String {
    format!("{res}/{vol}")
}

/// `nbd+unix://` URI with the socket as an absolute path, as libnbd and QEMU take it.
pub fn nbd_unix_uri(export: &str, socket: &Path) -> String {
    format!("nbd+unix:///{export}?socket={}", socket.display())
}

/// Exports of one volume endpoint: its own name, or the empty default name.
#[derive(Debug)]
struct VolumeExport {
    name: String,
    dev: Dev,
}

impl Exports for VolumeExport {
    fn list(&self) -> Vec<ExportInfo> {
        vec![ExportInfo {
            name: self.name.clone(),
            description: format!("tandem volume {}", self.name),
        }]
    }
    fn describe(&self, name: &str) -> Result<(ExportInfo, u64, bool), OpenError> {
        if !name.is_empty() && name != self.name {
            return Err(OpenError::Unknown(format!(
                "{name} (this socket serves {})",
                self.name
            )));
        }
        Ok((self.list().remove(0), self.dev.size(), false))
    }
    fn open(&self, name: &str) -> Result<Arc<dyn BlockDevice>, OpenError> {
        self.describe(name)?;
        match &self.dev {
            Dev::Local(d) => Ok(d.clone()),
            Dev::Repl(r) => match r.open_for_client() {
                Ok(d) => Ok(d),
                Err(e) => Err(OpenError::Refused(format!("{}: {e}", self.name))),
            },
        }
    }
}

impl Daemon {
    /// Prepares the run directory and admin socket path and loads the configuration.
    /// Resources are brought up by [`Daemon::up`].
    pub fn new(opts: Options, rt: tokio::runtime::Handle) -> Result<Arc<Daemon>, DaemonError> {
        let io = |what, path: &Path| {
            let path = path.to_owned();
            move |source| DaemonError::Io { what, path, source }
        };
        std::fs::create_dir_all(opts.run_dir.join("nbd"))
            .map_err(io("create run directory", &opts.run_dir))?;
        let configs = config::load_dir(&opts.config_dir)?;
        let resources = configs
            .into_iter()
            .map(|(name, cfg)| {
                (
                    name,
                    ResourceRt {
                        cfg,
                        volumes: BTreeMap::new(),
                        error: None,
                    },
                )
            })
            .collect();
        Ok(Arc::new(Daemon {
            opts,
            state: Mutex::new(State { resources }),
            rt,
            repls: Arc::new(Mutex::new(HashMap::new())),
            peer_listeners: Mutex::new(BTreeMap::new()),
        }))
    }

    pub fn options(&self) -> &Options {
        &self.opts
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves state that is still worth reporting.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn socket_path(&self, res: &str, vol: u32) -> PathBuf {
        self.opts
            .run_dir
            .join("nbd")
            .join(format!("{res}-{vol}.sock"))
    }

    /// Binds the admin socket, refusing to start next to a live daemon. Call within the
    /// runtime. Binding before volumes come up, and accepting only after, means a client
    /// that connects early waits and then sees the real state, never a half-started one.
    pub fn bind_admin(&self) -> Result<tokio::net::UnixListener, DaemonError> {
        let path = self.opts.admin_socket.clone();
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(&path).is_ok() {
                return Err(DaemonError::AlreadyRunning(path));
            }
            let _ = std::fs::remove_file(&path);
        }
        tokio::net::UnixListener::bind(&path).map_err(|source| DaemonError::Io {
            what: "bind admin socket",
            path: path.clone(),
            source,
        })
    }

    /// Serves the admin socket until the task is dropped.
    pub async fn serve_admin(self: Arc<Self>, listener: tokio::net::UnixListener) {
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_ADMIN_CONNS));
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("admin accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                tracing::warn!("admin socket: too many connections, dropping one");
                continue;
            };
            let me = self.clone();
            let Ok(stream) = stream.into_std() else {
                continue;
            };
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                me.admin_conn(stream);
            });
        }
    }

    fn admin_conn(&self, stream: std::os::unix::net::UnixStream) {
        let _ = stream.set_nonblocking(false);
        let Ok(mut w) = stream.try_clone() else {
            return;
        };
        let mut r = BufReader::new(stream);
        loop {
            let mut line = String::new();
            match (&mut r).take(admin::MAX_LINE).read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let resp = if !line.ends_with('\n') && line.len() as u64 >= admin::MAX_LINE {
                Response::err(format!("request longer than {} bytes", admin::MAX_LINE))
            } else {
                match serde_json::from_str::<Request>(&line) {
                    Ok(Request::Events {}) => {
                        self.stream_events(&mut w);
                        return;
                    }
                    Ok(req) => self.handle(req),
                    Err(e) => Response::err(format!("bad request: {e}; see docs/admin-socket.md")),
                }
            };
            let mut out = serde_json::to_vec(&resp).unwrap_or_else(|_| b"{\"ok\":false}".to_vec());
            out.push(b'\n');
            if w.write_all(&out).is_err() {
                return;
            }
        }
    }

    /// Writes an ok answer, then every state change of the replicated volumes that are
    /// up now, one JSON object per line, until the client goes away.
    fn stream_events(&self, w: &mut std::os::unix::net::UnixStream) {
        let mut out = serde_json::to_vec(&Response::ok("streaming events")).unwrap_or_default();
        out.push(b'\n');
        if w.write_all(&out).is_err() {
            return;
        }
        let vols: Vec<Arc<ReplVolume>> = self
            .repls
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(1024);
        let mut tasks = Vec::new();
        for v in vols {
            let mut sub = v.subscribe();
            let tx = tx.clone();
            tasks.push(self.rt.spawn(async move {
                loop {
                    match sub.recv().await {
                        Ok(line) => {
                            if tx.send(line).await.is_err() {
                                return;
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                            let line = format!("{{\"event\":\"lagged\",\"missed\":{n}}}");
                            if tx.send(line).await.is_err() {
                                return;
                            }
                        }
                        Err(_) => return,
                    }
                }
            }));
        }
        drop(tx);
        while let Some(line) = rx.blocking_recv() {
            if w.write_all(line.as_bytes()).is_err() || w.write_all(b"\n").is_err() {
                break;
            }
        }
        tasks.iter().for_each(|t| t.abort());
    }

    /// Carries out one admin request.
    pub fn handle(&self, req: Request) -> Response {
        if req == (Request::Status {}) {
            tracing::debug!(?req, "admin request");
        } else {
            tracing::info!(?req, "admin request");
        }
        let res = match req {
            Request::Status {} => {
                return Response {
                    ok: true,
                    status: Some(self.status()),
                    ..Default::default()
                };
            }
            Request::Up { resource } => self.up(resource.as_deref()),
            Request::Down { resource } => self.down(resource.as_deref()),
            Request::Adjust { resource } => self.adjust(resource.as_deref()),
            Request::CreateMd { resource, force } => self.create_md(&resource, force),
            Request::Primary { resource, force } => self.with_repl(&resource, |v| {
                self.rt.block_on(v.promote_patiently(force))?;
                Ok(format!("{resource}: primary"))
            }),
            Request::Secondary { resource, force } => {
                // A client that just disconnected may not be reaped yet: give it a
                // moment before refusing.
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
                let mut conns = self.nbd_clients(&resource);
                while !force && conns > 0 && std::time::Instant::now() < deadline {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    conns = self.nbd_clients(&resource);
                }
                self.with_repl(&resource, |v| {
                    let held = v
                        .snapshot()
                        .filter(|s| s.status.suspended.is_some())
                        .map(|s| s.status.held_requests);
                    if conns > 0 && !force {
                        let suspended = match held {
                            Some(n) => format!(
                                "; I/O is suspended ({n} request(s) held until quorum returns): `tandem local secondary {resource} --force` demotes now and fails them with an I/O error"
                            ),
                            None => format!(
                                "; `tandem local secondary {resource} --force` demotes now and fails their requests with an I/O error"
                            ),
                        };
                        return Err(format!(
                            "{resource} is held open by {conns} NBD client(s); stop them (the last one to leave demotes the node) and try again{suspended}"
                        ));
                    }
                    self.rt.block_on(v.demote())?;
                    let mut msg = format!("{resource}: secondary");
                    if let Some(n) = held {
                        msg.push_str(&format!(
                            "; I/O was suspended: {n} held request(s) failed with an I/O error"
                        ));
                    }
                    if conns > 0 {
                        msg.push_str(&format!(
                            "; {conns} NBD client(s) still connected get an I/O error for every request until they reconnect"
                        ));
                    }
                    Ok(msg)
                })
            }
            Request::Connect {
                resource,
                peer,
                discard_my_data,
            } => self.with_repl(&resource, |v| {
                let peer = peer_id(v, peer.as_deref())?;
                self.rt.block_on(v.admin(replica::core::Admin::Connect {
                    peer,
                    discard_my_data,
                }))?;
                Ok(format!(
                    "{resource}: connecting{}",
                    if discard_my_data {
                        " (this node's changes will be discarded if the nodes disagree)"
                    } else {
                        ""
                    }
                ))
            }),
            Request::Disconnect { resource, peer } => self.with_repl(&resource, |v| {
                let peer = peer_id(v, peer.as_deref())?;
                self.rt
                    .block_on(v.admin(replica::core::Admin::Disconnect { peer }))?;
                Ok(format!(
                    "{resource}: disconnected (StandAlone until `tandem local connect {resource}`)"
                ))
            }),
            Request::Invalidate { resource } => self.with_repl(&resource, |v| {
                let snap = v.snapshot().ok_or("volume is shutting down")?;
                if snap.status.role == wire::Role::Primary {
                    return Err(format!(
                        "{resource} is primary here; invalidate a secondary (or run `tandem local secondary {resource}` first)"
                    ));
                }
                self.rt
                    .block_on(v.admin(replica::core::Admin::Invalidate))?;
                Ok(format!(
                    "{resource}: data invalidated; a full resync from an UpToDate peer follows"
                ))
            }),
            Request::Verify { resource, peer } => self.with_repl(&resource, |v| {
                let id = peer_id(v, peer.as_deref())?;
                // Peers may be re-handshaking (after a role change): wait for that,
                // bounded by the peer timeout.
                let deadline = std::time::Instant::now()
                    + std::time::Duration::from_millis(v.cfg().timeout_ms);
                let ready = loop {
                    let snap = v.snapshot().ok_or("volume is shutting down")?;
                    if snap.status.disk != wire::Disk::UpToDate {
                        return Err(format!(
                            "{resource}: only a node with UpToDate data can verify (this one is {})",
                            repl::disk_name(snap.status.disk)
                        ));
                    }
                    let ready = snap.status.peers.iter().any(|p| {
                        id.is_none_or(|i| i == p.id)
                            && p.diskful
                            && p.conn == replica::core::ConnState::Connected
                            && p.disk == wire::Disk::UpToDate
                    });
                    if ready || std::time::Instant::now() >= deadline {
                        break ready;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                };
                if !ready {
                    return Err(format!(
                        "{resource}: no connected UpToDate peer{} to verify against",
                        peer.as_deref().map(|p| format!(" {p}")).unwrap_or_default()
                    ));
                }
                self.rt
                    .block_on(v.admin(replica::core::Admin::Verify { peer: id }))?;
                Ok(format!(
                    "{resource}: verify started; `tandem local status {resource}` shows progress and the blocks found different"
                ))
            }),
            Request::Attach { resource } => self.with_repl(&resource, |v| {
                let snap = v.snapshot().ok_or("volume is shutting down")?;
                if snap.status.detached.is_none() {
                    return Err(format!("{resource}: the local disk is not detached"));
                }
                if snap.status.role == wire::Role::Primary {
                    return Err(format!(
                        "{resource} is primary here; a detached disk is attached on a secondary (stop the clients or move them, then retry)"
                    ));
                }
                self.rt.block_on(v.attach())?;
                Ok(format!(
                    "{resource}: disk attached; a full resync from an UpToDate peer follows"
                ))
            }),
            Request::Resize {
                resource,
                size,
                volume,
            } => self.resize(&resource, size, volume),
            Request::Events {} => Err("events streams; use `tandem local events`".into()),
        };
        match res {
            Ok(msg) => Response::ok(msg),
            Err(e) => Response::err(e),
        }
    }

    /// Runs `f` on the replicated volume of `resource`.
    fn with_repl(
        &self,
        resource: &str,
        f: impl FnOnce(&Arc<ReplVolume>) -> Result<String, String>,
    ) -> Result<String, String> {
        let v = self
            .repls
            .lock()
            .ok()
            .and_then(|m| m.get(resource).cloned());
        match v {
            Some(v) => f(&v),
            None => {
                let state = self.lock();
                match state.resources.get(resource) {
                    None => Err(format!(
                        "no resource {resource:?} in the configuration; add its file and run `tandem local adjust`"
                    )),
                    Some(r) if r.cfg.repl.is_none() => Err(format!(
                        "resource {resource} has no [[node]] sections, so it has no peers and is always primary while up"
                    )),
                    Some(_) => Err(format!(
                        "resource {resource} is down; run `tandem local up {resource}` first"
                    )),
                }
            }
        }
    }

    fn nbd_clients(&self, resource: &str) -> usize {
        let state = self.lock();
        state
            .resources
            .get(resource)
            .map(|r| r.volumes.values().map(|v| v.conns.count()).sum())
            .unwrap_or(0)
    }

    fn targets(state: &State, resource: Option<&str>) -> Result<Vec<String>, String> {
        match resource {
            None | Some("all") => Ok(state.resources.keys().cloned().collect()),
            Some(r) if state.resources.contains_key(r) => Ok(vec![r.to_owned()]),
            Some(r) => Err(format!(
                "no resource {r:?} in the configuration; add a resource file and run `tandem local adjust`"
            )),
        }
    }

    /// Brings resources up; each one that fails stays down with its reason in status.
    pub fn up(&self, resource: Option<&str>) -> Result<String, String> {
        let mut state = self.lock();
        let names = Self::targets(&state, resource)?;
        let mut failed = Vec::new();
        let mut done = 0;
        for name in names {
            let Some(r) = state.resources.get_mut(&name) else {
                continue;
            };
            if !r.volumes.is_empty() {
                continue;
            }
            match self.up_resource(&r.cfg) {
                Ok(vols) => {
                    r.volumes = vols;
                    r.error = None;
                    done += 1;
                }
                Err(e) => {
                    failed.push(format!("{name}: {e}"));
                    r.error = Some(e);
                }
            }
        }
        if failed.is_empty() {
            Ok(format!("{done} resource(s) brought up"))
        } else {
            Err(failed.join("\n"))
        }
    }

    fn up_resource(&self, cfg: &ResourceConfig) -> Result<BTreeMap<u32, VolumeRt>, String> {
        let mut vols = BTreeMap::new();
        for v in cfg.volumes.values() {
            match self.up_volume(&cfg.name, v, cfg.repl.as_ref()) {
                Ok(rt) => {
                    vols.insert(v.number, rt);
                }
                Err(e) => {
                    // All or nothing: a half-up resource would be a state nobody asked for.
                    for (n, rt) in std::mem::take(&mut vols) {
                        let _ = self.down_volume(&cfg.name, n, rt);
                    }
                    return Err(format!("volume {}: {e}", v.number));
                }
            }
        }
        Ok(vols)
    }

    fn up_volume(
        &self,
        res: &str,
        cfg: &VolumeConfig,
        repl_cfg: Option<&config::ReplConfig>,
    ) -> Result<VolumeRt, String> {
        let dev = match repl_cfg {
            None => Dev::Local(Arc::new(
                LocalVolume::open(cfg, res).map_err(|e| e.to_string())?,
            )),
            Some(rc) => {
                let me = rc.node(&self.opts.node).ok_or_else(|| {
                    format!(
                        "this node ({}) is not listed in the resource (nodes: {}); start blockd with --node set to one of them",
                        self.opts.node,
                        rc.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(", ")
                    )
                })?;
                self.listen_peers(me.address)?;
                let v = ReplVolume::start(res, cfg, rc, &self.opts.node, &self.rt)?;
                if let Ok(mut m) = self.repls.lock() {
                    m.insert(res.to_owned(), v.clone());
                }
                Dev::Repl(v)
            }
        };
        let name = export_name(res, cfg.number);
        let conns = Arc::new(Conns::default());
        let export = Arc::new(VolumeExport {
            name: name.clone(),
            dev: dev.clone(),
        });
        let sock = self.socket_path(res, cfg.number);
        let mut listeners = Vec::new();
        let started = (|| {
            listeners.push(self.listen_unix(&sock, export.clone(), conns.clone())?);
            if let Some(addr) = cfg.nbd_tcp {
                listeners.push(self.listen_tcp(addr, export.clone(), conns.clone())?);
            }
            Ok::<(), String>(())
        })();
        if let Err(e) = started {
            listeners.iter().for_each(|l| l.abort());
            let _ = std::fs::remove_file(&sock);
            self.close_dev(res, &dev);
            return Err(e);
        }
        tracing::info!(export = %name, socket = %sock.display(), size = dev.size(), "volume up");
        Ok(VolumeRt {
            dev,
            export_name: name,
            listeners,
            conns,
        })
    }

    fn listen_unix(
        &self,
        path: &Path,
        export: Arc<VolumeExport>,
        conns: Arc<Conns>,
    ) -> Result<JoinHandle<()>, String> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(format!(
                    "{} exists and is not a socket; remove it",
                    path.display()
                ));
            }
            let _ = std::fs::remove_file(path);
        }
        let _guard = self.rt.enter();
        let l = tokio::net::UnixListener::bind(path)
            .map_err(|e| format!("bind NBD socket {}: {e}", path.display()))?;
        let limits = self.opts.limits.clone();
        Ok(self.rt.spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                if let Ok(s) = s.into_std() {
                    spawn_conn(s, export.clone(), conns.clone(), limits.clone());
                }
            }
        }))
    }

    fn listen_tcp(
        &self,
        addr: SocketAddr,
        export: Arc<VolumeExport>,
        conns: Arc<Conns>,
    ) -> Result<JoinHandle<()>, String> {
        let std_l = std::net::TcpListener::bind(addr)
            .map_err(|e| format!("listen on nbd-tcp {addr}: {e}"))?;
        std_l
            .set_nonblocking(true)
            .map_err(|e| format!("nbd-tcp {addr}: {e}"))?;
        let _guard = self.rt.enter();
        let l =
            tokio::net::TcpListener::from_std(std_l).map_err(|e| format!("nbd-tcp {addr}: {e}"))?;
        let limits = self.opts.limits.clone();
        Ok(self.rt.spawn(async move {
            loop {
                let Ok((s, _)) = l.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let _ = s.set_nodelay(true);
                if let Ok(s) = s.into_std() {
                    spawn_conn(s, export.clone(), conns.clone(), limits.clone());
                }
            }
        }))
    }

    /// Takes resources down: stops listening, ends connections, flushes, and records a
    /// clean close in the metadata.
    pub fn down(&self, resource: Option<&str>) -> Result<String, String> {
        let mut state = self.lock();
        let names = Self::targets(&state, resource)?;
        let mut failed = Vec::new();
        let mut done = 0;
        for name in names {
            let Some(r) = state.resources.get_mut(&name) else {
                continue;
            };
            r.error = None;
            if r.volumes.is_empty() {
                continue;
            }
            for (n, v) in std::mem::take(&mut r.volumes) {
                if let Err(e) = self.down_volume(&name, n, v) {
                    failed.push(format!("{name}/{n}: {e}"));
                }
            }
            done += 1;
        }
        if failed.is_empty() {
            Ok(format!("{done} resource(s) taken down"))
        } else {
            Err(failed.join("\n"))
        }
    }

    fn down_volume(&self, res: &str, number: u32, v: VolumeRt) -> Result<(), String> {
        v.listeners.iter().for_each(|l| l.abort());
        let _ = std::fs::remove_file(self.socket_path(res, number));
        if let Some(d) = v.dev.local() {
            d.stop_io();
        }
        v.conns.shutdown_all();
        // Requests held while I/O is suspended would keep their connections open
        // until quorum returns: going down ends the suspension, failing them.
        if let Dev::Repl(r) = &v.dev
            && r.snapshot().is_some_and(|s| s.status.suspended.is_some())
        {
            tracing::warn!(
                resource = res,
                "down while I/O is suspended: the held requests fail"
            );
            let _ = self.rt.block_on(r.admin(replica::core::Admin::Secondary));
        }
        let start = Instant::now();
        while v.conns.count() > 0 {
            if start.elapsed() > DRAIN_TIMEOUT {
                return Err(format!(
                    "{} connection(s) still running after {}s; the volume stays open, try `down` again",
                    v.conns.count(),
                    DRAIN_TIMEOUT.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        match &v.dev {
            Dev::Local(d) => d.close().map_err(|e| e.to_string())?,
            Dev::Repl(_) => self.close_dev(res, &v.dev),
        }
        tracing::info!(export = %v.export_name, "volume down");
        Ok(())
    }

    fn close_dev(&self, res: &str, dev: &Dev) {
        match dev {
            Dev::Local(d) => {
                let _ = d.close();
            }
            Dev::Repl(r) => {
                if let Ok(mut m) = self.repls.lock() {
                    m.remove(res);
                }
                // Admin requests run on the blocking pool, where waiting is fine.
                self.rt.block_on(r.stop());
            }
        }
    }

    /// Listens for peers on this node's replication address (once per address).
    fn listen_peers(&self, addr: SocketAddr) -> Result<(), String> {
        let mut ls = self
            .peer_listeners
            .lock()
            .map_err(|_| "peer listener lock poisoned".to_owned())?;
        if ls.contains_key(&addr) {
            return Ok(());
        }
        let std_l = std::net::TcpListener::bind(addr)
            .map_err(|e| format!("cannot listen for peers on {addr}: {e}"))?;
        std_l
            .set_nonblocking(true)
            .map_err(|e| format!("peer listener {addr}: {e}"))?;
        let _guard = self.rt.enter();
        let l = tokio::net::TcpListener::from_std(std_l)
            .map_err(|e| format!("peer listener {addr}: {e}"))?;
        let repls = self.repls.clone();
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_PEER_HANDSHAKES));
        let task = self.rt.spawn(async move {
            loop {
                let (stream, from) = match l.accept().await {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!("peer accept: {e}");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    tracing::warn!(%from, "too many peer handshakes at once; dropping one");
                    continue;
                };
                let repls = repls.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    if let Err(e) = accept_peer(stream, &repls).await {
                        tracing::warn!(%from, "peer connection refused: {e}");
                    }
                });
            }
        });
        tracing::info!(%addr, "listening for peers");
        ls.insert(addr, task);
        Ok(())
    }

    /// Re-reads the config directory and applies the difference: new resources come
    /// up, removed ones go down, changed volumes are reopened, untouched volumes are
    /// not disturbed. A bad file rejects the whole adjust and keeps the running config.
    pub fn adjust(&self, resource: Option<&str>) -> Result<String, String> {
        let new = config::load_dir(&self.opts.config_dir)
            .map_err(|e| format!("{e}\nnothing was changed; the running configuration is kept"))?;
        let mut state = self.lock();
        let mut names: Vec<String> = state.resources.keys().chain(new.keys()).cloned().collect();
        names.sort();
        names.dedup();
        if let Some(r) = resource.filter(|r| *r != "all") {
            if !names.iter().any(|n| n == r) {
                return Err(format!("no resource {r:?} in the configuration or running"));
            }
            names.retain(|n| n == r);
        }
        let mut report = Vec::new();
        let mut failed = Vec::new();
        for name in names {
            match (state.resources.remove(&name), new.get(&name)) {
                (Some(mut old), None) => {
                    for (n, v) in std::mem::take(&mut old.volumes) {
                        if let Err(e) = self.down_volume(&name, n, v) {
                            failed.push(format!("{name}/{n}: {e}"));
                        }
                    }
                    report.push(format!("{name}: removed"));
                }
                (None, Some(cfg)) => {
                    let mut r = ResourceRt {
                        cfg: cfg.clone(),
                        volumes: BTreeMap::new(),
                        error: None,
                    };
                    match self.up_resource(cfg) {
                        Ok(v) => {
                            r.volumes = v;
                            report.push(format!("{name}: added and up"));
                        }
                        Err(e) => {
                            failed.push(format!("{name}: {e}"));
                            r.error = Some(e);
                        }
                    }
                    state.resources.insert(name, r);
                }
                (Some(mut old), Some(cfg)) => {
                    let r = self.adjust_resource(&mut old, cfg, &mut report);
                    if let Err(e) = r {
                        failed.push(format!("{name}: {e}"));
                        old.error = Some(e);
                    }
                    state.resources.insert(name, old);
                }
                (None, None) => {}
            }
        }
        if !failed.is_empty() {
            return Err(failed.join("\n"));
        }
        if report.is_empty() {
            report.push("nothing to change".into());
        }
        Ok(report.join("\n"))
    }

    fn adjust_resource(
        &self,
        r: &mut ResourceRt,
        cfg: &ResourceConfig,
        report: &mut Vec<String>,
    ) -> Result<(), String> {
        let name = cfg.name.clone();
        let was_up = !r.volumes.is_empty();
        let old_cfg = std::mem::replace(&mut r.cfg, cfg.clone());
        if !was_up {
            r.volumes = self.up_resource(cfg)?;
            r.error = None;
            report.push(format!("{name}: up"));
            return Ok(());
        }
        let mut numbers: Vec<u32> = old_cfg
            .volumes
            .keys()
            .chain(cfg.volumes.keys())
            .copied()
            .collect();
        numbers.sort_unstable();
        numbers.dedup();
        for n in numbers {
            let (old, new) = (old_cfg.volumes.get(&n), cfg.volumes.get(&n));
            if old == new && old_cfg.repl == cfg.repl {
                continue;
            }
            // An open volume's size comes from its metadata (or, diskless, from its
            // peers) and changes only by `resize`: a new `size` alone is recorded for
            // the next open instead of closing the volume and its clients.
            if let (Some(o), Some(nw)) = (old, new)
                && o.size != nw.size
                && (VolumeConfig {
                    size: nw.size,
                    ..o.clone()
                }) == *nw
                && old_cfg.repl == cfg.repl
                && r.volumes.contains_key(&n)
            {
                report.push(format!(
                    "{name}/{n}: new size recorded for the next open (an open volume grows with `resize`)"
                ));
                continue;
            }
            // Changed replication settings of an unchanged volume apply live.
            if old == new
                && let (Some(_), Some(repl)) = (&old_cfg.repl, &cfg.repl)
                && let Some(Dev::Repl(v)) = r.volumes.get(&n).map(|v| &v.dev)
            {
                let msg = self.rt.block_on(v.reconfigure(repl.clone())).map_err(|e| {
                    r.cfg = old_cfg.clone();
                    format!("volume {n}: {e}\nnothing was changed")
                })?;
                report.push(format!("{name}/{n}: {msg}"));
                continue;
            }
            if let Some(v) = r.volumes.remove(&n) {
                self.down_volume(&name, n, v)?;
            }
            if let Some(new) = new {
                r.volumes.insert(
                    n,
                    self.up_volume(&name, new, cfg.repl.as_ref())
                        .map_err(|e| format!("volume {n}: {e}"))?,
                );
                report.push(format!(
                    "{name}/{n}: {}",
                    if old.is_some() { "reopened" } else { "added" }
                ));
            } else {
                report.push(format!("{name}/{n}: removed"));
            }
        }
        Ok(())
    }

    /// Online grow of a resource's volumes to `size` backing bytes: coordinated with
    /// the peers for a replicated resource that is up, local for one without peers,
    /// and only this node's backing files for a resource that is down here.
    pub fn resize(&self, resource: &str, size: u64, volume: Option<u32>) -> Result<String, String> {
        let (cfg, up) = {
            let state = self.lock();
            let r = state.resources.get(resource).ok_or_else(|| {
                format!("no resource {resource:?} in the configuration; add its file and run `tandem local adjust` first")
            })?;
            let up: BTreeMap<u32, Dev> =
                r.volumes.iter().map(|(n, v)| (*n, v.dev.clone())).collect();
            (r.cfg.clone(), up)
        };
        let vols: Vec<&VolumeConfig> = cfg
            .volumes
            .values()
            .filter(|v| volume.is_none_or(|n| n == v.number))
            .collect();
        if vols.is_empty() {
            return Err(format!("resource {resource} has no volume {volume:?}"));
        }
        let mut out = Vec::new();
        for v in vols {
            let line = match up.get(&v.number) {
                Some(Dev::Repl(r)) => self.rt.block_on(r.resize(size))?,
                Some(Dev::Local(d)) => {
                    let l = d
                        .grow(size)
                        .map_err(|e| format!("{resource}/{}: {e}", v.number))?;
                    format!(
                        "{resource}/{}: {} bytes of data on a backing of {} bytes; new NBD clients see the new size",
                        v.number, l.data_size, l.backing_size
                    )
                }
                None => {
                    let me_diskless = cfg
                        .repl
                        .as_ref()
                        .is_some_and(|rc| rc.node(&self.opts.node).is_some_and(|n| n.diskless));
                    if me_diskless {
                        return Err(format!(
                            "{resource} is down and this node has no disk in it: set size = {size} in its resource file"
                        ));
                    }
                    let l = volume::grow_offline(v, resource, size)
                        .map_err(|e| format!("{resource}/{}: {e}", v.number))?;
                    format!(
                        "{resource}/{}: the resource is down here, so only this node's backing grew: {} bytes of data on {} bytes; the peers must hold the same size before they connect",
                        v.number, l.data_size, l.backing_size
                    )
                }
            };
            out.push(line);
        }
        Ok(out.join("\n"))
    }

    pub fn create_md(&self, resource: &str, force: bool) -> Result<String, String> {
        let state = self.lock();
        let r = state.resources.get(resource).ok_or_else(|| {
            format!("no resource {resource:?} in the configuration; add its file and run `tandem local adjust` first")
        })?;
        if !r.volumes.is_empty() {
            return Err(format!(
                "resource {resource} is up; run `tandem local down {resource}` first"
            ));
        }
        let mut out = Vec::new();
        for v in r.cfg.volumes.values() {
            let sb =
                volume::create_md(v, force).map_err(|e| format!("volume {}: {e}", v.number))?;
            out.push(format!(
                "{resource}/{}: metadata written on {} ({} bytes of data)",
                v.number,
                v.backing.display(),
                sb.layout.data_size
            ));
        }
        Ok(out.join("\n"))
    }

    pub fn status(&self) -> Status {
        let state = self.lock();
        let resources = state
            .resources
            .values()
            .map(|r| {
                let volumes = r
                    .cfg
                    .volumes
                    .values()
                    .map(|v| self.volume_status(&r.cfg.name, v, r.volumes.get(&v.number)))
                    .collect();
                ResourceStatus {
                    name: r.cfg.name.clone(),
                    file: r.cfg.file.display().to_string(),
                    state: if r.volumes.is_empty() { "down" } else { "up" }.into(),
                    error: r.error.clone(),
                    volumes,
                }
            })
            .collect();
        Status {
            version: env!("CARGO_PKG_VERSION").into(),
            config_dir: self.opts.config_dir.display().to_string(),
            run_dir: self.opts.run_dir.display().to_string(),
            resources,
        }
    }

    fn volume_status(&self, res: &str, cfg: &VolumeConfig, rt: Option<&VolumeRt>) -> VolumeStatus {
        let export = export_name(res, cfg.number);
        let sock = self.socket_path(res, cfg.number);
        let (sb, error) = match rt {
            Some(rt) => (rt.dev.local().and_then(|d| d.superblock()), None),
            None => match volume::peek(&cfg.backing) {
                Ok(sb) => (Some(sb), None),
                Err(e) => (None, Some(e.to_string())),
            },
        };
        let mut st = VolumeStatus {
            number: cfg.number,
            backing: cfg.backing.display().to_string(),
            // What clients may use (during an online grow the backing may already
            // hold more).
            size: rt
                .map(|r| r.dev.size())
                .or(sb.as_ref().map(|s| s.layout.data_size)),
            backing_size: sb.as_ref().map(|s| s.layout.backing_size),
            open: rt.is_some(),
            nbd_uri: nbd_unix_uri(&export, &sock),
            nbd_socket: sock.display().to_string(),
            nbd_tcp: cfg.nbd_tcp.map(|a| a.to_string()),
            nbd_tcp_uri: cfg.nbd_tcp.map(|a| format!("nbd://{a}/{export}")),
            export_name: export,
            connections: rt.map(|r| r.conns.count() as u64).unwrap_or(0),
            previous_shutdown: rt
                .and_then(|r| r.dev.local())
                .map(|d| if d.was_clean { "clean" } else { "unclean" }.to_owned()),
            read_bytes: rt
                .and_then(|r| r.dev.local())
                .map(|d| d.stats.read_bytes.load(Ordering::Relaxed))
                .unwrap_or(0),
            written_bytes: rt
                .and_then(|r| r.dev.local())
                .map(|d| d.stats.written_bytes.load(Ordering::Relaxed))
                .unwrap_or(0),
            error,
            role: None,
            disk_state: None,
            quorum: None,
            may_promote: None,
            node: None,
            current_uuid: None,
            resync_left_bytes: 0,
            resync_same_bytes: 0,
            peers: Vec::new(),
            detached: None,
            hint: None,
            suspended: None,
            held_requests: 0,
            held_bytes: 0,
            writes_via: None,
        };
        match rt.map(|r| &r.dev) {
            Some(Dev::Local(_)) => {
                st.role = Some("Primary".into());
                st.disk_state = Some("UpToDate".into());
                st.quorum = Some(true);
                st.may_promote = Some(true);
            }
            Some(Dev::Repl(v)) => repl_status(&mut st, v),
            None => {}
        }
        st
    }

    /// Takes everything down and removes the admin socket; for a clean exit.
    pub fn shutdown(&self) {
        if let Err(e) = self.down(None) {
            tracing::error!("shutdown: {e}");
        }
        let _ = std::fs::remove_file(&self.opts.admin_socket);
    }
}

/// Takes one incoming peer connection through the handshake and hands it to its
/// volume, or refuses it with a reason both sides log.
async fn accept_peer(mut stream: tokio::net::TcpStream, repls: &ReplIndex) -> Result<(), String> {
    let offer = peer::read_offer(&mut stream)
        .await
        .map_err(|e| e.to_string())?;
    let vol = repls
        .lock()
        .ok()
        .and_then(|m| m.get(&offer.resource).cloned());
    let check = || -> Result<Arc<ReplVolume>, String> {
        let vol = vol.ok_or_else(|| {
            format!(
                "resource {:?} is not up on this node (check the resource name, or run `tandem local up` here)",
                offer.resource
            )
        })?;
        if offer.to != vol.me.id {
            return Err(format!(
                "this is node {} (id {}), the peer asked for node id {}",
                vol.me.name, vol.me.id, offer.to
            ));
        }
        let cfg = vol.cfg();
        let Some(from) = cfg.node_by_id(offer.from) else {
            return Err(format!(
                "node id {} is not a node of resource {}",
                offer.from, offer.resource
            ));
        };
        if offer.from == vol.me.id {
            return Err(format!("node id {} is this node's own id", offer.from));
        }
        if offer.size != vol.peer_size() {
            return Err(format!(
                "size mismatch: node {} has {} bytes of data, this node {}; give every node the same volume size (after an interrupted `tandem local resize`, run it again where every diskful node is connected; on a node that is down it grows the backing)",
                from.name,
                offer.size,
                vol.peer_size()
            ));
        }
        vol.accepts(offer.from)?;
        Ok(vol)
    };
    let vol = match check() {
        Ok(v) => v,
        Err(reason) => {
            peer::refuse(&mut stream, &reason).await;
            return Err(format!("{}: {reason}", offer.resource));
        }
    };
    let secret = vol.cfg().secret;
    peer::accept(&mut stream, &offer, &secret)
        .await
        .map_err(|e| format!("{} from node id {}: {e}", offer.resource, offer.from))?;
    vol.accepted(offer.from, stream).await;
    Ok(())
}

/// Resolves a peer given by node name.
fn peer_id(v: &ReplVolume, name: Option<&str>) -> Result<Option<u8>, String> {
    match name {
        None => Ok(None),
        Some(n) => match v.cfg().node(n) {
            Some(node) if node.id != v.me.id => Ok(Some(node.id)),
            Some(_) => Err(format!("{n} is this node itself")),
            None => Err(format!(
                "no node {n:?} in resource {} (nodes: {})",
                v.resource,
                v.cfg()
                    .nodes
                    .iter()
                    .map(|n| n.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        },
    }
}

/// Fills the replication fields of a volume's status.
fn repl_status(st: &mut VolumeStatus, v: &ReplVolume) {
    let Some(snap) = v.snapshot() else { return };
    let s = &snap.status;
    let res = &v.resource;
    st.role = Some(repl::role_name(s.role).into());
    st.disk_state = Some(repl::disk_name(s.disk).into());
    st.quorum = Some(s.quorum);
    st.may_promote = Some(s.may_promote);
    st.node = Some(v.me.name.clone());
    st.current_uuid = Some(format!("{:016X}", s.current));
    st.resync_left_bytes = snap.resync_left_blocks * repl::BLOCK;
    st.resync_same_bytes = s.resync_same_blocks * repl::BLOCK;
    st.suspended = s.suspended.map(|w| repl::suspended_name(w).to_owned());
    st.held_requests = s.held_requests as u64;
    st.held_bytes = s.held_bytes;
    let name_of = |id: u8| {
        v.cfg()
            .node_by_id(id)
            .map_or_else(|| format!("node {id}"), |n| n.name.clone())
    };
    st.writes_via = s.writes_via.map(name_of);
    let mut hints = Vec::new();
    if s.suspended.is_some() {
        hints.push(format!(
            "I/O is suspended (no quorum, on-no-quorum suspend-io): {} request(s) held, neither completed nor failed; they complete once enough peers are connected again (see the peers below), or run `tandem local secondary {res} --force` to fail them with an I/O error and give up the primary role here",
            s.held_requests
        ));
    }
    for p in &s.peers {
        let cfg = v.cfg();
        let Some(node) = cfg.node_by_id(p.id) else {
            continue;
        };
        let counters = snap.peers.get(&p.id).cloned().unwrap_or_default();
        let connected = p.conn == replica::core::ConnState::Connected;
        let out_of_sync = p.out_of_sync_blocks;
        let left = match p.repl {
            replica::core::Repl::SyncSource => Some(out_of_sync),
            replica::core::Repl::SyncTarget => Some(snap.resync_left_blocks),
            _ => None,
        };
        let percent = left.map(|l| {
            let total = counters.resync_total_blocks.max(l).max(1);
            ((total - l) as f64 * 1000.0 / total as f64).round() / 10.0
        });
        let reason = match &p.conn {
            replica::core::ConnState::StandAlone(r) => {
                if r.contains("split brain") {
                    hints.push(format!(
                        "split brain with {0}: on the node whose changes are to be thrown away run `tandem local connect {res} --discard-my-data`, then on the other `tandem local connect {res}`",
                        node.name
                    ));
                } else {
                    hints.push(format!(
                        "not connecting to {}: {r}; run `tandem local connect {res} --peer {}`",
                        node.name, node.name
                    ));
                }
                Some(r.clone())
            }
            _ if !connected => counters.last_error.clone(),
            _ => None,
        };
        st.peers.push(PeerStatus {
            name: node.name.clone(),
            node_id: node.id,
            address: node.address.to_string(),
            diskless: node.diskless,
            connection: repl::conn_name(&p.conn).into(),
            replication: repl::repl_name(p.repl).into(),
            role: connected.then(|| repl::role_name(p.role).into()),
            disk_state: connected.then(|| repl::disk_name(p.disk).into()),
            out_of_sync_bytes: out_of_sync * repl::BLOCK,
            resync_done_percent: percent,
            resync_sent_bytes: counters.resync_sent_bytes,
            resync_received_bytes: counters.resync_received_bytes,
            resync_rate_bytes_per_s: left.map(|_| counters.resync_rate),
            reason,
            verifying: p.verifying,
            verify_done_percent: (p.verifying || p.verify_done_blocks > 0).then(|| {
                let total = (v.size() / repl::BLOCK).max(1);
                (p.verify_done_blocks.min(total) as f64 * 1000.0 / total as f64).round() / 10.0
            }),
            verify_out_of_sync_bytes: p.verify_oos_blocks * repl::BLOCK,
        });
    }
    if let Some(why) = &s.detached {
        st.detached = Some(why.clone());
        hints.push(format!(
            "the local disk failed ({why}) and was detached; I/O goes through the peers. Repair or replace the backing, then run `tandem local attach {res}` on this node as a secondary (a full resync follows), or restart blockd"
        ));
    }
    if s.disk == wire::Disk::Consistent {
        hints.push(format!(
            "this node stopped uncleanly as a secondary: its recently written blocks may lack writes that only the nodes which stayed up hold, so it is Consistent, not UpToDate, and cannot be promoted; it becomes UpToDate once it connects to one of those (see the peers below). If none of them will come back, run `tandem local primary {res} --force` to take this copy as it is"
        ));
    }
    if s.disk == wire::Disk::Inconsistent
        && s.current == 0
        && !s.peers.iter().any(|p| p.disk == wire::Disk::UpToDate)
    {
        hints.push(format!(
            "no node has UpToDate data yet: on the one node whose data is to be kept (any, for a new empty volume) run `tandem local primary {res} --force`"
        ));
    }
    if let Some(e) = &snap.error {
        hints.push(e.clone());
    }
    if !hints.is_empty() {
        st.hint = Some(hints.join("; "));
    }
}

fn spawn_conn<S>(stream: S, export: Arc<VolumeExport>, conns: Arc<Conns>, limits: Limits)
where
    S: nbd::Stream + IntoBlocking + TryCloneHook,
    for<'a> &'a S: Read + Write,
{
    if conns.count() >= MAX_CONNS_PER_VOLUME {
        tracing::warn!(export = %export.name, "connection limit {MAX_CONNS_PER_VOLUME} reached; refusing a client");
        return;
    }
    if stream.make_blocking().is_err() {
        return;
    }
    let id = conns.next.fetch_add(1, Ordering::Relaxed);
    let Some(hook) = stream.shutdown_hook() else {
        return;
    };
    if let Ok(mut m) = conns.live.lock() {
        m.insert(id, hook);
    }
    let spawned = std::thread::Builder::new()
        .name(format!("nbd-{}", export.name))
        .spawn({
            let conns = conns.clone();
            move || {
                let outcome = nbd::serve(Arc::new(stream), &*export, &limits);
                tracing::debug!(export = %export.name, ?outcome, "NBD connection ended");
                if let Ok(mut m) = conns.live.lock() {
                    m.remove(&id);
                }
            }
        });
    if spawned.is_err()
        && let Ok(mut m) = conns.live.lock()
    {
        m.remove(&id);
    }
}

/// Accepted sockets come from tokio in non-blocking mode; NBD threads want blocking.
trait IntoBlocking {
    fn make_blocking(&self) -> std::io::Result<()>;
}

/// A closure that ends the connection from another thread.
trait TryCloneHook {
    fn shutdown_hook(&self) -> Option<Box<dyn Fn() + Send>>;
}

impl IntoBlocking for std::os::unix::net::UnixStream {
    fn make_blocking(&self) -> std::io::Result<()> {
        self.set_nonblocking(false)
    }
}

impl IntoBlocking for std::net::TcpStream {
    fn make_blocking(&self) -> std::io::Result<()> {
        self.set_nonblocking(false)
    }
}

impl TryCloneHook for std::os::unix::net::UnixStream {
    fn shutdown_hook(&self) -> Option<Box<dyn Fn() + Send>> {
        let c = self.try_clone().ok()?;
        Some(Box::new(move || {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }))
    }
}

impl TryCloneHook for std::net::TcpStream {
    fn shutdown_hook(&self) -> Option<Box<dyn Fn() + Send>> {
        let c = self.try_clone().ok()?;
        Some(Box::new(move || {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }))
    }
}
