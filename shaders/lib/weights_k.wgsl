// The 5-bit and K-quant weight formats (ggml byte layouts; see airllm-quant's
// q5_0, q5_1, q4_k, q5_k and q6_k modules for the diagrams), included by
// lib/weights.wgsl, whose helpers (rd16, rd32, nib4, nib4f, W8) they use.
// Each format gives `w_chunk` (8 values, the GEMM's loader) and a GEMV unit
// (`UNIT`, `WU`, `wu_load`, `wu_dot`, see lib/weights.wgsl):
//
//   q5_0, q5_1  22 / 24 bytes per 32 values; unit: one block.
//   q4_k, q5_k  144 / 176 bytes per 256 values, 8 sub-blocks of 32 with
//               6-bit scales and mins; unit: 64 values, the two sub-blocks
//               that share one run of 32 code bytes.
//   q6_k        210 bytes per 256 values, 16 sub-blocks of 16 with i8
//               scales; unit: 64 values, the four sub-blocks that share one
//               run of 32 ql bytes and 32 qh bytes.
//
// Units merge the split bit fields (5th bits, high 2 bits) into one byte per
// code when they are loaded, once per row for every token.

#ifndef DENSE
// Words at byte offsets o, o + 4, o + 8, o + 12 (o even): five aligned loads,
// realigned by a select when o = 2 mod 4 (the same loads for every invocation).
fn rd32x4(o: u32) -> vec4<u32> {
    let i = o >> 2u;
    let a = vec4<u32>(w[i], w[i + 1u], w[i + 2u], w[i + 3u]);
    let b = vec4<u32>(a.yzw, w[i + 4u]);
    return select(a, (a >> vec4<u32>(16u)) | (b << vec4<u32>(16u)), (o & 2u) != 0u);
}

