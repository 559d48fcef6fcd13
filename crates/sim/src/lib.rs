//! A deterministic simulator for the replication core.
//!
//! One seed fixes everything: the cluster shape (2–5 diskful nodes, 0–2 diskless
//! tiebreakers), the protocol, and a schedule of faults (links cut and healed,
//! connections reset, nodes crashed and restarted, failovers) run against a client
//! workload. Time is simulated; the same seed replays the same run exactly.
//!
//! After every run the oracle checks:
//! 1. no write acknowledged as durable (FUA, or acked before an acked FLUSH was sent)
//!    is missing on a node when it becomes primary, or on any replica at the end;
//! 2. reads return the latest acknowledged write or a later one (after a crash, the
//!    latest durable one or later);
//! 3. never two nodes completing writes as primaries in overlapping periods, and never
//!    a promotion of data that is not UpToDate;
//! 4. after healing and quiescence, every replica is UpToDate, byte-identical, and no
//!    bitmap bit is set;
//! 5. liveness: that state is reached within a bounded simulated time after healing;
//! 6. suspended I/O (on-no-quorum suspend-io, some seeds): a node whose I/O is
//!    suspended completes no client request, neither with success nor with an error
//!    (only a request refused on arrival may fail), and once healed every request has
//!    completed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use replica::core::{
    Action, Admin, Config, ConnState, Event, IoError, NodeConf, OnNoQuorum, Persistent, Protocol,
    Repl, Replica,
};
use replica::decide::SplitBrainPolicy;
use replica::quorum::QuorumPolicy;
use wire::{Disk, Msg, NodeId, Role};

pub const BLOCKS: u64 = 256;
/// Blocks each simulated disk can hold: an online grow may take a volume up to this
/// (the blocks past the volume's size read as zero, like a grown sparse file).
pub const CAPACITY: u64 = 2 * BLOCKS;
const MS: u64 = 1000;

#[derive(Debug, Clone)]
pub struct Options {
    /// Keep and return the whole trace, not only its tail.
    pub trace: bool,
    /// Simulated time of the fault phase (µs).
    pub chaos_us: u64,
    /// Bound on reaching a healed, in-sync cluster after healing (µs).
    pub heal_bound_us: u64,
    /// Chaos may promote diskless nodes.
    pub diskless_primaries: bool,
    /// Chaos may fail the disk of a diskful node (it detaches).
    pub disk_failures: bool,
    /// Percentage of seeds whose cluster runs with on-no-quorum suspend-io (chosen
    /// from the seed alone, so the other seeds replay as before).
    pub suspend_io_percent: u64,
    /// Percentage of seeds whose cluster runs with allow-two-primaries (and protocol
    /// C): a failover then becomes a live migration (chosen from the seed alone).
    pub two_primaries_percent: u64,
    /// Percentage of seeds whose chaos also runs online verify (chosen from the seed
    /// alone).
    pub verify_percent: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            trace: false,
            chaos_us: 15_000 * MS,
            heal_bound_us: 120_000 * MS,
            diskless_primaries: false,
            disk_failures: false,
            suspend_io_percent: 25,
            two_primaries_percent: 0,
            verify_percent: 0,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub events: u64,
    pub diskful: usize,
    pub diskless: usize,
    pub writes_acked: u64,
    pub reads_checked: u64,
    pub promotions: u64,
    pub crashes: u64,
    pub cuts: u64,
    pub resync_blocks: u64,
    pub disk_failures: u64,
    /// Online verifies the chaos started (`Options::verify_percent`).
    pub verifies: u64,
    pub healed_after_us: u64,
    pub trace: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Violation {
    pub seed: u64,
    pub invariant: u8,
    pub message: String,
    pub trace: Vec<String>,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "seed {}: invariant {} violated: {}",
            self.seed, self.invariant, self.message
        )?;
        writeln!(
            f,
            "replay with: cargo run -p sim -- --seed {} --trace",
            self.seed
        )?;
        writeln!(f, "last {} trace lines:", self.trace.len())?;
        for l in &self.trace {
            writeln!(f, "  {l}")?;
        }
        Ok(())
    }
}

/// The cluster a run simulates.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub diskful: usize,
    pub diskless: usize,
    pub protocol: Protocol,
    /// A node that starts without data (needs a full initial sync).
    pub fresh_node: Option<NodeId>,
    pub quorum: QuorumPolicy,
    /// Checksum-based resync.
    pub csums: bool,
    pub on_no_quorum: OnNoQuorum,
    /// allow-two-primaries on every node (invariant 3 then allows two writers).
    pub two_primaries: bool,
    pub split_brain: SplitBrainPolicy,
}

impl Shape {
    /// Protocol C, quorum by majority, on-no-quorum io-error, split brains left to a
    /// human, nothing else: what the scenarios start from.
    fn plain(diskful: usize, diskless: usize) -> Shape {
        Shape {
            diskful,
            diskless,
            protocol: Protocol::C,
            fresh_node: None,
            quorum: QuorumPolicy::Majority,
            csums: false,
            on_no_quorum: OnNoQuorum::IoError,
            two_primaries: false,
            split_brain: SplitBrainPolicy::Disconnect,
        }
    }

    fn random(rng: &mut Rng) -> Shape {
        let diskful = rng.range(2, 5) as usize;
        let diskless = if diskful.is_multiple_of(2) {
            rng.range(1, 2) as usize
        } else {
            rng.range(0, 1) as usize
        };
        let protocol = if rng.chance(25) {
            Protocol::A
        } else {
            Protocol::C
        };
        let fresh_node = if rng.chance(20) {
            Some(diskful as NodeId - 1)
        } else {
            None
        };
        Shape {
            diskful,
            diskless,
            protocol,
            fresh_node,
            quorum: QuorumPolicy::Majority,
            csums: false,
            on_no_quorum: OnNoQuorum::IoError,
            two_primaries: false,
            split_brain: SplitBrainPolicy::Disconnect,
        }
    }
}

/// Whether `seed` runs with suspend-io: from a hash of the seed, not from the run's
/// random stream, which stays as it was.
fn suspend_io_seed(seed: u64, percent: u64) -> bool {
    seed_share(seed ^ 0x5D5E_4D10_0C0F_FEE5, percent)
}

fn seed_share(mut x: u64, percent: u64) -> bool {
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    x % 100 < percent
}

struct Rng(u64);

/// One message's network latency: mostly short, now and then long.
fn net_latency(rng: &mut Rng) -> u64 {
    if rng.chance(2) {
        rng.range(50 * MS, 300 * MS)
    } else {
        rng.range(100, 3 * MS)
    }
}

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[derive(Debug)]
enum Ev {
    Deliver {
        to: NodeId,
        from: NodeId,
        conn: u64,
        msg: Msg,
    },
    Disconnected {
        node: NodeId,
        peer: NodeId,
        conn: u64,
    },
    DiskDone {
        node: NodeId,
        inc: u64,
        tag: u64,
    },
    Tick {
        node: NodeId,
        inc: u64,
    },
    /// The driver's grow of a node's backing completes.
    Grown {
        node: NodeId,
        inc: u64,
        size_blocks: u64,
    },
    Connect,
    Client,
    Chaos,
    Restart {
        node: NodeId,
    },
    Heal,
    Check,
}

#[derive(Debug)]
enum DiskOp {
    Write {
        block: u64,
        values: Vec<u64>,
        fua: bool,
    },
    Read {
        block: u64,
        count: u32,
    },
    Flush {
        snapshot: Vec<(u64, (u64, u64))>,
    },
}

#[derive(Debug)]
struct SimDisk {
    /// Stable contents: (value, version of the write that put it there).
    durable: Vec<(u64, u64)>,
    /// Written but not yet flushed: block -> (value, version).
    cache: BTreeMap<u64, (u64, u64)>,
    ops: BTreeMap<u64, DiskOp>,
    version: u64,
}

impl SimDisk {
    fn value(&self, b: u64) -> u64 {
        self.cache
            .get(&b)
            .map(|(v, _)| *v)
            .unwrap_or(self.durable[b as usize].0)
    }

    fn write(&mut self, b: u64, v: u64, fua: bool) {
        self.version += 1;
        if fua {
            self.cache.remove(&b);
            self.durable[b as usize] = (v, self.version);
        } else {
            self.cache.insert(b, (v, self.version));
        }
    }

    /// Makes what a flush saw in the cache when issued durable; never regresses a
    /// block that a later flush or FUA write already made newer.
    fn settle(&mut self, b: u64, v: u64, ver: u64) {
        if self.durable[b as usize].1 < ver {
            self.durable[b as usize] = (v, ver);
        }
        if self.cache.get(&b).is_some_and(|(_, cv)| *cv <= ver) {
            self.cache.remove(&b);
        }
    }
}

