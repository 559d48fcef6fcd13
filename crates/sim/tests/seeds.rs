#![cfg(not(any(
    feature = "bug-early-ack",
    feature = "bug-skip-uuid-rotation",
    feature = "bug-forget-al"
)))]

//! The simulator in CI: 2,000 seeds, every one checked against all six invariants (a
//! quarter of them run with on-no-quorum suspend-io; `sim::Options`).
//!
//! Seeds in `KNOWN_FAILURES` still violate an invariant (see docs/replication.md,
//! "Known failures"); the test also asserts they still do, so the list can only
//! shrink as bugs are fixed, never hide a new one.

use sim::{Options, check_known, run};

const SEEDS: u64 = 2000;
/// Every seed below 2,000 that violates an invariant today, with the invariant.
/// (0 of 2,000. When half the seeds began to resync by checksums, their message flow
/// and so their timing changed: 4, 82, 121, 294, 1085 and 1412 stopped failing, 762
/// and 1687 started; over 8,000 seeds, 13 seeds without checksums and 11 with them
/// fail, the known causes in docs/replication.md. Seed 1687 sends no digest for the
/// block it reports: a bitmap failure of the known kind, not the checksum path.
/// Then a flush that waited only for a new generation's acknowledgements stopped
/// hanging until some unrelated event, and a quarter of the seeds began to run with
/// on-no-quorum suspend-io: 1870 passes now, 1353 (a split brain left standing after
/// healing) and 1710 (a node resynced from a peer of the same generation that lacked
/// a write it held, then served a stale read) fail, as known causes do; both fail
/// the same with suspend-io off.
/// Then a node whose resync source went away or started a new round, and that was
/// left Inconsistent, began to ask its UpToDate peers again: 1197 (left Inconsistent
/// next to an UpToDate peer it had decided "in sync" with) passes; 762 (a node that
/// knew of a generation its primary undid) and 1353 (a primary that crashed before
/// its new generation was settled, met as a split brain) pass because their
/// schedules changed, their causes remain. Then a resync target whose source started
/// a new round before any block (or replicated write) reached it went back to the
/// data state it had, and a node becoming a target restarted the resyncs it had
/// decided to serve but not yet begun: 22 (a resync served from a node that had
/// meanwhile become Inconsistent itself) passes. Then settled generations changed
/// the schedules: 1687 and 1710 pass; 325 and 1569 failed (replicas differ) until a
/// resync target began to mark the blocks it changes for its other peers. None
/// failed then. Then a rotation began to settle only once a majority holds it, and
/// the first write after a promotion began to wait for the secondaries' handshakes:
/// the schedules changed, and two liveness failures of known causes appeared. 1248:
/// a node holding a generation that its primary undid while the node was cut off
/// meets a primary whose own new generation is unsettled but descends from a
/// settled sibling of the undone one; the Hellos do not say that sibling was
/// settled, so it stays a split brain. 1598 (an Inconsistent node that heard of a
/// generation its primary undid refused every source that did not know it) failed
/// too until the Hello began to carry the parent of such a generation.) 1248 passes
/// since the Hello names the newest settled generation of each line
/// (`Hello::settled`). The same change moved the schedules, and 687 fails: an
/// Inconsistent node took a resync source's generation as the newest it had seen,
/// from a source whose history also holds generations it undid, so that
/// generation's parent is not known; the resync was cut and the node refuses every
/// settled source that never had it. It passes since a generation's parent is kept
/// with it (`Hello::parent`). None fails now.
const KNOWN_FAILURES: &[(u64, u8)] = &[];

fn check_range(from: u64, to: u64) {
    if let Err(e) = check_known(from, to, &Options::default(), KNOWN_FAILURES) {
        panic!("{e}");
    }
}

#[test]
fn seeds_0_to_499() {
    check_range(0, 500);
}

#[test]
fn seeds_500_to_999() {
    check_range(500, 1000);
}

#[test]
fn seeds_1000_to_1499() {
    check_range(1000, 1500);
}

#[test]
fn seeds_1500_to_1999() {
    check_range(1500, SEEDS);
}

#[test]
fn a_seed_replays_exactly() {
    let opts = Options {
        trace: true,
        ..Options::default()
    };
    let a = run(7, &opts).map(|o| o.trace).unwrap_or_else(|v| v.trace);
    let b = run(7, &opts).map(|o| o.trace).unwrap_or_else(|v| v.trace);
    assert!(!a.is_empty());
    assert_eq!(a, b);
}
