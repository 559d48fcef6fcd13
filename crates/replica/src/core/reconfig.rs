//! Changing a running replica's configuration: options, and nodes added or removed.

use super::*;

impl Replica {
    /// Applies a new configuration without a restart: protocol, quorum and
    /// split-brain policies take effect for what happens next; a removed peer is
    /// disconnected and forgotten (its bitmap with it); an added peer starts
    /// Connecting with every block marked out of sync for it, so whatever its data,
    /// it gets all of ours unless the connect-time decision finds it needs nothing.
    /// A peer whose disk flag changed counts as removed and added. Returns the
    /// actions to carry out, like [`Replica::handle`]; an unacceptable change is
    /// refused and changes nothing.
    pub fn reconfigure(&mut self, cfg: Config) -> Result<Vec<Action>, String> {
        if cfg.node != self.cfg.node {
            return Err(format!(
                "this node is node {} and cannot become node {}",
                self.cfg.node, cfg.node
            ));
        }
        if cfg.size_blocks != self.cfg.size_blocks {
            return Err("the size changes with resize, not with a new configuration".into());
        }
        if !cfg.nodes.iter().any(|n| n.id == cfg.node) {
            return Err(format!("node {} is not in the new node list", cfg.node));
        }
        if cfg.diskful(cfg.node) != self.cfg.diskful(self.cfg.node) {
            return Err("this node's own disk flag cannot change while it runs".into());
        }
        let two_now = self.orderer.is_some()
            || (self.role == Role::Primary && !self.primary_peers().is_empty());
        if two_now && !(cfg.allow_two_primaries && cfg.protocol == Protocol::C) {
            return Err(
                "two nodes are primary: allow-two-primaries (with protocol C) stays until one is demoted"
                    .into(),
            );
        }
        let old: BTreeMap<NodeId, bool> = self.cfg.peers().map(|p| (p.id, p.diskful)).collect();
        let new: BTreeMap<NodeId, bool> = cfg.peers().map(|p| (p.id, p.diskful)).collect();
        let removed: Vec<NodeId> = old
            .iter()
            .filter(|(id, d)| new.get(id) != Some(d))
            .map(|(id, _)| *id)
            .collect();
        let added: Vec<(NodeId, bool)> = new
            .iter()
            .filter(|(id, d)| old.get(id) != Some(d))
            .map(|(id, d)| (*id, *d))
            .collect();
        if removed.iter().any(|id| {
            self.peers
                .get(id)
                .is_some_and(|p| p.connected() && p.role == Role::Primary)
        }) {
            return Err("a primary peer cannot be removed; demote it first".into());
        }
        for id in &removed {
            if self.peers.get(id).is_some_and(|p| p.connected()) {
                self.out.push(Action::Disconnect { peer: *id });
                self.peer_lost(*id);
            }
            self.peers.remove(id);
            self.md.bitmaps.remove(id);
            self.md.bitmap_uuids.remove(id);
            if self.md.resync_from == Some(*id) {
                // The resync it was feeding stays recorded in resync_left; the next
                // UpToDate source sends all of it again.
                self.md.resync_from = None;
            }
        }
        self.cfg = cfg;
        for (id, diskful) in added {
            self.peers.insert(id, Peer::fresh(id, diskful));
            if diskful {
                let mut bm = Bitmap::new(self.cfg.size_blocks);
                bm.set_all();
                self.md.bitmaps.insert(id, bm);
            }
        }
        self.update_quorum();
        // The policy may have changed: io-error ends a suspension without quorum.
        self.maybe_resume();
        self.persist();
        self.check_writes();
        self.check_flushes();
        self.pump();
        self.answer_remote();
        self.emit_changes();
        Ok(std::mem::take(&mut self.out))
    }
}

impl Peer {
    pub(super) fn fresh(id: NodeId, diskful: bool) -> Self {
        Peer {
            id,
            diskful,
            conn: ConnState::Connecting,
            repl: Repl::Off,
            role: Role::Secondary,
            disk: Disk::Diskless,
            current: 0,
            discard_my_data: false,
            left_cleanly: false,
            round: 0,
            my_hello: None,
            their_hello: None,
            bitmap_in: None,
            bitmap_sent: false,
            decision: None,
            source: None,
            waiting_turn: false,
            verify: VerifyRun::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(nodes: &[(NodeId, bool)]) -> Config {
        Config::for_tests(nodes)
    }

    fn persisted(actions: &[Action]) -> Option<&Persistent> {
        actions.iter().rev().find_map(|a| match a {
            Action::PersistMd(p) => Some(&**p),
            _ => None,
        })
    }

    #[test]
    fn added_peers_start_fully_out_of_sync_and_removed_ones_are_forgotten() {
        let c = cfg(&[(0, true), (1, true)]);
        let md = Persistent::new_in_sync(&c, 7);
        let mut r = Replica::new(c, md, 1);
        r.handle(Event::Tick { now: 1 });
        let acts = r
            .reconfigure(cfg(&[(0, true), (1, true), (2, true), (3, false)]))
            .unwrap();
        let md = persisted(&acts).expect("the new peer's bitmap is persisted");
        assert_eq!(md.bitmaps[&2].count(), 1024);
        assert_eq!(md.bitmaps[&1].count(), 0);
        assert!(
            !md.bitmaps.contains_key(&3),
            "a diskless peer has no bitmap"
        );
        assert!(r.wants_connection(2) && r.wants_connection(3));
        let st = r.status();
        assert_eq!(st.peers.len(), 3);

        let acts = r.reconfigure(cfg(&[(0, true), (2, true)])).unwrap();
        let md = persisted(&acts).unwrap();
        assert!(!md.bitmaps.contains_key(&1));
        assert!(!r.wants_connection(1));
        assert_eq!(r.status().peers.len(), 1);
    }

    #[test]
    fn a_refused_change_changes_nothing() {
        let c = cfg(&[(0, true), (1, true)]);
        let md = Persistent::new_in_sync(&c, 7);
        let mut r = Replica::new(c.clone(), md, 1);
        let before = r.status();
        let mut other = c.clone();
        other.node = 1;
        assert!(r.reconfigure(other).is_err());
        let mut bigger = c.clone();
        bigger.size_blocks *= 2;
        assert!(r.reconfigure(bigger).is_err());
        assert!(r.reconfigure(cfg(&[(0, false), (1, true)])).is_err());
        assert!(r.reconfigure(cfg(&[(1, true)])).is_err());
        assert_eq!(r.status(), before);
    }

    #[test]
    fn a_primary_peer_cannot_be_removed() {
        let c = cfg(&[(0, true), (1, true)]);
        let md = Persistent::new_in_sync(&c, 7);
        let mut r = Replica::new(c, md, 1);
        r.peers.get_mut(&1).unwrap().conn = ConnState::Connected;
        r.peers.get_mut(&1).unwrap().role = Role::Primary;
        let e = r.reconfigure(cfg(&[(0, true)])).unwrap_err();
        assert!(e.contains("demote"), "{e}");
        assert!(r.wants_connection(1));
    }
}