struct Node {
    id: NodeId,
    diskful: bool,
    cfg: Config,
    core: Option<Replica>,
    md: Persistent,
    disk: SimDisk,
    inc: u64,
    primary_since: Option<u64>,
    last_ok: Option<u64>,
    /// The disk fails every I/O (until the node restarts or heal replaces it).
    failing: bool,
}

struct Conn {
    id: u64,
    alive: bool,
    /// Delivery time of the last message per direction (lower id -> higher, reverse).
    last: [u64; 2],
}

#[derive(Debug, Clone)]
struct WriteRec {
    id: u64,
    acked_at: Option<u64>,
    durable: bool,
    /// Acked but not durable when a node crashed: it may be gone for good, and a
    /// later flush does not bring it back.
    maybe_lost: bool,
}

#[derive(Debug)]
enum ClientOp {
    Write {
        block: u64,
        count: u32,
        fua: bool,
    },
    Read {
        block: u64,
        count: u32,
        submitted: u64,
    },
    Flush {
        submitted: u64,
    },
}

struct Sim {
    rng: Rng,
    /// Latencies of the generation-settling messages (`UuidSettled`, `UuidUndone`),
    /// drawn apart so that adding them left every seed's other draws (the
    /// schedules) as they were.
    settle_rng: Rng,
    now: u64,
    seq: u64,
    queue: BTreeMap<(u64, u64), Ev>,
    nodes: Vec<Node>,
    conns: BTreeMap<(NodeId, NodeId), Conn>,
    /// Disconnect notices not yet delivered: (node, peer) -> connection.
    notices: BTreeMap<(NodeId, NodeId), u64>,
    cut: BTreeSet<(NodeId, NodeId)>,
    next_conn: u64,
    client_node: Option<NodeId>,
    last_primary: Option<NodeId>,
    protocol: Protocol,
    two_primaries: bool,
    inflight: BTreeMap<u64, (NodeId, ClientOp)>,
    next_id: u64,
    blocks: Vec<Vec<WriteRec>>,
    last_crash: u64,
    failover: Option<(NodeId, u64)>,
    /// allow-two-primaries: a live migration from the first node to the second, and
    /// when the second became primary too (the first is demoted some time later).
    migration: Option<(NodeId, NodeId, Option<u64>)>,
    promoting: BTreeSet<NodeId>,
    chaos_end: u64,
    healing: Option<u64>,
    done: bool,
    trace: Vec<String>,
    keep_trace: bool,
    /// Block whose every disk write is traced (SIM_WATCH_BLOCK).
    watch: Option<u64>,
    out: Outcome,
    violation: Option<(u8, String)>,
    /// Outcome of each client request, for scripted scenarios.
    results: BTreeMap<u64, bool>,
    /// Outcome of the last promotion per node, for scripted scenarios.
    promotions: BTreeMap<NodeId, Result<(), String>>,
    diskless_primaries: bool,
    disk_failures: bool,
    /// Values each successful client read returned, for scripted scenarios.
    read_values: BTreeMap<u64, Vec<u64>>,
    /// Outcome of the last resize per coordinating node, for scripted scenarios.
    resizes: BTreeMap<NodeId, Result<(), String>>,
    /// Chaos also runs online verify.
    verify_ops: bool,
}

fn pair(a: NodeId, b: NodeId) -> (NodeId, NodeId) {
    if a < b { (a, b) } else { (b, a) }
}

fn values_of(data: &[u8]) -> Vec<u64> {
    data.chunks(8)
        .map(|c| {
            let mut a = [0u8; 8];
            a[..c.len()].copy_from_slice(c);
            u64::from_le_bytes(a)
        })
        .collect()
}

