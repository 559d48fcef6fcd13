//! One NBD connection: fixed-newstyle handshake, then the transmission phase.
//!
//! Transmission runs a small pool of worker threads per connection. A worker takes the
//! read lock, reads one request (and its write payload), releases the lock, carries the
//! request out on the device and writes the reply under the write lock. Requests are
//! thus in flight concurrently (up to the pool size) and replies go out in completion
//! order, which the protocol allows since each reply carries the request's cookie.
//!
//! A device may instead take a write or flush to finish on its own thread
//! (`BlockDevice::submit`): the worker keeps the read lock and reads on, and the
//! device's `Completion` queues the reply, written by whoever holds the write lock
//! next, without blocking the device's thread (bounded by `MAX_SUBMITTED` and
//! `MAX_SUBMITTED_BYTES` per connection).

use std::io::{self, BufReader, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, TryLockError};
use std::time::Duration;

use bytes::Bytes;
use thiserror::Error;

use crate::proto::{self, *};

/// Error a block device reports for one request; each maps to an NBD error value.
#[derive(Debug, Error)]
pub enum DeviceError {
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("no space left")]
    NoSpace,
    #[error("volume is read-only")]
    ReadOnly,
    #[error("volume is shutting down")]
    Shutdown,
}

impl DeviceError {
    pub fn errno(&self) -> u32 {
        match self {
            DeviceError::Io(e) => match e.raw_os_error() {
                Some(28 /* ENOSPC */ | 122 /* EDQUOT */ | 27 /* EFBIG */) => ENOSPC,
                _ if e.kind() == io::ErrorKind::StorageFull => ENOSPC,
                _ => EIO,
            },
            DeviceError::NoSpace => ENOSPC,
            DeviceError::ReadOnly => EPERM,
            DeviceError::Shutdown => ESHUTDOWN,
        }
    }
}

/// A request a device may finish later (see `BlockDevice::submit`).
#[derive(Debug)]
pub enum Submit {
    Write { data: Bytes, offset: u64, fua: bool },
    Flush,
}

/// Sends the reply to one request a device took with `BlockDevice::submit`. Dropped
/// without `done`, it replies with an I/O error: no request goes unanswered.
pub struct Completion {
    sink: Option<Arc<dyn ReplySink>>,
    cookie: u64,
    kind: u16,
    /// Payload bytes the request holds (see `MAX_SUBMITTED_BYTES`).
    bytes: u64,
}

impl std::fmt::Debug for Completion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Completion")
            .field("cookie", &self.cookie)
            .field("kind", &self.kind)
            .finish()
    }
}

impl Completion {
    /// Replies to the request with its outcome.
    pub fn done(self, result: Result<(), DeviceError>) {
        Completion::done_all([(self, result)]);
    }

    /// Replies to many requests, with one write per connection (a write per reply
    /// costs a system call each).
    pub fn done_all(items: impl IntoIterator<Item = (Completion, Result<(), DeviceError>)>) {
        let mut sinks: Vec<(Arc<dyn ReplySink>, usize, u64)> = Vec::new();
        for (mut c, result) in items {
            let errno = match result {
                Ok(()) => 0,
                Err(e) => {
                    tracing::warn!(cmd = c.kind, "request failed: {e}");
                    e.errno()
                }
            };
            let Some(sink) = c.sink.take() else { continue };
            sink.queue(c.cookie, errno);
            match sinks
                .iter_mut()
                .find(|(s, ..)| s.conn_id() == sink.conn_id())
            {
                Some((_, n, b)) => {
                    *n += 1;
                    *b += c.bytes;
                }
                None => sinks.push((sink, 1, c.bytes)),
            }
        }
        for (sink, n, b) in sinks {
            sink.send_queued(n, b);
        }
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if let Some(sink) = self.sink.take() {
            sink.queue(self.cookie, EIO);
            sink.send_queued(1, self.bytes);
        }
    }
}

/// Where a `Completion` sends its reply: the connection the request came on.
trait ReplySink: Send + Sync {
    /// Adds a reply to those waiting to be written.
    fn queue(&self, cookie: u64, errno: u32);
    /// Writes the waiting replies; `answered` requests holding `bytes` are done.
    fn send_queued(&self, answered: usize, bytes: u64);
    /// Tells connections apart (sinks of one connection share its queue).
    fn conn_id(&self) -> usize;
}

