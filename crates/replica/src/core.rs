//! The replication state machine of one resource on one node, sans-IO.
//!
//! The driver (blockd with real disks and sockets, or the simulator) feeds [`Event`]s
//! and carries out the returned [`Action`]s. The core holds no sockets, threads or
//! clocks. What it relies on from the driver:
//! - messages to one peer arrive in the order they were sent, on one connection at a
//!   time (TCP semantics); a broken connection is reported once as `PeerDisconnected`;
//! - `PersistMd` is durable before any later action takes effect (a barrier);
//! - disk completions report the tag of the operation.
//!
//! - a node without a disk (configured diskless, or detached after a disk error) may
//!   be primary: it reads from one UpToDate peer (`ReadRequest`/`ReadReply`) and writes
//!   to every connected diskful peer; it issues no disk I/O;
//! - a `DiskDone { ok: false }` detaches the disk: the core issues no further disk
//!   I/O (completions of operations already issued are still welcome) and persists
//!   the metadata as Inconsistent without a generation, so the disk comes back (after
//!   a restart, or `Admin::Attach` once the driver reopened it) for a full resync.
//!
//! - online grow (`Admin::Resize`, details in `core/resize.rs`): the core asks the
//!   driver to grow the local backing with `Action::Grow { size_blocks }`; the driver
//!   makes the metadata cover the new size crash-safely (the backing opens at the old
//!   or the new size after a crash, never neither), guarantees that the new area reads
//!   as zeros, and answers `Event::GrowDone { size_blocks, result }`. From a successful
//!   `GrowDone` on, `PersistMd` carries bitmaps of the new size. Clients may use the
//!   new blocks only after every diskful node grew: the core then emits
//!   `StateChange::Size` with the new client-visible size. The outcome of the
//!   command is `Action::ResizeResult`.
//!
//! Semantics follow DRBD's contract (shared/reference/drbd.md §1): protocol A and C,
//! per-peer bitmaps, an activity log, generation UUIDs decided at connect time, resync,
//! quorum with a diskless tiebreaker. Promotion asks every connected peer for a grant,
//! so two partitions that overlap in any node cannot both promote.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use wire::{Bytes, Disk, Hello, Msg, NodeId, Role};

use crate::bitmap::Bitmap;
use crate::decide::{Decision, SplitBrainPolicy, decide};
use crate::quorum::{QuorumPolicy, View, has_quorum};

mod dual;
mod reconfig;
mod resize;
mod suspend;

use suspend::Held;
pub use suspend::{OnNoQuorum, Suspended};

pub const HISTORY_LEN: usize = 8;

/// Ends a promotion refusal that passes by itself (a peer still handshaking, the
/// primaries changing meanwhile): the caller may try again shortly.
pub const PASSING: &str = "; retry";

/// Whether a promotion refusal is one that passes by itself (see `PASSING`).
pub fn is_passing(refusal: &str) -> bool {
    refusal.ends_with(PASSING)
}
/// Blocks a resync target remembers as written during one resync round.
const FRESH_MAX: usize = 1 << 20;
/// Words of bitmap per Bitmap message.
const BITMAP_CHUNK: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// Acknowledge once the local write is done and the data is queued to peers.
    A,
    /// Acknowledge once every connected diskful peer wrote it.
    C,
}

#[derive(Debug, Clone)]
pub struct NodeConf {
    pub id: NodeId,
    pub diskful: bool,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub node: NodeId,
    pub nodes: Vec<NodeConf>,
    pub size_blocks: u64,
    pub protocol: Protocol,
    pub quorum: QuorumPolicy,
    pub split_brain: SplitBrainPolicy,
    /// Hot extents the activity log may hold.
    pub al_extents: usize,
    pub extent_blocks: u64,
    /// Resync blocks in flight per peer, and started per tick.
    pub resync_inflight: usize,
    pub resync_per_tick: usize,
    /// Most resync blocks sent per tick over all peers (None: as fast as the
    /// in-flight window allows).
    pub resync_rate_per_tick: Option<u64>,
    /// How long a promotion waits for grants (ms).
    pub promote_timeout_ms: u64,
    /// How long a granted promotion reserves the granter (ms).
    pub grant_lease_ms: u64,
    /// Client requests queued before new ones are refused.
    pub max_queued: usize,
    /// Checksum-based resync: the source sends a digest of each out-of-sync block
    /// first and its data only when the target's block differs.
    pub resync_csums: bool,
    /// What a primary does with client I/O while it has no quorum.
    pub on_no_quorum: OnNoQuorum,
    /// While I/O is suspended: client requests held, and bytes of write data held,
    /// before new ones fail with `IoError::SuspendedFull`.
    pub max_held: usize,
    pub max_held_bytes: u64,
    /// A second node may be primary while one is (live migration; protocol C only).
    /// The first one orders every write (`core/dual.rs`).
    pub allow_two_primaries: bool,
}

impl Config {
    /// Node 0 of `nodes` (id, diskful) with small limits: the unit tests' cluster.
    #[cfg(test)]
    pub(crate) fn for_tests(nodes: &[(NodeId, bool)]) -> Config {
        Config {
            node: 0,
            nodes: nodes
                .iter()
                .map(|&(id, diskful)| NodeConf { id, diskful })
                .collect(),
            size_blocks: 1024,
            protocol: Protocol::C,
            quorum: QuorumPolicy::Majority,
            split_brain: SplitBrainPolicy::Disconnect,
            al_extents: 8,
            extent_blocks: 64,
            resync_inflight: 4,
            resync_per_tick: 4,
            resync_rate_per_tick: None,
            promote_timeout_ms: 1000,
            grant_lease_ms: 1000,
            max_queued: 64,
            resync_csums: false,
            allow_two_primaries: false,
            on_no_quorum: OnNoQuorum::IoError,
            max_held: 64,
            max_held_bytes: 1 << 20,
        }
    }

    pub fn diskful(&self, n: NodeId) -> bool {
        self.nodes.iter().any(|c| c.id == n && c.diskful)
    }
    fn peers(&self) -> impl Iterator<Item = &NodeConf> {
        self.nodes.iter().filter(move |c| c.id != self.node)
    }
}

/// What survives a crash: written by `PersistMd`, read back at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Persistent {
    pub disk: Disk,
    pub current: u64,
    pub history: Vec<u64>,
    pub bitmap_uuids: BTreeMap<NodeId, u64>,
    pub bitmaps: BTreeMap<NodeId, Bitmap>,
    /// Newest generation this node was told of (it may not hold its data yet, e.g.
    /// as a resync target that received the primary's writes): no source older than
    /// this may overwrite it, and no node older than this gets its vote.
    pub newest_seen: u64,
    /// Every block of an unfinished resync (kept whole until one completes): a new
    /// source must send all of them again, since those already received came from
    /// another copy that may differ.
    pub resync_left: Bitmap,
    /// The source of the unfinished resync.
    pub resync_from: Option<NodeId>,
    /// Hot extents, least recently used first.
    pub al: Vec<u64>,
    /// The node was primary (a crash then makes it a crashed primary).
    pub primary: bool,
    /// Open and not closed cleanly.
    pub dirty: bool,
    /// `current` was started by a primary (this node, or one it adopted it from) that
    /// has not confirmed it yet: only a primary holding it with quorum, every peer
    /// present at the start having acknowledged it, settles a generation (and tells
    /// its peers, `UuidSettled`); until then it may be undone, and no write under it
    /// has completed. A node meeting a settled generation that went on from the same
    /// parent another way knows this one was undone (`decide`).
    pub unsettled: bool,
    /// A generation this node only heard of (a `NewUuid` that named it as missing the
    /// writes) and its parent: `Hello::known_parent`, which lets a settled sibling of
    /// that generation prove it undone, also after a restart.
    pub heard: Option<(u64, u64)>,
    /// The newest generation of this node's line (`current` or in `history`) known
    /// to be settled, 0 when none is known: `Hello::settled`.
    pub settled: u64,
    /// The generation `current` was started from (0: not known): `Hello::parent`.
    /// The history's first entry is not always that: undone generations are kept
    /// there too.
    pub parent: u64,
}

impl Persistent {
    /// Metadata of a new volume whose data is known to equal its peers' (all zero, or
    /// an initial sync skipped on purpose): UpToDate in generation `current`.
    pub fn new_in_sync(cfg: &Config, current: u64) -> Self {
        let mut p = Self::new_fresh(cfg);
        p.disk = Disk::UpToDate;
        p.current = current;
        p.settled = current;
        p
    }

