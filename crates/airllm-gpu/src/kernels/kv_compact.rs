//! KV-cache compaction (`shaders/kv_compact.wgsl`): moves slots within one
//! layer's paged cache, in order. Speculative decoding scores a token tree at
//! the slots after a sequence's prefix; the accepted path is then moved down
//! to consecutive slots and the other nodes are dropped.

use crate::error::Result;
use crate::kernels::{Params, ensure, groups_for};
use crate::pipeline::PipelineKey;
use crate::pool::{BufView, KvLayout};
use crate::recorder::Recorder;

/// One slot move: `(src_block, src_offset, dst_block, dst_offset)`.
pub type SlotMove = [u32; 4];

/// Arguments of a compaction.
#[derive(Clone, Copy, Debug)]
pub struct KvCompact<'a> {
    /// Cache shape.
    pub layout: KvLayout,
    /// `[moves]` [`SlotMove`], applied in order.
    pub moves: BufView<'a>,
    /// Number of moves.
    pub n_moves: u32,
    /// The layer's k cache.
    pub k_cache: BufView<'a>,
    /// The layer's v cache (may share a buffer with `k_cache`).
    pub v_cache: BufView<'a>,
}

const OP: &str = "kv_compact";

/// Records the moves.
pub fn launch(rec: &mut Recorder<'_>, a: &KvCompact<'_>) -> Result<()> {
    let l = a.layout;
    ensure(l.block > 0, OP, "layout", || "blocks must hold at least one slot".into())?;
    let head_bytes = u64::from(l.head_dim) * l.elem_bytes();
    ensure(head_bytes.is_multiple_of(4), OP, "layout", || {
        format!("a head of {} values is not a whole number of 32-bit words", l.head_dim)
    })?;
    let head_words = (head_bytes / 4) as u32;
    if a.n_moves == 0 || head_words == 0 || l.kv_heads == 0 {
        return Ok(());
    }
    a.moves.need_f32(OP, "moves", u64::from(a.n_moves) * 4)?;
    a.k_cache.need_f32(OP, "k_cache", l.tensor_bytes() / 4)?;
    let key = PipelineKey::KvCompact { k_only: l.k_only };
    let threads = l.tensors_per_layer() * u64::from(l.kv_heads) * u64::from(head_words);
    let groups = groups_for(rec.ctx(), threads, key.workgroup_size())?;
    let params = Params::default().u(a.n_moves).u(l.kv_heads).u(head_words).u(l.block);
    if l.k_only {
        // `v_cache` is the k tensor itself: the K_ONLY variant has no v binding.
        return rec.dispatch(&key, params.bytes()?, &[(1, a.moves), (2, a.k_cache)], groups);
    }
    a.v_cache.need_f32(OP, "v_cache", l.tensor_bytes() / 4)?;
    rec.dispatch(&key, params.bytes()?, &[(1, a.moves), (2, a.k_cache), (3, a.v_cache)], groups)
}

/// CPU reference (and the CPU executor's implementation): applies `moves`
/// in order to a cache tensor of `layout` held as f32 values.
pub fn reference(layout: &KvLayout, moves: &[SlotMove], cache: &mut [f32]) {
    let d = layout.head_dim as usize;
    for m in moves {
        for h in 0..layout.kv_heads {
            let src = layout.index(m[0], h, m[1]) as usize;
            let dst = layout.index(m[2], h, m[3]) as usize;
            cache.copy_within(src..src + d, dst);
        }
    }
}