/// What the NBD server needs from a volume. Calls come from several threads at once.
pub trait BlockDevice: Send + Sync {
    /// Exported size in bytes.
    fn size(&self) -> u64;
    fn read_only(&self) -> bool {
        false
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<(), DeviceError>;
    /// With `fua`, the data is on stable storage when this returns.
    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> Result<(), DeviceError>;
    /// `write_at` with a buffer the device may keep (a device that passes the data
    /// on saves copying it). The buffer returns to the connection's pool once every
    /// copy of the handle is dropped.
    fn write_shared(&self, data: Bytes, offset: u64, fua: bool) -> Result<(), DeviceError> {
        self.write_at(&data, offset, fua)
    }
    /// Everything completed before this call is on stable storage when it returns.
    fn flush(&self) -> Result<(), DeviceError>;
    /// Starts a write or flush that finishes later, on another thread: the device
    /// calls `done.done(result)` then, which sends the reply, and the worker that
    /// read the request goes on without waiting (and without being woken for the
    /// reply). A device that cannot take the request this way hands both back, and
    /// the worker carries it out with `write_shared` or `flush`.
    fn submit(&self, req: Submit, done: Completion) -> Result<(), (Submit, Completion)> {
        Err((req, done))
    }
    /// Hint that the range is unused; reads of it may return anything afterwards.
    fn trim(&self, offset: u64, len: u64, fua: bool) -> Result<(), DeviceError>;
    /// The range reads back as zeroes; `may_trim` allows deallocating it.
    fn write_zeroes(
        &self,
        offset: u64,
        len: u64,
        may_trim: bool,
        fua: bool,
    ) -> Result<(), DeviceError>;
}

/// Why an export cannot be handed to a client; `message` is shown to the user.
#[derive(Debug, Clone, Error)]
pub enum OpenError {
    #[error("no export named {0:?}")]
    Unknown(String),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    ShuttingDown(String),
}

/// One export as listed to clients.
#[derive(Debug, Clone)]
pub struct ExportInfo {
    pub name: String,
    pub description: String,
}

/// Maps export names to devices for one listening endpoint.
pub trait Exports: Send + Sync {
    fn list(&self) -> Vec<ExportInfo>;
    /// Size and read-only flag without opening (NBD_OPT_INFO).
    fn describe(&self, name: &str) -> Result<(ExportInfo, u64, bool), OpenError>;
    /// Opens the export for transmission. Dropping the last clone of the returned
    /// handle is the close.
    fn open(&self, name: &str) -> Result<Arc<dyn BlockDevice>, OpenError>;
}

/// Bounds on what one connection may make the server hold or wait for.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest read or write payload (advertised as the maximum block size).
    pub max_payload: u32,
    /// Requests in flight per connection (worker threads).
    pub workers: usize,
    /// Largest option payload accepted during the handshake.
    pub max_option_len: u32,
    /// Options accepted before the client must pick an export.
    pub max_options: u32,
    /// The whole handshake must finish within this time.
    pub handshake_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_payload: 32 << 20,
            workers: 16,
            max_option_len: 16 << 10,
            max_options: 128,
            handshake_timeout: Duration::from_secs(30),
        }
    }
}

/// How a connection ended (for logs and tests).
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The client aborted during the handshake or disconnected cleanly.
    Closed,
    /// The client broke the protocol or vanished; the connection was dropped.
    Dropped(String),
}

/// A byte stream the server can share between its worker threads.
pub trait Stream: Send + Sync + 'static
where
    for<'a> &'a Self: Read + Write,
{
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()>;
    /// Ends both directions, waking any thread blocked on it.
    fn shutdown(&self);
    /// Writes what the stream takes without waiting (`WouldBlock` when it takes
    /// nothing). Replies a device finishes on its own thread go out this way, so
    /// that a client that stops reading cannot hold up that thread.
    fn write_nowait(&self, buf: &[u8]) -> io::Result<usize> {
        let mut w = self;
        w.write(buf)
    }
}

impl Stream for std::os::unix::net::UnixStream {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        std::os::unix::net::UnixStream::set_read_timeout(self, t)
    }
    fn shutdown(&self) {
        let _ = std::os::unix::net::UnixStream::shutdown(self, std::net::Shutdown::Both);
    }
    fn write_nowait(&self, buf: &[u8]) -> io::Result<usize> {
        send_nowait(self, buf)
    }
}

fn send_nowait(fd: impl std::os::fd::AsFd, buf: &[u8]) -> io::Result<usize> {
    use rustix::net::SendFlags;
    rustix::net::send(fd, buf, SendFlags::DONTWAIT | SendFlags::NOSIGNAL).map_err(io::Error::from)
}

