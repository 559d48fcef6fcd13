//! A replicated volume: the `replica` core driven with a real disk and TCP peers.
//!
//! One task per volume owns the core. Everything reaches it as an [`Input`] on one
//! bounded channel: client requests from NBD threads, disk completions from the
//! blocking pool, messages and connection changes from the peer tasks, admin
//! commands, and a 100 ms tick. The task carries out the core's actions: page-cache
//! writes in place, other disk I/O on the blocking pool, metadata writes in place (they
//! must be durable before anything after them happens), messages into each peer's
//! outbox, which the task writes itself when its inputs run out (small amounts) or
//! leaves to the peer's writer task (see `Link`). A write's data is one shared
//! `Bytes` from the NBD buffer to the disk write and every peer's socket.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use nbd::{BlockDevice, Completion, DeviceError, Submit};
use replica::core::{
    Action, Admin, Config, ConnState, Event, IoError, NodeConf, OnNoQuorum, Persistent, Protocol,
    Repl, Replica, StateChange, Status, Suspended,
};
use replica::decide::SplitBrainPolicy;
use replica::quorum::QuorumPolicy;
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio::task::JoinHandle;
use wire::{Bytes, Msg, NodeId, Role};

use crate::config::{
    NodeConfig, OnNoQuorumOpt, ProtocolOpt, ReplConfig, SplitBrainOpt, VolumeConfig,
};
use crate::peer::{self, Offer};
use crate::replmd::MdStore;
use crate::volume::LocalVolume;

/// How long an NBD client's open keeps trying to promote before it is refused (DRBD's
/// auto-promote-timeout default).
pub const AUTO_PROMOTE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// Bytes per block of the core (one bitmap bit).
pub const BLOCK: u64 = 4096;
const INPUT_QUEUE: usize = 1024;
/// Messages queued to one peer before the connection counts as stuck and is dropped.
const SEND_QUEUE: usize = 8192;
const TICK: Duration = Duration::from_millis(100);
const DIAL_BACKOFF_MIN: Duration = Duration::from_millis(100);
const DIAL_BACKOFF_MAX: Duration = Duration::from_secs(2);
const IO_BUF: usize = 256 << 10;
/// Queued bytes the volume's task writes to a peer itself; more go to the writer task.
const DIRECT_WRITE_MAX: usize = 64 << 10;
/// Inputs handled before queued peer messages are written, under a steady stream.
const WRITE_EVERY: u32 = 32;
/// State-change events kept for slow `events` readers.
const EVENT_BACKLOG: usize = 1024;
/// Largest piece a zeroing request is split into.
const ZERO_CHUNK: u64 = 1 << 20;
/// Longest the published status lags the core while inputs keep coming.
const REFRESH_EVERY: Duration = Duration::from_millis(5);
/// While I/O is suspended (on-no-quorum suspend-io): client requests held, and bytes
/// of write data held, before new requests fail. Each NBD connection has at most
/// `nbd::Limits::workers` requests in flight, so clients are held back long before.
pub const MAX_HELD: usize = 1024;
pub const MAX_HELD_BYTES: u64 = 256 << 20;

/// Where the outcome of a client request goes.
#[derive(Debug)]
enum ClientReply {
    /// An NBD thread waits for it.
    Wait(oneshot::Sender<Result<Option<Vec<u8>>, IoError>>),
    /// A submitted NBD write or flush (`BlockDevice::submit`): its reply is sent from
    /// here, without waking the thread that read the request.
    Nbd {
        done: nbd::Completion,
        _write: Option<AsyncWrite>,
    },
}

impl ClientReply {
    fn send(self, result: Result<Option<Vec<u8>>, IoError>) {
        match self {
            ClientReply::Wait(tx) => {
                let _ = tx.send(result);
            }
            ClientReply::Nbd { done, _write } => done.done(nbd_result(result)),
        }
    }
}

/// The outcome of a submitted NBD write or flush (they carry no data back).
fn nbd_result(result: Result<Option<Vec<u8>>, IoError>) -> Result<(), DeviceError> {
    result.map(|_| ()).map_err(map_err)
}

/// A submitted write in flight; unaligned writes wait until none is (see `rmw`).
#[derive(Debug)]
struct AsyncWrite(Arc<ReplVolume>);

impl AsyncWrite {
    fn new(vol: &Arc<ReplVolume>) -> Self {
        if let Ok(mut n) = vol.async_writes.lock() {
            *n += 1;
        }
        AsyncWrite(vol.clone())
    }
}

impl Drop for AsyncWrite {
    fn drop(&mut self) {
        if let Ok(mut n) = self.0.async_writes.lock() {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.0.async_idle.notify_all();
            }
        }
    }
}

/// Longest an unaligned write waits for the submitted writes in flight.
const ASYNC_WRITE_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug)]
enum Input {
    Client {
        id: u64,
        ev: Event,
        reply: ClientReply,
    },
    Promote {
        force: bool,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Admin {
        admin: Admin,
        reply: oneshot::Sender<()>,
    },
    /// The last NBD client left: demote if the volume was promoted for a client.
    AutoDemote,
    /// An NBD client opens the volume: counted; the answer is whether it is primary.
    Open {
        reply: oneshot::Sender<bool>,
    },
    DiskDone {
        tag: u64,
        ok: bool,
        data: Option<Vec<u8>>,
    },
    Accepted {
        peer: NodeId,
        stream: TcpStream,
    },
    Dialed {
        peer: NodeId,
        result: Result<TcpStream, String>,
    },
    PeerMsg {
        peer: NodeId,
        conn: u64,
        msg: Msg,
    },
    PeerGone {
        peer: NodeId,
        conn: u64,
        why: String,
    },
    Attach {
        reply: oneshot::Sender<Result<(), String>>,
    },
    Reconfigure {
        cfg: ReplConfig,
        reply: oneshot::Sender<Result<String, String>>,
    },
    Resize {
        backing_size: u64,
        reply: oneshot::Sender<Result<String, String>>,
    },
    Stop {
        reply: oneshot::Sender<()>,
    },
}

/// Counters per peer, cumulative since the volume came up.
#[derive(Debug, Clone, Default)]
pub struct PeerCounters {
    pub resync_sent_bytes: u64,
    pub resync_received_bytes: u64,
    /// Out-of-sync blocks when the running resync started (for progress).
    pub resync_total_blocks: u64,
    pub last_error: Option<String>,
    /// Resync bytes per second (sent plus received) over the last second or so.
    pub resync_rate: u64,
    rate_mark: Option<(Instant, u64)>,
}

/// What status shows, refreshed after every input.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub status: Status,
    /// Blocks this node still has to receive (SyncTarget).
    pub resync_left_blocks: u64,
    pub peers: BTreeMap<NodeId, PeerCounters>,
    pub connected: BTreeMap<NodeId, bool>,
    pub error: Option<String>,
}

/// The shared handle of one replicated volume.
#[derive(Debug)]
pub struct ReplVolume {
    pub resource: String,
    pub number: u32,
    pub me: NodeConfig,
    /// Replication settings as last applied (`adjust` changes them live).
    cfg: RwLock<ReplConfig>,
    /// Peer slots the volume's metadata has (from the resource file on a diskless
    /// node), for laying out a grown backing.
    vcfg_max_peers: u32,
    /// Data bytes clients may use (grows with an online resize, once every diskful
    /// node grew).
    size: AtomicU64,
    pub local: Option<Arc<LocalVolume>>,
    tx: mpsc::Sender<Input>,
    next_id: AtomicU64,
    snapshot: Mutex<Snapshot>,
    opens: AtomicUsize,
    auto_promoted: AtomicBool,
    /// Primary with UpToDate data and quorum: a client read is served from the local
    /// disk without a round trip through the core (which would do just that).
    direct_reads: AtomicBool,
    /// Unaligned writes read, patch and write whole blocks; they exclude every other
    /// write while they do, and wait for the submitted ones in flight.
    rmw: RwLock<()>,
    async_writes: Mutex<usize>,
    async_idle: std::sync::Condvar,
    events: broadcast::Sender<String>,
    rt: tokio::runtime::Handle,
    task: Mutex<Option<JoinHandle<()>>>,
}

