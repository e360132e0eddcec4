//! Every ID a run was handed, kept as ranges (a `GenerateBatch` reply is a few ranges, a
//! single ID a range of one), and the check that no ID was handed out twice: sort by first
//! ID and sweep. Millions of batched IDs cost a few bytes per call, not per ID.

/// IDs handed out, as half-open ranges `[first, end)`.
#[derive(Debug, Default)]
pub struct IdRanges {
    ranges: Vec<(u64, u64)>,
}

/// Most repeats a failed check names.
const REPEATS_SHOWN: usize = 10;

impl IdRanges {
    /// `count` IDs from `first` on (a count of 0 adds nothing).
    pub fn add(&mut self, first: u64, count: u32) {
        if count > 0 {
            self.ranges.push((first, first.saturating_add(u64::from(count))));
        }
    }

    pub fn append(&mut self, mut other: IdRanges) {
        self.ranges.append(&mut other.ranges);
    }

    /// How many IDs were added (repeats counted as often as they came).
    pub fn ids(&self) -> u64 {
        self.ranges.iter().map(|(first, end)| end - first).sum()
    }

    /// The ranges that share IDs with an earlier one (by first ID), as text, at most
    /// [`REPEATS_SHOWN`], and how many there were in all.
    pub fn repeats(&mut self) -> (usize, Vec<String>) {
        self.ranges.sort_unstable();
        let (mut count, mut shown) = (0, Vec::new());
        let mut furthest: Option<(u64, u64)> = None;
        for &(first, end) in &self.ranges {
            if let Some((f_first, f_end)) = furthest.filter(|&(_, f_end)| first < f_end) {
                count += 1;
                if shown.len() < REPEATS_SHOWN {
                    shown.push(format!("[{first}, {end}) overlaps [{f_first}, {f_end})"));
                }
            }
            if furthest.is_none_or(|(_, f_end)| end > f_end) {
                furthest = Some((first, end));
            }
        }
        (count, shown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: adjacent ranges and singles are distinct; any shared ID is a repeat, also one
    /// hidden inside a long earlier range.
    #[test]
    fn repeats_are_found_whatever_the_order() {
        let mut ids = IdRanges::default();
        ids.add(100, 10);
        ids.add(110, 1);
        ids.add(90, 10);
        ids.add(5, 0);
        assert_eq!(ids.repeats(), (0, vec![]));
        assert_eq!(ids.ids(), 21);

        let mut more = IdRanges::default();
        more.add(1, 1_000);
        more.add(500, 1);
        more.add(999, 5);
        ids.append(more);
        let (count, shown) = ids.repeats();
        assert_eq!(count, 5, "{shown:?}");
        assert_eq!(shown[0], "[90, 100) overlaps [1, 1001)");
    }
}
