//! The replication core's persistent state on a local volume's metadata.
//!
//! The core hands over its whole [`Persistent`] state on every change; this module
//! writes only what changed: the bitmap pages whose words differ from the last
//! persisted version, then one superblock (generations, disk state, activity log).

use std::collections::BTreeMap;
use std::sync::Arc;

use replica::bitmap::Bitmap;
use replica::core::{Config, Persistent};
use replica::md::{self, DiskState, NO_NODE, Superblock};
use wire::{Disk, NodeId};

use crate::volume::{LocalVolume, VolumeError};

/// Bytes of one bitmap page written at a time.
const PAGE: usize = md::MD_BLOCK as usize;
const WORDS_PER_PAGE: usize = PAGE / 8;

/// Writes the core's state to one volume's metadata.
#[derive(Debug)]
pub struct MdStore {
    vol: Arc<LocalVolume>,
    /// Peer node -> bitmap slot in the metadata.
    slots: BTreeMap<NodeId, u32>,
    /// Bitmap index -> words as last written.
    written: BTreeMap<u32, Vec<u64>>,
    resync_index: u32,
    node: NodeId,
    /// Slots of peers removed from the resource, released on the next write.
    freed: Vec<u32>,
    /// The next write rewrites every bitmap page, whatever the cache says.
    rewrite_all: bool,
}

fn disk_to_md(d: Disk) -> DiskState {
    match d {
        Disk::Diskless => DiskState::Diskless,
        Disk::Inconsistent => DiskState::Inconsistent,
        Disk::Outdated => DiskState::Outdated,
        Disk::Consistent => DiskState::Consistent,
        Disk::UpToDate => DiskState::UpToDate,
    }
}

fn disk_from_md(d: DiskState) -> Disk {
    match d {
        DiskState::Diskless => Disk::Diskless,
        DiskState::Inconsistent => Disk::Inconsistent,
        DiskState::Outdated => Disk::Outdated,
        DiskState::Consistent => Disk::Consistent,
        DiskState::UpToDate => Disk::UpToDate,
    }
}

fn bitmap_of(blocks: u64, words: &[u64]) -> Bitmap {
    let mut b = Bitmap::new(blocks);
    let n = b.words().len().min(words.len());
    b.merge_words(0, &words[..n]);
    b
}

impl MdStore {
    /// Reads the core's state from the volume. A volume never used for replication
    /// (fresh metadata) starts as a new, Inconsistent replica of generation 0.
    pub fn load(vol: Arc<LocalVolume>, cfg: &Config) -> Result<(Persistent, MdStore), String> {
        let sb = vol
            .superblock()
            .ok_or_else(|| "metadata lock poisoned".to_owned())?;
        let blocks = sb.layout.data_size / md::BM_BLOCK;
        if blocks != cfg.size_blocks {
            return Err(format!(
                "volume holds {blocks} blocks, the resource expects {}",
                cfg.size_blocks
            ));
        }
        let node = u32::from(cfg.node);
        if sb.node_id != NO_NODE && sb.node_id != node {
            return Err(format!(
                "{}: metadata belongs to node id {}, this node is {node}; fix the node id in the resource file, or recreate the metadata with `tandem local create-md --force`",
                vol.path().display(),
                sb.node_id
            ));
        }
        let fresh = sb.node_id == NO_NODE;
        let all = vol.read_bitmaps().map_err(|e| e.to_string())?;
        // Peers keep their slots; new peers take free ones.
        let mut slots = BTreeMap::new();
        let mut used: Vec<bool> = sb.peers.iter().map(|p| p.node_id != NO_NODE).collect();
        for peer in cfg.nodes.iter().filter(|n| n.id != cfg.node && n.diskful) {
            let slot = match sb
                .peers
                .iter()
                .position(|p| p.node_id == u32::from(peer.id))
            {
                Some(s) => s,
                None => {
                    let free = used.iter().position(|u| !u).ok_or_else(|| {
                        format!(
                            "{}: no free peer slot for node id {} (max-peers {}); recreate the metadata with a larger max-peers",
                            vol.path().display(),
                            peer.id,
                            sb.layout.max_peers
                        )
                    })?;
                    used[free] = true;
                    free
                }
            };
            slots.insert(peer.id, slot as u32);
        }
        let resync_index = sb.layout.max_peers;
        let mut written = BTreeMap::new();
        for (i, words) in all.into_iter().enumerate() {
            written.insert(i as u32, words);
        }
        let store = MdStore {
            vol: vol.clone(),
            slots,
            written,
            resync_index,
            node: cfg.node,
            freed: Vec::new(),
            rewrite_all: false,
        };
        let mut p = Persistent::new_fresh(cfg);
        if !fresh {
            p.disk = disk_from_md(sb.disk_state);
            p.current = sb.current_uuid;
            p.history = sb.history.iter().copied().filter(|h| *h != 0).collect();
            p.newest_seen = sb.newest_seen;
            p.resync_from = u8::try_from(sb.resync_from).ok();
            p.al = sb.al.clone();
            p.primary = sb.flags & md::FLAG_PRIMARY != 0;
            p.unsettled = sb.flags & md::FLAG_UNSETTLED != 0;
            p.heard = (sb.heard.0 != 0).then_some(sb.heard);
            p.settled = sb.settled;
            p.parent = sb.parent;
            for (peer, slot) in &store.slots {
                let slot_info = sb.peers.get(*slot as usize).copied().unwrap_or_default();
                if slot_info.node_id == u32::from(*peer) {
                    if let Some(w) = store.written.get(slot) {
                        p.bitmaps.insert(*peer, bitmap_of(blocks, w));
                    }
                    if slot_info.bitmap_uuid != 0 {
                        p.bitmap_uuids.insert(*peer, slot_info.bitmap_uuid);
                    }
                }
            }
            if let Some(w) = store.written.get(&resync_index) {
                p.resync_left = bitmap_of(blocks, w);
            }
        }
        p.dirty = !vol.was_clean;
        Ok((p, store))
    }

