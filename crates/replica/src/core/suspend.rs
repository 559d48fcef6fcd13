//! `on-no-quorum = suspend-io`: a primary that loses quorum holds client I/O instead
//! of failing it (DRBD's `suspend-io`, shared/reference/drbd.md §1.5).
//!
//! While suspended, a client request is neither completed nor failed:
//!
//! - requests that arrive, and client writes queued but not yet issued, are **held** in
//!   arrival order (`Replica::held`), bounded by `Config::max_held` requests and
//!   `Config::max_held_bytes` of write data; a request beyond either bound fails at
//!   once with [`IoError::SuspendedFull`] (the driver is expected to push back before
//!   that: blockd's NBD connections have a fixed number of requests in flight);
//! - writes already issued finish locally and on the peers still there, but are not
//!   completed; under suspend-io a primary keeps each write's data until the write
//!   completes (a node without a disk always does), so that it can send it again;
//! - flushes already issued finish but are not completed; a local read that finishes
//!   is held again (its data is dropped and read anew later); a read a diskless
//!   primary forwarded is held when its answer comes or its peer goes.
//!
//! The suspension ends in one of two ways:
//!
//! - **quorum returns** with peers whose handshake is done and that replicate (a peer
//!   still in its handshake may turn out to hold newer data, which makes this primary
//!   step down; the tiebreaker alone never brings quorum back). Writes that were in
//!   flight are issued again, with new sequence numbers, ahead of the held requests:
//!   peers that left during the suspension, and nodes that took data from them since,
//!   may lack them, and sent anew they reach every connected diskful peer before they
//!   complete, like any write (a new generation first, if peers were lost). Flushes
//!   that were in flight complete once the new generation is acknowledged. Held
//!   requests then run in arrival order with the usual guarantees (protocol C: on
//!   every connected diskful peer).
//! - **the node stops being primary**: `Admin::Secondary` (blockd's `secondary
//!   --force`, the administrator's way out, like DRBD's `secondary --force`), or a
//!   primary that meets newer data on reconnecting and steps down (DRBD's
//!   `on-suspended-primary-outdated force-secondary`): every held and pending client
//!   request fails with [`IoError::NotPrimary`]. Switching the policy to io-error while
//!   suspended fails them with [`IoError::NoQuorum`]. (`Admin::Down` leaves them to
//!   the driver, which answers what it still owes as it drops the core.)

use super::*;

/// What a primary does with client I/O while it has no quorum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnNoQuorum {
    /// Fail it.
    IoError,
    /// Hold it until quorum returns or the node stops being primary.
    SuspendIo,
}

/// Why client I/O is suspended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Suspended {
    /// A primary under `OnNoQuorum::SuspendIo` lost quorum.
    NoQuorum,
}

/// A client request held while I/O is suspended.
#[derive(Debug)]
pub(super) enum Held {
    Write {
        id: u64,
        block: u64,
        count: u32,
        data: Bytes,
        fua: bool,
    },
    Read {
        id: u64,
        block: u64,
        count: u32,
    },
    Flush {
        id: u64,
    },
    /// The orderer's answer to a request this second primary forwarded
    /// (allow-two-primaries), which came while this node's I/O was suspended.
    Answer {
        id: u64,
        result: Result<(), IoError>,
    },
}

impl Held {
    fn id(&self) -> u64 {
        match self {
            Held::Write { id, .. }
            | Held::Read { id, .. }
            | Held::Flush { id }
            | Held::Answer { id, .. } => *id,
        }
    }

    fn bytes(&self) -> u64 {
        match self {
            Held::Write { data, .. } => data.len() as u64,
            _ => 0,
        }
    }
}

impl Replica {
    /// Why client I/O is suspended, if it is.
    pub fn suspended(&self) -> Option<Suspended> {
        self.suspended.then_some(Suspended::NoQuorum)
    }

    /// Whether client I/O is suspended now. A primary under suspend-io that has no
    /// quorum starts its suspension here: every path that would complete or fail a
    /// client request asks first.
    pub(super) fn io_suspended(&mut self) -> bool {
        if !self.suspended
            && self.role == Role::Primary
            && self.cfg.on_no_quorum == OnNoQuorum::SuspendIo
            && !self.quorum
        {
            self.suspended = true;
            // Client writes queued but not issued are held ahead of anything newer.
            let mut keep = VecDeque::new();
            let mut held = VecDeque::new();
            while let Some(w) = self.queue.pop_front() {
                match w {
                    Work::Client {
                        id,
                        block,
                        count,
                        data,
                        fua,
                    } => held.push_back(Held::Write {
                        id,
                        block,
                        count,
                        data,
                        fua,
                    }),
                    other => keep.push_back(other),
                }
            }
            self.queue = keep;
            for h in held.into_iter().rev() {
                self.held_bytes += h.bytes();
                self.held.push_front(h);
            }
        }
        self.suspended
    }