fn bytes_of(values: &[u64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Runs one seed.
pub fn run(seed: u64, opts: &Options) -> Result<Outcome, Violation> {
    let mut sim = Sim::new(seed, opts);
    sim.main_loop();
    let trace = if opts.trace {
        sim.trace.clone()
    } else {
        sim.trace.iter().rev().take(60).rev().cloned().collect()
    };
    match sim.violation.take() {
        Some((invariant, message)) => Err(Violation {
            seed,
            invariant,
            message,
            trace,
        }),
        None => {
            let mut out = std::mem::take(&mut sim.out);
            out.trace = if opts.trace { trace } else { Vec::new() };
            Ok(out)
        }
    }
}

impl Sim {
    fn new(seed: u64, opts: &Options) -> Sim {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
        let mut shape = Shape::random(&mut rng);
        // Half the seeds resync by checksums; chosen from the seed without drawing
        // from the generator, so every seed's schedule stays what it was.
        shape.csums = seed.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 63 == 1;
        if suspend_io_seed(seed, opts.suspend_io_percent) {
            shape.on_no_quorum = OnNoQuorum::SuspendIo;
        }
        if seed_share(seed ^ 0x7A0F_11E5_D00D_2222, opts.two_primaries_percent) {
            shape.two_primaries = true;
            shape.protocol = Protocol::C;
        }
        let verify_ops = seed_share(seed ^ 0x0AD0_1234_5678_9ABC, opts.verify_percent);
        let mut sim = Sim::build(rng, shape, opts);
        sim.verify_ops = verify_ops;
        if verify_ops {
            sim.log("chaos includes online verify".into());
        }
        sim.schedule(50 * MS, Ev::Client);
        sim.schedule(500 * MS, Ev::Chaos);
        sim.schedule(opts.chaos_us, Ev::Heal);
        // Start with node 0 primary once connected.
        sim.promote_later(0, 300 * MS);
        sim
    }

    fn build(mut rng: Rng, shape: Shape, opts: &Options) -> Sim {
        let Shape {
            diskful,
            diskless,
            protocol,
            fresh_node,
            quorum,
            csums,
            on_no_quorum,
            two_primaries,
            split_brain,
        } = shape;
        let confs: Vec<NodeConf> = (0..(diskful + diskless))
            .map(|i| NodeConf {
                id: i as NodeId,
                diskful: i < diskful,
            })
            .collect();
        let mut nodes = Vec::new();
        for c in &confs {
            let cfg = Config {
                node: c.id,
                nodes: confs.clone(),
                size_blocks: BLOCKS,
                protocol,
                quorum,
                split_brain,
                al_extents: 12,
                extent_blocks: 8,
                resync_inflight: 8,
                resync_per_tick: 4,
                resync_rate_per_tick: None,
                promote_timeout_ms: 2000,
                grant_lease_ms: 1000,
                max_queued: 256,
                resync_csums: csums,
                on_no_quorum,
                max_held: 64,
                max_held_bytes: 64 * 4096,
                allow_two_primaries: two_primaries,
            };
            let md = if !c.diskful || fresh_node == Some(c.id) {
                Persistent::new_fresh(&cfg)
            } else {
                Persistent::new_in_sync(&cfg, 0x1000)
            };
            let core_seed = rng.next();
            nodes.push(Node {
                id: c.id,
                diskful: c.diskful,
                core: Some(Replica::new(cfg.clone(), md.clone(), core_seed)),
                cfg,
                md,
                disk: SimDisk {
                    durable: vec![(0, 0); CAPACITY as usize],
                    version: 0,
                    cache: BTreeMap::new(),
                    ops: BTreeMap::new(),
                },
                inc: 0,
                primary_since: None,
                last_ok: None,
                failing: false,
            });
        }
        let settle_rng = Rng(rng.0.rotate_left(17) ^ 0x5E77_1ED0_u64 | 1);
        let mut sim = Sim {
            rng,
            settle_rng,
            now: 0,
            seq: 0,
            queue: BTreeMap::new(),
            nodes,
            conns: BTreeMap::new(),
            notices: BTreeMap::new(),
            cut: BTreeSet::new(),
            next_conn: 1,
            client_node: None,
            last_primary: None,
            protocol,
            two_primaries,
            inflight: BTreeMap::new(),
            next_id: 1,
            blocks: vec![Vec::new(); CAPACITY as usize],
            last_crash: 0,
            failover: None,
            migration: None,
            promoting: BTreeSet::new(),
            chaos_end: opts.chaos_us,
            healing: None,
            done: false,
            trace: Vec::new(),
            keep_trace: opts.trace,
            watch: std::env::var("SIM_WATCH_BLOCK")
                .ok()
                .and_then(|v| v.parse().ok()),
            out: Outcome {
                diskful,
                diskless,
                ..Outcome::default()
            },
            violation: None,
            results: BTreeMap::new(),
            promotions: BTreeMap::new(),
            diskless_primaries: opts.diskless_primaries,
            disk_failures: opts.disk_failures,
            read_values: BTreeMap::new(),
            resizes: BTreeMap::new(),
            verify_ops: false,
        };
        sim.log(format!(
            "cluster: {diskful} diskful + {diskless} diskless, protocol {protocol:?}, fresh node {fresh_node:?}, csums {csums}, on-no-quorum {on_no_quorum:?}, two primaries {two_primaries}"
        ));
        for n in 0..sim.nodes.len() {
            let at = sim.rng.range(0, 100 * MS);
            sim.schedule(
                at,
                Ev::Tick {
                    node: n as NodeId,
                    inc: 0,
                },
            );
        }
        sim.schedule(0, Ev::Connect);
        sim
    }

    fn log(&mut self, s: String) {
        let line = format!("{:>10.3}ms {s}", self.now as f64 / 1000.0);
        self.trace.push(line);
        if !self.keep_trace && self.trace.len() > 4000 {
            self.trace.drain(..2000);
        }
    }

    fn schedule(&mut self, after: u64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((self.now + after, self.seq), ev);
    }

    fn violate(&mut self, invariant: u8, msg: String) {
        if self.violation.is_none() {
            self.log(format!("VIOLATION of invariant {invariant}: {msg}"));
            self.violation = Some((invariant, msg));
        }
    }

    fn main_loop(&mut self) {
        let hard_stop = self.chaos_end + 200_000 * MS;
        while let Some(((t, _), ev)) = self.queue.pop_first() {
            self.now = t;
            self.out.events += 1;
            self.event(ev);
            if self.violation.is_some() || self.done {
                return;
            }
            if self.now > hard_stop || self.out.events > 5_000_000 {
                self.violate(
                    5,
                    "simulation did not settle (event or time budget exhausted)".into(),
                );
                return;
            }
        }
    }

    fn event(&mut self, ev: Ev) {
        match ev {
            Ev::Deliver {
                to,
                from,
                conn,
                msg,
            } => {
                let live = self
                    .conns
                    .get(&pair(to, from))
                    .is_some_and(|c| c.alive && c.id == conn);
                if live {
                    match &msg {
                        Msg::Hello(h) => self.log(format!(
                            "n{to} <- n{from} hello r{} {:?} {:?} cur {:x}{} known {:x} (parent {:x}) settled {:x} dirty {} seq {:x} pp {} crashed {} hist {:x?} bm {:x?}",
                            h.round, h.role, h.disk, h.current, if h.unsettled { " (unsettled)" } else { "" }, h.known_current, h.known_parent, h.settled, h.dirty_blocks, h.last_seq, h.primary_present, h.crashed_primary, h.history, h.bitmap_uuids
                        )),
                        Msg::ResyncDone { current, last_seq, .. } => {
                            self.log(format!("n{to} <- n{from} resync done cur {current:x} seq {last_seq:x}"))
                        }
                        Msg::NewUuid { current, previous, lost } => {
                            self.log(format!("n{to} <- n{from} new uuid {current:x} prev {previous:x} lost {lost:b}"))
                        }
                        Msg::UuidSettled { current } => {
                            self.log(format!("n{to} <- n{from} settled {current:x}"))
                        }
                        Msg::UuidUndone { current } => {
                            self.log(format!("n{to} <- n{from} undone back to {current:x}"))
                        }
                        Msg::InSync { mask } => self.log(format!("n{to} <- n{from} insync {mask:b}")),
                        Msg::VerifyResult { block, equal: false } => {
                            self.log(format!("n{to} <- n{from} verify: block {block} differs"))
                        }
                        Msg::Write { seq, block, count, targets, .. }
                            if self.watch.is_some_and(|w| w >= *block && w < block + u64::from(*count)) =>
                        {
                            self.log(format!("n{to} <- n{from} write seq {seq:x} covering the watched block, targets {targets:b}"));
                        }
                        Msg::Bitmap { round, word_offset, words, last } => {
                            if let Some(w) = self.watch {
                                let wi = (w / 64) as usize;
                                let off = *word_offset as usize;
                                let set = wi >= off && words.get(wi - off).is_some_and(|x| x & (1 << (w % 64)) != 0);
                                self.log(format!("n{to} <- n{from} bitmap r{round} last {last}: watched block {}", if set { "SET" } else { "clear" }));
                            }
                        }
                        _ => {}
                    }
                    self.feed(to, Event::Message { from, msg });
                }
            }
            Ev::Disconnected { node, peer, conn } => {
                // A notice for a connection of an earlier incarnation is void.
                if self.notices.get(&(node, peer)) == Some(&conn) {
                    self.notices.remove(&(node, peer));
                    self.feed(node, Event::PeerDisconnected { peer });
                }
            }
            Ev::DiskDone { node, inc, tag } => self.disk_done(node, inc, tag),
            Ev::Grown {
                node,
                inc,
                size_blocks,
            } => {
                let n = &mut self.nodes[node as usize];
                if n.inc != inc || n.core.is_none() {
                    return;
                }
                let result = if n.failing {
                    Err("I/O error".to_owned())
                } else if size_blocks > CAPACITY {
                    Err(format!("the disk holds at most {CAPACITY} blocks"))
                } else {
                    // Durable from here: a restart opens at the new size.
                    n.cfg.size_blocks = size_blocks;
                    Ok(())
                };
                self.log(format!("n{node} grew to {size_blocks} blocks: {result:?}"));
                self.feed(
                    node,
                    Event::GrowDone {
                        size_blocks,
                        result,
                    },
                );
            }
            Ev::Tick { node, inc } => {
                if self.nodes[node as usize].inc == inc && self.nodes[node as usize].core.is_some()
                {
                    let now_ms = self.now / MS;
                    self.feed(node, Event::Tick { now: now_ms });
                    self.schedule(100 * MS, Ev::Tick { node, inc });
                }
            }
            Ev::Connect => {
                self.try_connect();
                self.schedule(200 * MS, Ev::Connect);
            }
            Ev::Client => {
                self.client_step();
                let next = self.rng.range(MS, 8 * MS);
                self.schedule(next, Ev::Client);
            }
            Ev::Chaos => {
                if self.healing.is_none() {
                    self.chaos_step();
                    let next = self.rng.range(200 * MS, 1500 * MS);
                    self.schedule(next, Ev::Chaos);
                }
            }
            Ev::Restart { node } => self.restart(node),
            Ev::Heal => self.heal(),
            Ev::Check => self.check_quiescent(),
        }
    }

    /// Hands one event to a node's core and carries out its actions.
    fn feed(&mut self, node: NodeId, ev: Event) {
        let n = &mut self.nodes[node as usize];
        let Some(core) = n.core.as_mut() else { return };
        let actions = core.handle(ev);
        for a in actions {
            self.action(node, a);
            if self.nodes[node as usize].core.is_none() {
                return;
            }
        }
        self.check_writers(node);
    }

    fn action(&mut self, node: NodeId, a: Action) {
        let inc = self.nodes[node as usize].inc;
        match a {
            Action::DiskWrite {
                tag,
                block,
                count: _,
                data,
                fua,
            } => {
                let values = values_of(&data);
                let lat = self.disk_latency();
                self.nodes[node as usize]
                    .disk
                    .ops
                    .insert(tag, DiskOp::Write { block, values, fua });
                self.schedule(lat, Ev::DiskDone { node, inc, tag });
            }
            Action::DiskRead { tag, block, count } => {
                let lat = self.disk_latency();
                self.nodes[node as usize]
                    .disk
                    .ops
                    .insert(tag, DiskOp::Read { block, count });
                self.schedule(lat, Ev::DiskDone { node, inc, tag });
            }
            Action::DiskFlush { tag } => {
                let snapshot: Vec<(u64, (u64, u64))> = self.nodes[node as usize]
                    .disk
                    .cache
                    .iter()
                    .map(|(b, v)| (*b, *v))
                    .collect();
                let lat = self.disk_latency() * 2;
                self.nodes[node as usize]
                    .disk
                    .ops
                    .insert(tag, DiskOp::Flush { snapshot });
                self.schedule(lat, Ev::DiskDone { node, inc, tag });
            }
            Action::PersistMd(md) => {
                if let Some(w) = self.watch {
                    let before = &self.nodes[node as usize].md;
                    let mut changes = Vec::new();
                    for (peer, bm) in &md.bitmaps {
                        let was = before.bitmaps.get(peer).is_some_and(|b| b.get(w));
                        if was != bm.get(w) {
                            changes.push(format!(
                                "bit for n{peer} {}",
                                if bm.get(w) { "set" } else { "cleared" }
                            ));
                        }
                    }
                    let ext = w / 8;
                    let (was_al, now_al) = (before.al.contains(&ext), md.al.contains(&ext));
                    if was_al != now_al {
                        changes.push(format!(
                            "extent {ext} {} the activity log",
                            if now_al { "enters" } else { "leaves" }
                        ));
                    }
                    if !changes.is_empty() {
                        let line =
                            format!("n{node} persisted: watched block {}", changes.join(", "));
                        self.log(line);
                    }
                }
                self.nodes[node as usize].md = *md;
            }
            Action::Send { to, msg } => self.send(node, to, msg),
            Action::Disconnect { peer } => self.close_conn(node, peer, 1, 20),
            Action::Complete { id, result } => self.complete(node, id, result),
            Action::PromoteResult(r) => {
                self.promoting.remove(&node);
                self.promotions.insert(node, r.clone());
                match r {
                    Ok(()) => self.promoted(node),
                    Err(e) => self.log(format!("n{node} promotion refused: {e}")),
                }
            }
            Action::Grow { size_blocks } => {
                let lat = self.disk_latency() * 4;
                self.schedule(
                    lat,
                    Ev::Grown {
                        node,
                        inc,
                        size_blocks,
                    },
                );
            }
            Action::ResizeResult(r) => {
                self.log(format!("n{node} resize: {r:?}"));
                self.resizes.insert(node, r);
            }
            Action::State(s) => {
                if let replica::core::StateChange::Role(Role::Secondary) = s {
                    self.nodes[node as usize].primary_since = None;
                }
                if let replica::core::StateChange::Size(b) = s {
                    // A diskless node takes the committed size at its next start.
                    let n = &mut self.nodes[node as usize];
                    if !n.diskful {
                        n.cfg.size_blocks = n.cfg.size_blocks.max(b);
                    }
                }
                self.log(format!("n{node} {s:?}"));
            }
        }
    }

    fn disk_latency(&mut self) -> u64 {
        if self.rng.chance(3) {
            self.rng.range(5 * MS, 30 * MS)
        } else {
            self.rng.range(50, 2 * MS)
        }
    }

    fn disk_done(&mut self, node: NodeId, inc: u64, tag: u64) {
        let n = &mut self.nodes[node as usize];
        if n.inc != inc || n.core.is_none() {
            return;
        }
        let Some(op) = n.disk.ops.remove(&tag) else {
            return;
        };
        if n.failing {
            // A failed disk: nothing is written, read or flushed.
            self.log(format!("n{node} disk: I/O error"));
            self.feed(
                node,
                Event::DiskDone {
                    tag,
                    ok: false,
                    data: None,
                },
            );
            return;
        }
        let data = match op {
            DiskOp::Write { block, values, fua } => {
                if let Some(w) = self.watch
                    && w >= block
                    && w < block + values.len() as u64
                {
                    let v = values[(w - block) as usize];
                    let line = format!(
                        "n{node} disk: block {w} := {v}{}",
                        if fua { " (fua)" } else { "" }
                    );
                    self.log(line);
                }
                let n = &mut self.nodes[node as usize];
                for (i, v) in values.iter().enumerate() {
                    let b = block + i as u64;
                    n.disk.write(b, *v, fua);
                }
                None
            }
            DiskOp::Read { block, count } => {
                let n = &mut self.nodes[node as usize];
                let v: Vec<u64> = (block..block + u64::from(count))
                    .map(|b| n.disk.value(b))
                    .collect();
                if let Some(w) = self.watch
                    && w >= block
                    && w < block + u64::from(count)
                {
                    let line =
                        format!("n{node} disk: read block {w} = {}", v[(w - block) as usize]);
                    self.log(line);
                }
                Some(bytes_of(&v))
            }
            DiskOp::Flush { snapshot } => {
                let n = &mut self.nodes[node as usize];
                for (b, (v, ver)) in snapshot {
                    n.disk.settle(b, v, ver);
                }
                None
            }
        };
        self.feed(
            node,
            Event::DiskDone {
                tag,
                ok: true,
                data,
            },
        );
    }

    // ---- network ----

    fn send(&mut self, from: NodeId, to: NodeId, msg: Msg) {
        // Every message goes through the real codec.
        let bytes = msg.encode();
        let decoded = match Msg::decode(&bytes) {
            Ok((m, used)) if used == bytes.len() && m == msg => m,
            other => {
                self.violate(
                    0,
                    format!("wire codec round trip failed for {msg:?}: {other:?}"),
                );
                return;
            }
        };
        if matches!(decoded, Msg::ResyncData { .. }) {
            self.out.resync_blocks += 1;
        }
        let lat = if matches!(decoded, Msg::UuidSettled { .. } | Msg::UuidUndone { .. }) {
            net_latency(&mut self.settle_rng)
        } else {
            net_latency(&mut self.rng)
        };
        let now = self.now;
        if let Msg::Write {
            seq, block, count, ..
        } = &decoded
            && self
                .watch
                .is_some_and(|w| w >= *block && w < block + u64::from(*count))
        {
            let up = self.conns.get(&pair(from, to)).map(|c| c.id);
            self.log(format!(
                "n{from} -> n{to} write seq {seq:x} covering the watched block (connection {up:?})"
            ));
        }
        let Some(c) = self.conns.get_mut(&pair(from, to)) else {
            return;
        };
        if !c.alive {
            return;
        }
        let dir = usize::from(from > to);
        let at = c.last[dir].max(now + lat);
        c.last[dir] = at;
        let id = c.id;
        self.schedule(
            at - now,
            Ev::Deliver {
                to,
                from,
                conn: id,
                msg: decoded,
            },
        );
    }

    fn close_conn(&mut self, a: NodeId, b: NodeId, lo_ms: u64, hi_ms: u64) {
        let key = pair(a, b);
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        if !c.alive {
            return;
        }
        c.alive = false;
        let conn = c.id;
        self.conns.remove(&key);
        self.log(format!("connection n{a}-n{b} closed"));
        for (x, y) in [(a, b), (b, a)] {
            if self.nodes[x as usize].core.is_some() {
                self.notices.insert((x, y), conn);
                let d = self.rng.range(lo_ms * MS, hi_ms * MS);
                self.schedule(
                    d,
                    Ev::Disconnected {
                        node: x,
                        peer: y,
                        conn,
                    },
                );
            }
        }
    }

    fn try_connect(&mut self) {
        let n = self.nodes.len() as NodeId;
        for a in 0..n {
            for b in (a + 1)..n {
                if self.conns.contains_key(&(a, b))
                    || self.cut.contains(&(a, b))
                    || self.notices.contains_key(&(a, b))
                    || self.notices.contains_key(&(b, a))
                {
                    continue;
                }
                let (Some(ca), Some(cb)) =
                    (&self.nodes[a as usize].core, &self.nodes[b as usize].core)
                else {
                    continue;
                };
                if !ca.wants_connection(b) || !cb.wants_connection(a) {
                    continue;
                }
                let id = self.next_conn;
                self.next_conn += 1;
                self.conns.insert(
                    (a, b),
                    Conn {
                        id,
                        alive: true,
                        last: [self.now, self.now],
                    },
                );
                self.log(format!("connection n{a}-n{b} up"));
                let (first, second) = if self.rng.chance(50) { (a, b) } else { (b, a) };
                let other = |x: NodeId| if x == a { b } else { a };
                self.feed(first, Event::PeerConnected { peer: other(first) });
                self.feed(
                    second,
                    Event::PeerConnected {
                        peer: other(second),
                    },
                );
            }
        }
    }

    // ---- faults ----

    fn chaos_step(&mut self) {
        let n = self.nodes.len() as u64;
        if self.verify_ops && self.rng.chance(8) {
            let a = self.rng.below(n) as NodeId;
            if self.nodes[a as usize].core.is_some() {
                self.out.verifies += 1;
                self.log(format!("chaos: verify on n{a}"));
                self.feed(a, Event::Admin(Admin::Verify { peer: None }));
            }
            return;
        }
        let roll = self.rng.below(100);
        let a = self.rng.below(n) as NodeId;
        let mut b = self.rng.below(n) as NodeId;
        if a == b {
            b = ((u64::from(b) + 1) % n) as NodeId;
        }
        match roll {
            0..=21 => {
                if self.cut.insert(pair(a, b)) {
                    self.out.cuts += 1;
                    self.log(format!("chaos: cut link n{a}-n{b}"));
                    self.close_conn(a, b, 300, 1500);
                }
            }
            22..=41 => {
                if let Some(&l) = self
                    .cut
                    .iter()
                    .nth(self.rng.below(self.cut.len().max(1) as u64) as usize)
                {
                    self.cut.remove(&l);
                    self.log(format!("chaos: heal link n{}-n{}", l.0, l.1));
                }
            }
            42..=51 => {
                if self.nodes[a as usize].core.is_some() {
                    self.crash(a);
                    let d = self.rng.range(300 * MS, 4000 * MS);
                    self.schedule(d, Ev::Restart { node: a });
                }
            }
            52..=61 => {
                if self.conns.contains_key(&pair(a, b)) {
                    self.log(format!("chaos: reset connection n{a}-n{b}"));
                    self.close_conn(a, b, 1, 50);
                }
            }
            62..=64 if self.disk_failures => {
                if self.nodes[a as usize].diskful
                    && self.nodes[a as usize].core.is_some()
                    && !self.nodes[a as usize].failing
                {
                    self.log(format!("chaos: disk of n{a} fails"));
                    self.out.disk_failures += 1;
                    self.nodes[a as usize].failing = true;
                }
            }
            62..=76 => {
                let target = self.rng.below(self.nodes.len() as u64) as NodeId;
                let eligible = self.nodes[target as usize].diskful
                    || (self.diskless_primaries && self.rng.chance(30));
                if eligible && self.failover.is_none() {
                    self.log(format!("chaos: failover to n{target}"));
                    self.failover = Some((target, self.now));
                }
            }
            77..=88 => {
                let has_primary = self.client_node.is_some_and(|c| {
                    self.nodes[c as usize]
                        .core
                        .as_ref()
                        .is_some_and(|r| r.role() == Role::Primary)
                });
                if !has_primary
                    && (self.nodes[a as usize].diskful
                        || (self.diskless_primaries && self.rng.chance(30)))
                {
                    self.promote_later(a, 0);
                }
            }
            _ => {
                self.log(format!("chaos: isolate n{a}"));
                for o in 0..n as NodeId {
                    if o != a && self.cut.insert(pair(a, o)) {
                        self.out.cuts += 1;
                        self.close_conn(a, o, 300, 1500);
                    }
                }
            }
        }
    }

    /// Acked writes that are not durable may be gone from now on.
    fn forget_volatile(&mut self) {
        self.last_crash = self.now;
        for recs in &mut self.blocks {
            for r in recs.iter_mut() {
                if r.acked_at.is_some() && !r.durable {
                    r.maybe_lost = true;
                }
            }
        }
    }

    fn crash(&mut self, node: NodeId) {
        self.out.crashes += 1;
        self.forget_volatile();
        self.log(format!("chaos: crash n{node}"));
        let peers: Vec<NodeId> = (0..self.nodes.len() as NodeId)
            .filter(|p| *p != node)
            .collect();
        for p in peers {
            self.close_conn(node, p, 300, 1500);
            self.notices.remove(&(node, p));
        }
        let keep: Vec<bool> = (0..self.nodes[node as usize].disk.cache.len())
            .map(|_| self.rng.chance(50))
            .collect();
        let n = &mut self.nodes[node as usize];
        n.core = None;
        n.inc += 1;
        n.primary_since = None;
        n.disk.ops.clear();
        let cache = std::mem::take(&mut n.disk.cache);
        for ((b, (v, ver)), k) in cache.into_iter().zip(keep) {
            if k {
                n.disk.settle(b, v, ver);
            }
        }
        if self.client_node == Some(node) {
            self.client_node = None;
        }
        self.inflight.retain(|_, (at, _)| *at != node);
        self.promoting.remove(&node);
    }

    fn restart(&mut self, node: NodeId) {
        if self.nodes[node as usize].core.is_some() {
            return;
        }
        let seed = self.rng.next();
        let n = &mut self.nodes[node as usize];
        // A restart comes back with a working disk (replaced or repaired).
        n.failing = false;
        n.core = Some(Replica::new(n.cfg.clone(), n.md.clone(), seed));
        let inc = n.inc;
        let (dirty, al) = (
            self.nodes[node as usize].md.dirty,
            self.nodes[node as usize].md.al.clone(),
        );
        self.log(format!(
            "restart n{node} (metadata dirty {dirty}, activity log {al:?})"
        ));
        self.schedule(MS, Ev::Tick { node, inc });
    }

    fn heal(&mut self) {
        self.log("heal: links restored, crashed nodes restarted, client stopped".into());
        self.cut.clear();
        for n in 0..self.nodes.len() as NodeId {
            self.restart(n);
        }
        // Failed disks are replaced and attached again (a detached primary steps
        // down first: a primary cannot take the full resync that follows).
        for n in 0..self.nodes.len() as NodeId {
            let detached = self.nodes[n as usize]
                .core
                .as_ref()
                .is_some_and(|c| c.status().detached.is_some());
            self.nodes[n as usize].failing = false;
            if detached {
                self.log(format!("admin: secondary and attach on n{n}"));
                self.feed(n, Event::Admin(Admin::Secondary));
                self.feed(n, Event::Admin(Admin::Attach));
            }
        }
        self.failover = None;
        self.healing = Some(self.now);
        self.schedule(500 * MS, Ev::Check);
    }

    // ---- admin ----

    fn promote_later(&mut self, node: NodeId, _after: u64) {
        if self.promoting.contains(&node) || self.healing.is_some() {
            return;
        }
        if self.nodes[node as usize].core.is_none() {
            return;
        }
        self.promoting.insert(node);
        self.log(format!("admin: primary on n{node}"));
        self.feed(node, Event::Admin(Admin::Primary { force: false }));
    }

    fn promoted(&mut self, node: NodeId) {
        if let Some((from, to, None)) = self.migration
            && to == node
        {
            let via = self.nodes[node as usize]
                .core
                .as_ref()
                .and_then(|c| c.status().writes_via);
            if via == Some(from) {
                self.migration = Some((from, to, Some(self.now)));
            } else {
                // The source was out of reach: the target became primary on its
                // own, a failover after all, and the source is demoted as one.
                self.migration = None;
                self.log(format!("admin: secondary on n{from} (n{to} took over)"));
                self.feed(from, Event::Admin(Admin::Secondary));
            }
        }
        self.out.promotions += 1;
        self.log(format!("n{node} is primary"));
        let Some(core) = &self.nodes[node as usize].core else {
            return;
        };
        // A diskless primary's data is that of the peers it reads from.
        let sources = if core.disk() == Disk::Diskless {
            core.data_peers()
        } else {
            vec![node]
        };
        if core.disk() != Disk::Diskless && core.disk() != Disk::UpToDate {
            let d = core.disk();
            self.violate(3, format!("n{node} promoted with disk {d:?}"));
            return;
        }
        if sources.is_empty() {
            self.violate(
                3,
                format!("n{node} promoted without a disk and without an UpToDate peer"),
            );
            return;
        }
        self.nodes[node as usize].primary_since = Some(self.now);
        // Protocol A acknowledges a write before any peer has it: failing over to
        // another node may lose it, like a crash (only FLUSH/FUA promise more).
        if self.protocol == Protocol::A && self.last_primary.is_some_and(|p| p != node) {
            self.forget_volatile();
        }
        self.last_primary = Some(node);
        self.client_node = Some(node);
        for s in sources {
            self.check_durable(s, &format!("serving n{node} at its promotion"));
        }
    }

    // ---- client and oracle ----

    fn client_step(&mut self) {
        if self.healing.is_some() {
            return;
        }
        if let Some((from, to, since)) = self.migration {
            let from_primary = self.nodes[from as usize]
                .core
                .as_ref()
                .is_some_and(|c| c.role() == Role::Primary);
            match since {
                None if !self.promoting.contains(&to) && self.client_node != Some(to) => {
                    // The target's promotion was refused: the VM stays.
                    self.migration = None;
                }
                Some(t) if !from_primary || self.now > t + 1500 * MS => {
                    self.migration = None;
                    if from_primary {
                        self.log(format!("admin: secondary on n{from} (migrated to n{to})"));
                        self.feed(from, Event::Admin(Admin::Secondary));
                    }
                }
                _ => {}
            }
        }
        if let Some((target, since)) = self.failover {
            let pending = self.inflight.len();
            let old = self.client_node;
            if self.two_primaries
                && let Some(o) = old
                && o != target
                && self.migration.is_none()
            {
                // A live migration: the target becomes primary next to the source.
                self.failover = None;
                self.log(format!("chaos: migrate n{o} -> n{target}"));
                self.migration = Some((o, target, None));
                self.promote_later(target, 0);
                return;
            }
            if pending == 0 || self.now > since + 3000 * MS {
                self.failover = None;
                if let Some(o) = old {
                    self.log(format!("admin: secondary on n{o}"));
                    self.feed(o, Event::Admin(Admin::Secondary));
                    self.client_node = None;
                }
                self.promote_later(target, 0);
            }
            return;
        }
        let Some(node) = self.client_node else {
            // No primary: the administrator tries one now and then.
            if self.promoting.is_empty() && self.rng.chance(2) {
                let c = self.rng.below(self.nodes.len() as u64) as NodeId;
                if self.nodes[c as usize].diskful
                    || (self.diskless_primaries && self.rng.chance(30))
                {
                    self.promote_later(c, 0);
                }
            }
            return;
        };
        if self.inflight.len() >= 8 {
            return;
        }
        // During a migration the client writes through both primaries.
        let node = match self.migration {
            Some((from, _, Some(_))) if self.rng.chance(50) => from,
            _ => node,
        };
        let roll = self.rng.below(100);
        let id = self.next_id;
        self.next_id += 1;
        if roll < 62 {
            let count = self.rng.range(1, 4) as u32;
            let block = self.rng.below(BLOCKS - u64::from(count) + 1);
            let overlaps = self.inflight.values().any(|(_, op)| match op {
                ClientOp::Write {
                    block: b, count: c, ..
                } => *b < block + u64::from(count) && block < b + u64::from(*c),
                _ => false,
            });
            if overlaps {
                return;
            }
            let fua = self.rng.chance(8);
            self.submit_write(id, node, block, count, fua);
        } else if roll < 88 {
            let count = self.rng.range(1, 4) as u32;
            let block = self.rng.below(BLOCKS - u64::from(count) + 1);
            self.inflight.insert(
                id,
                (
                    node,
                    ClientOp::Read {
                        block,
                        count,
                        submitted: self.now,
                    },
                ),
            );
            self.feed(node, Event::ClientRead { id, block, count });
        } else {
            self.inflight.insert(
                id,
                (
                    node,
                    ClientOp::Flush {
                        submitted: self.now,
                    },
                ),
            );
            self.feed(node, Event::ClientFlush { id });
        }
    }

    /// Records a client write in the oracle and hands it to `node`.
    fn submit_write(&mut self, id: u64, node: NodeId, block: u64, count: u32, fua: bool) {
        for b in block..block + u64::from(count) {
            self.blocks[b as usize].push(WriteRec {
                id,
                acked_at: None,
                durable: false,
                maybe_lost: false,
            });
        }
        self.log(format!(
            "client: write {id} to blocks {block}..{} on n{node}",
            block + u64::from(count)
        ));
        self.inflight
            .insert(id, (node, ClientOp::Write { block, count, fua }));
        let data = bytes_of(&vec![id; count as usize]).into();
        self.feed(
            node,
            Event::ClientWrite {
                id,
                block,
                count,
                data,
                fua,
            },
        );
    }

    fn complete(
        &mut self,
        node: NodeId,
        id: u64,
        result: Result<Option<Vec<u8>>, replica::core::IoError>,
    ) {
        let Some((at, op)) = self.inflight.remove(&id) else {
            return;
        };
        if at != node {
            self.violate(
                0,
                format!("n{node} completed request {id} that was sent to n{at}"),
            );
            return;
        }
        let refused_on_arrival =
            matches!(result, Err(IoError::OutOfRange | IoError::SuspendedFull));
        let suspended = self.nodes[node as usize]
            .core
            .as_ref()
            .and_then(|c| c.suspended());
        if let Some(why) = suspended
            && !refused_on_arrival
        {
            self.violate(
                6,
                format!(
                    "n{node} completed request {id} ({result:?}) while its I/O is suspended ({why:?})"
                ),
            );
            return;
        }
        let ok = result.is_ok();
        self.results.insert(id, ok);
        match op {
            ClientOp::Write { block, count, fua } => {
                self.log(format!("client: write {id} -> {result:?}"));
                if ok {
                    self.out.writes_acked += 1;
                    for b in block..block + u64::from(count) {
                        if let Some(r) = self.blocks[b as usize].iter_mut().find(|r| r.id == id) {
                            r.acked_at = Some(self.now);
                            r.durable |= fua;
                        }
                    }
                }
            }
            ClientOp::Flush { submitted } => {
                self.log(format!(
                    "client: flush {id} (sent {submitted}us) -> {result:?}"
                ));
                if ok {
                    for recs in &mut self.blocks {
                        for r in recs.iter_mut() {
                            if r.acked_at.is_some_and(|t| t <= submitted) && !r.maybe_lost {
                                r.durable = true;
                            }
                        }
                    }
                }
            }
            ClientOp::Read {
                block,
                count,
                submitted,
            } => {
                if let Ok(Some(data)) = result {
                    self.out.reads_checked += 1;
                    let vals = values_of(&data);
                    self.read_values.insert(id, vals.clone());
                    for (i, v) in vals.iter().enumerate().take(count as usize) {
                        let b = block + i as u64;
                        if let Err(e) = self.allowed(b, *v, Some(submitted)) {
                            self.violate(
                                2,
                                format!(
                                    "read on n{node} of block {b} at {submitted}us returned {e}"
                                ),
                            );
                            return;
                        }
                    }
                }
            }
        }
        if ok && self.violation.is_none() {
            self.nodes[node as usize].last_ok = Some(self.now);
        }
    }

    /// Whether `v` may be the content of block `b`: for a read submitted at `read_at`,
    /// at least the latest write acknowledged before it (or, after a crash, the latest
    /// durable one); otherwise at least the latest durable write.
    fn allowed(&self, b: u64, v: u64, read_at: Option<u64>) -> Result<(), String> {
        let recs = &self.blocks[b as usize];
        if v != 0 && !recs.iter().any(|r| r.id == v) {
            return Err(format!("{v}, which was never written to this block"));
        }
        let durable = recs.iter().rev().find(|r| r.durable).map(|r| r.id);
        let floor = match read_at {
            Some(t) => {
                let acked = recs
                    .iter()
                    .rev()
                    .find(|r| r.acked_at.is_some_and(|a| a < t));
                match acked {
                    Some(r) if r.durable || r.acked_at.is_some_and(|a| a > self.last_crash) => {
                        Some(r.id)
                    }
                    _ => durable,
                }
            }
            None => durable,
        };
        match floor {
            Some(f) if v < f => Err(format!("{v}, older than write {f} which must be visible")),
            _ => Ok(()),
        }
    }

    fn check_durable(&mut self, node: NodeId, when: &str) {
        for b in 0..CAPACITY {
            let v = self.nodes[node as usize].disk.value(b);
            if let Err(e) = self.allowed(b, v, None) {
                self.violate(1, format!("n{node} {when}: block {b} holds {e}"));
                return;
            }
        }
    }

    /// Invariant 3: two primaries never both complete writes in overlapping periods,
    /// unless allow-two-primaries is on and one orders the other's writes.
    fn check_writers(&mut self, node: NodeId) {
        let Some(since) = self.nodes[node as usize].primary_since else {
            return;
        };
        let Some(last) = self.nodes[node as usize].last_ok else {
            return;
        };
        if last < since {
            return;
        }
        for o in &self.nodes {
            if o.id == node {
                continue;
            }
            let is_primary = o.core.as_ref().is_some_and(|c| c.role() == Role::Primary);
            let via = |n: &Node| n.core.as_ref().and_then(|c| c.status().writes_via);
            if self.two_primaries
                && (via(o) == Some(node) || via(&self.nodes[node as usize]) == Some(o.id))
            {
                continue;
            }
            if let (true, Some(os), Some(ol)) = (is_primary, o.primary_since, o.last_ok)
                && ol >= since
                && last >= os
            {
                let msg = format!("n{node} and n{} both completed writes as primaries", o.id);
                self.violate(3, msg);
                return;
            }
        }
    }

    fn check_quiescent(&mut self) {
        let Some(start) = self.healing else { return };
        let mut why = None;
        'outer: for n in &self.nodes {
            let Some(core) = &n.core else {
                why = Some(format!("n{} is down", n.id));
                break;
            };
            let st = core.status();
            if n.diskful && st.disk != Disk::UpToDate {
                why = Some(format!("n{} disk is {:?}", n.id, st.disk));
                break;
            }
            if st.pending_writes > 0 {
                why = Some(format!(
                    "n{} has {} writes pending",
                    n.id, st.pending_writes
                ));
                break;
            }
            if let Some(s) = st.suspended {
                why = Some(format!("n{} has its I/O suspended ({s:?})", n.id));
                break;
            }
            for p in &st.peers {
                if p.conn != ConnState::Connected
                    || !matches!(p.repl, Repl::Established | Repl::Deferred)
                {
                    why = Some(format!(
                        "n{} sees n{} as {:?}/{:?}",
                        n.id, p.id, p.conn, p.repl
                    ));
                    break 'outer;
                }
                if p.out_of_sync_blocks > 0 {
                    why = Some(format!(
                        "n{} has {} blocks marked for n{}",
                        n.id, p.out_of_sync_blocks, p.id
                    ));
                    break 'outer;
                }
            }
        }
        match why {
            None => {
                self.out.healed_after_us = self.now - start;
                self.check_all_answered();
                self.final_checks();
                self.done = true;
            }
            Some(w) if self.now > start + self.heal_bound() => {
                let reasons: Vec<String> = self
                    .nodes
                    .iter()
                    .filter_map(|n| {
                        let core = n.core.as_ref()?;
                        let sa: Vec<String> = core
                            .status()
                            .peers
                            .iter()
                            .filter_map(|p| {
                                core.standalone_reason(p.id)
                                    .map(|r| format!("n{}->n{}: {r}", n.id, p.id))
                            })
                            .collect();
                        Some(sa.join("; "))
                    })
                    .filter(|s| !s.is_empty())
                    .collect();
                let internals: Vec<String> = self
                    .nodes
                    .iter()
                    .filter_map(|n| {
                        n.core
                            .as_ref()
                            .map(|c| format!("n{}: {}", n.id, c.debug_summary()))
                    })
                    .collect();
                for l in internals {
                    self.log(l);
                }
                self.violate(
                    5,
                    format!(
                        "not healed {}s after healing: {w}. {}",
                        self.heal_bound() / 1_000_000,
                        reasons.join(" | ")
                    ),
                );
            }
            Some(_) => self.schedule(500 * MS, Ev::Check),
        }
    }

    /// Invariant 6: once healed, every request sent to a node that is still up has
    /// been answered (a held request completes when its suspension ends).
    fn check_all_answered(&mut self) {
        let open: Vec<String> = self
            .inflight
            .iter()
            .filter(|(_, (n, _))| self.nodes[*n as usize].core.is_some())
            .map(|(id, (n, op))| format!("{op:?} {id} on n{n}"))
            .collect();
        if !open.is_empty() {
            let internals: Vec<String> = self
                .nodes
                .iter()
                .filter_map(|n| {
                    n.core
                        .as_ref()
                        .map(|c| format!("n{}: {}", n.id, c.debug_summary()))
                })
                .collect();
            for l in internals {
                self.log(l);
            }
            self.violate(
                6,
                format!("requests never answered after healing: {}", open.join(", ")),
            );
        }
    }

    fn heal_bound(&self) -> u64 {
        120_000 * MS
    }

    fn final_checks(&mut self) {
        let diskful: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|n| n.diskful)
            .map(|n| n.id)
            .collect();
        let Some(&first) = diskful.first() else {
            return;
        };
        for &n in &diskful {
            self.check_durable(n, "after healing");
            if self.violation.is_some() {
                return;
            }
            for b in 0..CAPACITY {
                let (x, y) = (
                    self.nodes[first as usize].disk.value(b),
                    self.nodes[n as usize].disk.value(b),
                );
                if x != y {
                    let all: Vec<String> = self
                        .nodes
                        .iter()
                        .filter(|m| m.diskful)
                        .map(|m| format!("n{}={}", m.id, m.disk.value(b)))
                        .collect();
                    let recs = format!("{:?}", self.blocks[b as usize]);
                    self.violate(
                        4,
                        format!("after healing n{first} and n{n} differ at block {b}: {x} vs {y}; all: {}; writes: {recs}", all.join(" ")),
                    );
                    return;
                }
            }
        }
        let mut s = String::new();
        let _ = write!(
            s,
            "healed and identical after {:.1}s",
            self.out.healed_after_us as f64 / 1e6
        );
        self.log(s);
    }
}

