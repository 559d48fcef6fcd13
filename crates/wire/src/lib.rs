//! The replication protocol between the nodes of a resource.
//!
//! Every frame starts with the protocol version, so that a peer speaking another version
//! is refused at its first byte; then a message kind, the payload length and the
//! payload. Every payload that carries volume data also carries the CRC32C of that data,
//! checked on decode. All integers are little-endian. Decoding never panics and never
//! allocates more than the frame's declared length, which is itself bounded.

pub use bytes::Bytes;
use thiserror::Error;

/// 3: online grow (`Resize`, `ResizeDone`, `ResizeCommit`). 4: allow-two-primaries
/// (`ForwardWrite`, `ForwardFlush`, `ForwardDone`). 5: settled generations
/// (`Hello::unsettled`, `UuidSettled`, `UuidUndone`). 6: `PeerLost` names the
/// lost node's unconfirmed block ranges; `Hello::tie`, `Hello::known_parent` and
/// `ResyncDone::tie`. 7: `Hello::settled`, `Hello::parent`.
pub const VERSION: u8 = 7;
/// Frame header: version, kind, payload length (u32).
pub const HEADER_LEN: usize = 6;
/// Largest payload accepted: a 32 MiB write plus its header fields.
pub const MAX_PAYLOAD: usize = (32 << 20) + 4096;
/// Most UUIDs in a history, bitmap words in one chunk, and similar lists.
pub const MAX_LIST: usize = 1 << 16;
/// Longest human-readable reason carried in a message.
pub const MAX_REASON: usize = 1024;
/// The most block ranges one `PeerLost` carries.
pub const MAX_LOST_RANGES: usize = 4096;

pub type NodeId = u8;

/// Role of a node as seen on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Secondary = 0,
    Primary = 1,
}

/// Disk state of a node as seen on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Disk {
    Diskless = 0,
    Inconsistent = 1,
    Outdated = 2,
    Consistent = 3,
    UpToDate = 4,
}

