//! A fault-injecting TCP proxy for multi-process tests.
//!
//! This machine's kernel has no netem, so tests that need a slow, lossy or partitioned
//! network put a [`Proxy`] between two processes instead: the client connects to
//! [`Proxy::addr`], the proxy connects to the target and forwards bytes both ways,
//! applying whatever faults are set at the moment:
//!
//! - a fixed delay and a uniformly random jitter per direction (the order of bytes
//!   within a connection is always kept: a chunk is never sent before the one read
//!   before it),
//! - a bandwidth cap per direction (bytes per second, paced in small pieces),
//! - a cut (blackhole): connections are still accepted but no byte flows either way,
//!   and nothing is lost: when the cut is lifted, the held bytes flow on,
//! - [`Proxy::reset_all`]: every current connection is reset on both sides at once,
//! - [`Proxy::refuse`]: new connections are closed (reset) as soon as they are accepted.
//!
//! The proxy runs on one background thread with a private current-thread tokio
//! runtime, so it can be driven from synchronous test code. Every setter takes `&self`
//! and may be called at any time from any thread; changes apply to data already queued
//! inside the proxy too (lowering the delay releases held data sooner).
//!
//! Everything is bounded: at most [`Limits::max_connections`] connections are proxied
//! at once (further clients wait in the listen backlog), and each direction of a
//! connection holds at most [`Limits::queue_chunks`] chunks of at most
//! [`Limits::chunk_size`] bytes; when that queue is full the proxy stops reading from
//! the source socket, so the sender sees ordinary TCP backpressure.
//!
//! Dropping the [`Proxy`] stops it: the listener and every connection are closed and
//! the thread has ended when `drop` returns.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot, watch};
use tokio::time::Instant;

/// How long the proxy waits for the target to accept a connection before giving up on
/// it (and resetting the client).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The latest an instant is put when a delay is too large to add.
const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// Pacing granularity of the bandwidth cap: a piece carries about this fraction of a
/// second's worth of bytes.
const PIECES_PER_SECOND: u64 = 50;

/// Index of the client → target direction in per-direction arrays.
const TO_TARGET: usize = 0;
/// Index of the target → client direction in per-direction arrays.
const TO_CLIENT: usize = 1;

/// Which way of the proxied connections a fault applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Bytes the client sends to the target.
    ToTarget,
    /// Bytes the target sends to the client.
    ToClient,
    /// Both ways.
    Both,
}

impl Direction {
    fn indices(self) -> &'static [usize] {
        match self {
            Direction::ToTarget => &[TO_TARGET],
            Direction::ToClient => &[TO_CLIENT],
            Direction::Both => &[TO_TARGET, TO_CLIENT],
        }
    }
}

/// The faults applied to one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    /// Fixed delay added to every byte.
    pub delay: Duration,
    /// Up to this much more delay, uniformly random per chunk read from the source;
    /// never reorders bytes (a chunk waits for the one before it).
    pub jitter: Duration,
    /// Bandwidth cap in bytes per second; `None` is uncapped, `Some(0)` stalls.
    pub bandwidth: Option<u64>,
    /// Blackhole: no byte flows this way while set (nothing is dropped).
    pub cut: bool,
}

/// Bounds on what one proxy holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections proxied at once; further clients wait in the listen backlog until
    /// one closes. Default 256.
    pub max_connections: usize,
    /// Chunks held per direction of a connection (delayed, cut or paced data).
    /// Default 32.
    pub queue_chunks: usize,
    /// Largest chunk read from a socket at once, in bytes. Default 16 KiB.
    pub chunk_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 256,
            queue_chunks: 32,
            chunk_size: 16 * 1024,
        }
    }
}

