//! The matmul driver: checks the arguments, quantizes the activations once,
//! cuts the rows into blocks for the pool and walks the token tiles of
//! each block (see the module docs of [`super`], "Tiling").

use std::cell::RefCell;

use super::act::{Code, QAct, QK_ACT, Scratch};
use super::{Kernels, Matmul, MatmulError, MatmulShape, Precision, QuantSet, WeightFormat};
use crate::pool::Parallel;

/// Rows per kernel call and per unit of work handed to a thread. 16 rows of
/// the largest SmolLM2 / Llama-8B rows (q4_1, k = 1536 / 14336) are 15 KB /
/// 143 KB: they stay in L1 / L2 while every token tile reuses them.
pub const ROW_BLOCK: usize = 16;
/// Tokens computed together per weight row: each weight block is loaded
/// (and unpacked) once for this many tokens, held in registers.
pub const TOKEN_TILE: usize = 4;

/// Below this many activation values a matmul quantizes them on the calling
/// thread (a pool round trip costs more than the work).
const PARALLEL_QUANTIZE: usize = 1 << 15;

/// The output written from several threads: disjoint `(token, row)` cells.
#[derive(Clone, Copy)]
struct Out {
    ptr: *mut f32,
    len: usize,
}
// SAFETY: the threads write disjoint elements (each row of the matmul belongs
// to exactly one row block, each row block to one thread); the caller's
// `&mut [f32]` outlives the pool job.
unsafe impl Send for Out {}
// SAFETY: as above.
unsafe impl Sync for Out {}

impl Out {
    /// Writes `v` into element `i`.
    ///
    /// # Safety
    /// No other thread may access element `i` during the job.
    #[inline(always)]
    unsafe fn update(self, i: usize, v: f32, accumulate: bool) {
        assert!(i < self.len, "matmul output index {i} out of {}", self.len);
        // SAFETY: in bounds (checked above); exclusive per the contract.
        unsafe {
            let p = self.ptr.add(i);
            *p = if accumulate { *p + v } else { v };
        }
    }
}

pub(super) fn run<P: Parallel>(
    kern: &Kernels,
    m: &Matmul<'_>,
    y: &mut [f32],
    scratch: &mut Scratch,
    pool: &P,
) -> Result<(), MatmulError> {
    check(m, y)?;
    let s = m.shape;
    let out = Out { ptr: y.as_mut_ptr(), len: y.len() };
    let row_bytes = m.format.row_bytes(s.k);
    match m.format {
        WeightFormat::Quant(codec) => match m.precision {
            Precision::Fast => quantized(kern, &kern.fast, codec, m, out, scratch, pool),
            Precision::Precise => quantized(kern, &kern.precise, codec, m, out, scratch, pool),
            Precision::Exact => quantized(kern, &kern.exact, codec, m, out, scratch, pool),
        },
        WeightFormat::F32 | WeightFormat::F16 | WeightFormat::Bf16 => {
            let f = match m.format {
                WeightFormat::F32 => kern.f32,
                WeightFormat::F16 => kern.f16,
                _ => kern.bf16,
            };
            tiles(pool, m, out, |r0, nr, tokens, tile| {
                f(&m.weight[r0 * row_bytes..(r0 + nr) * row_bytes], s.k, m.x, s.x_stride, tokens, tile)
            });
        }
    }
    Ok(())
}

/// A quantized matmul with the kernels of `set` (or, for a codec without
/// one, through its decoder and the f32 kernel).
fn quantized<C: Code, P: Parallel>(
    kern: &Kernels,
    set: &QuantSet<C>,
    codec: crate::Codec,
    m: &Matmul<'_>,
    out: Out,
    scratch: &mut Scratch,
    pool: &P,
) {
    let s = m.shape;
    let row_bytes = m.format.row_bytes(s.k);
    match set.get(codec).filter(|_| !kern.decode_only) {
        Some(f) => {
            let kp = s.k.div_ceil(codec.block_size()) * codec.block_size();
            let act = quantize(set, m.x, &s, kp, scratch, pool);
            tiles(pool, m, out, |r0, nr, tokens, tile| {
                f(&m.weight[r0 * row_bytes..(r0 + nr) * row_bytes], row_bytes, &act, tokens, tile)
            });
        }
        None => {
            let f32_rows = kern.f32;
            tiles(pool, m, out, |r0, nr, tokens, tile| {
                DECODED.with_borrow_mut(|buf| {
                    // One decode of the row block per token tile is wasteful for long
                    // prompts, but this path only serves codecs still without a kernel.
                    if buf.len() < nr * s.k {
                        buf.resize(nr * s.k, 0.0);
                    }
                    let rows = &mut buf[..nr * s.k];
                    for (i, row) in rows.chunks_exact_mut(s.k).enumerate() {
                        let bytes = &m.weight[(r0 + i) * row_bytes..(r0 + i + 1) * row_bytes];
                        if codec.decode_row(bytes, s.k, row).is_err() {
                            // Unreachable after `check`; never return silent garbage.
                            row.fill(f32::NAN);
                        }
                    }
                    f32_rows(f32_bytes(rows), s.k, m.x, s.x_stride, tokens, tile);
                })
            });
        }
    }
}

