//! On-disk metadata of one volume, kept at the end of its backing device.
//!
//! ```text
//! 0                 data_size                                         backing_size
//! | data (exported) | bitmap peer 0 | ... | bitmap peer P-1 | resync bitmap | AL ring | SB 0 | SB 1 |
//! ```
//!
//! * The data sits at offset 0, untouched, so the device stays readable without tandem.
//! * Two superblock slots of 4 KiB: an update writes the slot the current version is
//!   *not* in, so a torn write always leaves the previous version intact; the reader
//!   takes the valid slot (magic + CRC32C) with the highest sequence number.
//! * One bitmap per peer slot, one bit per 4 KiB data block, each rounded up to 4 KiB;
//!   then one more for the blocks an interrupted resync still has to receive.
//! * The activity log (hot extents) is recorded in the superblock itself, so one
//!   superblock write makes a whole metadata change durable.
//! * An activity-log ring of 4 KiB transaction slots.
//!
//! * Online grow moves the metadata to the new end of the backing, crash-safely (the
//!   steps are in blockd's `volume.rs`): the first superblock at the new end carries
//!   `FLAG_GROWING` and the old backing size (`grow_from`), while the bitmaps are
//!   still at the old place; `FLAG_GROW_MOVED` says they are at the new place and
//!   only the old metadata area (now data) is left to clear. An open that finds
//!   either flag finishes the move.
//!
//! Every offset is recorded in the superblock so a later format can move things without
//! guessing. All integers are little-endian.

use thiserror::Error;

pub const MAGIC: [u8; 8] = *b"TANDEMMD";
/// 2: the activity log as 32-bit extent numbers (up to 16 PiB of data), 800 of
/// them, and `grow_from` (online grow). 3: `heard` (a generation only heard of, and
/// its parent), `settled` and `parent`. Versions 1 (64-bit log of 128) and 2 are still read.
pub const VERSION: u32 = 3;
pub const MD_BLOCK: u64 = 4096;
/// Data bytes per bitmap bit.
pub const BM_BLOCK: u64 = 4096;
/// Bytes of data per activity-log extent.
pub const AL_EXTENT: u64 = 4 << 20;
pub const DEFAULT_AL_SLOTS: u32 = 64;
pub const DEFAULT_MAX_PEERS: u32 = 7;
/// The most peers a volume can replicate to (node ids 0..=31).
pub const MAX_PEERS: u32 = 31;
/// Smallest data area we create metadata for.
pub const MIN_DATA_SIZE: u64 = 1 << 20;
/// No node id recorded (peer slot unused, or own id not assigned yet).
pub const NO_NODE: u32 = u32::MAX;
pub const HISTORY_LEN: usize = 8;
/// Most activity-log extents recorded in the superblock (3.2 GiB of hot data).
pub const MAX_AL: usize = 800;
/// The same in format version 1.
const MAX_AL_V1: usize = 128;

/// Superblock flag: the volume was in use and not closed cleanly.
pub const FLAG_DIRTY: u32 = 1 << 0;
/// Superblock flag: the node was primary when this version was written.
pub const FLAG_PRIMARY: u32 = 1 << 1;
/// Superblock flag: an online grow from `grow_from` bytes is under way; the bitmaps
/// are still where the layout for `grow_from` puts them.
pub const FLAG_GROWING: u32 = 1 << 2;
/// Superblock flag (with `FLAG_GROWING`): the bitmaps are in the new layout; the old
/// metadata area, now part of the data, still has to be cleared.
pub const FLAG_GROW_MOVED: u32 = 1 << 3;
/// Superblock flag: the current generation was started by a primary that had not
/// confirmed it with quorum when this version was written (it may be undone). An
/// older tandem ignores the flag, taking the generation as settled.
pub const FLAG_UNSETTLED: u32 = 1 << 4;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum MdError {
    #[error(
        "backing device of {backing} bytes is too small: metadata needs {md} bytes and at least {min} bytes of data"
    )]
    TooSmall { backing: u64, md: u64, min: u64 },
    #[error("max-peers {0} is out of range 1..={MAX_PEERS}")]
    BadMaxPeers(u32),
    #[error("no valid tandem metadata (no superblock slot has the magic and a correct checksum)")]
    NotFound,
    #[error("metadata format version {0} is newer than this tandem understands ({VERSION})")]
    Version(u32),
    #[error("metadata is inconsistent: {0}")]
    Corrupt(&'static str),
}