impl Stream for std::net::TcpStream {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        std::net::TcpStream::set_read_timeout(self, t)
    }
    fn shutdown(&self) {
        let _ = std::net::TcpStream::shutdown(self, std::net::Shutdown::Both);
    }
    fn write_nowait(&self, buf: &[u8]) -> io::Result<usize> {
        send_nowait(self, buf)
    }
}

#[derive(Debug, Error)]
enum HandshakeEnd {
    #[error("client aborted")]
    Aborted,
    #[error("{0}")]
    Protocol(String),
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
}

struct Negotiated {
    device: Arc<dyn BlockDevice>,
}

/// Serves one accepted connection until it ends. Blocks the calling thread.
pub fn serve<S>(stream: Arc<S>, exports: &dyn Exports, limits: &Limits) -> Outcome
where
    S: Stream,
    for<'a> &'a S: Read + Write,
{
    let _ = stream.set_read_timeout(Some(limits.handshake_timeout));
    let negotiated = match handshake(&*stream, exports, limits) {
        Ok(n) => n,
        Err(HandshakeEnd::Aborted) => return Outcome::Closed,
        Err(e) => {
            stream.shutdown();
            return Outcome::Dropped(format!("handshake: {e}"));
        }
    };
    let _ = stream.set_read_timeout(None);
    transmission(stream, negotiated.device, limits)
}