thread_local! {
    /// Decoded rows of the fallback path, per thread, grown once.
    static DECODED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

fn f32_bytes(v: &[f32]) -> &[u8] {
    // SAFETY: any f32 is 4 plain bytes; u8 has alignment 1; the length is exact.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

/// Quantizes the `t` token rows of `x` into `scratch`, padded to `kp`.
fn quantize<'s, C: Code, P: Parallel>(
    set: &QuantSet<C>,
    x: &[f32],
    s: &MatmulShape,
    kp: usize,
    scratch: &'s mut Scratch,
    pool: &P,
) -> QAct<'s, C> {
    let nb = kp / QK_ACT;
    let terms = set.terms;
    let n = kp * terms;
    let (q, d, sums) = scratch.buffers::<C>(s.t, kp, terms);
    let quantize_row = set.quantize;
    if s.t == 1 || s.t * s.k < PARALLEL_QUANTIZE || Parallel::threads(pool) == 1 {
        let rows = q.chunks_exact_mut(n).zip(d.chunks_exact_mut(nb)).zip(sums.chunks_exact_mut(nb));
        for (t, ((q, d), sums)) in rows.enumerate() {
            quantize_row(&x[t * s.x_stride..t * s.x_stride + s.k], q, d, sums);
        }
    } else {
        struct Bufs<C>(*mut C, *mut f32, *mut f32);
        // SAFETY: each token row of the buffers is written by one thread only.
        unsafe impl<C> Sync for Bufs<C> {}
        let bufs = Bufs(q.as_mut_ptr(), d.as_mut_ptr(), sums.as_mut_ptr());
        let bufs = &bufs;
        pool.parallel_for(s.t, |tokens| {
            for t in tokens {
                // SAFETY: token rows are disjoint and in bounds (`buffers` sized them
                // for `s.t` rows); no other reference to them exists during the job.
                let (q, d, sums) = unsafe {
                    (
                        std::slice::from_raw_parts_mut(bufs.0.add(t * n), n),
                        std::slice::from_raw_parts_mut(bufs.1.add(t * nb), nb),
                        std::slice::from_raw_parts_mut(bufs.2.add(t * nb), nb),
                    )
                };
                quantize_row(&x[t * s.x_stride..t * s.x_stride + s.k], q, d, sums);
            }
        });
    }
    let (q, d, sums) = (&*q, &*d, &*sums);
    QAct { q, d, s: sums, kp, terms }
}

/// Runs `kernel(first row, rows, tokens, tile)` over every row block and
/// token tile, rows split over the pool, and stores each tile into `out`.
fn tiles<P: Parallel, K>(pool: &P, m: &Matmul<'_>, out: Out, kernel: K)
where
    K: Fn(usize, usize, std::ops::Range<usize>, &mut [f32]) + Sync,
{
    let s = m.shape;
    let blocks = s.n.div_ceil(ROW_BLOCK);
    pool.parallel_for(blocks, |range| {
        let mut tile = [0.0f32; ROW_BLOCK * TOKEN_TILE];
        for blk in range {
            let r0 = blk * ROW_BLOCK;
            let nr = ROW_BLOCK.min(s.n - r0);
            let mut t0 = 0;
            while t0 < s.t {
                let nt = TOKEN_TILE.min(s.t - t0);
                let tile = &mut tile[..nr * nt];
                kernel(r0, nr, t0..t0 + nt, tile);
                for i in 0..nr {
                    let b = m.bias.map_or(0.0, |b| b[r0 + i]);
                    for j in 0..nt {
                        let at = (t0 + j) * s.y_stride + s.y_off + r0 + i;
                        // SAFETY: row r0 + i belongs to this row block alone.
                        unsafe { out.update(at, tile[i * nt + j] + b, s.accumulate) };
                    }
                }
                t0 += nt;
            }
        }
    });
}

fn check(m: &Matmul<'_>, y: &[f32]) -> Result<(), MatmulError> {
    let s = m.shape;
    let shape = |reason| Err(MatmulError::Shape { shape: s, reason });
    if s.t == 0 || s.n == 0 || s.k == 0 {
        return shape("t, n and k must be positive");
    }
    if s.x_stride < s.k {
        return shape("x_stride is less than k");
    }
    if s.y_off.checked_add(s.n).is_none_or(|e| e > s.y_stride) {
        return shape("y_off + n exceeds y_stride");
    }
    let short = |what, unit, need: Option<usize>, got| match need {
        Some(need) if got >= need => Ok(()),
        need => Err(MatmulError::TooShort { what, unit, need: need.unwrap_or(usize::MAX), got, shape: s }),
    };
    let rows_end = |stride: usize, last: usize| (s.t - 1).checked_mul(stride).and_then(|v| v.checked_add(last));
    short("weight", "bytes", s.n.checked_mul(m.format.row_bytes(s.k)), m.weight.len())?;
    short("x", "values", rows_end(s.x_stride, s.k), m.x.len())?;
    short("y", "values", rows_end(s.y_stride, s.y_off + s.n), y.len())?;
    if let Some(b) = m.bias {
        short("bias", "values", Some(s.n), b.len())?;
    }
    Ok(())
}
