//! Delivery accounting: every subscriber must get every event of its board exactly once and in
//! seq order. Tracks duplicates, out-of-order arrivals and (at the end) what is missing.
use std::collections::HashMap;

/// One subscriber's record, keyed by board (or by a single pseudo-board for key-only streams).
#[derive(Default, Debug)]
pub struct Tracker {
    boards: HashMap<i64, Seen>,
    pub delivered: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    /// Frames that carried no usable key.
    pub unparsed: u64,
    /// Times the server closed this subscriber as too slow (1013) and it resumed from its last
    /// seq, as a real client does.
    pub resumed: u64,
}

#[derive(Default, Debug)]
struct Seen {
    bits: Vec<u64>,
    max: i64,
    unique: u64,
}

impl Seen {
    /// Marks `key`; returns false if it was already marked.
    fn mark(&mut self, key: i64) -> bool {
        let k = key as usize;
        let (w, b) = (k / 64, k % 64);
        if self.bits.len() <= w {
            self.bits.resize(w + 1, 0);
        }
        let fresh = self.bits[w] & (1 << b) == 0;
        self.bits[w] |= 1 << b;
        fresh
    }
}

/// Totals over all subscribers.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    pub delivered: u64,
    pub expected: u64,
    pub missing: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub unparsed: u64,
    /// Resumes after a 1013 close (gateway only): what was sent after them counts like any frame.
    pub resumed: u64,
}

impl Tracker {
    /// Records one delivery of `key` (a seq, or a task id for the original's contract) on `board`.
    pub fn observe(&mut self, board: i64, key: i64) {
        self.delivered += 1;
        if key < 0 {
            self.unparsed += 1;
            return;
        }
        let s = self.boards.entry(board).or_default();
        if !s.mark(key) {
            self.duplicates += 1;
            return;
        }
        s.unique += 1;
        if key < s.max {
            self.out_of_order += 1;
        }
        s.max = s.max.max(key);
    }

    /// The highest seq seen on `board` (0: none): where a resume continues from.
    pub fn last(&self, board: i64) -> i64 {
        self.boards.get(&board).map_or(0, |s| s.max)
    }

    /// The keys of `board` below the highest seen that never came (what a report names when
    /// something is missing), at most `most` of them.
    pub fn gaps(&self, board: i64, most: usize) -> Vec<i64> {
        let Some(s) = self.boards.get(&board) else {
            return Vec::new();
        };
        (1..s.max)
            .filter(|k| s.bits[*k as usize / 64] & (1 << (*k as usize % 64)) == 0)
            .take(most)
            .collect()
    }

    pub fn unparsed(&mut self) {
        self.delivered += 1;
        self.unparsed += 1;
    }

    /// Adds this subscriber to `totals`, given how many distinct events each board should have
    /// delivered to it.
    pub fn settle(&self, expected: &HashMap<i64, u64>, boards: &[i64], totals: &mut Totals) {
        totals.delivered += self.delivered;
        totals.duplicates += self.duplicates;
        totals.out_of_order += self.out_of_order;
        totals.unparsed += self.unparsed;
        totals.resumed += self.resumed;
        for b in boards {
            let want = expected.get(b).copied().unwrap_or(0);
            let got = self.boards.get(b).map_or(0, |s| s.unique);
            totals.expected += want;
            totals.missing += want.saturating_sub(got);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settle(t: &Tracker, board: i64, n: u64) -> Totals {
        let mut totals = Totals::default();
        t.settle(&HashMap::from([(board, n)]), &[board], &mut totals);
        totals
    }

    #[test]
    fn a_clean_stream_has_nothing_to_report() {
        let mut t = Tracker::default();
        for s in 1..=5 {
            t.observe(1, s);
        }
        let r = settle(&t, 1, 5);
        assert_eq!(
            (r.delivered, r.missing, r.duplicates, r.out_of_order),
            (5, 0, 0, 0)
        );
    }

    #[test]
    fn gaps_duplicates_and_reordering_are_counted() {
        let mut t = Tracker::default();
        for s in [1, 2, 2, 4, 3, 6] {
            t.observe(1, s);
        }
        let r = settle(&t, 1, 6);
        assert_eq!(r.duplicates, 1);
        assert_eq!(r.out_of_order, 1, "3 arrived after 4");
        assert_eq!(r.missing, 1, "5 never came");
        assert_eq!(r.delivered, 6);
    }

    #[test]
    fn gaps_name_the_keys_that_never_came() {
        let mut t = Tracker::default();
        for k in [1, 2, 4, 7] {
            t.observe(9, k);
        }
        assert_eq!(t.gaps(9, 10), [3, 5, 6]);
        assert_eq!(t.gaps(9, 1), [3]);
        assert!(t.gaps(8, 10).is_empty());
    }

    #[test]
    fn another_boards_events_do_not_count_for_this_one() {
        let mut t = Tracker::default();
        t.observe(2, 1);
        let r = settle(&t, 1, 1);
        assert_eq!(r.missing, 1);
    }
}