/// Runs seeds `start..start+count`; returns the first violation, if any.
pub fn run_many(start: u64, count: u64, opts: &Options) -> Result<Vec<Outcome>, Violation> {
    (start..start + count).map(|s| run(s, opts)).collect()
}

/// Runs seeds `from..to` and compares them with the seeds known to fail (seed,
/// invariant): `Err` lists every seed that fails unexpectedly, fails another
/// invariant than listed, or no longer fails (so a known list can only shrink). `Ok`
/// carries the outcomes of the seeds that passed.
pub fn check_known(
    from: u64,
    to: u64,
    opts: &Options,
    known: &[(u64, u8)],
) -> Result<Vec<Outcome>, String> {
    let mut failures = Vec::new();
    let mut passed = Vec::new();
    for seed in from..to {
        let listed = known.iter().find(|(s, _)| *s == seed).map(|(_, i)| *i);
        match (run(seed, opts), listed) {
            (Ok(o), None) => passed.push(o),
            (Err(v), None) => failures.push(format!("{v}")),
            (Err(v), Some(inv)) if v.invariant == inv => {}
            (Err(v), Some(inv)) => failures.push(format!(
                "seed {seed} was known to violate invariant {inv}, now violates {}:\n{v}",
                v.invariant
            )),
            (Ok(_), Some(_)) => failures.push(format!(
                "seed {seed} no longer violates an invariant: remove it from the known failures"
            )),
        }
    }
    if failures.is_empty() {
        Ok(passed)
    } else {
        Err(failures.join("\n"))
    }
}

