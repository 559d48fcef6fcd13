//! Connections between the nodes of a replicated resource: the authenticated
//! handshake and the framed message stream after it.
//!
//! Handshake (all integers little-endian):
//!
//! ```text
//! dialer   -> MAGIC, version u8, name length u8, resource name, from u8, to u8,
//!             data size u64, nonce_d [32]
//! acceptor -> MAGIC, version u8, status u8 (0 = go on, 1 = refused)
//!             refused: reason length u16, reason (UTF-8), then the connection closes
//!             go on:   nonce_a [32], HMAC-SHA256(secret, "acceptor" | offer | nonce_a)
//! dialer   -> HMAC-SHA256(secret, "dialer" | offer | nonce_a)
//! acceptor -> status u8 (0 = connected), or 1 and a reason as above
//! ```
//!
//! `offer` is everything the dialer sent, so both MACs bind the resource, both node ids,
//! the size and both nonces: a replayed or redirected handshake does not verify. After
//! the handshake both sides exchange `wire` frames.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use wire::{HEADER_LEN, MAX_PAYLOAD, Msg, NodeId};

pub const MAGIC: [u8; 8] = *b"TANDEMRP";
/// How long a handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const NONCE: usize = 32;
const MAC: usize = 32;
const MAX_REASON: usize = 1024;

#[derive(Debug, Error)]
pub enum PeerError {
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the peer does not speak tandem's replication protocol (bad magic)")]
    BadMagic,
    #[error("the peer speaks replication protocol version {theirs}, this node {ours}")]
    Version { theirs: u8, ours: u8 },
    #[error("the peer refused: {0}")]
    Refused(String),
    #[error("authentication failed: the peer does not know the resource's secret")]
    BadMac,
    #[error("malformed handshake: {0}")]
    Malformed(&'static str),
    #[error("handshake timed out")]
    Timeout,
    #[error("bad frame: {0}")]
    Frame(String),
}

/// What a dialer asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub resource: String,
    pub from: NodeId,
    pub to: NodeId,
    /// Data bytes of the volume as the dialer sees it.
    pub size: u64,
    pub nonce: [u8; NONCE],
}

impl Offer {
    fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(64 + self.resource.len());
        b.extend_from_slice(&MAGIC);
        b.push(wire::VERSION);
        b.push(self.resource.len() as u8);
        b.extend_from_slice(self.resource.as_bytes());
        b.push(self.from);
        b.push(self.to);
        b.extend_from_slice(&self.size.to_le_bytes());
        b.extend_from_slice(&self.nonce);
        b
    }
}

/// Random bytes from the kernel.
pub fn nonce() -> std::io::Result<[u8; NONCE]> {
    use std::io::Read;
    let mut b = [0u8; NONCE];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b)
}

fn mac(
    secret: &str,
    role: &[u8],
    offer: &Offer,
    nonce_a: &[u8; NONCE],
) -> Result<Hmac<Sha256>, PeerError> {
    // HMAC takes keys of any length, so this fails only in theory; it fails closed.
    let mut m = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|_| PeerError::BadMac)?;
    m.update(role);
    m.update(&offer.encode());
    m.update(nonce_a);
    Ok(m)
}

async fn send_refusal<S: AsyncWrite + Unpin>(s: &mut S, reason: &str) -> Result<(), PeerError> {
    let r = &reason.as_bytes()[..reason.len().min(MAX_REASON)];
    let mut b = Vec::with_capacity(12 + r.len());
    b.extend_from_slice(&MAGIC);
    b.push(wire::VERSION);
    b.push(1);
    b.extend_from_slice(&(r.len() as u16).to_le_bytes());
    b.extend_from_slice(r);
    s.write_all(&b).await?;
    s.flush().await?;
    Ok(())
}

async fn read_reason<S: AsyncRead + Unpin>(s: &mut S) -> Result<String, PeerError> {
    let mut l = [0u8; 2];
    s.read_exact(&mut l).await?;
    let len = usize::from(u16::from_le_bytes(l));
    if len > MAX_REASON {
        return Err(PeerError::Malformed("refusal reason too long"));
    }
    let mut r = vec![0u8; len];
    s.read_exact(&mut r).await?;
    Ok(String::from_utf8_lossy(&r).into_owned())
}