fn map_err(e: IoError) -> DeviceError {
    let msg = match e {
        IoError::NotPrimary => "this node is not primary (or its data is not UpToDate)",
        IoError::NoQuorum => "no quorum: too few nodes reachable",
        IoError::NoData => "no UpToDate data reachable",
        IoError::Disk => "the local disk failed",
        IoError::Busy => "too many requests queued",
        IoError::SuspendedFull => {
            "I/O is suspended (no quorum) and too many requests are held already"
        }
        IoError::OutOfRange => return DeviceError::NoSpace,
        IoError::OrdererLost => {
            "the other primary, which ordered this node's writes, became unreachable while primary: this node stepped down; connect again to promote it"
        }
    };
    DeviceError::Io(std::io::Error::other(msg))
}

/// Data bytes a volume of this config holds: read from the disk, or for a diskless node
/// computed from the configured size exactly as a diskful node lays it out.
fn diskless_size(vcfg: &VolumeConfig) -> Result<u64, String> {
    let size = vcfg.size.ok_or_else(|| {
        "a diskless node needs size = ... in the [[volume]] section (the same as on the diskful nodes)".to_owned()
    })?;
    replica::md::Layout::compute(size, vcfg.max_peers, replica::md::DEFAULT_AL_SLOTS)
        .map(|l| l.data_size)
        .map_err(|e| e.to_string())
}

fn core_config(me: &NodeConfig, cfg: &ReplConfig, size: u64) -> Config {
    Config {
        node: me.id,
        nodes: cfg
            .nodes
            .iter()
            .map(|n| NodeConf {
                id: n.id,
                diskful: !n.diskless,
            })
            .collect(),
        size_blocks: size / BLOCK,
        protocol: match cfg.protocol {
            ProtocolOpt::A => Protocol::A,
            ProtocolOpt::C => Protocol::C,
        },
        quorum: if cfg.quorum {
            QuorumPolicy::Majority
        } else {
            QuorumPolicy::Off
        },
        split_brain: match &cfg.split_brain {
            SplitBrainOpt::Disconnect => SplitBrainPolicy::Disconnect,
            SplitBrainOpt::DiscardZeroChanges => SplitBrainPolicy::DiscardZeroChanges,
            SplitBrainOpt::DiscardLeastChanges => SplitBrainPolicy::DiscardLeastChanges,
            SplitBrainOpt::DiscardYoungerPrimary => SplitBrainPolicy::DiscardYoungerPrimary,
            SplitBrainOpt::DiscardOlderPrimary => SplitBrainPolicy::DiscardOlderPrimary,
            SplitBrainOpt::DiscardNode(name) => match cfg.node(name) {
                Some(n) => SplitBrainPolicy::DiscardNode(n.id),
                None => SplitBrainPolicy::Disconnect,
            },
        },
        al_extents: replica::md::MAX_AL,
        extent_blocks: replica::md::AL_EXTENT / BLOCK,
        resync_inflight: 64,
        resync_per_tick: 64,
        // Per 100 ms tick.
        resync_rate_per_tick: cfg
            .resync_rate
            .map(|r| (r / BLOCK / (1000 / TICK.as_millis() as u64)).max(1)),
        promote_timeout_ms: cfg.timeout_ms + 1000,
        grant_lease_ms: 1000,
        max_queued: 1024,
        resync_csums: cfg.resync_csums,
        on_no_quorum: match cfg.on_no_quorum {
            OnNoQuorumOpt::IoError => OnNoQuorum::IoError,
            OnNoQuorumOpt::SuspendIo => OnNoQuorum::SuspendIo,
        },
        max_held: MAX_HELD,
        max_held_bytes: MAX_HELD_BYTES,
        allow_two_primaries: cfg.allow_two_primaries,
    }
}

/// How status and events name a suspension.
pub fn suspended_name(s: Suspended) -> &'static str {
    match s {
        Suspended::NoQuorum => "no quorum",
    }
}

impl ReplVolume {
    /// Opens the volume (creating it if configured so) and starts its task.
    pub fn start(
        resource: &str,
        vcfg: &VolumeConfig,
        cfg: &ReplConfig,
        node_name: &str,
        rt: &tokio::runtime::Handle,
    ) -> Result<Arc<ReplVolume>, String> {
        let me = cfg.node(node_name).cloned().ok_or_else(|| {
            format!(
                "this node ({node_name}) is not listed in the resource (nodes: {}); start blockd with --node set to one of them",
                cfg.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(", ")
            )
        })?;
        let (local, size) = if me.diskless {
            (None, diskless_size(vcfg)?)
        } else {
            if vcfg.backing.as_os_str().is_empty() {
                return Err(format!(
                    "node {} has a disk in this resource but the volume gives no backing",
                    me.name
                ));
            }
            let v = Arc::new(LocalVolume::open(vcfg, resource).map_err(|e| e.to_string())?);
            let size = v.size();
            (Some(v), size)
        };
        let core_cfg = core_config(&me, cfg, size);
        let (md, store) = match &local {
            Some(v) => {
                let (p, s) = MdStore::load(v.clone(), &core_cfg).inspect_err(|_| {
                    let _ = v.close();
                })?;
                (p, Some(s))
            }
            None => (Persistent::new_fresh(&core_cfg), None),
        };
        let seed = peer::nonce()
            .map(|n| u64::from_le_bytes([n[0], n[1], n[2], n[3], n[4], n[5], n[6], n[7]]))
            .unwrap_or(0x5eed);
        let core = Replica::new(core_cfg, md, seed);
        let (tx, rx) = mpsc::channel(INPUT_QUEUE);
        let (events, _) = broadcast::channel(EVENT_BACKLOG);
        let snapshot = Snapshot {
            status: core.status(),
            resync_left_blocks: core.metadata().resync_left.count(),
            peers: BTreeMap::new(),
            connected: BTreeMap::new(),
            error: None,
        };
        let shared = Arc::new(ReplVolume {
            resource: resource.to_owned(),
            number: vcfg.number,
            me: me.clone(),
            cfg: RwLock::new(cfg.clone()),
            vcfg_max_peers: vcfg.max_peers,
            size: AtomicU64::new(size),
            local: local.clone(),
            tx: tx.clone(),
            next_id: AtomicU64::new(1),
            snapshot: Mutex::new(snapshot),
            opens: AtomicUsize::new(0),
            auto_promoted: AtomicBool::new(false),
            direct_reads: AtomicBool::new(false),
            rmw: RwLock::new(()),
            async_writes: Mutex::new(0),
            async_idle: std::sync::Condvar::new(),
            events,
            rt: rt.clone(),
            task: Mutex::new(None),
        });
        let disk_was = core.disk();
        let mut driver = Driver {
            core,
            shared: shared.clone(),
            vol: local,
            store,
            rx,
            tx,
            start: Instant::now(),
            conns: BTreeMap::new(),
            dialing: BTreeMap::new(),
            clients: HashMap::new(),
            promotes: VecDeque::new(),
            resizes: VecDeque::new(),
            next_conn: 1,
            pending: VecDeque::new(),
            counters: BTreeMap::new(),
            rt: rt.clone(),
            failed: None,
            stale: true,
            refreshed: Instant::now(),
            inputs_unwritten: 0,
            disk_was,
            resynced: false,
            replies: Vec::new(),
        };
        let handle = rt.spawn(async move {
            driver.feed(Event::Tick { now: 0 });
            driver.run().await;
        });
        if let Ok(mut t) = shared.task.lock() {
            *t = Some(handle);
        }
        Ok(shared)
    }

