//! allow-two-primaries: a second primary next to the first one, for live migration.
//!
//! Two nodes that both accept writes must still apply every write in one order on
//! every replica, or replicas diverge. Here one primary orders the writes: the one
//! that was primary first (the *orderer*). The second primary (the *forwarder*)
//! serves reads from its own data (diskless: from an UpToDate peer, as any diskless
//! primary) and sends each client write and flush to the orderer
//! (`Msg::ForwardWrite`, `Msg::ForwardFlush`), which runs it as one of its own client
//! requests, replicates it to every target (the forwarder included, protocol C) and
//! answers `Msg::ForwardDone` once it is complete. A write the forwarder's client saw
//! complete is therefore on the forwarder's disk too: its reads see it.
//!
//! Handover: when the orderer is demoted (the VM left it), it answers what it had not
//! started with `FORWARD_RETRY` and completes what it had. The forwarder waits until
//! every forwarded request is answered and every write of the orderer it received is
//! confirmed everywhere (its window is empty: the demoted orderer keeps sending
//! `PeerAck`s), then orders writes itself in a new epoch and runs the retried
//! requests first, then those that arrived meanwhile.
//!
//! If the forwarder loses the orderer while it is still primary, it cannot tell a
//! crash from a partition in which the orderer keeps writing: it fails what waits
//! (`IoError::OrdererLost`) and steps down to secondary. A client that connects again
//! promotes it through the usual grants (as the only primary once the other is
//! demoted or known gone).

use super::*;
use wire::{
    FORWARD_BUSY, FORWARD_DISK, FORWARD_NO_DATA, FORWARD_NO_QUORUM, FORWARD_NOT_PRIMARY,
    FORWARD_OUT_OF_RANGE, FORWARD_RETRY, FORWARD_SUSPENDED_FULL,
};

/// A client request the forwarder handed to the orderer, or holds for the handover.
#[derive(Debug)]
pub(super) struct Forwarded {
    pub(super) client: u64,
    pub(super) req: FwdReq,
}

#[derive(Debug)]
pub(super) enum FwdReq {
    Write {
        block: u64,
        count: u32,
        data: Bytes,
        fua: bool,
    },
    Flush,
}

/// Internal client ids of requests run for a forwarder (the driver's ids stay below).
pub(super) const REMOTE_ID_BASE: u64 = 1 << 63;

impl Replica {
    /// Both options that allow a second primary: allow-two-primaries needs protocol C,
    /// so that a write the orderer completes is on the forwarder's disk.
    pub(super) fn two_primaries(&self) -> bool {
        self.cfg.allow_two_primaries && self.cfg.protocol == Protocol::C
    }

    /// Connected peers that are primary.
    pub(super) fn primary_peers(&self) -> Vec<NodeId> {
        self.peers
            .values()
            .filter(|p| p.connected() && p.role == Role::Primary)
            .map(|p| p.id)
            .collect()
    }

    /// This node is primary and orders its writes itself.
    pub(super) fn orders_writes(&self) -> bool {
        self.role == Role::Primary && self.orderer.is_none()
    }

    /// A forwarder whose orderer is gone while still primary: no client I/O.
    pub(super) fn orderer_lost(&self) -> Option<NodeId> {
        let o = self.orderer?;
        if self.handover {
            return None;
        }
        let live = self
            .peers
            .get(&o)
            .is_some_and(|p| p.connected() && p.role == Role::Primary);
        (!live).then_some(o)
    }

    /// Why a second primary may not be promoted next to the connected primaries,
    /// if it may not.
    pub(super) fn second_primary_refused(&self, primaries: &[NodeId]) -> Option<String> {
        let first = *primaries.first()?;
        if !self.two_primaries() {
            return Some(format!(
                "node {first} is primary (a second primary needs allow-two-primaries)"
            ));
        }
        if primaries.len() > 1 {
            return Some(format!(
                "nodes {first} and {} are primary already; at most two may be",
                primaries[1]
            ));
        }
        let in_sync = self.peers.get(&first).is_some_and(|p| {
            p.conn == ConnState::Connected && (self.diskless() || p.repl == Repl::Established)
        });
        if !in_sync {
            return Some(format!(
                "node {first} is primary and not yet in sync with node {}{PASSING}",
                self.cfg.node
            ));
        }
        None
    }