/// A scripted run: the same simulated network, disks and oracle, but faults and I/O
/// come from the test, step by step. For the named scenario tests.
pub struct Scenario {
    sim: Sim,
}

impl std::fmt::Debug for Scenario {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scenario")
            .field("now_us", &self.sim.now)
            .finish()
    }
}

impl Scenario {
    /// Every diskful node starts UpToDate in one generation (all zero data); nodes
    /// connect by themselves.
    pub fn new(diskful: usize, diskless: usize, protocol: Protocol) -> Scenario {
        Scenario::with_quorum(diskful, diskless, protocol, QuorumPolicy::Majority)
    }

    pub fn with_quorum(
        diskful: usize,
        diskless: usize,
        protocol: Protocol,
        quorum: QuorumPolicy,
    ) -> Scenario {
        Self::with_shape(Shape {
            protocol,
            quorum,
            ..Shape::plain(diskful, diskless)
        })
    }

    /// allow-two-primaries on every node (protocol C, quorum by majority).
    pub fn with_two_primaries(diskful: usize, diskless: usize) -> Scenario {
        Self::with_shape(Shape {
            two_primaries: true,
            ..Shape::plain(diskful, diskless)
        })
    }

    /// Protocol C without quorum (so partitions can both write) and a split-brain
    /// policy on every node.
    pub fn with_split_brain(diskful: usize, split_brain: SplitBrainPolicy) -> Scenario {
        Self::with_shape(Shape {
            quorum: QuorumPolicy::Off,
            split_brain,
            ..Shape::plain(diskful, 0)
        })
    }