/// What a node tells a peer when their connection is (re-)established: everything the
/// peer needs to decide whether and which way to resynchronise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    pub node: NodeId,
    pub role: Role,
    pub disk: Disk,
    pub size_blocks: u64,
    pub current: u64,
    pub history: Vec<u64>,
    /// Bitmap UUID per peer slot: (peer, uuid), only non-zero entries.
    pub bitmap_uuids: Vec<(NodeId, u64)>,
    /// Number of blocks this node has marked out of sync for the receiver.
    pub dirty_blocks: u64,
    /// Set by `connect --discard-my-data`: this side gives up its changes.
    pub discard_my_data: bool,
    /// The node restarted after a crash while primary.
    pub crashed_primary: bool,
    /// The node is connected to a primary (itself excluded).
    pub primary_present: bool,
    /// Newest generation this node has seen (for diskless nodes, that has no disk).
    pub known_current: u64,
    /// The generation `known_current` was started from, when this node only heard
    /// of it (a `NewUuid` that named it as missing the writes); else 0.
    pub known_parent: u64,
    /// Handshake round, so a reply to an older round is ignored.
    pub round: u32,
    /// Highest write sequence number this node holds (its rank among equal
    /// generations: the longer prefix of the primary's write stream).
    pub last_seq: u64,
    /// Breaks a tie between two copies of one generation and `last_seq`: the lower
    /// wins. A node starts with its own id and, when a resync gives it its source's
    /// rank, takes the source's tie-break if lower, so a copy that took another's
    /// blocks also takes its precedence.
    pub tie: NodeId,
    /// `current` was started by a primary (this node or another) that has not yet
    /// confirmed it with quorum (`UuidSettled`): it may have been undone since, in
    /// which case no write under it completed. Its parent is `history[0]`.
    pub unsettled: bool,
    /// The newest generation of this node's line (`current` or one in `history`)
    /// that it knows was settled; 0 when not known.
    pub settled: u64,
    /// The generation `current` was started from; 0 when not known.
    pub parent: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    Hello(Hello),
    /// One chunk of the sender's out-of-sync bitmap for the receiver.
    Bitmap {
        round: u32,
        word_offset: u64,
        words: Vec<u64>,
        last: bool,
    },
    /// A replicated write. `targets` is the set of nodes (bit per node id) the primary
    /// sends it to; a receiver marks the others out of sync.
    Write {
        seq: u64,
        block: u64,
        count: u32,
        fua: bool,
        targets: u32,
        /// Shared between the local disk write and every peer it goes to: cloning it
        /// copies no data.
        data: Bytes,
    },
    WriteAck {
        seq: u64,
        ok: bool,
    },
    Flush {
        seq: u64,
    },
    FlushAck {
        seq: u64,
        ok: bool,
    },
    /// Every write up to `seq` reached all of its targets (or was marked for them).
    PeerAck {
        seq: u64,
    },
    /// The primary lost `node`: writes not yet peer-acked may be missing there.
    /// `ranges` are the (first block, count) of the writes `node` never confirmed,
    /// as the primary marked them: a receiver marks these for `node` too, whether
    /// it holds them as replicated writes or took them in a resync. A long list
    /// comes in several messages (at most `MAX_LOST_RANGES` each).
    PeerLost {
        node: NodeId,
        ranges: Vec<(u64, u64)>,
    },
    /// The primary started a new generation; `lost` are the nodes that missed it.
    NewUuid {
        current: u64,
        previous: u64,
        lost: u32,
    },
    NewUuidAck {
        current: u64,
    },
    /// The primary holds generation `current` with quorum and every peer present when
    /// it started acknowledged it: writes under it may complete, it is never undone.
    UuidSettled {
        current: u64,
    },
    /// The primary lost quorum before settling the generations it started after
    /// `current`, and went back to it: they are void.
    UuidUndone {
        current: u64,
    },
    RoleChanged {
        role: Role,
    },
    PromoteRequest {
        id: u64,
        current: u64,
        history: Vec<u64>,
        /// The primaries the candidate is connected to (bit per node id): a granter
        /// that sees another one refuses (allow-two-primaries).
        primaries: u32,
    },
    PromoteReply {
        id: u64,
        granted: bool,
        reason: String,
    },
    ResyncData {
        block: u64,
        /// The source's newest replicated write when it read the block: the data
        /// holds every write to the block with a sequence number up to this one.
        seq: u64,
        data: Vec<u8>,
    },
    ResyncAck {
        block: u64,
        ok: bool,
    },
    /// Checksum-based resync: the source's digest (SHA-256) of one block instead of
    /// its data. The target answers `ResyncAck` when its block has the same digest,
    /// `ResyncNeedData` when not.
    ResyncDigest {
        block: u64,
        /// As in `ResyncData`.
        seq: u64,
        digest: [u8; 32],
    },
    /// The target's block differs from the source's digest: send the data.
    ResyncNeedData {
        block: u64,
    },
    /// The source finished; the target adopts these generations and this rank.
    ResyncDone {
        current: u64,
        history: Vec<u64>,
        last_seq: u64,
        tie: NodeId,
    },
    /// The source's bitmap for a third node: where the target, now holding the
    /// source's blocks, may differ from that node.
    OtherBitmap {
        node: NodeId,
        word_offset: u64,
        words: Vec<u64>,
    },
    /// The primary's view: these nodes are UpToDate and in sync with it.
    InSync {
        mask: u32,
    },
    /// The sender leaves cleanly and marks itself Outdated.
    Leaving,
    /// Verify: digest of one block from the verify source.
    VerifyDigest {
        block: u64,
        digest: u32,
    },
    VerifyResult {
        block: u64,
        equal: bool,
    },
    VerifyDone,
    /// Keepalive from the transport: the receiver answers with `Pong`. Never reaches
    /// the replication core.
    Ping,
    Pong,
    /// A diskless primary asks an UpToDate peer for `count` blocks from `block`.
    ReadRequest {
        id: u64,
        block: u64,
        count: u32,
    },
    /// The answer to `ReadRequest` `id`: the data when `ok` (CRC32C-checked), empty
    /// when the peer could not serve it (not UpToDate, or its disk failed).
    ReadReply {
        id: u64,
        ok: bool,
        data: Vec<u8>,
    },
    /// The sender's disk state or generation changed (sent to diskless peers, which
    /// choose the peers they read from by it).
    PeerState {
        disk: Disk,
        current: u64,
    },
    /// Online grow, from the node that runs it (the coordinator): grow your backing
    /// so that it holds `size_blocks` data blocks, then answer `ResizeDone`. Nothing
    /// beyond the old size is written anywhere until `ResizeCommit`.
    Resize {
        size_blocks: u64,
    },
    /// A node's answer to `Resize`: its backing holds `size_blocks` now (`ok`), or why
    /// not.
    ResizeDone {
        size_blocks: u64,
        ok: bool,
        reason: String,
    },
    /// Every diskful node holds `size_blocks`: clients may use all of it.
    ResizeCommit {
        size_blocks: u64,
    },
    /// allow-two-primaries: the second primary hands a client write to the primary
    /// that orders writes (the first one), which replicates it like its own and
    /// answers `ForwardDone`.
    ForwardWrite {
        id: u64,
        block: u64,
        count: u32,
        fua: bool,
        data: Bytes,
    },
    /// allow-two-primaries: a client flush, forwarded like `ForwardWrite`.
    ForwardFlush {
        id: u64,
    },
    /// The outcome of a forwarded request: `result` 0 when done, else the reason it
    /// failed (`FORWARD_*`).
    ForwardDone {
        id: u64,
        result: u8,
    },
}

