use airllm_gpu::kernels::kv_compact::{self, KvCompact, SlotMove};
use airllm_gpu::{BufView, GpuContext, KvCache, KvLayout};
use rand::Rng;
use rand::seq::SliceRandom;

use crate::common::*;

/// Cache contents as uploaded: f32, or packed f16.
fn cache_bytes(v: &[f32], f16: bool) -> Vec<u8> {
    if f16 {
        v.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect()
    } else {
        bytemuck::cast_slice(v).to_vec()
    }
}

fn read_cache(ctx: &GpuContext, view: BufView<'_>, n: usize, f16: bool) -> Vec<f32> {
    let bytes = airllm_gpu::read_buffer_bytes(ctx, view.buffer, view.offset, if f16 { 2 * n } else { 4 * n } as u64)
        .expect("read cache");
    if f16 {
        bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
    } else {
        bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    }
}

/// A tree of `nodes` at slots `base..` of a sequence whose blocks are
/// shuffled; the accepted path (node indices, increasing, path[k] >= k) moves
/// to `base + k`. The GPU must give the reference's cache exactly, for f32
/// and f16 caches, including paths whose moves overwrite a later move's
/// source in the naive parallel order (path [0, 2, 3]).
#[test]
fn kv_compact_moves_the_accepted_path() {
    let mut rng = rng("kv_compact_moves_the_accepted_path");
    for (name, ctx) in &contexts() {
        for (f16, kv_heads, head_dim, block) in [(false, 3u32, 40u32, 5u32), (true, 2, 64, 16), (false, 1, 8, 4)] {
            let num_blocks = 12u32;
            let kl = KvLayout { num_blocks, block, kv_heads, head_dim, f16, k_only: false };
            let n = (kl.tensor_bytes() / kl.elem_bytes()) as usize;
            let round = |v: Vec<f32>| -> Vec<f32> {
                if f16 { v.into_iter().map(|x| half::f16::from_f32(x).to_f32()).collect() } else { v }
            };
            let mut k = round(randn(&mut rng, n, 1.0));
            let mut v = round(randn(&mut rng, n, 1.0));
            let mut table: Vec<u32> = (0..num_blocks).collect();
            table.shuffle(&mut rng);
            let base = rng.random_range(0..3 * block);
            let nodes = rng.random_range(4..(num_blocks * block - base).min(40));
            let mut paths: Vec<Vec<u32>> = vec![vec![0, 2, 3]];
            // A random increasing path starting at the root.
            let mut p = vec![0u32];
            while let Some(&last) = p.last() {
                let next = last + 1 + rng.random_range(0..3);
                if next >= nodes {
                    break;
                }
                p.push(next);
            }
            paths.push(p);
            let cache = KvCache::new(ctx, 1, kl).expect("cache");
            let (kv, vv) = (cache.k(0).expect("k"), cache.v(0).expect("v"));
            ctx.queue().write_buffer(kv.buffer, kv.offset, &cache_bytes(&k, f16));
            ctx.queue().write_buffer(vv.buffer, vv.offset, &cache_bytes(&v, f16));
            let locate = |s: u32| (table[(s / block) as usize], s % block);
            for path in &paths {
                let moves: Vec<SlotMove> = path
                    .iter()
                    .enumerate()
                    .filter(|&(i, &node)| node != i as u32)
                    .map(|(i, &node)| {
                        let (sb, so) = locate(base + node);
                        let (db, dof) = locate(base + i as u32);
                        [sb, so, db, dof]
                    })
                    .collect();
                let g_moves = ctx.upload_u32("moves", bytemuck::cast_slice(&moves));
                let mut rec = ctx.recorder("kv_compact");
                kv_compact::launch(
                    &mut rec,
                    &KvCompact {
                        layout: kl,
                        moves: BufView::whole(&g_moves),
                        n_moves: moves.len() as u32,
                        k_cache: kv,
                        v_cache: vv,
                    },
                )
                .expect("launch");
                rec.submit().expect("submit");
                let before = k.clone();
                kv_compact::reference(&kl, &moves, &mut k);
                kv_compact::reference(&kl, &moves, &mut v);
                let what = format!("{name}: f16 {f16}, heads {kv_heads}x{head_dim}, block {block}, path {path:?}");
                assert_eq!(read_cache(ctx, kv, n, f16), k, "{what}: k");
                assert_eq!(read_cache(ctx, vv, n, f16), v, "{what}: v");
                // The reference itself: slot base + i now holds what node path[i] held.
                for (i, &node) in path.iter().enumerate() {
                    let (db, dof) = locate(base + i as u32);
                    let (sb, so) = locate(base + node);
                    for h in 0..kv_heads {
                        let (d, s) = (kl.index(db, h, dof) as usize, kl.index(sb, h, so) as usize);
                        let d_len = head_dim as usize;
                        assert_eq!(k[d..d + d_len], before[s..s + d_len], "{what}: reference, node {node}");
                    }
                }
            }
        }
    }
}
