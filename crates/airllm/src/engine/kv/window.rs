//! The KV blocks of sliding-window layers (Gemma 2/3's local layers,
//! Mistral-style `sliding_window`): a row at position `p` of such a layer sees
//! only the keys at positions `p + 1 - window ..= p`, so a sequence's cache for
//! it need not hold more than the window, however long the sequence grows.
//!
//! Design. Sliding layers keep the paged layout and the kernels unchanged but
//! get a pool of their own ([`SlidingKv`], a smaller [`KvLayout`] per layer)
//! and, per sequence, a second block table indexed exactly like the global
//! one (slot `s` at entry `s / block`, same length, so one `bt_off` serves
//! both tables). Entries of blocks that no future row can see are [`DEAD`]:
//! their blocks went back to the pool. The attention and kv_append kernels
//! (GPU and CPU) read a table entry only for slots a row may see
//! ([`StepLayout::visible_slots`]) or writes, so they never touch a dead one.
//! A ring of blocks per sequence would save the table entries (4 bytes per
//! `block` tokens) but would make slots wrap, which every kernel, tree mask and
//! the compaction of accepted proposals would then have to know about.
//!
//! When blocks go back (invariants):
//! - at the start of a step, each of its sequences (next row at position
//!   `len`) gives back the blocks wholly below `len + 1 - window`; rows of a
//!   step all sit at positions `>= len` (prompt chunks, decode tokens and tree
//!   nodes alike), so nothing a row of the step can see is given back;
//! - between steps nothing is given back, so a sequence may still be cut back
//!   into the tokens of its last step (rejected proposals) exactly;
//! - only when the pool runs short are sequences outside the step trimmed the
//!   same way (as their own next step would), so the bound below holds;
//! - a cut (truncate) to `len` is exact only if the table still holds
//!   `len + 1 - window ..`; otherwise it is refused ([`WindowLost`]) and the
//!   caller re-reads the prefix (the scheduler already does).
//!
//! Bound: after the trims a sequence holds at most [`blocks_per_window`]
//! blocks, and a step adds at most `ceil(n / block)` for its `n` rows, so
//! `sequences * (blocks_per_window + 1) + ceil(rows / block)` blocks serve
//! any step of `sequences` live sequences ([`pool_blocks`]).
//!
//! [`KvLayout`]: airllm_gpu::KvLayout
//! [`StepLayout::visible_slots`]: airllm_gpu::kernels::paged::StepLayout::visible_slots

use super::{BlockPool, DEAD, PoolExhausted};

/// Blocks a table may hold after a trim: the `window - 1` slots below the next
/// row, at the worst alignment (they straddle one more block than they fill).
pub fn blocks_per_window(window: usize, block: usize) -> usize {
    let block = block.max(1);
    (window.max(1) + 2 * block - 3) / block
}

/// Blocks of a sliding pool that serves `sequences` live sequences in steps of
/// at most `rows` token rows, never more than a global pool of `global_blocks`
/// (a sliding table holds a subset of the slots a global one holds).
pub fn pool_blocks(window: usize, block: usize, sequences: usize, rows: usize, global_blocks: usize) -> usize {
    let block = block.max(1);
    let need = sequences.max(1) * (blocks_per_window(window, block) + 1) + rows.max(1).div_ceil(block);
    need.min(global_blocks).max(1)
}

/// A cut that would need slots already given back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WindowLost {
    /// The first slot the table still holds.
    pub first_held: usize,
    /// The first slot a row after the cut would see.
    pub needed: usize,
}

/// The pool of the sliding layers' blocks and the window it serves.
#[derive(Debug)]
pub struct SlidingKv {
    /// The blocks.
    pub pool: BlockPool,
    /// The largest window of the layers it serves (a layer with a smaller
    /// window reads a subset of what this one keeps).
    pub window: usize,
}

impl SlidingKv {
    /// A pool of `num_blocks` blocks of `block` slots for layers of `window`.
    pub fn new(num_blocks: usize, block: usize, window: usize) -> Self {
        SlidingKv { pool: BlockPool::new(num_blocks, block), window: window.max(1) }
    }

    /// The lowest slot a row at position `pos` sees.
    pub fn lowest_visible(&self, pos: usize) -> usize {
        (pos + 1).saturating_sub(self.window)
    }

    /// Gives back the blocks no row at position `next` or later can see.
    pub fn trim(&mut self, table: &mut [u32], next: usize) -> usize {
        let lo = self.lowest_visible(next);
        self.pool.release_below(table, lo)
    }

