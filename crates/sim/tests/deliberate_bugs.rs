//! The checker is not vacuous: each deliberate bug, compiled in with its feature, is
//! caught within a bounded number of seeds. Run with
//! `cargo nextest run -p sim --features bug-early-ack` (and the other two features).

#![cfg(any(
    feature = "bug-early-ack",
    feature = "bug-skip-uuid-rotation",
    feature = "bug-forget-al"
))]

use sim::{Options, run};

/// Seeds tried before the bug must have been caught.
const BOUND: u64 = 300;

#[test]
fn the_deliberate_bug_is_caught() {
    let opts = Options::default();
    let caught = (0..BOUND).find_map(|seed| run(seed, &opts).err());
    let v = caught.unwrap_or_else(|| panic!("the deliberate bug went unnoticed for {BOUND} seeds"));
    // Losing acknowledged data (1, 2) or diverging replicas (4) is what these bugs do.
    assert!(
        matches!(v.invariant, 1 | 2 | 4),
        "caught, but as invariant {}: {v}",
        v.invariant
    );
    println!(
        "caught at seed {}: invariant {}: {}",
        v.seed, v.invariant, v.message
    );
}
