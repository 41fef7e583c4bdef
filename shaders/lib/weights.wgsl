// Weight loading and dequantization, one format per variant (FMT_* define).
// The weight tensor is binding 1, `w`. All offsets are in bytes within the
// binding (the launcher binds a 256-byte aligned offset and passes the rest).
//
// Dense formats (FMT_F32, FMT_F16, FMT_BF16) with WIDE bind `w` as
// array<vec4<u32>> and read 16 bytes per load; that needs rows and the
// in-binding offset 16-byte aligned. Without WIDE (odd shapes) `w` is
// array<u32> and elements are extracted one by one.
//
// Quantized formats (ggml byte layouts) bind array<u32>. Their blocks are 18,
// 20, 22, 24, 34, 144, 176 or 210 bytes long, so block starts are only 2-byte
// aligned: `rd16` and `rd32` read 16/32 bits at any even byte offset with
// shifts. q8_0, q4_0, q4_1 and nf4 are here; q5_0, q5_1 and the K-quants
// (q4_k, q5_k, q6_k) in lib/weights_k.wgsl, included at the end.
//
// `w_chunk(rb, c)` returns elements [8c, 8c + 8) of the row starting at byte
// `rb` (for quantized formats, of the zero-padded row), dequantized to f32.
// f16 and bf16 are widened in registers (unpack2x16float, u32 << 16): the
// host never converts them and the kernels need no SHADER_F16.

struct W8 {
    a: vec4<f32>,
    b: vec4<f32>,
}

#ifdef WIDE
@group(0) @binding(1) var<storage, read> w: array<vec4<u32>>;
#else
@group(0) @binding(1) var<storage, read> w: array<u32>;
#endif

#ifdef FMT_F32
const W_ELEM_BYTES: u32 = 4u;
#endif
#ifdef FMT_F16
const W_ELEM_BYTES: u32 = 2u;
#endif
#ifdef FMT_BF16
const W_ELEM_BYTES: u32 = 2u;
#endif

#ifdef DENSE
#ifdef WIDE
fn w_chunk(rb: u32, c: u32) -> W8 {
#ifdef FMT_F32
    let i = rb / 16u + c * 2u;
    return W8(bitcast<vec4<f32>>(w[i]), bitcast<vec4<f32>>(w[i + 1u]));
#endif
#ifdef FMT_F16
    let v = w[rb / 16u + c];
    return W8(
        vec4<f32>(unpack2x16float(v.x), unpack2x16float(v.y)),
        vec4<f32>(unpack2x16float(v.z), unpack2x16float(v.w)),
    );
#endif
#ifdef FMT_BF16
    let v = w[rb / 16u + c];
    let lo = bitcast<vec4<f32>>(v << vec4<u32>(16u));
    let hi = bitcast<vec4<f32>>(v & vec4<u32>(0xffff0000u));
    return W8(vec4<f32>(lo.x, hi.x, lo.y, hi.y), vec4<f32>(lo.z, hi.z, lo.w, hi.w));
#endif
}
#else
// Element `e` of a dense tensor (counted from the start of the binding).
fn w_elem(e: u32) -> f32 {
#ifdef FMT_F32
    return bitcast<f32>(w[e]);
#endif
#ifdef FMT_F16
    return unpack2x16float(w[e >> 1u] >> ((e & 1u) * 16u)).x;
#endif
#ifdef FMT_BF16
    return bitcast<f32>((w[e >> 1u] >> ((e & 1u) * 16u)) << 16u);
#endif
}

fn w_chunk(rb: u32, c: u32) -> W8 {
    let e = rb / W_ELEM_BYTES + c * 8u;
    return W8(
        vec4<f32>(w_elem(e), w_elem(e + 1u), w_elem(e + 2u), w_elem(e + 3u)),
        vec4<f32>(w_elem(e + 4u), w_elem(e + 5u), w_elem(e + 6u), w_elem(e + 7u)),
    );
}
#endif
#else
// ---- quantized formats ----

// 16 bits at an even byte offset.
fn rd16(b: u32) -> u32 {
    return (w[b >> 2u] >> ((b & 2u) * 8u)) & 0xffffu;
}

// 32 bits at an even byte offset (two loads when not 4-byte aligned).
fn rd32(b: u32) -> u32 {
    let i = b >> 2u;
    if ((b & 2u) == 0u) {
        return w[i];
    }
    return (w[i] >> 16u) | (w[i + 1u] << 16u);
}

fn f16_at(b: u32) -> f32 {
    return unpack2x16float(rd16(b)).x;
}