/// `ForwardDone` results besides 0 (done).
pub const FORWARD_NOT_PRIMARY: u8 = 1;
pub const FORWARD_NO_QUORUM: u8 = 2;
pub const FORWARD_NO_DATA: u8 = 3;
pub const FORWARD_DISK: u8 = 4;
pub const FORWARD_BUSY: u8 = 5;
pub const FORWARD_OUT_OF_RANGE: u8 = 6;
pub const FORWARD_SUSPENDED_FULL: u8 = 7;
/// The receiver stopped ordering writes (it was demoted) before it started this
/// request: the sender runs it itself once it orders writes.
pub const FORWARD_RETRY: u8 = 8;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("need more bytes")]
    Incomplete,
    #[error("peer speaks protocol version {0}, we speak {VERSION}")]
    Version(u8),
    #[error("unknown message kind {0}")]
    Kind(u8),
    #[error("frame of {0} bytes exceeds the limit of {MAX_PAYLOAD}")]
    TooLarge(usize),
    #[error("malformed {0} message")]
    Malformed(&'static str),
    #[error("data checksum mismatch in {0} message")]
    Checksum(&'static str),
}

struct W(Vec<u8>);

impl W {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bool(&mut self, v: bool) {
        self.0.push(u8::from(v));
    }
    fn u64s(&mut self, v: &[u64]) {
        self.u32(v.len() as u32);
        v.iter().for_each(|x| self.u64(*x));
    }
    fn bytes(&mut self, v: &[u8]) {
        self.u32(v.len() as u32);
        self.0.extend_from_slice(v);
    }
    /// Data with its CRC32C.
    fn data(&mut self, v: &[u8]) {
        self.u32(crc32c::crc32c(v));
        self.bytes(v);
    }
}

struct R<'a> {
    b: &'a [u8],
    what: &'static str,
    /// The frame `b` lies in, when it is shared: data is then sliced out of it, not
    /// copied.
    src: Option<&'a Bytes>,
}

impl<'a> R<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.b.len() < n {
            return Err(DecodeError::Malformed(self.what));
        }
        let (a, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }
    fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::Malformed(self.what)),
        }
    }
    fn len(&mut self, elem: usize) -> Result<usize, DecodeError> {
        let n = self.u32()? as usize;
        // The remaining bytes bound every list, so no allocation exceeds the frame.
        if n > MAX_LIST.max(MAX_PAYLOAD) || n.saturating_mul(elem) > self.b.len() {
            return Err(DecodeError::Malformed(self.what));
        }
        Ok(n)
    }
    fn u64s(&mut self) -> Result<Vec<u64>, DecodeError> {
        let n = self.len(8)?;
        if n > MAX_LIST {
            return Err(DecodeError::Malformed(self.what));
        }
        (0..n).map(|_| self.u64()).collect()
    }
    fn bytes(&mut self) -> Result<Vec<u8>, DecodeError> {
        let n = self.len(1)?;
        Ok(self.take(n)?.to_vec())
    }
    fn data(&mut self) -> Result<Vec<u8>, DecodeError> {
        let crc = self.u32()?;
        let d = self.bytes()?;
        if crc32c::crc32c(&d) != crc {
            return Err(DecodeError::Checksum(self.what));
        }
        Ok(d)
    }
    fn digest(&mut self) -> Result<[u8; 32], DecodeError> {
        self.bytes()?
            .try_into()
            .map_err(|_| DecodeError::Malformed(self.what))
    }
    /// Data with its CRC32C, as a slice of the frame when it is shared.
    fn data_shared(&mut self) -> Result<Bytes, DecodeError> {
        let crc = self.u32()?;
        let n = self.len(1)?;
        let d = self.take(n)?;
        if crc32c::crc32c(d) != crc {
            return Err(DecodeError::Checksum(self.what));
        }
        Ok(match self.src {
            Some(src) => src.slice_ref(d),
            None => Bytes::copy_from_slice(d),
        })
    }
    fn text(&mut self) -> Result<String, DecodeError> {
        let b = self.bytes()?;
        if b.len() > MAX_REASON {
            return Err(DecodeError::Malformed(self.what));
        }
        String::from_utf8(b).map_err(|_| DecodeError::Malformed(self.what))
    }
    fn role(&mut self) -> Result<Role, DecodeError> {
        match self.u8()? {
            0 => Ok(Role::Secondary),
            1 => Ok(Role::Primary),
            _ => Err(DecodeError::Malformed(self.what)),
        }
    }
    fn disk(&mut self) -> Result<Disk, DecodeError> {
        Ok(match self.u8()? {
            0 => Disk::Diskless,
            1 => Disk::Inconsistent,
            2 => Disk::Outdated,
            3 => Disk::Consistent,
            4 => Disk::UpToDate,
            _ => return Err(DecodeError::Malformed(self.what)),
        })
    }
    fn end(&self) -> Result<(), DecodeError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Malformed(self.what))
        }
    }
}

