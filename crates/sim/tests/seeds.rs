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

use sim::{Options, run};

const SEEDS: u64 = 2000;
/// Every seed below 2,000 that violates an invariant today, with the invariant.
/// (9 of 2,000. When a flush that waited only for a new generation's acknowledgements
/// stopped hanging until some unrelated event, and a quarter of the seeds began to
/// run with on-no-quorum suspend-io, the schedules of many seeds changed: 1412 and
/// 1870 pass now, and 561 (replicas differing on a write never acknowledged) and 1646
/// (a resync that does not finish) fail in ways known from other seeds, see
/// docs/replication.md, "Known failures"; both fail the same with suspend-io off.)
const KNOWN_FAILURES: &[(u64, u8)] = &[
    (4, 1),
    (22, 4),
    (82, 5),
    (121, 1),
    (294, 4),
    (561, 4),
    (1085, 5),
    (1197, 5),
    (1646, 5),
];

fn check_range(from: u64, to: u64) {
    let opts = Options::default();
    let mut failures = Vec::new();
    for seed in from..to {
        let known = KNOWN_FAILURES.iter().find(|(s, _)| *s == seed);
        match (run(seed, &opts), known) {
            (Ok(_), None) => {}
            (Err(v), None) => failures.push(format!("{v}")),
            (Err(v), Some((_, inv))) if v.invariant == *inv => {}
            (Err(v), Some((_, inv))) => failures.push(format!(
                "seed {seed} was known to violate invariant {inv}, now violates {}:\n{v}",
                v.invariant
            )),
            (Ok(_), Some(_)) => failures.push(format!(
                "seed {seed} no longer violates an invariant: remove it from KNOWN_FAILURES"
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
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
