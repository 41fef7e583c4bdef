//! Turning a list of work items into one ragged step: the rows, positions,
//! slots and block tables the kernels read ([`StepLayout`]), and which rows'
//! logits come back. Pure host code, shared by every executor.

use airllm_gpu::kernels::paged::{MAX_TREE, NO_TREE, StepLayout, StepRow, StepSeq};

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

/// Parent of a tree node that hangs off the committed prefix (a root).
pub const ROOT: u32 = u32::MAX;

/// A token tree a step scores (speculative verification, draft expansion).
///
/// The tree's nodes occupy the sequence's slots `base..`, in node order; node
/// `j` sits at position `base + depth(j)` and attends to the committed prefix
/// (slots `..base`), its ancestors and itself, never to its siblings. A tree
/// may grow over several steps: nodes already in the cache (slots
/// `base..len`) are the first `len - base` entries of `parents`, and the
/// step's tokens are the rest.
#[derive(Clone, Copy, Debug)]
pub struct Tree<'a> {
    /// First slot of the tree (at most the sequence's length).
    pub base: usize,
    /// Parent of every node (old and new): an earlier node's index, or [`ROOT`].
    pub parents: &'a [u32],
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
    /// The tokens are nodes of a token tree (None: a plain chunk, each token
    /// seeing all before it).
    pub tree: Option<Tree<'a>>,
}

impl<'a> StepItem<'a> {
    /// A plain chunk (prompt, decode token).
    pub fn new(seq: SeqId, tokens: &'a [u32], logits: Logits) -> Self {
        StepItem { seq, tokens, logits, tree: None }
    }
}

/// Depth of every node of a tree (roots are 0), checking that each parent is
/// an earlier node.
pub fn tree_depths(parents: &[u32]) -> Result<Vec<u32>> {
    let mut depth = Vec::with_capacity(parents.len());
    for (j, &p) in parents.iter().enumerate() {
        if p == ROOT {
            depth.push(0);
        } else if (p as usize) < j {
            depth.push(depth[p as usize] + 1);
        } else {
            return Err(EngineError::invalid(
                "tree",
                format!("node {j} has parent {p}; a parent must be an earlier node or ROOT"),
            ));
        }
    }
    Ok(depth)
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
        let first_row = s.layout.rows.len() as u32;
        match it.tree {
            None => {
                s.layout.seqs.push(StepSeq { bt_off, kv_len: (past + n) as u32, tree_base: 0, tree_len: 0 });
                for k in 0..n {
                    let p = (past + k) as u32;
                    s.layout.rows.push(StepRow { seq: i as u32, pos: p, slot: p, mask: NO_TREE });
                    s.positions.push(p);
                }
            }
            Some(tree) => add_tree(&mut s, i, it, tree, past, bt_off)?,
        }
        s.tokens.extend_from_slice(it.tokens);
        let want = it.logits.rows(n);
        let last = first_row + n as u32;
        s.logit_rows.extend(last - want as u32..last);
        s.logits_per_item.push(want);
    }
    Ok(s)
}

/// The rows of a tree item: node `j` (of `old + n`) at slot `base + j`, its
/// mask the bits of its ancestors and itself.
fn add_tree(s: &mut BuiltStep, i: usize, it: &StepItem<'_>, tree: Tree<'_>, past: usize, bt_off: u32) -> Result<()> {
    let n = it.tokens.len();
    let old = past.checked_sub(tree.base).ok_or_else(|| {
        EngineError::invalid("tree", format!("{}: tree base {} is past its length {past}", it.seq, tree.base))
    })?;
    let total = old + n;
    if tree.parents.len() != total {
        return Err(EngineError::invalid(
            "tree",
            format!(
                "{}: {} parents for a tree of {old} cached + {n} new nodes (one parent per node)",
                it.seq,
                tree.parents.len()
            ),
        ));
    }
    if total > MAX_TREE as usize {
        return Err(EngineError::invalid(
            "tree",
            format!("{}: a tree of {total} nodes exceeds the largest the kernels take ({MAX_TREE})", it.seq),
        ));
    }
    let depth = tree_depths(tree.parents)?;
    let words = total.div_ceil(32);
    s.layout.seqs.push(StepSeq {
        bt_off,
        kv_len: (past + n) as u32,
        tree_base: tree.base as u32,
        tree_len: total as u32,
    });
    for j in old..total {
        let mask = s.layout.tree_masks.len() as u32;
        s.layout.tree_masks.resize(s.layout.tree_masks.len() + words, 0);
        let mut a = j as u32;
        loop {
            s.layout.tree_masks[mask as usize + a as usize / 32] |= 1 << (a % 32);
            match tree.parents[a as usize] {
                ROOT => break,
                p => a = p,
            }
        }
        let pos = (tree.base + depth[j] as usize) as u32;
        s.layout.rows.push(StepRow { seq: i as u32, pos, slot: (tree.base + j) as u32, mask });
        s.positions.push(pos);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ragged_rows_positions_and_logits() {
        let (a, b) = ([5u32, 6, 7], [9u32]);
        let items = [StepItem::new(SeqId(1), &a, Logits::Last), StepItem::new(SeqId(2), &b, Logits::All)];
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

    #[test]
    fn trees_see_their_ancestors_and_the_prefix() {
        // A tree on a 5-slot prefix: 0 -> {1, 2}, 2 -> 3; nodes 0..2 cached
        // earlier, 3 arrives now with node 2's continuation.
        let parents = [ROOT, 0, 0, 2];
        let toks = [42u32];
        let items = [StepItem {
            seq: SeqId(1),
            tokens: &toks,
            logits: Logits::All,
            tree: Some(Tree { base: 5, parents: &parents }),
        }];
        let s = build(&items, &[8], &[&[0u32]]).unwrap();
        assert_eq!(s.layout.rows, vec![StepRow { seq: 0, pos: 7, slot: 8, mask: 0 }]);
        assert_eq!(s.layout.seqs[0], StepSeq { bt_off: 0, kv_len: 9, tree_base: 5, tree_len: 4 });
        assert_eq!(s.layout.visible_slots(0, 0), vec![0, 1, 2, 3, 4, 5, 7, 8]);
        // A whole tree in one step.
        let toks = [1u32, 2, 3, 4];
        let items = [StepItem {
            seq: SeqId(1),
            tokens: &toks,
            logits: Logits::All,
            tree: Some(Tree { base: 2, parents: &parents }),
        }];
        let s = build(&items, &[2], &[&[0u32]]).unwrap();
        assert_eq!(s.positions, vec![2, 3, 3, 4]);
        assert_eq!(s.layout.visible_slots(1, 0), vec![0, 1, 2, 3]);
        assert_eq!(s.layout.visible_slots(2, 0), vec![0, 1, 2, 4]);
        assert_eq!(s.layout.visible_slots(3, 0), vec![0, 1, 2, 4, 5]);
        assert_eq!(s.logit_rows, vec![0, 1, 2, 3]);
        // Bad trees are refused.
        let bad = [ROOT, 1];
        let items = [StepItem {
            seq: SeqId(1),
            tokens: &toks[..2],
            logits: Logits::All,
            tree: Some(Tree { base: 2, parents: &bad }),
        }];
        assert!(build(&items, &[2], &[&[0u32]]).is_err());
        let items = [StepItem {
            seq: SeqId(1),
            tokens: &toks[..2],
            logits: Logits::All,
            tree: Some(Tree { base: 2, parents: &parents }),
        }];
        assert!(build(&items, &[2], &[&[0u32]]).is_err(), "parent count must match");
    }
}