/// Dialer side: offers `offer` and proves knowledge of `secret`.
pub async fn dial<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    offer: &Offer,
    secret: &str,
) -> Result<(), PeerError> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        s.write_all(&offer.encode()).await?;
        s.flush().await?;
        let mut head = [0u8; 10];
        s.read_exact(&mut head).await?;
        if head[..8] != MAGIC {
            return Err(PeerError::BadMagic);
        }
        if head[8] != wire::VERSION && head[9] == 0 {
            return Err(PeerError::Version {
                theirs: head[8],
                ours: wire::VERSION,
            });
        }
        if head[9] != 0 {
            return Err(PeerError::Refused(read_reason(s).await?));
        }
        let mut nonce_a = [0u8; NONCE];
        s.read_exact(&mut nonce_a).await?;
        let mut their = [0u8; MAC];
        s.read_exact(&mut their).await?;
        // Our proof goes out even when theirs is wrong, so that the acceptor learns
        // of the mismatch too and both sides log it.
        let mine = mac(secret, b"dialer", offer, &nonce_a)?
            .finalize()
            .into_bytes();
        s.write_all(&mine).await?;
        s.flush().await?;
        mac(secret, b"acceptor", offer, &nonce_a)?
            .verify_slice(&their)
            .map_err(|_| PeerError::BadMac)?;
        let mut st = [0u8; 1];
        s.read_exact(&mut st).await?;
        if st[0] != 0 {
            return Err(PeerError::Refused(read_reason(s).await?));
        }
        Ok(())
    })
    .await
    .map_err(|_| PeerError::Timeout)?
}

/// Acceptor side, first half: reads the dialer's offer.
pub async fn read_offer<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> Result<Offer, PeerError> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let mut head = [0u8; 10];
        s.read_exact(&mut head).await?;
        if head[..8] != MAGIC {
            return Err(PeerError::BadMagic);
        }
        if head[8] != wire::VERSION {
            let e = PeerError::Version {
                theirs: head[8],
                ours: wire::VERSION,
            };
            let _ = send_refusal(s, &e.to_string()).await;
            return Err(e);
        }
        let mut name = vec![0u8; usize::from(head[9])];
        s.read_exact(&mut name).await?;
        let resource = String::from_utf8(name)
            .map_err(|_| PeerError::Malformed("resource name is not UTF-8"))?;
        let mut rest = [0u8; 2 + 8 + NONCE];
        s.read_exact(&mut rest).await?;
        let mut size = [0u8; 8];
        size.copy_from_slice(&rest[2..10]);
        let mut nonce_d = [0u8; NONCE];
        nonce_d.copy_from_slice(&rest[10..]);
        Ok(Offer {
            resource,
            from: rest[0],
            to: rest[1],
            size: u64::from_le_bytes(size),
            nonce: nonce_d,
        })
    })
    .await
    .map_err(|_| PeerError::Timeout)?
}

/// Acceptor side: refuses an offer, telling the dialer why.
pub async fn refuse<S: AsyncWrite + Unpin>(s: &mut S, reason: &str) {
    let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, send_refusal(s, reason)).await;
}

/// Acceptor side, second half: mutual authentication of an acceptable offer.
pub async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    offer: &Offer,
    secret: &str,
) -> Result<(), PeerError> {
    tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let nonce_a = nonce()?;
        let mine = mac(secret, b"acceptor", offer, &nonce_a)?
            .finalize()
            .into_bytes();
        let mut b = Vec::with_capacity(10 + NONCE + MAC);
        b.extend_from_slice(&MAGIC);
        b.push(wire::VERSION);
        b.push(0);
        b.extend_from_slice(&nonce_a);
        b.extend_from_slice(&mine);
        s.write_all(&b).await?;
        s.flush().await?;
        let mut their = [0u8; MAC];
        s.read_exact(&mut their).await?;
        if mac(secret, b"dialer", offer, &nonce_a)?
            .verify_slice(&their)
            .is_err()
        {
            let reason = "authentication failed: check that both nodes have the same secret";
            let r = reason.as_bytes();
            let mut b = vec![1u8];
            b.extend_from_slice(&(r.len() as u16).to_le_bytes());
            b.extend_from_slice(r);
            let _ = s.write_all(&b).await;
            return Err(PeerError::BadMac);
        }
        s.write_all(&[0]).await?;
        s.flush().await?;
        Ok(())
    })
    .await
    .map_err(|_| PeerError::Timeout)?
}

