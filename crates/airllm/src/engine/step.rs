//! Turning a list of work items into one ragged step: the rows, positions,
//! slots and block tables the kernels read ([`StepLayout`]), and which rows'
//! logits come back. Pure host code, shared by every executor.

use airllm_gpu::kernels::paged::{NO_TREE, StepLayout, StepRow, StepSeq};

use crate::error::{EngineError, Result};

/// A sequence in the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqId(pub u64);

impl std::fmt::Display for SeqId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sequence {}", self.0)
    }
}

/// Which logits an item wants back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Logits {
    /// None (a prompt chunk that is not the last).
    None,
    /// The last row's (a decode token, a prompt's last chunk).
    Last,
    /// Every row's (verifying proposed tokens, perplexity).
    All,
}

impl Logits {
    /// Logit rows for an item of `n` tokens.
    pub fn rows(self, n: usize) -> usize {
        match self {
            Logits::None => 0,
            Logits::Last => n.min(1),
            Logits::All => n,
        }
    }
}

/// One sequence's work in a step: `tokens` appended at its current length.
#[derive(Clone, Copy, Debug)]
pub struct StepItem<'a> {
    /// The sequence.
    pub seq: SeqId,
    /// New tokens (a prompt chunk, one decode token, or proposed tokens).
    pub tokens: &'a [u32],
    /// Which logits to return.
    pub logits: Logits,
}

/// A built step: the kernel-side layout plus the host's bookkeeping.
#[derive(Clone, Debug, Default)]
pub struct BuiltStep {
    /// What the kernels read.
    pub layout: StepLayout,
    /// `[rows]` positions (RoPE).
    pub positions: Vec<u32>,
    /// Token ids per row.
    pub tokens: Vec<u32>,
    /// Rows whose logits come back, in order.
    pub logit_rows: Vec<u32>,
    /// For each item, how many of the logit rows are its (consecutive, in item order).
    pub logits_per_item: Vec<usize>,
    /// The sliding layers' block tables, at the offsets of `layout.block_table`
    /// (empty when no layer slides; filled by the engine).
    pub sliding_block_table: Vec<u32>,
}

/// Builds a step from items whose sequences have `lens[i]` filled slots and
/// block tables `tables[i]` (already grown to cover the new tokens).
pub fn build(items: &[StepItem<'_>], lens: &[usize], tables: &[&[u32]]) -> Result<BuiltStep> {
    let mut s = BuiltStep::default();
    for (i, it) in items.iter().enumerate() {
        if it.tokens.is_empty() {
            return Err(EngineError::invalid("step", format!("{}: a work item needs at least one token", it.seq)));
        }
        let past = lens[i];
        let n = it.tokens.len();
        let bt_off = s.layout.block_table.len() as u32;
        s.layout.block_table.extend_from_slice(tables[i]);
        s.layout.seqs.push(StepSeq { bt_off, kv_len: (past + n) as u32, tree_base: 0, tree_len: 0 });
        let first_row = s.layout.rows.len() as u32;
        for k in 0..n {
            let p = (past + k) as u32;
            s.layout.rows.push(StepRow { seq: i as u32, pos: p, slot: p, mask: NO_TREE });
            s.positions.push(p);
        }
        s.tokens.extend_from_slice(it.tokens);
        let want = it.logits.rows(n);
        let last = first_row + n as u32;
        s.logit_rows.extend(last - want as u32..last);
        s.logits_per_item.push(want);
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ragged_rows_positions_and_logits() {
        let (a, b) = ([5u32, 6, 7], [9u32]);
        let items = [
            StepItem { seq: SeqId(1), tokens: &a, logits: Logits::Last },
            StepItem { seq: SeqId(2), tokens: &b, logits: Logits::All },
        ];
        let t1 = [3u32, 4];
        let t2 = [7u32];
        let s = build(&items, &[14, 2], &[&t1, &t2]).unwrap();
        assert_eq!(s.positions, vec![14, 15, 16, 2]);
        assert_eq!(s.tokens, vec![5, 6, 7, 9]);
        assert_eq!(s.logit_rows, vec![2, 3]);
        assert_eq!(s.logits_per_item, vec![1, 1]);
        assert_eq!(s.layout.block_table, vec![3, 4, 7]);
        assert_eq!(s.layout.seqs[1], StepSeq { bt_off: 2, kv_len: 3, tree_base: 0, tree_len: 0 });
        assert_eq!(s.layout.rows[3], StepRow { seq: 1, pos: 2, slot: 2, mask: NO_TREE });
        // Row 1 (position 15) sees slots 0..=15; with a window of 4, slots 12..=15.
        assert_eq!(s.layout.visible_slots(1, 0), (0..=15).collect::<Vec<_>>());
        assert_eq!(s.layout.visible_slots(1, 4), vec![12, 13, 14, 15]);
    }
}
