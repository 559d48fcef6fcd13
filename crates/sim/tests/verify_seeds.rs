#![cfg(not(any(
    feature = "bug-early-ack",
    feature = "bug-skip-uuid-rotation",
    feature = "bug-forget-al"
)))]

//! The simulator with online verify in the chaos of every seed (`--verify 100`):
//! verifies start on random nodes while links break, nodes crash and the client
//! writes; blocks found different are resynced. 500 seeds against all six invariants.
//!
//! No seed fails today. Seed 336 ended with replicas differing on a block whose last
//! write was never acknowledged until resync targets began to mark the blocks they
//! change for their other peers (its schedule changed too, so which of the two made
//! it pass is not known). The test also asserts that listed seeds still fail, so the
//! list only shrinks.

use sim::{Options, check_known};

const KNOWN_FAILURES: &[(u64, u8)] = &[];

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
