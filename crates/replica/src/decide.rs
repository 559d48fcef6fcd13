//! The connect-time decision: given what two nodes say about their generations, is
//! there anything to resynchronise, which way, from a bitmap or in full, or is this a
//! split brain or unrelated data? Pure and symmetric: both sides compute it and must
//! reach mirrored answers.

use wire::{Disk, Hello, NodeId, Role};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SplitBrainPolicy {
    Disconnect,
    DiscardZeroChanges,
    DiscardLeastChanges,
    /// The node that became primary last loses its changes (DRBD's
    /// discard-younger-primary); when that cannot be told, as discard-least-changes.
    DiscardYoungerPrimary,
    /// The node that became primary first loses its changes.
    DiscardOlderPrimary,
    DiscardNode(NodeId),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to copy.
    NoSync,
    /// Both are secondaries and a primary is around: it keeps both in sync, so they
    /// leave their mutual differences alone for now.
    Deferred,
    /// I send the blocks in the union of both bitmaps.
    BitmapSource,
    BitmapTarget,
    /// I send every block.
    FullSource,
    FullTarget,
    /// Both sides wrote since they parted; no policy resolved it.
    SplitBrain,
    /// No generation in common.
    Unrelated,
    /// Resync would make a primary the target.
    PrimaryWouldBeTarget,
    /// A split brain as things stand, next to a primary whose generation is not
    /// settled yet: once it settles (or is undone) the answer may differ, so the
    /// two try again later instead of giving up.
    NotYet,
}

impl Decision {
    pub fn mirror(self) -> Decision {
        match self {
            Decision::BitmapSource => Decision::BitmapTarget,
            Decision::BitmapTarget => Decision::BitmapSource,
            Decision::FullSource => Decision::FullTarget,
            Decision::FullTarget => Decision::FullSource,
            d => d,
        }
    }
}

fn bm_uuid(h: &Hello, peer: NodeId) -> u64 {
    h.bitmap_uuids
        .iter()
        .find(|(n, _)| *n == peer)
        .map(|(_, u)| *u)
        .unwrap_or(0)
}

fn knows(h: &Hello, uuid: u64) -> bool {
    uuid != 0 && (h.history.contains(&uuid) || h.bitmap_uuids.iter().any(|(_, u)| *u == uuid))
}

/// From `me`'s point of view. Symmetric: `decide(b, a) == decide(a, b).mirror()`.
pub fn decide(me: &Hello, peer: &Hello, policy: SplitBrainPolicy) -> Decision {
    // Always compute with the lower node id first so that both sides agree exactly.
    if me.node > peer.node {
        return decide_ordered(peer, me, policy).mirror();
    }
    decide_ordered(me, peer, policy)
}

fn source_if(me_first: bool) -> Decision {
    if me_first {
        Decision::BitmapSource
    } else {
        Decision::BitmapTarget
    }
}

fn decide_ordered(a: &Hello, b: &Hello, policy: SplitBrainPolicy) -> Decision {
    let d = unvouched_source(a, b, decide_data(a, b, policy));
    let unsettled_primary =
        |h: &Hello| h.role == Role::Primary && h.unsettled && h.disk != Disk::Diskless;
    if d == Decision::SplitBrain && (unsettled_primary(a) || unsettled_primary(b)) {
        return Decision::NotYet;
    }
    // A resync target is Inconsistent until done, which a primary cannot be.
    let a_target = matches!(d, Decision::BitmapTarget | Decision::FullTarget);
    let b_target = matches!(d, Decision::BitmapSource | Decision::FullSource);
    if (a_target && a.role == Role::Primary) || (b_target && b.role == Role::Primary) {
        return Decision::PrimaryWouldBeTarget;
    }
    // A second primary whose writes another primary orders (allow-two-primaries)
    // announces that primary as present and, for resync, counts as a secondary.
    let a_sec = a.role == Role::Secondary || a.primary_present;
    let b_sec = b.role == Role::Secondary || b.primary_present;
    if a_sec
        && b_sec
        && (a.primary_present || b.primary_present)
        && !matches!(d, Decision::SplitBrain | Decision::Unrelated)
    {
        return Decision::Deferred;
    }
    d
}