    /// Data bytes clients may use now.
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::SeqCst)
    }

    /// Data bytes this node offers its peers at connect: what its disk holds (which
    /// may be more than clients may use during a grow), or for a diskless node the
    /// size in use.
    pub fn peer_size(&self) -> u64 {
        match &self.local {
            Some(v) => v.size(),
            None => self.size(),
        }
    }

    /// Online grow, coordinated by this node: the backing files of every diskful
    /// node grow to `backing_size` bytes (see `replica::core` for the rules). Returns
    /// a report naming the new sizes.
    pub async fn resize(&self, backing_size: u64) -> Result<String, String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Input::Resize {
                backing_size,
                reply,
            })
            .await
            .map_err(|_| "volume is shutting down".to_owned())?;
        rx.await.map_err(|_| "volume is shutting down".to_owned())?
    }

    /// The replication settings in force.
    pub fn cfg(&self) -> ReplConfig {
        match self.cfg.read() {
            Ok(c) => c.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// Applies new replication settings without closing the volume: nodes added or
    /// removed, protocol, quorum, split-brain policy, secret and timeout (the last
    /// two for connections made from now on). This node's own entry cannot change
    /// here. A refused change changes nothing.
    pub async fn reconfigure(&self, cfg: ReplConfig) -> Result<String, String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Input::Reconfigure { cfg, reply })
            .await
            .map_err(|_| "volume is shutting down".to_owned())?;
        rx.await.map_err(|_| "volume is shutting down".to_owned())?
    }

    pub fn snapshot(&self) -> Option<Snapshot> {
        self.snapshot.lock().ok().map(|s| s.clone())
    }

    /// Subscribes to state changes, one JSON object per event.
    pub fn subscribe(&self) -> broadcast::Receiver<String> {
        self.events.subscribe()
    }

    /// Whether a connection from `peer` would be taken now.
    pub fn accepts(&self, peer: NodeId) -> Result<(), String> {
        let snap = self.snapshot().ok_or("volume is shutting down")?;
        match snap.status.peers.iter().find(|p| p.id == peer) {
            None => Err(format!("node id {peer} is not a peer of this resource")),
            Some(p) => match &p.conn {
                ConnState::StandAlone(r) => Err(format!("not connecting: {r}")),
                _ => Ok(()),
            },
        }
    }

    /// Hands an authenticated connection from `peer` to the volume.
    pub async fn accepted(&self, peer: NodeId, stream: TcpStream) {
        let _ = self.tx.send(Input::Accepted { peer, stream }).await;
    }

    /// Becomes primary (waits for the peers' grants).
    pub async fn promote(&self, force: bool) -> Result<(), String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Input::Promote { force, reply })
            .await
            .map_err(|_| "volume is shutting down".to_owned())?;
        rx.await
            .map_err(|_| "volume is shutting down".to_owned())??;
        self.await_handshakes().await;
        Ok(())
    }

    /// Steps down, and waits (bounded by the timeout) for the handshakes that follow
    /// with the connected peers: once they are done every peer has seen this node
    /// as a secondary, so a `primary` on another node right after is not refused
    /// with "node N is primary" on a role it has not heard of yet.
    pub async fn demote(&self) -> Result<(), String> {
        self.admin(Admin::Secondary).await?;
        self.await_handshakes().await;
        Ok(())
    }

    /// `promote`, tried again for up to `AUTO_PROMOTE_TIMEOUT` while the refusal is one
    /// the core marks as passing (`replica::core::is_passing`: a peer still handshaking
    /// after another node's demotion, the primaries changing meanwhile).
    pub async fn promote_patiently(&self, force: bool) -> Result<(), String> {
        let deadline = Instant::now() + AUTO_PROMOTE_TIMEOUT;
        loop {
            match self.promote(force).await {
                Err(e) if replica::core::is_passing(&e) && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                r => return r,
            }
        }
    }

    /// Waits, bounded by the timeout, until no connected peer is in its handshake.
    async fn await_handshakes(&self) {
        let deadline = Instant::now() + Duration::from_millis(self.cfg().timeout_ms);
        while !self.handshakes_done() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// No connected peer is in the middle of a handshake. A new primary re-handshakes
    /// with its peers; writes issued before that ends would not reach them and would
    /// be marked for a resync, so promotion waits for it (bounded by the timeout).
    fn handshakes_done(&self) -> bool {
        self.snapshot().is_none_or(|s| {
            s.status
                .peers
                .iter()
                .all(|p| p.conn != ConnState::Handshake)
        })
    }

    pub async fn admin(&self, admin: Admin) -> Result<(), String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Input::Admin { admin, reply })
            .await
            .map_err(|_| "volume is shutting down".to_owned())?;
        rx.await.map_err(|_| "volume is shutting down".to_owned())
    }

    /// Uses the local disk again after a detach: the metadata is rewritten whole
    /// (writes may have failed on the way down) and a full resync follows.
    pub async fn attach(&self) -> Result<(), String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Input::Attach { reply })
            .await
            .map_err(|_| "volume is shutting down".to_owned())?;
        rx.await.map_err(|_| "volume is shutting down".to_owned())?
    }

    /// Leaves cleanly: tells the peers, writes the metadata, closes the disk.
    pub async fn stop(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Input::Stop { reply }).await.is_ok() {
            let _ = rx.await;
        }
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = task {
            let _ = t.await;
        }
    }

    /// An NBD client opens the volume: promote for it unless already primary.
    pub fn open_for_client(self: &Arc<Self>) -> Result<Arc<ReplDevice>, String> {
        // Counted, and the role read, on the volume's task, in order with the demotion
        // a client that just left asked for: the published status may still show the
        // role from before it, and a client let in on that would get "not primary".
        let (reply, rx) = oneshot::channel();
        self.tx
            .blocking_send(Input::Open { reply })
            .map_err(|_| "volume is shutting down".to_owned())?;
        let primary = rx
            .blocking_recv()
            .map_err(|_| "volume is shutting down".to_owned())?;
        // The handle gives the count back when dropped, on the error path too.
        let dev = Arc::new(ReplDevice { vol: self.clone() });
        if !primary {
            // Called from an NBD connection thread, never from the runtime. A refusal
            // is often brief (a peer still handshaking, another node's client just
            // left and it is demoting): like DRBD's auto-promote-timeout, retry for a
            // while before the client is refused.
            let deadline = std::time::Instant::now() + AUTO_PROMOTE_TIMEOUT;
            loop {
                match self.rt.block_on(self.promote(false)) {
                    Ok(()) => break,
                    Err(e) if std::time::Instant::now() >= deadline => {
                        return Err(format!("cannot become primary: {e}"));
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(50)),
                }
            }
            self.auto_promoted.store(true, Ordering::SeqCst);
        }
        Ok(dev)
    }

    fn call(&self, ev: impl FnOnce(u64) -> Event) -> Result<Option<Vec<u8>>, DeviceError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (reply, rx) = oneshot::channel();
        self.tx
            .blocking_send(Input::Client {
                id,
                ev: ev(id),
                reply: ClientReply::Wait(reply),
            })
            .map_err(|_| DeviceError::Shutdown)?;
        match rx.blocking_recv() {
            Ok(Ok(d)) => Ok(d),
            Ok(Err(e)) => Err(map_err(e)),
            Err(_) => Err(DeviceError::Shutdown),
        }
    }

    fn read_blocks(&self, block: u64, count: u64) -> Result<Vec<u8>, DeviceError> {
        if self.direct_reads.load(Ordering::SeqCst)
            && let Some(local) = &self.local
        {
            let mut buf = vec![0u8; (count * BLOCK) as usize];
            // A failed read goes the long way, where the core detaches the disk and
            // asks a peer.
            if local.read_at(&mut buf, block * BLOCK).is_ok() {
                return Ok(buf);
            }
        }
        let data = self
            .call(|id| Event::ClientRead {
                id,
                block,
                count: count as u32,
            })?
            .unwrap_or_default();
        if data.len() as u64 != count * BLOCK {
            return Err(DeviceError::Io(std::io::Error::other(
                "short read from the replication core",
            )));
        }
        Ok(data)
    }

    fn write_blocks(&self, block: u64, data: Bytes, fua: bool) -> Result<(), DeviceError> {
        let count = (data.len() as u64 / BLOCK) as u32;
        self.call(|id| Event::ClientWrite {
            id,
            block,
            count,
            data,
            fua,
        })
        .map(|_| ())
    }

    fn write_any(&self, buf: &[u8], offset: u64, fua: bool) -> Result<(), DeviceError> {
        if Self::aligned(buf.len(), offset) {
            return self.write_owned(Bytes::copy_from_slice(buf), offset, fua);
        }
        self.write_unaligned(buf, offset, fua)
    }

    fn aligned(len: usize, offset: u64) -> bool {
        offset.is_multiple_of(BLOCK) && (len as u64).is_multiple_of(BLOCK)
    }

    /// A write whose buffer the core may keep: whole blocks go on without a copy.
    fn write_owned(&self, data: Bytes, offset: u64, fua: bool) -> Result<(), DeviceError> {
        if !Self::aligned(data.len(), offset) {
            return self.write_unaligned(&data, offset, fua);
        }
        offset
            .checked_add(data.len() as u64)
            .filter(|e| *e <= self.size())
            .ok_or(DeviceError::NoSpace)?;
        if data.is_empty() {
            return Ok(());
        }
        let _g = self.rmw.read().map_err(|_| DeviceError::Shutdown)?;
        self.write_blocks(offset / BLOCK, data, fua)
    }

    /// Sends a client request whose reply goes out from the volume's task.
    fn submit(&self, ev: impl FnOnce(u64) -> Event, reply: ClientReply) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // Refused only when the volume is going away: the completion, dropped with
        // the request, replies with an error.
        let _ = self.tx.blocking_send(Input::Client {
            id,
            ev: ev(id),
            reply,
        });
    }

    /// Waits until no submitted write is in flight (the caller holds `rmw` for writing,
    /// so no new one starts).
    fn wait_async_writes(&self) -> Result<(), DeviceError> {
        let deadline = Instant::now() + ASYNC_WRITE_WAIT;
        let mut n = self
            .async_writes
            .lock()
            .map_err(|_| DeviceError::Shutdown)?;
        while *n > 0 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(DeviceError::Io(std::io::Error::other(format!(
                    "{} writes in flight did not complete within {} s",
                    *n,
                    ASYNC_WRITE_WAIT.as_secs()
                ))));
            }
            n = self
                .async_idle
                .wait_timeout(n, left)
                .map_err(|_| DeviceError::Shutdown)?
                .0;
        }
        Ok(())
    }

    fn write_unaligned(&self, buf: &[u8], offset: u64, fua: bool) -> Result<(), DeviceError> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|e| *e <= self.size())
            .ok_or(DeviceError::NoSpace)?;
        if buf.is_empty() {
            return Ok(());
        }
        let _g = self.rmw.write().map_err(|_| DeviceError::Shutdown)?;
        self.wait_async_writes()?;
        let first = offset / BLOCK;
        let last = end.div_ceil(BLOCK);
        let mut data = self.read_blocks(first, last - first)?;
        let at = (offset - first * BLOCK) as usize;
        data[at..at + buf.len()].copy_from_slice(buf);
        self.write_blocks(first, data.into(), fua)
    }
}