impl Limits {
    fn validate(&self) -> io::Result<()> {
        let invalid =
            |what: &str| Err(io::Error::new(io::ErrorKind::InvalidInput, what.to_owned()));
        if self.max_connections == 0 || self.max_connections > Semaphore::MAX_PERMITS {
            return invalid(
                "netfault: max_connections must be between 1 and Semaphore::MAX_PERMITS",
            );
        }
        if self.queue_chunks == 0 {
            return invalid("netfault: queue_chunks must be at least 1");
        }
        if self.chunk_size == 0 {
            return invalid("netfault: chunk_size must be at least 1");
        }
        Ok(())
    }
}

/// A snapshot of a proxy's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Bytes written to the target (client → target).
    pub bytes_to_target: u64,
    /// Bytes written to clients (target → client).
    pub bytes_to_client: u64,
    /// Connections accepted and proxied (refused ones not included).
    pub connections_accepted: u64,
    /// Connections accepted and closed at once because of [`Proxy::refuse`].
    pub connections_refused: u64,
    /// Connections being proxied now.
    pub connections_active: u64,
}

/// The fault settings, shared with the runtime through a watch channel.
#[derive(Debug, Clone, Copy, Default)]
struct Config {
    dirs: [Faults; 2],
    refuse: bool,
}

/// State shared by the handle and the proxy thread.
#[derive(Debug)]
struct Shared {
    config: watch::Sender<Config>,
    /// Bumped by [`Proxy::reset_all`]; every connection watches it.
    resets: watch::Sender<u64>,
    bytes: [AtomicU64; 2],
    accepted: AtomicU64,
    refused: AtomicU64,
    active: AtomicU64,
    limits: Limits,
}

/// A running fault-injecting TCP proxy; see the crate documentation.
pub struct Proxy {
    addr: SocketAddr,
    target: SocketAddr,
    shared: Arc<Shared>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("addr", &self.addr)
            .field("target", &self.target)
            .field("faults", &*self.shared.config.borrow())
            .field("stats", &self.stats())
            .finish()
    }
}

impl Proxy {
    /// Listens on `listen` (port 0 picks a free port, see [`Proxy::addr`]) and forwards
    /// every accepted connection to `target`, with default [`Limits`] and no faults.
    pub fn start(listen: SocketAddr, target: SocketAddr) -> io::Result<Proxy> {
        Proxy::start_with(listen, target, Limits::default())
    }