/// Reads frames from a connection. Frames are read into one shared buffer, many at a
/// time when they are small; a `Write`'s data is a slice of that buffer, so it reaches
/// the disk without another copy.
#[derive(Debug)]
pub struct FrameReader<S> {
    s: S,
    buf: BytesMut,
    chunk: usize,
    /// Large buffers read before, kept for reuse once every frame in them is dropped:
    /// a fresh allocation of a MiB costs more in page faults than filling it.
    spare: Vec<(BytesMut, usize)>,
    /// Size of `buf`'s allocation.
    alloc: usize,
    /// When the last frame of at least `SPARE_MIN` bytes arrived.
    last_big: Instant,
}

/// Buffers at least this large are kept for reuse, at most `SPARE` of them (the
/// frames of replicated writes in flight at once), as long as such frames keep coming.
const SPARE_MIN: usize = 512 << 10;
const SPARE: usize = 8;
const SPARE_IDLE: Duration = Duration::from_secs(1);

impl<S: AsyncRead + Unpin> FrameReader<S> {
    /// `chunk`: how much is asked of the socket at once (a frame larger than that is
    /// read whole).
    pub fn new(s: S, chunk: usize) -> Self {
        FrameReader {
            s,
            buf: BytesMut::new(),
            chunk,
            spare: Vec::new(),
            alloc: 0,
            last_big: Instant::now(),
        }
    }

    /// Makes room for `need` more bytes, and if that takes a new buffer, for more
    /// frames behind them.
    fn make_room(&mut self, need: usize) {
        if self.buf.capacity() - self.buf.len() >= need || self.buf.try_reclaim(need) {
            return;
        }
        let want = self.buf.len() + need.max(self.chunk);
        let (mut next, alloc) = match self.spare.iter_mut().position(|(b, _)| b.try_reclaim(want)) {
            Some(i) => self.spare.swap_remove(i),
            None => (BytesMut::with_capacity(want), want),
        };
        // The part of a frame read so far moves along.
        next.extend_from_slice(&self.buf);
        let mut old = std::mem::replace(&mut self.buf, next);
        let old_alloc = std::mem::replace(&mut self.alloc, alloc);
        old.clear();
        // The old buffer is still shared with frames in use (else it would have been
        // reclaimed): it can be reused once they are dropped.
        if self.spare.len() < SPARE && old_alloc >= SPARE_MIN {
            self.spare.push((old, old_alloc));
        }
    }