fn handshake<S>(s: &S, exports: &dyn Exports, limits: &Limits) -> Result<Negotiated, HandshakeEnd>
where
    for<'a> &'a S: Read + Write,
{
    let mut w = s;
    let mut greeting = Vec::with_capacity(18);
    greeting.extend_from_slice(&NBDMAGIC.to_be_bytes());
    greeting.extend_from_slice(&IHAVEOPT.to_be_bytes());
    greeting.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    w.write_all(&greeting)?;

    let mut r = s;
    let mut cflags = [0u8; 4];
    r.read_exact(&mut cflags)?;
    let cflags = u32::from_be_bytes(cflags);
    if cflags & !(FLAG_C_FIXED_NEWSTYLE | FLAG_C_NO_ZEROES) != 0 {
        return Err(HandshakeEnd::Protocol(format!(
            "unknown client flags {cflags:#x}"
        )));
    }
    let no_zeroes = cflags & FLAG_C_NO_ZEROES != 0;

    for _ in 0..limits.max_options {
        let mut hdr = [0u8; OPTION_HEADER_LEN];
        r.read_exact(&mut hdr)?;
        let opt =
            proto::parse_option_header(&hdr).map_err(|e| HandshakeEnd::Protocol(e.to_string()))?;
        if opt.length > limits.max_option_len {
            w.write_all(&option_reply(
                opt.option,
                REP_ERR_TOO_BIG,
                b"option data too large",
            ))?;
            return Err(HandshakeEnd::Protocol(format!(
                "option of {} bytes",
                opt.length
            )));
        }
        let mut data = vec![0u8; opt.length as usize];
        r.read_exact(&mut data)?;
        let reply = |code: u32, msg: &str| option_reply(opt.option, code, msg.as_bytes());
        match opt.option {
            OPT_EXPORT_NAME => {
                let name = proto::parse_export_name(&data)
                    .map_err(|e| HandshakeEnd::Protocol(e.to_string()))?;
                // This option has no way to report an error but closing the connection.
                let device = exports
                    .open(&name)
                    .map_err(|e| HandshakeEnd::Protocol(e.to_string()))?;
                let mut out = Vec::with_capacity(134);
                out.extend_from_slice(&device.size().to_be_bytes());
                out.extend_from_slice(&transmission_flags(&*device).to_be_bytes());
                if !no_zeroes {
                    out.extend_from_slice(&[0u8; 124]);
                }
                w.write_all(&out)?;
                return Ok(Negotiated { device });
            }
            OPT_ABORT => {
                let _ = w.write_all(&option_reply(opt.option, REP_ACK, &[]));
                return Err(HandshakeEnd::Aborted);
            }
            OPT_LIST => {
                if !data.is_empty() {
                    w.write_all(&reply(REP_ERR_INVALID, "NBD_OPT_LIST takes no data"))?;
                    continue;
                }
                let mut out = Vec::new();
                for e in exports.list() {
                    let mut d = Vec::with_capacity(4 + e.name.len() + e.description.len());
                    d.extend_from_slice(&(e.name.len() as u32).to_be_bytes());
                    d.extend_from_slice(e.name.as_bytes());
                    d.extend_from_slice(e.description.as_bytes());
                    out.extend_from_slice(&option_reply(opt.option, REP_SERVER, &d));
                }
                out.extend_from_slice(&option_reply(opt.option, REP_ACK, &[]));
                w.write_all(&out)?;
            }
            OPT_INFO | OPT_GO => {
                let req = match proto::parse_info_request(&data) {
                    Ok(req) => req,
                    Err(e) => {
                        w.write_all(&reply(REP_ERR_INVALID, &e.to_string()))?;
                        continue;
                    }
                };
                let found = if opt.option == OPT_GO {
                    exports.open(&req.name).map(|dev| {
                        let info = ExportInfo {
                            name: req.name.clone(),
                            description: String::new(),
                        };
                        let (size, ro) = (dev.size(), dev.read_only());
                        (info, size, ro, Some(dev))
                    })
                } else {
                    exports
                        .describe(&req.name)
                        .map(|(info, size, ro)| (info, size, ro, None))
                };
                let (info, size, read_only, device) = match found {
                    Ok(f) => f,
                    Err(e) => {
                        let code = match e {
                            OpenError::Unknown(_) => REP_ERR_UNKNOWN,
                            OpenError::Refused(_) => REP_ERR_POLICY,
                            OpenError::ShuttingDown(_) => REP_ERR_SHUTDOWN,
                        };
                        w.write_all(&reply(code, &e.to_string()))?;
                        continue;
                    }
                };
                let mut out = Vec::new();
                let mut d = Vec::with_capacity(12);
                d.extend_from_slice(&INFO_EXPORT.to_be_bytes());
                d.extend_from_slice(&size.to_be_bytes());
                let mut tflags = base_flags();
                if read_only {
                    tflags |= TFLAG_READ_ONLY;
                }
                d.extend_from_slice(&tflags.to_be_bytes());
                out.extend_from_slice(&option_reply(opt.option, REP_INFO, &d));
                // Our block sizes are the protocol defaults, sent every time so that
                // clients need not guess.
                let mut d = Vec::with_capacity(14);
                d.extend_from_slice(&INFO_BLOCK_SIZE.to_be_bytes());
                d.extend_from_slice(&1u32.to_be_bytes());
                d.extend_from_slice(&4096u32.to_be_bytes());
                d.extend_from_slice(&limits.max_payload.to_be_bytes());
                out.extend_from_slice(&option_reply(opt.option, REP_INFO, &d));
                if req.infos.contains(&INFO_NAME) {
                    let mut d = INFO_NAME.to_be_bytes().to_vec();
                    d.extend_from_slice(info.name.as_bytes());
                    out.extend_from_slice(&option_reply(opt.option, REP_INFO, &d));
                }
                if req.infos.contains(&INFO_DESCRIPTION) && !info.description.is_empty() {
                    let mut d = INFO_DESCRIPTION.to_be_bytes().to_vec();
                    d.extend_from_slice(info.description.as_bytes());
                    out.extend_from_slice(&option_reply(opt.option, REP_INFO, &d));
                }
                out.extend_from_slice(&option_reply(opt.option, REP_ACK, &[]));
                w.write_all(&out)?;
                if let Some(device) = device {
                    return Ok(Negotiated { device });
                }
            }
            OPT_STRUCTURED_REPLY
            | OPT_LIST_META_CONTEXT
            | OPT_SET_META_CONTEXT
            | OPT_EXTENDED_HEADERS
            | OPT_STARTTLS => {
                w.write_all(&reply(
                    REP_ERR_UNSUP,
                    "not supported by this server; simple replies only",
                ))?;
            }
            other => {
                w.write_all(&reply(REP_ERR_UNSUP, &format!("unknown option {other}")))?;
            }
        }
    }
    Err(HandshakeEnd::Protocol(format!(
        "more than {} options",
        limits.max_options
    )))
}

fn base_flags() -> u16 {
    TFLAG_HAS_FLAGS
        | TFLAG_SEND_FLUSH
        | TFLAG_SEND_FUA
        | TFLAG_SEND_TRIM
        | TFLAG_SEND_WRITE_ZEROES
        // FLUSH reaches stable storage for every write completed on any connection.
        | TFLAG_CAN_MULTI_CONN
}

fn transmission_flags(dev: &dyn BlockDevice) -> u16 {
    if dev.read_only() {
        base_flags() | TFLAG_READ_ONLY
    } else {
        base_flags()
    }
}

/// Requests a device took with `submit` and has not answered.
#[derive(Debug, Default)]
struct Inflight {
    requests: usize,
    bytes: u64,
}

/// The read side of a connection, locked by the worker reading requests.
type Held<'a, S> = std::sync::MutexGuard<'a, BufReader<ArcRead<S>>>;