/// A Consistent node restarted after an unclean stop as a secondary: writes it had
/// acknowledged into its volatile cache may be gone, and later flushes made them
/// durable on the nodes that stayed up. Its hot extents are no copy to hand to an
/// Inconsistent node, which may be mid-resync from such a survivor and hold those
/// writes: it waits for a survivor (or, in the core, until every diskful node is
/// connected and none is one). Next to a node with consistent data it goes by the
/// usual order: an UpToDate one of its generation is the source, an older one is
/// behind anyway. An explicit discard overrides this.
fn unvouched_source(a: &Hello, b: &Hello, d: Decision) -> Decision {
    let (src, dst) = match d {
        Decision::BitmapSource | Decision::FullSource => (a, b),
        Decision::BitmapTarget | Decision::FullTarget => (b, a),
        _ => return d,
    };
    let explicit = a.discard_my_data || b.discard_my_data;
    if src.disk == Disk::Consistent && dst.disk == Disk::Inconsistent && !explicit {
        return Decision::NoSync;
    }
    d
}

fn decide_data(a: &Hello, b: &Hello, policy: SplitBrainPolicy) -> Decision {
    if a.disk == Disk::Diskless || b.disk == Disk::Diskless {
        return Decision::NoSync;
    }
    // An explicit discard on exactly one side settles it.
    match (a.discard_my_data, b.discard_my_data) {
        (true, false) => return discard(a, b).mirror_if(false),
        (false, true) => return discard(b, a).mirror(),
        _ => {}
    }
    let a_data = a.disk >= Disk::Outdated;
    let b_data = b.disk >= Disk::Outdated;
    // A node without consistent data that was told of a newer generation than the
    // other holds (it got writes the other lacks) takes nothing from it.
    // Unless that generation was undone: `src` holds a settled one that went on
    // from its parent another way (see `undone_branch` for why both cannot be
    // settled), so nothing completed under it.
    let behind = |h: &Hello, src: &Hello| {
        let known = h.known_current;
        let parent = h.known_parent;
        let undone =
            parent != 0 && !src.unsettled && src.current != parent && src.history.contains(&parent);
        known != 0 && known != src.current && !src.history.contains(&known) && !undone
    };
    if (!a_data && b_data && behind(a, b)) || (a_data && !b_data && behind(b, a)) {
        return Decision::NoSync;
    }
    match (a_data, b_data) {
        (false, false) => return Decision::NoSync,
        (true, false) => {
            return if a.current == b.current || b.current == 0 && a.current == 0 {
                Decision::BitmapSource
            } else {
                from_uuids(a, b, policy)
                    .unwrap_or(Decision::FullSource)
                    .force_source()
            };
        }
        (false, true) => {
            return if a.current == b.current {
                Decision::BitmapTarget
            } else {
                from_uuids(a, b, policy)
                    .unwrap_or(Decision::FullTarget)
                    .force_target()
            };
        }
        (true, true) => {}
    }
    // A generation its primary never settled, next to a settled one that went on
    // from the same parent another way: the first was undone (see `undone_branch`).
    let undone = |x: &Hello, y: &Hello| undone_branch(x, y) || undone_line(x, y);
    match (undone(a, b), undone(b, a)) {
        (true, _) => return Decision::FullTarget,
        (_, true) => return Decision::FullSource,
        _ => {}
    }
    // An Outdated node never outranks an UpToDate one.
    if a.disk != b.disk && a.current == b.current {
        let dirty = a.dirty_blocks > 0 || b.dirty_blocks > 0;
        return match (a.disk > b.disk, dirty) {
            (_, false) => Decision::NoSync,
            (true, true) => Decision::BitmapSource,
            (false, true) => Decision::BitmapTarget,
        };
    }
    from_uuids(a, b, policy).unwrap_or(Decision::Unrelated)
}