/// One NBD client's handle on a replicated volume; dropping it is the close.
#[derive(Debug)]
pub struct ReplDevice {
    vol: Arc<ReplVolume>,
}

impl Drop for ReplDevice {
    fn drop(&mut self) {
        // The volume's task decides, in order with the opens: a client may have come
        // in meanwhile (then the last of those demotes).
        if self.vol.opens.fetch_sub(1, Ordering::SeqCst) == 1
            && let Err(mpsc::error::TrySendError::Full(input)) =
                self.vol.tx.try_send(Input::AutoDemote)
        {
            let tx = self.vol.tx.clone();
            self.vol.rt.spawn(async move {
                let _ = tx.send(input).await;
            });
        }
    }
}

impl BlockDevice for ReplDevice {
    fn size(&self) -> u64 {
        self.vol.size()
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), DeviceError> {
        let end = offset
            .checked_add(buf.len() as u64)
            .filter(|e| *e <= self.vol.size())
            .ok_or(DeviceError::NoSpace)?;
        if buf.is_empty() {
            return Ok(());
        }
        let first = offset / BLOCK;
        let last = end.div_ceil(BLOCK);
        let data = self.vol.read_blocks(first, last - first)?;
        let at = (offset - first * BLOCK) as usize;
        buf.copy_from_slice(&data[at..at + buf.len()]);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> Result<(), DeviceError> {
        self.vol.write_any(buf, offset, fua)
    }

    fn write_shared(&self, data: Bytes, offset: u64, fua: bool) -> Result<(), DeviceError> {
        self.vol.write_owned(data, offset, fua)
    }

    fn flush(&self) -> Result<(), DeviceError> {
        self.vol.call(|id| Event::ClientFlush { id }).map(|_| ())
    }

    fn submit(&self, req: Submit, done: Completion) -> Result<(), (Submit, Completion)> {
        match req {
            Submit::Write { data, offset, fua } => {
                let len = data.len() as u64;
                let fits = offset
                    .checked_add(len)
                    .is_some_and(|e| e <= self.vol.size());
                // Unaligned, out of range or empty: the synchronous path answers.
                if !fits || len == 0 || !ReplVolume::aligned(data.len(), offset) {
                    return Err((Submit::Write { data, offset, fua }, done));
                }
                let Ok(_g) = self.vol.rmw.read() else {
                    done.done(Err(DeviceError::Shutdown));
                    return Ok(());
                };
                let write = AsyncWrite::new(&self.vol);
                let block = offset / BLOCK;
                let count = (len / BLOCK) as u32;
                self.vol.submit(
                    |id| Event::ClientWrite {
                        id,
                        block,
                        count,
                        data,
                        fua,
                    },
                    ClientReply::Nbd {
                        done,
                        _write: Some(write),
                    },
                );
                Ok(())
            }
            Submit::Flush => {
                self.vol.submit(
                    |id| Event::ClientFlush { id },
                    ClientReply::Nbd { done, _write: None },
                );
                Ok(())
            }
        }
    }

    fn trim(&self, offset: u64, len: u64, fua: bool) -> Result<(), DeviceError> {
        // After a trim the content is unspecified (NBD), so keeping it is correct and
        // keeps the replicas identical.
        offset
            .checked_add(len)
            .filter(|e| *e <= self.vol.size())
            .ok_or(DeviceError::NoSpace)?;
        if fua { self.flush() } else { Ok(()) }
    }

    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        _may_trim: bool,
        fua: bool,
    ) -> Result<(), DeviceError> {
        offset
            .checked_add(len)
            .filter(|e| *e <= self.vol.size())
            .ok_or(DeviceError::NoSpace)?;
        let mut at = offset;
        let end = offset + len;
        while at < end {
            let n = (end - at).min(ZERO_CHUNK);
            self.vol.write_any(&vec![0u8; n as usize], at, fua)?;
            at += n;
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Conn {
    id: u64,
    link: Arc<Link>,
    /// Messages were queued since the last `write_peers`.
    unwritten: bool,
    reader: JoinHandle<()>,
    writer: JoinHandle<()>,
}

/// The sending side of one peer connection. The volume's task queues messages in the
/// outbox and, once its inputs run out, writes them itself when the socket takes them
/// at once; whatever is left (and large data) the writer task writes, waiting for the
/// socket. Both write through the outbox's lock, so frames go out whole and in order.
#[derive(Debug)]
struct Link {
    outbox: Mutex<peer::Outbox>,
    wr: tokio::net::tcp::OwnedWriteHalf,
    /// Wakes the writer task.
    wake: tokio::sync::Notify,
    /// Write what is queued, then close.
    closing: AtomicBool,
    /// A write failed: the writer task reports it and ends.
    failed: Mutex<Option<String>>,
    last_push: Mutex<Instant>,
}

impl Link {
    /// Queues a message; `Err` when the connection is stuck (SEND_QUEUE frames unsent).
    fn push(&self, msg: Msg) -> Result<(), ()> {
        let mut o = self.outbox.lock().map_err(|_| ())?;
        if o.frames() >= SEND_QUEUE {
            return Err(());
        }
        o.push(msg);
        drop(o);
        if let Ok(mut t) = self.last_push.lock() {
            *t = Instant::now();
        }
        Ok(())
    }

    /// Writes what the socket takes now. True when nothing is left for the writer task.
    fn write_now(&self) -> bool {
        let Ok(mut o) = self.outbox.lock() else {
            return false;
        };
        match o.write_with(|iov| self.wr.try_write_vectored(iov)) {
            Ok(done) => done,
            Err(e) => {
                if let Ok(mut f) = self.failed.lock() {
                    f.get_or_insert(e.to_string());
                }
                false
            }
        }
    }

    /// Called by the volume's task after queueing: small amounts are written here at
    /// once, the rest (and large data, whose copy would hold up the task) by the writer.
    fn kick(&self) {
        let small = self
            .outbox
            .lock()
            .is_ok_and(|o| o.bytes() <= DIRECT_WRITE_MAX);
        if !(small && self.write_now()) {
            self.wake.notify_one();
        }
    }

    /// The writer task: writes whatever is queued, waiting for the socket as needed,
    /// sends a ping when nothing was queued for `ping`. Ends `Ok` after a close once
    /// everything queued is written, `Err` when the connection fails.
    async fn run(&self, ping: Duration) -> Result<(), String> {
        loop {
            if tokio::time::timeout(ping, self.wake.notified())
                .await
                .is_err()
                && self.last_push.lock().is_ok_and(|t| t.elapsed() >= ping)
            {
                let _ = self.push(Msg::Ping);
            }
            loop {
                if let Some(e) = self.failed.lock().ok().and_then(|f| f.clone()) {
                    return Err(e);
                }
                if self.write_now() {
                    break;
                }
                if self.failed.lock().is_ok_and(|f| f.is_some()) {
                    continue;
                }
                self.wr.writable().await.map_err(|e| e.to_string())?;
            }
            if self.closing.load(Ordering::SeqCst) {
                return Ok(());
            }
        }
    }
}

#[derive(Debug)]
struct Dial {
    in_progress: bool,
    next: Instant,
    backoff: Duration,
    last_error: Option<String>,
}

struct Driver {
    core: Replica,
    shared: Arc<ReplVolume>,
    vol: Option<Arc<LocalVolume>>,
    store: Option<MdStore>,
    rx: mpsc::Receiver<Input>,
    tx: mpsc::Sender<Input>,
    start: Instant,
    conns: BTreeMap<NodeId, Conn>,
    dialing: BTreeMap<NodeId, Dial>,
    clients: HashMap<u64, ClientReply>,
    promotes: VecDeque<oneshot::Sender<Result<(), String>>>,
    /// Resizes this node coordinates: backing size asked for, and the answer.
    resizes: VecDeque<(u64, oneshot::Sender<Result<String, String>>)>,
    next_conn: u64,
    pending: VecDeque<Event>,
    counters: BTreeMap<NodeId, PeerCounters>,
    rt: tokio::runtime::Handle,
    /// Set when metadata could not be written: no more I/O (see `act`).
    failed: Option<String>,
    /// The published snapshot lags the core.
    stale: bool,
    refreshed: Instant,
    /// Inputs handled since queued peer messages were last written.
    inputs_unwritten: u32,
    /// The disk state before the last change (a resync that ended drops the page cache).
    disk_was: wire::Disk,
    /// Resync data arrived since the last disk state change.
    resynced: bool,
    /// NBD replies to send with the next batch (see `answer`).
    replies: Vec<(Completion, Result<(), DeviceError>, Option<AsyncWrite>)>,
}

impl Driver {
    async fn run(&mut self) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                input = self.rx.recv() => {
                    let Some(input) = input else { break };
                    if let Input::Stop { reply } = input {
                        self.stop().await;
                        let _ = reply.send(());
                        break;
                    }
                    self.input(input);
                    self.inputs_unwritten += 1;
                    if self.rx.is_empty() || self.inputs_unwritten >= WRITE_EVERY {
                        self.write_peers();
                    }
                    // Status is republished when the inputs run out, and at least
                    // every REFRESH_EVERY under a steady stream of them.
                    if self.stale
                        && (self.rx.is_empty() || self.refreshed.elapsed() >= REFRESH_EVERY)
                    {
                        self.refresh();
                    }
                }
                _ = tick.tick() => {
                    let now = self.start.elapsed().as_millis() as u64;
                    self.feed(Event::Tick { now });
                    self.write_peers();
                    self.dial();
                    self.measure_rates();
                    self.refresh();
                }
            }
        }
        self.send_replies();
    }