struct Conn<S> {
    stream: Arc<S>,
    reader: Mutex<BufReader<ArcRead<S>>>,
    writer: Mutex<()>,
    /// Replies of submitted requests not written yet: whoever holds `writer` next
    /// writes them (see `write_queued`).
    queued: Mutex<Vec<u8>>,
    /// Submitted requests not answered yet; the connection ends after they are.
    submitted: Mutex<Inflight>,
    answered: Condvar,
    /// A thread is writing queued replies the socket did not take at once.
    helper: AtomicBool,
    device: Arc<dyn BlockDevice>,
    closing: AtomicBool,
    outcome: Mutex<Option<Outcome>>,
    limits: Limits,
    pool: Arc<Pool>,
}

/// The write payload buffers of one connection, reused: a fresh buffer of a MiB costs
/// zeroing and page faults every time.
#[derive(Debug)]
struct Pool {
    free: Mutex<Vec<Vec<u8>>>,
    max: usize,
}

impl Pool {
    /// A buffer of at least `len` bytes (only bytes it never held before are zeroed).
    fn take(&self, len: usize) -> Vec<u8> {
        let mut v = self
            .free
            .lock()
            .ok()
            .and_then(|mut f| f.pop())
            .unwrap_or_default();
        if v.len() < len {
            v.resize(len, 0);
        }
        v
    }
}

/// A payload handed to the device; its buffer returns to the pool when the last
/// handle on it is dropped.
struct Pooled {
    v: Vec<u8>,
    len: usize,
    pool: std::sync::Weak<Pool>,
}

impl Pooled {
    fn share(v: Vec<u8>, len: usize, pool: &Arc<Pool>) -> Bytes {
        Bytes::from_owner(Pooled {
            v,
            len,
            pool: Arc::downgrade(pool),
        })
    }
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.v[..self.len]
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if self.v.capacity() > KEEP_BUF {
            return;
        }
        if let Some(pool) = self.pool.upgrade()
            && let Ok(mut f) = pool.free.lock()
            && f.len() < pool.max
        {
            f.push(std::mem::take(&mut self.v));
        }
    }
}

/// Lets a BufReader own a shared stream.
struct ArcRead<S>(Arc<S>);

impl<S> Read for ArcRead<S>
where
    for<'a> &'a S: Read,
{
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        (&*self.0).read(buf)
    }
}

enum Next {
    Request(Request),
    /// A write to carry out, with its payload.
    Write(Request, Bytes),
    /// Reply with an error; no data to carry out.
    Reject(Request, u32),
    Stop,
}

fn transmission<S>(stream: Arc<S>, device: Arc<dyn BlockDevice>, limits: &Limits) -> Outcome
where
    S: Stream,
    for<'a> &'a S: Read + Write,
{
    let conn = Arc::new(Conn {
        reader: Mutex::new(BufReader::with_capacity(64 << 10, ArcRead(stream.clone()))),
        stream,
        writer: Mutex::new(()),
        queued: Mutex::new(Vec::new()),
        submitted: Mutex::new(Inflight::default()),
        answered: Condvar::new(),
        helper: AtomicBool::new(false),
        device,
        closing: AtomicBool::new(false),
        outcome: Mutex::new(None),
        limits: limits.clone(),
        pool: Arc::new(Pool {
            free: Mutex::new(Vec::new()),
            max: limits.workers.max(1),
        }),
    });
    let workers = limits.workers.max(1);
    std::thread::scope(|scope| {
        for _ in 1..workers {
            let conn = conn.clone();
            scope.spawn(move || worker(&conn));
        }
        worker(&conn);
    });
    // Requests a device took with `submit` still get their replies.
    if let Ok(mut n) = conn.submitted.lock() {
        let deadline = std::time::Instant::now() + SUBMITTED_WAIT;
        while n.requests > 0 {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                tracing::warn!(
                    requests = n.requests,
                    "closing the connection with submitted requests unanswered"
                );
                break;
            }
            n = match conn.answered.wait_timeout(n, left) {
                Ok((n, _)) => n,
                Err(_) => break,
            };
        }
    }
    if let Ok(_g) = conn.writer.lock() {
        conn.write_queued_locked(true);
    }
    conn.stream.shutdown();
    let outcome = conn.outcome.lock().map(|mut o| o.take()).ok().flatten();
    outcome.unwrap_or(Outcome::Closed)
}