/// `a` holds a generation its primary never confirmed (`unsettled`: a rotation not yet
/// acknowledged with quorum, perhaps undone since), and `b` a settled one that
/// descends from an ancestor of `a`'s without passing through `a`'s line (neither
/// knows the other's current: `b`'s current in `a`'s history would make it an
/// ancestor). `b`'s line was started by a primary granted with quorum at that
/// ancestor and settled with quorum; had a generation of `a`'s line after the
/// ancestor been settled first, a node in both quorums would have refused `b`'s
/// primary (it had seen a newer generation), and after `b`'s settled no primary
/// could settle one from the ancestor. So `a`'s line since the ancestor was undone
/// (its primary lost quorum, or crashed before settling, also after several
/// rotations in a row, each unsettled): no write under it completed, and what `a`
/// holds since is void. Which blocks that is, no bitmap says (`a` may have received
/// writes under it that `b` never saw): `a` takes all of `b`'s.
fn undone_branch(a: &Hello, b: &Hello) -> bool {
    a.unsettled
        && !b.unsettled
        && a.current != 0
        && b.current != 0
        && b.current != a.current
        && !knows(b, a.current)
        && !knows(a, b.current)
        && a.history
            .iter()
            .any(|g| *g != 0 && *g != b.current && b.history.contains(g))
}

/// `a`'s line, newest first: `current`, then the history.
fn line(h: &Hello) -> impl Iterator<Item = u64> + '_ {
    std::iter::once(h.current)
        .chain(h.history.iter().copied())
        .filter(|g| *g != 0)
}

/// Whether `h` knows of a settled generation of its line strictly newer than `g`
/// (None: it knows no settled one, or `g` is not in its line).
fn settled_after(h: &Hello, g: u64) -> Option<bool> {
    let at = |x: u64| line(h).position(|y| y == x);
    let (s, g) = (at(h.settled)?, at(g)?);
    Some(s < g)
}

/// The lines of `a` and `b` parted after their newest common generation `g`; `b`
/// knows of a generation settled on its side since, `a` knows of none on its side
/// (its newest settled one is `g` or older). By the argument of `undone_branch`
/// (which is the case where `b`'s settled generation is its current), no generation
/// of `a`'s side settled before `b`'s did, and none could after: `a`'s side was
/// undone, also when `b`'s current went on unsettled from the settled one (seed
/// 1248: a crashed primary's new rotation on top of a settled generation, next to
/// a node holding a sibling its primary undid).
fn undone_line(a: &Hello, b: &Hello) -> bool {
    let Some(g) = line(a).find(|g| *g == b.current || b.history.contains(g)) else {
        return false;
    };
    g != a.current
        && g != b.current
        && settled_after(b, g) == Some(true)
        && settled_after(a, g) == Some(false)
}

trait Force {
    fn force_source(self) -> Decision;
    fn force_target(self) -> Decision;
    fn mirror_if(self, m: bool) -> Decision;
}

impl Force for Decision {
    fn force_source(self) -> Decision {
        match self {
            Decision::BitmapTarget | Decision::BitmapSource => Decision::BitmapSource,
            Decision::NoSync => Decision::BitmapSource,
            _ => Decision::FullSource,
        }
    }
    fn force_target(self) -> Decision {
        self.mirror().force_source().mirror()
    }
    fn mirror_if(self, m: bool) -> Decision {
        if m { self.mirror() } else { self }
    }
}

/// `a` discards its data in favour of `b`: a bitmap resync when the two share a
/// generation their bitmaps start from, a full one otherwise.
fn discard(a: &Hello, b: &Hello) -> Decision {
    let shared_parent = bm_uuid(a, b.node) != 0 && bm_uuid(a, b.node) == bm_uuid(b, a.node);
    let related = a.current == b.current
        || bm_uuid(a, b.node) == b.current
        || bm_uuid(b, a.node) == a.current
        || shared_parent;
    if related && a.current != 0 {
        Decision::BitmapTarget
    } else {
        Decision::FullTarget
    }
}

