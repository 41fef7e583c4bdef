//! Sparse expert dispatch. A MoE layer's router kernel writes dense
//! `[rows, experts]` routing weights (zero for experts a token did not
//! choose). The executor brings them to the host once per layer and step,
//! [`MoeDispatch::from_dense`] keeps each row's `top_k` experts and groups the
//! (row, expert) pairs by expert, and the graph then runs only the experts
//! some row chose, each on the rows of its tokens (gathered into a contiguous
//! block, computed with the ordinary matmuls, scatter-added back with the
//! routing weights). An expert no row chose costs nothing.
//!
//! Working from the dense weights keeps this independent of how a family
//! routes (softmax top-k, renormalised or not, or other scoring rules): any
//! router that writes dense weights with `top_k` chosen experts per row works.

use std::time::Duration;

use crate::error::{EngineError, Result};

/// One chosen expert's share of a step: pairs `[start, start + rows)` of
/// [`MoeDispatch::rows`] / [`MoeDispatch::weights`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExpertGroup {
    /// The expert.
    pub expert: u32,
    /// Its first pair.
    pub start: u32,
    /// Rows routed to it.
    pub rows: u32,
}

/// The routing of one MoE layer on one step, grouped by expert.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MoeDispatch {
    /// The experts at least one row chose, in expert order.
    pub groups: Vec<ExpertGroup>,
    /// Token row of each (row, expert) pair, grouped by expert (rows ascending
    /// within a group).
    pub rows: Vec<u32>,
    /// Routing weight of each pair, aligned with `rows`.
    pub weights: Vec<f32>,
}

impl MoeDispatch {
    /// Groups the `top_k` largest weights of each of `rows` rows of dense
    /// `[rows, experts]` routing weights (ties: the lower expert). The router
    /// gives every unchosen expert weight 0 and every chosen one a weight of
    /// at least 0, so these are exactly its choices (an underflowed chosen
    /// weight of 0 may swap with an unchosen expert: both contribute 0).
    /// Non-finite weights are an error, not garbage output.
    pub fn from_dense(dense: &[f32], rows: usize, experts: usize, top_k: usize, layer: usize) -> Result<MoeDispatch> {
        if top_k == 0 || top_k > experts || dense.len() < rows * experts {
            return Err(EngineError::invalid(
                "moe",
                format!("layer {layer}: routing of {rows} rows over {experts} experts, top {top_k}, from {} weights", dense.len()),
            ));
        }
        if let Some(i) = dense[..rows * experts].iter().position(|w| !w.is_finite()) {
            return Err(EngineError::invalid(
                "moe",
                format!(
                    "layer {layer}: the router gave row {} expert {} the weight {}; the activations overflowed",
                    i / experts,
                    i % experts,
                    dense[i]
                ),
            ));
        }
        // Each row's choice, then a counting sort by expert (stable: rows ascending).
        let mut chosen: Vec<(u32, f32)> = Vec::with_capacity(rows * top_k);
        let mut count = vec![0u32; experts];
        for r in 0..rows {
            let w = &dense[r * experts..(r + 1) * experts];
            let first = chosen.len();
            for _ in 0..top_k {
                let mut best: Option<usize> = None;
                for (e, &v) in w.iter().enumerate() {
                    if chosen[first..].iter().any(|c| c.0 as usize == e) {
                        continue;
                    }
                    if best.is_none_or(|b| v > w[b]) {
                        best = Some(e);
                    }
                }
                // top_k <= experts, so an unchosen expert is always left.
                let e = best.unwrap_or(0);
                chosen.push((e as u32, w[e]));
                count[e] += 1;
            }
        }
        let mut start = vec![0u32; experts];
        let mut groups = Vec::new();
        let mut next = 0u32;
        for e in 0..experts {
            start[e] = next;
            if count[e] > 0 {
                groups.push(ExpertGroup { expert: e as u32, start: next, rows: count[e] });
            }
            next += count[e];
        }
        let mut out_rows = vec![0u32; chosen.len()];
        let mut out_w = vec![0f32; chosen.len()];
        for (i, &(e, w)) in chosen.iter().enumerate() {
            let slot = &mut start[e as usize];
            out_rows[*slot as usize] = (i / top_k) as u32;
            out_w[*slot as usize] = w;
            *slot += 1;
        }
        Ok(MoeDispatch { groups, rows: out_rows, weights: out_w })
    }