    /// Nodes that resync by checksums (protocol C, quorum by majority).
    pub fn with_csums(diskful: usize, diskless: usize) -> Scenario {
        Self::with_shape(Shape {
            csums: true,
            ..Shape::plain(diskful, diskless)
        })
    }

    /// With quorum (majority) and the given on-no-quorum policy on every node.
    pub fn with_on_no_quorum(
        diskful: usize,
        diskless: usize,
        protocol: Protocol,
        on_no_quorum: OnNoQuorum,
    ) -> Scenario {
        Self::with_shape(Shape {
            protocol,
            on_no_quorum,
            ..Shape::plain(diskful, diskless)
        })
    }

    fn with_shape(shape: Shape) -> Scenario {
        let opts = Options {
            trace: true,
            ..Options::default()
        };
        let mut sim = Sim::build(Rng(0x5eed), shape, &opts);
        sim.healing = None;
        let mut sc = Scenario { sim };
        sc.run_ms(1000);
        sc
    }

    /// Lets simulated time pass.
    pub fn run_ms(&mut self, ms: u64) {
        let until = self.sim.now + ms * MS;
        while let Some((&(t, _), _)) = self.sim.queue.first_key_value() {
            if t > until {
                break;
            }
            let Some(((t, _), ev)) = self.sim.queue.pop_first() else {
                break;
            };
            self.sim.now = t;
            self.sim.event(ev);
        }
        self.sim.now = until;
    }