    /// Metadata of a new volume with unknown data: Inconsistent, generation 0, so
    /// the first connect to a node with data brings a full sync.
    pub fn new_fresh(cfg: &Config) -> Self {
        let bitmaps = cfg
            .peers()
            .filter(|p| p.diskful)
            .map(|p| (p.id, Bitmap::new(cfg.size_blocks)))
            .collect();
        Persistent {
            disk: if cfg.diskful(cfg.node) {
                Disk::Inconsistent
            } else {
                Disk::Diskless
            },
            current: 0,
            history: Vec::new(),
            bitmap_uuids: BTreeMap::new(),
            bitmaps,
            newest_seen: 0,
            resync_left: Bitmap::new(cfg.size_blocks),
            resync_from: None,
            al: Vec::new(),
            primary: false,
            dirty: false,
            unsettled: false,
            heard: None,
            settled: 0,
            parent: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoError {
    /// Not primary, or not UpToDate: the request cannot be served here.
    NotPrimary,
    NoQuorum,
    NoData,
    /// The local disk failed the request.
    Disk,
    /// Too many requests queued.
    Busy,
    OutOfRange,
    /// I/O is suspended (no quorum, suspend-io) and the held requests are at their
    /// bound (`Config::max_held`, `Config::max_held_bytes`).
    SuspendedFull,
    /// A second primary lost the primary that orders its writes (allow-two-primaries)
    /// while that one was still primary: it stepped down.
    OrdererLost,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admin {
    Primary {
        force: bool,
    },
    Secondary,
    /// Allow connecting to `peer` (all when None) again, optionally discarding this
    /// node's data if the peer and this node disagree.
    Connect {
        peer: Option<NodeId>,
        discard_my_data: bool,
    },
    Disconnect {
        peer: Option<NodeId>,
    },
    /// Take a full resync from the next UpToDate peer.
    Invalidate,
    /// Online verify against `peer` (the first connected UpToDate peer when None):
    /// every block's CRC32C is compared; blocks that differ are marked out of sync
    /// (and resynced from this node). Progress and findings are in `PeerStatus`.
    Verify {
        peer: Option<NodeId>,
    },
    /// Use the local disk again after it was detached for an I/O error (on a
    /// secondary; ignored otherwise). Its data is not trusted: a full resync follows.
    /// The driver must have reopened the backing device first.
    Attach,
    /// Leave cleanly: tell peers, mark self Outdated if someone stays UpToDate.
    Down,
    /// Online grow to `size_blocks` data blocks, coordinated by this node (see
    /// `core/resize.rs`). Answered by `Action::ResizeResult`.
    Resize {
        size_blocks: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Tick {
        now: u64,
    },
    ClientWrite {
        id: u64,
        block: u64,
        count: u32,
        /// Shared with the driver's buffer (see `Action::DiskWrite`).
        data: Bytes,
        fua: bool,
    },
    ClientRead {
        id: u64,
        block: u64,
        count: u32,
    },
    ClientFlush {
        id: u64,
    },
    DiskDone {
        tag: u64,
        ok: bool,
        data: Option<Vec<u8>>,
    },
    PeerConnected {
        peer: NodeId,
    },
    PeerDisconnected {
        peer: NodeId,
    },
    Message {
        from: NodeId,
        msg: Msg,
    },
    Admin(Admin),
    /// The driver carried out `Action::Grow`: the backing holds `size_blocks` now
    /// (`Ok`, durable), or it still holds the old size (`Err`, why).
    GrowDone {
        size_blocks: u64,
        result: Result<(), String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    DiskWrite {
        tag: u64,
        block: u64,
        count: u32,
        /// Shared with the `Msg::Write`s of the same write (no copy).
        data: Bytes,
        fua: bool,
    },
    DiskRead {
        tag: u64,
        block: u64,
        count: u32,
    },
    DiskFlush {
        tag: u64,
    },
    PersistMd(Box<Persistent>),
    Send {
        to: NodeId,
        msg: Msg,
    },
    /// Tear the connection to `peer` down (the core refuses to talk to it for now).
    Disconnect {
        peer: NodeId,
    },
    Complete {
        id: u64,
        result: Result<Option<Vec<u8>>, IoError>,
    },
    /// Outcome of an `Admin::Primary` that needed a round of grants.
    PromoteResult(Result<(), String>),
    /// Grow the local backing so that it holds `size_blocks` data blocks, with the
    /// new blocks reading as zeros; answer with `Event::GrowDone`.
    Grow {
        size_blocks: u64,
    },
    /// Outcome of an `Admin::Resize` (peers are named `node #ID`).
    ResizeResult(Result<(), String>),
    State(StateChange),
}

/// One observable change, for status, events and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateChange {
    Role(Role),
    Disk(Disk),
    Quorum(bool),
    /// The current generation changed (new, adopted from a resync source, or undone).
    Generation(u64),
    /// Clients may now use this many blocks (after an online grow).
    Size(u64),
    /// Client I/O is suspended (held, neither completed nor failed), or no longer.
    Suspended(Option<Suspended>),
    Peer {
        peer: NodeId,
        conn: ConnState,
        repl: Repl,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnState {
    /// Admin said disconnect, or a refusal that needs a human (reason given).
    StandAlone(String),
    Connecting,
    /// Transport up, exchanging generations.
    Handshake,
    Connected,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repl {
    Off,
    Established,
    Deferred,
    SyncSource,
    SyncTarget,
}

#[derive(Debug)]
struct SourceState {
    cursor: u64,
    inflight: BTreeSet<u64>,
    /// Disk reads for resync: tag -> (block, invalidated by a newer local write).
    reading: BTreeMap<u64, (u64, bool)>,
    /// Checksum mode: blocks whose digest was sent, with the `seq` and data read and
    /// whether a newer local write made that data stale, until the target acks them
    /// or asks for the data (at most the in-flight window).
    held: BTreeMap<u64, (u64, Vec<u8>, bool)>,
}

/// The digest of checksum-based resync (SHA-256: a false match would leave a block
/// different, so a CRC is not enough here).
fn block_digest(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

#[derive(Debug)]
struct Peer {
    id: NodeId,
    diskful: bool,
    conn: ConnState,
    repl: Repl,
    role: Role,
    disk: Disk,
    current: u64,
    discard_my_data: bool,
    left_cleanly: bool,
    round: u32,
    my_hello: Option<Hello>,
    their_hello: Option<Hello>,
    /// Bitmap chunks received in this round, and whether the last one arrived.
    bitmap_in: Option<(Bitmap, bool)>,
    bitmap_sent: bool,
    decision: Option<Decision>,
    source: Option<SourceState>,
    /// It would be our sync source, but another resync into us runs first.
    waiting_turn: bool,
    verify: VerifyRun,
}

/// An online verify this node runs against one peer.
#[derive(Debug, Default, Clone)]
struct VerifyRun {
    running: bool,
    cursor: u64,
    /// Blocks read locally or awaiting the peer's answer.
    inflight: BTreeSet<u64>,
    done: u64,
    oos: u64,
}

impl Peer {
    fn connected(&self) -> bool {
        matches!(self.conn, ConnState::Handshake | ConnState::Connected)
    }
    /// Decided and exchanging data normally (including resync).
    fn live(&self) -> bool {
        self.conn == ConnState::Connected
    }
}

#[derive(Debug)]
enum Work {
    /// A client write on the primary.
    Client {
        id: u64,
        block: u64,
        count: u32,
        data: Bytes,
        fua: bool,
    },
    /// A write replicated from the primary.
    Peer {
        from: NodeId,
        seq: u64,
        block: u64,
        count: u32,
        data: Bytes,
        fua: bool,
        targets: u32,
    },
    PeerFlush {
        from: NodeId,
        seq: u64,
    },
    Resync {
        from: NodeId,
        round: u32,
        block: u64,
        /// See `Msg::ResyncData`.
        seq: u64,
        data: Vec<u8>,
    },
    ResyncDone {
        from: NodeId,
        round: u32,
        current: u64,
        history: Vec<u64>,
        last_seq: u64,
        tie: NodeId,
    },
    /// Checksum-based resync: compare this block with the source's digest.
    ResyncCheck {
        from: NodeId,
        round: u32,
        block: u64,
        seq: u64,
        digest: [u8; 32],
    },
}

impl Work {
    fn range(&self) -> Option<(u64, u64)> {
        match self {
            Work::Client { block, count, .. } | Work::Peer { block, count, .. } => {
                Some((*block, u64::from(*count)))
            }
            Work::Resync { block, .. } | Work::ResyncCheck { block, .. } => Some((*block, 1)),
            _ => None,
        }
    }
}

#[derive(Debug)]
enum DiskOp {
    ClientWrite {
        seq: u64,
        block: u64,
        count: u64,
    },
    PeerWrite {
        from: NodeId,
        seq: u64,
        block: u64,
        count: u64,
    },
    PeerFlush {
        from: NodeId,
        seq: u64,
        mark: u64,
    },
    ClientRead {
        id: u64,
        block: u64,
        count: u32,
    },
    /// Verify (source side): one block to digest for `peer`.
    VerifyRead {
        peer: NodeId,
        block: u64,
    },
    /// Verify (peer side): one block to compare with the source's digest.
    VerifyCompare {
        from: NodeId,
        block: u64,
        digest: u32,
    },
    /// A read a diskless primary asked this node for.
    PeerRead {
        from: NodeId,
        id: u64,
    },
    ClientFlush {
        id: u64,
        mark: u64,
    },
    ResyncWrite {
        from: NodeId,
        round: u32,
        block: u64,
    },
    /// Resync (target side): the block as it is here, to learn whether the source's
    /// `data` changes it (see `Work::Resync`).
    ResyncCompareRead {
        from: NodeId,
        round: u32,
        block: u64,
        data: Vec<u8>,
    },
    ResyncDoneFlush(Box<ResyncDone>),
    ResyncRead {
        peer: NodeId,
    },
    /// Checksum-based resync (target side): the block to compare with a digest.
    ResyncCheckRead {
        from: NodeId,
        round: u32,
        block: u64,
        seq: u64,
        digest: [u8; 32],
    },
    AlFlush {
        mark: u64,
    },
}

/// A finished resync, applied once the target's flush made its blocks durable.
#[derive(Debug)]
struct ResyncDone {
    from: NodeId,
    round: u32,
    current: u64,
    history: Vec<u64>,
    last_seq: u64,
    tie: NodeId,
}

/// What a primary held before a rotation not yet settled (see `settle_rotation`).
#[derive(Debug)]
struct RotationUndo {
    current: u64,
    parent: u64,
    history: Vec<u64>,
    bitmap_uuids: BTreeMap<NodeId, u64>,
    unsettled: bool,
}

/// What a node held before it became a resync target, while no block of that resync
/// has been written: if the round ends then, nothing changed and it goes back to it.
#[derive(Debug)]
struct TargetUndo {
    from: NodeId,
    round: u32,
    disk: Disk,
    resync_left: Bitmap,
    resync_from: Option<NodeId>,
    known_current: u64,
    newest_seen: u64,
    /// `known_current` as set when the resync began (restored only if unchanged).
    set_known: u64,
}

#[derive(Debug)]
struct PendingWrite {
    client: Option<u64>,
    block: u64,
    count: u64,
    fua: bool,
    local_done: bool,
    local_ok: bool,
    /// Peers that still owe an ack.
    waiting: BTreeSet<NodeId>,
    /// Generation announcements still unacknowledged when this write was issued.
    completed: bool,
    /// An UpToDate peer acknowledged it: what a node without a disk needs before it
    /// may complete the write.
    peer_ok: bool,
    /// The data, kept until the write completes by a node without a disk or under
    /// suspend-io: a write a suspension held is sent anew when it ends (see
    /// `core/suspend.rs`).
    data: Option<Bytes>,
}

/// A client read a diskless node forwarded to a peer.
#[derive(Debug)]
struct PendingRead {
    client: u64,
    block: u64,
    count: u32,
    peer: NodeId,
    tried: BTreeSet<NodeId>,
}

#[derive(Debug)]
struct PendingFlush {
    id: u64,
    local_done: bool,
    local_ok: bool,
    waiting: BTreeSet<NodeId>,
    /// An UpToDate peer acknowledged it (see `PendingWrite::peer_ok`).
    peer_ok: bool,
}

#[derive(Debug)]
struct Promotion {
    id: u64,
    deadline: u64,
    waiting: BTreeSet<NodeId>,
    force: bool,
    /// A diskless candidate's generation: that of the UpToDate peer it will serve
    /// data from (current, history).
    adopt: Option<(u64, Vec<u64>)>,
    /// The primary this candidate was granted to join as the second one.
    second_to: Option<NodeId>,
}

#[derive(Debug)]
pub struct Replica {
    cfg: Config,
    /// Checksum-based resync: blocks found equal on this target (not copied).
    resync_same_blocks: u64,
    md: Persistent,
    now: u64,
    rng: u64,
    role: Role,
    quorum: bool,
    had_quorum: bool,
    crashed_primary: bool,
    peers: BTreeMap<NodeId, Peer>,
    next_tag: u64,
    next_seq: u64,
    disk_ops: BTreeMap<u64, DiskOp>,
    queue: VecDeque<Work>,
    /// Local writes in flight per block, for per-block ordering.
    busy_blocks: BTreeMap<u64, u32>,
    extent_inflight: BTreeMap<u64, u32>,
    extent_unacked: BTreeMap<u64, u32>,
    /// Extent -> stamp of its last completed local write not yet covered by a flush.
    extent_dirty: BTreeMap<u64, u64>,
    dirty_stamp: u64,
    /// Extents covered by the AL flush in flight.
    al_flush: bool,
    writes: BTreeMap<u64, PendingWrite>,
    flushes: Vec<PendingFlush>,
    need_rotation: bool,
    /// Peers that have not yet acknowledged the newest generation.
    uuid_waiting: BTreeSet<NodeId>,
    /// Generations before a rotation not yet acknowledged with quorum: if quorum is
    /// lost first, no write under the new generation can have completed, and the
    /// node goes back to these (else a partitioned primary looks like a split brain).
    rotation_undo: Option<RotationUndo>,
    /// A resync into this node that has not written a block yet (see `TargetUndo`).
    target_undo: Option<TargetUndo>,
    /// Until when a client write waits for peers still in their handshake before it
    /// starts a new generation without them (ms; see `pump`).
    handshake_wait: Option<u64>,
    /// Writes received from the primary that it has not peer-acked: seq -> (block, count).
    window: BTreeMap<u64, (u64, u64)>,
    /// The activity log as last persisted (checked against the one in memory).
    persisted_al: BTreeSet<u64>,
    /// Window writes already submitted here (they pin their activity-log extents).
    pinned: BTreeSet<u64>,
    peer_acked: u64,
    /// Blocks still to be resynced that a replicated write reached during the
    /// running resync round (source, round, block -> newest write's seq). The writer
    /// may be a third node (a diskless primary), so its writes and the source's resync
    /// data race on separate connections: resync data read before the source had a
    /// write this node already applied is older and is not written.
    fresh: Option<(NodeId, u32, BTreeMap<u64, u64>)>,
    /// Resync blocks this tick may still send (with a rate limit).
    resync_budget: u64,
    promotion: Option<Promotion>,
    reservation: Option<(NodeId, u64)>,
    known_current: u64,
    /// Generations the source of this node's resync started during it (source,
    /// the generation they follow, the new ones in order, the nodes they named as
    /// lost): adopted after the source's, when the resync ends.
    target_next: Option<(NodeId, u64, Vec<u64>, u32)>,
    /// The generation this node last learned is settled (`UuidSettled`, or a peer's
    /// Hello), so that adopting it later (a resync that ends) adopts it settled.
    settled_seen: u64,
    /// Highest write sequence number held (volatile: a restart starts at 0).
    last_seq: u64,
    /// Tie-break among copies of one generation and `last_seq` (`Hello::tie`):
    /// this node's id, or a lower one its rank came from in a resync (volatile).
    tie: NodeId,
    /// Highest sequence number seen anywhere, so a new primary starts a new epoch.
    max_seq: u64,
    last_insync: u32,
    /// Client reads forwarded to peers (diskless): request id -> read.
    reads: BTreeMap<u64, PendingRead>,
    next_read: u64,
    /// Why the local disk was detached (after an I/O error), while it is.
    detached: Option<String>,
    /// Blocks clients may use: `cfg.size_blocks` except during an online grow, while
    /// the backing has grown but not every diskful node confirmed.
    io_blocks: u64,
    resize: Option<resize::ResizeRun>,
    /// Client I/O is suspended (on-no-quorum suspend-io; `core/suspend.rs`).
    suspended: bool,
    /// Client requests held while suspended, in arrival order, and their write bytes.
    held: VecDeque<Held>,
    held_bytes: u64,
    /// allow-two-primaries (`core/dual.rs`): the primary that orders this primary's
    /// writes, whether it was demoted (handing over), requests forwarded to it by
    /// forwarding id, those it answered with retry, those waiting for the handover.
    orderer: Option<NodeId>,
    handover: bool,
    forwarded: BTreeMap<u64, dual::Forwarded>,
    retried: BTreeMap<u64, dual::Forwarded>,
    takeover_queue: VecDeque<dual::Forwarded>,
    next_fwd: u64,
    /// On the orderer: internal client id -> (forwarder, its forwarding id).
    remote: BTreeMap<u64, (NodeId, u64)>,
    next_remote: u64,
    out: Vec<Action>,
    summary: Summary,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Summary {
    current: Option<u64>,
    role: Option<Role>,
    disk: Option<Disk>,
    quorum: Option<bool>,
    size: Option<u64>,
    suspended: Option<bool>,
    peers: BTreeMap<NodeId, (ConnState, Repl)>,
}

/// What status shows about one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerStatus {
    pub id: NodeId,
    pub diskful: bool,
    pub conn: ConnState,
    pub repl: Repl,
    pub role: Role,
    pub disk: Disk,
    pub out_of_sync_blocks: u64,
    /// An online verify against this peer runs.
    pub verifying: bool,
    /// Blocks the last (or running) verify compared, and found to differ.
    pub verify_done_blocks: u64,
    pub verify_oos_blocks: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub node: NodeId,
    pub role: Role,
    pub disk: Disk,
    pub quorum: bool,
    pub may_promote: bool,
    pub current: u64,
    pub peers: Vec<PeerStatus>,
    /// Client and replicated writes not yet finished.
    pub pending_writes: usize,
    /// Why the local disk was detached, while it is (disk is then Diskless).
    pub detached: Option<String>,
    /// Blocks clients may use.
    pub size_blocks: u64,
    /// An online grow to this many blocks runs (coordinated here, or this node's
    /// backing grows for one).
    pub resizing: Option<u64>,
    /// Checksum-based resync: blocks this node, as target, found equal to the
    /// source's and did not copy (since it started).
    pub resync_same_blocks: u64,
    /// Client I/O is suspended: requests are held, neither completed nor failed,
    /// until quorum returns or the node is demoted (`core/suspend.rs`).
    pub suspended: Option<Suspended>,
    /// Client requests not completed while suspended (held, or issued before and
    /// waiting), and the write bytes held.
    pub held_requests: usize,
    pub held_bytes: u64,
    /// allow-two-primaries: this second primary's writes are ordered by that node.
    pub writes_via: Option<NodeId>,
}

fn mask(n: NodeId) -> u32 {
    1u32 << (n % 32)
}

impl Replica {
    /// Starts the replica from its persisted metadata. After an unclean stop the
    /// activity log's hot extents are marked out of sync for every peer.
    pub fn new(cfg: Config, md: Persistent, seed: u64) -> Self {
        let mut md = md;
        let crashed_primary = md.dirty && md.primary;
        // A secondary that stopped uncleanly may have lost writes it acknowledged into
        // its volatile cache, which flushes made durable on the nodes that stayed up:
        // Consistent, not UpToDate, until a survivor confirms its hot extents, it is
        // chosen over a peer with consistent data, or no survivor is left to wait for
        // (see `decide::unvouched_source` and `vouch_if_no_survivor`). A crashed
        // primary's copy stays the reference: no flush completed without it.
        // (With no other diskful node there is no survivor: it stays UpToDate.)
        let survivors = cfg.peers().any(|p| p.diskful);
        if md.dirty && !md.primary && md.disk == Disk::UpToDate && !md.al.is_empty() && survivors {
            md.disk = Disk::Consistent;
        }
        if md.dirty {
            for e in std::mem::take(&mut md.al) {
                let start = e * cfg.extent_blocks;
                for bm in md.bitmaps.values_mut() {
                    bm.set_range(start, cfg.extent_blocks);
                }
            }
            // (The marks replace the log, persisted below: a second crash before any
            // write here lost nothing more, and must not make this node Consistent.)
        }
        md.dirty = true;
        md.primary = false;
        let peers = cfg
            .peers()
            .map(|p| (p.id, Peer::fresh(p.id, p.diskful)))
            .collect();
        let known_current = if md.newest_seen != 0 {
            md.newest_seen
        } else {
            md.current
        };
        let tie = cfg.node;
        let mut r = Replica {
            cfg,
            md,
            now: 0,
            rng: seed | 1,
            role: Role::Secondary,
            quorum: false,
            had_quorum: false,
            crashed_primary,
            peers,
            next_tag: 1,
            next_seq: 1,
            disk_ops: BTreeMap::new(),
            queue: VecDeque::new(),
            busy_blocks: BTreeMap::new(),
            extent_inflight: BTreeMap::new(),
            extent_unacked: BTreeMap::new(),
            extent_dirty: BTreeMap::new(),
            dirty_stamp: 0,
            al_flush: false,
            writes: BTreeMap::new(),
            flushes: Vec::new(),
            need_rotation: false,
            handshake_wait: None,
            uuid_waiting: BTreeSet::new(),
            rotation_undo: None,
            target_undo: None,
            window: BTreeMap::new(),
            persisted_al: BTreeSet::new(),
            pinned: BTreeSet::new(),
            peer_acked: 0,
            fresh: None,
            resync_same_blocks: 0,
            resync_budget: 0,
            promotion: None,
            reservation: None,
            known_current,
            target_next: None,
            settled_seen: 0,
            last_seq: 0,
            tie,
            max_seq: 0,
            last_insync: 0,
            reads: BTreeMap::new(),
            next_read: 1,
            detached: None,
            io_blocks: 0,
            resize: None,
            suspended: false,
            held: VecDeque::new(),
            held_bytes: 0,
            orderer: None,
            handover: false,
            forwarded: BTreeMap::new(),
            retried: BTreeMap::new(),
            takeover_queue: VecDeque::new(),
            next_fwd: 1,
            remote: BTreeMap::new(),
            next_remote: dual::REMOTE_ID_BASE,
            out: Vec::new(),
            summary: Summary::default(),
        };
        r.io_blocks = r.cfg.size_blocks;
        r.summary.size = Some(r.io_blocks);
        r.update_quorum();
        r.persist();
        r
    }

    pub fn node(&self) -> NodeId {
        self.cfg.node
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn disk(&self) -> Disk {
        self.md.disk
    }

    pub fn has_quorum(&self) -> bool {
        self.quorum
    }

    /// Blocks the local disk (or, diskless, the committed size) covers; more than
    /// clients may use while an online grow waits for its peers.
    pub fn size_blocks(&self) -> u64 {
        self.cfg.size_blocks
    }

    pub fn metadata(&self) -> &Persistent {
        &self.md
    }

    /// The peers whose data this node serves (reads from) while it has no disk:
    /// connected, UpToDate, in its generation. Empty for a node with a disk.
    pub fn data_peers(&self) -> Vec<NodeId> {
        if self.diskless() {
            self.read_peers()
        } else {
            Vec::new()
        }
    }

    /// Whether the driver should (re)establish a connection to `peer`.
    pub fn wants_connection(&self, peer: NodeId) -> bool {
        self.peers
            .get(&peer)
            .is_some_and(|p| !matches!(p.conn, ConnState::StandAlone(_)))
    }

    /// Why the connection to `peer` is refused, if it is.
    pub fn standalone_reason(&self, peer: NodeId) -> Option<&str> {
        match &self.peers.get(&peer)?.conn {
            ConnState::StandAlone(r) => Some(r),
            _ => None,
        }
    }

    pub fn status(&self) -> Status {
        Status {
            node: self.cfg.node,
            role: self.role,
            disk: self.md.disk,
            quorum: self.quorum,
            may_promote: self.promotable(false).is_ok(),
            current: self.md.current,
            peers: self
                .peers
                .values()
                .map(|p| PeerStatus {
                    id: p.id,
                    diskful: p.diskful,
                    conn: p.conn.clone(),
                    repl: p.repl,
                    role: p.role,
                    disk: p.disk,
                    out_of_sync_blocks: self.md.bitmaps.get(&p.id).map(|b| b.count()).unwrap_or(0),
                    verifying: p.verify.running,
                    verify_done_blocks: p.verify.done,
                    verify_oos_blocks: p.verify.oos,
                })
                .collect(),
            pending_writes: self.writes.len()
                + self.queue.len()
                + self.reads.len()
                + self.held.len(),
            detached: self.detached.clone(),
            size_blocks: self.io_blocks,
            resizing: self.resize.as_ref().map(|r| r.size_blocks()),
            resync_same_blocks: self.resync_same_blocks,
            suspended: self.suspended(),
            held_requests: if self.suspended {
                self.held.len()
                    + self.writes.values().filter(|w| !w.completed).count()
                    + self.flushes.len()
                    + self.reads.len()
            } else {
                0
            },
            held_bytes: self.held_bytes,
            writes_via: self.orderer,
        }
    }

    /// Internal queues and counters, for diagnosing a stuck node.
    pub fn debug_summary(&self) -> String {
        let head = self.queue.front().map(|w| match w {
            Work::Client { block, .. } => format!("client write @{block}"),
            Work::Peer { seq, block, .. } => format!("peer write seq {seq:x} @{block}"),
            Work::PeerFlush { seq, .. } => format!("peer flush {seq:x}"),
            Work::Resync {
                from, round, block, ..
            } => format!("resync from n{from} r{round} @{block}"),
            Work::ResyncDone { from, round, .. } => format!("resync done from n{from} r{round}"),
            Work::ResyncCheck {
                from, round, block, ..
            } => format!("resync check from n{from} r{round} @{block}"),
        });
        let sources: Vec<String> = self
            .peers
            .values()
            .filter_map(|p| {
                p.source.as_ref().map(|s| {
                    format!(
                        "to n{}: cursor {} inflight {} reading {}",
                        p.id,
                        s.cursor,
                        s.inflight.len(),
                        s.reading.len()
                    )
                })
            })
            .collect();
        let writes: Vec<String> = self
            .writes
            .iter()
            .map(|(seq, w)| {
                format!(
                    "{seq:x} @{}: local {} completed {} waiting {:?}",
                    w.block, w.local_done, w.completed, w.waiting
                )
            })
            .collect();
        format!(
            "suspended {} (held {}, {} bytes), flushes [{}], writes [{}], uuid waiting {:?}, role {:?}, quorum {}; queue {} (head {:?}), disk ops {}, al {}/{} (flush {}), unacked extents {}, window {}, busy blocks {}, sources [{}], rounds {:?}; orderer {:?} handover {} forwarded {:?} retried {} waiting {} remote {}",
            self.suspended,
            self.held.len(),
            self.held_bytes,
            self.flushes
                .iter()
                .map(|f| format!("{}: local {} waiting {:?}", f.id, f.local_done, f.waiting))
                .collect::<Vec<_>>()
                .join("; "),
            writes.join("; "),
            self.uuid_waiting,
            self.role,
            self.quorum,
            self.queue.len(),
            head,
            self.disk_ops.len(),
            self.md.al.len(),
            self.cfg.al_extents,
            self.al_flush,
            self.extent_unacked.len(),
            self.window.len(),
            self.busy_blocks.len(),
            sources.join("; "),
            self.peers
                .values()
                .map(|p| (p.id, p.round, p.waiting_turn, p.role))
                .collect::<Vec<_>>(),
            self.orderer,
            self.handover,
            self.forwarded.keys().collect::<Vec<_>>(),
            self.retried.len(),
            self.takeover_queue.len(),
            self.remote.len(),
        )
    }

    /// Handles one event; returns what the driver must do, in order.
    pub fn handle(&mut self, ev: Event) -> Vec<Action> {
        match ev {
            Event::Tick { now } => self.tick(now),
            Event::ClientWrite {
                id,
                block,
                count,
                data,
                fua,
            } => self.client_write(id, block, count, data, fua),
            Event::ClientRead { id, block, count } => self.client_read(id, block, count),
            Event::ClientFlush { id } => self.client_flush(id),
            Event::DiskDone { tag, ok, data } => self.disk_done(tag, ok, data),
            Event::PeerConnected { peer } => self.peer_connected(peer),
            Event::PeerDisconnected { peer } => self.peer_disconnected(peer),
            Event::Message { from, msg } => self.message(from, msg),
            Event::Admin(a) => self.admin(a),
            Event::GrowDone {
                size_blocks,
                result,
            } => self.grow_done(size_blocks, result),
        }
        self.maybe_resume();
        self.pump();
        self.answer_remote();
        self.emit_changes();
        // The activity log is only worth anything if every extent written to is in
        // its persisted copy.
        debug_assert!(
            self.md.al.iter().all(|e| self.persisted_al.contains(e)),
            "activity log extent in memory but not persisted: {:?} vs {:?}",
            self.md.al,
            self.persisted_al
        );
        std::mem::take(&mut self.out)
    }

    // ---- helpers ----

    fn rand(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    fn tag(&mut self, op: DiskOp) -> u64 {
        let t = self.next_tag;
        self.next_tag += 1;
        self.disk_ops.insert(t, op);
        t
    }

    fn send(&mut self, to: NodeId, msg: Msg) {
        self.out.push(Action::Send { to, msg });
    }

    /// The newest generation of this node's line known to be settled: `current` when
    /// settled, else the one recorded when it left `current`, if still in the
    /// history (0: not known, e.g. after taking another line by a full resync).
    fn line_settled(&self) -> u64 {
        let m = &self.md;
        if !m.unsettled && m.current != 0 {
            m.current
        } else if m.settled != 0 && m.history.contains(&m.settled) {
            m.settled
        } else {
            0
        }
    }

    fn persist(&mut self) {
        self.md.settled = self.line_settled();
        self.persisted_al = self.md.al.iter().copied().collect();
        let mut md = self.md.clone();
        if self.detached.is_some() {
            // The failed disk's data is no longer trusted: attached again (a restart
            // with a disk, or `Admin::Attach`) it is Inconsistent without a
            // generation, which takes a full resync (like `Admin::Invalidate`).
            md.disk = Disk::Inconsistent;
            md.current = 0;
            md.primary = false;
            for bm in md.bitmaps.values_mut() {
                bm.set_all();
            }
            md.resync_left.set_all();
        }
        self.out.push(Action::PersistMd(Box::new(md)));
    }

    /// The local disk failed an I/O: stop using it and go on without a disk.
    fn detach(&mut self, reason: String) {
        if self.diskless() {
            return;
        }
        self.detached = Some(reason);
        self.md.disk = Disk::Diskless;
        // Local parts of requests in flight no longer count: the peers' do.
        for w in self.writes.values_mut() {
            if !w.local_done {
                w.local_done = true;
                w.local_ok = true;
            }
        }
        for f in &mut self.flushes {
            f.local_done = true;
        }
        self.persist();
        // Resyncs with this node end; everyone else learns at once that writes must
        // be marked for it from now on.
        let ids: Vec<(NodeId, bool)> = self
            .peers
            .values()
            .filter(|p| p.connected())
            .map(|p| (p.id, matches!(p.repl, Repl::SyncSource | Repl::SyncTarget)))
            .collect();
        let current = self.md.current;
        for (id, resyncing) in ids {
            if resyncing {
                self.new_round(id);
            } else {
                self.send(
                    id,
                    Msg::PeerState {
                        disk: Disk::Diskless,
                        current,
                    },
                );
            }
        }
        self.update_quorum();
        self.check_writes();
        self.check_flushes();
    }

    fn extent(&self, block: u64) -> u64 {
        block / self.cfg.extent_blocks
    }

    fn extents(&self, block: u64, count: u64) -> std::ops::RangeInclusive<u64> {
        self.extent(block)..=self.extent(block + count.max(1) - 1)
    }

    fn update_quorum(&mut self) {
        let q = has_quorum(self.cfg.quorum, self.quorum_view(false));
        self.quorum = q;
        self.had_quorum = q;
    }

    /// What quorum is computed from: peers connected (in their handshake or past
    /// it), or with `live_only` only those past it and replicating (in sync or
    /// resyncing, so that writes reach them), and then without the tiebreaker's keep
    /// rule.
    fn quorum_view(&self, live_only: bool) -> View {
        let counts = |p: &Peer| {
            if live_only {
                p.live() && p.repl != Repl::Off
            } else {
                p.connected()
            }
        };
        let diskful_self = self.cfg.diskful(self.cfg.node);
        let voters = self.cfg.nodes.iter().filter(|n| n.diskful).count();
        let present = usize::from(diskful_self && self.md.disk != Disk::Diskless)
            + self
                .peers
                .values()
                .filter(|p| p.diskful && counts(p))
                .count();
        let absent_outdated = self
            .peers
            .values()
            .filter(|p| p.diskful && !p.connected() && p.left_cleanly)
            .count();
        let diskless_total = self
            .cfg
            .nodes
            .iter()
            .filter(|n| !n.diskful && n.id != self.cfg.node)
            .count();
        let diskless_present = self
            .peers
            .values()
            .filter(|p| !p.diskful && counts(p))
            .count();
        View {
            voters,
            present,
            absent_outdated,
            diskless_total,
            diskless_present,
            had_quorum: self.had_quorum && !live_only,
        }
    }

    fn emit_changes(&mut self) {
        let now = Summary {
            current: Some(self.md.current),
            role: Some(self.role),
            disk: Some(self.md.disk),
            quorum: Some(self.quorum),
            size: Some(self.io_blocks),
            suspended: Some(self.suspended),
            peers: self
                .peers
                .values()
                .map(|p| (p.id, (p.conn.clone(), p.repl)))
                .collect(),
        };
        if now.current != self.summary.current {
            self.out
                .push(Action::State(StateChange::Generation(self.md.current)));
        }
        if now.role != self.summary.role {
            self.out.push(Action::State(StateChange::Role(self.role)));
        }
        if now.disk != self.summary.disk {
            self.out
                .push(Action::State(StateChange::Disk(self.md.disk)));
        }
        if (now.disk != self.summary.disk || now.current != self.summary.current)
            && !self.diskless()
        {
            // Diskless peers choose whom they read from by it.
            let ids: Vec<NodeId> = self
                .peers
                .values()
                .filter(|p| {
                    p.connected()
                        && (!p.diskful || (p.decision.is_some() && p.disk == Disk::Diskless))
                })
                .map(|p| p.id)
                .collect();
            for id in ids {
                self.send(
                    id,
                    Msg::PeerState {
                        disk: self.md.disk,
                        current: self.md.current,
                    },
                );
            }
        }
        if now.size != self.summary.size {
            self.out
                .push(Action::State(StateChange::Size(self.io_blocks)));
        }
        if now.quorum != self.summary.quorum {
            self.out
                .push(Action::State(StateChange::Quorum(self.quorum)));
        }
        if now.suspended != self.summary.suspended && self.summary.suspended.is_some() {
            self.out
                .push(Action::State(StateChange::Suspended(self.suspended())));
        }
        for (id, st) in &now.peers {
            if self.summary.peers.get(id) != Some(st) {
                self.out.push(Action::State(StateChange::Peer {
                    peer: *id,
                    conn: st.0.clone(),
                    repl: st.1,
                }));
            }
        }
        self.summary = now;
    }

    // ---- admin ----

    fn promotable(&self, force: bool) -> Result<(), String> {
        if self.diskless() {
            // Its data is a peer's: an UpToDate one must be connected, even when forced.
            if self.adopt_source().is_none() {
                return Err(
                    "this node has no disk and no UpToDate diskful peer is connected".into(),
                );
            }
        } else if force {
            return Ok(());
        }
        if force {
            return Ok(());
        }
        if !self.diskless() && self.md.disk != Disk::UpToDate {
            if self.md.disk == Disk::Consistent {
                return Err(
                    "data not UpToDate (disk is Consistent: this node stopped uncleanly as \
                     a secondary and waits for a peer that stayed up to confirm its recent \
                     writes; `primary --force` takes this copy as it is)"
                        .into(),
                );
            }
            return Err(format!("data not UpToDate (disk is {:?})", self.md.disk));
        }
        if !self.quorum {
            return Err("no quorum".into());
        }
        if let Some(e) = self.second_primary_refused(&self.primary_peers()) {
            return Err(e);
        }
        if let Some(p) = self.peers.values().find(|p| p.conn == ConnState::Handshake) {
            return Err(format!("still connecting to node {}{PASSING}", p.id));
        }
        if let Some(p) = self.peers.values().find(|p| p.repl == Repl::SyncTarget) {
            return Err(format!("resync from node {} in progress", p.id));
        }
        Ok(())
    }

    fn admin(&mut self, a: Admin) {
        match a {
            Admin::Primary { force } => {
                if self.role == Role::Primary {
                    self.out.push(Action::PromoteResult(Ok(())));
                    return;
                }
                if let Err(e) = self.promotable(force) {
                    self.out.push(Action::PromoteResult(Err(e)));
                    return;
                }
                if self.promotion.is_some() {
                    self.out.push(Action::PromoteResult(Err(
                        "a promotion is already in progress".into(),
                    )));
                    return;
                }
                let waiting: BTreeSet<NodeId> = if force {
                    BTreeSet::new()
                } else {
                    self.peers
                        .values()
                        .filter(|p| p.live())
                        .map(|p| p.id)
                        .collect()
                };
                let id = self.rand();
                let adopt = if self.diskless() {
                    self.adopt_source()
                } else {
                    None
                };
                let (current, history) = adopt
                    .clone()
                    .unwrap_or_else(|| (self.md.current, self.md.history.clone()));
                let primaries = self.primary_peers();
                let pmask = primaries.iter().fold(0, |m, p| m | mask(*p));
                for p in &waiting {
                    let msg = Msg::PromoteRequest {
                        id,
                        current,
                        history: history.clone(),
                        primaries: pmask,
                    };
                    self.send(*p, msg);
                }
                self.promotion = Some(Promotion {
                    id,
                    deadline: self.now + self.cfg.promote_timeout_ms,
                    waiting,
                    force,
                    second_to: primaries.first().copied().filter(|_| !force),
                    adopt,
                });
                self.check_promotion();
            }
            Admin::Secondary => {
                if self.role == Role::Secondary {
                    return;
                }
                // Writes confirmed everywhere need no resync when secondaries
                // reconcile after this demotion.
                self.send_peer_ack();
                self.role = Role::Secondary;
                self.md.primary = false;
                self.persist();
                // The way out of a suspension: what was held fails.
                self.end_suspension(IoError::NotPrimary);
                self.fail_queued_client(IoError::NotPrimary);
                self.stop_forwarding(IoError::NotPrimary);
                self.broadcast_role();
                self.rehandshake_secondaries();
            }
            Admin::Connect {
                peer,
                discard_my_data,
            } => {
                let ids: Vec<NodeId> = self
                    .peers
                    .keys()
                    .copied()
                    .filter(|id| peer.is_none_or(|p| p == *id))
                    .collect();
                for id in ids {
                    if let Some(p) = self.peers.get_mut(&id) {
                        if let ConnState::StandAlone(_) = p.conn {
                            p.conn = ConnState::Connecting;
                        }
                        p.discard_my_data = discard_my_data;
                    }
                }
            }
            Admin::Disconnect { peer } => {
                let ids: Vec<NodeId> = self
                    .peers
                    .keys()
                    .copied()
                    .filter(|id| peer.is_none_or(|p| p == *id))
                    .collect();
                for id in ids {
                    if self.peers.get(&id).is_some_and(|p| p.connected()) {
                        self.out.push(Action::Disconnect { peer: id });
                        self.peer_lost(id);
                    }
                    if let Some(p) = self.peers.get_mut(&id) {
                        p.conn = ConnState::StandAlone(
                            "disconnected by the administrator; run connect".into(),
                        );
                    }
                }
            }
            Admin::Verify { peer } => {
                if self.md.disk != Disk::UpToDate {
                    return;
                }
                let target = self
                    .peers
                    .values()
                    .find(|p| {
                        peer.is_none_or(|n| n == p.id)
                            && p.live()
                            && p.diskful
                            && p.disk == Disk::UpToDate
                            && matches!(p.repl, Repl::Established | Repl::Deferred)
                    })
                    .map(|p| p.id);
                if let Some(p) = target.and_then(|t| self.peers.get_mut(&t))
                    && !p.verify.running
                {
                    p.verify = VerifyRun {
                        running: true,
                        ..VerifyRun::default()
                    };
                    let id = p.id;
                    self.verify_step(id);
                }
            }
            Admin::Attach => {
                // Only a disk detached after an error, on a secondary (a primary
                // cannot be a resync target): it comes back Inconsistent for a full
                // resync, as a restart would bring it back.
                if self.detached.is_none() || self.role == Role::Primary {
                    return;
                }
                self.detached = None;
                for bm in self.md.bitmaps.values_mut() {
                    bm.set_all();
                }
                self.md.resync_left.set_all();
                self.md.current = 0;
                self.md.parent = 0;
                self.md.unsettled = false;
                self.md.disk = Disk::Inconsistent;
                self.persist();
                self.rehandshake_all();
                self.update_quorum();
            }
            Admin::Invalidate => {
                if self.role == Role::Primary || self.md.disk == Disk::Diskless {
                    return;
                }
                for bm in self.md.bitmaps.values_mut() {
                    bm.set_all();
                }
                self.md.resync_left.set_all();
                self.md.current = 0;
                self.md.parent = 0;
                self.md.unsettled = false;
                self.md.disk = Disk::Inconsistent;
                self.persist();
                self.rehandshake_all();
            }
            Admin::Resize { size_blocks } => self.admin_resize(size_blocks),
            Admin::Down => {
                let others_up = self
                    .peers
                    .values()
                    .any(|p| p.live() && p.diskful && p.disk == Disk::UpToDate);
                self.send_connected(&Msg::Leaving);
                if others_up && self.md.disk == Disk::UpToDate {
                    self.md.disk = Disk::Outdated;
                }
                self.md.dirty = false;
                self.persist();
            }
        }
    }

    fn check_promotion(&mut self) {
        let Some(p) = &self.promotion else { return };
        if !p.waiting.is_empty() {
            if self.now > p.deadline {
                self.promotion = None;
                self.out.push(Action::PromoteResult(Err(
                    "peers did not answer the promotion in time".into(),
                )));
            }
            return;
        }
        let force = p.force;
        let adopt = p.adopt.clone();
        let second_to = p.second_to;
        self.promotion = None;
        if let Err(e) = self.promotable(force) {
            self.out.push(Action::PromoteResult(Err(e)));
            return;
        }
        if !force && self.primary_peers().first().copied() != second_to {
            // Granted as the second primary next to one that is gone now, or as the
            // only one while a primary appeared: the grants no longer hold.
            self.out.push(Action::PromoteResult(Err(format!(
                "the primaries changed during the promotion{PASSING}"
            ))));
            return;
        }
        if self.diskless() {
            // The generation granted must still be the one a connected UpToDate
            // peer holds.
            let now = self.adopt_source();
            if now.as_ref().map(|a| a.0) != adopt.as_ref().map(|a| a.0) {
                self.out.push(Action::PromoteResult(Err(format!(
                    "the UpToDate peers changed during the promotion{PASSING}"
                ))));
                return;
            }
            if let Some((current, history)) = adopt {
                self.md.current = current;
                self.md.parent = 0;
                self.md.history = history;
                self.md.unsettled = current != self.settled_seen;
                self.known_current = current;
            }
        }
        self.role = Role::Primary;
        let primaries = self.primary_peers();
        if !force && let Some(o) = primaries.first().copied() {
            // A second primary (allow-two-primaries; promotable checked that it may
            // be): the first one orders its writes.
            self.orderer = Some(o);
            self.handover = false;
            self.broadcast_role();
            self.out.push(Action::PromoteResult(Ok(())));
            return;
        }
        if force && !self.diskless() && self.md.disk != Disk::UpToDate {
            self.md.disk = Disk::UpToDate;
            if self.md.current == 0 {
                // Data that never had a generation (a new volume) becomes the first
                // one; whatever the peers hold is unrelated to it, so they take all of it.
                self.md.current = self.rand() | 1;
                self.md.parent = 0;
                self.md.unsettled = false;
                self.known_current = self.md.current;
                for bm in self.md.bitmaps.values_mut() {
                    bm.set_all();
                }
            }
        }
        self.start_ordering(force);
        self.out.push(Action::PromoteResult(Ok(())));
    }

    /// This primary starts ordering writes: after its promotion, or when it takes
    /// over from a demoted orderer (`core/dual.rs`).
    fn start_ordering(&mut self, force: bool) {
        self.md.primary = true;
        // A new epoch: sequence numbers above anything any node has seen.
        let epoch = (self.max_seq.max(self.last_seq) >> 32) + 1;
        self.next_seq = (epoch << 32) | 1;
        // A generation starts with the first write unless every diskful peer is here.
        self.need_rotation = force
            || self
                .peers
                .values()
                .any(|p| p.diskful && !(p.live() && p.repl == Repl::Established));
        self.persist();
        self.broadcast_role();
        if self.diskless() {
            // Decisions with a diskless node never depend on roles, so its peers
            // stay connected as they are.
            // A diskless primary starts a new generation on its diskful peers right
            // away (DRBD's "UUID bumps missed by diskless primaries"): whatever they
            // write from now on is told apart from what a peer that is absent, or
            // leaves later, holds.
            self.rotate();
        } else {
            // (Also on a takeover: the forwarder's connections were set up while
            // another node ordered the writes.)
            self.rehandshake_secondaries();
        }
    }

    fn diskless(&self) -> bool {
        self.md.disk == Disk::Diskless
    }

    /// The generation a diskless node would serve as primary: that of the newest
    /// connected UpToDate diskful peer (one whose generation no other such peer has
    /// in its history).
    fn adopt_source(&self) -> Option<(u64, Vec<u64>)> {
        let ups: Vec<(u64, Vec<u64>)> = self
            .peers
            .values()
            .filter(|p| p.live() && p.diskful && p.disk == Disk::UpToDate && p.current != 0)
            .map(|p| {
                let hist = p
                    .their_hello
                    .as_ref()
                    .map(|h| h.history.clone())
                    .unwrap_or_default();
                (p.current, hist)
            })
            .collect();
        ups.iter()
            .find(|(c, _)| !ups.iter().any(|(_, h)| h.contains(c)))
            .cloned()
    }

    /// Peers a diskless primary may read from: connected, UpToDate, in its generation.
    fn read_peers(&self) -> Vec<NodeId> {
        self.peers
            .values()
            .filter(|p| {
                p.live()
                    && p.diskful
                    && p.disk == Disk::UpToDate
                    && p.current == self.md.current
                    && !matches!(p.repl, Repl::SyncTarget)
            })
            .map(|p| p.id)
            .collect()
    }

    /// Sends client read `rid` to an UpToDate peer it has not tried yet, or fails it.
    fn forward_read(&mut self, rid: u64) {
        if !self.reads.contains_key(&rid) {
            return;
        }
        if self.io_suspended() {
            if let Some(r) = self.reads.remove(&rid) {
                self.hold(Held::Read {
                    id: r.client,
                    block: r.block,
                    count: r.count,
                });
            }
            return;
        }
        let Some(r) = self.reads.get(&rid) else {
            return;
        };
        let next = self.read_peers().into_iter().find(|p| !r.tried.contains(p));
        if next.is_none() && self.waits_for_handshake() {
            if let Some(r) = self.reads.get_mut(&rid) {
                r.peer = self.cfg.node;
            }
            return;
        }
        match (next, self.client_ok()) {
            (Some(peer), Ok(())) => {
                let (block, count) = (r.block, r.count);
                if let Some(r) = self.reads.get_mut(&rid) {
                    r.peer = peer;
                    r.tried.insert(peer);
                }
                self.send(
                    peer,
                    Msg::ReadRequest {
                        id: rid,
                        block,
                        count,
                    },
                );
            }
            (_, Err(e)) => {
                if let Some(r) = self.reads.remove(&rid) {
                    self.fail(r.client, e);
                }
            }
            (None, Ok(())) => {
                if let Some(r) = self.reads.remove(&rid) {
                    self.fail(r.client, IoError::NoData);
                }
            }
        }
    }

    /// A diskless primary without a peer to serve it, while a diskful peer is still
    /// in its handshake: requests wait for it rather than fail.
    fn waits_for_handshake(&self) -> bool {
        self.diskless()
            && self.role == Role::Primary
            && self.quorum
            && self.read_peers().is_empty()
            && self
                .peers
                .values()
                .any(|p| p.diskful && p.conn == ConnState::Handshake)
    }

    /// Sends reads that waited for a peer's handshake once it is done.
    fn retry_parked_reads(&mut self) {
        if self.waits_for_handshake() {
            return;
        }
        let parked: Vec<u64> = self
            .reads
            .iter()
            .filter(|(_, r)| r.peer == self.cfg.node)
            .map(|(rid, _)| *rid)
            .collect();
        for rid in parked {
            self.forward_read(rid);
        }
    }

    /// A client read served by a peer (this node has no usable disk).
    fn read_via_peer(&mut self, client: u64, block: u64, count: u32) {
        let rid = self.next_read;
        self.next_read += 1;
        self.reads.insert(
            rid,
            PendingRead {
                client,
                block,
                count,
                peer: self.cfg.node,
                tried: BTreeSet::new(),
            },
        );
        self.forward_read(rid);
    }

    fn demote_stale_primary(&mut self) {
        self.role = Role::Secondary;
        self.md.primary = false;
        self.persist();
        self.end_suspension(IoError::NotPrimary);
        self.fail_queued_client(IoError::NotPrimary);
        self.stop_forwarding(IoError::NotPrimary);
        self.broadcast_role();
        self.rehandshake_all();
    }

    /// Tells secondaries how far every write reached all its targets.
    /// A resync from a source of rank (`last_seq`, `tie`) ended: this node holds the
    /// source's blocks wherever the two differed, so it ranks at least as the
    /// source does. With the tie-break too: a copy that took a lower id's blocks
    /// must not lose them to a third copy that the lower id itself would outrank
    /// (else a node taking from each of two differing copies in turn flips for ever).
    fn adopt_rank(&mut self, last_seq: u64, tie: NodeId) {
        if last_seq > self.last_seq {
            self.last_seq = last_seq;
            self.tie = tie;
        } else if last_seq == self.last_seq {
            self.tie = self.tie.min(tie);
        }
    }

    fn send_peer_ack(&mut self) {
        if self.orderer.is_some() {
            // A forwarder issues no writes of its own.
            return;
        }
        let acked = self
            .writes
            .keys()
            .next()
            .map(|s| s - 1)
            .unwrap_or(self.next_seq - 1);
        if acked > self.peer_acked {
            self.peer_acked = acked;
            let ids: Vec<NodeId> = self
                .peers
                .values()
                .filter(|p| p.live() && p.diskful)
                .map(|p| p.id)
                .collect();
            for id in ids {
                self.send(id, Msg::PeerAck { seq: acked });
            }
        }
    }

    fn broadcast_role(&mut self) {
        self.send_connected(&Msg::RoleChanged { role: self.role });
    }

    /// Peers whose connection is up (handshake done or not).
    fn connected_peers(&self) -> Vec<NodeId> {
        self.peers
            .values()
            .filter(|p| p.connected())
            .map(|p| p.id)
            .collect()
    }

    /// Sends `msg` to every connected peer.
    fn send_connected(&mut self, msg: &Msg) {
        for id in self.connected_peers() {
            self.send(id, msg.clone());
        }
    }

    // ---- connections ----

    fn hello(&self, peer: NodeId, round: u32) -> Hello {
        let discard = self.peers.get(&peer).is_some_and(|p| p.discard_my_data);
        Hello {
            node: self.cfg.node,
            role: self.role,
            disk: self.md.disk,
            size_blocks: self.cfg.size_blocks,
            current: self.md.current,
            history: self.md.history.clone(),
            bitmap_uuids: self
                .md
                .bitmap_uuids
                .iter()
                .filter(|(_, u)| **u != 0)
                .map(|(n, u)| (*n, *u))
                .collect(),
            dirty_blocks: self.md.bitmaps.get(&peer).map(|b| b.count()).unwrap_or(0),
            discard_my_data: discard,
            crashed_primary: self.crashed_primary,
            // Only a primary with a disk keeps secondaries in sync and resyncs them;
            // under a diskless primary they resync among themselves.
            // (A second primary counts as a secondary here: see `decide`.)
            primary_present: (self.role != Role::Primary || self.orderer.is_some())
                && self.peers.values().any(|p| {
                    p.id != peer
                        && p.connected()
                        && p.role == Role::Primary
                        && p.their_hello
                            .as_ref()
                            .map_or(p.diskful, |h| h.disk != Disk::Diskless)
                }),
            known_current: self.known_current,
            known_parent: self
                .md
                .heard
                .filter(|(k, _)| *k == self.known_current)
                .map_or(0, |(_, p)| p),
            round,
            last_seq: self.last_seq,
            tie: self.tie,
            unsettled: self.md.unsettled,
            settled: self.line_settled(),
            parent: self.md.parent,
        }
    }

    fn start_handshake(&mut self, id: NodeId, round: u32) {
        let was_target = self
            .peers
            .get(&id)
            .is_some_and(|p| p.repl == Repl::SyncTarget);
        let reverted = was_target && self.undo_target(id);
        let h = self.hello(id, round);
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        p.round = round;
        p.waiting_turn = false;
        p.conn = ConnState::Handshake;
        p.repl = Repl::Off;
        p.my_hello = Some(h.clone());
        p.bitmap_in = None;
        p.bitmap_sent = false;
        p.decision = None;
        if p.their_hello.as_ref().is_some_and(|t| t.round != round) {
            p.their_hello = None;
        }
        p.source = None;
        self.send(id, Msg::Hello(h));
        self.try_decide(id);
        if reverted {
            self.rehandshake_others(id);
        }
        if was_target {
            self.target_ended();
        }
    }

    /// A resync from `from` ended before it wrote a block: the data is what it was
    /// before, and so is the disk state (the round was decided on a Hello the source
    /// no longer stands by, e.g. it became a resync target itself meanwhile).
    fn undo_target(&mut self, from: NodeId) -> bool {
        let round = self.peers.get(&from).map(|p| p.round);
        let Some(u) = self.target_undo.take() else {
            return false;
        };
        if u.from != from || Some(u.round) != round || self.md.disk != Disk::Inconsistent {
            return false;
        }
        self.md.disk = u.disk;
        self.md.resync_left = u.resync_left;
        self.md.resync_from = u.resync_from;
        if self.known_current == u.set_known {
            self.known_current = u.known_current;
            self.md.newest_seen = u.newest_seen;
        }
        self.persist();
        true
    }

    /// Starts a new round with every connected peer but `except`: what this node
    /// announced to them no longer holds.
    fn rehandshake_others(&mut self, except: NodeId) {
        let ids: Vec<NodeId> = self
            .peers
            .values()
            .filter(|p| p.id != except && p.connected())
            .map(|p| p.id)
            .collect();
        for id in ids {
            self.new_round(id);
        }
    }

    fn peer_connected(&mut self, id: NodeId) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        if matches!(p.conn, ConnState::StandAlone(_)) {
            self.out.push(Action::Disconnect { peer: id });
            return;
        }
        p.their_hello = None;
        p.left_cleanly = false;
        let round = p.round.wrapping_add(1);
        self.start_handshake(id, round);
        self.update_quorum();
    }

    /// Start a new handshake round with every live secondary peer: the presence of a
    /// primary changed, and with it whether secondaries resync among themselves.
    fn rehandshake_secondaries(&mut self) {
        let ids: Vec<NodeId> = self
            .peers
            .values()
            .filter(|p| p.connected() && p.role == Role::Secondary)
            .map(|p| p.id)
            .collect();
        for id in ids {
            self.new_round(id);
        }
    }

    /// Our generation changed: handshakes in flight were decided on Hellos that no
    /// longer hold, so they start over.
    fn restart_pending_handshakes(&mut self) {
        let ids: Vec<NodeId> = self
            .peers
            .values()
            .filter(|p| p.conn == ConnState::Handshake)
            .map(|p| p.id)
            .collect();
        for id in ids {
            self.new_round(id);
        }
    }

    /// Starts the next handshake round with `id`.
    fn new_round(&mut self, id: NodeId) {
        let round = self
            .peers
            .get(&id)
            .map(|p| p.round.wrapping_add(1))
            .unwrap_or(1);
        self.start_handshake(id, round);
    }

    fn rehandshake_all(&mut self) {
        for id in self.connected_peers() {
            self.new_round(id);
        }
    }

    fn peer_disconnected(&mut self, id: NodeId) {
        let was = self.peers.get(&id).map(|p| p.connected()).unwrap_or(false);
        if was {
            self.peer_lost(id);
        }
        if let Some(p) = self.peers.get_mut(&id)
            && !matches!(p.conn, ConnState::StandAlone(_))
        {
            p.conn = ConnState::Connecting;
        }
    }

    /// Everything that follows from losing the connection to `id`.
    fn peer_lost(&mut self, id: NodeId) {
        self.resize_peer_lost(id);
        let was_target = self
            .peers
            .get(&id)
            .is_some_and(|p| p.repl == Repl::SyncTarget);
        if was_target && self.undo_target(id) {
            self.rehandshake_others(id);
        }
        let (was_primary, diskful) = match self.peers.get_mut(&id) {
            Some(p) => {
                let r = (p.role == Role::Primary, p.diskful);
                p.waiting_turn = false;
                p.conn = ConnState::Connecting;
                p.repl = Repl::Off;
                p.role = Role::Secondary;
                p.disk = Disk::Diskless;
                p.their_hello = None;
                p.my_hello = None;
                p.source = None;
                p.decision = None;
                p.verify.running = false;
                p.verify.inflight.clear();
                r
            }
            None => return,
        };
        if self.reservation.is_some_and(|(n, _)| n == id) {
            self.reservation = None;
        }
        if let Some(pr) = &mut self.promotion
            && pr.waiting.remove(&id)
        {
            // A peer that vanished cannot grant; the promotion fails rather than
            // succeeding without it.
            self.promotion = None;
            self.out.push(Action::PromoteResult(Err(format!(
                "lost connection to node {id} during promotion"
            ))));
        }
        self.uuid_waiting.remove(&id);
        // Reads it was serving go to another UpToDate peer.
        let retry: Vec<u64> = self
            .reads
            .iter()
            .filter(|(_, r)| r.peer == id)
            .map(|(rid, _)| *rid)
            .collect();
        for rid in retry {
            self.forward_read(rid);
        }
        // Writes it did not acknowledge are out of sync for it, whatever our role now
        // (a primary demoted with writes outstanding still tracks them).
        let mut marks = Vec::new();
        for w in self.writes.values_mut() {
            if w.waiting.remove(&id) {
                marks.push((w.block, w.count));
            }
        }
        let mut affected = !marks.is_empty();
        for &(b, c) in &marks {
            self.mark(id, b, c);
        }
        if affected {
            // Their extents may have left the activity log already (after a local
            // flush), so these bits must survive a crash on their own.
            self.persist();
        }
        for f in &mut self.flushes {
            affected |= f.waiting.remove(&id);
        }
        if self.orders_writes() && diskful {
            #[cfg(not(feature = "bug-skip-uuid-rotation"))]
            {
                self.need_rotation = true;
            }
            // Writes or flushes it never confirmed are about to complete without it:
            // that starts a new generation first, which the remaining peers (and
            // quorum) must acknowledge before those complete. Not when this loss took
            // quorum away: those writes fail (or are held), the generation would be
            // undone at once, and a peer that adopted it meanwhile would later look
            // like a split brain. The next write with quorum starts it.
            self.update_quorum();
            if affected && self.need_rotation && self.quorum {
                self.rotate();
            }
            self.broadcast_peer_lost(id, &marks);
        } else if diskful && affected && self.role == Role::Secondary && self.two_primaries() {
            // Demoted next to another primary with writes outstanding (a handover):
            // the primary that took over holds them unconfirmed in its window and
            // must know that this node may lack them.
            self.broadcast_peer_lost(id, &marks);
        }
        // (A forwarder that lost its orderer steps down first: see below.)
        self.orderer_disconnected(id);
        if was_primary && self.role == Role::Secondary {
            self.primary_gone();
        }
        if was_target {
            self.target_ended();
        }
        self.update_quorum();
        self.check_writes();
        self.check_flushes();
    }

    /// The primary left (lost or demoted): its writes not confirmed everywhere may be
    /// missing on any other node, and secondaries now reconcile among themselves.
    fn primary_gone(&mut self) {
        self.window_missing_anywhere();
        self.rehandshake_secondaries();
    }

    /// The writes in the window (received, not confirmed everywhere by their primary,
    /// which left) may be missing on any other node: marked for all, persisted.
    fn window_missing_anywhere(&mut self) {
        let entries: Vec<(u64, u64)> = self.window.values().copied().collect();
        let others: Vec<NodeId> = self.md.bitmaps.keys().copied().collect();
        for (b, c) in entries {
            for o in &others {
                self.mark(*o, b, c);
            }
        }
        self.clear_window();
        self.persist();
    }

    /// Tells every connected peer that `id` was lost: writes they hold unconfirmed
    /// may be missing there, and so may `ranges`, the writes `id` never confirmed to
    /// this node. A peer may hold those blocks without holding the writes: a resync
    /// target copies them from this node while `id` still counts as in sync.
    fn broadcast_peer_lost(&mut self, id: NodeId, ranges: &[(u64, u64)]) {
        // At least one message, also when there are no ranges (the loss itself).
        let empty: &[(u64, u64)] = &[];
        let chunks = ranges.chunks(wire::MAX_LOST_RANGES);
        for chunk in chunks.chain(ranges.is_empty().then_some(empty)) {
            self.send_connected(&Msg::PeerLost {
                node: id,
                ranges: chunk.to_vec(),
            });
        }
    }

    fn clear_window(&mut self) {
        let seqs: Vec<u64> = self.window.keys().copied().collect();
        for s in seqs {
            self.unwindow(s);
        }
    }

    fn unwindow(&mut self, seq: u64) {
        if let Some((b, c)) = self.window.remove(&seq)
            && self.pinned.remove(&seq)
        {
            self.unpin_extents(b, c);
        }
    }

    fn mark(&mut self, peer: NodeId, block: u64, count: u64) {
        // Without a disk there is no data of ours for a peer to differ from: the
        // diskful nodes mark what their peers miss.
        if self.diskless() {
            return;
        }
        if let Some(bm) = self.md.bitmaps.get_mut(&peer) {
            bm.set_range(block, count);
        }
    }

    fn try_decide(&mut self, id: NodeId) {
        let policy = self.cfg.split_brain;
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        if p.decision.is_some() {
            return;
        }
        let (Some(mine), Some(theirs)) = (p.my_hello.clone(), p.their_hello.clone()) else {
            return;
        };
        if mine.round != theirs.round {
            return;
        }
        let d = decide(&mine, &theirs, policy);
        // A peer with data that holds its generation settled tells this node it is.
        // (After the decision, which took both Hellos as they were.)
        if !theirs.unsettled && theirs.disk >= Disk::Outdated {
            self.learn_settled(theirs.current);
        }
        if d == Decision::PrimaryWouldBeTarget && mine.role == Role::Primary {
            let mut as_secondary = mine.clone();
            as_secondary.role = Role::Secondary;
            let target = matches!(
                decide(&as_secondary, &theirs, policy),
                Decision::BitmapTarget | Decision::FullTarget
            );
            if target {
                // This primary holds older data than a peer: the peer's side went on
                // with quorum while this one had none (its I/O has been failing since).
                // It steps down, like DRBD's force-secondary, and takes the newer data.
                self.demote_stale_primary();
                return;
            }
        }
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        p.decision = Some(d);
        p.role = theirs.role;
        p.disk = theirs.disk;
        p.current = theirs.current;
        p.discard_my_data = false;
        let round = p.round;
        match d {
            Decision::SplitBrain
            | Decision::Unrelated
            | Decision::PrimaryWouldBeTarget
            | Decision::NotYet => {
                let reason = match d {
                    Decision::SplitBrain => format!(
                        "split brain with node {id}: both wrote since they parted; on the node whose changes to \
                         drop run `connect --discard-my-data`"
                    ),
                    Decision::Unrelated => format!(
                        "unrelated data on node {id}: no common generation; on the node to overwrite run \
                         `connect --discard-my-data`"
                    ),
                    _ => format!(
                        "node {id} would need to resync a primary; demote the primary or run \
                         `connect --discard-my-data` on the other node"
                    ),
                };
                // A stale primary on the other side steps down by itself (see above),
                // and an unsettled generation settles or is undone: those cases only
                // drop this connection and try again later.
                p.conn = if matches!(d, Decision::PrimaryWouldBeTarget | Decision::NotYet) {
                    ConnState::Connecting
                } else {
                    ConnState::StandAlone(reason)
                };
                p.repl = Repl::Off;
                self.out.push(Action::Disconnect { peer: id });
                self.update_quorum();
            }
            Decision::NoSync | Decision::Deferred => {
                p.conn = ConnState::Connected;
                p.repl = if d == Decision::Deferred {
                    Repl::Deferred
                } else {
                    Repl::Established
                };
                self.connected_in_sync(id);
            }
            Decision::BitmapSource
            | Decision::BitmapTarget
            | Decision::FullSource
            | Decision::FullTarget => {
                p.conn = ConnState::Connected;
                let left = self.md.resync_left.clone();
                let same_source = self.md.resync_from == Some(id);
                if let Some(bm) = self.md.bitmaps.get_mut(&id) {
                    if matches!(d, Decision::FullSource | Decision::FullTarget) {
                        bm.set_all();
                    } else if matches!(d, Decision::BitmapTarget) && !same_source {
                        // An unfinished resync from another source: all of its blocks
                        // again from this one. (The same source resumes from its bits.)
                        bm.or(&left);
                    }
                }
                let source = matches!(d, Decision::BitmapSource | Decision::FullSource);
                if source && self.md.disk == Disk::Consistent {
                    // Chosen over a peer with consistent data (the decision lets a
                    // Consistent node serve no Inconsistent one): this copy is the
                    // reference now.
                    self.vouch_restored(Some(id));
                }
                self.send_bitmap(id, round);
            }
        }
        if self.peers.get(&id).is_some_and(|p| p.role == Role::Primary) {
            self.rehandshake_secondaries();
        }
        self.update_quorum();
        self.vouch_if_no_survivor();
    }

    /// A Consistent node connected to every other diskful node, none of which holds
    /// data that could confirm or outrank its own (all Inconsistent, or detached:
    /// there is no survivor to wait for), holds the best copy there is: UpToDate.
    fn vouch_if_no_survivor(&mut self) {
        if self.md.disk != Disk::Consistent {
            return;
        }
        let current = self.md.current;
        let mut diskful = self.peers.values().filter(|p| p.diskful).peekable();
        let alone = diskful.peek().is_some()
            && diskful.all(|p| {
                // (Not one told of a generation newer than ours: it may hold its writes.)
                let known = p.their_hello.as_ref().map_or(0, |h| h.known_current);
                let not_newer = known == 0 || known == current || self.md.history.contains(&known);
                let no_data = matches!(p.disk, Disk::Inconsistent | Disk::Diskless);
                p.live() && p.decision.is_some() && no_data && not_newer
            });
        if alone {
            self.vouch_restored(None);
        }
    }

    /// A Consistent node becomes UpToDate without a survivor's word (see
    /// `decide::unvouched_source`). Peers it stood aside for learn it in a new handshake;
    /// `starting`, whose resync from here is starting, keeps its own.
    fn vouch_restored(&mut self, starting: Option<NodeId>) {
        self.md.disk = Disk::UpToDate;
        self.persist();
        let waiting: Vec<NodeId> = self
            .peers
            .values()
            .filter(|p| Some(p.id) != starting && p.connected() && p.repl == Repl::Established)
            .map(|p| p.id)
            .collect();
        for peer in waiting {
            self.new_round(peer);
        }
    }

    fn connected_in_sync(&mut self, id: NodeId) {
        // Equal data: the bitmap of this pair can start over.
        if self
            .peers
            .get(&id)
            .is_some_and(|p| p.repl == Repl::Established && p.diskful)
        {
            let clear = self.md.bitmaps.get(&id).is_some_and(|b| b.is_empty());
            if clear && self.md.bitmap_uuids.remove(&id).is_some() {
                self.persist();
            }
        }
        if let Some(p) = self.peers.get(&id)
            && p.role == Role::Primary
            && p.current == self.md.current
        {
            self.known_current = p.current;
        }
        // Outdated (e.g. after a clean stop while others stayed up) or Consistent
        // (after an unclean one) but equal to an UpToDate peer: same generation, no
        // block different, no resync unfinished.
        let equal_to_up = self.peers.get(&id).is_some_and(|p| {
            p.repl == Repl::Established
                && p.diskful
                && p.disk == Disk::UpToDate
                && p.current == self.md.current
        }) && self.md.bitmaps.get(&id).is_none_or(|b| b.is_empty());
        // Every diskful node stopped cleanly at once (a cluster shut down): each marked
        // itself Outdated on seeing the others up. With all of them back, connected,
        // Outdated in the same generation, no block different and none having seen a
        // newer generation, no node can hold newer data: all are UpToDate again.
        let all_outdated_alike = self.known_current == self.md.current
            && self.peers.values().any(|p| p.diskful)
            && self.peers.values().filter(|p| p.diskful).all(|p| {
                p.repl == Repl::Established
                    && p.disk == Disk::Outdated
                    && p.current == self.md.current
                    && p.their_hello
                        .as_ref()
                        .is_some_and(|h| h.known_current == self.md.current && h.dirty_blocks == 0)
                    && self.md.bitmaps.get(&p.id).is_none_or(|b| b.is_empty())
            });
        if matches!(self.md.disk, Disk::Outdated | Disk::Consistent)
            && self.md.resync_left.is_empty()
            && (equal_to_up || all_outdated_alike)
        {
            self.md.disk = Disk::UpToDate;
            self.persist();
            // Every peer learns the new disk state in a handshake.
            self.rehandshake_all();
        }
    }

    fn send_bitmap(&mut self, id: NodeId, round: u32) {
        let words: Vec<u64> = self
            .md
            .bitmaps
            .get(&id)
            .map(|b| b.words().to_vec())
            .unwrap_or_default();
        let chunks: Vec<&[u64]> = if words.is_empty() {
            vec![&[]]
        } else {
            words.chunks(BITMAP_CHUNK).collect()
        };
        let n = chunks.len();
        for (i, c) in chunks.into_iter().enumerate() {
            let msg = Msg::Bitmap {
                round,
                word_offset: (i * BITMAP_CHUNK) as u64,
                words: c.to_vec(),
                last: i + 1 == n,
            };
            self.send(id, msg);
        }
        if let Some(p) = self.peers.get_mut(&id) {
            p.bitmap_sent = true;
        }
        self.try_start_resync(id);
    }

    fn try_start_resync(&mut self, id: NodeId) {
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        let Some(d) = p.decision else { return };
        if !p.bitmap_sent || !p.bitmap_in.as_ref().is_some_and(|(_, last)| *last) {
            return;
        }
        let source = matches!(d, Decision::BitmapSource | Decision::FullSource);
        let busy = !source
            && self
                .peers
                .values()
                .any(|o| o.id != id && o.repl == Repl::SyncTarget);
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        if busy {
            // One source at a time: this one waits until the running resync ends.
            p.waiting_turn = true;
            return;
        }
        let Some((incoming, _)) = p.bitmap_in.take() else {
            return;
        };
        if let Some(bm) = self.md.bitmaps.get_mut(&id) {
            bm.or(&incoming);
        }
        let empty = self.md.bitmaps.get(&id).is_none_or(|b| b.is_empty());
        if empty {
            if source {
                // Nothing to copy: the target still adopts our generations.
                self.send_done(id);
                self.md.bitmap_uuids.remove(&id);
                let current = self.md.current;
                if let Some(p) = self.peers.get_mut(&id) {
                    p.repl = Repl::Established;
                    p.current = current;
                    p.disk = Disk::UpToDate;
                }
                self.persist();
                self.check_writes();
                self.check_flushes();
                return;
            } else if let Some(p) = self.peers.get_mut(&id) {
                // Waits for the source's ResyncDone to adopt its generations.
                p.repl = Repl::SyncTarget;
            }
            self.persist();
            return;
        }
        let Some(p) = self.peers.get_mut(&id) else {
            return;
        };
        if source {
            p.repl = Repl::SyncSource;
            p.source = Some(SourceState {
                cursor: 0,
                inflight: BTreeSet::new(),
                reading: BTreeMap::new(),
                held: BTreeMap::new(),
            });
        } else {
            p.repl = Repl::SyncTarget;
            let round = p.round;
            let undo = (self.md.disk >= Disk::Outdated).then(|| TargetUndo {
                from: id,
                round,
                disk: self.md.disk,
                resync_left: self.md.resync_left.clone(),
                resync_from: self.md.resync_from,
                known_current: self.known_current,
                newest_seen: self.md.newest_seen,
                set_known: self.known_current,
            });
            let Some(p) = self.peers.get(&id) else {
                return;
            };
            // From now on we hold blocks of the source's generation: no older source
            // may overwrite them, even if this resync does not finish.
            // Only forward: a newer generation learned from a NewUuid stays.
            let (source_current, source_history, source_parent) = p
                .their_hello
                .as_ref()
                .map(|h| (h.current, h.history.clone(), h.parent))
                .unwrap_or((p.current, Vec::new(), 0));
            let known = self.known_current;
            let forward = known == 0 || known == self.md.current || source_history.contains(&known);
            if source_current != 0 && forward {
                self.known_current = source_current;
                self.md.newest_seen = source_current;
                // Should the resync not finish, this node only heard of it, and its
                // parent lets a settled sibling prove it undone (`known_parent`).
                if source_parent != 0 {
                    self.md.heard = Some((source_current, source_parent));
                }
            }
            self.target_undo = undo.map(|u| TargetUndo {
                set_known: self.known_current,
                ..u
            });
            // Inconsistent until done, durably, before the first block arrives; what is
            // still to come is remembered whichever peer finishes it.
            if let Some(u) = self.md.bitmaps.get(&id).cloned() {
                self.md.resync_left.or(&u);
            }
            self.md.resync_from = Some(id);
            self.md.disk = Disk::Inconsistent;
            // Our data is about to change: resyncs we serve start over, also those
            // decided but still exchanging bitmaps (else they would start from an
            // Inconsistent disk, on the Hello that said it was not).
            let serving: Vec<NodeId> = self
                .peers
                .values()
                .filter(|p| {
                    p.id != id
                        && (p.repl == Repl::SyncSource
                            || (p.repl == Repl::Off
                                && matches!(
                                    p.decision,
                                    Some(Decision::BitmapSource | Decision::FullSource)
                                )))
                })
                .map(|p| p.id)
                .collect();
            for s in serving {
                self.new_round(s);
            }
        }
        self.persist();
    }

    // ---- messages ----

    fn message(&mut self, from: NodeId, msg: Msg) {
        if !self.peers.get(&from).is_some_and(|p| p.connected()) {
            return;
        }
        match msg {
            Msg::Hello(h) => {
                if h.node != from {
                    return;
                }
                self.max_seq = self.max_seq.max(h.last_seq);
                let Some(p) = self.peers.get_mut(&from) else {
                    return;
                };
                p.role = h.role;
                let (theirs, mine, decided) = (h.round, p.round, p.decision.is_some());
                if theirs < mine || (theirs == mine && decided) {
                    return; // stale, or a duplicate of a round already decided
                }
                p.their_hello = Some(h);
                if theirs > mine {
                    // The peer started a new round: join it.
                    self.start_handshake(from, theirs);
                } else {
                    self.try_decide(from);
                }
            }
            Msg::Bitmap {
                round,
                word_offset,
                words,
                last,
            } => {
                let blocks = self.cfg.size_blocks;
                let Some(p) = self.peers.get_mut(&from) else {
                    return;
                };
                if round != p.round {
                    return;
                }
                let entry = p
                    .bitmap_in
                    .get_or_insert_with(|| (Bitmap::new(blocks), false));
                entry.0.merge_words(word_offset as usize, &words);
                entry.1 = last;
                self.try_start_resync(from);
            }
            Msg::Write {
                seq,
                block,
                count,
                fua,
                targets,
                data,
            } => {
                self.last_seq = self.last_seq.max(seq);
                self.max_seq = self.max_seq.max(seq);
                // In the window from arrival on: if the primary goes while this write
                // still waits in the queue, it is marked for the other nodes too.
                self.window.insert(seq, (block, u64::from(count)));
                self.note_fresh(block, u64::from(count), seq);
                // A resync target that takes a primary's writes holds data of the
                // source's generation from now on, as with a resync block.
                self.target_undo = None;
                self.queue.push_back(Work::Peer {
                    from,
                    seq,
                    block,
                    count,
                    data,
                    fua,
                    targets,
                });
            }
            Msg::Flush { seq } => self.queue.push_back(Work::PeerFlush { from, seq }),
            Msg::WriteAck { seq, ok } => {
                let up = self
                    .peers
                    .get(&from)
                    .is_some_and(|p| p.disk == Disk::UpToDate);
                if let Some(w) = self.writes.get_mut(&seq)
                    && w.waiting.remove(&from)
                {
                    if ok && up {
                        w.peer_ok = true;
                    } else if !ok {
                        let (b, c) = (w.block, w.count);
                        self.mark(from, b, c);
                        self.persist();
                    }
                }
                self.check_writes();
            }
            Msg::FlushAck { seq: _, ok } => {
                let up = self
                    .peers
                    .get(&from)
                    .is_some_and(|p| p.disk == Disk::UpToDate);
                // Flush acks arrive in order; the oldest pending flush waiting on this
                // peer is the one acknowledged.
                if let Some(f) = self.flushes.iter_mut().find(|f| f.waiting.contains(&from)) {
                    f.waiting.remove(&from);
                    f.peer_ok |= ok && up;
                }
                self.check_flushes();
            }
            Msg::ReadRequest { id, block, count } => {
                let end = block.checked_add(u64::from(count));
                let servable = self.md.disk == Disk::UpToDate
                    && count > 0
                    && end.is_some_and(|e| e <= self.cfg.size_blocks);
                if servable {
                    let tag = self.tag(DiskOp::PeerRead { from, id });
                    self.out.push(Action::DiskRead { tag, block, count });
                } else {
                    self.send(
                        from,
                        Msg::ReadReply {
                            id,
                            ok: false,
                            data: Vec::new(),
                        },
                    );
                }
            }
            Msg::ReadReply { id, ok, data } => {
                let expected = self
                    .reads
                    .get(&id)
                    .filter(|r| r.peer == from)
                    .map(|r| r.client);
                let Some(client) = expected else {
                    return;
                };
                if ok && self.io_suspended() {
                    // Read again once the suspension ends.
                    if let Some(r) = self.reads.remove(&id) {
                        self.hold(Held::Read {
                            id: r.client,
                            block: r.block,
                            count: r.count,
                        });
                    }
                } else if ok {
                    self.reads.remove(&id);
                    let result = match self.client_ok() {
                        Err(e) => Err(e),
                        Ok(()) => Ok(Some(data)),
                    };
                    self.out.push(Action::Complete { id: client, result });
                } else {
                    self.forward_read(id);
                }
            }
            Msg::PeerState { disk, current } => {
                // Nodes with a disk only take note of a peer's detach; they learn
                // everything else in handshakes.
                let applies = self.diskless() || disk == Disk::Diskless;
                if applies && let Some(p) = self.peers.get_mut(&from) {
                    p.disk = disk;
                    p.current = current;
                    if let Some(h) = p.their_hello.as_mut() {
                        h.disk = disk;
                        h.current = current;
                    }
                }
            }
            Msg::PeerAck { seq } => {
                let done: Vec<u64> = self.window.range(..=seq).map(|(s, _)| *s).collect();
                for s in done {
                    self.unwindow(s);
                }
            }
            Msg::PeerLost { node, ranges } => {
                let entries: Vec<(u64, u64)> = self.window.values().copied().collect();
                // (Bits past the end of the volume are ignored by the bitmap.)
                for (b, c) in entries.into_iter().chain(ranges) {
                    self.mark(node, b, c);
                }
                self.persist();
            }
            Msg::NewUuid {
                current,
                previous,
                lost,
            } => {
                self.known_current = current;
                self.md.newest_seen = current;
                // A node the primary names as missing the new generation's writes only
                // notes that it exists.
                let missing = lost & mask(self.cfg.node) != 0;
                if missing {
                    self.forwarder_left_behind(from);
                    self.md.heard = Some((current, previous));
                }
                let mut adopted = false;
                if !missing && self.md.disk >= Disk::Outdated && self.md.current == previous {
                    self.push_history(previous);
                    self.md.current = current;
                    self.md.parent = previous;
                    self.md.unsettled = true;
                    adopted = true;
                    // A rotation of this node's own still unsettled (it was primary)
                    // must not be undone now: its generation is the sender's.
                    self.rotation_undo = None;
                    self.uuid_waiting.clear();
                    for n in self
                        .cfg
                        .nodes
                        .iter()
                        .filter(|n| n.diskful && n.id != self.cfg.node)
                    {
                        if lost & mask(n.id) != 0
                            && self.md.bitmap_uuids.get(&n.id).is_none_or(|u| *u == 0)
                        {
                            self.md.bitmap_uuids.insert(n.id, previous);
                        }
                    }
                }
                // A resync target of the sender takes its writes under the new
                // generation while the sender's ResyncDone, sent before the rotation,
                // names the previous one: the new one follows when the resync ends (the
                // sender counts this node as holding it).
                if !missing && !adopted && self.md.resync_from == Some(from) {
                    match &mut self.target_next {
                        Some((src, _, chain, _))
                            if *src == from && chain.last() == Some(&previous) =>
                        {
                            chain.push(current);
                        }
                        _ => self.target_next = Some((from, previous, vec![current], lost)),
                    }
                }
                // Nodes in sync with the sender take the new generation with it (it
                // is their data from now on too): a view of theirs left at the old one
                // would hide, should this node write next, that they missed a write.
                for p in self.peers.values_mut() {
                    if p.diskful
                        && lost & mask(p.id) == 0
                        && (p.id == from || p.current == previous)
                    {
                        p.current = current;
                    }
                }
                self.persist();
                self.send(from, Msg::NewUuidAck { current });
                if adopted {
                    self.restart_pending_handshakes();
                }
            }
            Msg::UuidSettled { current } => self.learn_settled(current),
            Msg::UuidUndone { current } => {
                // The sender went back to `current`: a generation this node holds
                // unsettled that descends from it is one the sender undid. The next
                // handshake with the sender settles which way the data go (`decide`).
                if self.md.unsettled
                    && self.md.current != current
                    && self.md.history.contains(&current)
                {
                    self.new_round(from);
                }
            }
            Msg::NewUuidAck { current } => {
                // (Every peer acknowledges, also one named as missing the writes: only
                // the peers in sync took the generation, see `rotate`.)
                if current == self.md.current {
                    self.uuid_waiting.remove(&from);
                }
                // Writes and flushes both wait for the new generation's acks.
                self.check_writes();
                self.check_flushes();
            }
            Msg::RoleChanged { role } => {
                let was = self.peers.get(&from).map(|p| p.role);
                if let Some(p) = self.peers.get_mut(&from) {
                    p.role = role;
                }
                if role == Role::Primary && self.reservation.is_some_and(|(n, _)| n == from) {
                    self.reservation = None;
                }
                let primary_stays =
                    self.role == Role::Primary || self.primary_peers().iter().any(|p| *p != from);
                if self.two_primaries() && primary_stays {
                    // A second primary came or went (allow-two-primaries): a primary
                    // was there before and stays, so nothing changes for the
                    // secondaries. A demoted orderer's writes are confirmed by its
                    // own PeerAcks still.
                    if was == Some(Role::Primary) && role == Role::Secondary {
                        self.orderer_demoted(from);
                    }
                    return;
                }
                if was == Some(Role::Primary) && role == Role::Secondary {
                    self.primary_gone();
                }
                if was != Some(role) {
                    self.rehandshake_secondaries();
                }
            }
            Msg::PromoteRequest {
                id,
                current,
                history,
                primaries,
            } => {
                let reply = self.grant(from, current, &history, primaries);
                let (granted, reason) = match reply {
                    Ok(()) => {
                        self.reservation = Some((from, self.now + self.cfg.grant_lease_ms));
                        (true, String::new())
                    }
                    Err(r) => (false, r),
                };
                self.send(
                    from,
                    Msg::PromoteReply {
                        id,
                        granted,
                        reason,
                    },
                );
            }
            Msg::PromoteReply {
                id,
                granted,
                reason,
            } => {
                let Some(p) = &mut self.promotion else { return };
                if p.id != id {
                    return;
                }
                if !granted {
                    self.promotion = None;
                    self.out.push(Action::PromoteResult(Err(format!(
                        "node {from} refused: {reason}"
                    ))));
                    return;
                }
                p.waiting.remove(&from);
                self.check_promotion();
            }
            Msg::ResyncData { block, seq, data } => {
                if let Some(round) = self.target_round(from) {
                    self.queue.push_back(Work::Resync {
                        from,
                        round,
                        block,
                        seq,
                        data,
                    });
                }
            }
            Msg::ResyncDigest { block, seq, digest } => {
                if let Some(round) = self.target_round(from) {
                    self.queue.push_back(Work::ResyncCheck {
                        from,
                        round,
                        block,
                        seq,
                        digest,
                    });
                }
            }
            Msg::ResyncNeedData { block } => {
                let held = self
                    .peers
                    .get_mut(&from)
                    .filter(|p| p.repl == Repl::SyncSource)
                    .and_then(|p| p.source.as_mut())
                    .and_then(|s| s.held.remove(&block));
                match held {
                    Some((seq, data, false)) => {
                        self.send(from, Msg::ResyncData { block, seq, data });
                    }
                    Some((_, _, true)) => {
                        // Written here since it was read: the write went to the
                        // target after the digest, so the data read then must not
                        // follow it. Read the block again.
                        if let Some(s) = self.peers.get_mut(&from).and_then(|p| p.source.as_mut()) {
                            s.inflight.remove(&block);
                            s.cursor = s.cursor.min(block);
                        }
                        self.resync_step(from);
                    }
                    None => {}
                }
            }
            Msg::ResyncAck { block, ok } => {
                if let Some(src) = self.peers.get_mut(&from).and_then(|p| p.source.as_mut()) {
                    src.inflight.remove(&block);
                    src.held.remove(&block);
                    if ok && let Some(bm) = self.md.bitmaps.get_mut(&from) {
                        bm.clear(block);
                    }
                }
                self.resync_step(from);
            }
            Msg::ResyncDone {
                current,
                history,
                last_seq,
                tie,
            } => {
                if let Some(round) = self.target_round(from) {
                    self.queue.push_back(Work::ResyncDone {
                        from,
                        round,
                        current,
                        history,
                        last_seq,
                        tie,
                    });
                }
            }
            Msg::OtherBitmap {
                node,
                word_offset,
                words,
            } => {
                if node != self.cfg.node
                    && self
                        .peers
                        .get(&from)
                        .is_some_and(|p| p.repl == Repl::SyncTarget)
                    && let Some(bm) = self.md.bitmaps.get_mut(&node)
                {
                    bm.merge_words(word_offset as usize, &words);
                }
            }
            Msg::InSync { mask: m } => {
                if m & mask(self.cfg.node) == 0 || self.md.disk != Disk::UpToDate {
                    return;
                }
                let mut changed = false;
                for (n, bm) in self.md.bitmaps.iter_mut() {
                    if m & mask(*n) != 0 && !bm.is_empty() {
                        bm.clear_all();
                        changed = true;
                    }
                }
                for n in self.cfg.nodes.iter().filter(|n| m & mask(n.id) != 0) {
                    changed |= self.md.bitmap_uuids.remove(&n.id).is_some();
                }
                if changed {
                    self.persist();
                }
            }
            Msg::Leaving => {
                if let Some(p) = self.peers.get_mut(&from) {
                    p.left_cleanly = true;
                }
            }
            Msg::VerifyDigest { block, digest } => {
                if self.md.disk == Disk::UpToDate && block < self.cfg.size_blocks {
                    let tag = self.tag(DiskOp::VerifyCompare {
                        from,
                        block,
                        digest,
                    });
                    self.out.push(Action::DiskRead {
                        tag,
                        block,
                        count: 1,
                    });
                } else {
                    // Without data to compare the block counts as differing.
                    self.send(
                        from,
                        Msg::VerifyResult {
                            block,
                            equal: false,
                        },
                    );
                }
            }
            Msg::VerifyResult { block, equal } => {
                let Some(p) = self.peers.get_mut(&from) else {
                    return;
                };
                if !p.verify.running || !p.verify.inflight.remove(&block) {
                    return;
                }
                p.verify.done += 1;
                if !equal {
                    p.verify.oos += 1;
                    self.mark(from, block, 1);
                    self.persist();
                }
                self.verify_step(from);
            }
            Msg::VerifyDone | Msg::Ping | Msg::Pong => {}
            m @ (Msg::Resize { .. } | Msg::ResizeDone { .. } | Msg::ResizeCommit { .. }) => {
                self.resize_message(from, m)
            }
            m @ (Msg::ForwardWrite { .. } | Msg::ForwardFlush { .. }) => {
                self.remote_request(from, m)
            }
            Msg::ForwardDone { id, result } => self.forward_done(from, id, result),
        }
    }

    /// Whether this node lets `from` become primary.
    fn grant(
        &self,
        from: NodeId,
        current: u64,
        history: &[u64],
        their_primaries: u32,
    ) -> Result<(), String> {
        // Two candidates that see each other must not grant each other.
        if self.promotion.is_some() {
            return Err(format!("node {} is being promoted itself", self.cfg.node));
        }
        let mut primaries: Vec<NodeId> = self
            .primary_peers()
            .into_iter()
            .filter(|p| *p != from)
            .collect();
        if self.role == Role::Primary {
            primaries.insert(0, self.cfg.node);
        }
        if self.orderer.is_some() {
            // A second primary (perhaps taking over from a demoted first one) is no
            // orderer for a newcomer.
            return Err(format!(
                "node {} is the second primary; retry once it orders writes itself",
                self.cfg.node
            ));
        }
        if let Some(first) = primaries.first() {
            if !self.two_primaries() {
                return Err(format!("node {first} is primary"));
            }
            if primaries.len() > 1 {
                return Err(format!(
                    "nodes {first} and {} are primary already; at most two may be",
                    primaries[1]
                ));
            }
            if their_primaries & mask(*first) == 0 {
                // A second primary must reach the first, which orders its writes.
                return Err(format!(
                    "node {first} is primary and node {from} is not connected to it"
                ));
            }
        }
        if let Some((n, until)) = self.reservation
            && n != from
            && until > self.now
        {
            return Err(format!("node {n} is being promoted"));
        }
        if self
            .peers
            .values()
            .any(|p| p.id != from && matches!(p.repl, Repl::SyncSource | Repl::SyncTarget))
        {
            return Err(format!(
                "node {} is resyncing with another node",
                self.cfg.node
            ));
        }
        let newest = if self.md.disk == Disk::UpToDate {
            self.md.current
        } else {
            self.known_current
        };
        if newest != 0 && newest != current && !history.contains(&newest) {
            return Err(format!(
                "data not UpToDate: node {} has seen a newer generation",
                self.cfg.node
            ));
        }
        if self
            .peers
            .get(&from)
            .is_some_and(|p| p.conn != ConnState::Connected)
        {
            return Err("still connecting".into());
        }
        Ok(())
    }

    /// Generation `current` is settled (its primary said so, or a peer holding it
    /// with a disk does).
    fn learn_settled(&mut self, current: u64) {
        if current == 0 {
            return;
        }
        self.settled_seen = current;
        if self.md.unsettled && self.md.current == current {
            self.md.unsettled = false;
            self.persist();
        }
    }

    fn push_history(&mut self, uuid: u64) {
        // The current generation leaves for the history: if settled, it is the newest
        // settled one of this line until a newer one settles.
        if uuid != 0 && uuid == self.md.current && !self.md.unsettled {
            self.md.settled = uuid;
        }
        if uuid != 0 && !self.md.history.contains(&uuid) {
            self.md.history.insert(0, uuid);
            self.md.history.truncate(HISTORY_LEN);
        }
    }

    // ---- client I/O ----

    fn client_ok(&self) -> Result<(), IoError> {
        if self.role != Role::Primary {
            return Err(IoError::NotPrimary);
        }
        if self.orderer_lost().is_some() {
            return Err(IoError::OrdererLost);
        }
        if !self.quorum {
            return Err(IoError::NoQuorum);
        }
        if self.diskless() {
            if self.read_peers().is_empty() {
                return Err(IoError::NoData);
            }
        } else if self.md.disk != Disk::UpToDate {
            return Err(IoError::NoData);
        }
        Ok(())
    }

    fn fail(&mut self, id: u64, e: IoError) {
        self.out.push(Action::Complete { id, result: Err(e) });
    }

    /// Whether a client request for `count` blocks at `block` can be served here.
    fn admit(&self, block: u64, count: u32) -> Result<(), IoError> {
        if !self.waits_for_handshake() {
            self.client_ok()?;
        }
        let end = block.checked_add(u64::from(count));
        if count == 0 || end.is_none_or(|end| end > self.io_blocks) {
            return Err(IoError::OutOfRange);
        }
        Ok(())
    }

    fn client_write(&mut self, id: u64, block: u64, count: u32, data: Bytes, fua: bool) {
        if self.io_suspended() {
            return self.hold_new(Held::Write {
                id,
                block,
                count,
                data,
                fua,
            });
        }
        if let Err(e) = self.admit(block, count) {
            return self.fail(id, e);
        }
        if self.queue.len() >= self.cfg.max_queued {
            return self.fail(id, IoError::Busy);
        }
        self.queue.push_back(Work::Client {
            id,
            block,
            count,
            data,
            fua,
        });
    }

    fn client_read(&mut self, id: u64, block: u64, count: u32) {
        if self.io_suspended() {
            return self.hold_new(Held::Read { id, block, count });
        }
        if let Err(e) = self.admit(block, count) {
            return self.fail(id, e);
        }
        if self.diskless() {
            return self.read_via_peer(id, block, count);
        }
        let tag = self.tag(DiskOp::ClientRead { id, block, count });
        self.out.push(Action::DiskRead { tag, block, count });
    }

    fn client_flush(&mut self, id: u64) {
        if self.io_suspended() {
            return self.hold_new(Held::Flush { id });
        }
        if let Err(e) = self.client_ok() {
            return self.fail(id, e);
        }
        if self.orderer.is_some() {
            return self.forward_flush(id);
        }
        let waiting: BTreeSet<NodeId> = self
            .peers
            .values()
            .filter(|p| p.live() && p.diskful)
            .map(|p| p.id)
            .collect();
        let seq = self.next_seq - 1;
        for p in &waiting {
            self.send(*p, Msg::Flush { seq });
        }
        let diskless = self.diskless();
        if !diskless {
            let mark = self.dirty_stamp;
            let tag = self.tag(DiskOp::ClientFlush { id, mark });
            self.out.push(Action::DiskFlush { tag });
        }
        self.flushes.push(PendingFlush {
            id,
            local_done: diskless,
            local_ok: true,
            waiting,
            peer_ok: false,
        });
        self.check_flushes();
    }

    fn fail_queued_client(&mut self, e: IoError) {
        let mut keep = VecDeque::new();
        while let Some(w) = self.queue.pop_front() {
            match w {
                Work::Client { id, .. } => self.fail(id, e),
                other => keep.push_back(other),
            }
        }
        self.queue = keep;
    }

    /// Peers a write from this primary goes to right now.
    fn write_targets(&self) -> Vec<NodeId> {
        self.peers
            .values()
            .filter(|p| {
                p.diskful
                    && p.live()
                    && p.disk != Disk::Diskless
                    && matches!(
                        p.repl,
                        Repl::Established | Repl::SyncTarget | Repl::SyncSource | Repl::Deferred
                    )
            })
            .map(|p| p.id)
            .collect()
    }

    fn rotate(&mut self) {
        let old = self.md.current;
        let undo = RotationUndo {
            current: old,
            parent: self.md.parent,
            history: self.md.history.clone(),
            bitmap_uuids: self.md.bitmap_uuids.clone(),
            unsettled: self.md.unsettled,
        };
        let mut new = self.rand();
        while new == 0 || new == old {
            new = self.rand();
        }
        let targets = self.write_targets();
        let mut lost = 0u32;
        for n in self
            .cfg
            .nodes
            .iter()
            .filter(|n| n.diskful && n.id != self.cfg.node)
        {
            let in_sync = targets.contains(&n.id)
                && self
                    .peers
                    .get(&n.id)
                    .is_some_and(|p| p.repl == Repl::Established);
            if !in_sync {
                lost |= mask(n.id);
                if self.md.bitmap_uuids.get(&n.id).is_none_or(|u| *u == 0) {
                    self.md.bitmap_uuids.insert(n.id, old);
                }
            }
        }
        // Peers in sync adopt the new generation with it (they get every write).
        for p in self.peers.values_mut() {
            if p.diskful && lost & mask(p.id) == 0 && p.current == old {
                p.current = new;
            }
        }
        // Several unsettled rotations in a row go back to the last settled one.
        if self.rotation_undo.is_none() {
            self.rotation_undo = Some(undo);
        }
        self.push_history(old);
        self.md.current = new;
        self.md.parent = old;
        self.md.unsettled = true;
        self.known_current = new;
        self.need_rotation = false;
        self.persist();
        // Every connected peer, also one still in its handshake: a resync target
        // must know the generation its incoming writes belong to.
        let ids = self.connected_peers();
        self.send_connected(&Msg::NewUuid {
            current: new,
            previous: old,
            lost,
        });
        self.uuid_waiting = ids.into_iter().collect();
        self.restart_pending_handshakes();
    }

    // ---- the local work queue ----

    fn blocks_busy(&self, block: u64, count: u64) -> bool {
        self.busy_blocks
            .range(block..block + count)
            .next()
            .is_some()
    }

    /// Makes sure the extents are in the activity log; false when it must wait.
    fn ensure_al(&mut self, block: u64, count: u64) -> bool {
        #[cfg(feature = "bug-forget-al")]
        {
            let _ = (block, count);
            return true;
        }
        #[allow(unreachable_code)]
        {
            let needed: Vec<u64> = self
                .extents(block, count)
                .filter(|e| !self.md.al.contains(e))
                .collect();
            if needed.is_empty() {
                // Touch: most recently used at the end.
                for e in self.extents(block, count) {
                    if let Some(pos) = self.md.al.iter().position(|x| *x == e) {
                        let x = self.md.al.remove(pos);
                        self.md.al.push(x);
                    }
                }
                return true;
            }
            // Never evict an extent this very request needs.
            let own: Vec<u64> = self.extents(block, count).collect();
            let mut changed = false;
            for e in needed {
                if self.md.al.len() >= self.cfg.al_extents {
                    let idle: Vec<u64> = self
                        .md
                        .al
                        .iter()
                        .copied()
                        .filter(|x| {
                            !self.extent_inflight.contains_key(x)
                                && !self.extent_unacked.contains_key(x)
                                && !own.contains(x)
                        })
                        .collect();
                    let clean = idle
                        .iter()
                        .copied()
                        .find(|x| !self.extent_dirty.contains_key(x));
                    match clean {
                        Some(victim) => self.md.al.retain(|x| *x != victim),
                        None => {
                            if changed {
                                self.persist();
                            }
                            // Make idle extents clean with a flush, then retry.
                            if !self.al_flush && !idle.is_empty() {
                                self.al_flush = true;
                                let mark = self.dirty_stamp;
                                let tag = self.tag(DiskOp::AlFlush { mark });
                                self.out.push(Action::DiskFlush { tag });
                            }
                            return false;
                        }
                    }
                }
                self.md.al.push(e);
                changed = true;
            }
            if changed {
                // Durable before the data write, with the bitmaps of evicted extents.
                self.persist();
            }
            true
        }
    }

    fn start_local(&mut self, block: u64, count: u64) {
        for b in block..block + count {
            *self.busy_blocks.entry(b).or_insert(0) += 1;
        }
        for e in self.extents(block, count) {
            *self.extent_inflight.entry(e).or_insert(0) += 1;
        }
        // A resync read of these blocks in flight now returns stale data, and data
        // held for checksum resync is stale.
        for p in self.peers.values_mut() {
            if let Some(src) = &mut p.source {
                for (b, stale) in src.reading.values_mut() {
                    if *b >= block && *b < block + count {
                        *stale = true;
                    }
                }
                for (_, (_, _, stale)) in src.held.range_mut(block..block + count) {
                    *stale = true;
                }
            }
        }
    }

    fn end_local(&mut self, block: u64, count: u64) {
        for b in block..block + count {
            if let Some(n) = self.busy_blocks.get_mut(&b) {
                *n -= 1;
                if *n == 0 {
                    self.busy_blocks.remove(&b);
                }
            }
        }
        // Completed writes are volatile until a flush issued after them completes.
        self.dirty_stamp += 1;
        let stamp = self.dirty_stamp;
        for e in self.extents(block, count) {
            self.extent_dirty.insert(e, stamp);
        }
        for e in self.extents(block, count) {
            if let Some(n) = self.extent_inflight.get_mut(&e) {
                *n -= 1;
                if *n == 0 {
                    self.extent_inflight.remove(&e);
                }
            }
        }
    }

    /// Runs queued work in order while it can start.
    fn pump(&mut self) {
        // Suspended: queued client writes move to the held requests.
        self.io_suspended();
        while let Some(head) = self.queue.front() {
            let range = head.range();
            let barrier = matches!(head, Work::PeerFlush { .. } | Work::ResyncDone { .. });
            // A digest comparison only reads: no activity-log extent for it.
            let checks = matches!(head, Work::ResyncCheck { .. });
            if barrier {
                // Everything before it must be done locally.
                let from = match head {
                    Work::PeerFlush { from, .. } | Work::ResyncDone { from, .. } => *from,
                    _ => unreachable!("barrier"),
                };
                let pending_from = self.disk_ops.values().any(|op| match op {
                    DiskOp::PeerWrite { from: f, .. } => *f == from,
                    DiskOp::ResyncWrite { .. } | DiskOp::ResyncCompareRead { .. } => true,
                    _ => false,
                });
                if pending_from {
                    break;
                }
            }
            if let Some((b, c)) = range {
                if self.blocks_busy(b, c) {
                    break;
                }
                if matches!(head, Work::Client { .. }) {
                    if self.waits_for_handshake() {
                        break;
                    }
                    if let Err(e) = self.client_ok() {
                        if let Some(Work::Client { id, .. }) = self.queue.pop_front() {
                            self.fail(id, e);
                        }
                        continue;
                    }
                    if self.orderer.is_some() {
                        // A second primary: the orderer runs it (`core/dual.rs`).
                        if let Some(Work::Client {
                            id,
                            block,
                            count,
                            data,
                            fua,
                        }) = self.queue.pop_front()
                        {
                            self.forward_write(id, block, count, data, fua);
                        }
                        continue;
                    }
                    // A new generation before the first write that some peer, in sync
                    // until now, will miss (lost, or connected but not taking writes).
                    let targets = self.write_targets();
                    let current = self.md.current;
                    // Each left behind: whether only its handshake keeps it out.
                    let left: Vec<bool> = self
                        .peers
                        .values()
                        .filter(|p| {
                            p.diskful
                                && !targets.contains(&p.id)
                                && current != 0
                                && p.current == current
                        })
                        .map(|p| p.conn == ConnState::Handshake)
                        .collect();
                    let leaves_one_behind = !left.is_empty();
                    #[cfg(feature = "bug-skip-uuid-rotation")]
                    let leaves_one_behind = {
                        let _ = leaves_one_behind;
                        false
                    };
                    // Peers left behind only because their handshake is running (a
                    // promotion starts one with every secondary) take writes in a
                    // moment: the write waits for them, up to the promotion timeout,
                    // rather than start a generation that they must then resync into
                    // and that no other node holds until they have.
                    let handshaking_only = !self.need_rotation && left.iter().all(|h| *h);
                    if leaves_one_behind && handshaking_only {
                        let limit = self.now + self.cfg.promote_timeout_ms;
                        if self.now < *self.handshake_wait.get_or_insert(limit) {
                            break;
                        }
                    }
                    self.handshake_wait = None;
                    if self.need_rotation || leaves_one_behind {
                        self.rotate();
                    }
                }
                if self.md.disk != Disk::Diskless && !checks && !self.ensure_al(b, c) {
                    break;
                }
            }
            let Some(w) = self.queue.pop_front() else {
                break;
            };
            self.run(w);
        }
        self.retry_parked_reads();
        // Resync and periodic work may be able to move on.
        let sources: Vec<NodeId> = self
            .peers
            .values()
            .filter(|p| p.source.is_some())
            .map(|p| p.id)
            .collect();
        for s in sources {
            self.resync_step(s);
        }
    }

    fn run(&mut self, w: Work) {
        if self.diskless() && !matches!(w, Work::Client { .. }) {
            // Detached: replicated work finds no disk here. The sender marks what
            // it does not get acknowledged.
            match w {
                Work::Peer { from, seq, .. } => self.send(from, Msg::WriteAck { seq, ok: false }),
                Work::PeerFlush { from, seq } => self.send(from, Msg::FlushAck { seq, ok: false }),
                _ => {}
            }
            return;
        }
        match w {
            Work::Client {
                id,
                block,
                count,
                data,
                fua,
            } => {
                let seq = self.next_seq;
                self.next_seq += 1;
                self.last_seq = seq;
                self.max_seq = self.max_seq.max(seq);
                let targets = self.write_targets();
                let diskless = self.diskless();
                // A node without a disk is not a target: its peers mark the write for it.
                let mut tmask = if diskless { 0 } else { mask(self.cfg.node) };
                for t in &targets {
                    tmask |= mask(*t);
                }
                // Diskful peers that will not get it are out of sync for it.
                let absent: Vec<NodeId> = self
                    .cfg
                    .nodes
                    .iter()
                    .filter(|n| n.diskful && n.id != self.cfg.node && !targets.contains(&n.id))
                    .map(|n| n.id)
                    .collect();
                for a in absent {
                    self.mark(a, block, u64::from(count));
                }
                for t in &targets {
                    let msg = Msg::Write {
                        seq,
                        block,
                        count,
                        fua,
                        targets: tmask,
                        data: data.clone(),
                    };
                    self.send(*t, msg);
                }
                if diskless {
                    // No local copy and no activity log: the write is done when the
                    // diskful peers are (see check_writes).
                    self.writes.insert(
                        seq,
                        PendingWrite {
                            client: Some(id),
                            block,
                            count: u64::from(count),
                            fua,
                            local_done: true,
                            local_ok: true,
                            waiting: targets.into_iter().collect(),
                            completed: false,
                            peer_ok: false,
                            data: Some(data),
                        },
                    );
                    self.check_writes();
                    return;
                }
                self.start_local(block, u64::from(count));
                let tag = self.tag(DiskOp::ClientWrite {
                    seq,
                    block,
                    count: u64::from(count),
                });
                // Under suspend-io a write not completed when a suspension ends is
                // sent anew, so its data stays until it completes.
                let keep = (self.cfg.on_no_quorum == OnNoQuorum::SuspendIo).then(|| data.clone());
                self.out.push(Action::DiskWrite {
                    tag,
                    block,
                    count,
                    data,
                    fua,
                });
                // Until every target confirmed it, a crash here must still mark it for
                // them: its extent stays in the activity log.
                self.pin_extents(block, u64::from(count));
                self.writes.insert(
                    seq,
                    PendingWrite {
                        client: Some(id),
                        block,
                        count: u64::from(count),
                        fua,
                        local_done: false,
                        local_ok: true,
                        waiting: targets.into_iter().collect(),
                        completed: false,
                        peer_ok: false,
                        data: keep,
                    },
                );
            }
            Work::Peer {
                from,
                seq,
                block,
                count,
                data,
                fua,
                targets,
            } => {
                let c = u64::from(count);
                let others: Vec<NodeId> = self
                    .md
                    .bitmaps
                    .keys()
                    .copied()
                    // A primary without a disk (detached) is not among the targets:
                    // its blocks are marked too.
                    .filter(|n| targets & mask(*n) == 0)
                    .collect();
                for n in others {
                    self.mark(n, block, c);
                }
                // Written here and not yet confirmed everywhere: its extent stays in
                // the activity log, so a crash of this node still marks it.
                if self.window.contains_key(&seq) {
                    self.pinned.insert(seq);
                    self.pin_extents(block, c);
                }
                self.start_local(block, c);
                let tag = self.tag(DiskOp::PeerWrite {
                    from,
                    seq,
                    block,
                    count: c,
                });
                self.out.push(Action::DiskWrite {
                    tag,
                    block,
                    count,
                    data,
                    fua,
                });
            }
            Work::PeerFlush { from, seq } => {
                let mark = self.dirty_stamp;
                let tag = self.tag(DiskOp::PeerFlush { from, seq, mark });
                self.out.push(Action::DiskFlush { tag });
            }
            Work::ResyncCheck {
                from,
                round,
                block,
                seq,
                digest,
            } => {
                if !self.current_target_round(from, round) {
                    return;
                }
                if self.fresher_than(from, round, block, seq) {
                    if let Some(bm) = self.md.bitmaps.get_mut(&from) {
                        bm.clear(block);
                    }
                    self.send(from, Msg::ResyncAck { block, ok: true });
                    return;
                }
                let tag = self.tag(DiskOp::ResyncCheckRead {
                    from,
                    round,
                    block,
                    seq,
                    digest,
                });
                self.out.push(Action::DiskRead {
                    tag,
                    block,
                    count: 1,
                });
            }
            Work::Resync {
                from,
                round,
                block,
                seq,
                data,
            } => {
                if !self.current_target_round(from, round) {
                    return; // from a round that ended: the new one resends what is needed
                }
                if self.fresher_than(from, round, block, seq) {
                    // A replicated write to this block arrived during this round and
                    // is applied in arrival order: it is what the block must hold.
                    if let Some(bm) = self.md.bitmaps.get_mut(&from) {
                        bm.clear(block);
                    }
                    self.send(from, Msg::ResyncAck { block, ok: true });
                    return;
                }
                self.start_local(block, 1);
                // The block changes here and on no third node: one that held what this
                // node held then lacks what the source sends, and the source's bits for
                // it (`OtherBitmap`) cannot say so, being only the source's half of that
                // pair's differences. So a block that differs is marked for the other
                // peers; which one differs, a read first tells, unless it is marked for
                // all of them already.
                let unmarked = self
                    .md
                    .bitmaps
                    .iter()
                    .any(|(n, bm)| *n != from && !bm.get(block));
                if unmarked {
                    let tag = self.tag(DiskOp::ResyncCompareRead {
                        from,
                        round,
                        block,
                        data,
                    });
                    self.out.push(Action::DiskRead {
                        tag,
                        block,
                        count: 1,
                    });
                } else {
                    self.resync_write(from, round, block, data);
                }
            }
            Work::ResyncDone {
                from,
                round,
                current,
                history,
                last_seq,
                tie,
            } => {
                let empty = self.md.bitmaps.get(&from).is_none_or(|b| b.is_empty());
                if self.current_target_round(from, round) && empty {
                    // The copied blocks must be durable before we call ourselves
                    // UpToDate: a crash right after must not lose them.
                    let done = ResyncDone {
                        from,
                        round,
                        current,
                        history,
                        last_seq,
                        tie,
                    };
                    let tag = self.tag(DiskOp::ResyncDoneFlush(Box::new(done)));
                    self.out.push(Action::DiskFlush { tag });
                } else if self.current_target_round(from, round) {
                    // Blocks were marked for the source after it sent the last of its
                    // round (a write or a verify finding it lacked): the source counts
                    // the round as done, so a new round copies them.
                    self.new_round(from);
                }
            }
        }
    }

    fn disk_done(&mut self, tag: u64, ok: bool, data: Option<Vec<u8>>) {
        let Some(op) = self.disk_ops.remove(&tag) else {
            return;
        };
        match op {
            DiskOp::ResyncDoneFlush(done) => {
                let ResyncDone {
                    from,
                    round,
                    current,
                    history,
                    last_seq,
                    tie,
                } = *done;
                if !ok {
                    self.detach("local disk flush at the end of a resync failed".into());
                }
                let empty = self.md.bitmaps.get(&from).is_none_or(|b| b.is_empty());
                if ok && empty && !self.diskless() && self.current_target_round(from, round) {
                    self.adopt_rank(last_seq, tie);
                    // The source's generation, settled or not as the source said (or
                    // as its primary told this node since).
                    let source_unsettled = self
                        .peers
                        .get(&from)
                        .and_then(|p| p.their_hello.as_ref())
                        .is_none_or(|h| h.current != current || h.unsettled);
                    self.md.unsettled = source_unsettled && current != self.settled_seen;
                    let old = self.md.current;
                    // Same generation as before, or one the source went on to from
                    // it: this node's history may hold generations it undid (see
                    // `settle_rotation`) that the source never had; they stay, so a
                    // node that heard of one can still take data from this one.
                    let kept: Vec<u64> = if current == old || history.contains(&old) {
                        self.md
                            .history
                            .iter()
                            .copied()
                            .filter(|u| !history.contains(u))
                            .collect()
                    } else {
                        Vec::new()
                    };
                    if current != old {
                        // The source's parent, if its Hello was of this generation.
                        self.md.parent = self
                            .peers
                            .get(&from)
                            .and_then(|p| p.their_hello.as_ref())
                            .filter(|h| h.current == current)
                            .map_or(0, |h| h.parent);
                    }
                    self.md.current = current;
                    self.md.history = history;
                    for u in kept.into_iter().rev() {
                        self.push_history(u);
                    }
                    if let Some((src, prev, chain, lost)) = self.target_next.take()
                        && src == from
                        && prev == current
                    {
                        // Rotations of the source during the resync (see `NewUuid`).
                        for next in chain {
                            let before = self.md.current;
                            self.push_history(before);
                            self.md.current = next;
                            self.md.parent = before;
                            for n in self.cfg.nodes.iter().filter(|n| n.diskful) {
                                if n.id != self.cfg.node
                                    && lost & mask(n.id) != 0
                                    && self.md.bitmap_uuids.get(&n.id).is_none_or(|u| *u == 0)
                                {
                                    self.md.bitmap_uuids.insert(n.id, before);
                                }
                            }
                        }
                        self.md.unsettled = self.md.current != self.settled_seen;
                    }
                    let current = self.md.current;
                    self.known_current = current;
                    self.md.newest_seen = current;
                    self.md.bitmap_uuids.remove(&from);
                    self.md.disk = Disk::UpToDate;
                    self.md.resync_left.clear_all();
                    self.md.resync_from = None;
                    self.target_undo = None;
                    self.crashed_primary = false;
                    if let Some(p) = self.peers.get_mut(&from) {
                        p.repl = Repl::Established;
                    }
                    self.persist();
                    self.next_turn();
                }
            }
            DiskOp::ClientWrite { seq, block, count } => {
                self.end_local(block, count);
                if !ok {
                    self.detach(format!(
                        "local disk write of blocks {block}..{} failed",
                        block + count
                    ));
                }
                if self.diskless() {
                    // Detached (now or before): the peers' copies decide (check_writes).
                    self.check_writes();
                    return;
                }
                if let Some(w) = self.writes.get_mut(&seq) {
                    w.local_done = true;
                    w.local_ok = ok;
                }
                self.check_writes();
            }
            DiskOp::PeerWrite {
                from,
                seq,
                block,
                count,
            } => {
                self.end_local(block, count);
                if !ok {
                    self.detach(format!(
                        "local disk write of replicated blocks {block}..{} failed",
                        block + count
                    ));
                }
                // A detached disk's copy is not trusted, whatever this write did.
                let ok = ok && !self.diskless();
                self.send(from, Msg::WriteAck { seq, ok });
            }
            DiskOp::PeerFlush { from, seq, mark } => {
                if ok {
                    self.flush_done(mark);
                } else {
                    self.detach("local disk flush failed".into());
                }
                let ok = ok && !self.diskless();
                self.send(from, Msg::FlushAck { seq, ok });
            }
            DiskOp::VerifyRead { peer, block } => {
                if !ok {
                    self.detach(format!(
                        "local disk read of block {block} for verify failed"
                    ));
                }
                let running = self.peers.get(&peer).is_some_and(|p| p.verify.running);
                match data.filter(|_| ok && running && !self.diskless()) {
                    Some(d) => {
                        let digest = crc32c::crc32c(&d);
                        self.send(peer, Msg::VerifyDigest { block, digest });
                    }
                    None => {
                        if let Some(p) = self.peers.get_mut(&peer) {
                            p.verify.inflight.remove(&block);
                            p.verify.running = false;
                        }
                    }
                }
            }
            DiskOp::VerifyCompare {
                from,
                block,
                digest,
            } => {
                if !ok {
                    self.detach(format!(
                        "local disk read of block {block} for verify failed"
                    ));
                }
                // The source marks what differs (and sends it in the next bitmap
                // exchange), so a resync starts only after the verify ended.
                let equal = data
                    .filter(|_| ok && !self.diskless())
                    .is_some_and(|d| crc32c::crc32c(&d) == digest);
                self.send(from, Msg::VerifyResult { block, equal });
            }
            DiskOp::PeerRead { from, id } => {
                if !ok {
                    self.detach("local disk read for a peer failed".into());
                }
                let data = data.filter(|_| ok && !self.diskless());
                let ok = data.is_some();
                let msg = Msg::ReadReply {
                    id,
                    ok,
                    data: data.unwrap_or_default(),
                };
                self.send(from, msg);
            }
            DiskOp::ClientRead { id, block, count } => {
                if !ok || self.diskless() {
                    if !ok {
                        self.detach(format!(
                            "local disk read of blocks {block}..{} failed",
                            block + u64::from(count)
                        ));
                    }
                    // Served by an UpToDate peer instead, if there is one.
                    if self.role == Role::Primary && self.diskless() {
                        return self.read_via_peer(id, block, count);
                    }
                }
                if self.io_suspended() {
                    // Read again once the suspension ends.
                    return self.hold(Held::Read { id, block, count });
                }
                let result = if ok { Ok(data) } else { Err(IoError::Disk) };
                // A read served after quorum was lost is refused like a write.
                let result = match self.client_ok() {
                    Err(e) => Err(e),
                    Ok(()) => result,
                };
                self.out.push(Action::Complete { id, result });
            }
            DiskOp::ClientFlush { id, mark } => {
                if ok {
                    self.flush_done(mark);
                } else {
                    self.detach("local disk flush failed".into());
                }
                if let Some(f) = self.flushes.iter_mut().find(|f| f.id == id) {
                    f.local_done = true;
                    // Detached: the peers' flushes decide (check_flushes).
                    f.local_ok = ok || self.md.disk == Disk::Diskless;
                }
                self.check_flushes();
            }
            DiskOp::ResyncCompareRead {
                from,
                round,
                block,
                data: theirs,
            } => {
                if !ok {
                    self.end_local(block, 1);
                    self.detach(format!("local disk read of resync block {block} failed"));
                    return;
                }
                if self.diskless() || !self.current_target_round(from, round) {
                    // Its bit stays set: the next round copies it again.
                    self.end_local(block, 1);
                    return;
                }
                if data.as_deref() == Some(theirs.as_slice()) {
                    // Equal already: nothing changes here, for any peer.
                    self.end_local(block, 1);
                    if let Some(bm) = self.md.bitmaps.get_mut(&from) {
                        bm.clear(block);
                    }
                    self.resync_same_blocks = self.resync_same_blocks.saturating_add(1);
                    self.send(from, Msg::ResyncAck { block, ok: true });
                    return;
                }
                // Different: no third node is known to hold the source's block. (A
                // crash before these bits are persisted marks the whole extent for
                // every peer, from the activity log `start_local` entered it in.)
                for (n, bm) in self.md.bitmaps.iter_mut() {
                    if *n != from {
                        bm.set(block);
                    }
                }
                self.resync_write(from, round, block, theirs);
            }
            DiskOp::ResyncWrite { from, round, block } => {
                self.end_local(block, 1);
                if !ok {
                    self.detach(format!("local disk write of resync block {block} failed"));
                }
                if self.diskless() {
                    return;
                }
                if !self.current_target_round(from, round) {
                    // Written, but for a round that ended: its bit stays set so that
                    // the next resync copies the block again.
                    return;
                }
                if ok && let Some(bm) = self.md.bitmaps.get_mut(&from) {
                    bm.clear(block);
                }
                self.send(from, Msg::ResyncAck { block, ok });
            }
            DiskOp::ResyncRead { peer } => {
                let live = self
                    .peers
                    .get(&peer)
                    .is_some_and(|p| p.repl == Repl::SyncSource);
                let Some(src) = self.peers.get_mut(&peer).and_then(|p| p.source.as_mut()) else {
                    return;
                };
                let Some((block, stale)) = src.reading.remove(&tag) else {
                    return;
                };
                if !ok {
                    self.detach(format!("local disk read of resync block {block} failed"));
                    return;
                }
                if !live {
                    return;
                }
                // A write to the block still queued here would be missing from the
                // data while `last_seq` counts it: read again after it.
                let queued = self.queue.iter().any(|w| {
                    w.range().is_some_and(|(b, c)| {
                        !matches!(w, Work::Resync { .. }) && block >= b && block < b + c
                    })
                });
                let Some(src) = self.peers.get_mut(&peer).and_then(|p| p.source.as_mut()) else {
                    return;
                };
                if stale || !ok || queued {
                    src.cursor = src.cursor.min(block);
                } else if let Some(data) = data {
                    src.inflight.insert(block);
                    let seq = self.last_seq;
                    if self.cfg.resync_csums {
                        let digest = block_digest(&data);
                        src.held.insert(block, (seq, data, false));
                        self.send(peer, Msg::ResyncDigest { block, seq, digest });
                    } else {
                        self.send(peer, Msg::ResyncData { block, seq, data });
                    }
                }
                self.resync_step(peer);
            }
            DiskOp::ResyncCheckRead {
                from,
                round,
                block,
                seq,
                digest,
            } => {
                if !ok {
                    self.detach(format!("local disk read of resync block {block} failed"));
                }
                if self.diskless() || !self.current_target_round(from, round) {
                    return;
                }
                // Equal, or overwritten meanwhile by a newer replicated write: in sync.
                let same = data.is_some_and(|d| block_digest(&d) == digest)
                    || self.fresher_than(from, round, block, seq);
                if same {
                    if let Some(bm) = self.md.bitmaps.get_mut(&from) {
                        bm.clear(block);
                    }
                    self.resync_same_blocks = self.resync_same_blocks.saturating_add(1);
                    self.send(from, Msg::ResyncAck { block, ok: true });
                } else {
                    self.send(from, Msg::ResyncNeedData { block });
                }
            }
            DiskOp::AlFlush { mark } => {
                if ok {
                    self.flush_done(mark);
                } else {
                    self.detach("local disk flush failed".into());
                }
                self.al_flush = false;
            }
        }
    }

    /// Writes a block of a resync round from `from` (already counted busy by
    /// `start_local`; the write's completion ends that).
    fn resync_write(&mut self, from: NodeId, round: u32, block: u64, data: Vec<u8>) {
        // From the first block on, the data is the source's in part.
        self.target_undo = None;
        let tag = self.tag(DiskOp::ResyncWrite { from, round, block });
        self.out.push(Action::DiskWrite {
            tag,
            block,
            count: 1,
            data: Bytes::from(data),
            fua: false,
        });
    }

    /// A flush issued when the stamp was `mark` made every write completed before
    /// then durable: extents whose last write is that old are clean.
    fn flush_done(&mut self, mark: u64) {
        self.extent_dirty.retain(|_, stamp| *stamp > mark);
    }

    /// A majority of the diskful voters (the tiebreaker rule included) holds this
    /// node's generation: this node, and peers that took it (in sync at the rotation
    /// and acknowledged its NewUuid, or finished a resync from this node) and are
    /// still connected. A peer
    /// that is merely connected, perhaps still in its handshake with an older
    /// generation, counts for quorum but not here: a rotation settled without it
    /// could be followed by a quorum of nodes that never saw it.
    fn held_by_quorum(&self) -> bool {
        let mut view = self.quorum_view(false);
        let current = self.md.current;
        view.present = usize::from(self.cfg.diskful(self.cfg.node) && !self.diskless())
            + self
                .peers
                .values()
                .filter(|p| {
                    p.diskful
                        && p.connected()
                        && p.current == current
                        && !self.uuid_waiting.contains(&p.id)
                })
                .count();
        has_quorum(self.cfg.quorum, view)
    }

    /// Writes and flushes under a new generation complete once its announcement is
    /// acknowledged and, on a primary, a majority holds it (see `held_by_quorum`):
    /// until then the rotation may still be undone.
    fn rotation_confirmed(&self) -> bool {
        self.uuid_waiting.is_empty()
            && (self.rotation_undo.is_none() || self.role != Role::Primary || self.held_by_quorum())
    }

    /// Settles a pending generation: kept once every peer present acknowledged it
    /// and a majority holds it, undone if quorum went first.
    fn settle_rotation(&mut self) {
        if self.rotation_undo.is_none() {
            return;
        }
        if !self.quorum {
            if let Some(RotationUndo {
                current,
                parent,
                history,
                bitmap_uuids,
                unsettled,
            }) = self.rotation_undo.take()
            {
                // A peer may have adopted the voided generation (its ack lost with the
                // link): keeping it in history turns that meeting into a resync from
                // whoever is newer instead of a split brain.
                let voided: Vec<u64> = std::iter::once(self.md.current)
                    .chain(self.md.history.iter().copied())
                    .filter(|u| *u != current && !history.contains(u))
                    .collect();
                self.md.current = current;
                self.md.parent = parent;
                self.md.history = history;
                for v in voided.iter().rev() {
                    self.push_history(*v);
                }
                self.md.bitmap_uuids = bitmap_uuids;
                self.md.unsettled = unsettled;
                // Also across a restart: a node that kept the voided generation as the
                // newest it has seen would refuse every source that never had it.
                self.known_current = current;
                self.md.newest_seen = current;
                self.uuid_waiting.clear();
                self.need_rotation = true;
                self.persist();
                // Peers still connected may hold the undone generation (with the
                // NewUuid, or from a resync this node served since): they learn it
                // was undone instead of going on under it.
                self.send_connected(&Msg::UuidUndone { current });
            }
        } else if self.uuid_waiting.is_empty()
            && self.role == Role::Primary
            && self.held_by_quorum()
        {
            // Only a primary settles: one demoted first (a live migration handed its
            // writes to another) never confirmed the generation, and the new primary
            // may start and settle its own from the same parent; settling this one
            // after all would turn their meeting into a split brain (two-primaries
            // seed 699). It stays unsettled, so it gives way to that sibling.
            self.rotation_undo = None;
            // Settled: writes under it may complete now, and it is never undone.
            self.md.unsettled = false;
            self.persist();
            self.send_connected(&Msg::UuidSettled {
                current: self.md.current,
            });
        }
    }

    fn check_writes(&mut self) {
        self.settle_rotation();
        // Suspended: client writes are not completed (see core/suspend.rs).
        let suspended = self.io_suspended();
        // Protocol A acknowledges once the local copy is written; a node without a
        // disk has no local copy, so it waits for its peers as with protocol C.
        let diskless = self.diskless();
        let proto_a = self.cfg.protocol == Protocol::A && !diskless;
        let uuid_ok = self.rotation_confirmed();
        let mut done = Vec::new();
        for (seq, w) in self.writes.iter_mut() {
            if w.completed || !w.local_done || (suspended && w.client.is_some()) {
                continue;
            }

            let peers_ok = w.waiting.is_empty() || (proto_a && !w.fua);
            #[cfg(feature = "bug-early-ack")]
            let peers_ok = {
                let _ = peers_ok;
                true
            };
            if peers_ok && uuid_ok {
                w.completed = true;
                w.data = None;
                done.push((*seq, w.client, w.local_ok, w.peer_ok));
            }
        }
        for (_, client, local_ok, peer_ok) in done {
            if let Some(id) = client {
                let result = if diskless && !peer_ok {
                    // Nobody with a disk confirmed it.
                    Err(IoError::NoData)
                } else if !local_ok {
                    Err(IoError::Disk)
                } else if self.role != Role::Primary {
                    Err(IoError::NotPrimary)
                } else if !self.quorum {
                    Err(IoError::NoQuorum)
                } else {
                    Ok(None)
                };
                self.out.push(Action::Complete { id, result });
            }
        }
        // Forget writes every target has acknowledged; tell secondaries how far that is.
        let finished: Vec<u64> = self
            .writes
            .iter()
            .filter(|(_, w)| w.completed && w.waiting.is_empty())
            .map(|(s, _)| *s)
            .collect();
        for s in finished {
            if let Some(w) = self.writes.remove(&s) {
                self.unpin_extents(w.block, w.count);
            }
        }
    }

    fn pin_extents(&mut self, block: u64, count: u64) {
        for e in self.extents(block, count) {
            *self.extent_unacked.entry(e).or_insert(0) += 1;
        }
    }

    fn unpin_extents(&mut self, block: u64, count: u64) {
        for e in self.extents(block, count) {
            if let Some(n) = self.extent_unacked.get_mut(&e) {
                *n -= 1;
                if *n == 0 {
                    self.extent_unacked.remove(&e);
                }
            }
        }
    }

    fn check_flushes(&mut self) {
        if self.io_suspended() {
            return;
        }
        let mut i = 0;
        while i < self.flushes.len() {
            let f = &self.flushes[i];
            if f.local_done && f.waiting.is_empty() && self.rotation_confirmed() {
                let f = self.flushes.remove(i);
                let result = if self.diskless() && !f.peer_ok {
                    Err(IoError::NoData)
                } else if !f.local_ok {
                    Err(IoError::Disk)
                } else if !self.quorum || self.role != Role::Primary {
                    Err(IoError::NoQuorum)
                } else {
                    Ok(None)
                };
                self.out.push(Action::Complete { id: f.id, result });
            } else {
                i += 1;
            }
        }
    }

    // ---- resync ----

    fn resync_step(&mut self, id: NodeId) {
        if self.cfg.resync_rate_per_tick.is_some() && self.resync_budget == 0 {
            return; // the rate limit; the next tick refills
        }
        // Our rank counts writes received; serve blocks only once they are applied.
        let applying = self.queue.iter().any(|w| matches!(w, Work::Peer { .. }))
            || self
                .disk_ops
                .values()
                .any(|op| matches!(op, DiskOp::PeerWrite { .. }));
        if applying {
            return;
        }
        let limit = if self.queue.is_empty() {
            self.cfg.resync_inflight
        } else {
            self.cfg.resync_inflight.div_ceil(2)
        };
        loop {
            let Some(p) = self.peers.get(&id) else { return };
            if p.repl != Repl::SyncSource {
                return;
            }
            let Some(src) = &p.source else { return };
            if src.inflight.len() + src.reading.len() >= limit {
                return;
            }
            let Some(bm) = self.md.bitmaps.get(&id) else {
                return;
            };
            let cursor = src.cursor;
            let next = bm.next_set(cursor).filter(|b| {
                !src.inflight.contains(b) && !src.reading.values().any(|(x, _)| x == b)
            });
            let next = match next {
                Some(b) => Some(b),
                None => {
                    // Skip blocks already in flight.
                    let mut at = cursor;
                    let mut found = None;
                    while let Some(b) = bm.next_set(at) {
                        if !src.inflight.contains(&b) && !src.reading.values().any(|(x, _)| *x == b)
                        {
                            found = Some(b);
                            break;
                        }
                        at = b + 1;
                    }
                    found
                }
            };
            match next {
                None => {
                    if src.inflight.is_empty() && src.reading.is_empty() {
                        if bm.is_empty() {
                            self.finish_source(id);
                        } else if let Some(s) =
                            self.peers.get_mut(&id).and_then(|p| p.source.as_mut())
                        {
                            s.cursor = 0;
                            continue;
                        }
                    }
                    return;
                }
                Some(b) => {
                    if self.busy_blocks.contains_key(&b) {
                        // A local write to it is in flight; come back later.
                        return;
                    }
                    if self.cfg.resync_rate_per_tick.is_some() {
                        self.resync_budget = self.resync_budget.saturating_sub(1);
                    }
                    let tag = self.tag(DiskOp::ResyncRead { peer: id });
                    if let Some(s) = self.peers.get_mut(&id).and_then(|p| p.source.as_mut()) {
                        s.reading.insert(tag, (b, false));
                        s.cursor = b + 1;
                    }
                    self.out.push(Action::DiskRead {
                        tag,
                        block: b,
                        count: 1,
                    });
                }
            }
        }
    }

    /// Ends a resync as source: our knowledge of third nodes passes to the target
    /// (it now holds our blocks), then our generations and rank.
    fn send_done(&mut self, id: NodeId) {
        // What a third node may lack: its bits, plus writes this primary has not yet
        // seen it confirm.
        let mut others: Vec<(NodeId, Vec<u64>)> = Vec::new();
        for (n, bm) in &self.md.bitmaps {
            if *n == id {
                continue;
            }
            let mut b = bm.clone();
            for w in self.writes.values().filter(|w| w.waiting.contains(n)) {
                b.set_range(w.block, w.count);
            }
            if !b.is_empty() {
                others.push((*n, b.words().to_vec()));
            }
        }
        for (node, words) in others {
            for (i, c) in words.chunks(BITMAP_CHUNK).enumerate() {
                let msg = Msg::OtherBitmap {
                    node,
                    word_offset: (i * BITMAP_CHUNK) as u64,
                    words: c.to_vec(),
                };
                self.send(id, msg);
            }
        }
        let msg = Msg::ResyncDone {
            current: self.md.current,
            history: self.md.history.clone(),
            last_seq: self.last_seq,
            tie: self.tie,
        };
        self.send(id, msg);
    }

    /// A resync into this node ended (done or aborted): peers that waited for their
    /// turn as source start a new round.
    fn next_turn(&mut self) {
        let waiting: Vec<NodeId> = self
            .peers
            .values()
            .filter(|p| p.waiting_turn && p.connected())
            .map(|p| p.id)
            .collect();
        for id in waiting {
            self.new_round(id);
        }
    }

    /// A resync into this node ended unfinished (its source left or started a new
    /// round): peers waiting for their turn go first. If none is and this node is
    /// still Inconsistent with no source, an UpToDate peer it reached a decision with
    /// earlier (in sync then, or deferred) is asked again: that decision was taken
    /// while this node still had data, or had a source, and would otherwise leave it
    /// Inconsistent for good.
    fn target_ended(&mut self) {
        self.next_turn();
        if self.diskless()
            || self.md.disk != Disk::Inconsistent
            || self
                .peers
                .values()
                .any(|p| p.repl == Repl::SyncTarget || p.waiting_turn)
        {
            return;
        }
        let ids: Vec<NodeId> = self
            .peers
            .values()
            .filter(|p| {
                p.live()
                    && p.diskful
                    && p.disk == Disk::UpToDate
                    && matches!(p.repl, Repl::Established | Repl::Deferred)
            })
            .map(|p| p.id)
            .collect();
        for id in ids {
            self.new_round(id);
        }
    }

    /// The handshake round in which we are `from`'s resync target, if we are.
    fn target_round(&self, from: NodeId) -> Option<u32> {
        self.peers
            .get(&from)
            .filter(|p| p.repl == Repl::SyncTarget)
            .map(|p| p.round)
    }

    /// Records a replicated write (sequence `seq`) to `block..block+count` for the
    /// running resync round, if this node is a resync target and the blocks are still
    /// to be copied. Bounded: past [`FRESH_MAX`] blocks the round starts over (it
    /// resumes from the bits left), so that the record never grows without limit.
    fn note_fresh(&mut self, block: u64, count: u64, seq: u64) {
        let Some((src, round)) = self
            .peers
            .values()
            .find(|p| p.repl == Repl::SyncTarget)
            .map(|p| (p.id, p.round))
        else {
            return;
        };
        if self
            .fresh
            .as_ref()
            .is_none_or(|(f, r, _)| (*f, *r) != (src, round))
        {
            self.fresh = Some((src, round, BTreeMap::new()));
        }
        let Some(bm) = self.md.bitmaps.get(&src) else {
            return;
        };
        let Some((_, _, m)) = self.fresh.as_mut() else {
            return;
        };
        let mut b = bm.next_set(block);
        while let Some(x) = b.filter(|x| *x < block + count) {
            m.insert(x, seq);
            b = bm.next_set(x + 1);
        }
        if m.len() > FRESH_MAX {
            self.fresh = None;
            self.new_round(src);
        }
    }

    fn current_target_round(&self, from: NodeId, round: u32) -> bool {
        self.target_round(from) == Some(round)
    }

    /// A replicated write newer than the source's read (`seq`) reached `block` during
    /// this round: the block holds what it must, whatever the source read.
    fn fresher_than(&self, from: NodeId, round: u32, block: u64, seq: u64) -> bool {
        self.fresh.as_ref().is_some_and(|(f, r, m)| {
            *f == from && *r == round && m.get(&block).is_some_and(|s| *s > seq)
        })
    }

    fn finish_source(&mut self, id: NodeId) {
        self.send_done(id);
        self.md.bitmap_uuids.remove(&id);
        let current = self.md.current;
        if let Some(p) = self.peers.get_mut(&id) {
            p.current = current;
            p.repl = Repl::Established;
            p.source = None;
            p.disk = Disk::UpToDate;
        }
        self.persist();
        // The target holds this node's generation now: writes waiting for a
        // majority to hold it may complete.
        self.check_writes();
        self.check_flushes();
    }

    // ---- online verify ----

    /// Reads the next blocks to verify against `id`, within the resync limits (half
    /// of them while client writes wait); ends the run when every block was compared.
    /// The digest is CRC32C (already used on the wire); a block written while it is
    /// compared may count as differing, which costs one extra copy of it.
    fn verify_step(&mut self, id: NodeId) {
        let limit = if self.queue.is_empty() {
            self.cfg.resync_inflight
        } else {
            self.cfg.resync_inflight.div_ceil(2)
        };
        let size = self.cfg.size_blocks;
        loop {
            let Some(p) = self.peers.get_mut(&id) else {
                return;
            };
            if !p.verify.running {
                return;
            }
            if p.verify.cursor >= size {
                if p.verify.inflight.is_empty() {
                    p.verify.running = false;
                    self.send(id, Msg::VerifyDone);
                }
                return;
            }
            if p.verify.inflight.len() >= limit.max(1) {
                return;
            }
            let block = p.verify.cursor;
            p.verify.cursor += 1;
            p.verify.inflight.insert(block);
            let tag = self.tag(DiskOp::VerifyRead { peer: id, block });
            self.out.push(Action::DiskRead {
                tag,
                block,
                count: 1,
            });
        }
    }

    // ---- time ----

    fn tick(&mut self, now: u64) {
        self.now = self.now.max(now);
        self.resync_budget = self.cfg.resync_rate_per_tick.unwrap_or(0);
        if let Some((_, until)) = self.reservation
            && until <= self.now
        {
            self.reservation = None;
        }
        self.check_promotion();
        // Writes under an unsettled generation wait for a majority to hold it (see
        // `rotation_confirmed`), which changes with handshakes, resyncs and roles
        // elsewhere: looked at again on every tick rather than at each of those.
        if self.rotation_undo.is_some() && (!self.writes.is_empty() || !self.flushes.is_empty()) {
            self.check_writes();
            self.check_flushes();
        }
        // A handover waits for the old orderer's PeerAcks among other things.
        self.maybe_take_over();
        if self.role == Role::Secondary && self.two_primaries() {
            // Demoted next to another primary: the secondaries and that primary
            // (handing over) learn when this node's last writes are confirmed.
            self.send_peer_ack();
        }
        if self.orders_writes() {
            self.send_peer_ack();
            // A primary without a disk vouches only for its peers, not for itself.
            let mut m = if self.diskless() {
                0
            } else {
                mask(self.cfg.node)
            };
            for p in self.peers.values() {
                let clean = self.md.bitmaps.get(&p.id).is_none_or(|b| b.is_empty());
                if p.diskful
                    && p.live()
                    && p.repl == Repl::Established
                    && p.disk == Disk::UpToDate
                    && clean
                {
                    m |= mask(p.id);
                }
            }
            if m != self.last_insync || self.now % 1000 < 100 {
                self.last_insync = m;
                let ids: Vec<NodeId> = self
                    .peers
                    .values()
                    .filter(|p| p.live() && p.diskful)
                    .map(|p| p.id)
                    .collect();
                for id in ids {
                    self.send(id, Msg::InSync { mask: m });
                }
            }
        }
        // A live pair that is in sync by its generations but has blocks marked (a failed
        // write, bits left from another peer's resync) starts a new round to copy them.
        let dirty: Vec<NodeId> = self
            .peers
            .values()
            .filter(|p| {
                p.live()
                    && p.repl == Repl::Established
                    && p.disk != Disk::Diskless
                    && !p.verify.running
                    && self.md.bitmaps.get(&p.id).is_some_and(|b| !b.is_empty())
                    && self.md.disk == Disk::UpToDate
            })
            .map(|p| p.id)
            .collect();
        for id in dirty {
            self.new_round(id);
        }
        let verifying: Vec<NodeId> = self
            .peers
            .values()
            .filter(|p| p.verify.running)
            .map(|p| p.id)
            .collect();
        for v in verifying {
            self.verify_step(v);
        }
        let budget = self.cfg.resync_per_tick;
        let sources: Vec<NodeId> = self
            .peers
            .values()
            .filter(|p| p.source.is_some())
            .map(|p| p.id)
            .collect();
        for s in sources {
            for _ in 0..budget.max(1) {
                self.resync_step(s);
            }
        }
        self.update_quorum();
        self.settle_rotation();
        if self.role == Role::Primary && !self.quorum && !self.io_suspended() {
            self.fail_queued_client(IoError::NoQuorum);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Node 0, Inconsistent, a resync target of node 1 in round 3, block 5 marked.
    fn target() -> Replica {
        let c = Config::for_tests(&[(0, true), (1, true), (2, true)]);
        let mut md = Persistent::new_in_sync(&c, 7);
        md.disk = Disk::Inconsistent;
        let mut r = Replica::new(c, md, 1);
        r.handle(Event::Tick { now: 1 });
        if let Some(p) = r.peers.get_mut(&1) {
            p.conn = ConnState::Connected;
            p.repl = Repl::SyncTarget;
            p.round = 3;
        }
        if let Some(bm) = r.md.bitmaps.get_mut(&1) {
            bm.set(5);
        }
        r
    }

    fn read_tag(acts: &[Action]) -> Option<u64> {
        acts.iter().find_map(|a| match a {
            Action::DiskRead { tag, block: 5, .. } => Some(*tag),
            _ => None,
        })
    }

    fn write_tag(acts: &[Action]) -> Option<u64> {
        acts.iter().find_map(|a| match a {
            Action::DiskWrite { tag, block: 5, .. } => Some(*tag),
            _ => None,
        })
    }

    fn acked(acts: &[Action]) -> bool {
        acts.iter().any(|a| {
            matches!(
                a,
                Action::Send {
                    to: 1,
                    msg: Msg::ResyncAck { block: 5, ok: true }
                }
            )
        })
    }

    fn resync_data(r: &mut Replica, byte: u8) -> Vec<Action> {
        r.handle(Event::Message {
            from: 1,
            msg: Msg::ResyncData {
                block: 5,
                seq: 0,
                data: vec![byte; 4096],
            },
        })
    }

    fn disk_done(r: &mut Replica, tag: u64, data: Option<Vec<u8>>) -> Vec<Action> {
        r.handle(Event::DiskDone {
            tag,
            ok: true,
            data,
        })
    }

    /// Node 0, UpToDate, in sync with nodes 1 and 2 (all connected, past the
    /// handshake), in a cluster of three diskful nodes.
    fn in_sync_secondary() -> Replica {
        let c = Config::for_tests(&[(0, true), (1, true), (2, true)]);
        let md = Persistent::new_in_sync(&c, 7);
        let mut r = Replica::new(c, md, 1);
        r.handle(Event::Tick { now: 1 });
        for p in r.peers.values_mut() {
            p.conn = ConnState::Connected;
            p.repl = Repl::Established;
            p.current = 7;
            p.disk = Disk::UpToDate;
        }
        r
    }

    /// Node `node` of three diskful nodes, restarted after an unclean stop as a
    /// secondary with extent 1 in its activity log, generation 7.
    fn back_from_crash(node: NodeId) -> Replica {
        let mut c = Config::for_tests(&[(0, true), (1, true), (2, true)]);
        c.node = node;
        let mut md = Persistent::new_in_sync(&c, 7);
        md.dirty = true;
        md.al = vec![1];
        let mut r = Replica::new(c, md, 1);
        r.handle(Event::Tick { now: 1 });
        r
    }

    /// The Hello `r` sends `to` when they connect.
    fn hello_to(r: &mut Replica, to: NodeId) -> Msg {
        r.handle(Event::PeerConnected { peer: to })
            .into_iter()
            .find_map(|a| match a {
                Action::Send { to: t, msg } if t == to && matches!(msg, Msg::Hello(_)) => Some(msg),
                _ => None,
            })
            .expect("a Hello on connecting")
    }

    /// Seeds 15974, 34699, 55883: a secondary crashed with acknowledged writes in its
    /// volatile cache, which a later flush made durable on the nodes that stayed up.
    /// Back UpToDate, it was the resync source of its hot extents for a node mid-resync
    /// from a survivor, and overwrote the only other copies. Now it comes back
    /// Consistent, cannot be promoted, serves no such node, and takes its hot extents
    /// from a survivor.
    #[test]
    fn a_secondary_back_from_a_crash_is_consistent_until_a_survivor_confirms_it() {
        let mut r = back_from_crash(0);
        assert_eq!(r.md.disk, Disk::Consistent);
        let extent = r.cfg.extent_blocks;
        assert!(
            r.md.bitmaps[&1].get(extent),
            "hot extent marked for every peer"
        );
        let refused = r
            .promotable(false)
            .expect_err("a Consistent node is not promoted");
        assert!(refused.contains("Consistent"), "{refused}");

        // Node 1 is Inconsistent, mid-resync from a survivor of generation 7.
        let mut c1 = Config::for_tests(&[(0, true), (1, true), (2, true)]);
        c1.node = 1;
        let mut md1 = Persistent::new_in_sync(&c1, 5);
        md1.disk = Disk::Inconsistent;
        md1.newest_seen = 7;
        let mut mid = Replica::new(c1, md1, 2);
        let h = hello_to(&mut mid, 0);
        let _ = hello_to(&mut r, 1);
        r.handle(Event::Message { from: 1, msg: h });
        assert_eq!(r.peers[&1].decision, Some(Decision::NoSync));
        assert_eq!(r.md.disk, Disk::Consistent);

        // Node 2 stayed up, UpToDate in generation 7: it is the source.
        let mut c2 = Config::for_tests(&[(0, true), (1, true), (2, true)]);
        c2.node = 2;
        let md2 = Persistent::new_in_sync(&c2, 7);
        let mut survivor = Replica::new(c2, md2, 3);
        let h = hello_to(&mut survivor, 0);
        let _ = hello_to(&mut r, 2);
        r.handle(Event::Message { from: 2, msg: h });
        assert_eq!(r.peers[&2].decision, Some(Decision::BitmapTarget));
    }

    /// Every node that stopped with it is back Consistent too: the usual order picks
    /// one, which then holds the reference copy, UpToDate.
    #[test]
    fn nodes_back_from_a_crash_together_agree_on_one_copy() {
        let mut a = back_from_crash(0);
        let mut b = back_from_crash(1);
        let hb = hello_to(&mut b, 0);
        let _ = hello_to(&mut a, 1);
        a.handle(Event::Message { from: 1, msg: hb });
        assert_eq!(a.peers[&1].decision, Some(Decision::BitmapSource));
        assert_eq!(a.md.disk, Disk::UpToDate);
    }

    /// Seed 16565: node 0 took blocks from the primary in a resync while the
    /// primary still counted node 2 as in sync, so no write of those blocks passed
    /// through node 0's window. When the primary loses node 2, the blocks node 2
    /// never confirmed come with the loss and node 0 marks them too.
    #[test]
    fn a_lost_peer_is_marked_for_the_blocks_the_primary_names() {
        let mut r = in_sync_secondary();
        r.handle(Event::Message {
            from: 1,
            msg: Msg::PeerLost {
                node: 2,
                ranges: vec![(40, 3), (1020, 10)],
            },
        });
        let bm = &r.md.bitmaps[&2];
        assert!(bm.get(40) && bm.get(41) && bm.get(42));
        // Clipped at the end of the 1,024-block volume.
        assert!(bm.get(1020) && bm.get(1023));
        assert_eq!(bm.count(), 7);
        assert!(r.md.bitmaps[&1].is_empty(), "nothing for the sender");
    }

    /// Seed 11226: the source of a resync started a new generation during it; its
    /// ResyncDone, sent before, names the previous one. The target takes both, in
    /// order, instead of ending UpToDate on the generation the source left behind
    /// while it holds writes of the new one (and the source counts it as holding it).
    #[test]
    fn a_resync_target_takes_the_generation_its_source_started_meanwhile() {
        let mut r = target();
        r.md.resync_from = Some(1);
        if let Some(bm) = r.md.bitmaps.get_mut(&1) {
            bm.clear(5);
        }
        r.handle(Event::Message {
            from: 1,
            msg: Msg::NewUuid {
                current: 8,
                previous: 7,
                lost: mask(2),
            },
        });
        assert_eq!(r.md.current, 7, "Inconsistent: not adopted yet");
        let acts = r.handle(Event::Message {
            from: 1,
            msg: Msg::ResyncDone {
                current: 7,
                history: vec![],
                last_seq: 3,
                tie: 1,
            },
        });
        let tag = acts
            .iter()
            .find_map(|a| match a {
                Action::DiskFlush { tag } => Some(*tag),
                _ => None,
            })
            .expect("the copied blocks are flushed first");
        disk_done(&mut r, tag, None);
        assert_eq!(r.md.disk, Disk::UpToDate);
        assert_eq!(r.md.current, 8);
        assert_eq!(r.md.history.first(), Some(&7));
        assert_eq!(r.md.bitmap_uuids.get(&2), Some(&7), "node 2 missed 8");
    }

    /// A resync source's rank comes with its blocks: a higher `last_seq` with its
    /// tie-break, an equal one keeping the lower tie-break (seed 16081's flip-flop).
    #[test]
    fn a_resync_target_takes_its_sources_rank_and_tie_break() {
        let mut c = Config::for_tests(&[(0, true), (1, true), (2, true)]);
        c.node = 2;
        let md = Persistent::new_in_sync(&c, 7);
        let mut r = Replica::new(c, md, 1);
        assert_eq!((r.last_seq, r.tie), (0, 2));
        r.adopt_rank(5, 1);
        assert_eq!((r.last_seq, r.tie), (5, 1));
        r.adopt_rank(5, 0);
        assert_eq!((r.last_seq, r.tie), (5, 0));
        r.adopt_rank(5, 2);
        assert_eq!((r.last_seq, r.tie), (5, 0), "an equal rank keeps the lower");
        r.adopt_rank(3, 1);
        assert_eq!((r.last_seq, r.tie), (5, 0), "a lower rank changes nothing");
        r.adopt_rank(9, 2);
        assert_eq!((r.last_seq, r.tie), (9, 2), "a higher rank comes whole");
    }

    /// Seed 687: a generation's parent is kept with it, not read from the history
    /// (which also holds undone generations), and a Hello names it.
    #[test]
    fn a_generation_keeps_its_parent() {
        let mut r = in_sync_secondary();
        r.md.history = vec![5];
        r.handle(Event::Message {
            from: 1,
            msg: Msg::NewUuid {
                current: 8,
                previous: 7,
                lost: 0,
            },
        });
        assert_eq!((r.md.current, r.md.parent), (8, 7));
        assert_eq!(r.hello(1, 1).parent, 7);
        let mut p = rotated_primary();
        p.md.parent = 3;
        p.rotate();
        assert_eq!(p.md.parent, 8, "rotated from 8");
        for peer in p.peers.values_mut() {
            peer.conn = ConnState::Connecting;
        }
        p.update_quorum();
        p.settle_rotation();
        assert_eq!(
            (p.md.current, p.md.parent),
            (7, 0),
            "undone back to 7 and its parent"
        );
    }

    /// `in_sync_secondary` promoted, that rotated from generation 7 (settled) to 8,
    /// not settled yet.
    fn rotated_primary() -> Replica {
        let mut r = in_sync_secondary();
        r.role = Role::Primary;
        r.rotation_undo = Some(RotationUndo {
            current: 7,
            parent: 0,
            history: Vec::new(),
            bitmap_uuids: BTreeMap::new(),
            unsettled: false,
        });
        r.md.current = 8;
        r.md.unsettled = true;
        r
    }

    /// Seed 19782: a primary's new generation is settled (and writes under it
    /// complete) only once a majority holds it; a peer merely connected, in its
    /// handshake with the old generation, does not count.
    #[test]
    fn a_rotation_settles_only_when_a_majority_holds_it() {
        let mut r = rotated_primary();
        if let Some(p) = r.peers.get_mut(&1) {
            p.conn = ConnState::Handshake;
        }
        if let Some(p) = r.peers.get_mut(&2) {
            p.conn = ConnState::Connecting;
        }
        r.update_quorum();
        assert!(r.quorum, "node 1 connected: quorum");
        assert!(!r.held_by_quorum());
        assert!(!r.rotation_confirmed());
        r.settle_rotation();
        assert!(r.md.unsettled, "not settled by node 0 alone");
        // Node 1 took the generation (a resync from node 0 ended, say).
        if let Some(p) = r.peers.get_mut(&1) {
            p.current = 8;
        }
        assert!(r.held_by_quorum());
        assert!(r.rotation_confirmed());
        r.settle_rotation();
        assert!(!r.md.unsettled, "settled");
    }

    /// From seed 687's trace: a primary that undid its rotation for lack of quorum
    /// kept the undone generation as the newest it had seen (persisted), so after
    /// a restart it refused every source that never had it.
    #[test]
    fn an_undone_rotation_is_not_the_newest_generation_seen() {
        let mut r = rotated_primary();
        r.md.history = vec![7];
        r.md.newest_seen = 8;
        r.known_current = 8;
        for p in r.peers.values_mut() {
            p.conn = ConnState::Connecting;
        }
        r.update_quorum();
        r.settle_rotation();
        assert_eq!(r.md.current, 7, "undone");
        assert_eq!((r.known_current, r.md.newest_seen), (7, 7));
        assert_eq!(r.md.history, vec![8], "kept as a voided generation");
        assert_eq!(r.line_settled(), 7, "7 was settled before the rotation");
    }

    /// Node 0, in sync with node 2, takes block 5 from node 1 in a resync. Node 2 may
    /// hold what node 0 held, which is not what node 1 sends, and node 1's own bits
    /// for node 2 do not show that (seeds 325 and 1569): node 0 marks the block for
    /// node 2 itself when it changes it.
    #[test]
    fn a_resync_target_marks_a_block_it_changes_for_its_other_peers() {
        let mut r = target();
        let acts = resync_data(&mut r, 9);
        assert_eq!(write_tag(&acts), None, "read first");
        let tag = read_tag(&acts).expect("the block as it is here is read");
        let acts = disk_done(&mut r, tag, Some(vec![4; 4096]));
        let tag = write_tag(&acts).expect("different: written");
        assert!(r.md.bitmaps[&2].get(5), "marked for the third node");
        assert_eq!(r.md.bitmaps[&2].count(), 1);
        let acts = disk_done(&mut r, tag, None);
        assert!(acked(&acts));
        assert!(!r.md.bitmaps[&1].get(5), "in sync with the source");
        assert!(r.md.bitmaps[&2].get(5));
    }

    /// The same block arriving equal to what node 0 holds changes nothing: not
    /// written, not marked (else equal copies would mark each other for ever).
    #[test]
    fn a_resync_block_equal_already_is_neither_written_nor_marked() {
        let mut r = target();
        let acts = resync_data(&mut r, 9);
        let tag = read_tag(&acts).expect("read first");
        let acts = disk_done(&mut r, tag, Some(vec![9; 4096]));
        assert_eq!(write_tag(&acts), None);
        assert!(acked(&acts));
        assert!(!r.md.bitmaps[&1].get(5));
        assert!(r.md.bitmaps[&2].is_empty());
    }

    /// Marked for every other peer already: nothing to learn, written at once.
    #[test]
    fn a_resync_block_marked_for_all_is_written_without_a_read() {
        let mut r = target();
        if let Some(bm) = r.md.bitmaps.get_mut(&2) {
            bm.set(5);
        }
        let acts = resync_data(&mut r, 9);
        assert_eq!(read_tag(&acts), None);
        let tag = write_tag(&acts).expect("written");
        assert!(acked(&disk_done(&mut r, tag, None)));
    }
}