    fn input(&mut self, input: Input) {
        match input {
            Input::Client { id, ev, reply } => {
                if self.failed.is_some() {
                    reply.send(Err(IoError::Disk));
                    return;
                }
                self.clients.insert(id, reply);
                self.feed(ev);
            }
            Input::Promote { force, reply } => {
                self.promotes.push_back(reply);
                self.feed(Event::Admin(Admin::Primary { force }));
            }
            Input::Admin { admin, reply } => {
                if let Admin::Connect { peer, .. } = &admin {
                    for (id, d) in self.dialing.iter_mut() {
                        if peer.is_none_or(|p| p == *id) {
                            d.next = Instant::now();
                            d.backoff = DIAL_BACKOFF_MIN;
                        }
                    }
                }
                self.feed(Event::Admin(admin));
                let _ = reply.send(());
            }
            Input::Open { reply } => {
                self.shared.opens.fetch_add(1, Ordering::SeqCst);
                let _ = reply.send(self.core.role() == Role::Primary);
            }
            Input::AutoDemote => {
                if self.shared.opens.load(Ordering::SeqCst) == 0
                    && self.shared.auto_promoted.swap(false, Ordering::SeqCst)
                {
                    self.feed(Event::Admin(Admin::Secondary));
                }
            }
            Input::DiskDone { tag, ok, data } => self.feed(Event::DiskDone { tag, ok, data }),
            Input::Accepted { peer, stream } => self.establish(peer, stream),
            Input::Dialed { peer, result } => {
                let d = self.dialing.entry(peer).or_insert_with(new_dial);
                d.in_progress = false;
                match result {
                    Ok(stream) => {
                        d.backoff = DIAL_BACKOFF_MIN;
                        d.last_error = None;
                        self.establish(peer, stream);
                    }
                    Err(e) => {
                        if d.last_error.as_deref() != Some(e.as_str()) {
                            tracing::warn!(resource = %self.shared.resource, peer, "connecting: {e}");
                        }
                        d.next = Instant::now() + d.backoff;
                        d.backoff = (d.backoff * 2).min(DIAL_BACKOFF_MAX);
                        d.last_error = Some(e.clone());
                        self.counters.entry(peer).or_default().last_error = Some(e);
                        self.refresh();
                    }
                }
            }
            Input::PeerMsg { peer, conn, msg } => {
                if self.conns.get(&peer).is_some_and(|c| c.id == conn) {
                    if let Msg::ResyncData { data, .. } = &msg {
                        self.counters.entry(peer).or_default().resync_received_bytes +=
                            data.len() as u64;
                        self.resynced = true;
                    }
                    self.feed(Event::Message { from: peer, msg });
                }
            }
            Input::PeerGone { peer, conn, why } => {
                if self.conns.get(&peer).is_some_and(|c| c.id == conn) {
                    tracing::warn!(resource = %self.shared.resource, peer, "connection lost: {why}");
                    self.counters.entry(peer).or_default().last_error = Some(why);
                    self.close(peer);
                    self.feed(Event::PeerDisconnected { peer });
                }
            }
            Input::Attach { reply } => {
                let r = match (&self.vol, self.store.as_mut()) {
                    (Some(_), Some(store)) => {
                        store.forget_written();
                        self.feed(Event::Admin(Admin::Attach));
                        match self.core.status().detached {
                            None => Ok(()),
                            Some(why) => Err(format!("the disk stays detached: {why}")),
                        }
                    }
                    _ => Err("this node has no disk in this resource".into()),
                };
                let _ = reply.send(r);
            }
            Input::Reconfigure { cfg, reply } => {
                let _ = reply.send(self.reconfigure(cfg));
            }
            Input::Resize {
                backing_size,
                reply,
            } => self.resize(backing_size, reply),
            Input::Stop { .. } => {}
        }
    }

    fn reconfigure(&mut self, cfg: ReplConfig) -> Result<String, String> {
        let me = &self.shared.me;
        match cfg.node(&me.name) {
            Some(n) if n == me => {}
            Some(_) => {
                return Err(format!(
                    "this node's own entry ({}) changed; that needs `tandem local down {1}` and `tandem local up {1}`",
                    me.name, self.shared.resource
                ));
            }
            None => {
                return Err(format!(
                    "this node ({}) is no longer listed; to remove it, take the resource down here",
                    me.name
                ));
            }
        }
        let old = self.shared.cfg();
        let core_cfg = core_config(me, &cfg, self.core.size_blocks() * BLOCK);
        let slots = match &self.store {
            Some(s) => Some(s.plan_slots(&core_cfg)?),
            None => None,
        };
        let actions = self.core.reconfigure(core_cfg)?;
        if let (Some(store), Some(slots)) = (self.store.as_mut(), slots) {
            store.set_slots(slots);
        }
        if let Ok(mut c) = self.shared.cfg.write() {
            *c = cfg.clone();
        }
        let mut changes = Vec::new();
        for n in &old.nodes {
            if cfg
                .node_by_id(n.id)
                .is_none_or(|m| m.name != n.name || m.diskless != n.diskless)
            {
                changes.push(format!("node {} removed", n.name));
            }
        }
        for n in &cfg.nodes {
            match old.node_by_id(n.id) {
                Some(o) if o.name == n.name && o.diskless == n.diskless => {
                    if o.address != n.address {
                        changes.push(format!("node {} now at {}", n.name, n.address));
                        // Reconnect to the new address.
                        if self.conns.contains_key(&n.id) {
                            self.close(n.id);
                            self.pending
                                .push_back(Event::PeerDisconnected { peer: n.id });
                        }
                    }
                }
                _ => changes.push(format!("node {} added", n.name)),
            }
        }
        self.dialing.retain(|id, _| cfg.node_by_id(*id).is_some());
        for d in self.dialing.values_mut() {
            d.next = Instant::now();
            d.backoff = DIAL_BACKOFF_MIN;
        }
        for a in actions {
            self.act(a);
        }
        while let Some(ev) = self.pending.pop_front() {
            for a in self.core.handle(ev) {
                self.act(a);
            }
        }
        self.refresh();
        if old.protocol != cfg.protocol
            || old.quorum != cfg.quorum
            || old.split_brain != cfg.split_brain
            || old.timeout_ms != cfg.timeout_ms
            || old.secret != cfg.secret
            || old.resync_rate != cfg.resync_rate
            || old.on_no_quorum != cfg.on_no_quorum
            || old.resync_csums != cfg.resync_csums
            || old.allow_two_primaries != cfg.allow_two_primaries
        {
            changes.push("options changed".into());
        }
        if changes.is_empty() {
            changes.push("nothing to change".into());
        }
        Ok(changes.join(", "))
    }