    /// [`Proxy::start`] with explicit limits.
    pub fn start_with(listen: SocketAddr, target: SocketAddr, limits: Limits) -> io::Result<Proxy> {
        limits.validate()?;
        let std_listener = StdTcpListener::bind(listen)?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let shared = Arc::new(Shared {
            config: watch::channel(Config::default()).0,
            resets: watch::channel(0).0,
            bytes: [AtomicU64::new(0), AtomicU64::new(0)],
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            active: AtomicU64::new(0),
            limits,
        });
        let (shutdown_tx, shutdown_rx) = oneshot::channel();
        let (started_tx, started_rx) = std::sync::mpsc::sync_channel(1);
        let thread_shared = Arc::clone(&shared);
        // The runtime is built, run and dropped on the proxy thread only, so that the
        // caller may itself be inside an async runtime (where dropping one panics).
        let thread = std::thread::Builder::new()
            .name(format!("netfault-{}", addr.port()))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                        return;
                    }
                };
                runtime.block_on(async move {
                    match TcpListener::from_std(std_listener) {
                        Ok(listener) => {
                            let _ = started_tx.send(Ok(()));
                            serve(listener, target, thread_shared, shutdown_rx).await;
                        }
                        Err(e) => {
                            let _ = started_tx.send(Err(e));
                        }
                    }
                });
                // Dropping the runtime drops every connection task, closing its sockets.
                drop(runtime);
            })?;
        let started = started_rx
            .recv()
            .unwrap_or_else(|_| Err(io::Error::other("netfault: proxy thread failed to start")));
        if let Err(e) = started {
            // The thread has ended or is about to; its result adds nothing.
            let _ = thread.join();
            return Err(e);
        }
        Ok(Proxy {
            addr,
            target,
            shared,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
        })
    }

    /// The address the proxy listens on; clients connect here.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address the proxy forwards to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Sets a fixed delay on `dir` (zero removes it).
    pub fn set_delay(&self, dir: Direction, delay: Duration) {
        self.update(dir, |f| f.delay = delay);
    }

    /// Sets the jitter on `dir`: up to this much more delay, uniformly random, without
    /// reordering bytes (zero removes it).
    pub fn set_jitter(&self, dir: Direction, jitter: Duration) {
        self.update(dir, |f| f.jitter = jitter);
    }

    /// Caps `dir` to `bytes_per_second` (`None` removes the cap, `Some(0)` stalls).
    pub fn set_bandwidth(&self, dir: Direction, bytes_per_second: Option<u64>) {
        self.update(dir, |f| f.bandwidth = bytes_per_second);
    }

    /// Blackholes both directions (`true`) or lets bytes flow again (`false`). While
    /// cut, new connections are accepted but not connected to the target, and existing
    /// ones stall; no byte is lost.
    pub fn cut(&self, on: bool) {
        self.cut_direction(Direction::Both, on);
    }

    /// Blackholes one direction only (an asymmetric partition).
    pub fn cut_direction(&self, dir: Direction, on: bool) {
        self.update(dir, |f| f.cut = on);
    }

    /// Sets all faults of `dir` at once.
    pub fn set_faults(&self, dir: Direction, faults: Faults) {
        self.update(dir, |f| *f = faults);
    }

    /// The faults set on one direction now ([`Direction::Both`] reads client → target).
    pub fn faults(&self, dir: Direction) -> Faults {
        let index = match dir {
            Direction::ToClient => TO_CLIENT,
            Direction::ToTarget | Direction::Both => TO_TARGET,
        };
        self.shared.config.borrow().dirs[index]
    }

    /// Closes new connections as soon as they are accepted (`true`), or proxies them
    /// again (`false`). Existing connections are not affected.
    pub fn refuse(&self, on: bool) {
        self.shared.config.send_modify(|c| c.refuse = on);
    }

    /// Removes every fault (delay, jitter, bandwidth cap, cut, refuse).
    pub fn clear(&self) {
        self.shared.config.send_modify(|c| *c = Config::default());
    }

    /// Resets every current connection at once on both sides (the peers see a
    /// connection reset, or end of stream). New connections are proxied as usual.
    pub fn reset_all(&self) {
        self.shared
            .resets
            .send_modify(|epoch| *epoch = epoch.wrapping_add(1));
    }

    /// The counters now.
    pub fn stats(&self) -> Stats {
        let s = &self.shared;
        Stats {
            bytes_to_target: s.bytes[TO_TARGET].load(Ordering::Relaxed),
            bytes_to_client: s.bytes[TO_CLIENT].load(Ordering::Relaxed),
            connections_accepted: s.accepted.load(Ordering::Relaxed),
            connections_refused: s.refused.load(Ordering::Relaxed),
            connections_active: s.active.load(Ordering::Relaxed),
        }
    }

    fn update(&self, dir: Direction, change: impl Fn(&mut Faults)) {
        self.shared.config.send_modify(|c| {
            for &i in dir.indices() {
                change(&mut c.dirs[i]);
            }
        });
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            // The receiver is gone only if the thread already ended.
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            // A panic on the proxy thread has already been reported; nothing to add.
            let _ = thread.join();
        }
    }
}

/// Runs the accept loop until the handle is dropped.
async fn serve(
    listener: TcpListener,
    target: SocketAddr,
    shared: Arc<Shared>,
    shutdown: oneshot::Receiver<()>,
) {
    tokio::select! {
        () = accept_loop(listener, target, shared) => {}
        _ = shutdown => {}
    }
}