// Four nibbles of `v`, from bit `sh` of each byte.
fn nib4(v: u32, sh: u32) -> vec4<u32> {
    return (vec4<u32>(v) >> vec4<u32>(sh, sh + 8u, sh + 16u, sh + 24u)) & vec4<u32>(15u);
}

#ifdef FMT_Q8_0
// 34 bytes per 32 values: f16 d, 32 x i8; value = d * q.
fn i8x4(v: u32) -> vec4<f32> {
    let s = bitcast<i32>(v);
    return vec4<f32>(
        f32((s << 24u) >> 24u),
        f32((s << 16u) >> 24u),
        f32((s << 8u) >> 24u),
        f32(s >> 24u),
    );
}

fn w_chunk(rb: u32, c: u32) -> W8 {
    let o = rb + (c >> 2u) * 34u;
    let d = f16_at(o);
    let p = o + 2u + (c & 3u) * 8u;
    return W8(i8x4(rd32(p)) * d, i8x4(rd32(p + 4u)) * d);
}
#endif

#ifdef FMT_Q4_0
// 18 bytes per 32 values: f16 d, 16 bytes; value j < 16 is the low nibble of
// byte j, value j + 16 its high nibble; value = (nibble - 8) * d.
fn w_chunk(rb: u32, c: u32) -> W8 {
    let o = rb + (c >> 2u) * 18u;
    let d = f16_at(o);
    let p = o + 2u + (c & 1u) * 8u;
    let sh = ((c >> 1u) & 1u) * 4u;
    let a = (vec4<f32>(nib4(rd32(p), sh)) - 8.0) * d;
    let b = (vec4<f32>(nib4(rd32(p + 4u), sh)) - 8.0) * d;
    return W8(a, b);
}
#endif

#ifdef FMT_Q4_1
// 20 bytes per 32 values: f16 d, f16 m, 16 bytes of nibbles as q4_0;
// value = nibble * d + m.
fn w_chunk(rb: u32, c: u32) -> W8 {
    let o = rb + (c >> 2u) * 20u;
    let dm = unpack2x16float(rd32(o));
    let p = o + 4u + (c & 1u) * 8u;
    let sh = ((c >> 1u) & 1u) * 4u;
    let a = vec4<f32>(nib4(rd32(p), sh)) * dm.x + dm.y;
    let b = vec4<f32>(nib4(rd32(p + 4u), sh)) * dm.x + dm.y;
    return W8(a, b);
}
#endif

#ifdef FMT_NF4
// 34 bytes per 64 values: f16 absmax, 32 bytes; value j < 32 is the low
// nibble of byte j, value j + 32 its high nibble; value = NF4[nibble] * absmax.
// The QLoRA / bitsandbytes NormalFloat4 code book.
var<private> NF4: array<f32, 16> = array<f32, 16>(
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
);

fn nf4x4(v: u32, sh: u32) -> vec4<f32> {
    let n = nib4(v, sh);
    return vec4<f32>(NF4[n.x], NF4[n.y], NF4[n.z], NF4[n.w]);
}

fn w_chunk(rb: u32, c: u32) -> W8 {
    let o = rb + (c >> 3u) * 34u;
    let amax = f16_at(o);
    let p = o + 2u + (c & 3u) * 8u;
    let sh = ((c >> 2u) & 1u) * 4u;
    return W8(nf4x4(rd32(p), sh) * amax, nf4x4(rd32(p + 4u), sh) * amax);
}
#endif
#endif

// ---- units: what one GEMV invocation reads per step ----
//
// A unit is UNIT consecutive values of one row: 8 for dense formats, one
// whole block for quantized ones (32 values; 64 for nf4), 64 values of a
// K-quant super-block. `wu_load(rb, u)`
// reads unit `u` of the row at byte `rb` once (the block's words with
// branch-free handling of its two possible alignments, so the loads are
// the same for every invocation), and `wu_dot(wu, xb, xs, k0, k)` returns
// sum_j value_j * xb[j] for the UNIT activations `xb` (as vec4s, zero past
// K) whose sum is `xs`: quantized blocks accumulate the integer codes in f32
// and apply the scale (and offset, via `xs`) once per block.

#ifdef DENSE
const UNIT: u32 = 8u;
alias WU = W8;

fn wu_load(rb: u32, u: u32) -> WU {
    return w_chunk(rb, u);
}

