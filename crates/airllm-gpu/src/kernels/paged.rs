//! The shape of a ragged step over a paged KV cache, shared by
//! [`kv_append`](super::kv_append) and [`attention`](super::attention).
//!
//! A step is any mix of token rows from any number of sequences: prompt
//! chunks, single decode tokens, token trees. Every row says which sequence
//! it belongs to, its position (for RoPE and windows) and the cache slot its
//! key and value go to ([`StepRow`]); every sequence gives its block table
//! and how many slots it has filled ([`StepSeq`]). Nothing is padded: the
//! kernels run exactly the rows given.
//!
//! Cache layout ([`KvLayout`](crate::KvLayout)): a pool of `num_blocks`
//! blocks of `block` slots; per layer, k and v are each
//! `[num_blocks, kv_heads, block, head_dim]`. Slot `s` of a sequence is at
//! offset `s % block` of block `block_table[bt_off + s / block]`.

use bytemuck::{Pod, Zeroable};

use crate::pool::BufView;

/// `mask` value of a row that is not a tree node.
pub const NO_TREE: u32 = u32::MAX;

/// One token row of a step (`[rows]` in the rows buffer; 16 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct StepRow {
    /// Index of the row's sequence in the step's sequence list.
    pub seq: u32,
    /// Token position (RoPE, sliding windows).
    pub pos: u32,
    /// Cache slot the row's key and value are written to.
    pub slot: u32,
    /// First word of the row's tree mask in the masks buffer, or [`NO_TREE`].
    /// Bit `j` set: the row sees tree node `j` (slot `tree_base + j`).
    pub mask: u32,
}

/// One sequence of a step (`[seqs]` in the sequences buffer; 16 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct StepSeq {
    /// First entry of the sequence's block table in the block-table buffer.
    pub bt_off: u32,
    /// Slots filled, this step's rows included.
    pub kv_len: u32,
    /// First slot of the sequence's token tree (when `tree_len > 0`).
    pub tree_base: u32,
    /// Nodes of the tree (0: no tree).
    pub tree_len: u32,
}

/// Largest token tree one sequence may verify in one step (the kernel
/// compacts a row's visible tree slots into a workgroup array this long).
pub const MAX_TREE: u32 = 256;

/// The step description on the GPU.
#[derive(Clone, Copy, Debug)]
pub struct StepViews<'a> {
    /// `[rows]` [`StepRow`].
    pub rows: BufView<'a>,
    /// `[seqs]` [`StepSeq`].
    pub seqs: BufView<'a>,
    /// Block tables of every sequence of the step, concatenated (u32 block ids).
    pub block_table: BufView<'a>,
    /// Tree masks (u32 words; any non-empty buffer when the step has no tree).
    pub tree_masks: BufView<'a>,
}

/// The host-side step description (what [`StepViews`] hold), for the CPU
/// references and for building the buffers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StepLayout {
    /// Rows.
    pub rows: Vec<StepRow>,
    /// Sequences.
    pub seqs: Vec<StepSeq>,
    /// Concatenated block tables.
    pub block_table: Vec<u32>,
    /// Tree mask words.
    pub tree_masks: Vec<u32>,
}

impl StepLayout {
    /// The slots row `r` may attend to, in the kernel's order, for a layer
    /// with sliding `window` (0: none).
    pub fn visible_slots(&self, r: usize, window: u32) -> Vec<u32> {
        let row = self.rows[r];
        let sq = self.seqs[row.seq as usize];
        let lo = if window > 0 && row.pos + 1 > window { row.pos + 1 - window } else { 0 };
        let pre_hi = if row.mask == NO_TREE { row.slot + 1 } else { sq.tree_base };
        let mut out: Vec<u32> = (lo.min(pre_hi)..pre_hi).collect();
        if row.mask != NO_TREE {
            for j in 0..sq.tree_len.min(MAX_TREE) {
                if self.tree_masks[(row.mask + j / 32) as usize] & (1 << (j % 32)) != 0 {
                    out.push(sq.tree_base + j);
                }
            }
        }
        out
    }

    /// `(block, offset)` of slot `s` of sequence `seq`.
    pub fn locate(&self, seq: u32, s: u32, block: u32) -> (u32, u32) {
        let sq = self.seqs[seq as usize];
        (self.block_table[(sq.bt_off + s / block) as usize], s % block)
    }
}
