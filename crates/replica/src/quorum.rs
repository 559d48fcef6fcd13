//! Quorum: a partition may write or promote only with a majority of the diskful voters.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuorumPolicy {
    Off,
    Majority,
}

/// What one node sees when it evaluates quorum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    /// Diskful nodes in the resource (self included when diskful).
    pub voters: usize,
    /// Diskful nodes reachable, self included when it has a disk.
    pub present: usize,
    /// Absent voters known to have left cleanly (Outdated); they stop counting when no
    /// other voter is unaccounted for.
    pub absent_outdated: usize,
    pub diskless_total: usize,
    pub diskless_present: usize,
    /// This node had quorum before this evaluation (the tiebreaker only keeps quorum).
    pub had_quorum: bool,
}

pub fn has_quorum(policy: QuorumPolicy, v: View) -> bool {
    if policy == QuorumPolicy::Off {
        return true;
    }
    let absent = v.voters.saturating_sub(v.present);
    let voters = if absent > 0 && absent == v.absent_outdated {
        v.present
    } else {
        v.voters
    };
    if voters == 0 {
        return false;
    }
    let need = voters / 2 + 1;
    if v.present >= need {
        return true;
    }
    // Even voter count, short by exactly one: the side that still sees a majority of
    // the diskless tiebreakers keeps the quorum it had. It is never regained this way.
    voters % 2 == 0
        && v.present + 1 == need
        && v.had_quorum
        && v.diskless_total > 0
        && v.diskless_present * 2 > v.diskless_total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(voters: usize, present: usize, dl_total: usize, dl_present: usize, had: bool) -> View {
        View {
            voters,
            present,
            absent_outdated: 0,
            diskless_total: dl_total,
            diskless_present: dl_present,
            had_quorum: had,
        }
    }

    #[test]
    fn majorities_and_the_tiebreaker() {
        let m = QuorumPolicy::Majority;
        assert!(has_quorum(m, v(3, 2, 0, 0, false)));
        assert!(!has_quorum(m, v(3, 1, 0, 0, true)));
        assert!(has_quorum(m, v(2, 2, 1, 0, false)));
        // 2 diskful + tiebreaker: the side that sees it keeps quorum...
        assert!(has_quorum(m, v(2, 1, 1, 1, true)));
        // ...but cannot regain it through the tiebreaker alone.
        assert!(!has_quorum(m, v(2, 1, 1, 1, false)));
        assert!(!has_quorum(m, v(2, 1, 1, 0, true)));
        // Odd voters: no tiebreak.
        assert!(!has_quorum(m, v(3, 1, 1, 1, true)));
        assert!(has_quorum(QuorumPolicy::Off, v(3, 0, 0, 0, false)));
    }

    #[test]
    fn nodes_that_left_cleanly_stop_counting() {
        let m = QuorumPolicy::Majority;
        let mut x = v(3, 1, 0, 0, true);
        x.absent_outdated = 2;
        assert!(has_quorum(m, x));
        x.absent_outdated = 1;
        assert!(!has_quorum(m, x));
    }

    #[test]
    fn any_two_quorate_partitions_of_distinct_voters_cannot_both_exist_without_the_tiebreaker() {
        for voters in 1..=7usize {
            for p in 0..=voters {
                let q = voters - p;
                let a = has_quorum(QuorumPolicy::Majority, v(voters, p, 0, 0, true));
                let b = has_quorum(QuorumPolicy::Majority, v(voters, q, 0, 0, true));
                assert!(!(a && b), "voters {voters}: {p} and {q} both quorate");
            }
        }
    }
}