    /// The first invariant violation seen so far, if any.
    pub fn violation(&self) -> Option<(u8, String)> {
        self.sim.violation.clone()
    }

    pub fn trace(&self) -> String {
        self.sim.trace.join("\n")
    }

    pub fn promote(&mut self, node: NodeId, force: bool) -> Result<(), String> {
        self.sim.promotions.remove(&node);
        self.sim.feed(node, Event::Admin(Admin::Primary { force }));
        for _ in 0..50 {
            if let Some(r) = self.sim.promotions.get(&node) {
                return r.clone();
            }
            self.run_ms(100);
        }
        Err("no answer to the promotion".into())
    }

    pub fn demote(&mut self, node: NodeId) {
        self.sim.feed(node, Event::Admin(Admin::Secondary));
        if self.sim.client_node == Some(node) {
            self.sim.client_node = None;
        }
        self.run_ms(200);
    }

    /// Runs an online grow coordinated by `node` and waits for its outcome.
    pub fn resize(&mut self, node: NodeId, size_blocks: u64) -> Result<(), String> {
        self.submit_resize(node, size_blocks);
        for _ in 0..50 {
            if let Some(r) = self.resize_result(node) {
                return r;
            }
            self.run_ms(100);
        }
        Err("no answer to the resize".into())
    }