    fn resize(&mut self, backing_size: u64, reply: oneshot::Sender<Result<String, String>>) {
        if let Some(why) = &self.failed {
            let _ = reply.send(Err(why.clone()));
            return;
        }
        let max_peers = self.max_peers();
        let data = match replica::md::Layout::compute(
            backing_size,
            max_peers,
            replica::md::DEFAULT_AL_SLOTS,
        ) {
            Ok(l) => l.data_size,
            Err(e) => {
                let _ = reply.send(Err(format!("{e}; nothing was changed")));
                return;
            }
        };
        // Every node lays out the same data size with the same (smallest) backing.
        let backing = backing_for(data, max_peers).unwrap_or(backing_size);
        let size_blocks = data / BLOCK;
        self.resizes.push_back((backing, reply));
        self.feed(Event::Admin(Admin::Resize { size_blocks }));
    }

    fn max_peers(&self) -> u32 {
        match self.vol.as_ref().and_then(|v| v.superblock()) {
            Some(sb) => sb.layout.max_peers,
            None => self.shared.vcfg_max_peers,
        }
    }

    /// Carries out `Action::Grow`: the backing file grows and its metadata moves to
    /// the new end (`LocalVolume::grow`), then the core hears how it went.
    fn grow(&mut self, size_blocks: u64) {
        let result = match &self.vol {
            None => Err("this node has no disk".to_owned()),
            Some(v) => match backing_for(size_blocks * BLOCK, self.max_peers()) {
                None => Err(format!(
                    "no backing size gives exactly {size_blocks} blocks of data with max-peers {}",
                    self.max_peers()
                )),
                Some(backing) => {
                    let v = v.clone();
                    let r = tokio::task::block_in_place(|| v.grow(backing));
                    match r {
                        Ok(l) if l.data_size == size_blocks * BLOCK => {
                            tracing::info!(resource = %self.shared.resource, backing = %v.path().display(), bytes = backing, "backing grown");
                            Ok(())
                        }
                        Ok(l) => Err(format!(
                            "the backing holds {} bytes of data, not {}",
                            l.data_size,
                            size_blocks * BLOCK
                        )),
                        Err(e) => {
                            let moving = v
                                .superblock()
                                .is_some_and(|sb| sb.flags & replica::md::FLAG_GROWING != 0);
                            if moving {
                                // Half moved: no metadata may be written before the
                                // open that finishes the move.
                                self.failed = Some(format!(
                                    "growing the backing failed half way ({e}); I/O is stopped: fix the disk, then `tandem local down {0}` and `tandem local up {0}` (the open finishes the grow)",
                                    self.shared.resource
                                ));
                                for (_, reply) in self.clients.drain() {
                                    reply.send(Err(IoError::Disk));
                                }
                            }
                            Err(e.to_string())
                        }
                    }
                }
            },
        };
        self.pending.push_back(Event::GrowDone {
            size_blocks,
            result,
        });
    }

    /// Names peers in a core message (`node #ID`) by their node names.
    fn name_nodes(&self, msg: &str) -> String {
        let mut out = msg.to_owned();
        let cfg = self.shared.cfg();
        let mut nodes: Vec<_> = cfg.nodes.iter().collect();
        nodes.sort_by_key(|n| std::cmp::Reverse(n.id));
        for n in nodes {
            out = out.replace(&format!("node #{}", n.id), &format!("node {}", n.name));
        }
        out
    }

    /// Starts connection attempts to the peers this node dials (those with a lower id).
    fn dial(&mut self) {
        let me = self.shared.me.id;
        let cfg = self.shared.cfg();
        for n in cfg.nodes.clone() {
            if n.id >= me || self.conns.contains_key(&n.id) || !self.core.wants_connection(n.id) {
                continue;
            }
            let d = self.dialing.entry(n.id).or_insert_with(new_dial);
            if d.in_progress || Instant::now() < d.next {
                continue;
            }
            d.in_progress = true;
            let offer = Offer {
                resource: self.shared.resource.clone(),
                from: me,
                to: n.id,
                size: self.shared.peer_size(),
                nonce: match peer::nonce() {
                    Ok(n) => n,
                    Err(_) => continue,
                },
            };
            let secret = cfg.secret.clone();
            let tx = self.tx.clone();
            let peer = n.id;
            let addr = n.address;
            self.rt.spawn(async move {
                let result = async {
                    let mut s =
                        tokio::time::timeout(peer::HANDSHAKE_TIMEOUT, TcpStream::connect(addr))
                            .await
                            .map_err(|_| format!("{addr}: connect timed out"))?
                            .map_err(|e| format!("{addr}: {e}"))?;
                    let _ = s.set_nodelay(true);
                    peer::dial(&mut s, &offer, &secret)
                        .await
                        .map_err(|e| format!("{addr}: {e}"))?;
                    Ok::<_, String>(s)
                }
                .await;
                let _ = tx.send(Input::Dialed { peer, result }).await;
            });
        }
    }

