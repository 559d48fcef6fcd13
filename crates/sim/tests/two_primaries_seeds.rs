#![cfg(not(any(
    feature = "bug-early-ack",
    feature = "bug-skip-uuid-rotation",
    feature = "bug-forget-al"
)))]

//! The simulator with allow-two-primaries on every seed (`--two-primaries 100`):
//! a failover becomes a live migration in which the client writes through both
//! primaries until the source is demoted. 1,000 seeds, checked against all six
//! invariants; invariant 3 then forbids two primaries that both order writes.
//!
//! Seeds in `KNOWN_FAILURES` still violate an invariant; none today. 602 ended in a
//! split brain declared between nodes that never both wrote (a generation its
//! primary undid for lack of quorum after a peer had taken it, from which that peer
//! later ordered writes) until generations were settled explicitly (`UuidSettled`,
//! `UuidUndone`, docs/replication.md). (Before the fixes for seeds 22, 1197 and
//! 2870 were merged, 279, 298, 548, 552 and 899 failed here too.) The test also
//! asserts the listed seeds still fail, so the list only shrinks.

use sim::{Options, check_known, run};

const SEEDS: u64 = 1000;
const KNOWN_FAILURES: &[(u64, u8)] = &[];

fn check_range(from: u64, to: u64) {
    let opts = Options {
        two_primaries_percent: 100,
        ..Options::default()
    };
    if let Err(e) = check_known(from, to, &opts, KNOWN_FAILURES) {
        panic!("{e}");
    }
}

#[test]
fn two_primaries_seeds_0_to_499() {
    check_range(0, 500);
}

#[test]
fn two_primaries_seeds_500_to_999() {
    check_range(500, SEEDS);
}

#[test]
fn migrations_happen_and_the_client_writes_through_both_primaries() {
    // Not vacuous: across the first seeds, clusters do migrate (a second node is
    // promoted while the first is primary) and writes complete.
    let opts = Options {
        two_primaries_percent: 100,
        trace: true,
        ..Options::default()
    };
    let mut migrations = 0;
    let mut forwarded = 0;
    for seed in 0..40 {
        let trace = match run(seed, &opts) {
            Ok(o) => o.trace,
            Err(v) => v.trace,
        };
        migrations += trace
            .iter()
            .filter(|l| l.contains("chaos: migrate"))
            .count();
        forwarded += trace
            .iter()
            .filter(|l| l.contains("(migrated to n"))
            .count();
    }
    assert!(migrations >= 10, "{migrations} migrations in 40 seeds");
    assert!(forwarded >= 5, "{forwarded} handovers in 40 seeds");
}