async fn accept_loop(listener: TcpListener, target: SocketAddr, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(shared.limits.max_connections));
    loop {
        // Take a slot before accepting: at the limit, clients wait in the backlog.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(_) => {
                // EMFILE, ECONNABORTED and the like: transient; back off a little.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if shared.config.borrow().refuse {
            shared.refused.fetch_add(1, Ordering::Relaxed);
            abort(&client);
            continue;
        }
        // Subscribe before counting, so a reset_all after the connection shows in the
        // counters also reaches it.
        let resets = shared.resets.subscribe();
        let active = Active::new(Arc::clone(&shared));
        shared.accepted.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(connection(client, target, resets, active, slot));
    }
}

/// Counts a connection in `connections_active` for as long as it lives.
struct Active(Arc<Shared>);

impl Active {
    fn new(shared: Arc<Shared>) -> Active {
        shared.active.fetch_add(1, Ordering::Relaxed);
        Active(shared)
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Makes dropping `stream` send a reset instead of an orderly close.
fn abort(stream: &TcpStream) {
    // Best effort: if it fails the peer sees an orderly close instead.
    let _ = stream.set_zero_linger();
}

/// Resolves when [`Proxy::reset_all`] is called after `resets` was subscribed.
async fn reset_signal(resets: &mut watch::Receiver<u64>) {
    // An error means the handle's state is gone, which cannot outlive this task; treat
    // it as a reset too.
    let _ = resets.changed().await;
}

/// Proxies one accepted connection until both directions end, an error, or a reset.
async fn connection(
    mut client: TcpStream,
    target: SocketAddr,
    mut resets: watch::Receiver<u64>,
    active: Active,
    _slot: OwnedSemaphorePermit,
) {
    let shared = &*active.0;
    let mut config = shared.config.subscribe();
    // While cut, even the handshake with the target would not get through.
    let connected = tokio::select! {
        server = connect_when_uncut(target, &mut config) => server,
        () = reset_signal(&mut resets) => None,
    };
    let Some(mut server) = connected else {
        abort(&client);
        return;
    };
    // The proxy forwards what it reads at once; Nagle would only add its own delay.
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let clean = {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        let to_target = pump(client_read, server_write, TO_TARGET, shared);
        let to_client = pump(server_read, client_write, TO_CLIENT, shared);
        tokio::select! {
            done = async { tokio::try_join!(to_target, to_client) } => done.is_ok(),
            () = reset_signal(&mut resets) => false,
        }
    };
    if !clean {
        abort(&client);
        abort(&server);
    }
}

async fn connect_when_uncut(
    target: SocketAddr,
    config: &mut watch::Receiver<Config>,
) -> Option<TcpStream> {
    config
        .wait_for(|c| !c.dirs[TO_TARGET].cut && !c.dirs[TO_CLIENT].cut)
        .await
        .ok()?;
    match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(server)) => Some(server),
        Ok(Err(_)) | Err(_) => None,
    }
}

/// Bytes read from the source, waiting to be written; empty `bytes` is end of stream.
#[derive(Debug)]
struct Chunk {
    bytes: Vec<u8>,
    read_at: Instant,
    /// Uniform random number scaled to the jitter when the chunk is released, so that
    /// a jitter change applies to queued chunks too.
    jitter_sample: u64,
}

impl Chunk {
    fn release(&self, faults: &Faults) -> Instant {
        let jitter_ns = u64::try_from(faults.jitter.as_nanos()).unwrap_or(u64::MAX);
        let scaled = (u128::from(jitter_ns) * u128::from(self.jitter_sample)) >> 64;
        let jitter = Duration::from_nanos(u64::try_from(scaled).unwrap_or(u64::MAX));
        let wait = faults.delay.saturating_add(jitter);
        self.read_at
            .checked_add(wait)
            .unwrap_or_else(|| self.read_at + FAR_FUTURE)
    }
}

/// Forwards one direction: reads from `src` into a bounded queue and writes from it to
/// `dst`, until end of stream (propagated as a half close) or an error.
async fn pump(
    src: ReadHalf<'_>,
    dst: WriteHalf<'_>,
    dir: usize,
    shared: &Shared,
) -> io::Result<()> {
    let (tx, rx) = mpsc::channel(shared.limits.queue_chunks);
    tokio::try_join!(
        read_side(src, tx, dir, shared),
        write_side(dst, rx, dir, shared)
    )?;
    Ok(())
}