    fn establish(&mut self, peer: NodeId, stream: TcpStream) {
        if !self.core.wants_connection(peer) {
            tracing::info!(resource = %self.shared.resource, peer, "dropping a connection: this node is StandAlone towards it");
            return;
        }
        if self.conns.contains_key(&peer) {
            // The peer reconnected before the old connection was noticed dead.
            self.close(peer);
            self.feed(Event::PeerDisconnected { peer });
        }
        let _ = stream.set_nodelay(true);
        let id = self.next_conn;
        self.next_conn += 1;
        let (rd, wr) = stream.into_split();
        let link = Arc::new(Link {
            outbox: Mutex::new(peer::Outbox::default()),
            wr,
            wake: tokio::sync::Notify::new(),
            closing: AtomicBool::new(false),
            failed: Mutex::new(None),
            last_push: Mutex::new(Instant::now()),
        });
        let timeout = Duration::from_millis(self.shared.cfg().timeout_ms);
        let ping = timeout / 4;
        let tx = self.tx.clone();
        let pong = link.clone();
        let reader = self.rt.spawn(async move {
            let mut rd = peer::FrameReader::new(rd, IO_BUF);
            let why = loop {
                match tokio::time::timeout(timeout, rd.next()).await {
                    Err(_) => break format!("no message for {} ms", timeout.as_millis()),
                    Ok(Err(e)) => break e.to_string(),
                    Ok(Ok(None)) => break "the peer closed the connection".to_owned(),
                    Ok(Ok(Some(Msg::Ping))) => {
                        if pong.push(Msg::Pong).is_ok() {
                            pong.wake.notify_one();
                        }
                    }
                    Ok(Ok(Some(Msg::Pong))) => {}
                    Ok(Ok(Some(msg))) => {
                        if tx
                            .send(Input::PeerMsg {
                                peer,
                                conn: id,
                                msg,
                            })
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            };
            let _ = tx
                .send(Input::PeerGone {
                    peer,
                    conn: id,
                    why,
                })
                .await;
        });
        let tx = self.tx.clone();
        let out = link.clone();
        let writer = self.rt.spawn(async move {
            let why = match out.run(ping).await {
                Ok(()) => return,
                Err(e) => e,
            };
            let _ = tx
                .send(Input::PeerGone {
                    peer,
                    conn: id,
                    why,
                })
                .await;
        });
        self.conns.insert(
            peer,
            Conn {
                id,
                link,
                unwritten: false,
                reader,
                writer,
            },
        );
        self.counters.entry(peer).or_default().last_error = None;
        tracing::info!(resource = %self.shared.resource, peer, "connected");
        self.feed(Event::PeerConnected { peer });
    }

    /// Closes the connection once the messages already queued are written, giving
    /// the writer at most a second.
    fn close_after_sending(&mut self, peer: NodeId) {
        if let Some(c) = self.conns.remove(&peer) {
            c.reader.abort();
            c.link.closing.store(true, Ordering::SeqCst);
            c.link.wake.notify_one();
            let mut w = c.writer;
            self.rt.spawn(async move {
                if tokio::time::timeout(Duration::from_secs(1), &mut w)
                    .await
                    .is_err()
                {
                    w.abort();
                }
            });
        }
    }

    /// Writes (or hands to the writer tasks) what the inputs handled so far queued for
    /// the peers: one write for many messages, and no hop to another task for the
    /// small ones.
    fn write_peers(&mut self) {
        self.send_replies();
        self.inputs_unwritten = 0;
        for c in self.conns.values_mut() {
            if std::mem::take(&mut c.unwritten) {
                c.link.kick();
            }
        }
    }

    /// Answers a completed client request: at once when a thread waits for it, with
    /// the next batch (`send_replies`) when it is an NBD reply sent from here.
    fn answer(&mut self, reply: ClientReply, result: Result<Option<Vec<u8>>, IoError>) {
        match reply {
            ClientReply::Nbd { done, _write } => {
                self.replies.push((done, nbd_result(result), _write));
            }
            wait => wait.send(result),
        }
    }

    /// Sends the NBD replies answered since the last batch, one write per connection.
    fn send_replies(&mut self) {
        if self.replies.is_empty() {
            return;
        }
        let mut writes = Vec::new();
        let batch: Vec<_> = self
            .replies
            .drain(..)
            .map(|(done, result, write)| {
                writes.push(write);
                (done, result)
            })
            .collect();
        Completion::done_all(batch);
        // Unaligned writes may go on once the replies are out.
        drop(writes);
    }

    fn close(&mut self, peer: NodeId) {
        if let Some(c) = self.conns.remove(&peer) {
            c.reader.abort();
            c.writer.abort();
        }
    }

    async fn stop(&mut self) {
        self.send_replies();
        self.feed(Event::Admin(Admin::Down));
        self.send_replies();
        // Let the writers send what is queued (the Leaving notices), briefly.
        let conns = std::mem::take(&mut self.conns);
        for (_, c) in conns {
            c.link.closing.store(true, Ordering::SeqCst);
            c.link.wake.notify_one();
            c.reader.abort();
            let mut w = c.writer;
            if tokio::time::timeout(Duration::from_secs(1), &mut w)
                .await
                .is_err()
            {
                w.abort();
            }
        }
        for (_, reply) in self.clients.drain() {
            reply.send(Err(IoError::NotPrimary));
        }
        if let Some(v) = &self.vol {
            let v = v.clone();
            let _ = tokio::task::spawn_blocking(move || v.close()).await;
        }
    }

    fn feed(&mut self, ev: Event) {
        self.pending.push_back(ev);
        while let Some(ev) = self.pending.pop_front() {
            for a in self.core.handle(ev) {
                self.act(a);
            }
        }
        // Whether NBD reads may go straight to the disk changes at once; the rest of
        // the status is published by the run loop.
        let fast = self.vol.is_some()
            && self.failed.is_none()
            && self.core.role() == Role::Primary
            && self.core.disk() == wire::Disk::UpToDate
            && self.core.has_quorum()
            && self.core.suspended().is_none();
        self.shared.direct_reads.store(fast, Ordering::SeqCst);
        self.stale = true;
    }

    fn disk(
        &mut self,
        tag: u64,
        op: impl FnOnce(&LocalVolume) -> Result<Option<Vec<u8>>, DeviceError> + Send + 'static,
    ) {
        let Some(vol) = self.vol.clone() else {
            self.pending.push_back(Event::DiskDone {
                tag,
                ok: false,
                data: None,
            });
            return;
        };
        let tx = self.tx.clone();
        self.rt.spawn_blocking(move || {
            let (ok, data) = match op(&vol) {
                Ok(d) => (true, d),
                Err(e) => {
                    tracing::error!(backing = %vol.path().display(), "disk I/O failed: {e}");
                    (false, None)
                }
            };
            let _ = tx.blocking_send(Input::DiskDone { tag, ok, data });
        });
    }

    /// Carries out a flush or a FUA write on this task, the runtime's worker handing
    /// its other tasks to a new thread meanwhile (`block_in_place`). On the way to the
    /// disk and back through the blocking pool, a flush cost two thread wake-ups more
    /// than the flush itself on a fast disk. What the peers were sent before (their
    /// copy of the same flush) is written first, so that both disks flush at once.
    fn durable_in_place(&mut self, tag: u64, op: impl FnOnce() -> Result<(), DeviceError>) {
        self.write_peers();
        let ok = tokio::task::block_in_place(op)
            .inspect_err(|e| {
                tracing::error!(resource = %self.shared.resource, "disk I/O failed: {e}");
            })
            .is_ok();
        self.pending.push_back(Event::DiskDone {
            tag,
            ok,
            data: None,
        });
    }

    fn act(&mut self, a: Action) {
        if self.failed.is_some()
            && !matches!(
                a,
                Action::Complete { .. } | Action::PromoteResult(_) | Action::State(_)
            )
        {
            return;
        }
        match a {
            Action::DiskWrite {
                tag,
                block,
                count: _,
                data,
                fua,
            } => match self.vol.clone() {
                // A write into the page cache takes microseconds: done here, it saves
                // two thread switches per write, which cost more than the write.
                Some(v) if !fua => {
                    let ok = v
                        .write_at(&data, block * BLOCK, false)
                        .inspect_err(|e| {
                            tracing::error!(backing = %v.path().display(), "disk I/O failed: {e}");
                        })
                        .is_ok();
                    self.pending.push_back(Event::DiskDone {
                        tag,
                        ok,
                        data: None,
                    });
                }
                Some(v) => {
                    self.durable_in_place(tag, move || v.write_at(&data, block * BLOCK, true))
                }
                None => self.disk(tag, |_| Ok(None)),
            },
            Action::DiskRead { tag, block, count } => self.disk(tag, move |v| {
                let mut buf = vec![0u8; count as usize * BLOCK as usize];
                v.read_at(&mut buf, block * BLOCK).map(|_| Some(buf))
            }),
            Action::DiskFlush { tag } => match self.vol.clone() {
                Some(v) => self.durable_in_place(tag, move || v.flush()),
                None => self.disk(tag, |_| Ok(None)),
            },
            Action::PersistMd(p) => {
                if let Some(store) = self.store.as_mut() {
                    let r = tokio::task::block_in_place(|| store.persist(&p));
                    if let Err(e) = &r
                        && let Some(why) = self.core.status().detached
                    {
                        // The disk is out of use already: its metadata is rewritten
                        // whole at attach.
                        tracing::warn!(resource = %self.shared.resource, "metadata write on the detached disk failed: {e} (detached: {why})");
                    } else if let Err(e) = r {
                        // Without durable metadata nothing after this may happen:
                        // the volume stops doing I/O until it is taken down and up.
                        tracing::error!(resource = %self.shared.resource, "metadata write failed: {e}");
                        self.failed = Some(format!(
                            "metadata write failed ({e}); I/O is stopped: fix the disk, then `tandem local down {0}` and `tandem local up {0}`",
                            self.shared.resource
                        ));
                        for (_, reply) in self.clients.drain() {
                            reply.send(Err(IoError::Disk));
                        }
                    }
                }
            }
            Action::Send { to, msg } => {
                if let Msg::ResyncData { data, .. } = &msg {
                    self.counters.entry(to).or_default().resync_sent_bytes += data.len() as u64;
                }
                let full = match self.conns.get_mut(&to) {
                    Some(c) => {
                        c.unwritten = true;
                        c.link.push(msg).is_err()
                    }
                    None => false,
                };
                if full {
                    tracing::warn!(resource = %self.shared.resource, peer = to, "send queue full; dropping the connection");
                    self.close(to);
                    self.pending.push_back(Event::PeerDisconnected { peer: to });
                }
            }
            Action::Disconnect { peer } => {
                if self.conns.contains_key(&peer) {
                    // What the core queued before (the Hello that lets the peer reach
                    // the same refusal, a Leaving notice) still goes out.
                    self.close_after_sending(peer);
                    self.pending.push_back(Event::PeerDisconnected { peer });
                }
            }
            Action::Complete { id, result } => {
                if let Some(reply) = self.clients.remove(&id) {
                    self.answer(reply, result);
                }
            }
            Action::PromoteResult(r) => {
                if let Some(reply) = self.promotes.pop_front() {
                    let _ = reply.send(r);
                }
            }
            Action::Grow { size_blocks } => self.grow(size_blocks),
            Action::ResizeResult(r) => {
                if let Some((backing, reply)) = self.resizes.pop_front() {
                    let size = self.shared.size();
                    let r = match r {
                        Ok(()) => Ok(format!(
                            "{}/{}: {size} bytes of data; backing files of {backing} bytes on every diskful node (set size = {backing} in the resource file on every node, which a diskless node needs at its next start)",
                            self.shared.resource, self.shared.number
                        )),
                        Err(e) => Err(self.name_nodes(&e)),
                    };
                    let _ = reply.send(r);
                }
            }
            Action::State(change) => self.event(change),
        }
    }

    fn event(&mut self, change: StateChange) {
        let (kind, detail) = match &change {
            StateChange::Role(r) => ("role", serde_json::json!({ "role": role_name(*r) })),
            StateChange::Disk(d) => {
                let was = std::mem::replace(&mut self.disk_was, *d);
                let resynced = std::mem::take(&mut self.resynced);
                if was == wire::Disk::Inconsistent
                    && *d == wire::Disk::UpToDate
                    && resynced
                    && let Some(v) = self.vol.clone()
                {
                    let resource = self.shared.resource.clone();
                    self.rt.spawn_blocking(move || {
                        if let Err(e) = v.drop_cache() {
                            tracing::warn!(%resource, "dropping the resynced data from the page cache: {e}");
                        }
                    });
                }
                ("disk", serde_json::json!({ "disk_state": disk_name(*d) }))
            }
            StateChange::Quorum(q) => ("quorum", serde_json::json!({ "quorum": q })),
            StateChange::Generation(g) => (
                "generation",
                serde_json::json!({ "current": format!("{g:016X}") }),
            ),
            StateChange::Size(blocks) => {
                self.shared.size.store(blocks * BLOCK, Ordering::SeqCst);
                ("size", serde_json::json!({ "size": blocks * BLOCK }))
            }
            StateChange::Suspended(s) => (
                "suspended",
                serde_json::json!({ "suspended": s.map(suspended_name) }),
            ),
            StateChange::Peer { peer, conn, repl } => {
                if matches!(repl, Repl::SyncSource) {
                    let total = self
                        .core
                        .status()
                        .peers
                        .iter()
                        .find(|p| p.id == *peer)
                        .map(|p| p.out_of_sync_blocks)
                        .unwrap_or(0);
                    self.counters.entry(*peer).or_default().resync_total_blocks = total;
                }
                if matches!(repl, Repl::SyncTarget) {
                    let total = self.core.metadata().resync_left.count();
                    self.counters.entry(*peer).or_default().resync_total_blocks = total;
                }
                let peer_name = self
                    .shared
                    .cfg()
                    .node_by_id(*peer)
                    .map(|n| n.name.clone())
                    .unwrap_or_default();
                (
                    "peer",
                    serde_json::json!({
                        "peer": peer_name,
                        "peer_id": peer,
                        "connection": conn_name(conn),
                        "replication": repl_name(*repl),
                    }),
                )
            }
        };
        tracing::info!(resource = %self.shared.resource, "{kind}: {detail}");
        let mut obj = serde_json::json!({
            "time_ms": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            "resource": self.shared.resource,
            "volume": self.shared.number,
            "event": kind,
        });
        if let (Some(o), Some(d)) = (obj.as_object_mut(), detail.as_object()) {
            for (k, v) in d {
                o.insert(k.clone(), v.clone());
            }
        }
        let _ = self.shared.events.send(obj.to_string());
    }

    /// Resync rates from the byte counters, once a second.
    fn measure_rates(&mut self) {
        let now = Instant::now();
        for c in self.counters.values_mut() {
            let bytes = c.resync_sent_bytes + c.resync_received_bytes;
            match c.rate_mark {
                Some((at, before)) if now.duration_since(at) >= Duration::from_secs(1) => {
                    let secs = now.duration_since(at).as_secs_f64();
                    c.resync_rate = ((bytes - before) as f64 / secs) as u64;
                    c.rate_mark = Some((now, bytes));
                }
                Some(_) => {}
                None => c.rate_mark = Some((now, bytes)),
            }
        }
    }

    fn refresh(&mut self) {
        self.stale = false;
        self.refreshed = Instant::now();
        let status = self.core.status();
        let resync_left_blocks = self.core.metadata().resync_left.count();
        let connected = self
            .shared
            .cfg()
            .nodes
            .iter()
            .filter(|n| n.id != self.shared.me.id)
            .map(|n| (n.id, self.conns.contains_key(&n.id)))
            .collect();
        if let Ok(mut s) = self.shared.snapshot.lock() {
            s.status = status;
            s.resync_left_blocks = resync_left_blocks;
            s.peers = self.counters.clone();
            s.connected = connected;
            s.error = self.failed.clone();
        }
    }
}

/// The smallest backing size whose layout holds exactly `data` bytes of data.
pub fn backing_for(data: u64, max_peers: u32) -> Option<u64> {
    use replica::md::{DEFAULT_AL_SLOTS, Layout, MD_BLOCK, bitmap_bytes};
    let fixed = 2 * MD_BLOCK + u64::from(DEFAULT_AL_SLOTS) * MD_BLOCK;
    let slots = u64::from(max_peers) + 1;
    (0..4u64)
        .filter_map(|j| {
            let b = data
                .checked_add(fixed)?
                .checked_add((bitmap_bytes(data) + j * MD_BLOCK).checked_mul(slots)?)?;
            let l = Layout::compute(b, max_peers, DEFAULT_AL_SLOTS).ok()?;
            (l.data_size == data).then_some(b)
        })
        .min()
}

fn new_dial() -> Dial {
    Dial {
        in_progress: false,
        next: Instant::now(),
        backoff: DIAL_BACKOFF_MIN,
        last_error: None,
    }
}

pub fn role_name(r: Role) -> &'static str {
    match r {
        Role::Primary => "Primary",
        Role::Secondary => "Secondary",
    }
}

pub fn disk_name(d: wire::Disk) -> &'static str {
    match d {
        wire::Disk::Diskless => "Diskless",
        wire::Disk::Inconsistent => "Inconsistent",
        wire::Disk::Outdated => "Outdated",
        wire::Disk::Consistent => "Consistent",
        wire::Disk::UpToDate => "UpToDate",
    }
}