    /// A new client request while suspended: held, or failed when it could never run
    /// (out of range) or the held requests are at their bound.
    pub(super) fn hold_new(&mut self, h: Held) {
        let range = match &h {
            Held::Write { block, count, .. } | Held::Read { block, count, .. } => {
                Some((*block, *count))
            }
            Held::Flush { .. } | Held::Answer { .. } => None,
        };
        if let Some((block, count)) = range {
            let end = block.checked_add(u64::from(count));
            if count == 0 || end.is_none_or(|end| end > self.io_blocks) {
                return self.fail(h.id(), IoError::OutOfRange);
            }
        }
        if self.held.len() >= self.cfg.max_held
            || self.held_bytes.saturating_add(h.bytes()) > self.cfg.max_held_bytes
        {
            return self.fail(h.id(), IoError::SuspendedFull);
        }
        self.hold(h);
    }

    /// Holds a request that was admitted before (it counts against the bounds but is
    /// not refused: it is already in memory).
    pub(super) fn hold(&mut self, h: Held) {
        self.held_bytes += h.bytes();
        self.held.push_back(h);
    }

    /// Ends the suspension once quorum is back with peers past their handshake.
    pub(super) fn maybe_resume(&mut self) {
        if !self.suspended {
            return;
        }
        if self.role != Role::Primary {
            return self.end_suspension(IoError::NotPrimary);
        }
        let live = self.live_quorum();
        if self.cfg.on_no_quorum == OnNoQuorum::IoError && !live {
            return self.end_suspension(IoError::NoQuorum);
        }
        // Writes held in flight are sent anew once their local write finished.
        let local_pending = self
            .writes
            .values()
            .any(|w| !w.completed && !w.local_done && w.data.is_some());
        if !live || local_pending {
            return;
        }
        self.suspended = false;
        // Writes held in flight go out again, with new sequence numbers, ahead of
        // what arrived while suspended: peers that left during the suspension, and
        // nodes that took data from them, may lack them; sent anew they are on every
        // connected peer when they complete.
        let again: Vec<u64> = self
            .writes
            .iter()
            .filter(|(_, w)| !w.completed && w.client.is_some() && w.data.is_some())
            .map(|(s, _)| *s)
            .collect();
        let mut front = Vec::new();
        for s in again {
            if let Some(w) = self.writes.remove(&s)
                && let (Some(id), Some(data)) = (w.client, w.data)
            {
                self.unpin_extents(w.block, w.count);
                front.push(Held::Write {
                    id,
                    block: w.block,
                    count: w.count as u32,
                    data,
                    fua: w.fua,
                });
            }
        }
        // Flushes held in flight complete under a new generation the peers present
        // acknowledged, when a peer that left never confirmed them.
        let unconfirmed = !front.is_empty() || self.writes.values().any(|w| !w.completed);
        if self.need_rotation && (unconfirmed || !self.flushes.is_empty()) {
            self.rotate();
        }
        let held: Vec<Held> = front
            .into_iter()
            .chain(std::mem::take(&mut self.held))
            .collect();
        self.held_bytes = 0;
        for h in held {
            match h {
                Held::Write {
                    id,
                    block,
                    count,
                    data,
                    fua,
                } => match self.admit(block, count) {
                    Err(e) => self.fail(id, e),
                    Ok(()) => self.queue.push_back(Work::Client {
                        id,
                        block,
                        count,
                        data,
                        fua,
                    }),
                },
                Held::Read { id, block, count } => self.client_read(id, block, count),
                Held::Flush { id } => self.client_flush(id),
                Held::Answer { id, result } => self.answer(id, result),
            }
        }
        self.check_writes();
        self.check_flushes();
    }

    /// Completes a forwarded request with the orderer's answer.
    pub(super) fn answer(&mut self, id: u64, result: Result<(), IoError>) {
        self.out.push(Action::Complete {
            id,
            result: result.map(|()| None),
        });
    }

    /// Ends the suspension by failing every held and pending client request with `e`.
    pub(super) fn end_suspension(&mut self, e: IoError) {
        if !self.suspended {
            return;
        }
        self.suspended = false;
        for h in std::mem::take(&mut self.held) {
            match h {
                // Already decided by the orderer: the client gets what happened.
                Held::Answer { id, result } => self.answer(id, result),
                other => self.fail(other.id(), e),
            }
        }
        self.held_bytes = 0;
        let mut failed = Vec::new();
        for w in self.writes.values_mut() {
            if !w.completed
                && let Some(id) = w.client
            {
                w.completed = true;
                w.data = None;
                failed.push(id);
            }
        }
        failed.extend(self.flushes.drain(..).map(|f| f.id));
        failed.extend(
            std::mem::take(&mut self.reads)
                .into_values()
                .map(|r| r.client),
        );
        for id in failed {
            self.fail(id, e);
        }
        self.fail_queued_client(e);
        self.check_writes();
    }

