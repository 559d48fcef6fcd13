//! Online grow of a replicated volume.
//!
//! The node where `Admin::Resize` runs coordinates:
//!
//! 1. It checks that the grow can succeed everywhere: not a shrink, no resize running,
//!    this node and every diskful peer UpToDate, every diskful peer connected with no
//!    resync running. Otherwise it refuses (`Action::ResizeResult(Err)`) naming who is
//!    missing (as `node #ID`, which the driver replaces by the node's name), and
//!    nothing changes.
//! 2. It grows its own backing (`Action::Grow`; the driver answers `Event::GrowDone`).
//!    Once the driver reports success, its bitmaps cover the new blocks, clear: the
//!    driver promises that the new area reads as zeros on every diskful node (a grown
//!    file is sparse there), so the copies agree on it without a resync.
//! 3. It sends `Msg::Resize` to every connected peer. A diskful peer grows its backing
//!    the same way and answers `ResizeDone`; a diskless one answers at once.
//! 4. When every diskful node confirmed, it sends `ResizeCommit` to every connected
//!    peer and reports success. Only then may clients use the new blocks: each node
//!    keeps serving client I/O within the old size (`Status::size_blocks`, and
//!    `StateChange::Size` when it changes) until it commits (the coordinator when the
//!    last confirmation arrives, a peer on `ResizeCommit`). Replicated writes and
//!    resync into the new area come only from a primary that committed, so they never
//!    reach a node that has not grown.
//!
//! A peer that refuses or disconnects before it confirmed fails the resize: the
//! coordinator reports which, and the old size stays in force for clients. Backings
//! that grew stay grown (the metadata says so); a node whose backing is larger than
//! its peers' is refused by their handshake until they grow too (run the resize again
//! once they are connected, or grow the backing of a node that is down with the same
//! command). A restart serves the size the metadata records.

use super::*;

/// A resize this node coordinates or takes part in.
#[derive(Debug)]
pub(super) struct ResizeRun {
    size_blocks: u64,
    coordinator: NodeId,
    /// Diskful nodes (this one included) whose backing has not grown yet.
    waiting: BTreeSet<NodeId>,
    /// The peers were told (the coordinator's own grow is done).
    told: bool,
}

impl ResizeRun {
    pub(super) fn size_blocks(&self) -> u64 {
        self.size_blocks
    }
}

impl Replica {
    pub(super) fn admin_resize(&mut self, size_blocks: u64) {
        match self.resize_refusal(size_blocks) {
            Err(e) => self.out.push(Action::ResizeResult(Err(e))),
            Ok(true) => self.out.push(Action::ResizeResult(Ok(()))),
            Ok(false) => {
                let me = self.cfg.node;
                let mut waiting: BTreeSet<NodeId> = self
                    .peers
                    .values()
                    .filter(|p| p.diskful)
                    .map(|p| p.id)
                    .collect();
                if self.cfg.diskful(me) {
                    waiting.insert(me);
                }
                self.resize = Some(ResizeRun {
                    size_blocks,
                    coordinator: me,
                    waiting,
                    told: false,
                });
                if self.cfg.diskful(me) && size_blocks > self.cfg.size_blocks {
                    self.out.push(Action::Grow { size_blocks });
                } else {
                    // Diskless, or this backing grew in an earlier attempt.
                    self.local_grown(size_blocks);
                }
            }
        }
    }

    /// Why a resize to `size_blocks` cannot start; `Ok(true)` when there is nothing
    /// to do.
    fn resize_refusal(&self, size_blocks: u64) -> Result<bool, String> {
        if let Some(r) = &self.resize {
            return Err(format!(
                "a resize to {} blocks is already running (coordinated by node #{})",
                r.size_blocks, r.coordinator
            ));
        }
        if size_blocks < self.io_blocks {
            return Err(format!(
                "shrinking is not supported: the volume holds {} blocks of 4 KiB, {} were asked for; nothing was changed",
                self.io_blocks, size_blocks
            ));
        }
        if size_blocks == self.io_blocks {
            return Ok(true);
        }
        if self.cfg.diskful(self.cfg.node) && self.md.disk != Disk::UpToDate {
            return Err(format!(
                "this node's data is {:?}, not UpToDate; resize where the data is UpToDate",
                self.md.disk
            ));
        }
        let mut missing = Vec::new();
        for p in self.peers.values().filter(|p| p.diskful) {
            if !p.live() {
                missing.push(format!("node #{} is not connected", p.id));
            } else if p.disk != Disk::UpToDate {
                missing.push(format!("node #{} is {:?}, not UpToDate", p.id, p.disk));
            } else if matches!(p.repl, Repl::SyncSource | Repl::SyncTarget) {
                missing.push(format!("a resync with node #{} is running", p.id));
            }
        }
        if !self.md.resync_left.is_empty() {
            missing.push("this node has a resync to finish".into());
        }
        if !missing.is_empty() {
            return Err(format!(
                "every diskful node must be connected and UpToDate with no resync running: {}; nothing was changed",
                missing.join(", ")
            ));
        }
        Ok(false)
    }

