#![cfg(not(any(
    feature = "bug-early-ack",
    feature = "bug-skip-uuid-rotation",
    feature = "bug-forget-al"
)))]

//! The simulator with online verify in the chaos of every seed (`--verify 100`):
//! verifies start on random nodes while links break, nodes crash and the client
//! writes; blocks found different are resynced. 500 seeds against all six invariants.
//!
//! Seed 336 ends with replicas differing on a block whose last write was never
//! acknowledged; not diagnosed yet (suspected: a primary's InSync naming a node that
//! lacks that write, as in the two-primary seed 548 before its schedule changed).
//! The test also asserts it still fails, so the list only shrinks.

use sim::{Options, run};

const KNOWN_FAILURES: &[(u64, u8)] = &[(336, 4)];

#[test]
fn verify_seeds_0_to_499() {
    let opts = Options {
        verify_percent: 100,
        ..Options::default()
    };
    let mut failures = Vec::new();
    let mut verifies = 0;
    for seed in 0..500 {
        let known = KNOWN_FAILURES.iter().find(|(s, _)| *s == seed);
        match (run(seed, &opts), known) {
            (Ok(o), None) => verifies += o.verifies,
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
    // Not vacuous: the chaos did start verifies.
    assert!(verifies >= 500, "{verifies} verifies in 500 seeds");
}