/// Where each metadata area lies for a given backing size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub backing_size: u64,
    pub data_size: u64,
    pub bitmap_offset: u64,
    pub bitmap_bytes: u64,
    pub max_peers: u32,
    pub al_offset: u64,
    pub al_slots: u32,
    /// Offset of superblock slot 0; slot 1 follows it.
    pub sb_offset: u64,
}

fn round_up(x: u64, to: u64) -> u64 {
    x.div_ceil(to) * to
}

/// Bytes of one peer's bitmap for `data_size` bytes of data.
pub fn bitmap_bytes(data_size: u64) -> u64 {
    round_up(data_size.div_ceil(BM_BLOCK).div_ceil(8), MD_BLOCK)
}

impl Layout {
    /// Lays out metadata at the end of a backing device of `backing_size` bytes.
    pub fn compute(backing_size: u64, max_peers: u32, al_slots: u32) -> Result<Layout, MdError> {
        if max_peers == 0 || max_peers > MAX_PEERS {
            return Err(MdError::BadMaxPeers(max_peers));
        }
        let fixed = 2 * MD_BLOCK + u64::from(al_slots) * MD_BLOCK;
        let too_small = |md| MdError::TooSmall {
            backing: backing_size,
            md,
            min: MIN_DATA_SIZE,
        };
        let usable = (backing_size / MD_BLOCK) * MD_BLOCK;
        let first = usable.checked_sub(fixed).ok_or(too_small(fixed))?;
        // Bitmaps sized for an upper bound of the data area still cover the real one.
        let bm = bitmap_bytes(first);
        // One per peer slot, plus the resync bitmap.
        let bitmaps = bm * (u64::from(max_peers) + 1);
        let data_size = first
            .checked_sub(bitmaps)
            .ok_or(too_small(fixed + bitmaps))?;
        if data_size < MIN_DATA_SIZE {
            return Err(too_small(fixed + bitmaps));
        }
        let al_offset = data_size + bitmaps;
        Ok(Layout {
            backing_size,
            data_size,
            bitmap_offset: data_size,
            bitmap_bytes: bm,
            max_peers,
            al_offset,
            al_slots,
            sb_offset: al_offset + u64::from(al_slots) * MD_BLOCK,
        })
    }

    /// Offset of superblock slot `slot` (0 or 1).
    pub fn sb_slot(&self, slot: u64) -> u64 {
        self.sb_offset + (slot & 1) * MD_BLOCK
    }

    /// Offset of bitmap `index`: peer slots 0..max_peers, then the resync bitmap.
    pub fn bitmap_at(&self, index: u32) -> u64 {
        self.bitmap_offset + u64::from(index) * self.bitmap_bytes
    }

    /// Offset of the resync bitmap.
    pub fn resync_bitmap(&self) -> u64 {
        self.bitmap_at(self.max_peers)
    }

    /// Bytes from the end of data to the end of the backing device.
    pub fn md_size(&self) -> u64 {
        self.backing_size - self.data_size
    }
}

/// A volume's replication state as recorded in its metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum DiskState {
    /// Data is not known to be a copy of anything (fresh, or a resync target).
    Inconsistent = 0,
    /// Data was consistent but is known to miss writes.
    Outdated = 1,
    /// Consistent, but whether it is the newest is not known.
    Consistent = 2,
    /// The newest data.
    UpToDate = 3,
    /// The node has no usable disk (detached after an error).
    Diskless = 4,
}

impl DiskState {
    fn from_u8(v: u8) -> Option<Self> {
        Some(match v {
            0 => DiskState::Inconsistent,
            1 => DiskState::Outdated,
            2 => DiskState::Consistent,
            3 => DiskState::UpToDate,
            4 => DiskState::Diskless,
            _ => return None,
        })
    }
}

/// Replication facts about one peer slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerSlot {
    pub node_id: u32,
    pub flags: u32,
    /// Generation the bitmap of this peer started at; 0 when the bitmap is empty.
    pub bitmap_uuid: u64,
}