impl<S> Conn<S>
where
    S: Stream,
    for<'a> &'a S: Read + Write,
{
    fn end(&self, outcome: Outcome, hard: bool) {
        if let Ok(mut o) = self.outcome.lock() {
            o.get_or_insert(outcome);
        }
        self.closing.store(true, Ordering::SeqCst);
        if hard {
            self.stream.shutdown();
        }
    }

    /// Reads the next request and, for writes, its payload into `buf`.
    /// Reads the next request with the read lock in `held`, taking it first if empty;
    /// the caller keeps it to read on (after a submitted request) or lets it go.
    fn next<'a>(&'a self, held: &mut Option<Held<'a, S>>, buf: &mut Vec<u8>) -> Next {
        if held.is_none() {
            match self.reader.lock() {
                Ok(g) => *held = Some(g),
                Err(_) => return Next::Stop,
            }
        }
        let Some(r) = held.as_mut() else {
            return Next::Stop;
        };
        if self.closing.load(Ordering::SeqCst) {
            return Next::Stop;
        }
        let mut hdr = [0u8; REQUEST_HEADER_LEN];
        if let Err(e) = r.read_exact(&mut hdr) {
            let why = if e.kind() == io::ErrorKind::UnexpectedEof {
                "client closed the connection without NBD_CMD_DISC".to_owned()
            } else {
                format!("read: {e}")
            };
            self.end(Outcome::Dropped(why), true);
            return Next::Stop;
        }
        let req = match proto::parse_request(&hdr) {
            Ok(req) => req,
            Err(e) => {
                self.end(Outcome::Dropped(format!("bad request: {e}")), true);
                return Next::Stop;
            }
        };
        let verdict = proto::check_request(
            &req,
            self.device.size(),
            self.limits.max_payload,
            self.device.read_only(),
        );
        let wants_payload = match verdict {
            Verdict::Run => req.kind == CMD_WRITE,
            Verdict::Fail { payload, .. } => payload,
            Verdict::Close => {
                self.end(
                    Outcome::Dropped(format!(
                        "write of {} bytes exceeds the {}-byte limit",
                        req.length, self.limits.max_payload
                    )),
                    true,
                );
                return Next::Stop;
            }
        };
        if wants_payload && matches!(verdict, Verdict::Run) {
            // Its own buffer, handed to the device with the request.
            let len = req.length as usize;
            let mut data = self.pool.take(len);
            if let Err(e) = r.read_exact(&mut data[..len]) {
                self.end(
                    Outcome::Dropped(format!("client vanished mid-write: {e}")),
                    true,
                );
                return Next::Stop;
            }
            return Next::Write(req, Pooled::share(data, len, &self.pool));
        }
        if wants_payload {
            buf.resize(REPLY_HDR + req.length as usize, 0);
            if let Err(e) = r.read_exact(&mut buf[REPLY_HDR..]) {
                self.end(
                    Outcome::Dropped(format!("client vanished mid-write: {e}")),
                    true,
                );
                return Next::Stop;
            }
        }
        if req.kind == CMD_DISC {
            // No more requests are read; those in flight still get their replies.
            self.end(Outcome::Closed, false);
            return Next::Stop;
        }
        match verdict {
            Verdict::Fail { errno, .. } => Next::Reject(req, errno),
            _ => Next::Request(req),
        }
    }

    fn execute(&self, req: &Request, buf: &mut Vec<u8>) -> Result<usize, DeviceError> {
        let fua = req.flags & CMD_FLAG_FUA != 0;
        let len = req.length as usize;
        match req.kind {
            CMD_READ => {
                buf.resize(REPLY_HDR + len, 0);
                self.device.read_at(&mut buf[REPLY_HDR..], req.offset)?;
                Ok(len)
            }
            CMD_WRITE => self
                .device
                .write_at(&buf[REPLY_HDR..REPLY_HDR + len], req.offset, fua)
                .map(|()| 0),
            CMD_FLUSH => self.device.flush().map(|()| 0),
            CMD_TRIM => self
                .device
                .trim(req.offset, u64::from(req.length), fua)
                .map(|()| 0),
            CMD_WRITE_ZEROES => {
                let may_trim = req.flags & CMD_FLAG_NO_HOLE == 0;
                self.device
                    .write_zeroes(req.offset, u64::from(req.length), may_trim, fua)
                    .map(|()| 0)
            }
            _ => Err(DeviceError::Io(io::Error::other("command not handled"))),
        }
    }

    fn reply(&self, buf: &mut [u8], errno: u32, cookie: u64, data_len: usize) {
        let Some(hdr) = buf
            .get_mut(..REPLY_HDR)
            .and_then(|h| <&mut [u8; 16]>::try_from(h).ok())
        else {
            return;
        };
        proto::simple_reply_header(hdr, errno, cookie);
        let Ok(g) = self.writer.lock() else { return };
        let mut w = &*self.stream;
        if let Err(e) = w.write_all(&buf[..REPLY_HDR + data_len]) {
            drop(g);
            self.end(Outcome::Dropped(format!("write reply: {e}")), true);
            return;
        }
        self.write_queued_locked(true);
        drop(g);
        // Replies queued while this one was written, by a thread that found the
        // writer busy.
        if self.queued.lock().is_ok_and(|q| !q.is_empty()) {
            let _ = self.write_queued(true);
        }
    }

    /// Writes the queued replies; the caller holds `writer`. Without `wait`, writes
    /// only what the socket takes now and puts the rest back first in the queue.
    /// True when nothing is left.
    fn write_queued_locked(&self, wait: bool) -> bool {
        let batch = match self.queued.lock() {
            Ok(mut q) if !q.is_empty() => std::mem::take(&mut *q),
            _ => return true,
        };
        let written = if wait {
            let mut w = &*self.stream;
            w.write_all(&batch).map(|()| batch.len())
        } else {
            let mut at = 0;
            loop {
                match self.stream.write_nowait(&batch[at..]) {
                    Ok(0) => break Err(io::Error::from(io::ErrorKind::WriteZero)),
                    Ok(n) => {
                        at += n;
                        if at == batch.len() {
                            break Ok(at);
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break Ok(at),
                    Err(e) => break Err(e),
                }
            }
        };
        match written {
            Ok(n) if n == batch.len() => true,
            Ok(n) => {
                if let Ok(mut q) = self.queued.lock() {
                    let later = std::mem::replace(&mut *q, batch[n..].to_vec());
                    q.extend_from_slice(&later);
                }
                false
            }
            Err(e) => {
                self.end(Outcome::Dropped(format!("write reply: {e}")), true);
                true
            }
        }
    }

    /// Writes the queued replies unless another thread holds the writer (it writes
    /// them before it lets go). Without `wait`, returns false when the socket did not
    /// take everything.
    fn write_queued(&self, wait: bool) -> bool {
        loop {
            let g = match self.writer.try_lock() {
                Ok(g) => g,
                Err(TryLockError::WouldBlock) => return true,
                Err(TryLockError::Poisoned(_)) => return true,
            };
            let all = self.write_queued_locked(wait);
            drop(g);
            if !all {
                return false;
            }
            if self.queued.lock().map_or(true, |q| q.is_empty()) {
                return true;
            }
        }
    }
}

/// A connection as the reply sink of its submitted requests.
struct Sink<S>(Arc<Conn<S>>);

impl<S> ReplySink for Sink<S>
where
    S: Stream,
    for<'a> &'a S: Read + Write,
{
    fn queue(&self, cookie: u64, errno: u32) {
        let mut hdr = [0u8; REPLY_HDR];
        proto::simple_reply_header(&mut hdr, errno, cookie);
        if let Ok(mut q) = self.0.queued.lock() {
            q.extend_from_slice(&hdr);
        }
    }

    fn conn_id(&self) -> usize {
        Arc::as_ptr(&self.0) as usize
    }

    fn send_queued(&self, answered: usize, bytes: u64) {
        let conn = &self.0;
        if !conn.write_queued(false) && !conn.helper.swap(true, Ordering::SeqCst) {
            // The client is not reading: a thread of its own waits for it, never the
            // device's.
            let c = conn.clone();
            let spawned = std::thread::Builder::new()
                .name("nbd-replies".into())
                .spawn(move || {
                    c.write_queued(true);
                    c.helper.store(false, Ordering::SeqCst);
                    // What was queued between the write and the flag.
                    c.write_queued(true);
                });
            if spawned.is_err() {
                conn.helper.store(false, Ordering::SeqCst);
                conn.end(
                    Outcome::Dropped("cannot start a thread to write replies".into()),
                    true,
                );
            }
        }
        if let Ok(mut n) = conn.submitted.lock() {
            n.requests = n.requests.saturating_sub(answered);
            n.bytes = n.bytes.saturating_sub(bytes);
            // Workers held back by the limits, and a closing connection, wait for this.
            conn.answered.notify_all();
        }
    }
}

const REPLY_HDR: usize = 16;
/// Submitted requests, and their payload bytes, one connection may have unanswered;
/// the worker reading requests waits for answers beyond (one request is always let
/// through). Without the limit a client that keeps sending without reading replies
/// would hold any amount of memory in write payloads.
const MAX_SUBMITTED: usize = 128;
const MAX_SUBMITTED_BYTES: u64 = 64 << 20;
/// Longest a closing connection waits for the replies of submitted requests.
const SUBMITTED_WAIT: Duration = Duration::from_secs(60);
/// Worker buffers above this size are released after use so idle connections stay
/// small; 4 MiB requests plus the reply header still reuse their buffer.
const KEEP_BUF: usize = (4 << 20) + REPLY_HDR;

/// Offers a write or flush to the device's `submit`: `None` when it took it (the reply
/// comes from its completion), else the request back to carry out here.
fn submit<S>(conn: &Arc<Conn<S>>, req: &Request, sub: Submit) -> Option<Submit>
where
    S: Stream,
    for<'a> &'a S: Read + Write,
{
    let bytes = match &sub {
        Submit::Write { data, .. } => data.len() as u64,
        Submit::Flush => 0,
    };
    {
        let Ok(mut n) = conn.submitted.lock() else {
            return Some(sub);
        };
        while n.requests > 0
            && (n.requests >= MAX_SUBMITTED || n.bytes + bytes > MAX_SUBMITTED_BYTES)
        {
            n = match conn.answered.wait(n) {
                Ok(n) => n,
                Err(_) => return Some(sub),
            };
        }
        n.requests += 1;
        n.bytes += bytes;
    }
    let done = Completion {
        sink: Some(Arc::new(Sink(conn.clone()))),
        cookie: req.cookie,
        kind: req.kind,
        bytes,
    };
    match conn.device.submit(sub, done) {
        Ok(()) => None,
        Err((sub, mut done)) => {
            // Not taken: no reply from it, and not counted.
            done.sink = None;
            if let Ok(mut n) = conn.submitted.lock() {
                n.requests = n.requests.saturating_sub(1);
                n.bytes = n.bytes.saturating_sub(bytes);
                conn.answered.notify_all();
            }
            Some(sub)
        }
    }
}

fn worker<S>(conn: &Arc<Conn<S>>)
where
    S: Stream,
    for<'a> &'a S: Read + Write,
{
    let mut buf = vec![0u8; REPLY_HDR];
    // While the device takes requests with `submit`, this worker keeps the read lock
    // and reads on: no hand-over to another worker (a thread wake-up) per request.
    let mut held = None;
    loop {
        let next = conn.next(&mut held, &mut buf);
        let submitted = match &next {
            Next::Write(..) => true,
            Next::Request(req) => req.kind == CMD_FLUSH,
            _ => false,
        };
        if !submitted {
            held = None;
        }
        match next {
            Next::Stop => return,
            Next::Reject(req, errno) => {
                buf.resize(REPLY_HDR, 0);
                conn.reply(&mut buf, errno, req.cookie, 0);
            }
            next @ (Next::Request(_) | Next::Write(..)) => {
                let (req, result) = match next {
                    Next::Write(req, data) => {
                        let fua = req.flags & CMD_FLAG_FUA != 0;
                        let sub = Submit::Write {
                            data,
                            offset: req.offset,
                            fua,
                        };
                        let back = submit(conn, &req, sub);
                        if back.is_some() {
                            held = None;
                        }
                        let r = match back {
                            None => continue,
                            Some(Submit::Write { data, .. }) => {
                                conn.device.write_shared(data, req.offset, fua).map(|()| 0)
                            }
                            Some(Submit::Flush) => Err(DeviceError::Io(io::Error::other(
                                "the device handed back another request",
                            ))),
                        };
                        (req, r)
                    }
                    Next::Request(req) if req.kind == CMD_FLUSH => {
                        if submit(conn, &req, Submit::Flush).is_none() {
                            continue;
                        }
                        held = None;
                        let r = conn.device.flush().map(|()| 0);
                        (req, r)
                    }
                    Next::Request(req) => {
                        let r = conn.execute(&req, &mut buf);
                        (req, r)
                    }
                    _ => continue,
                };
                let (errno, data_len) = match result {
                    Ok(n) => (0, n),
                    Err(e) => {
                        tracing::warn!(
                            cmd = req.kind,
                            offset = req.offset,
                            len = req.length,
                            "request failed: {e}"
                        );
                        (e.errno(), 0)
                    }
                };
                if buf.len() < REPLY_HDR {
                    buf.resize(REPLY_HDR, 0);
                }
                conn.reply(&mut buf, errno, req.cookie, data_len);
            }
        }
        if buf.capacity() > KEEP_BUF {
            buf = vec![0u8; REPLY_HDR];
        }
    }
}
