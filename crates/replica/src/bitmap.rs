//! Out-of-sync bitmap: one bit per block a peer lacks.

/// A fixed-size set of blocks with a running count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitmap {
    words: Vec<u64>,
    blocks: u64,
    set: u64,
}

impl Bitmap {
    pub fn new(blocks: u64) -> Self {
        Bitmap {
            words: vec![0; blocks.div_ceil(64) as usize],
            blocks,
            set: 0,
        }
    }

    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    pub fn count(&self) -> u64 {
        self.set
    }

    pub fn is_empty(&self) -> bool {
        self.set == 0
    }

    pub fn get(&self, b: u64) -> bool {
        b < self.blocks && self.words[(b / 64) as usize] & (1 << (b % 64)) != 0
    }

    pub fn set(&mut self, b: u64) {
        if b < self.blocks && !self.get(b) {
            self.words[(b / 64) as usize] |= 1 << (b % 64);
            self.set += 1;
        }
    }

    pub fn clear(&mut self, b: u64) {
        if self.get(b) {
            self.words[(b / 64) as usize] &= !(1 << (b % 64));
            self.set -= 1;
        }
    }

    pub fn set_range(&mut self, start: u64, count: u64) {
        for b in start..start.saturating_add(count).min(self.blocks) {
            self.set(b);
        }
    }

    pub fn set_all(&mut self) {
        self.set_range(0, self.blocks);
    }

    pub fn clear_all(&mut self) {
        self.words.iter_mut().for_each(|w| *w = 0);
        self.set = 0;
    }

    /// First set block at or after `from`.
    pub fn next_set(&self, from: u64) -> Option<u64> {
        if self.set == 0 || from >= self.blocks {
            return None;
        }
        let mut w = (from / 64) as usize;
        let mut word = self.words[w] & (!0u64 << (from % 64));
        loop {
            if word != 0 {
                let b = w as u64 * 64 + u64::from(word.trailing_zeros());
                return (b < self.blocks).then_some(b);
            }
            w += 1;
            if w >= self.words.len() {
                return None;
            }
            word = self.words[w];
        }
    }

    /// Covers `blocks` blocks from now on (never fewer than today); the new blocks
    /// start clear.
    pub fn grow(&mut self, blocks: u64) {
        if blocks <= self.blocks {
            return;
        }
        self.words.resize(blocks.div_ceil(64) as usize, 0);
        self.blocks = blocks;
    }

    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// ORs `words` (starting at word `offset`) into this bitmap.
    pub fn merge_words(&mut self, offset: usize, words: &[u64]) {
        for (i, w) in words.iter().enumerate() {
            let Some(slot) = self.words.get_mut(offset + i) else {
                return;
            };
            *slot |= *w;
        }
        // Bits past the end are not blocks.
        if let Some(last) = self.words.last_mut() {
            let tail = self.blocks % 64;
            if tail != 0 {
                *last &= (1u64 << tail) - 1;
            }
        }
        self.set = self.words.iter().map(|w| u64::from(w.count_ones())).sum();
    }

    pub fn or(&mut self, other: &Bitmap) {
        self.merge_words(0, &other.words);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn behaves_like_a_set(ops in proptest::collection::vec((0u64..200, any::<bool>()), 0..300)) {
            let mut bm = Bitmap::new(150);
            let mut model = std::collections::BTreeSet::new();
            for (b, set) in ops {
                if set { bm.set(b); if b < 150 { model.insert(b); } } else { bm.clear(b); model.remove(&b); }
            }
            prop_assert_eq!(bm.count(), model.len() as u64);
            let mut walked = Vec::new();
            let mut at = 0;
            while let Some(b) = bm.next_set(at) { walked.push(b); at = b + 1; }
            prop_assert_eq!(walked, model.into_iter().collect::<Vec<_>>());
        }
    }

    #[test]
    fn grow_keeps_the_bits_and_adds_clear_blocks() {
        let mut a = Bitmap::new(70);
        a.set(3);
        a.set(69);
        a.grow(200);
        assert_eq!(a.blocks(), 200);
        assert_eq!(a.count(), 2);
        assert_eq!(a.next_set(4), Some(69));
        assert_eq!(a.next_set(70), None);
        a.set(199);
        assert!(a.get(199));
        a.grow(10);
        assert_eq!(a.blocks(), 200, "grow never shrinks");
    }

    #[test]
    fn merge_ignores_bits_past_the_end() {
        let mut a = Bitmap::new(70);
        a.merge_words(0, &[0, !0]);
        assert_eq!(a.count(), 6);
        assert_eq!(a.next_set(0), Some(64));
    }
}