fn gone() -> io::Error {
    io::Error::other("netfault: proxy stopped")
}

async fn read_side(
    mut src: ReadHalf<'_>,
    tx: mpsc::Sender<Chunk>,
    dir: usize,
    shared: &Shared,
) -> io::Result<()> {
    let mut config = shared.config.subscribe();
    let mut rng = Rng::new();
    loop {
        // A blackhole takes nothing off the source; the sender's buffers fill up.
        config
            .wait_for(|c| !c.dirs[dir].cut)
            .await
            .map_err(|_| gone())?;
        // Backpressure: take a queue slot before taking bytes off the source.
        let slot = tx.reserve().await.map_err(|_| gone())?;
        let mut bytes = vec![0; shared.limits.chunk_size];
        let n = src.read(&mut bytes).await?;
        bytes.truncate(n);
        slot.send(Chunk {
            bytes,
            read_at: Instant::now(),
            jitter_sample: rng.next_u64(),
        });
        if n == 0 {
            return Ok(());
        }
    }
}

async fn write_side(
    mut dst: WriteHalf<'_>,
    mut rx: mpsc::Receiver<Chunk>,
    dir: usize,
    shared: &Shared,
) -> io::Result<()> {
    let mut config = shared.config.subscribe();
    // Bandwidth pacing: when the link is free to carry the next piece.
    let mut link_free = Instant::now();
    // Chunks are taken one at a time, so none is written before the one read before it.
    while let Some(chunk) = rx.recv().await {
        if chunk.bytes.is_empty() {
            wait_ready(&mut config, dir, &chunk).await?;
            dst.shutdown().await?;
            return Ok(());
        }
        let mut offset = 0;
        while offset < chunk.bytes.len() {
            let faults = wait_ready(&mut config, dir, &chunk).await?;
            let end = match faults.bandwidth {
                Some(rate) => {
                    let piece = (rate / PIECES_PER_SECOND).max(1);
                    let piece = usize::try_from(piece).unwrap_or(usize::MAX);
                    let end = chunk.bytes.len().min(offset.saturating_add(piece));
                    // The piece arrives once the link has carried all of it.
                    let carry = Duration::from_secs_f64((end - offset) as f64 / rate as f64);
                    link_free = link_free.max(Instant::now());
                    link_free = link_free
                        .checked_add(carry)
                        .unwrap_or(link_free + FAR_FUTURE);
                    tokio::time::sleep_until(link_free).await;
                    // A cut may have come in while the piece was on the link.
                    wait_ready(&mut config, dir, &chunk).await?;
                    end
                }
                None => chunk.bytes.len(),
            };
            dst.write_all(&chunk.bytes[offset..end]).await?;
            shared.bytes[dir].fetch_add((end - offset) as u64, Ordering::Relaxed);
            offset = end;
        }
    }
    // The reader stopped without end of stream: it failed, and the join reports that.
    Ok(())
}

/// Waits until `chunk` may go out on `dir`: its delay and jitter have passed, the
/// direction is not cut and its bandwidth is not zero. Follows fault changes while
/// waiting. Returns the faults in force.
async fn wait_ready(
    config: &mut watch::Receiver<Config>,
    dir: usize,
    chunk: &Chunk,
) -> io::Result<Faults> {
    loop {
        let faults = config.borrow_and_update().dirs[dir];
        let stalled = faults.cut || faults.bandwidth == Some(0);
        let release = chunk.release(&faults);
        if !stalled && Instant::now() >= release {
            return Ok(faults);
        }
        tokio::select! {
            () = tokio::time::sleep_until(release), if !stalled => {}
            changed = config.changed() => changed.map_err(|_| gone())?,
        }
    }
}

/// splitmix64, seeded from the standard library's per-process random hasher keys.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u8(0);
        Rng(hasher.finish())
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests;