    /// The peer slots a new configuration needs: peers that stay keep theirs, new
    /// diskful peers take free ones. Changes nothing; see [`MdStore::set_slots`].
    pub fn plan_slots(&self, cfg: &Config) -> Result<BTreeMap<NodeId, u32>, String> {
        let wanted: Vec<NodeId> = cfg
            .nodes
            .iter()
            .filter(|n| n.id != cfg.node && n.diskful)
            .map(|n| n.id)
            .collect();
        let mut slots: BTreeMap<NodeId, u32> = self
            .slots
            .iter()
            .filter(|(p, _)| wanted.contains(p))
            .map(|(p, s)| (*p, *s))
            .collect();
        for p in wanted {
            if slots.contains_key(&p) {
                continue;
            }
            let free = (0..self.resync_index)
                .find(|i| !slots.values().any(|s| s == i))
                .ok_or_else(|| {
                    format!(
                        "{}: no free peer slot for node id {p} (max-peers {}); recreate the metadata with a larger max-peers",
                        self.vol.path().display(),
                        self.resync_index
                    )
                })?;
            slots.insert(p, free);
        }
        Ok(slots)
    }

    /// Takes the slots from [`MdStore::plan_slots`]; slots no longer used are marked
    /// free on the next write.
    pub fn set_slots(&mut self, slots: BTreeMap<NodeId, u32>) {
        for s in self.slots.values() {
            if !slots.values().any(|n| n == s) {
                self.freed.push(*s);
            }
        }
        self.freed.retain(|f| !slots.values().any(|s| s == f));
        self.slots = slots;
    }

    /// Forgets what was written, so the next write rewrites every bitmap page (after
    /// writes failed, the disk may hold less than the cache says).
    pub fn forget_written(&mut self) {
        self.rewrite_all = true;
    }