impl Default for PeerSlot {
    fn default() -> Self {
        PeerSlot {
            node_id: NO_NODE,
            flags: 0,
            bitmap_uuid: 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub seq: u64,
    pub flags: u32,
    pub layout: Layout,
    /// Identifies the volume across nodes; chosen at create-md.
    pub volume_uuid: [u8; 16],
    pub node_id: u32,
    pub disk_state: DiskState,
    pub current_uuid: u64,
    pub history: [u64; HISTORY_LEN],
    pub peers: Vec<PeerSlot>,
    /// Newest generation this node was told of.
    pub newest_seen: u64,
    /// Source of an unfinished resync (NO_NODE when none).
    pub resync_from: u32,
    /// Hot activity-log extents, least recently used first (at most MAX_AL).
    pub al: Vec<u64>,
    /// Backing size before the online grow under way (`FLAG_GROWING`), else 0.
    pub grow_from: u64,
    /// A generation this node only heard of (named as missing its writes) and its
    /// parent; (0, 0) when none.
    pub heard: (u64, u64),
    /// The newest generation of the line known to be settled (0: not known).
    pub settled: u64,
    /// The generation the current one was started from (0: not known).
    pub parent: u64,
}

// Field offsets inside a superblock slot.
const OFF_VERSION: usize = 8;
const OFF_SEQ: usize = 12;
const OFF_FLAGS: usize = 20;
const OFF_LAYOUT: usize = 24; // 8 u64-sized fields
const OFF_UUID: usize = 88;
const OFF_NODE: usize = 104;
const OFF_DISK: usize = 108;
const OFF_CURRENT: usize = 112;
const OFF_HISTORY: usize = 120;
const OFF_PEERS: usize = OFF_HISTORY + 8 * HISTORY_LEN;
const PEER_LEN: usize = 16;
const OFF_NEWEST: usize = OFF_PEERS + PEER_LEN * MAX_PEERS as usize;
const OFF_RESYNC_FROM: usize = OFF_NEWEST + 8;
const OFF_AL_COUNT: usize = OFF_RESYNC_FROM + 4;
const OFF_AL: usize = OFF_AL_COUNT + 4;
const OFF_GROW_FROM: usize = OFF_AL + 4 * MAX_AL;
const OFF_HEARD: usize = OFF_GROW_FROM + 8; // generation, parent
const OFF_SETTLED: usize = OFF_HEARD + 16;
const OFF_PARENT: usize = OFF_SETTLED + 8;
const OFF_CRC: usize = OFF_PARENT + 8;
/// Where version 2 kept its checksum (it had no `heard`).
const OFF_CRC_V2: usize = OFF_GROW_FROM + 8;
/// Where version 1 kept its checksum (its log was 64-bit, and it had no `grow_from`).
const OFF_CRC_V1: usize = OFF_AL + 8 * MAX_AL_V1;
const _: () = assert!(OFF_CRC + 4 <= MD_BLOCK as usize);

impl Superblock {
    pub fn new(layout: Layout, volume_uuid: [u8; 16], current_uuid: u64) -> Self {
        Superblock {
            seq: 0,
            flags: 0,
            layout,
            volume_uuid,
            node_id: NO_NODE,
            disk_state: DiskState::Inconsistent,
            current_uuid,
            history: [0; HISTORY_LEN],
            peers: vec![PeerSlot::default(); layout.max_peers as usize],
            newest_seen: 0,
            resync_from: NO_NODE,
            al: Vec::new(),
            grow_from: 0,
            heard: (0, 0),
            settled: 0,
            parent: 0,
        }
    }

    pub fn dirty(&self) -> bool {
        self.flags & FLAG_DIRTY != 0
    }

    /// Encodes into one 4 KiB slot.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = vec![0u8; MD_BLOCK as usize];
        let put64 =
            |b: &mut Vec<u8>, at: usize, v: u64| b[at..at + 8].copy_from_slice(&v.to_le_bytes());
        let put32 =
            |b: &mut Vec<u8>, at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
        b[0..8].copy_from_slice(&MAGIC);
        put32(&mut b, OFF_VERSION, VERSION);
        put64(&mut b, OFF_SEQ, self.seq);
        put32(&mut b, OFF_FLAGS, self.flags);
        let l = &self.layout;
        let fields = [
            l.backing_size,
            l.data_size,
            l.bitmap_offset,
            l.bitmap_bytes,
            u64::from(l.max_peers),
            l.al_offset,
            u64::from(l.al_slots),
            l.sb_offset,
        ];
        for (i, v) in fields.into_iter().enumerate() {
            put64(&mut b, OFF_LAYOUT + 8 * i, v);
        }
        b[OFF_UUID..OFF_UUID + 16].copy_from_slice(&self.volume_uuid);
        put32(&mut b, OFF_NODE, self.node_id);
        b[OFF_DISK] = self.disk_state as u8;
        put64(&mut b, OFF_CURRENT, self.current_uuid);
        for (i, h) in self.history.iter().enumerate() {
            put64(&mut b, OFF_HISTORY + 8 * i, *h);
        }
        for (i, p) in self.peers.iter().take(MAX_PEERS as usize).enumerate() {
            let at = OFF_PEERS + PEER_LEN * i;
            put32(&mut b, at, p.node_id);
            put32(&mut b, at + 4, p.flags);
            put64(&mut b, at + 8, p.bitmap_uuid);
        }
        put64(&mut b, OFF_NEWEST, self.newest_seen);
        put32(&mut b, OFF_RESYNC_FROM, self.resync_from);
        // Extent numbers above 32 bits would need more than 16 PiB of data.
        let al: Vec<u32> = self
            .al
            .iter()
            .filter_map(|e| u32::try_from(*e).ok())
            .take(MAX_AL)
            .collect();
        put32(&mut b, OFF_AL_COUNT, al.len() as u32);
        for (i, e) in al.iter().enumerate() {
            put32(&mut b, OFF_AL + 4 * i, *e);
        }
        put64(&mut b, OFF_GROW_FROM, self.grow_from);
        put64(&mut b, OFF_HEARD, self.heard.0);
        put64(&mut b, OFF_HEARD + 8, self.heard.1);
        put64(&mut b, OFF_SETTLED, self.settled);
        put64(&mut b, OFF_PARENT, self.parent);
        let crc = crc32c::crc32c(&b[..OFF_CRC]);
        put32(&mut b, OFF_CRC, crc);
        b
    }

    /// Decodes one slot; any damage is an error, never a panic.
    pub fn decode(b: &[u8]) -> Result<Superblock, MdError> {
        if b.len() < MD_BLOCK as usize || b[0..8] != MAGIC {
            return Err(MdError::NotFound);
        }
        let get64 = |at: usize| {
            b[at..at + 8]
                .try_into()
                .map(u64::from_le_bytes)
                .unwrap_or(0)
        };
        let get32 = |at: usize| {
            b[at..at + 4]
                .try_into()
                .map(u32::from_le_bytes)
                .unwrap_or(0)
        };
        let version = get32(OFF_VERSION);
        let (crc_at, al_max) = match version {
            1 => (OFF_CRC_V1, MAX_AL_V1),
            2 => (OFF_CRC_V2, MAX_AL),
            _ => (OFF_CRC, MAX_AL),
        };
        if crc32c::crc32c(&b[..crc_at]) != get32(crc_at) {
            return Err(MdError::NotFound);
        }
        if !(1..=VERSION).contains(&version) {
            return Err(MdError::Version(version));
        }
        let grow_from = if version == 1 {
            0
        } else {
            get64(OFF_GROW_FROM)
        };
        let (heard, settled, parent) = if version >= 3 {
            (
                (get64(OFF_HEARD), get64(OFF_HEARD + 8)),
                get64(OFF_SETTLED),
                get64(OFF_PARENT),
            )
        } else {
            ((0, 0), 0, 0)
        };
        let f = |i: usize| get64(OFF_LAYOUT + 8 * i);
        let narrow = |v: u64| u32::try_from(v).map_err(|_| MdError::Corrupt("count out of range"));
        let layout = Layout {
            backing_size: f(0),
            data_size: f(1),
            bitmap_offset: f(2),
            bitmap_bytes: f(3),
            max_peers: narrow(f(4))?,
            al_offset: f(5),
            al_slots: narrow(f(6))?,
            sb_offset: f(7),
        };
        if layout.max_peers == 0 || layout.max_peers > MAX_PEERS {
            return Err(MdError::Corrupt("max-peers out of range"));
        }
        let expect = Layout::compute(layout.backing_size, layout.max_peers, layout.al_slots)
            .map_err(|_| MdError::Corrupt("layout does not fit the recorded backing size"))?;
        if expect != layout {
            return Err(MdError::Corrupt(
                "layout does not match its recorded parameters",
            ));
        }
        let disk_state =
            DiskState::from_u8(b[OFF_DISK]).ok_or(MdError::Corrupt("unknown disk state"))?;
        let mut history = [0u64; HISTORY_LEN];
        for (i, h) in history.iter_mut().enumerate() {
            *h = get64(OFF_HISTORY + 8 * i);
        }
        let peers = (0..layout.max_peers as usize)
            .map(|i| {
                let at = OFF_PEERS + PEER_LEN * i;
                PeerSlot {
                    node_id: get32(at),
                    flags: get32(at + 4),
                    bitmap_uuid: get64(at + 8),
                }
            })
            .collect();
        let al_count = get32(OFF_AL_COUNT) as usize;
        if al_count > al_max {
            return Err(MdError::Corrupt("activity log longer than its area"));
        }
        let al = (0..al_count)
            .map(|i| {
                if version == 1 {
                    get64(OFF_AL + 8 * i)
                } else {
                    u64::from(get32(OFF_AL + 4 * i))
                }
            })
            .collect();
        let mut volume_uuid = [0u8; 16];
        volume_uuid.copy_from_slice(&b[OFF_UUID..OFF_UUID + 16]);
        Ok(Superblock {
            seq: get64(OFF_SEQ),
            flags: get32(OFF_FLAGS),
            layout,
            volume_uuid,
            node_id: get32(OFF_NODE),
            disk_state,
            current_uuid: get64(OFF_CURRENT),
            history,
            peers,
            newest_seen: get64(OFF_NEWEST),
            resync_from: get32(OFF_RESYNC_FROM),
            al,
            grow_from,
            heard,
            settled,
            parent,
        })
    }

    /// Picks the newest valid superblock out of the two slots.
    pub fn pick(slot0: &[u8], slot1: &[u8]) -> Result<Superblock, MdError> {
        match (Superblock::decode(slot0), Superblock::decode(slot1)) {
            (Ok(a), Ok(b)) => Ok(if b.seq > a.seq { b } else { a }),
            (Ok(a), Err(_)) => Ok(a),
            (Err(_), Ok(b)) => Ok(b),
            // A version we do not understand beats "not found": say so.
            (Err(e @ MdError::Version(_)), _) | (_, Err(e @ MdError::Version(_))) => Err(e),
            (Err(e), Err(_)) => Err(e),
        }
    }

    /// The next version to write: sequence bumped; goes into slot `seq % 2`.
    pub fn next(&self) -> Superblock {
        Superblock {
            seq: self.seq + 1,
            ..self.clone()
        }
    }

    /// The slot this version belongs in.
    pub fn slot(&self) -> u64 {
        self.seq % 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn layout_fits_and_covers_the_data() {
        for size in [2u64 << 20, 10 << 20, (1 << 30) + 12345, 1 << 40] {
            let l = Layout::compute(size, 7, DEFAULT_AL_SLOTS).unwrap();
            assert_eq!(l.data_size % MD_BLOCK, 0);
            assert!(
                l.bitmap_bytes * 8 * BM_BLOCK >= l.data_size,
                "bitmap covers data"
            );
            assert_eq!(l.al_offset, l.data_size + 8 * l.bitmap_bytes);
            assert_eq!(l.resync_bitmap(), l.data_size + 7 * l.bitmap_bytes);
            assert!(l.sb_slot(1) + MD_BLOCK <= size);
            assert!(
                size - (l.sb_slot(1) + MD_BLOCK) < MD_BLOCK,
                "superblock at the end"
            );
        }
        // 1 GiB with 7 peers: bitmaps of 32 KiB each, well under 1% overhead.
        let l = Layout::compute(1 << 30, 7, DEFAULT_AL_SLOTS).unwrap();
        assert!(l.md_size() < (1 << 30) / 100);
    }

    #[test]
    fn too_small_and_bad_peers_are_refused() {
        assert!(matches!(
            Layout::compute(300 << 10, 1, 64),
            Err(MdError::TooSmall { .. })
        ));
        assert!(matches!(
            Layout::compute(0, 1, 64),
            Err(MdError::TooSmall { .. })
        ));
        assert_eq!(
            Layout::compute(1 << 30, 0, 64),
            Err(MdError::BadMaxPeers(0))
        );
        assert_eq!(
            Layout::compute(1 << 30, 32, 64),
            Err(MdError::BadMaxPeers(32))
        );
    }

    fn sample() -> Superblock {
        let l = Layout::compute(64 << 20, 3, DEFAULT_AL_SLOTS).unwrap();
        let mut sb = Superblock::new(l, [7; 16], 0x1234);
        sb.peers[1] = PeerSlot {
            node_id: 2,
            flags: 1,
            bitmap_uuid: 99,
        };
        sb.history = [1, 2, 3, 4, 0, 0, 0, 0];
        sb.newest_seen = 77;
        sb.resync_from = 1;
        sb.al = vec![5, 9, 3];
        sb.flags = FLAG_PRIMARY;
        sb.heard = (78, 77);
        sb.settled = 3;
        sb.parent = 2;
        sb
    }

    #[test]
    fn roundtrip() {
        let sb = sample();
        assert_eq!(Superblock::decode(&sb.encode()).unwrap(), sb);
    }

    #[test]
    fn torn_update_keeps_the_previous_version() {
        let old = sample().next(); // seq 1, slot 1
        let new = old.next(); // seq 2, slot 0
        let slot1 = old.encode();
        let mut slot0 = new.encode();
        assert_eq!(Superblock::pick(&slot0, &slot1).unwrap().seq, 2);
        // The write of the new version tore after its first sector.
        slot0[512..].fill(0);
        assert_eq!(Superblock::pick(&slot0, &slot1).unwrap(), old);
        assert_eq!(
            Superblock::pick(&[0; 4096], &[0; 4096]),
            Err(MdError::NotFound)
        );
    }

    #[test]
    fn newer_version_is_reported_not_ignored() {
        let mut b = sample().encode();
        b[OFF_VERSION..OFF_VERSION + 4].copy_from_slice(&(VERSION + 1).to_le_bytes());
        let crc = crc32c::crc32c(&b[..OFF_CRC]);
        b[OFF_CRC..OFF_CRC + 4].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            Superblock::pick(&b, &[0; 4096]),
            Err(MdError::Version(VERSION + 1))
        );
    }

    #[test]
    fn version_2_without_heard_is_still_read() {
        let mut sb = sample();
        sb.heard = (0, 0);
        sb.settled = 0;
        sb.parent = 0;
        let mut b = sb.encode();
        b[OFF_VERSION..OFF_VERSION + 4].copy_from_slice(&2u32.to_le_bytes());
        b[OFF_CRC_V2..].fill(0);
        let crc = crc32c::crc32c(&b[..OFF_CRC_V2]);
        b[OFF_CRC_V2..OFF_CRC_V2 + 4].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(Superblock::decode(&b).unwrap(), sb);
    }

    #[test]
    fn version_1_with_its_64_bit_activity_log_is_still_read() {
        let mut sb = sample();
        sb.heard = (0, 0);
        sb.settled = 0;
        sb.parent = 0;
        let mut b = sb.encode();
        b[OFF_VERSION..OFF_VERSION + 4].copy_from_slice(&1u32.to_le_bytes());
        b[OFF_AL..].fill(0);
        for (i, e) in sb.al.iter().enumerate() {
            b[OFF_AL + 8 * i..OFF_AL + 8 * i + 8].copy_from_slice(&e.to_le_bytes());
        }
        let crc = crc32c::crc32c(&b[..OFF_CRC_V1]);
        b[OFF_CRC_V1..OFF_CRC_V1 + 4].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(Superblock::decode(&b).unwrap(), sb);
        let mut growing = sample();
        growing.flags |= FLAG_GROWING;
        growing.grow_from = 32 << 20;
        assert_eq!(Superblock::decode(&growing.encode()), Ok(growing));
    }

    #[test]
    fn the_activity_log_holds_800_extents() {
        let mut sb = sample();
        sb.al = (0..1000u64).map(|e| e * 7).collect();
        let back = Superblock::decode(&sb.encode()).unwrap();
        assert_eq!(back.al, sb.al[..MAX_AL].to_vec());
    }

    proptest! {
        #[test]
        fn any_single_corruption_is_detected(at in 0usize..OFF_CRC + 4, bit in 0u8..8) {
            let sb = sample();
            let mut b = sb.encode();
            b[at] ^= 1 << bit;
            prop_assert!(Superblock::decode(&b).is_err());
        }

        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..4200)) {
            let _ = Superblock::decode(&data);
        }

        #[test]
        fn layout_is_always_within_bounds(size in 0u64..(1 << 44), peers in 1u32..=MAX_PEERS, al in 0u32..1024) {
            if let Ok(l) = Layout::compute(size, peers, al) {
                prop_assert!(l.data_size >= MIN_DATA_SIZE);
                prop_assert!(l.bitmap_bytes * 8 * BM_BLOCK >= l.data_size);
                prop_assert!(l.sb_slot(1) + MD_BLOCK <= size);
            }
        }
    }
}