fn wu_dot(v: WU, xb: array<vec4<f32>, 2>, xs: f32, k0: u32, k: u32) -> f32 {
    // dense rows are not padded: the tail of the last unit is the next row
    let m = mask_chunk(v, k0, k);
    return dot(m.a, xb[0]) + dot(m.b, xb[1]);
}
#else
// Four nibbles of `v` from bit `sh` of each byte, as f32.
fn nib4f(v: u32, sh: u32) -> vec4<f32> {
    return vec4<f32>(nib4(v, sh));
}

// The 32-bit words at byte offsets o+2, o+6, ... given the words of the
// block from its first 4-aligned word: `a` = words 0..3, `b` = words 1..4.
// With o 4-aligned each word straddles two loaded ones; with o = 2 mod 4 it
// is the next loaded word as is.
fn words_after_half(a: vec4<u32>, b: vec4<u32>, odd: bool) -> vec4<u32> {
    return select((a >> vec4<u32>(16u)) | (b << vec4<u32>(16u)), b, odd);
}
#endif

#ifdef FMT_Q4_0
const UNIT: u32 = 32u;
struct WU {
    d: f32,
    q: vec4<u32>,
}

// 18 bytes: d at o, 16 bytes of nibbles at o + 2; five words cover both
// alignments of o.
fn wu_load(rb: u32, u: u32) -> WU {
    let o = rb + u * 18u;
    let i = o >> 2u;
    let a = vec4<u32>(w[i], w[i + 1u], w[i + 2u], w[i + 3u]);
    let e = w[i + 4u];
    let odd = (o & 2u) != 0u;
    let q = words_after_half(a, vec4<u32>(a.yzw, e), odd);
    let d = unpack2x16float(select(a.x, a.x >> 16u, odd)).x;
    return WU(d, q);
}

// value j = (nibble_j - 8) d, so the block is d (sum_j nibble_j x_j - 8 xs)
fn wu_dot(v: WU, xb: array<vec4<f32>, 8>, xs: f32, k0: u32, k: u32) -> f32 {
    let q = v.q;
    let s = dot(nib4f(q.x, 0u), xb[0]) + dot(nib4f(q.y, 0u), xb[1]) + dot(nib4f(q.z, 0u), xb[2])
        + dot(nib4f(q.w, 0u), xb[3]) + dot(nib4f(q.x, 4u), xb[4]) + dot(nib4f(q.y, 4u), xb[5])
        + dot(nib4f(q.z, 4u), xb[6]) + dot(nib4f(q.w, 4u), xb[7]);
    return v.d * (s - 8.0 * xs);
}
#endif

#ifdef FMT_Q4_1
const UNIT: u32 = 32u;
struct WU {
    dm: vec2<f32>,
    q: vec4<u32>,
}

// 20 bytes: d, m, 16 bytes of nibbles. Blocks are 4-byte multiples, so all
// blocks of a tensor share the alignment of its offset; six words cover both.
fn wu_load(rb: u32, u: u32) -> WU {
    let o = rb + u * 20u;
    let i = o >> 2u;
    let a = vec4<u32>(w[i], w[i + 1u], w[i + 2u], w[i + 3u]);
    let e = vec2<u32>(w[i + 4u], w[i + 5u]);
    let odd = (o & 2u) != 0u;
    let dm = select(a.x, (a.x >> 16u) | (a.y << 16u), odd);
    let q = select(vec4<u32>(a.yzw, e.x), (vec4<u32>(a.yzw, e.x) >> vec4<u32>(16u)) | (vec4<u32>(a.zw, e) << vec4<u32>(16u)), odd);
    return WU(unpack2x16float(dm), q);
}

// value j = nibble_j d + m: the block is d sum_j nibble_j x_j + m xs
fn wu_dot(v: WU, xb: array<vec4<f32>, 8>, xs: f32, k0: u32, k: u32) -> f32 {
    let q = v.q;
    let s = dot(nib4f(q.x, 0u), xb[0]) + dot(nib4f(q.y, 0u), xb[1]) + dot(nib4f(q.z, 0u), xb[2])
        + dot(nib4f(q.w, 0u), xb[3]) + dot(nib4f(q.x, 4u), xb[4]) + dot(nib4f(q.y, 4u), xb[5])
        + dot(nib4f(q.z, 4u), xb[6]) + dot(nib4f(q.w, 4u), xb[7]);
    return v.dm.x * s + v.dm.y * xs;
}
#endif

#ifdef FMT_Q8_0
const UNIT: u32 = 32u;
struct WU {
    d: f32,
    qa: vec4<u32>,
    qb: vec4<u32>,
}