    /// A client write on a forwarder (admitted already).
    pub(super) fn forward_write(
        &mut self,
        id: u64,
        block: u64,
        count: u32,
        data: Bytes,
        fua: bool,
    ) {
        let req = FwdReq::Write {
            block,
            count,
            data,
            fua,
        };
        self.forward(id, req);
    }

    pub(super) fn forward_flush(&mut self, id: u64) {
        self.forward(id, FwdReq::Flush);
    }

    fn forward(&mut self, client: u64, req: FwdReq) {
        let held = self.forwarded.len() + self.takeover_queue.len() + self.retried.len();
        if held >= self.cfg.max_queued {
            return self.fail(client, IoError::Busy);
        }
        let fwd = Forwarded { client, req };
        if self.handover {
            // The orderer is leaving: this waits for the handover.
            self.takeover_queue.push_back(fwd);
            return self.maybe_take_over();
        }
        let Some(o) = self.orderer else {
            return self.fail(client, IoError::NotPrimary);
        };
        let fid = self.next_fwd;
        self.next_fwd += 1;
        let msg = match &fwd.req {
            FwdReq::Write {
                block,
                count,
                data,
                fua,
            } => Msg::ForwardWrite {
                id: fid,
                block: *block,
                count: *count,
                fua: *fua,
                data: data.clone(),
            },
            FwdReq::Flush => Msg::ForwardFlush { id: fid },
        };
        self.forwarded.insert(fid, fwd);
        self.send(o, msg);
    }

    /// The orderer's side: a forwarded request runs as a client request of this node.
    pub(super) fn remote_request(&mut self, from: NodeId, msg: Msg) {
        let fid = match &msg {
            Msg::ForwardWrite { id, .. } | Msg::ForwardFlush { id } => *id,
            _ => return,
        };
        let forwarder = self
            .peers
            .get(&from)
            .is_some_and(|p| p.role == Role::Primary);
        if !self.orders_writes() || !forwarder {
            // Demoted (or never the orderer): the sender runs it once it orders writes.
            let result = if self.role == Role::Primary {
                FORWARD_NOT_PRIMARY
            } else {
                FORWARD_RETRY
            };
            return self.send(from, Msg::ForwardDone { id: fid, result });
        }
        let rid = self.next_remote;
        self.next_remote += 1;
        self.remote.insert(rid, (from, fid));
        match msg {
            Msg::ForwardWrite {
                block,
                count,
                fua,
                data,
                ..
            } => self.client_write(rid, block, count, data, fua),
            _ => self.client_flush(rid),
        }
    }

    /// Turns completions of forwarded requests into answers to their forwarder.
    pub(super) fn answer_remote(&mut self) {
        if self.remote.is_empty() {
            return;
        }
        let demoted = self.role != Role::Primary;
        for a in &mut self.out {
            let Action::Complete { id, result } = a else {
                continue;
            };
            let Some((to, fid)) = self.remote.remove(id) else {
                continue;
            };
            let result = match result {
                Ok(_) => 0,
                Err(IoError::NotPrimary) if demoted => FORWARD_RETRY,
                Err(e) => forward_code(*e),
            };
            *a = Action::Send {
                to,
                msg: Msg::ForwardDone { id: fid, result },
            };
        }
    }

    /// The forwarder's side: the orderer answered a forwarded request.
    pub(super) fn forward_done(&mut self, from: NodeId, fid: u64, result: u8) {
        if self.orderer != Some(from) {
            return;
        }
        let Some(f) = self.forwarded.remove(&fid) else {
            return;
        };
        if result == FORWARD_RETRY {
            self.retried.insert(fid, f);
            // A retry means the orderer is demoted; its RoleChanged is on the way.
            return self.maybe_take_over();
        }
        let r = match result {
            0 => Ok(()),
            code => Err(forward_error(code)),
        };
        if self.io_suspended() {
            // Decided, but a suspended node completes nothing: it is held (it is in
            // memory already, so beyond the bounds too) and answered when the
            // suspension ends, either way.
            self.hold(Held::Answer {
                id: f.client,
                result: r,
            });
        } else {
            self.answer(f.client, r);
        }
        self.maybe_take_over();
    }