    /// Reads until the buffer holds `n` bytes; false at the end of the stream.
    async fn fill(&mut self, n: usize) -> std::io::Result<bool> {
        while self.buf.len() < n {
            self.make_room(n - self.buf.len());
            if self.s.read_buf(&mut self.buf).await? == 0 {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Reads one frame. `Ok(None)` at a clean end of stream between frames.
    pub async fn next(&mut self) -> Result<Option<Msg>, PeerError> {
        if !self.fill(HEADER_LEN).await? {
            return if self.buf.is_empty() {
                Ok(None)
            } else {
                Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into())
            };
        }
        let b = &self.buf;
        if b[0] != wire::VERSION {
            return Err(PeerError::Frame(format!(
                "frame of protocol version {}, expected {}",
                b[0],
                wire::VERSION
            )));
        }
        let len = u32::from_le_bytes([b[2], b[3], b[4], b[5]]) as usize;
        if len > MAX_PAYLOAD {
            return Err(PeerError::Frame(format!(
                "frame of {len} bytes is too large"
            )));
        }
        if !self.fill(HEADER_LEN + len).await? {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        if len >= SPARE_MIN {
            self.last_big = Instant::now();
        } else if !self.spare.is_empty() && self.last_big.elapsed() >= SPARE_IDLE {
            // Large writes stopped: their buffers go.
            self.spare.clear();
        }
        let frame = self.buf.split_to(HEADER_LEN + len).freeze();
        let (msg, _) = Msg::decode_shared(&frame).map_err(|e| PeerError::Frame(e.to_string()))?;
        Ok(Some(msg))
    }
}

/// Frames queued for one connection, not yet written. Small frames are gathered in one
/// buffer, a `Write`'s data is sent from where it lies, all of it with vectored writes.
/// Whoever holds the outbox may write: the volume's task without waiting (which saves
/// the hop to a writer task for each message), the writer task when the socket is full.
#[derive(Debug, Default)]
pub struct Outbox {
    /// Messages not yet encoded: encoding (and the CRC32C of a write's data) happens
    /// in whichever task writes, not in the one that queues.
    msgs: VecDeque<Msg>,
    /// Data bytes of `msgs`.
    msg_data: usize,
    /// Encoded bytes not yet part of `out`.
    small: BytesMut,
    scratch: Vec<u8>,
    out: VecDeque<Bytes>,
    /// Bytes in `out`.
    queued: usize,
    /// Stream offsets where the frames not yet written end.
    ends: VecDeque<u64>,
    pushed: u64,
    written: u64,
}

/// Segments handed to one vectored write.
const MAX_IOV: usize = 64;

impl Outbox {
    /// Queues one frame.
    pub fn push(&mut self, msg: Msg) {
        self.msg_data += msg.data_len();
        self.msgs.push_back(msg);
    }

    fn encode(&mut self) {
        while let Some(msg) = self.msgs.pop_front() {
            self.msg_data -= msg.data_len();
            self.encode_one(&msg);
        }
    }

    fn encode_one(&mut self, msg: &Msg) {
        self.scratch.clear();
        let tail = msg.encode_into(&mut self.scratch);
        self.small.extend_from_slice(&self.scratch);
        self.pushed += self.scratch.len() as u64;
        if let Some(data) = tail {
            self.seal();
            self.pushed += data.len() as u64;
            self.queued += data.len();
            self.out.push_back(data);
        }
        self.ends.push_back(self.pushed);
    }

    fn seal(&mut self) {
        if !self.small.is_empty() {
            let b = self.small.split().freeze();
            self.queued += b.len();
            self.out.push_back(b);
        }
    }

    /// Frames not yet written (whole or in part).
    pub fn frames(&self) -> usize {
        self.ends.len() + self.msgs.len()
    }

    /// Bytes not yet written (messages not yet encoded count their data only).
    pub fn bytes(&self) -> usize {
        self.queued + self.small.len() + self.msg_data
    }

    /// Writes with `write` (a non-blocking vectored write) until everything is written
    /// (`Ok(true)`) or the socket takes no more (`Ok(false)`).
    pub fn write_with(
        &mut self,
        mut write: impl FnMut(&[IoSlice<'_>]) -> std::io::Result<usize>,
    ) -> std::io::Result<bool> {
        self.encode();
        self.seal();
        while !self.out.is_empty() {
            let r = {
                let iov: Vec<IoSlice<'_>> = self
                    .out
                    .iter()
                    .take(MAX_IOV)
                    .map(|b| IoSlice::new(b))
                    .collect();
                write(&iov)
            };
            let mut n = match r {
                Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.queued -= n;
            self.written += n as u64;
            while self.ends.front().is_some_and(|e| *e <= self.written) {
                self.ends.pop_front();
            }
            while n > 0 {
                let Some(front) = self.out.front_mut() else {
                    break;
                };
                if n >= front.len() {
                    n -= front.len();
                    self.out.pop_front();
                } else {
                    *front = front.slice(n..);
                    n = 0;
                }
            }
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offer() -> Offer {
        Offer {
            resource: "r0".into(),
            from: 1,
            to: 0,
            size: 1 << 20,
            nonce: [9; NONCE],
        }
    }

    async fn run(
        dial_secret: &str,
        accept_secret: &str,
    ) -> (Result<(), PeerError>, Result<Offer, PeerError>) {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let o = offer();
        let d = async { dial(&mut a, &o, dial_secret).await };
        let acc = async {
            let got = read_offer(&mut b).await?;
            accept(&mut b, &got, accept_secret).await?;
            Ok(got)
        };
        tokio::join!(d, acc)
    }

    #[tokio::test]
    async fn same_secret_connects_and_carries_the_offer() {
        let (d, a) = run("s3cret-value", "s3cret-value").await;
        d.unwrap();
        assert_eq!(a.unwrap(), offer());
    }

    #[tokio::test]
    async fn different_secrets_fail_on_both_sides() {
        let (d, a) = run("s3cret-value", "other-secret").await;
        assert!(matches!(d, Err(PeerError::BadMac)), "{d:?}");
        assert!(a.is_err());
    }

    #[tokio::test]
    async fn a_refusal_reaches_the_dialer_with_its_reason() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let o = offer();
        let d = async { dial(&mut a, &o, "s3cret-value").await };
        let acc = async {
            let _ = read_offer(&mut b).await;
            refuse(&mut b, "no resource named r0 here").await;
            drop(b);
        };
        let (d, ()) = tokio::join!(d, acc);
        match d {
            Err(PeerError::Refused(r)) => assert!(r.contains("no resource named r0")),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn garbage_and_other_versions_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        a.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert!(matches!(read_offer(&mut b).await, Err(PeerError::BadMagic)));

        let (mut a, mut b) = tokio::io::duplex(4096);
        let mut bytes = offer().encode();
        bytes[8] = wire::VERSION + 1;
        a.write_all(&bytes).await.unwrap();
        assert!(matches!(
            read_offer(&mut b).await,
            Err(PeerError::Version { .. })
        ));
    }

    #[tokio::test]
    async fn frames_roundtrip_and_bad_frames_are_errors() {
        let msgs = vec![
            Msg::WriteAck { seq: 5, ok: true },
            Msg::Write {
                seq: 6,
                block: 1,
                count: 1,
                fua: false,
                targets: 3,
                data: vec![7u8; 4096].into(),
            },
            Msg::Ping,
            Msg::Write {
                seq: 7,
                block: 2,
                count: 100,
                fua: true,
                targets: 3,
                data: (0..409_600u32).map(|i| i as u8).collect::<Vec<u8>>().into(),
            },
            Msg::FlushAck { seq: 8, ok: true },
        ];
        let mut o = Outbox::default();
        for m in &msgs {
            o.push(m.clone());
        }
        assert_eq!(o.frames(), msgs.len());
        // A socket that takes at most 1000 bytes per call, and is full every third.
        let mut sent = Vec::new();
        let mut calls = 0;
        let mut write = |iov: &[IoSlice<'_>]| {
            calls += 1;
            if calls % 3 == 0 {
                return Err(std::io::ErrorKind::WouldBlock.into());
            }
            let mut n = 0;
            for s in iov {
                let k = s.len().min(1000 - n);
                sent.extend_from_slice(&s[..k]);
                n += k;
                if n == 1000 {
                    break;
                }
            }
            Ok(n)
        };
        let mut rounds = 0;
        while !o.write_with(&mut write).unwrap() {
            rounds += 1;
            assert!(o.frames() <= msgs.len());
        }
        assert!(rounds > 10);
        assert_eq!((o.frames(), o.bytes()), (0, 0));
        let mut r = FrameReader::new(&sent[..], 100);
        for m in &msgs {
            assert_eq!(r.next().await.unwrap().as_ref(), Some(m));
        }
        assert_eq!(r.next().await.unwrap(), None);
        let (mut a, b) = tokio::io::duplex(1 << 16);
        let mut r = FrameReader::new(b, 4096);
        let mut huge = vec![wire::VERSION, 3];
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        a.write_all(&huge).await.unwrap();
        assert!(r.next().await.is_err());
        let (mut a, b) = tokio::io::duplex(1 << 16);
        a.shutdown().await.unwrap();
        assert_eq!(FrameReader::new(b, 4096).next().await.unwrap(), None);
        // A frame cut short by the end of the stream is an error.
        let (mut a, b) = tokio::io::duplex(1 << 16);
        let bytes = Msg::WriteAck { seq: 1, ok: true }.encode();
        a.write_all(&bytes[..bytes.len() - 1]).await.unwrap();
        a.shutdown().await.unwrap();
        assert!(FrameReader::new(b, 4096).next().await.is_err());
    }
}