    /// Starts an online grow without waiting (see [`Scenario::resize_result`]).
    pub fn submit_resize(&mut self, node: NodeId, size_blocks: u64) {
        self.sim.resizes.remove(&node);
        self.sim
            .feed(node, Event::Admin(Admin::Resize { size_blocks }));
    }

    /// The outcome of the last resize `node` coordinated, once there is one.
    pub fn resize_result(&self, node: NodeId) -> Option<Result<(), String>> {
        self.sim.resizes.get(&node).cloned()
    }

    pub fn admin(&mut self, node: NodeId, a: Admin) {
        self.sim.feed(node, Event::Admin(a));
    }

    /// Writes `count` blocks from `block` on `node` and waits for the answer.
    pub fn write(&mut self, node: NodeId, block: u64, count: u32, fua: bool) -> bool {
        let id = self.submit_write(node, block, count, fua);
        self.wait(id)
    }

    /// Submits a write without waiting; the request id is also the value written to
    /// each of its blocks.
    pub fn submit_write(&mut self, node: NodeId, block: u64, count: u32, fua: bool) -> u64 {
        let id = self.sim.next_id;
        self.sim.next_id += 1;
        self.sim.submit_write(id, node, block, count, fua);
        id
    }

    /// Submits a flush without waiting.
    pub fn submit_flush(&mut self, node: NodeId) -> u64 {
        let id = self.sim.next_id;
        self.sim.next_id += 1;
        self.sim.inflight.insert(
            id,
            (
                node,
                ClientOp::Flush {
                    submitted: self.sim.now,
                },
            ),
        );
        self.sim.feed(node, Event::ClientFlush { id });
        id
    }

    /// The outcome of request `id` (success or failure), once it has one.
    pub fn result(&self, id: u64) -> Option<bool> {
        self.sim.results.get(&id).copied()
    }

    /// Waits up to `ms` for request `id`: its outcome, or None if still unanswered.
    pub fn wait_for(&mut self, id: u64, ms: u64) -> Option<bool> {
        for _ in 0..ms / 10 {
            if let Some(ok) = self.result(id) {
                return Some(ok);
            }
            self.run_ms(10);
        }
        self.result(id)
    }

    /// Submits a read of `count` blocks from `block` on `node` without waiting.
    pub fn submit_read(&mut self, node: NodeId, block: u64, count: u32) -> u64 {
        let id = self.sim.next_id;
        self.sim.next_id += 1;
        self.sim.inflight.insert(
            id,
            (
                node,
                ClientOp::Read {
                    block,
                    count,
                    submitted: self.sim.now,
                },
            ),
        );
        self.sim.feed(node, Event::ClientRead { id, block, count });
        id
    }

    /// Waits for read `id`: the values it returned (the oracle checked them), or
    /// None if it failed.
    pub fn wait_read(&mut self, id: u64) -> Option<Vec<u64>> {
        if self.wait(id) {
            self.sim.read_values.get(&id).cloned()
        } else {
            None
        }
    }

    /// Reads and waits for the answer.
    pub fn read(&mut self, node: NodeId, block: u64, count: u32) -> Option<Vec<u64>> {
        let id = self.submit_read(node, block, count);
        self.wait_read(id)
    }

    /// From now on the disk of `node` fails every I/O (a restart replaces it).
    pub fn fail_disk(&mut self, node: NodeId) {
        self.sim.nodes[node as usize].failing = true;
    }

    /// Silently changes block `b` on `node`'s disk (bit rot), for verify.
    pub fn corrupt(&mut self, node: NodeId, b: u64, value: u64) {
        let d = &mut self.sim.nodes[node as usize].disk;
        d.cache.remove(&b);
        d.durable[b as usize].0 = value;
    }

    /// The disk of `node` works again (the driver reopened it).
    pub fn repair_disk(&mut self, node: NodeId) {
        self.sim.nodes[node as usize].failing = false;
    }

    /// The generation `node` holds, if it is up.
    pub fn generation(&self, node: NodeId) -> Option<u64> {
        self.status(node).map(|s| s.current)
    }

    pub fn flush(&mut self, node: NodeId) -> bool {
        let id = self.submit_flush(node);
        self.wait(id)
    }

    fn wait(&mut self, id: u64) -> bool {
        for _ in 0..500 {
            if let Some(ok) = self.sim.results.get(&id) {
                return *ok;
            }
            self.run_ms(10);
        }
        false
    }

    pub fn cut(&mut self, a: NodeId, b: NodeId) {
        if self.sim.cut.insert(pair(a, b)) {
            self.sim.close_conn(a, b, 300, 300);
        }
    }

    pub fn heal(&mut self, a: NodeId, b: NodeId) {
        self.sim.cut.remove(&pair(a, b));
    }

    pub fn isolate(&mut self, n: NodeId) {
        for o in 0..self.sim.nodes.len() as NodeId {
            if o != n {
                self.cut(n, o);
            }
        }
    }

    pub fn heal_all(&mut self) {
        self.sim.cut.clear();
    }

    /// Kills the node: unflushed writes survive or vanish at random.
    pub fn crash(&mut self, n: NodeId) {
        self.sim.crash(n);
    }

    pub fn restart(&mut self, n: NodeId) {
        self.sim.restart(n);
    }

    pub fn status(&self, n: NodeId) -> Option<replica::core::Status> {
        self.sim.nodes[n as usize].core.as_ref().map(|c| c.status())
    }

    pub fn standalone_reason(&self, n: NodeId, peer: NodeId) -> Option<String> {
        self.sim.nodes[n as usize]
            .core
            .as_ref()?
            .standalone_reason(peer)
            .map(str::to_owned)
    }

    pub fn block(&self, n: NodeId, b: u64) -> u64 {
        self.sim.nodes[n as usize].disk.value(b)
    }

    /// Resync blocks sent since the scenario started.
    pub fn resync_blocks(&self) -> u64 {
        self.sim.out.resync_blocks
    }

    /// Every node up, every pair connected with nothing to resync, every disk UpToDate.
    pub fn settled(&self) -> bool {
        self.sim.nodes.iter().all(|n| {
            n.core.as_ref().is_some_and(|c| {
                let st = c.status();
                (!n.diskful || st.disk == Disk::UpToDate)
                    && st.peers.iter().all(|p| {
                        p.conn == ConnState::Connected
                            && matches!(p.repl, Repl::Established | Repl::Deferred)
                            && p.out_of_sync_blocks == 0
                    })
            })
        })
    }

    /// Diskful nodes whose data differs from node `of` (block by block).
    pub fn differing_from(&self, of: NodeId) -> Vec<NodeId> {
        self.sim
            .nodes
            .iter()
            .filter(|n| n.diskful && n.id != of)
            .filter(|n| {
                (0..CAPACITY).any(|b| n.disk.value(b) != self.sim.nodes[of as usize].disk.value(b))
            })
            .map(|n| n.id)
            .collect()
    }

    /// Runs until settled (at most `ms`); then checks that all diskful replicas are
    /// identical and hold every durable write.
    pub fn settle(&mut self, ms: u64) -> bool {
        for _ in 0..ms / 100 {
            if self.settled() {
                self.sim.final_checks();
                return self.sim.violation.is_none();
            }
            self.run_ms(100);
        }
        false
    }
}