    /// The orderer was demoted: hand over once its writes are settled.
    pub(super) fn orderer_demoted(&mut self, from: NodeId) {
        if self.orderer == Some(from) {
            self.handover = true;
            self.maybe_take_over();
        }
    }

    /// The connection to the orderer broke.
    pub(super) fn orderer_disconnected(&mut self, id: NodeId) {
        if self.orderer != Some(id) {
            return;
        }
        if self.handover {
            // Demoted before it left: what it wrote and did not confirm may be
            // missing anywhere, as when a single primary leaves.
            self.window_missing_anywhere();
            let fids: Vec<u64> = self.forwarded.keys().copied().collect();
            for fid in fids {
                if let Some(f) = self.forwarded.remove(&fid) {
                    self.retried.insert(fid, f);
                }
            }
            return self.maybe_take_over();
        }
        // Still primary when it went: it may be writing on in another partition, so
        // this node cannot order writes itself. It steps down; a client that
        // connects again promotes it through the usual grants.
        self.forwarder_step_down();
    }

    /// The orderer started a generation this forwarder misses writes of: its own
    /// data is behind, so it can serve no read nor take over. It steps down.
    pub(super) fn forwarder_left_behind(&mut self, from: NodeId) {
        if self.orderer == Some(from) && !self.diskless() {
            self.forwarder_step_down();
        }
    }

    fn forwarder_step_down(&mut self) {
        self.stop_forwarding(IoError::OrdererLost);
        self.role = Role::Secondary;
        self.md.primary = false;
        self.persist();
        self.end_suspension(IoError::OrdererLost);
        self.fail_queued_client(IoError::OrdererLost);
        self.broadcast_role();
        self.rehandshake_all();
    }

    /// Takes over ordering writes once the demoted orderer's are settled.
    pub(super) fn maybe_take_over(&mut self) {
        if !self.handover || !self.forwarded.is_empty() || !self.window.is_empty() {
            return;
        }
        self.orderer = None;
        self.handover = false;
        self.start_ordering(false);
        let retried = std::mem::take(&mut self.retried);
        let waiting = std::mem::take(&mut self.takeover_queue);
        for f in retried.into_values().chain(waiting) {
            match f.req {
                FwdReq::Write {
                    block,
                    count,
                    data,
                    fua,
                } => self.client_write(f.client, block, count, data, fua),
                FwdReq::Flush => self.client_flush(f.client),
            }
        }
    }

    /// Demoted while forwarding: what waits fails; no orderer any more.
    pub(super) fn stop_forwarding(&mut self, e: IoError) {
        let fwd = std::mem::take(&mut self.forwarded);
        let retried = std::mem::take(&mut self.retried);
        let waiting = std::mem::take(&mut self.takeover_queue);
        for f in fwd
            .into_values()
            .chain(retried.into_values())
            .chain(waiting)
        {
            self.fail(f.client, e);
        }
        self.orderer = None;
        self.handover = false;
    }
}

fn forward_code(e: IoError) -> u8 {
    match e {
        IoError::NotPrimary | IoError::OrdererLost => FORWARD_NOT_PRIMARY,
        IoError::NoQuorum => FORWARD_NO_QUORUM,
        IoError::NoData => FORWARD_NO_DATA,
        IoError::Disk => FORWARD_DISK,
        IoError::Busy => FORWARD_BUSY,
        IoError::OutOfRange => FORWARD_OUT_OF_RANGE,
        IoError::SuspendedFull => FORWARD_SUSPENDED_FULL,
    }
}

fn forward_error(code: u8) -> IoError {
    match code {
        FORWARD_NO_QUORUM => IoError::NoQuorum,
        FORWARD_NO_DATA => IoError::NoData,
        FORWARD_DISK => IoError::Disk,
        FORWARD_BUSY => IoError::Busy,
        FORWARD_OUT_OF_RANGE => IoError::OutOfRange,
        FORWARD_SUSPENDED_FULL => IoError::SuspendedFull,
        // The orderer is not primary any more, or a code of a newer peer.
        _ => IoError::OrdererLost,
    }
}