// The four bytes of `v` as f32.
fn byte4f(v: u32) -> vec4<f32> {
    return vec4<f32>((vec4<u32>(v) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(255u));
}

// Bits 0..3 of `b` moved to bit 4 of bytes 0..3 (the 5th bits of four codes).
fn spread4(b: u32) -> u32 {
    return ((b & 1u) << 4u) | ((b & 2u) << 11u) | ((b & 4u) << 18u) | ((b & 8u) << 25u);
}

// Sum of the four lanes.
fn hsum(v: vec4<f32>) -> f32 {
    return v.x + v.y + v.z + v.w;
}

// sum_j byte_j(q[i]) * x_i[j] over the 16 bytes of `q` (four words) against
// 16 activations (written out: dynamic indexing would spill on some drivers).
fn dot16b(q: vec4<u32>, a: vec4<f32>, b: vec4<f32>, c: vec4<f32>, d: vec4<f32>) -> f32 {
    return dot(byte4f(q.x), a) + dot(byte4f(q.y), b) + dot(byte4f(q.z), c) + dot(byte4f(q.w), d);
}

// The same for the 16 nibbles at bit `sh` of each byte of `q`.
fn dot16n(q: vec4<u32>, sh: u32, a: vec4<f32>, b: vec4<f32>, c: vec4<f32>, d: vec4<f32>) -> f32 {
    return dot(nib4f(q.x, sh), a) + dot(nib4f(q.y, sh), b) + dot(nib4f(q.z, sh), c) + dot(nib4f(q.w, sh), d);
}

// Sum of 16 activations.
fn sum16(a: vec4<f32>, b: vec4<f32>, c: vec4<f32>, d: vec4<f32>) -> f32 {
    return hsum(a + b + c + d);
}

// Byte k (0..12) of a K-quant scales field held as three words.
fn sbyte(s: vec3<u32>, k: u32) -> u32 {
    return (s[k >> 2u] >> ((k & 3u) * 8u)) & 255u;
}

// (scale, min) pair j (0..8) of q4_k / q5_k (ggml's get_scale_min_k4).
fn scale_min_k4(j: u32, s: vec3<u32>) -> vec2<f32> {
    let lo = vec2<u32>(sbyte(s, j) & 63u, sbyte(s, j + 4u) & 63u);
    let jj = j & 3u; // j - 4 for j >= 4
    let hi = vec2<u32>(
        (sbyte(s, jj + 8u) & 15u) | ((sbyte(s, jj) >> 6u) << 4u),
        (sbyte(s, jj + 8u) >> 4u) | ((sbyte(s, jj + 4u) >> 6u) << 4u),
    );
    return vec2<f32>(select(hi, lo, j < 4u));
}
#endif

// ---- q5_0: d f16 | qh u32 | qs[16]; value = (code - 16) * d ----
#ifdef FMT_Q5_0
fn w_chunk(rb: u32, c: u32) -> W8 {
    let o = rb + (c >> 2u) * 22u;
    let d = f16_at(o);
    let qh = rd32(o + 2u);
    let j0 = (c & 3u) * 8u;
    let p = o + 6u + (j0 & 15u);
    let sh = (j0 >> 4u) * 4u;
    let h = vec4<u32>(qh) >> (vec4<u32>(j0) + vec4<u32>(0u, 1u, 2u, 3u));
    let a = nib4(rd32(p), sh) | ((h & vec4<u32>(1u)) << vec4<u32>(4u));
    let b = nib4(rd32(p + 4u), sh) | (((h >> vec4<u32>(4u)) & vec4<u32>(1u)) << vec4<u32>(4u));
    return W8((vec4<f32>(a) - 16.0) * d, (vec4<f32>(b) - 16.0) * d);
}

const UNIT: u32 = 32u;
struct WU {
    d: f32,
    // codes as bytes: values 0..15, values 16..31
    lo: vec4<u32>,
    hi: vec4<u32>,
}

fn wu_load(rb: u32, u: u32) -> WU {
    let o = rb + u * 22u;
    let qh = rd32(o + 2u);
    let qs = rd32x4(o + 6u);
    let m = vec4<u32>(0x0f0f0f0fu);
    let lo = (qs & m) | vec4<u32>(spread4(qh), spread4(qh >> 4u), spread4(qh >> 8u), spread4(qh >> 12u));
    let hi = ((qs >> vec4<u32>(4u)) & m)
        | vec4<u32>(spread4(qh >> 16u), spread4(qh >> 20u), spread4(qh >> 24u), spread4(qh >> 28u));
    return WU(f16_at(o), lo, hi);
}

fn wu_dot(v: WU, xb: array<vec4<f32>, 8>, xs: f32, k0: u32, k: u32) -> f32 {
    let s = dot16b(v.lo, xb[0], xb[1], xb[2], xb[3]) + dot16b(v.hi, xb[4], xb[5], xb[6], xb[7]);
    return v.d * (s - 16.0 * xs);
}
#endif

// ---- q5_1: d f16 | m f16 | qh u32 | qs[16]; value = code * d + m ----
#ifdef FMT_Q5_1
fn w_chunk(rb: u32, c: u32) -> W8 {
    let o = rb + (c >> 2u) * 24u;
    let dm = unpack2x16float(rd32(o));
    let qh = rd32(o + 4u);
    let j0 = (c & 3u) * 8u;
    let p = o + 8u + (j0 & 15u);
    let sh = (j0 >> 4u) * 4u;
    let h = vec4<u32>(qh) >> (vec4<u32>(j0) + vec4<u32>(0u, 1u, 2u, 3u));
    let a = nib4(rd32(p), sh) | ((h & vec4<u32>(1u)) << vec4<u32>(4u));
    let b = nib4(rd32(p + 4u), sh) | (((h >> vec4<u32>(4u)) & vec4<u32>(1u)) << vec4<u32>(4u));
    return W8(vec4<f32>(a) * dm.x + dm.y, vec4<f32>(b) * dm.x + dm.y);
}

const UNIT: u32 = 32u;
struct WU {
    dm: vec2<f32>,
    lo: vec4<u32>,
    hi: vec4<u32>,
}

fn wu_load(rb: u32, u: u32) -> WU {
    let o = rb + u * 24u;
    let dm = unpack2x16float(rd32(o));
    let qh = rd32(o + 4u);
    let qs = rd32x4(o + 8u);
    let m = vec4<u32>(0x0f0f0f0fu);
    let lo = (qs & m) | vec4<u32>(spread4(qh), spread4(qh >> 4u), spread4(qh >> 8u), spread4(qh >> 12u));
    let hi = ((qs >> vec4<u32>(4u)) & m)
        | vec4<u32>(spread4(qh >> 16u), spread4(qh >> 20u), spread4(qh >> 24u), spread4(qh >> 28u));
    return WU(dm, lo, hi);
}

fn wu_dot(v: WU, xb: array<vec4<f32>, 8>, xs: f32, k0: u32, k: u32) -> f32 {
    let s = dot16b(v.lo, xb[0], xb[1], xb[2], xb[3]) + dot16b(v.hi, xb[4], xb[5], xb[6], xb[7]);
    return v.dm.x * s + v.dm.y * xs;
}
#endif

// ---- q4_k: d f16 | dmin f16 | scales[12] | qs[128] ----
// value i = (d * sc[j]) * code[i] - dmin * m[j], j = i / 32; sub-blocks 2p
// (low nibbles) and 2p + 1 (high nibbles) share qs[32p .. 32p + 32].
#ifdef FMT_Q4_K
fn w_chunk(rb: u32, c: u32) -> W8 {
    let o = rb + (c >> 5u) * 144u;
    let hdr = rd32x4(o);
    let dd = unpack2x16float(hdr.x);
    let v0 = (c & 31u) * 8u;
    let j = v0 >> 5u;
    let sm = scale_min_k4(j, hdr.yzw);
    let p = o + 16u + (j >> 1u) * 32u + (v0 & 31u);
    let sh = (j & 1u) * 4u;
    let d = dd.x * sm.x;
    let m = dd.y * sm.y;
    return W8(nib4f(rd32(p), sh) * d - m, nib4f(rd32(p + 4u), sh) * d - m);
}

const UNIT: u32 = 64u;
struct WU {
    // (d * sc, dmin * m) of the two sub-blocks
    dm: vec4<f32>,
    // bytes 0..15 and 16..31 of the run
    qa: vec4<u32>,
    qb: vec4<u32>,
}

fn wu_load(rb: u32, u: u32) -> WU {
    let o = rb + (u >> 2u) * 144u;
    let p = u & 3u;
    let hdr = rd32x4(o);
    let dd = unpack2x16float(hdr.x);
    let a = scale_min_k4(2u * p, hdr.yzw);
    let b = scale_min_k4(2u * p + 1u, hdr.yzw);
    let qa = rd32x4(o + 16u + 32u * p);
    let qb = rd32x4(o + 32u + 32u * p);
    return WU(vec4<f32>(dd.x * a.x, dd.y * a.y, dd.x * b.x, dd.y * b.y), qa, qb);
}

// byte l of the run holds value l (low nibble) and value l + 32 (high)
fn wu_dot(v: WU, xb: array<vec4<f32>, 16>, xs: f32, k0: u32, k: u32) -> f32 {
    let s1 = dot16n(v.qa, 0u, xb[0], xb[1], xb[2], xb[3]) + dot16n(v.qb, 0u, xb[4], xb[5], xb[6], xb[7]);
    let s2 = dot16n(v.qa, 4u, xb[8], xb[9], xb[10], xb[11]) + dot16n(v.qb, 4u, xb[12], xb[13], xb[14], xb[15]);
    let x1 = sum16(xb[0], xb[1], xb[2], xb[3]) + sum16(xb[4], xb[5], xb[6], xb[7]);
    let x2 = xs - x1;
    return v.dm.x * s1 - v.dm.y * x1 + v.dm.z * s2 - v.dm.w * x2;
}
#endif

// ---- q5_k: d f16 | dmin f16 | scales[12] | qh[32] | qs[128] ----
// as q4_k, plus the 5th bit of value 64p + l in bit 2p of qh[l] and of
// value 64p + 32 + l in bit 2p + 1.
#ifdef FMT_Q5_K
fn w_chunk(rb: u32, c: u32) -> W8 {
    let o = rb + (c >> 5u) * 176u;
    let hdr = rd32x4(o);
    let dd = unpack2x16float(hdr.x);
    let v0 = (c & 31u) * 8u;
    let j = v0 >> 5u;
    let l0 = v0 & 31u;
    let sm = scale_min_k4(j, hdr.yzw);
    let p = o + 48u + (j >> 1u) * 32u + l0;
    let sh = (j & 1u) * 4u;
    // bit j of bytes qh[l0 .. l0 + 8]
    let ha = (nib4(rd32(o + 16u + l0), j) & vec4<u32>(1u)) << vec4<u32>(4u);
    let hb = (nib4(rd32(o + 20u + l0), j) & vec4<u32>(1u)) << vec4<u32>(4u);
    let d = dd.x * sm.x;
    let m = dd.y * sm.y;
    return W8(vec4<f32>(nib4(rd32(p), sh) | ha) * d - m, vec4<f32>(nib4(rd32(p + 4u), sh) | hb) * d - m);
}

const UNIT: u32 = 64u;
struct WU {
    dm: vec4<f32>,
    // codes as bytes: c0, c1 values 0..31, c2, c3 values 32..63
    c0: vec4<u32>,
    c1: vec4<u32>,
    c2: vec4<u32>,
    c3: vec4<u32>,
}

fn wu_load(rb: u32, u: u32) -> WU {
    let o = rb + (u >> 2u) * 176u;
    let p = u & 3u;
    let hdr = rd32x4(o);
    let dd = unpack2x16float(hdr.x);
    let a = scale_min_k4(2u * p, hdr.yzw);
    let b = scale_min_k4(2u * p + 1u, hdr.yzw);
    let m = vec4<u32>(0x0f0f0f0fu);
    let one = vec4<u32>(0x01010101u);
    let q0 = rd32x4(o + 48u + 32u * p);
    let q1 = rd32x4(o + 64u + 32u * p);
    let h0 = rd32x4(o + 16u);
    let h1 = rd32x4(o + 32u);
    let sl = vec4<u32>(2u * p);
    let sh = vec4<u32>(2u * p + 1u);
    let four = vec4<u32>(4u);
    return WU(
        vec4<f32>(dd.x * a.x, dd.y * a.y, dd.x * b.x, dd.y * b.y),
        (q0 & m) | (((h0 >> sl) & one) << four),
        (q1 & m) | (((h1 >> sl) & one) << four),
        ((q0 >> four) & m) | (((h0 >> sh) & one) << four),
        ((q1 >> four) & m) | (((h1 >> sh) & one) << four),
    );
}

fn wu_dot(v: WU, xb: array<vec4<f32>, 16>, xs: f32, k0: u32, k: u32) -> f32 {
    let s1 = dot16b(v.c0, xb[0], xb[1], xb[2], xb[3]) + dot16b(v.c1, xb[4], xb[5], xb[6], xb[7]);
    let s2 = dot16b(v.c2, xb[8], xb[9], xb[10], xb[11]) + dot16b(v.c3, xb[12], xb[13], xb[14], xb[15]);
    let x1 = sum16(xb[0], xb[1], xb[2], xb[3]) + sum16(xb[4], xb[5], xb[6], xb[7]);
    let x2 = xs - x1;
    return v.dm.x * s1 - v.dm.y * x1 + v.dm.z * s2 - v.dm.w * x2;
}
#endif

// ---- q6_k: ql[128] | qh[64] | scales[16] i8 | d f16 ----
// value 128n + 32k + l (k = 0..4, l = 0..32): low 4 bits from nibble k / 2
// of ql[64n + 32 (k % 2) + l], high 2 bits from bits 2k of qh[32n + l];
// value = (d * scales[i / 16]) * (code - 32).
#ifdef FMT_Q6_K
// The i8 scale at byte b, times d.
fn q6_scale(b: u32, d: f32) -> f32 {
    return f32(bitcast<i32>(rd16(b & ~1u) << (24u - (b & 1u) * 8u)) >> 24u) * d;
}

fn w_chunk(rb: u32, c: u32) -> W8 {
    let o = rb + (c >> 5u) * 210u;
    let i0 = (c & 31u) * 8u;
    let n = i0 >> 7u;
    let kk = (i0 >> 5u) & 3u;
    let l0 = i0 & 31u;
    let pl = o + 64u * n + 32u * (kk & 1u) + l0;
    let ph = o + 128u + 32u * n + l0;
    let sl = (kk >> 1u) * 4u;
    let a = nib4(rd32(pl), sl) | ((nib4(rd32(ph), 2u * kk) & vec4<u32>(3u)) << vec4<u32>(4u));
    let b = nib4(rd32(pl + 4u), sl) | ((nib4(rd32(ph + 4u), 2u * kk) & vec4<u32>(3u)) << vec4<u32>(4u));
    let s = q6_scale(o + 192u + (i0 >> 4u), f16_at(o + 208u));
    return W8((vec4<f32>(a) - 32.0) * s, (vec4<f32>(b) - 32.0) * s);
}

const UNIT: u32 = 64u;
struct WU {
    // d * scale of the four sub-blocks of 16
    s: vec4<f32>,
    // codes (0..63) as bytes, one sub-block of 16 each
    c0: vec4<u32>,
    c1: vec4<u32>,
    c2: vec4<u32>,
    c3: vec4<u32>,
}

fn wu_load(rb: u32, u: u32) -> WU {
    let o = rb + (u >> 2u) * 210u;
    let n = (u >> 1u) & 1u;
    let h = u & 1u;
    let m = vec4<u32>(0x0f0f0f0fu);
    let three = vec4<u32>(0x03030303u);
    let four = vec4<u32>(4u);
    let sl = vec4<u32>(4u * h);
    let sh = vec4<u32>(4u * h + 2u);
    let qa0 = rd32x4(o + 64u * n);
    let qa1 = rd32x4(o + 64u * n + 16u);
    let qb0 = rd32x4(o + 64u * n + 32u);
    let qb1 = rd32x4(o + 64u * n + 48u);
    let qh0 = rd32x4(o + 128u + 32u * n);
    let qh1 = rd32x4(o + 144u + 32u * n);
    let d = f16_at(o + 208u);
    let sw = bitcast<i32>(rd32(o + 192u + 8u * n + 4u * h));
    let sc = vec4<f32>(vec4<i32>(sw << 24u, sw << 16u, sw << 8u, sw) >> vec4<u32>(24u)) * d;
    return WU(
        sc,
        ((qa0 >> sl) & m) | (((qh0 >> sl) & three) << four),
        ((qa1 >> sl) & m) | (((qh1 >> sl) & three) << four),
        ((qb0 >> sl) & m) | (((qh0 >> sh) & three) << four),
        ((qb1 >> sl) & m) | (((qh1 >> sh) & three) << four),
    );
}

fn wu_dot(v: WU, xb: array<vec4<f32>, 16>, xs: f32, k0: u32, k: u32) -> f32 {
    let a = dot16b(v.c0, xb[0], xb[1], xb[2], xb[3]) - 32.0 * sum16(xb[0], xb[1], xb[2], xb[3]);
    let b = dot16b(v.c1, xb[4], xb[5], xb[6], xb[7]) - 32.0 * sum16(xb[4], xb[5], xb[6], xb[7]);
    let c = dot16b(v.c2, xb[8], xb[9], xb[10], xb[11]) - 32.0 * sum16(xb[8], xb[9], xb[10], xb[11]);
    let e = dot16b(v.c3, xb[12], xb[13], xb[14], xb[15]) - 32.0 * sum16(xb[12], xb[13], xb[14], xb[15]);
    return dot(v.s, vec4<f32>(a, b, c, e));
}
#endif