    /// Whether `table` still holds every slot a row at position `len` sees.
    pub fn holds_window(&self, table: &[u32], len: usize) -> bool {
        len == 0 || self.pool.first_held_slot(table) <= self.lowest_visible(len)
    }

    /// Cuts `table` to `len` slots, or refuses when the window before `len` is
    /// gone (then nothing changes).
    pub fn cut(&mut self, table: &mut Vec<u32>, len: usize) -> Result<(), WindowLost> {
        if !self.holds_window(table, len) {
            return Err(WindowLost { first_held: self.pool.first_held_slot(table), needed: self.lowest_visible(len) });
        }
        self.pool.shrink(table, len);
        if table.iter().all(|&b| b == DEAD) {
            table.clear();
        }
        Ok(())
    }

    /// Blocks `table` must take to cover `slots` slots.
    pub fn needed(&self, table: &[u32], slots: usize) -> usize {
        self.pool.blocks_for(slots).saturating_sub(table.len())
    }

    /// Extends `table` to cover `slots` slots.
    pub fn grow(&mut self, table: &mut Vec<u32>, slots: usize) -> Result<(), PoolExhausted> {
        self.pool.grow(table, slots)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_growing_sequence_holds_at_most_the_window() {
        // Window 8, blocks of 4: the pool for one sequence in 1-row steps.
        let blocks = pool_blocks(8, 4, 1, 1, 1000);
        assert_eq!(blocks, blocks_per_window(8, 4) + 2);
        let mut s = SlidingKv::new(blocks, 4, 8);
        let mut t = Vec::new();
        for len in 0..200 {
            s.trim(&mut t, len);
            s.grow(&mut t, len + 1).expect("the bound holds");
            // Every slot the new row sees is held.
            let lo = s.lowest_visible(len);
            assert!(t.iter().enumerate().all(|(i, &b)| (i + 1) * 4 <= lo || b != DEAD), "len {len}: {t:?}");
            assert!(BlockPool::held(&t) <= blocks_per_window(8, 4) + 1, "len {len}");
        }
        assert_eq!(t.len(), 50);
        // Cutting back into the last step's tokens is exact; further back is refused.
        assert!(s.holds_window(&t, 199));
        assert_eq!(s.cut(&mut t, 150), Err(WindowLost { first_held: 192, needed: 143 }));
        s.cut(&mut t, 199).unwrap();
        assert_eq!(t.len(), 50);
        s.cut(&mut t, 0).unwrap();
        assert!(t.is_empty());
        assert_eq!(s.pool.free_blocks(), blocks);
    }

    #[test]
    fn prompt_chunks_longer_than_the_window_fit_the_bound() {
        // 3 sequences, steps of up to 20 rows, window 8, blocks of 4.
        let blocks = pool_blocks(8, 4, 3, 20, 1000);
        let mut s = SlidingKv::new(blocks, 4, 8);
        let mut tables = vec![Vec::new(), Vec::new(), Vec::new()];
        let mut lens = [0usize; 3];
        for step in 0..30 {
            // Rows split unevenly between the sequences, 20 in all.
            let ns = [[20, 0, 0], [7, 7, 6], [1, 1, 18], [13, 0, 7]][step % 4];
            for i in 0..3 {
                if ns[i] > 0 {
                    s.trim(&mut tables[i], lens[i]);
                }
            }
            // Short: trim the sequences outside the step too (what the engine does).
            let need: usize = (0..3).map(|i| s.needed(&tables[i], lens[i] + ns[i])).sum();
            if need > s.pool.free_blocks() {
                for i in 0..3 {
                    s.trim(&mut tables[i], lens[i]);
                }
            }
            for i in 0..3 {
                if ns[i] > 0 {
                    s.grow(&mut tables[i], lens[i] + ns[i]).expect("within the bound");
                    lens[i] += ns[i];
                }
            }
        }
        for t in &mut tables {
            s.pool.release_all(t);
        }
        assert_eq!(s.pool.free_blocks(), blocks);
    }

    #[test]
    fn the_pool_never_exceeds_the_global_one() {
        assert_eq!(pool_blocks(4096, 16, 16, 512, 256), 256);
        // Gemma 3: window 512, 16 sequences, 512 rows, 32k context.
        assert_eq!(pool_blocks(512, 16, 16, 512, 2048), 16 * 34 + 32);
    }
}
