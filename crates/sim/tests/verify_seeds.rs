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

use sim::{Options, check_known};

const KNOWN_FAILURES: &[(u64, u8)] = &[(336, 4)];

#[test]
fn verify_seeds_0_to_499() {
    let opts = Options {
        verify_percent: 100,
        ..Options::default()
    };
    let passed = check_known(0, 500, &opts, KNOWN_FAILURES).unwrap_or_else(|e| panic!("{e}"));
    let verifies: u64 = passed.iter().map(|o| o.verifies).sum();
    // Not vacuous: the chaos did start verifies.
    assert!(verifies >= 500, "{verifies} verifies in 500 seeds");
}
