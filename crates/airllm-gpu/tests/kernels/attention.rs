use airllm_gpu::kernels::attention::{self, Attention, AttentionShape};
use airllm_gpu::kernels::kv_append::{self, KvAppend};
use airllm_gpu::{BufView, GpuContext, KvCache, KvLayout};
use rand::rngs::StdRng;

use crate::common::*;

const TOL: f32 = 1e-5;

struct Case {
    batch: u32,
    heads: u32,
    kv_heads: u32,
    head_dim: u32,
    s_max: u32,
    past: u32,
    t: u32,
    first_valid: Vec<u32>,
    window: u32,
    softcap: f32,
    /// f16 cache.
    f16: bool,
}

/// Fills the cache's first `past` slots, appends T new tokens from a fused
/// qkv buffer with kv_append, runs attention, and checks both against the
/// references.
fn run(ctx: &GpuContext, rng: &mut StdRng, c: &Case, what: &str) {
    let layout = KvLayout { batch: c.batch, kv_heads: c.kv_heads, s_max: c.s_max, head_dim: c.head_dim, f16: c.f16 };
    let d = c.head_dim;
    let (qw, kvw) = (c.heads * d, c.kv_heads * d);
    // fused [B*T, q | k | v | pad] rows
    let stride = qw + 2 * kvw + 3;
    let rows = (c.batch * c.t) as usize;
    let qkv = randn(rng, rows * stride as usize, 1.0);
    // values in the cache (f32 either way on the CPU side)
    let tensor = (c.batch * c.kv_heads * c.s_max * c.head_dim) as usize;
    let mut k_cache = randn(rng, tensor, 1.0);
    let mut v_cache = randn(rng, tensor, 1.0);
    if c.f16 {
        for x in k_cache.iter_mut().chain(v_cache.iter_mut()) {
            *x = half::f16::from_f32(*x).to_f32();
        }
    }

    let cache = KvCache::new(ctx, 1, layout).expect("cache");
    let (kv, vv) = (cache.k(0).expect("k"), cache.v(0).expect("v"));
    ctx.queue().write_buffer(kv.buffer, kv.offset, &cache_bytes(&k_cache, c.f16));
    ctx.queue().write_buffer(vv.buffer, vv.offset, &cache_bytes(&v_cache, c.f16));
    let gqkv = ctx.upload_f32("qkv", &qkv);
    let gfv = ctx.upload_u32("first_valid", &c.first_valid);
    let out_stride = qw + 5;
    let out_len = rows * out_stride as usize;
    let gout = ctx.upload_f32("out", &vec![3.0; out_len]);

    let mut rec = ctx.recorder("attention");
    kv_append::launch(
        &mut rec,
        &KvAppend {
            layout,
            t: c.t,
            past: c.past,
            k_src: BufView::whole(&gqkv),
            k_stride: stride,
            k_off: qw,
            v_src: BufView::whole(&gqkv),
            v_stride: stride,
            v_off: qw + kvw,
            k_cache: kv,
            v_cache: vv,
        },
    )
    .expect("kv_append");
    let scale = 1.0 / (d as f32).sqrt();
    attention::launch(
        &mut rec,
        &Attention {
            layout,
            t: c.t,
            heads: c.heads,
            past: c.past,
            q: BufView::whole(&gqkv),
            q_stride: stride,
            q_off: 0,
            k_cache: kv,
            v_cache: vv,
            first_valid: BufView::whole(&gfv),
            out: BufView::whole(&gout),
            out_stride,
            out_off: 2,
            scale,
            window: c.window,
            softcap: c.softcap,
        },
    )
    .expect("attention");
    rec.submit().expect("submit");

    kv_append::reference(&layout, c.t, c.past, &qkv, stride, qw, &mut k_cache);
    kv_append::reference(&layout, c.t, c.past, &qkv, stride, qw + kvw, &mut v_cache);
    let got_k = read_cache(ctx, kv, tensor, c.f16);
    let got_v = read_cache(ctx, vv, tensor, c.f16);
    assert_eq!(got_k, k_cache, "{what}: k cache");
    assert_eq!(got_v, v_cache, "{what}: v cache");

    let shape = AttentionShape {
        layout,
        t: c.t,
        heads: c.heads,
        past: c.past,
        q_stride: stride,
        q_off: 0,
        out_stride,
        out_off: 2,
        scale,
        window: c.window,
        softcap: c.softcap,
    };
    let mut want = vec![3.0; out_len];
    attention::reference(&shape, &qkv, &k_cache, &v_cache, &c.first_valid, &mut want);
    let got = read(ctx, &gout, out_len);
    // outputs are convex combinations of v (|v| <= 1): error relative to 1
    assert_close(what, &got, &want, &vec![1.0; out_len], TOL);
}

/// Cache contents as uploaded: f32, or packed f16.
fn cache_bytes(v: &[f32], f16: bool) -> Vec<u8> {
    if f16 {
        v.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect()
    } else {
        bytemuck::cast_slice(v).to_vec()
    }
}

/// Cache contents read back as f32.
fn read_cache(ctx: &GpuContext, view: BufView<'_>, n: usize, f16: bool) -> Vec<f32> {
    let bytes = airllm_gpu::read_buffer_bytes(ctx, view.buffer, view.offset, if f16 { 2 * n } else { 4 * n } as u64)
        .expect("read cache");
    if f16 {
        bytes.chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect()
    } else {
        bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    }
}

#[test]
fn attention_decode_and_prefill() {
    let contexts = contexts();
    let mut rng = rng("attention_decode_and_prefill");
    for (name, ctx) in &contexts {
        let cases = [
            // decode, GQA 3:1, left padding on sequence 1
            Case {
                batch: 2,
                heads: 6,
                kv_heads: 2,
                head_dim: 40,
                s_max: 80,
                past: 13,
                t: 1,
                first_valid: vec![0, 4],
                window: 0,
                softcap: 0.0,
                f16: false,
            },
            // short prefill on a cache, sliding window, soft-cap
            Case {
                batch: 2,
                heads: 4,
                kv_heads: 4,
                head_dim: 136,
                s_max: 40,
                past: 9,
                t: 5,
                first_valid: vec![2, 0],
                window: 7,
                softcap: 30.0,
                f16: false,
            },
            // prefill from empty over several 64-key blocks, MQA, head_dim 256
            Case {
                batch: 1,
                heads: 3,
                kv_heads: 1,
                head_dim: 256,
                s_max: 150,
                past: 0,
                t: 139,
                first_valid: vec![0],
                window: 0,
                softcap: 0.0,
                f16: false,
            },
            // prefill with padding: queries before first_valid see nothing
            Case {
                batch: 2,
                heads: 2,
                kv_heads: 1,
                head_dim: 64,
                s_max: 100,
                past: 0,
                t: 70,
                first_valid: vec![5, 0],
                window: 50,
                softcap: 0.0,
                f16: false,
            },
        ];
        for (i, c) in cases.iter().enumerate() {
            run(ctx, &mut rng, c, &format!("attention {name} case {i}"));
            // The same with an f16 cache (its reference rounds k and v to f16 too).
            let c16 = Case { f16: true, first_valid: c.first_valid.clone(), ..*c };
            run(ctx, &mut rng, &c16, &format!("attention {name} case {i} f16 cache"));
        }
    }
}