fn from_uuids(a: &Hello, b: &Hello, policy: SplitBrainPolicy) -> Option<Decision> {
    if a.current == 0 && b.current == 0 {
        return Some(Decision::NoSync);
    }
    if a.current == 0 {
        return Some(Decision::FullTarget);
    }
    if b.current == 0 {
        return Some(Decision::FullSource);
    }
    if a.current == b.current {
        // Equal generations do not prove equal data: a crashed primary's hot extents
        // and writes in flight when a primary vanished are in the bitmaps.
        if a.dirty_blocks == 0 && b.dirty_blocks == 0 {
            return Some(Decision::NoSync);
        }
        // The source is the primary, else the node holding the longer prefix of the
        // last primary's writes (a target adopts its source's rank, so no copy is
        // ever overwritten by an older one), else a crashed primary, else the lower
        // tie-break (an id, inherited by a resync target), else the lower id.
        let a_first = match (a.role, b.role) {
            (Role::Primary, _) => true,
            (_, Role::Primary) => false,
            _ if a.last_seq != b.last_seq => a.last_seq > b.last_seq,
            _ if a.crashed_primary != b.crashed_primary => a.crashed_primary,
            _ if a.tie != b.tie => a.tie < b.tie,
            _ => true,
        };
        return Some(source_if(a_first));
    }
    let a_ahead = bm_uuid(a, b.node) == b.current;
    let b_ahead = bm_uuid(b, a.node) == a.current;
    match (a_ahead, b_ahead) {
        (true, false) => return Some(Decision::BitmapSource),
        (false, true) => return Some(Decision::BitmapTarget),
        (true, true) => return Some(split_brain(a, b, policy)),
        (false, false) => {}
    }
    match (knows(a, b.current), knows(b, a.current)) {
        (true, false) => return Some(Decision::FullSource),
        (false, true) => return Some(Decision::FullTarget),
        // Each went through the other's generation: one of them is a generation a
        // primary started and undid for lack of quorum (no write under it completed).
        // The data agree on everything acknowledged; copy all of it from the side
        // whose generation is settled (the other's is the undone one), else from the
        // rank.
        (true, true) => {
            return Some(match (a.unsettled, b.unsettled) {
                (false, true) => Decision::FullSource,
                (true, false) => Decision::FullTarget,
                _ if a.last_seq >= b.last_seq => Decision::FullSource,
                _ => Decision::FullTarget,
            });
        }
        (false, false) => {}
    }
    let parent = bm_uuid(a, b.node);
    if parent != 0 && parent == bm_uuid(b, a.node) {
        return Some(split_brain(a, b, policy));
    }
    if a.history.iter().any(|u| knows(b, *u)) {
        return Some(Decision::SplitBrain);
    }
    None
}

fn least_changes(a: &Hello, b: &Hello) -> Decision {
    if a.dirty_blocks >= b.dirty_blocks {
        Decision::BitmapSource
    } else {
        Decision::BitmapTarget
    }
}