pub fn conn_name(c: &ConnState) -> &'static str {
    match c {
        ConnState::StandAlone(_) => "StandAlone",
        ConnState::Connecting => "Connecting",
        ConnState::Handshake => "Handshake",
        ConnState::Connected => "Connected",
    }
}

pub fn repl_name(r: Repl) -> &'static str {
    match r {
        Repl::Off => "Off",
        Repl::Established => "Established",
        Repl::Deferred => "Established",
        Repl::SyncSource => "SyncSource",
        Repl::SyncTarget => "SyncTarget",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_data_size_a_backing_gives_maps_back_to_a_backing_with_that_size() {
        use replica::md::{DEFAULT_AL_SLOTS, Layout};
        for peers in [1u32, 3, 7, 31] {
            let mut b = 2 << 20;
            while b < 3 << 30 {
                let l = Layout::compute(b, peers, DEFAULT_AL_SLOTS).unwrap();
                let back = backing_for(l.data_size, peers).expect("a backing size");
                assert!(back <= b.next_multiple_of(4096), "{b} {back}");
                let again = Layout::compute(back, peers, DEFAULT_AL_SLOTS).unwrap();
                assert_eq!(again.data_size, l.data_size, "backing {b}, peers {peers}");
                b = b * 5 / 4 + 4096 * 3;
            }
        }
    }
}
