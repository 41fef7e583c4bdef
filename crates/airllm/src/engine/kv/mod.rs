//! The paged KV cache's bookkeeping: a pool of fixed-size blocks shared by
//! every sequence, and each sequence's block table (in the spirit of vLLM's
//! PagedAttention). The cache memory itself is allocated once per layer on the
//! layer's executor ([`airllm_gpu::KvCache`] on the GPU); this module only
//! decides which blocks a sequence owns.
//!
//! Invariants:
//! - a block is either free (in the free list, refcount 0) or owned by one or
//!   more sequences (refcount = owners); [`BlockPool::free_blocks`] is exact;
//! - a sequence's slot `s` lives in `table[s / block]` at offset `s % block`;
//!   its table covers at least its filled slots;
//! - blocks are taken only on demand ([`BlockPool::grow`]) and given back as
//!   soon as a sequence ends or is truncated, so capacity is shared by all
//!   sequences and bounded by the pool, never by `max_batch * max_context`;
//! - nothing here moves a live sequence's blocks: adding or removing a
//!   sequence never touches another one's cache;
//! - a table entry may be [`DEAD`]: the block that held those slots was given
//!   back (a sliding-window layer's slots that no future row can see, see
//!   [`window`]); dead entries are never read and never released twice.

pub mod window;

/// A block-table entry whose block was given back to the pool.
pub const DEAD: u32 = u32::MAX;

/// A pool of `num_blocks` blocks of `block` slots.
#[derive(Debug)]
pub struct BlockPool {
    block: usize,
    refcount: Vec<u32>,
    free: Vec<u32>,
}

/// Not enough free blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolExhausted {
    /// Blocks asked for.
    pub needed: usize,
    /// Blocks free.
    pub free: usize,
}

impl BlockPool {
    /// A pool of `num_blocks` free blocks of `block` slots each.
    pub fn new(num_blocks: usize, block: usize) -> Self {
        // Hand out low block ids first (pop from the end).
        BlockPool { block: block.max(1), refcount: vec![0; num_blocks], free: (0..num_blocks as u32).rev().collect() }
    }

    /// Slots per block.
    pub fn block_size(&self) -> usize {
        self.block
    }

    /// Blocks in the pool.
    pub fn num_blocks(&self) -> usize {
        self.refcount.len()
    }

    /// Blocks not owned by any sequence.
    pub fn free_blocks(&self) -> usize {
        self.free.len()
    }

    /// Blocks owned by some sequence.
    pub fn used_blocks(&self) -> usize {
        self.num_blocks() - self.free_blocks()
    }

    /// Blocks a table needs to cover `slots` slots.
    pub fn blocks_for(&self, slots: usize) -> usize {
        slots.div_ceil(self.block)
    }

    /// Extends `table` so it covers `slots` slots, taking free blocks; on
    /// failure nothing is taken.
    pub fn grow(&mut self, table: &mut Vec<u32>, slots: usize) -> Result<(), PoolExhausted> {
        let want = self.blocks_for(slots);
        if want <= table.len() {
            return Ok(());
        }
        let needed = want - table.len();
        if needed > self.free.len() {
            return Err(PoolExhausted { needed, free: self.free.len() });
        }
        for _ in 0..needed {
            // Checked above: the free list holds at least `needed` blocks.
            if let Some(b) = self.free.pop() {
                self.refcount[b as usize] = 1;
                table.push(b);
            }
        }
        Ok(())
    }

    /// Shrinks `table` to the blocks covering `slots` slots, releasing the rest.
    pub fn shrink(&mut self, table: &mut Vec<u32>, slots: usize) {
        let keep = self.blocks_for(slots);
        while table.len() > keep {
            if let Some(b) = table.pop() {
                self.release(b);
            }
        }
    }

    /// Releases every block of `table` and empties it.
    pub fn release_all(&mut self, table: &mut Vec<u32>) {
        for b in table.drain(..) {
            self.release(b);
        }
    }

    /// Releases the blocks of `table` that hold only slots below `lo` and marks
    /// their entries [`DEAD`] (the table keeps its length, so slot `s` stays at
    /// entry `s / block`). Returns how many blocks went back.
    pub fn release_below(&mut self, table: &mut [u32], lo: usize) -> usize {
        let dead = (lo / self.block).min(table.len());
        let mut n = 0;
        for e in &mut table[..dead] {
            if *e != DEAD {
                let b = std::mem::replace(e, DEAD);
                self.release(b);
                n += 1;
            }
        }
        n
    }

    /// The first slot `table` still holds (0 when nothing was released).
    pub fn first_held_slot(&self, table: &[u32]) -> usize {
        table.iter().take_while(|&&b| b == DEAD).count() * self.block
    }

    /// Blocks of `table` that are held (not [`DEAD`]).
    pub fn held(table: &[u32]) -> usize {
        table.iter().filter(|&&b| b != DEAD).count()
    }

    fn release(&mut self, b: u32) {
        if b == DEAD {
            return;
        }
        let rc = &mut self.refcount[b as usize];
        debug_assert!(*rc > 0, "block {b} released twice");
        *rc = rc.saturating_sub(1);
        if *rc == 0 {
            self.free.push(b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grow_shrink_release_keep_the_count_exact() {
        let mut p = BlockPool::new(10, 4);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        p.grow(&mut a, 9).unwrap(); // 3 blocks
        p.grow(&mut b, 4).unwrap(); // 1 block
        assert_eq!((a.len(), b.len(), p.free_blocks()), (3, 1, 6));
        // Growing within the last block takes nothing.
        p.grow(&mut a, 12).unwrap();
        assert_eq!(p.free_blocks(), 6);
        // Too much: nothing is taken.
        assert_eq!(p.grow(&mut b, 100), Err(PoolExhausted { needed: 24, free: 6 }));
        assert_eq!((b.len(), p.free_blocks()), (1, 6));
        p.shrink(&mut a, 5);
        assert_eq!((a.len(), p.free_blocks()), (2, 7));
        p.release_all(&mut a);
        p.release_all(&mut b);
        assert_eq!(p.free_blocks(), 10);
        // Every block is distinct while owned.
        let mut c = Vec::new();
        p.grow(&mut c, 40).unwrap();
        let mut sorted = c.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 10);
    }
}