fn split_brain(a: &Hello, b: &Hello, policy: SplitBrainPolicy) -> Decision {
    match policy {
        SplitBrainPolicy::Disconnect => Decision::SplitBrain,
        SplitBrainPolicy::DiscardZeroChanges => match (a.dirty_blocks, b.dirty_blocks) {
            (0, 0) => Decision::BitmapSource,
            (0, _) => Decision::BitmapTarget,
            (_, 0) => Decision::BitmapSource,
            _ => Decision::SplitBrain,
        },
        SplitBrainPolicy::DiscardLeastChanges => least_changes(a, b),
        SplitBrainPolicy::DiscardYoungerPrimary | SplitBrainPolicy::DiscardOlderPrimary => {
            // Every promotion starts an epoch above every sequence number its node
            // has seen (the high half of a write's sequence number): of two nodes that
            // both wrote after parting, the one promoted later holds the higher epoch.
            // A restarted node forgot its sequence numbers (0): not known then, nor
            // when both promoted from the same epoch independently.
            let (ea, eb) = (a.last_seq >> 32, b.last_seq >> 32);
            if ea == 0 || eb == 0 || ea == eb {
                return least_changes(a, b);
            }
            let a_younger = ea > eb;
            let a_loses = a_younger == (policy == SplitBrainPolicy::DiscardYoungerPrimary);
            if a_loses {
                Decision::BitmapTarget
            } else {
                Decision::BitmapSource
            }
        }
        SplitBrainPolicy::DiscardNode(n) if n == a.node => Decision::BitmapTarget,
        SplitBrainPolicy::DiscardNode(n) if n == b.node => Decision::BitmapSource,
        SplitBrainPolicy::DiscardNode(_) => Decision::SplitBrain,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h(node: NodeId, current: u64) -> Hello {
        Hello {
            node,
            role: Role::Secondary,
            disk: Disk::UpToDate,
            size_blocks: 64,
            current,
            history: vec![],
            bitmap_uuids: vec![],
            dirty_blocks: 0,
            discard_my_data: false,
            crashed_primary: false,
            primary_present: false,
            known_current: current,
            known_parent: 0,
            round: 0,
            last_seq: 0,
            tie: node,
            unsettled: false,
            settled: current,
            parent: 0,
        }
    }

    const P: SplitBrainPolicy = SplitBrainPolicy::Disconnect;

    #[test]
    fn the_classic_cases() {
        // Same generation, nothing dirty.
        assert_eq!(decide(&h(0, 5), &h(1, 5), P), Decision::NoSync);
        // a wrote while b was away: a's bitmap for b starts at b's current.
        let mut a = h(0, 9);
        a.bitmap_uuids = vec![(1, 5)];
        a.history = vec![5];
        a.dirty_blocks = 3;
        assert_eq!(decide(&a, &h(1, 5), P), Decision::BitmapSource);
        assert_eq!(decide(&h(1, 5), &a, P), Decision::BitmapTarget);
        // b's generation is only in a's history: full resync.
        let mut a2 = h(0, 9);
        a2.history = vec![5, 7];
        assert_eq!(decide(&a2, &h(1, 5), P), Decision::FullSource);
        // Both wrote since parting at 5: split brain.
        let mut b = h(1, 11);
        b.bitmap_uuids = vec![(0, 5)];
        b.history = vec![5];
        b.dirty_blocks = 2;
        assert_eq!(decide(&a, &b, P), Decision::SplitBrain);
        assert_eq!(
            decide(&a, &b, SplitBrainPolicy::DiscardLeastChanges),
            Decision::BitmapSource
        );
        assert_eq!(
            decide(&a, &b, SplitBrainPolicy::DiscardNode(0)),
            Decision::BitmapTarget
        );
        let mut a_zero = a.clone();
        a_zero.dirty_blocks = 0;
        assert_eq!(
            decide(&a_zero, &b, SplitBrainPolicy::DiscardZeroChanges),
            Decision::BitmapTarget
        );
        // Node 1 was promoted after they parted (a higher epoch): the younger primary.
        let (mut a_old, mut b_young) = (a.clone(), b.clone());
        a_old.last_seq = (3 << 32) | 40;
        b_young.last_seq = (4 << 32) | 2;
        assert_eq!(
            decide(&a_old, &b_young, SplitBrainPolicy::DiscardYoungerPrimary),
            Decision::BitmapSource
        );
        assert_eq!(
            decide(&b_young, &a_old, SplitBrainPolicy::DiscardYoungerPrimary),
            Decision::BitmapTarget
        );
        assert_eq!(
            decide(&a_old, &b_young, SplitBrainPolicy::DiscardOlderPrimary),
            Decision::BitmapTarget
        );
        // Not known after a restart (sequence numbers forgotten): least changes.
        b_young.last_seq = 0;
        b_young.dirty_blocks = 9;
        assert_eq!(
            decide(&a_old, &b_young, SplitBrainPolicy::DiscardYoungerPrimary),
            Decision::BitmapTarget
        );
        // The victim's discard resolves it with a bitmap resync.
        let mut b_discard = b.clone();
        b_discard.discard_my_data = true;
        assert_eq!(decide(&a, &b_discard, P), Decision::BitmapSource);
        // Nothing in common.
        assert_eq!(decide(&h(0, 1), &h(1, 2), P), Decision::Unrelated);
        // Fresh node: full sync to it.
        assert_eq!(decide(&h(0, 1), &h(1, 0), P), Decision::FullSource);
    }

    #[test]
    fn equal_generations_with_dirty_bits_still_resync() {
        // drbd#145: a rejoining node must not be declared in sync when bits are set.
        let mut a = h(0, 5);
        a.dirty_blocks = 4;
        assert_eq!(decide(&a, &h(1, 5), P), Decision::BitmapSource);
        let mut b = h(1, 5);
        b.crashed_primary = true;
        assert_eq!(decide(&a, &b, P), Decision::BitmapTarget);
        // The longer prefix of the lost primary's writes wins over everything but a primary.
        let mut c = h(1, 5);
        c.last_seq = 10;
        a.last_seq = 9;
        assert_eq!(decide(&a, &c, P), Decision::BitmapTarget);
    }

    #[test]
    fn a_target_that_saw_a_newer_generation_is_not_overwritten_by_an_older_source() {
        let mut t = h(0, 5);
        t.disk = Disk::Inconsistent;
        t.known_current = 9; // got writes of generation 9 from a primary that died
        assert_eq!(decide(&t, &h(1, 5), P), Decision::NoSync);
        let mut newer = h(1, 9);
        newer.history = vec![5];
        assert_eq!(decide(&t, &newer, P), Decision::FullTarget);
        newer.bitmap_uuids = vec![(0, 5)];
        assert_eq!(decide(&t, &newer, P), Decision::BitmapTarget);
    }

    #[test]
    fn inconsistent_and_outdated_nodes_are_targets_and_primaries_never() {
        let mut b = h(1, 5);
        b.disk = Disk::Inconsistent;
        assert_eq!(decide(&h(0, 5), &b, P), Decision::BitmapSource);
        let mut b = h(1, 5);
        b.disk = Disk::Outdated;
        b.dirty_blocks = 1;
        assert_eq!(decide(&h(0, 5), &b, P), Decision::BitmapSource);
        let mut a = h(0, 5);
        a.role = Role::Primary;
        a.disk = Disk::Outdated;
        a.dirty_blocks = 1;
        assert_eq!(decide(&a, &h(1, 5), P), Decision::PrimaryWouldBeTarget);
    }

    /// Seed 1248: node 0, a crashed primary, holds 3, an unsettled rotation on top
    /// of 2, which it had settled; 2 went on from 1. Node 1 holds 5, a sibling from 1
    /// its primary undid while node 1 was cut off. Both current generations are
    /// unsettled, yet 2 settled after 1: 5 was undone, and node 1 takes all of
    /// node 0's data. Without knowing any settled generation it stays a split brain.
    #[test]
    fn an_unsettled_line_next_to_one_settled_since_the_fork_was_undone() {
        let mut a = h(0, 3);
        a.history = vec![2, 1];
        a.unsettled = true;
        a.settled = 2;
        a.dirty_blocks = 4;
        let mut b = h(1, 5);
        b.history = vec![1];
        b.unsettled = true;
        b.settled = 1;
        b.dirty_blocks = 4;
        assert_eq!(decide(&a, &b, P), Decision::FullSource);
        assert_eq!(decide(&b, &a, P), Decision::FullTarget);
        // Node 1 had heard 5 settled: a real split brain.
        b.settled = 5;
        assert_eq!(decide(&a, &b, P), Decision::SplitBrain);
        // Nothing known settled on node 0's side: no proof either way.
        b.settled = 1;
        a.settled = 0;
        assert_eq!(decide(&a, &b, P), Decision::SplitBrain);
    }

    #[test]
    fn a_secondary_back_from_a_crash_waits_for_a_survivor() {
        // Restarted after an unclean stop: Consistent, its hot extents marked for all.
        let mut back = h(0, 5);
        back.disk = Disk::Consistent;
        back.dirty_blocks = 8;
        // A node mid-resync from a survivor may hold writes the crash lost here.
        let mut mid = h(1, 3);
        mid.disk = Disk::Inconsistent;
        mid.known_current = 5;
        assert_eq!(decide(&back, &mid, P), Decision::NoSync);
        assert_eq!(decide(&mid, &back, P), Decision::NoSync);
        // A survivor of the same generation is the source of the hot extents.
        assert_eq!(decide(&back, &h(1, 5), P), Decision::BitmapTarget);
        // One holding an older generation is behind anyway.
        let mut older = h(1, 3);
        older.dirty_blocks = 2;
        let mut ahead = back.clone();
        ahead.history = vec![3];
        ahead.bitmap_uuids = vec![(1, 3)];
        assert_eq!(decide(&ahead, &older, P), Decision::BitmapSource);
        // Next to another node back from a crash, or an Outdated one, the usual
        // order applies, and an explicit discard always does.
        let mut other = back.clone();
        other.node = 1;
        other.tie = 1;
        assert_eq!(decide(&back, &other, P), Decision::BitmapSource);
        let mut outdated = h(1, 5);
        outdated.disk = Disk::Outdated;
        assert_eq!(decide(&back, &outdated, P), Decision::BitmapSource);
        mid.discard_my_data = true;
        assert_eq!(decide(&back, &mid, P), Decision::FullSource);
    }

    #[test]
    fn an_unsettled_generation_next_to_a_settled_sibling_was_undone() {
        // 5 -> 9 by a primary that lost quorum (or crashed) before settling it, while
        // node 1 adopted it; 5 -> 11 by the next primary, settled.
        let mut a = h(0, 9);
        a.history = vec![5];
        a.unsettled = true;
        let mut b = h(1, 11);
        b.history = vec![5];
        b.bitmap_uuids = vec![(0, 5)];
        b.dirty_blocks = 3;
        assert_eq!(decide(&a, &b, P), Decision::FullTarget);
        assert_eq!(decide(&b, &a, P), Decision::FullSource);
        // Two rotations in a row on a primary cut off from its peers (5 -> 7 -> 9,
        // neither settled), then it crashed: the whole line since 5 was undone.
        let mut twice = h(0, 9);
        twice.history = vec![7, 5];
        twice.unsettled = true;
        assert_eq!(decide(&twice, &b, P), Decision::FullTarget);
        assert_eq!(decide(&b, &twice, P), Decision::FullSource);
        // Settled on both sides: a real split brain.
        a.unsettled = false;
        assert_eq!(decide(&a, &b, P), Decision::SplitBrain);
        // Unsettled on both sides: which one was undone is not known.
        a.unsettled = true;
        b.unsettled = true;
        assert_eq!(decide(&a, &b, P), Decision::SplitBrain);
        // Next to the parent itself, an unsettled generation may have been settled
        // without this node hearing it: it stays the newer one.
        b = h(1, 5);
        b.unsettled = false;
        a.bitmap_uuids = vec![(1, 5)];
        assert_eq!(decide(&a, &b, P), Decision::BitmapSource);
        // Each knows the other's generation (a primary that undid 9 keeps it in its
        // history, next to a node that took 9 from a resync it served): the settled
        // side is the source whatever the rank.
        let mut undid = h(1, 5);
        undid.history = vec![9];
        let mut took = h(0, 9);
        took.history = vec![5];
        took.unsettled = true;
        took.last_seq = 8;
        assert_eq!(decide(&took, &undid, P), Decision::FullTarget);
        took.unsettled = false;
        assert_eq!(decide(&took, &undid, P), Decision::FullSource);
        // A primary on the undone line steps down rather than become a target.
        a.role = Role::Primary;
        let mut b = h(1, 11);
        b.history = vec![5];
        assert_eq!(decide(&a, &b, P), Decision::PrimaryWouldBeTarget);
    }

    #[test]
    fn equal_ranks_go_by_the_inherited_tie_break() {
        // Nodes 1 and 2 differ on blocks neither marked for the other; node 1 took
        // node 0's copy of them in a resync (tie 0), node 2 is on its own (tie 2).
        let mut a = h(1, 5);
        a.dirty_blocks = 3;
        a.last_seq = 9;
        let mut b = h(2, 5);
        b.dirty_blocks = 3;
        b.last_seq = 9;
        assert_eq!(decide(&a, &b, P), Decision::BitmapSource);
        // Node 2 took node 0's copy instead: it wins although its id is higher.
        a.tie = 1;
        b.tie = 0;
        assert_eq!(decide(&a, &b, P), Decision::BitmapTarget);
        assert_eq!(decide(&b, &a, P), Decision::BitmapSource);
        // The longer prefix of the primary's writes still comes first.
        a.last_seq = 10;
        assert_eq!(decide(&a, &b, P), Decision::BitmapSource);
    }

    #[test]
    fn a_node_behind_a_generation_it_heard_of_takes_a_settled_sibling() {
        // Seed 1598: node 2, Inconsistent, heard of 9 (started from 4, naming it as
        // missing the writes); 9 was undone, and 4 -> 6 was settled since.
        let mut stuck = h(2, 1);
        stuck.disk = Disk::Inconsistent;
        stuck.known_current = 9;
        let mut up = h(1, 6);
        up.history = vec![4, 1];
        // Without the parent nothing proves 9 undone: it takes nothing.
        assert_eq!(decide(&stuck, &up, P), Decision::NoSync);
        stuck.known_parent = 4;
        assert_eq!(decide(&stuck, &up, P), Decision::FullTarget);
        assert_eq!(decide(&up, &stuck, P), Decision::FullSource);
        // The sibling not settled (yet): 9 may still be the newer one.
        up.unsettled = true;
        assert_eq!(decide(&stuck, &up, P), Decision::NoSync);
        // A source at the parent itself is behind 9 whatever it settled.
        let mut parent = h(1, 4);
        parent.history = vec![1];
        assert_eq!(decide(&stuck, &parent, P), Decision::NoSync);
    }

    #[test]
    fn a_split_brain_next_to_an_unsettled_primary_is_tried_again() {
        // Seed 14500: 1 -> 9 by a primary that crashed before settling it; 1 -> 4
        // -> 6 by the live primary, whose 6 is not settled yet.
        let mut crashed = h(0, 9);
        crashed.history = vec![1];
        crashed.unsettled = true;
        crashed.crashed_primary = true;
        let mut primary = h(1, 6);
        primary.history = vec![4, 1];
        primary.unsettled = true;
        primary.role = Role::Primary;
        assert_eq!(decide(&crashed, &primary, P), Decision::NotYet);
        assert_eq!(decide(&primary, &crashed, P), Decision::NotYet);
        // Settled: the crashed primary's line was undone and it takes everything.
        primary.unsettled = false;
        assert_eq!(decide(&crashed, &primary, P), Decision::FullTarget);
        // Two secondaries, both unsettled: nobody will settle either, a split brain.
        primary.unsettled = true;
        primary.role = Role::Secondary;
        assert_eq!(decide(&crashed, &primary, P), Decision::SplitBrain);
    }

    fn arb_hello(node: NodeId) -> impl Strategy<Value = Hello> {
        (
            0u64..4,
            proptest::collection::vec(0u64..4, 0..3),
            0u64..4,
            0u64..3,
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            0usize..5,
            0u64..4,
            any::<bool>(),
            0u8..3,
        )
            .prop_map(
                move |(
                    current,
                    history,
                    bm,
                    dirty,
                    discard,
                    crashed,
                    primary,
                    disk,
                    last_seq,
                    unsettled,
                    tie,
                )| {
                    let mut x = h(node, current);
                    x.unsettled = unsettled;
                    x.tie = tie.min(node);
                    x.history = history;
                    let other = if node == 0 { 1 } else { 0 };
                    if bm != 0 {
                        x.bitmap_uuids = vec![(other, bm)];
                    }
                    x.dirty_blocks = dirty;
                    x.discard_my_data = discard;
                    x.crashed_primary = crashed;
                    x.role = if primary {
                        Role::Primary
                    } else {
                        Role::Secondary
                    };
                    x.disk = [
                        Disk::Diskless,
                        Disk::Inconsistent,
                        Disk::Outdated,
                        Disk::Consistent,
                        Disk::UpToDate,
                    ][disk];
                    // Epochs 0 (restarted), 1 and 2.
                    x.last_seq = [0, 3, (1 << 32) | 7, (2 << 32) | 1][last_seq as usize];
                    x
                },
            )
    }

    proptest! {
        #[test]
        fn both_sides_agree(a in arb_hello(0), b in arb_hello(1), pol in 0u8..6) {
            let policy = [SplitBrainPolicy::Disconnect, SplitBrainPolicy::DiscardZeroChanges,
                SplitBrainPolicy::DiscardLeastChanges, SplitBrainPolicy::DiscardNode(1),
                SplitBrainPolicy::DiscardYoungerPrimary,
                SplitBrainPolicy::DiscardOlderPrimary][pol as usize];
            prop_assert_eq!(decide(&a, &b, policy), decide(&b, &a, policy).mirror());
        }

        #[test]
        fn never_overwrite_an_up_to_date_node_from_a_worse_one(a in arb_hello(0), b in arb_hello(1)) {
            let d = decide(&a, &b, P);
            if !a.discard_my_data && !b.discard_my_data && a.disk == Disk::UpToDate && b.disk < Disk::Outdated {
                prop_assert!(!matches!(d, Decision::BitmapTarget | Decision::FullTarget), "{:?}", d);
            }
        }

        #[test]
        fn a_consistent_node_serves_no_inconsistent_one(a in arb_hello(0), b in arb_hello(1)) {
            let d = decide(&a, &b, P);
            let serves = matches!(d, Decision::BitmapSource | Decision::FullSource);
            if serves && a.disk == Disk::Consistent && !a.discard_my_data && !b.discard_my_data {
                prop_assert!(b.disk != Disk::Inconsistent, "{:?} to {:?}", d, b.disk);
            }
        }
    }
}