    /// Writes what changed since the last call.
    pub fn persist(&mut self, p: &Persistent) -> Result<(), VolumeError> {
        let mut pages = Vec::new();
        let mut targets: Vec<(u32, &Bitmap)> = p
            .bitmaps
            .iter()
            .filter_map(|(peer, bm)| self.slots.get(peer).map(|s| (*s, bm)))
            .collect();
        targets.push((self.resync_index, &p.resync_left));
        for (index, bm) in targets {
            let new = bm.words();
            let old = self.written.entry(index).or_default();
            if old.len() < new.len() {
                old.resize(new.len(), 0);
            }
            for (page_no, chunk) in new.chunks(WORDS_PER_PAGE).enumerate() {
                let start = page_no * WORDS_PER_PAGE;
                let before = &old[start..start + chunk.len()];
                if self.rewrite_all || before != chunk {
                    let bytes: Vec<u8> = chunk.iter().flat_map(|w| w.to_le_bytes()).collect();
                    pages.push((index, (start * 8) as u64, bytes));
                    old[start..start + chunk.len()].copy_from_slice(chunk);
                }
            }
        }
        let slots = self.slots.clone();
        let freed = std::mem::take(&mut self.freed);
        let node = u32::from(self.node);
        let r = self.vol.write_md(&pages, |sb: &mut Superblock| {
            sb.node_id = node;
            sb.disk_state = disk_to_md(p.disk);
            sb.current_uuid = p.current;
            sb.history = [0; md::HISTORY_LEN];
            for (h, v) in sb.history.iter_mut().zip(p.history.iter()) {
                *h = *v;
            }
            sb.newest_seen = p.newest_seen;
            sb.heard = p.heard.unwrap_or((0, 0));
            sb.settled = p.settled;
            sb.parent = p.parent;
            sb.resync_from = p.resync_from.map(u32::from).unwrap_or(NO_NODE);
            sb.al = p.al.iter().copied().take(md::MAX_AL).collect();
            sb.flags = if p.dirty { md::FLAG_DIRTY } else { 0 }
                | if p.primary { md::FLAG_PRIMARY } else { 0 }
                | if p.unsettled { md::FLAG_UNSETTLED } else { 0 };
            for (peer, slot) in &slots {
                if let Some(s) = sb.peers.get_mut(*slot as usize) {
                    s.node_id = u32::from(*peer);
                    s.bitmap_uuid = p.bitmap_uuids.get(peer).copied().unwrap_or(0);
                }
            }
            for f in &freed {
                if let Some(s) = sb.peers.get_mut(*f as usize) {
                    s.node_id = NO_NODE;
                    s.bitmap_uuid = 0;
                }
            }
        });
        // After a failed write the disk may hold less than the cache: the next write
        // rewrites everything (and frees the slots again).
        if r.is_err() {
            self.rewrite_all = true;
            self.freed.extend(freed);
        } else {
            self.rewrite_all = false;
        }
        r
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::VolumeConfig;
    use replica::core::{Config, NodeConf, Protocol};
    use replica::decide::SplitBrainPolicy;
    use replica::quorum::QuorumPolicy;

    fn setup(dir: &std::path::Path) -> (Arc<LocalVolume>, Config) {
        let vcfg = VolumeConfig {
            number: 0,
            backing: dir.join("v.img"),
            size: Some(16 << 20),
            preallocate: false,
            nbd_tcp: None,
            max_peers: 3,
        };
        let vol = Arc::new(LocalVolume::open(&vcfg, "r0").unwrap());
        let cfg = Config {
            node: 0,
            nodes: vec![
                NodeConf {
                    id: 0,
                    diskful: true,
                },
                NodeConf {
                    id: 1,
                    diskful: true,
                },
            ],
            size_blocks: nbd::BlockDevice::size(&*vol) / md::BM_BLOCK,
            protocol: Protocol::C,
            quorum: QuorumPolicy::Off,
            split_brain: SplitBrainPolicy::Disconnect,
            al_extents: 8,
            extent_blocks: 1024,
            resync_inflight: 4,
            resync_per_tick: 4,
            resync_rate_per_tick: None,
            promote_timeout_ms: 1000,
            grant_lease_ms: 1000,
            max_queued: 16,
            resync_csums: false,
            on_no_quorum: replica::core::OnNoQuorum::IoError,
            max_held: 16,
            max_held_bytes: 1 << 20,
            allow_two_primaries: false,
        };
        (vol, cfg)
    }

    #[test]
    fn after_forget_written_every_page_is_written_again() {
        let dir = tempfile::tempdir().unwrap();
        let (vol, cfg) = setup(dir.path());
        let (mut p, mut store) = MdStore::load(vol.clone(), &cfg).unwrap();
        p.bitmaps.get_mut(&1).unwrap().set_all();
        store.persist(&p).unwrap();
        // The cache believes the pages hold zeros (as after a write that failed).
        for w in store.written.values_mut() {
            w.iter_mut().for_each(|x| *x = 0);
        }
        p.bitmaps.get_mut(&1).unwrap().clear_all();
        store.persist(&p).unwrap();
        let (back, _) = MdStore::load(vol.clone(), &cfg).unwrap();
        assert!(
            !back.bitmaps[&1].is_empty(),
            "the stale cache skipped the pages"
        );
        store.forget_written();
        store.persist(&p).unwrap();
        let (back, _) = MdStore::load(vol, &cfg).unwrap();
        assert!(back.bitmaps[&1].is_empty());
    }

    #[test]
    fn an_unsettled_generation_stays_unsettled_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (vol, cfg) = setup(dir.path());
        let (mut p, mut store) = MdStore::load(vol.clone(), &cfg).unwrap();
        p.disk = Disk::UpToDate;
        p.current = 0x77;
        p.history = vec![0x55];
        p.primary = true;
        p.unsettled = true;
        store.persist(&p).unwrap();
        let (back, _) = MdStore::load(vol.clone(), &cfg).unwrap();
        assert_eq!(
            (back.current, back.unsettled, back.primary),
            (0x77, true, true)
        );
        p.unsettled = false;
        store.persist(&p).unwrap();
        let (back, _) = MdStore::load(vol, &cfg).unwrap();
        assert_eq!(
            (back.current, back.unsettled, back.primary),
            (0x77, false, true)
        );
    }
}