impl Msg {
    fn kind(&self) -> u8 {
        match self {
            Msg::Hello(_) => 1,
            Msg::Bitmap { .. } => 2,
            Msg::Write { .. } => 3,
            Msg::WriteAck { .. } => 4,
            Msg::Flush { .. } => 5,
            Msg::FlushAck { .. } => 6,
            Msg::PeerAck { .. } => 7,
            Msg::PeerLost { .. } => 8,
            Msg::NewUuid { .. } => 9,
            Msg::NewUuidAck { .. } => 10,
            Msg::RoleChanged { .. } => 11,
            Msg::PromoteRequest { .. } => 12,
            Msg::PromoteReply { .. } => 13,
            Msg::ResyncData { .. } => 14,
            Msg::ResyncAck { .. } => 15,
            Msg::ResyncDone { .. } => 16,
            Msg::InSync { .. } => 17,
            Msg::Leaving => 18,
            Msg::VerifyDigest { .. } => 19,
            Msg::VerifyResult { .. } => 20,
            Msg::VerifyDone => 21,
            Msg::OtherBitmap { .. } => 22,
            Msg::Ping => 23,
            Msg::Pong => 24,
            Msg::ReadRequest { .. } => 25,
            Msg::ReadReply { .. } => 26,
            Msg::PeerState { .. } => 27,
            Msg::Resize { .. } => 28,
            Msg::ResizeDone { .. } => 29,
            Msg::ResizeCommit { .. } => 30,
            Msg::ResyncDigest { .. } => 31,
            Msg::ResyncNeedData { .. } => 32,
            Msg::ForwardWrite { .. } => 33,
            Msg::ForwardFlush { .. } => 34,
            Msg::ForwardDone { .. } => 35,
            Msg::UuidSettled { .. } => 36,
            Msg::UuidUndone { .. } => 37,
        }
    }