    /// The driver grew (or failed to grow) the local backing.
    pub(super) fn grow_done(&mut self, size_blocks: u64, result: Result<(), String>) {
        if result.is_ok() {
            // The backing grew, whatever became of the resize meanwhile: the metadata
            // covers the new blocks, and so must the bitmaps.
            self.apply_size(size_blocks);
            self.persist();
        }
        let Some(run) = &self.resize else { return };
        if run.size_blocks != size_blocks {
            return;
        }
        let coordinator = run.coordinator;
        match result {
            Ok(()) => self.local_grown(size_blocks),
            Err(reason) if coordinator == self.cfg.node => {
                self.resize = None;
                self.out.push(Action::ResizeResult(Err(format!(
                    "growing this node's backing failed: {reason}; no peer was asked to grow and the size is unchanged"
                ))));
            }
            Err(reason) => {
                self.resize = None;
                self.send(
                    coordinator,
                    Msg::ResizeDone {
                        size_blocks,
                        ok: false,
                        reason: format!("growing its backing failed: {reason}"),
                    },
                );
            }
        }
    }

    /// This node holds `size_blocks` now: tell the coordinator, or (as coordinator)
    /// the peers.
    fn local_grown(&mut self, size_blocks: u64) {
        let me = self.cfg.node;
        let Some(run) = self.resize.as_mut() else {
            return;
        };
        run.waiting.remove(&me);
        if run.coordinator != me {
            let to = run.coordinator;
            self.resize = None;
            self.send(
                to,
                Msg::ResizeDone {
                    size_blocks,
                    ok: true,
                    reason: String::new(),
                },
            );
            return;
        }
        if !run.told {
            run.told = true;
            let gone: Vec<NodeId> = run
                .waiting
                .iter()
                .copied()
                .filter(|id| !self.peers.get(id).is_some_and(|p| p.live()))
                .collect();
            if let Some(id) = gone.first() {
                return self.resize_failed(format!(
                    "node #{id} disconnected before it was asked to grow"
                ));
            }
            let ids: Vec<NodeId> = self
                .peers
                .values()
                .filter(|p| p.live())
                .map(|p| p.id)
                .collect();
            for id in ids {
                self.send(id, Msg::Resize { size_blocks });
            }
        }
        self.check_resize();
    }

    /// The coordinator commits once every diskful node grew.
    fn check_resize(&mut self) {
        let Some(run) = &self.resize else { return };
        if run.coordinator != self.cfg.node || !run.told || !run.waiting.is_empty() {
            return;
        }
        let size_blocks = run.size_blocks;
        self.resize = None;
        self.io_blocks = self.io_blocks.max(size_blocks);
        self.send_connected(&Msg::ResizeCommit { size_blocks });
        self.out.push(Action::ResizeResult(Ok(())));
    }

    fn resize_failed(&mut self, why: String) {
        let Some(run) = self.resize.take() else {
            return;
        };
        self.out.push(Action::ResizeResult(Err(format!(
            "resize to {} blocks failed: {why}. Clients keep the old size; backings that grew keep their new size and a peer whose size differs is refused at connect until it grows too: run the resize again once every diskful node is connected (on a node that is down, the same command grows its backing)",
            run.size_blocks
        ))));
    }

    /// Bitmaps (and, for the data path, the size) cover `size_blocks` blocks.
    fn apply_size(&mut self, size_blocks: u64) {
        if size_blocks <= self.cfg.size_blocks {
            return;
        }
        self.cfg.size_blocks = size_blocks;
        for bm in self.md.bitmaps.values_mut() {
            bm.grow(size_blocks);
        }
        self.md.resync_left.grow(size_blocks);
    }

    pub(super) fn resize_message(&mut self, from: NodeId, msg: Msg) {
        match msg {
            Msg::Resize { size_blocks } => {
                let refuse = if self.resize.is_some() {
                    Some("another resize is running there".to_owned())
                } else if size_blocks < self.cfg.size_blocks {
                    Some(format!(
                        "it holds {} blocks, more than the {} asked for",
                        self.cfg.size_blocks, size_blocks
                    ))
                } else if self.cfg.diskful(self.cfg.node) && self.diskless() {
                    Some("its disk is detached".to_owned())
                } else {
                    None
                };
                if let Some(reason) = refuse {
                    self.send(
                        from,
                        Msg::ResizeDone {
                            size_blocks,
                            ok: false,
                            reason,
                        },
                    );
                    return;
                }
                self.resize = Some(ResizeRun {
                    size_blocks,
                    coordinator: from,
                    waiting: BTreeSet::new(),
                    told: true,
                });
                if self.cfg.diskful(self.cfg.node) && size_blocks > self.cfg.size_blocks {
                    self.out.push(Action::Grow { size_blocks });
                } else {
                    self.local_grown(size_blocks);
                }
            }
            Msg::ResizeDone {
                size_blocks,
                ok,
                reason,
            } => {
                let Some(run) = self.resize.as_mut() else {
                    return;
                };
                if run.coordinator != self.cfg.node || run.size_blocks != size_blocks {
                    return;
                }
                if ok {
                    run.waiting.remove(&from);
                    self.check_resize();
                } else if run.waiting.contains(&from) {
                    self.resize_failed(format!("node #{from} refused: {reason}"));
                }
            }
            Msg::ResizeCommit { size_blocks } => {
                if !self.cfg.diskful(self.cfg.node) {
                    // A diskless node has nothing to grow but its view of the peers.
                    self.apply_size(size_blocks);
                }
                if size_blocks <= self.cfg.size_blocks {
                    self.io_blocks = self.io_blocks.max(size_blocks);
                }
            }
            _ => {}
        }
    }

    /// A peer went away: a resize waiting for it fails. (A participant whose
    /// coordinator went away finishes its own grow; the commit will not come, and a
    /// restart serves the grown size.)
    pub(super) fn resize_peer_lost(&mut self, id: NodeId) {
        let Some(run) = &self.resize else { return };
        if run.coordinator == self.cfg.node && run.waiting.contains(&id) {
            self.resize_failed(format!("node #{id} disconnected before it confirmed"));
        }
    }
}