    /// Quorum counting only peers whose handshake is done, and without the
    /// tiebreaker's keep rule (quorum was lost, so there is nothing to keep).
    fn live_quorum(&self) -> bool {
        has_quorum(self.cfg.quorum, self.quorum_view(true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(policy: OnNoQuorum) -> Config {
        Config {
            on_no_quorum: policy,
            max_held: 2,
            max_held_bytes: 3 * 4096,
            ..Config::for_tests(&[(0, true), (1, true)])
        }
    }

    /// A primary forced up without its only peer: no quorum.
    fn lonely_primary(policy: OnNoQuorum) -> Replica {
        let c = cfg(policy);
        let md = Persistent::new_in_sync(&c, 7);
        let mut r = Replica::new(c, md, 1);
        r.handle(Event::Tick { now: 1 });
        r.handle(Event::Admin(Admin::Primary { force: true }));
        assert_eq!(r.role(), Role::Primary);
        assert!(!r.has_quorum());
        r
    }

    fn write(r: &mut Replica, id: u64, block: u64) -> Vec<Action> {
        r.handle(Event::ClientWrite {
            id,
            block,
            count: 1,
            data: vec![id as u8; 4096].into(),
            fua: false,
        })
    }

    fn completions(actions: &[Action]) -> Vec<(u64, Result<(), IoError>)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Complete { id, result } => Some((*id, result.clone().map(drop))),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn io_error_fails_at_once_and_suspend_io_holds_within_its_bounds() {
        let mut r = lonely_primary(OnNoQuorum::IoError);
        assert_eq!(
            completions(&write(&mut r, 1, 0)),
            vec![(1, Err(IoError::NoQuorum))]
        );
        assert_eq!(r.suspended(), None);

        let mut r = lonely_primary(OnNoQuorum::SuspendIo);
        assert_eq!(r.suspended(), Some(Suspended::NoQuorum));
        assert!(completions(&write(&mut r, 1, 0)).is_empty());
        let a = r.handle(Event::ClientFlush { id: 2 });
        assert!(completions(&a).is_empty());
        // Out of range fails at once; the third request is over the bound of two.
        assert_eq!(
            completions(&write(&mut r, 3, 5000)),
            vec![(3, Err(IoError::OutOfRange))]
        );
        assert_eq!(
            completions(&write(&mut r, 4, 1)),
            vec![(4, Err(IoError::SuspendedFull))]
        );
        let st = r.status();
        assert_eq!((st.held_requests, st.held_bytes), (2, 4096));
        // Nothing of it reached the disk or a peer.
        for a in r.handle(Event::Tick { now: 5000 }) {
            assert!(
                !matches!(a, Action::DiskWrite { .. } | Action::Complete { .. }),
                "{a:?}"
            );
        }
    }

    /// Two-primaries seeds 11681, 17585 (and 10552, 13848 with an error): the
    /// orderer's answer to a request this second primary forwarded came while its own
    /// I/O was suspended. It is held like the rest and given when the suspension ends.
    #[test]
    fn a_forwarded_request_answered_while_suspended_is_held() {
        // Four nodes: connected to the orderer only, this one has no quorum.
        let c = Config {
            on_no_quorum: OnNoQuorum::SuspendIo,
            ..Config::for_tests(&[(0, true), (1, true), (2, true), (3, true)])
        };
        let md = Persistent::new_in_sync(&c, 7);
        let mut r = Replica::new(c, md, 1);
        r.handle(Event::Tick { now: 1 });
        r.handle(Event::Admin(Admin::Primary { force: true }));
        if let Some(p) = r.peers.get_mut(&1) {
            p.conn = ConnState::Connected;
            p.role = Role::Primary;
        }
        r.orderer = Some(1);
        r.update_quorum();
        assert!(r.io_suspended());
        r.forwarded.insert(
            9,
            dual::Forwarded {
                client: 4,
                req: dual::FwdReq::Flush,
            },
        );
        let a = r.handle(Event::Message {
            from: 1,
            msg: Msg::ForwardDone { id: 9, result: 0 },
        });
        assert!(completions(&a).is_empty(), "{a:?}");
        assert_eq!(r.status().held_requests, 1);
        // Demoted: the orderer's answer, not an error of this node.
        let a = r.handle(Event::Admin(Admin::Secondary));
        assert_eq!(completions(&a), vec![(4, Ok(()))]);
    }

    #[test]
    fn demotion_or_a_switch_to_io_error_fails_what_was_held() {
        let mut r = lonely_primary(OnNoQuorum::SuspendIo);
        write(&mut r, 1, 0);
        r.handle(Event::ClientRead {
            id: 2,
            block: 0,
            count: 1,
        });
        let a = r.handle(Event::Admin(Admin::Secondary));
        assert_eq!(
            completions(&a),
            vec![(1, Err(IoError::NotPrimary)), (2, Err(IoError::NotPrimary))]
        );
        assert!(a.contains(&Action::State(StateChange::Suspended(None))));
        assert_eq!((r.role(), r.suspended()), (Role::Secondary, None));

        let mut r = lonely_primary(OnNoQuorum::SuspendIo);
        write(&mut r, 1, 0);
        let a = r.reconfigure(cfg(OnNoQuorum::IoError)).unwrap();
        assert_eq!(completions(&a), vec![(1, Err(IoError::NoQuorum))]);
        assert_eq!(r.suspended(), None);
        assert_eq!(
            completions(&write(&mut r, 2, 0)),
            vec![(2, Err(IoError::NoQuorum))]
        );
    }
}
