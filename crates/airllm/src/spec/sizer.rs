//! How big a tree to draft: the size that gives the most tokens per second,
//! from what this run measured.
//!
//! A verify pass's cost depends on the machine: where weights stream (a GPU
//! reading layers over PCIe) a pass of 64 rows costs about what one row does,
//! so big trees pay; where arithmetic dominates (a CPU, a software
//! rasterizer) every row costs, and a big tree can be slower than no
//! speculation at all. So the sizer keeps, per candidate size (0 = no draft,
//! 1, 3, 7, ... up to `--draft-tree`), the measured seconds of a draft plus
//! verify pass of that many rows and the tokens such a pass would have
//! yielded, and picks the size with the best tokens per second. The tokens
//! of a smaller tree are known from every larger pass: drafters grow trees in
//! order (best-first, or branch by branch), so a tree of `s` nodes is the
//! first `s` nodes of a larger one and the accepted path within it is the
//! part of the larger path on nodes below `s`. Sizes are first tried in
//! ascending order while the rate keeps improving (so a machine where rows
//! cost pays for a few small trees, not for one big one), then the best is
//! used, and every [`REFRESH`]th pass re-measures a neighbour of the best, so
//! the choice follows a changing machine and text.

/// Every this many choices one size is re-measured.
pub const REFRESH: u64 = 16;
/// Weight of a new measurement in the running cost.
const ALPHA: f64 = 0.3;

/// The adaptive tree size.
#[derive(Clone, Debug)]
pub struct TreeSizer {
    sizes: Vec<usize>,
    /// Running cost (seconds) of a pass whose draft had each size.
    cost: Vec<Option<f64>>,
    /// Tokens per pass at each size: (sum, passes).
    tokens: Vec<(f64, f64)>,
    choices: u64,
}

impl TreeSizer {
    /// Candidate sizes 0, 1, 3, 7, ... below `max`, and `max`.
    pub fn new(max: usize) -> Self {
        let mut sizes: Vec<usize> = [0usize, 1, 3, 7, 15, 31, 63, 127].into_iter().filter(|&s| s < max).collect();
        sizes.push(max);
        let n = sizes.len();
        TreeSizer { sizes, cost: vec![None; n], tokens: vec![(0.0, 0.0); n], choices: 0 }
    }

    /// The candidates.
    pub fn sizes(&self) -> &[usize] {
        &self.sizes
    }

    /// The size to draft next.
    pub fn choose(&mut self) -> usize {
        self.choices += 1;
        // Climb: the next size up while the last step up paid.
        let k = self.cost.iter().take_while(|c| c.is_some()).count();
        if k < self.sizes.len() && (k < 2 || self.rate(k - 1) >= self.rate(k - 2)) {
            return self.sizes[k];
        }
        let b = self.best_index();
        if self.choices.is_multiple_of(REFRESH) {
            let up = (self.choices / REFRESH).is_multiple_of(2);
            let n = if up { (b + 1).min(self.sizes.len() - 1) } else { b.saturating_sub(1) };
            return self.sizes[n];
        }
        self.sizes[b]
    }

    /// Tokens per second measured at size index `i` (0 when unmeasured).
    fn rate(&self, i: usize) -> f64 {
        match (self.cost[i], self.tokens[i]) {
            (Some(c), (t, n)) if n > 0.0 && c > 0.0 => t / n / c,
            _ => 0.0,
        }
    }

    fn best_index(&self) -> usize {
        (0..self.sizes.len())
            .filter(|&i| self.cost[i].is_some())
            .max_by(|&a, &b| self.rate(a).total_cmp(&self.rate(b)))
            .unwrap_or(self.sizes.len() - 1)
    }

    /// The size with the most tokens per second so far (measured sizes only;
    /// the largest when nothing is measured).
    pub fn best(&self) -> usize {
        self.sizes[self.best_index()]
    }

    /// A pass ran with a draft of `proposed` nodes (asked for `asked`), in
    /// `seconds` (drafting and verifying); `path` lists the accepted draft
    /// nodes (indices in the draft tree, root excluded), in path order.
    pub fn record(&mut self, asked: usize, proposed: usize, seconds: f64, path: &[u32]) {
        // The cost belongs to the rows that ran: the smallest size holding them.
        if let Some(i) = self.sizes.iter().position(|&s| s >= proposed) {
            self.cost[i] = Some(match self.cost[i] {
                Some(c) => c + ALPHA * (seconds - c),
                None => seconds,
            });
        }
        // Tokens every smaller tree would have given (and this one's).
        for (i, &s) in self.sizes.iter().enumerate() {
            if s > asked.max(proposed) {
                break;
            }
            let kept = path.iter().take_while(|&&n| (n as usize) < s).count();
            self.tokens[i].0 += 1.0 + kept as f64;
            self.tokens[i].1 += 1.0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A machine where rows cost (compute-bound) must end at a small tree; one
    /// where they are free (streaming-bound) at the largest.
    #[test]
    fn picks_the_size_with_the_best_rate() {
        // Drafts of size s: the first min(s, 5) nodes are accepted (a chain).
        let path: Vec<u32> = (0..5).collect();
        for (per_row, want) in [(1.0, 3), (0.0, 31)] {
            let mut z = TreeSizer::new(31);
            assert_eq!(z.sizes(), &[0, 1, 3, 7, 15, 31]);
            for _ in 0..200 {
                let s = z.choose();
                let seconds = 1.0 + per_row * (s + 1) as f64 / 3.0;
                let accepted: Vec<u32> = path.iter().copied().filter(|&n| (n as usize) < s).collect();
                z.record(s, s, seconds, &accepted);
            }
            // per_row 1: size s costs 1 + (s+1)/3 and gives 1 + min(s, 5): best at 3 (1.71
            // tokens/s against 1.64 at 7 and 1.2 at 1); rows free: the largest of the ties.
            assert_eq!(z.best(), want, "per-row cost {per_row}");
        }
    }
}