// 34 bytes: d at o, 32 x i8 at o + 2; nine words cover both alignments.
fn wu_load(rb: u32, u: u32) -> WU {
    let o = rb + u * 34u;
    let i = o >> 2u;
    let a = vec4<u32>(w[i], w[i + 1u], w[i + 2u], w[i + 3u]);
    let b = vec4<u32>(w[i + 4u], w[i + 5u], w[i + 6u], w[i + 7u]);
    let e = w[i + 8u];
    let odd = (o & 2u) != 0u;
    let b1 = vec4<u32>(a.yzw, b.x);
    let e1 = vec4<u32>(b.yzw, e);
    let d = unpack2x16float(select(a.x, a.x >> 16u, odd)).x;
    return WU(d, words_after_half(a, b1, odd), words_after_half(b, e1, odd));
}

fn wu_dot(v: WU, xb: array<vec4<f32>, 8>, xs: f32, k0: u32, k: u32) -> f32 {
    let s = dot(i8x4(v.qa.x), xb[0]) + dot(i8x4(v.qa.y), xb[1]) + dot(i8x4(v.qa.z), xb[2])
        + dot(i8x4(v.qa.w), xb[3]) + dot(i8x4(v.qb.x), xb[4]) + dot(i8x4(v.qb.y), xb[5])
        + dot(i8x4(v.qb.z), xb[6]) + dot(i8x4(v.qb.w), xb[7]);
    return v.d * s;
}
#endif

#ifdef FMT_NF4
const UNIT: u32 = 64u;
struct WU {
    d: f32,
    qa: vec4<u32>,
    qb: vec4<u32>,
}

// 34 bytes: absmax at o, 32 bytes of nibbles at o + 2 (as q8_0).
fn wu_load(rb: u32, u: u32) -> WU {
    let o = rb + u * 34u;
    let i = o >> 2u;
    let a = vec4<u32>(w[i], w[i + 1u], w[i + 2u], w[i + 3u]);
    let b = vec4<u32>(w[i + 4u], w[i + 5u], w[i + 6u], w[i + 7u]);
    let e = w[i + 8u];
    let odd = (o & 2u) != 0u;
    let b1 = vec4<u32>(a.yzw, b.x);
    let e1 = vec4<u32>(b.yzw, e);
    let d = unpack2x16float(select(a.x, a.x >> 16u, odd)).x;
    return WU(d, words_after_half(a, b1, odd), words_after_half(b, e1, odd));
}

// byte j holds values j (low nibble) and j + 32 (high nibble)
fn wu_dot(v: WU, xb: array<vec4<f32>, 16>, xs: f32, k0: u32, k: u32) -> f32 {
    let s = dot(nf4x4(v.qa.x, 0u), xb[0]) + dot(nf4x4(v.qa.y, 0u), xb[1]) + dot(nf4x4(v.qa.z, 0u), xb[2])
        + dot(nf4x4(v.qa.w, 0u), xb[3]) + dot(nf4x4(v.qb.x, 0u), xb[4]) + dot(nf4x4(v.qb.y, 0u), xb[5])
        + dot(nf4x4(v.qb.z, 0u), xb[6]) + dot(nf4x4(v.qb.w, 0u), xb[7])
        + dot(nf4x4(v.qa.x, 4u), xb[8]) + dot(nf4x4(v.qa.y, 4u), xb[9]) + dot(nf4x4(v.qa.z, 4u), xb[10])
        + dot(nf4x4(v.qa.w, 4u), xb[11]) + dot(nf4x4(v.qb.x, 4u), xb[12]) + dot(nf4x4(v.qb.y, 4u), xb[13])
        + dot(nf4x4(v.qb.z, 4u), xb[14]) + dot(nf4x4(v.qb.w, 4u), xb[15]);
    return v.d * s;
}
#endif

// Zeroes the elements of a chunk starting at column k0 that lie at or past K
// (dense rows run on into the next row; quantized padding is zero already but
// masking keeps both paths alike).
fn mask_chunk(v: W8, k0: u32, k: u32) -> W8 {
    if (k0 + 8u <= k) {
        return v;
    }
    let ia = vec4<u32>(k0) + vec4<u32>(0u, 1u, 2u, 3u);
    let ib = ia + vec4<u32>(4u);
    return W8(
        select(vec4<f32>(0.0), v.a, ia < vec4<u32>(k)),
        select(vec4<f32>(0.0), v.b, ib < vec4<u32>(k)),
    );
}

#include weights_k