    /// Encodes one frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_LEN + 64 + self.data_len());
        if let Some(data) = self.encode_into(&mut out) {
            out.extend_from_slice(&data);
        }
        out
    }

    /// Bytes of volume data the message carries.
    pub fn data_len(&self) -> usize {
        match self {
            Msg::Write { data, .. } | Msg::ForwardWrite { data, .. } => data.len(),
            Msg::ResyncData { data, .. } | Msg::ReadReply { data, .. } => data.len(),
            _ => 0,
        }
    }

    /// Appends one frame to `out`, except the data of a `Write`, which it returns
    /// instead: the frame is the bytes appended followed by that data. A writer sends
    /// the data from where it lies rather than copying it behind the header.
    pub fn encode_into(&self, out: &mut Vec<u8>) -> Option<Bytes> {
        let start = out.len();
        out.extend_from_slice(&[VERSION, self.kind(), 0, 0, 0, 0]);
        let mut w = W(std::mem::take(out));
        let tail = self.encode_payload(&mut w);
        *out = w.0;
        let len = out.len() - start - HEADER_LEN + tail.as_ref().map_or(0, Bytes::len);
        out[start + 2..start + HEADER_LEN].copy_from_slice(&(len as u32).to_le_bytes());
        tail
    }

    /// Writes the payload; a `Write`'s data is left out and returned (see `encode_into`).
    fn encode_payload(&self, w: &mut W) -> Option<Bytes> {
        match self {
            Msg::Hello(h) => {
                w.u8(h.node);
                w.u8(h.role as u8);
                w.u8(h.disk as u8);
                w.u64(h.size_blocks);
                w.u64(h.current);
                w.u64s(&h.history);
                w.u32(h.bitmap_uuids.len() as u32);
                for (n, u) in &h.bitmap_uuids {
                    w.u8(*n);
                    w.u64(*u);
                }
                w.u64(h.dirty_blocks);
                w.bool(h.discard_my_data);
                w.bool(h.crashed_primary);
                w.bool(h.primary_present);
                w.u64(h.known_current);
                w.u64(h.known_parent);
                w.u32(h.round);
                w.u64(h.last_seq);
                w.u8(h.tie);
                w.bool(h.unsettled);
                w.u64(h.settled);
                w.u64(h.parent);
            }
            Msg::Bitmap {
                round,
                word_offset,
                words,
                last,
            } => {
                w.u32(*round);
                w.u64(*word_offset);
                w.u64s(words);
                w.bool(*last);
            }
            Msg::Write {
                seq,
                block,
                count,
                fua,
                targets,
                data,
            } => {
                w.u64(*seq);
                w.u64(*block);
                w.u32(*count);
                w.bool(*fua);
                w.u32(*targets);
                w.u32(crc32c::crc32c(data));
                w.u32(data.len() as u32);
                return Some(data.clone());
            }
            Msg::ForwardWrite {
                id,
                block,
                count,
                fua,
                data,
            } => {
                w.u64(*id);
                w.u64(*block);
                w.u32(*count);
                w.bool(*fua);
                w.u32(crc32c::crc32c(data));
                w.u32(data.len() as u32);
                return Some(data.clone());
            }
            Msg::ForwardFlush { id } => w.u64(*id),
            Msg::ForwardDone { id, result } => {
                w.u64(*id);
                w.u8(*result);
            }
            Msg::WriteAck { seq, ok } | Msg::FlushAck { seq, ok } => {
                w.u64(*seq);
                w.bool(*ok);
            }
            Msg::Flush { seq } | Msg::PeerAck { seq } => w.u64(*seq),
            Msg::PeerLost { node, ranges } => {
                w.u8(*node);
                w.u32(ranges.len() as u32);
                for (b, c) in ranges {
                    w.u64(*b);
                    w.u64(*c);
                }
            }
            Msg::NewUuid {
                current,
                previous,
                lost,
            } => {
                w.u64(*current);
                w.u64(*previous);
                w.u32(*lost);
            }
            Msg::NewUuidAck { current }
            | Msg::UuidSettled { current }
            | Msg::UuidUndone { current } => w.u64(*current),
            Msg::RoleChanged { role } => w.u8(*role as u8),
            Msg::PromoteRequest {
                id,
                current,
                history,
                primaries,
            } => {
                w.u64(*id);
                w.u64(*current);
                w.u64s(history);
                w.u32(*primaries);
            }
            Msg::PromoteReply {
                id,
                granted,
                reason,
            } => {
                w.u64(*id);
                w.bool(*granted);
                w.bytes(&reason.as_bytes()[..reason.len().min(MAX_REASON)]);
            }
            Msg::ResyncData { block, seq, data } => {
                w.u64(*block);
                w.u64(*seq);
                w.data(data);
            }
            Msg::ResyncAck { block, ok } => {
                w.u64(*block);
                w.bool(*ok);
            }
            Msg::ResyncDigest { block, seq, digest } => {
                w.u64(*block);
                w.u64(*seq);
                w.bytes(digest);
            }
            Msg::ResyncNeedData { block } => w.u64(*block),
            Msg::ResyncDone {
                current,
                history,
                last_seq,
                tie,
            } => {
                w.u64(*current);
                w.u64s(history);
                w.u64(*last_seq);
                w.u8(*tie);
            }
            Msg::OtherBitmap {
                node,
                word_offset,
                words,
            } => {
                w.u8(*node);
                w.u64(*word_offset);
                w.u64s(words);
            }
            Msg::InSync { mask } => w.u32(*mask),
            Msg::Leaving | Msg::VerifyDone | Msg::Ping | Msg::Pong => {}
            Msg::VerifyDigest { block, digest } => {
                w.u64(*block);
                w.u32(*digest);
            }
            Msg::VerifyResult { block, equal } => {
                w.u64(*block);
                w.bool(*equal);
            }
            Msg::ReadRequest { id, block, count } => {
                w.u64(*id);
                w.u64(*block);
                w.u32(*count);
            }
            Msg::ReadReply { id, ok, data } => {
                w.u64(*id);
                w.bool(*ok);
                w.data(data);
            }
            Msg::PeerState { disk, current } => {
                w.u8(*disk as u8);
                w.u64(*current);
            }
            Msg::Resize { size_blocks } | Msg::ResizeCommit { size_blocks } => w.u64(*size_blocks),
            Msg::ResizeDone {
                size_blocks,
                ok,
                reason,
            } => {
                w.u64(*size_blocks);
                w.bool(*ok);
                w.bytes(&reason.as_bytes()[..reason.len().min(MAX_REASON)]);
            }
        }
        None
    }

    /// Decodes the first frame of `buf`; returns it and the bytes it used.
    pub fn decode(buf: &[u8]) -> Result<(Msg, usize), DecodeError> {
        Self::decode_from(buf, None)
    }

    /// As `decode`, but a `Write`'s data is a slice of `buf`, not a copy.
    pub fn decode_shared(buf: &Bytes) -> Result<(Msg, usize), DecodeError> {
        Self::decode_from(buf, Some(buf))
    }

    fn decode_from(buf: &[u8], src: Option<&Bytes>) -> Result<(Msg, usize), DecodeError> {
        let Some(&version) = buf.first() else {
            return Err(DecodeError::Incomplete);
        };
        if version != VERSION {
            return Err(DecodeError::Version(version));
        }
        if buf.len() < HEADER_LEN {
            return Err(DecodeError::Incomplete);
        }
        let kind = buf[1];
        let len = u32::from_le_bytes([buf[2], buf[3], buf[4], buf[5]]) as usize;
        if len > MAX_PAYLOAD {
            return Err(DecodeError::TooLarge(len));
        }
        let Some(payload) = buf.get(HEADER_LEN..HEADER_LEN + len) else {
            return Err(DecodeError::Incomplete);
        };
        let msg = Self::decode_payload(kind, payload, src)?;
        Ok((msg, HEADER_LEN + len))
    }

    fn decode_payload(kind: u8, b: &[u8], src: Option<&Bytes>) -> Result<Msg, DecodeError> {
        let name = match kind {
            1 => "hello",
            2 => "bitmap",
            3 => "write",
            4..=24 | 25 | 27 => "control",
            28..=30 => "resize",
            26 => "read reply",
            31 | 32 => "resync digest",
            33 => "forwarded write",
            34 | 35 => "forward",
            36 | 37 => "control",
            k => return Err(DecodeError::Kind(k)),
        };
        let mut r = R { b, what: name, src };
        let m = match kind {
            1 => {
                let node = r.u8()?;
                let role = r.role()?;
                let disk = r.disk()?;
                let size_blocks = r.u64()?;
                let current = r.u64()?;
                let history = r.u64s()?;
                let n = r.len(9)?;
                let mut bitmap_uuids = Vec::with_capacity(n);
                for _ in 0..n {
                    bitmap_uuids.push((r.u8()?, r.u64()?));
                }
                Msg::Hello(Hello {
                    node,
                    role,
                    disk,
                    size_blocks,
                    current,
                    history,
                    bitmap_uuids,
                    dirty_blocks: r.u64()?,
                    discard_my_data: r.bool()?,
                    crashed_primary: r.bool()?,
                    primary_present: r.bool()?,
                    known_current: r.u64()?,
                    known_parent: r.u64()?,
                    round: r.u32()?,
                    last_seq: r.u64()?,
                    tie: r.u8()?,
                    unsettled: r.bool()?,
                    settled: r.u64()?,
                    parent: r.u64()?,
                })
            }
            2 => Msg::Bitmap {
                round: r.u32()?,
                word_offset: r.u64()?,
                words: r.u64s()?,
                last: r.bool()?,
            },
            3 => Msg::Write {
                seq: r.u64()?,
                block: r.u64()?,
                count: r.u32()?,
                fua: r.bool()?,
                targets: r.u32()?,
                data: r.data_shared()?,
            },
            4 => Msg::WriteAck {
                seq: r.u64()?,
                ok: r.bool()?,
            },
            5 => Msg::Flush { seq: r.u64()? },
            6 => Msg::FlushAck {
                seq: r.u64()?,
                ok: r.bool()?,
            },
            7 => Msg::PeerAck { seq: r.u64()? },
            8 => Msg::PeerLost {
                node: r.u8()?,
                ranges: {
                    let n = r.len(16)?;
                    if n > MAX_LOST_RANGES {
                        return Err(DecodeError::Malformed(r.what));
                    }
                    (0..n)
                        .map(|_| Ok((r.u64()?, r.u64()?)))
                        .collect::<Result<Vec<_>, DecodeError>>()?
                },
            },
            9 => Msg::NewUuid {
                current: r.u64()?,
                previous: r.u64()?,
                lost: r.u32()?,
            },
            10 => Msg::NewUuidAck { current: r.u64()? },
            36 => Msg::UuidSettled { current: r.u64()? },
            37 => Msg::UuidUndone { current: r.u64()? },
            11 => Msg::RoleChanged { role: r.role()? },
            12 => Msg::PromoteRequest {
                id: r.u64()?,
                current: r.u64()?,
                history: r.u64s()?,
                primaries: r.u32()?,
            },
            13 => Msg::PromoteReply {
                id: r.u64()?,
                granted: r.bool()?,
                reason: r.text()?,
            },
            14 => Msg::ResyncData {
                block: r.u64()?,
                seq: r.u64()?,
                data: r.data()?,
            },
            15 => Msg::ResyncAck {
                block: r.u64()?,
                ok: r.bool()?,
            },
            31 => Msg::ResyncDigest {
                block: r.u64()?,
                seq: r.u64()?,
                digest: r.digest()?,
            },
            32 => Msg::ResyncNeedData { block: r.u64()? },
            33 => Msg::ForwardWrite {
                id: r.u64()?,
                block: r.u64()?,
                count: r.u32()?,
                fua: r.bool()?,
                data: r.data_shared()?,
            },
            34 => Msg::ForwardFlush { id: r.u64()? },
            35 => Msg::ForwardDone {
                id: r.u64()?,
                result: r.u8()?,
            },
            16 => Msg::ResyncDone {
                current: r.u64()?,
                history: r.u64s()?,
                last_seq: r.u64()?,
                tie: r.u8()?,
            },
            17 => Msg::InSync { mask: r.u32()? },
            18 => Msg::Leaving,
            19 => Msg::VerifyDigest {
                block: r.u64()?,
                digest: r.u32()?,
            },
            20 => Msg::VerifyResult {
                block: r.u64()?,
                equal: r.bool()?,
            },
            21 => Msg::VerifyDone,
            25 => Msg::ReadRequest {
                id: r.u64()?,
                block: r.u64()?,
                count: r.u32()?,
            },
            26 => Msg::ReadReply {
                id: r.u64()?,
                ok: r.bool()?,
                data: r.data()?,
            },
            27 => Msg::PeerState {
                disk: r.disk()?,
                current: r.u64()?,
            },
            28 => Msg::Resize {
                size_blocks: r.u64()?,
            },
            29 => Msg::ResizeDone {
                size_blocks: r.u64()?,
                ok: r.bool()?,
                reason: r.text()?,
            },
            30 => Msg::ResizeCommit {
                size_blocks: r.u64()?,
            },
            23 => Msg::Ping,
            24 => Msg::Pong,
            22 => Msg::OtherBitmap {
                node: r.u8()?,
                word_offset: r.u64()?,
                words: r.u64s()?,
            },
            k => return Err(DecodeError::Kind(k)),
        };
        r.end()?;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn hello() -> Hello {
        Hello {
            node: 3,
            role: Role::Primary,
            disk: Disk::UpToDate,
            size_blocks: 1 << 20,
            current: 0xabc,
            history: vec![1, 2, 3],
            bitmap_uuids: vec![(1, 0x55), (4, 0x66)],
            dirty_blocks: 17,
            discard_my_data: false,
            crashed_primary: true,
            primary_present: false,
            known_current: 0xabc,
            known_parent: 0xab,
            round: 9,
            last_seq: 77,
            tie: 1,
            unsettled: false,
            settled: 2,
            parent: 1,
        }
    }

    fn arb_msg() -> impl Strategy<Value = Msg> {
        let data = proptest::collection::vec(any::<u8>(), 0..600);
        prop_oneof![
            Just(Msg::Hello(hello())),
            (
                any::<u64>(),
                proptest::collection::vec(any::<u64>(), 0..8),
                any::<bool>()
            )
                .prop_map(|(current, history, unsettled)| Msg::Hello(Hello {
                    current,
                    history,
                    unsettled,
                    ..hello()
                })),
            any::<u64>().prop_map(|current| Msg::UuidSettled { current }),
            any::<u64>().prop_map(|current| Msg::UuidUndone { current }),
            any::<u64>().prop_map(|current| Msg::NewUuidAck { current }),
            (
                any::<u64>(),
                any::<u64>(),
                any::<u32>(),
                any::<bool>(),
                any::<u32>(),
                data.clone()
            )
                .prop_map(|(seq, block, count, fua, targets, data)| Msg::Write {
                    seq,
                    block,
                    count,
                    fua,
                    targets,
                    data: data.into()
                }),
            (
                any::<u64>(),
                any::<u64>(),
                any::<u32>(),
                any::<bool>(),
                data.clone()
            )
                .prop_map(|(id, block, count, fua, data)| Msg::ForwardWrite {
                    id,
                    block,
                    count,
                    fua,
                    data: data.into()
                }),
            any::<u64>().prop_map(|id| Msg::ForwardFlush { id }),
            (any::<u64>(), any::<u8>()).prop_map(|(id, result)| Msg::ForwardDone { id, result }),
            (
                any::<u32>(),
                any::<u64>(),
                proptest::collection::vec(any::<u64>(), 0..40),
                any::<bool>()
            )
                .prop_map(|(round, word_offset, words, last)| Msg::Bitmap {
                    round,
                    word_offset,
                    words,
                    last
                }),
            (any::<u64>(), any::<bool>()).prop_map(|(seq, ok)| Msg::WriteAck { seq, ok }),
            (any::<u64>(), any::<u64>(), data.clone())
                .prop_map(|(block, seq, data)| Msg::ResyncData { block, seq, data }),
            (any::<u64>(), any::<bool>(), "[a-z ]{0,40}").prop_map(|(id, granted, reason)| {
                Msg::PromoteReply {
                    id,
                    granted,
                    reason,
                }
            }),
            (
                any::<u64>(),
                proptest::collection::vec(any::<u64>(), 0..8),
                any::<u64>(),
                any::<u8>()
            )
                .prop_map(|(current, history, last_seq, tie)| Msg::ResyncDone {
                    current,
                    history,
                    last_seq,
                    tie
                }),
            (
                any::<u8>(),
                any::<u64>(),
                proptest::collection::vec(any::<u64>(), 0..8)
            )
                .prop_map(|(node, word_offset, words)| Msg::OtherBitmap {
                    node,
                    word_offset,
                    words
                }),
            (any::<u64>(), any::<u64>(), any::<u32>())
                .prop_map(|(id, block, count)| Msg::ReadRequest { id, block, count }),
            (any::<u64>(), any::<bool>(), data).prop_map(|(id, ok, data)| Msg::ReadReply {
                id,
                ok,
                data
            }),
            (0u8..5, any::<u64>()).prop_map(|(d, current)| Msg::PeerState {
                disk: [
                    Disk::Diskless,
                    Disk::Inconsistent,
                    Disk::Outdated,
                    Disk::Consistent,
                    Disk::UpToDate
                ][d as usize],
                current
            }),
            Just(Msg::Leaving),
            Just(Msg::Ping),
            Just(Msg::Pong),
            any::<u32>().prop_map(|mask| Msg::InSync { mask }),
            (
                any::<u8>(),
                proptest::collection::vec((any::<u64>(), any::<u64>()), 0..8)
            )
                .prop_map(|(node, ranges)| Msg::PeerLost { node, ranges }),
            any::<u64>().prop_map(|size_blocks| Msg::Resize { size_blocks }),
            any::<u64>().prop_map(|size_blocks| Msg::ResizeCommit { size_blocks }),
            (any::<u64>(), any::<u64>(), any::<[u8; 32]>())
                .prop_map(|(block, seq, digest)| Msg::ResyncDigest { block, seq, digest }),
            any::<u64>().prop_map(|block| Msg::ResyncNeedData { block }),
            (any::<u64>(), any::<bool>(), "[a-z0-9 ]{0,60}").prop_map(
                |(size_blocks, ok, reason)| Msg::ResizeDone {
                    size_blocks,
                    ok,
                    reason
                }
            ),
        ]
    }

    proptest! {
        #[test]
        fn roundtrip(m in arb_msg()) {
            let b = m.encode();
            let (d, used) = Msg::decode(&b).unwrap();
            prop_assert_eq!(used, b.len());
            prop_assert_eq!(d, m.clone());
            // Every strict prefix is incomplete, never a wrong message.
            for cut in 0..b.len() {
                prop_assert!(Msg::decode(&b[..cut]).is_err());
            }
            // Decoding from a shared frame gives the same message.
            let shared = Bytes::from(b.clone());
            prop_assert_eq!(Msg::decode_shared(&shared).unwrap(), (m.clone(), b.len()));
            // A frame written in two parts is the same frame.
            let mut head = Vec::new();
            let tail = m.encode_into(&mut head);
            head.extend_from_slice(tail.as_deref().unwrap_or_default());
            prop_assert_eq!(head, b);
        }

        #[test]
        fn garbage_never_panics(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Msg::decode(&b);
        }
    }

    #[test]
    fn data_corruption_is_caught_by_the_checksum() {
        let m = Msg::Write {
            seq: 1,
            block: 2,
            count: 1,
            fua: false,
            targets: 3,
            data: vec![7; 64].into(),
        };
        let mut b = m.encode();
        let last = b.len() - 1;
        b[last] ^= 0x10;
        assert_eq!(Msg::decode(&b), Err(DecodeError::Checksum("write")));
    }

    #[test]
    fn a_corrupted_read_reply_is_caught_by_the_checksum() {
        let m = Msg::ReadReply {
            id: 9,
            ok: true,
            data: vec![3; 32],
        };
        let mut b = m.encode();
        let last = b.len() - 1;
        b[last] ^= 0x01;
        assert_eq!(Msg::decode(&b), Err(DecodeError::Checksum("read reply")));
        // An unknown disk state in PeerState is malformed, not a panic.
        let mut b = Msg::PeerState {
            disk: Disk::UpToDate,
            current: 1,
        }
        .encode();
        b[HEADER_LEN] = 9;
        assert_eq!(Msg::decode(&b), Err(DecodeError::Malformed("control")));
    }

    #[test]
    fn other_versions_and_oversized_frames_are_refused() {
        let mut b = Msg::Leaving.encode();
        b[0] = VERSION + 1;
        assert_eq!(Msg::decode(&b), Err(DecodeError::Version(VERSION + 1)));
        let mut b = vec![VERSION, 3];
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(Msg::decode(&b), Err(DecodeError::TooLarge(_))));
        assert_eq!(
            Msg::decode(&[VERSION, 99, 0, 0, 0, 0]),
            Err(DecodeError::Kind(99))
        );
        // A list length larger than the frame is malformed, not an allocation.
        let mut b = vec![VERSION, 16, 12, 0, 0, 0];
        b.extend_from_slice(&1u64.to_le_bytes());
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Msg::decode(&b), Err(DecodeError::Malformed("control")));
    }
}