    /// (row, expert) pairs computed.
    pub fn pairs(&self) -> usize {
        self.rows.len()
    }
}

/// Counters of the sparse expert compute.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MoeStats {
    /// MoE layers run (one per MoE layer and pass).
    pub layers: u64,
    /// (row, expert) pairs computed: rows x top_k per MoE layer, never rows x experts.
    pub pairs: u64,
    /// Expert MLPs launched (distinct chosen experts, summed over layers).
    pub experts_run: u64,
    /// Routing readbacks from the GPU (one per GPU-placed MoE layer and pass).
    pub readbacks: u64,
    /// Time of those readbacks: submitting the work up to the router, waiting
    /// for it, mapping and reading the weights, uploading the grouped rows.
    pub readback: Duration,
    /// Bytes read back.
    pub readback_bytes: u64,
}

impl MoeStats {
    /// The counters accumulated between `self` (earlier) and `later`.
    pub fn since(&self, later: &MoeStats) -> MoeStats {
        MoeStats {
            layers: later.layers - self.layers,
            pairs: later.pairs - self.pairs,
            experts_run: later.experts_run - self.experts_run,
            readbacks: later.readbacks - self.readbacks,
            readback: later.readback.saturating_sub(self.readback),
            readback_bytes: later.readback_bytes - self.readback_bytes,
        }
    }

    /// Counts one dispatched layer.
    pub fn add(&mut self, d: &MoeDispatch) {
        self.layers += 1;
        self.pairs += d.pairs() as u64;
        self.experts_run += d.groups.len() as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_each_rows_top_k_by_expert() {
        // 3 rows, 4 experts, top 2 (zeros for the unchosen).
        let dense = [0.0, 0.7, 0.0, 0.3, 0.6, 0.0, 0.0, 0.4, 0.0, 0.5, 0.5, 0.0];
        let d = MoeDispatch::from_dense(&dense, 3, 4, 2, 0).unwrap();
        assert_eq!(
            d.groups,
            vec![
                ExpertGroup { expert: 0, start: 0, rows: 1 },
                ExpertGroup { expert: 1, start: 1, rows: 2 },
                ExpertGroup { expert: 2, start: 3, rows: 1 },
                ExpertGroup { expert: 3, start: 4, rows: 2 },
            ]
        );
        assert_eq!(d.rows, vec![1, 0, 2, 2, 0, 1]);
        assert_eq!(d.weights, vec![0.6, 0.7, 0.5, 0.5, 0.3, 0.4]);
        assert_eq!(d.pairs(), 3 * 2);
    }

    #[test]
    fn unchosen_experts_get_no_group_and_underflow_still_counts_top_k() {
        // Expert 2 is nobody's choice; row 1's second choice underflowed to 0.
        let dense = [0.9, 0.1, 0.0, 1.0, 0.0, 0.0];
        let d = MoeDispatch::from_dense(&dense, 2, 3, 2, 0).unwrap();
        assert!(d.groups.iter().all(|g| g.expert != 2), "{d:?}");
        assert_eq!(d.pairs(), 4);
        // ... and its zero weight contributes nothing.
        assert_eq!(d.weights.iter().filter(|w| **w == 0.0).count(), 1);
    }

    #[test]
    fn non_finite_weights_and_bad_shapes_are_errors() {
        let e = MoeDispatch::from_dense(&[0.5, f32::NAN], 1, 2, 1, 7).unwrap_err().to_string();
        assert!(e.contains("layer 7") && e.contains("NaN"), "{e}");
        assert!(MoeDispatch::from_dense(&[0.5, 0.5], 1, 2, 3, 0).is_err());
        assert!(MoeDispatch::from_dense(&[0.5], 1, 2, 1, 0).is_err());
    }
}
