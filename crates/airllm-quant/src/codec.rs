//! [`Codec`]: the codec enum, the row/matrix drivers shared by every codec,
//! and the [`BlockCodec`] trait each block layout implements.

use std::fmt;
use std::str::FromStr;

use half::f16;
use rayon::prelude::*;

use crate::nf4::BlockNf4;
use crate::q4_0::BlockQ4_0;
use crate::q4_1::BlockQ4_1;
use crate::q4_k::BlockQ4K;
use crate::q5_0::BlockQ5_0;
use crate::q5_1::BlockQ5_1;
use crate::q5_k::BlockQ5K;
use crate::q6_k::BlockQ6K;
use crate::q8_0::BlockQ8_0;
use crate::{Floats, QuantError};

/// A block-wise weight codec. Each row of a matrix is cut into blocks of
/// [`block_size`](Codec::block_size) values; each block is stored as
/// [`block_bytes`](Codec::block_bytes) bytes (an f16 scale, sometimes an f16
/// offset, then packed integer codes; the K-quants' 256-value super-blocks
/// hold per-sub-block scales too). See the crate docs for the byte layouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Codec {
    /// 8-bit symmetric, 32 per block, byte-identical to GGUF `Q8_0` (8.5 bits per weight).
    #[serde(rename = "q8_0")]
    Q8_0,
    /// 4-bit symmetric, 32 per block, byte-identical to GGUF `Q4_0` (4.5 bits per weight).
    #[serde(rename = "q4_0")]
    Q4_0,
    /// 4-bit with scale and minimum, 32 per block, byte-identical to GGUF `Q4_1` (5 bits per weight).
    #[serde(rename = "q4_1")]
    Q4_1,
    /// 4-bit NormalFloat (QLoRA code book), 64 per block, f16 absmax (4.25 bits per weight).
    #[serde(rename = "nf4")]
    Nf4,
    /// 5-bit symmetric, 32 per block, byte-identical to GGUF `Q5_0` (5.5 bits per weight).
    #[serde(rename = "q5_0")]
    Q5_0,
    /// 5-bit with scale and minimum, 32 per block, byte-identical to GGUF `Q5_1` (6 bits per weight).
    #[serde(rename = "q5_1")]
    Q5_1,
    /// 4-bit K-quant: 256 per super-block, 8 sub-blocks of 32 with 6-bit scales and
    /// minimums, byte-identical to GGUF `Q4_K` (4.5 bits per weight).
    #[serde(rename = "q4_k")]
    Q4K,
    /// 5-bit K-quant: as `q4_k` with a fifth bit per code, byte-identical to GGUF
    /// `Q5_K` (5.5 bits per weight).
    #[serde(rename = "q5_k")]
    Q5K,
    /// 6-bit symmetric K-quant: 256 per super-block, 16 sub-blocks of 16 with i8
    /// scales, byte-identical to GGUF `Q6_K` (6.5625 bits per weight).
    #[serde(rename = "q6_k")]
    Q6K,
}

/// Calls a generic function with the codec's block type.
macro_rules! dispatch {
    ($codec:expr, $f:ident ( $($arg:expr),* )) => {
        match $codec {
            Codec::Q8_0 => $f::<BlockQ8_0>($($arg),*),
            Codec::Q4_0 => $f::<BlockQ4_0>($($arg),*),
            Codec::Q4_1 => $f::<BlockQ4_1>($($arg),*),
            Codec::Nf4 => $f::<BlockNf4>($($arg),*),
            Codec::Q5_0 => $f::<BlockQ5_0>($($arg),*),
            Codec::Q5_1 => $f::<BlockQ5_1>($($arg),*),
            Codec::Q4K => $f::<BlockQ4K>($($arg),*),
            Codec::Q5K => $f::<BlockQ5K>($($arg),*),
            Codec::Q6K => $f::<BlockQ6K>($($arg),*),
        }
    };
}

/// Largest block of any codec (the K-quants' super-block); sizes the stack
/// buffers of the row drivers.
const MAX_BLOCK: usize = crate::kquant::QK_K;
/// Rows handed to one rayon task hold at least this many values, so that
/// matrices of many short rows do not drown in task overhead.
const MIN_TASK_VALUES: usize = 16 * 1024;

impl Codec {
    /// Every codec, in a fixed order.
    pub const ALL: [Codec; 9] = [
        Codec::Q8_0,
        Codec::Q4_0,
        Codec::Q4_1,
        Codec::Nf4,
        Codec::Q5_0,
        Codec::Q5_1,
        Codec::Q4K,
        Codec::Q5K,
        Codec::Q6K,
    ];

    /// The lower-case name used on the command line, in manifests and by serde.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Q8_0 => "q8_0",
            Codec::Q4_0 => "q4_0",
            Codec::Q4_1 => "q4_1",
            Codec::Nf4 => "nf4",
            Codec::Q5_0 => "q5_0",
            Codec::Q5_1 => "q5_1",
            Codec::Q4K => "q4_k",
            Codec::Q5K => "q5_k",
            Codec::Q6K => "q6_k",
        }
    }

    /// Every codec name, comma-separated, in [`Codec::ALL`] order (for messages).
    pub fn names() -> String {
        Codec::ALL.map(Codec::name).join(", ")
    }

    /// Values per block.
    pub const fn block_size(self) -> usize {
        match self {
            Codec::Q8_0 => BlockQ8_0::BLOCK,
            Codec::Q4_0 => BlockQ4_0::BLOCK,
            Codec::Q4_1 => BlockQ4_1::BLOCK,
            Codec::Nf4 => BlockNf4::BLOCK,
            Codec::Q5_0 => BlockQ5_0::BLOCK,
            Codec::Q5_1 => BlockQ5_1::BLOCK,
            Codec::Q4K => BlockQ4K::BLOCK,
            Codec::Q5K => BlockQ5K::BLOCK,
            Codec::Q6K => BlockQ6K::BLOCK,
        }
    }

    /// Bytes per block.
    pub const fn block_bytes(self) -> usize {
        match self {
            Codec::Q8_0 => BlockQ8_0::BYTES,
            Codec::Q4_0 => BlockQ4_0::BYTES,
            Codec::Q4_1 => BlockQ4_1::BYTES,
            Codec::Nf4 => BlockNf4::BYTES,
            Codec::Q5_0 => BlockQ5_0::BYTES,
            Codec::Q5_1 => BlockQ5_1::BYTES,
            Codec::Q4K => BlockQ4K::BYTES,
            Codec::Q5K => BlockQ5K::BYTES,
            Codec::Q6K => BlockQ6K::BYTES,
        }
    }

    /// Storage cost: `block_bytes * 8 / block_size` (8.5, 4.5, 5.0, 4.25, 5.5,
    /// 6.0, 4.5, 5.5, 6.5625).
    pub fn bits_per_weight(self) -> f32 {
        (self.block_bytes() * 8) as f32 / self.block_size() as f32
    }

    /// Largest magnitude that always encodes: beyond it a block's f16 scale
    /// (or q4_1's f16 minimum) may overflow and encoding returns
    /// [`QuantError::ScaleOverflow`].
    pub fn max_encodable(self) -> f32 {
        match self {
            Codec::Q8_0 => BlockQ8_0::LIMIT,
            Codec::Q4_0 => BlockQ4_0::LIMIT,
            Codec::Q4_1 => BlockQ4_1::LIMIT,
            Codec::Nf4 => BlockNf4::LIMIT,
            Codec::Q5_0 => BlockQ5_0::LIMIT,
            Codec::Q5_1 => BlockQ5_1::LIMIT,
            Codec::Q4K => BlockQ4K::LIMIT,
            Codec::Q5K => BlockQ5K::LIMIT,
            Codec::Q6K => BlockQ6K::LIMIT,
        }
    }

    /// Whether this is a K-quant (`q4_k`, `q5_k`, `q6_k`: 256-value super-blocks).
    pub const fn is_k_quant(self) -> bool {
        matches!(self, Codec::Q4K | Codec::Q5K | Codec::Q6K)
    }

    /// The codec the shard writer stores rows of `cols` values in when asked
    /// for this one: itself, except that a K-quant falls back when `cols` is
    /// not a whole number of 256-value super-blocks (padding a 576-wide row
    /// to 768 would cost a third more bytes). The fallbacks are llama.cpp's
    /// (`llama-quantize` does the same for such tensors): `q4_k` -> `q5_0`,
    /// `q5_k` -> `q5_1`, `q6_k` -> `q8_0`, each 32-value blocks with at least
    /// the bits per weight asked for.
    pub const fn for_row(self, cols: usize) -> Codec {
        if !self.is_k_quant() || cols.is_multiple_of(crate::kquant::QK_K) {
            return self;
        }
        match self {
            Codec::Q4K => Codec::Q5_0,
            Codec::Q5K => Codec::Q5_1,
            _ => Codec::Q8_0,
        }
    }

    /// Bytes of one encoded row of `cols` values: whole blocks, the last one
    /// zero-padded.
    pub fn row_bytes(self, cols: usize) -> usize {
        cols.div_ceil(self.block_size()) * self.block_bytes()
    }

    /// Bytes of a `rows x cols` matrix: `rows * row_bytes(cols)`, row `r`
    /// starting at byte `r * row_bytes(cols)`. Saturates at `usize::MAX`
    /// (no buffer can be that large, so the length checks then fail cleanly).
    pub fn matrix_bytes(self, rows: usize, cols: usize) -> usize {
        rows.saturating_mul(self.row_bytes(cols))
    }

    /// Encodes one row into `out`, which must hold exactly
    /// [`row_bytes(x.len())`](Codec::row_bytes) bytes. A partial last block
    /// is encoded as if padded with zeros.
    pub fn encode_row(self, x: Floats<'_>, out: &mut [u8]) -> Result<(), QuantError> {
        check_len("output bytes (Codec::row_bytes(x.len()))", self.row_bytes(x.len()), out.len())?;
        dispatch!(self, encode_row_at(x, out, 0))
    }

    /// Encodes one row of f32 values into a new buffer.
    pub fn encode(self, x: &[f32]) -> Result<Vec<u8>, QuantError> {
        let mut out = vec![0; self.row_bytes(x.len())];
        self.encode_row(Floats::F32(x), &mut out)?;
        Ok(out)
    }

    /// Encodes a row-major `rows x cols` matrix, rows in parallel (rayon).
    /// Each row is encoded independently (see [`encode_row`](Codec::encode_row)).
    pub fn encode_matrix(self, x: Floats<'_>, rows: usize, cols: usize) -> Result<Vec<u8>, QuantError> {
        let bytes = self.checked_matrix_bytes(rows, cols)?;
        let mut out = vec![0; bytes];
        self.encode_matrix_into(x, rows, cols, &mut out)?;
        Ok(out)
    }

    /// Like [`encode_matrix`](Codec::encode_matrix), into `out` of exactly
    /// [`matrix_bytes(rows, cols)`](Codec::matrix_bytes) bytes. On error the
    /// first failing element (lowest flat index) is reported, whatever order
    /// the threads ran in; `out` then holds partial output.
    pub fn encode_matrix_into(self, x: Floats<'_>, rows: usize, cols: usize, out: &mut [u8]) -> Result<(), QuantError> {
        let values = rows.checked_mul(cols).ok_or(QuantError::ShapeOverflow { rows, cols })?;
        check_len("input values (rows * cols)", values, x.len())?;
        check_len("output bytes (Codec::matrix_bytes)", self.checked_matrix_bytes(rows, cols)?, out.len())?;
        let row_bytes = self.row_bytes(cols);
        if row_bytes == 0 {
            return Ok(());
        }
        let first_error = out
            .par_chunks_mut(row_bytes)
            .with_min_len(rows_per_task(cols))
            .enumerate()
            .filter_map(|(r, o)| {
                let row = x.slice(r * cols..(r + 1) * cols);
                dispatch!(self, encode_row_at(row, o, r * cols)).err().map(|e| (r, e))
            })
            .min_by_key(|(r, _)| *r);
        match first_error {
            Some((_, e)) => Err(e),
            None => Ok(()),
        }
    }

    /// Decodes one row of `cols` values from `bytes` (exactly
    /// [`row_bytes(cols)`](Codec::row_bytes)) into `out` (exactly `cols`).
    /// Padding values of the last block are dropped.
    pub fn decode_row(self, bytes: &[u8], cols: usize, out: &mut [f32]) -> Result<(), QuantError> {
        check_len("encoded row bytes (Codec::row_bytes(cols))", self.row_bytes(cols), bytes.len())?;
        check_len("output values (cols)", cols, out.len())?;
        dispatch!(self, decode_row_into(bytes, out));
        Ok(())
    }

    /// Decodes one row of `cols` values into a new buffer.
    pub fn decode(self, bytes: &[u8], cols: usize) -> Result<Vec<f32>, QuantError> {
        let mut out = vec![0.0; cols];
        self.decode_row(bytes, cols, &mut out)?;
        Ok(out)
    }

    /// Decodes a `rows x cols` matrix (rows in parallel) into a new buffer.
    pub fn decode_matrix(self, bytes: &[u8], rows: usize, cols: usize) -> Result<Vec<f32>, QuantError> {
        let values = rows.checked_mul(cols).ok_or(QuantError::ShapeOverflow { rows, cols })?;
        let mut out = vec![0.0; values];
        self.decode_matrix_into(bytes, rows, cols, &mut out)?;
        Ok(out)
    }

    /// Decodes a `rows x cols` matrix (rows in parallel) into `out` of exactly
    /// `rows * cols` values.
    pub fn decode_matrix_into(self, bytes: &[u8], rows: usize, cols: usize, out: &mut [f32]) -> Result<(), QuantError> {
        let values = rows.checked_mul(cols).ok_or(QuantError::ShapeOverflow { rows, cols })?;
        check_len("encoded bytes (Codec::matrix_bytes)", self.checked_matrix_bytes(rows, cols)?, bytes.len())?;
        check_len("output values (rows * cols)", values, out.len())?;
        let row_bytes = self.row_bytes(cols);
        if row_bytes == 0 {
            return Ok(());
        }
        out.par_chunks_mut(cols)
            .zip(bytes.par_chunks(row_bytes))
            .with_min_len(rows_per_task(cols))
            .for_each(|(o, b)| dispatch!(self, decode_row_into(b, o)));
        Ok(())
    }

    /// Reference dot product of one encoded row with `x` (`cols = x.len()`),
    /// accumulated in f32 the way the GPU kernels do it: per block (K-quants:
    /// per sub-block), the sum of `code * x` in element order, times the
    /// scale (plus `m * sum(x)` for the codecs with a minimum), blocks summed
    /// in order. Used as the CPU
    /// reference of the GEMV kernels.
    ///
    /// # Panics
    /// If `bytes.len() != self.row_bytes(x.len())`.
    pub fn dot_row(self, bytes: &[u8], x: &[f32]) -> f32 {
        assert_eq!(
            bytes.len(),
            self.row_bytes(x.len()),
            "dot_row: {} bytes do not hold one {self} row of {} values",
            bytes.len(),
            x.len()
        );
        dispatch!(self, dot_row_generic(bytes, x))
    }

    /// The documented worst-case `|x - decode(encode(x))|` for the values of
    /// one block (see the crate docs, "Error bounds"). A longer slice is cut
    /// into blocks like a row (the last one zero-padded) and the largest
    /// per-block bound is returned. Non-finite input gives NaN or infinity; a
    /// block that would overflow the scale gives infinity.
    pub fn max_abs_error_bound(self, block: &[f32]) -> f32 {
        dispatch!(self, error_bound_generic(block))
    }

    fn checked_matrix_bytes(self, rows: usize, cols: usize) -> Result<usize, QuantError> {
        rows.checked_mul(self.row_bytes(cols)).ok_or(QuantError::ShapeOverflow { rows, cols })
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Codec {
    type Err = QuantError;

    /// Accepts the names of [`Codec::ALL`] (`q8_0`, `q4_0`, `q4_1`, `nf4`,
    /// `q5_0`, `q5_1`, `q4_k`, `q5_k`, `q6_k`), in any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let lower = s.trim().to_ascii_lowercase();
        Codec::ALL
            .into_iter()
            .find(|c| c.name() == lower)
            .ok_or_else(|| QuantError::UnknownCodec { name: s.to_owned() })
    }
}

/// One block layout: how a block of `BLOCK` f32 values becomes `BYTES` bytes
/// and back. Implemented by the `#[repr(C)]` block structs, whose size is the
/// layout (checked at compile time next to each struct).
pub(crate) trait BlockCodec {
    /// Values per block.
    const BLOCK: usize;
    /// Bytes per block.
    const BYTES: usize;
    /// Magnitudes up to this always encode (see [`Codec::max_encodable`]).
    const LIMIT: f32;
    /// Which codec this is.
    const CODEC: Codec;
    /// Encodes `x` (`BLOCK` finite values) into `out` (`BYTES` bytes).
    fn encode_block(x: &[f32], out: &mut [u8]) -> Result<(), ScaleOverflow>;
    /// Decodes `b` (`BYTES` bytes) into `out` (`BLOCK` values).
    fn decode_block(b: &[u8], out: &mut [f32]);
    /// Dot product of the decoded block `b` with `x` (`BLOCK` values).
    fn dot_block(b: &[u8], x: &[f32]) -> f32;
    /// Per-element error bound for the block `x` (`BLOCK` values).
    fn error_bound(x: &[f32]) -> f32;
}

/// A block's scale (or q4_1 minimum) rounds to infinity in f16.
#[derive(Debug)]
pub(crate) struct ScaleOverflow;

/// Relative slack added to every error bound for f32 rounding in the encoder
/// and decoder (a few ulps of the block's magnitude; far below half a step).
pub(crate) const SLACK: f32 = 1.0 / (1u32 << 18) as f32;

/// Rounds `v` to f16 (round to nearest even, like ggml's `GGML_FP32_TO_FP16`
/// and numpy): the little-endian bytes and the value widened back to f32.
#[inline]
pub(crate) fn to_f16(v: f32) -> Result<([u8; 2], f32), ScaleOverflow> {
    let h = f16::from_f32(v);
    if h.is_finite() { Ok((h.to_le_bytes(), h.to_f32())) } else { Err(ScaleOverflow) }
}

/// Reads the little-endian f16 at `b[at..at + 2]` widened to f32.
#[inline]
pub(crate) fn read_f16(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// `roundf`: round half away from zero, for `|v| < 2^31`, written so that it
/// vectorises on baseline x86-64 (no SSE4.1 `roundps`): truncate, then step
/// away from zero when the (exactly computed) fraction reaches one half.
/// `(v + 0.5).trunc()` would be wrong for 0.49999997.
#[inline(always)]
pub(crate) fn round_half_away(v: f32) -> i32 {
    let t = v as i32;
    let frac = v - t as f32;
    t + i32::from(frac >= 0.5) - i32::from(frac <= -0.5)
}

/// Lanes of the reductions below: independent accumulators let the compiler
/// use SIMD min/max (a plain fold is a serial chain it may not reorder).
const LANES: usize = 8;

/// Largest `|v|` (0 for an empty slice).
#[inline]
pub(crate) fn max_abs(x: &[f32]) -> f32 {
    let mut m = [0.0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for k in 0..LANES {
            let a = c[k].abs();
            m[k] = if a > m[k] { a } else { m[k] };
        }
    }
    m.iter().chain(rest).fold(0.0f32, |acc, v| if v.abs() > acc { v.abs() } else { acc })
}

/// `(min, max)` of `x`, `(f32::MAX, -f32::MAX)` for an empty slice. For
/// finite input this is the pair ggml's loop finds, up to the sign of a zero
/// minimum or maximum (which no codec's output depends on).
#[inline]
pub(crate) fn min_max(x: &[f32]) -> (f32, f32) {
    let mut lo = [f32::MAX; LANES];
    let mut hi = [-f32::MAX; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for k in 0..LANES {
            lo[k] = if c[k] < lo[k] { c[k] } else { lo[k] };
            hi[k] = if c[k] > hi[k] { c[k] } else { hi[k] };
        }
    }
    let min = lo.iter().chain(rest).fold(f32::MAX, |m, &v| if v < m { v } else { m });
    let max = hi.iter().chain(rest).fold(-f32::MAX, |m, &v| if v > m { v } else { m });
    (min, max)
}

fn check_len(what: &'static str, expected: usize, got: usize) -> Result<(), QuantError> {
    if expected == got { Ok(()) } else { Err(QuantError::Length { what, expected, got }) }
}

fn rows_per_task(cols: usize) -> usize {
    (MIN_TASK_VALUES / cols.max(1)).max(1)
}

/// Index of the first non-finite value; the common all-finite case is one
/// branch-free pass.
#[inline]
fn first_non_finite(x: &[f32]) -> Option<usize> {
    if x.iter().fold(true, |ok, v| ok & v.is_finite()) { None } else { x.iter().position(|v| !v.is_finite()) }
}

/// Encodes one row; `base` is the flat index of `x[0]`, for error messages.
fn encode_row_at<C: BlockCodec>(x: Floats<'_>, out: &mut [u8], base: usize) -> Result<(), QuantError> {
    let mut buf = [0.0f32; MAX_BLOCK];
    let block = &mut buf[..C::BLOCK];
    for (i, o) in out.chunks_exact_mut(C::BYTES).enumerate() {
        let start = i * C::BLOCK;
        let n = C::BLOCK.min(x.len() - start);
        let block: &[f32] = match x {
            // Whole f32 blocks are read in place; the rest is widened / padded.
            Floats::F32(v) if n == C::BLOCK => &v[start..start + n],
            _ => {
                x.slice(start..start + n).copy_to_f32(&mut block[..n]);
                block[n..].fill(0.0);
                block
            }
        };
        if let Some(j) = first_non_finite(block) {
            return Err(QuantError::NonFinite { index: base + start + j, value: block[j] });
        }
        C::encode_block(block, o).map_err(|ScaleOverflow| QuantError::ScaleOverflow {
            codec: C::CODEC,
            index: base + start,
            max_abs: max_abs(block),
            limit: C::LIMIT,
        })?;
    }
    Ok(())
}

/// Decodes one row; `out.len()` is the number of columns.
fn decode_row_into<C: BlockCodec>(bytes: &[u8], out: &mut [f32]) {
    let full = out.len() / C::BLOCK;
    for (b, o) in bytes.chunks_exact(C::BYTES).zip(out.chunks_exact_mut(C::BLOCK)) {
        C::decode_block(b, o);
    }
    let rest = out.len() - full * C::BLOCK;
    if rest > 0 {
        let mut buf = [0.0f32; MAX_BLOCK];
        C::decode_block(&bytes[full * C::BYTES..], &mut buf[..C::BLOCK]);
        out[full * C::BLOCK..].copy_from_slice(&buf[..rest]);
    }
}

fn dot_row_generic<C: BlockCodec>(bytes: &[u8], x: &[f32]) -> f32 {
    let mut sum = 0.0f32;
    let mut buf = [0.0f32; MAX_BLOCK];
    for (b, xs) in bytes.chunks_exact(C::BYTES).zip(x.chunks(C::BLOCK)) {
        sum += if xs.len() == C::BLOCK {
            C::dot_block(b, xs)
        } else {
            buf[..xs.len()].copy_from_slice(xs);
            buf[xs.len()..].fill(0.0);
            C::dot_block(b, &buf[..C::BLOCK])
        };
    }
    sum
}

fn error_bound_generic<C: BlockCodec>(x: &[f32]) -> f32 {
    let mut buf = [0.0f32; MAX_BLOCK];
    x.chunks(C::BLOCK).fold(0.0f32, |bound, xs| {
        buf[..xs.len()].copy_from_slice(xs);
        buf[xs.len()..C::BLOCK].fill(0.0);
        let b = C::error_bound(&buf[..C::BLOCK]);
        // NaN-propagating maximum: a non-finite block must not vanish.
        if b > bound || b.is_nan() { b } else { bound }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_half_away_matches_roundf() {
        let mut v = -200.0f32;
        while v <= 200.0 {
            assert_eq!(round_half_away(v), v.round() as i32, "{v}");
            v += 1.0 / 64.0;
        }
        for v in [0.49999997f32, -0.49999997, 0.5, -0.5, 1.5, -2.5, 126.5, -127.49999, 1e-30, -0.0] {
            assert_eq!(round_half_away(v), v.round() as i32, "{v}");
        }
    }

    #[test]
    fn names_parse_and_print() {
        for c in Codec::ALL {
            assert_eq!(c.name().parse::<Codec>().ok(), Some(c));
            assert_eq!(c.name().to_uppercase().parse::<Codec>().ok(), Some(c));
            assert_eq!(c.to_string(), c.name());
            assert_eq!(c.row_bytes(c.block_size() + 1), 2 * c.block_bytes());
        }
        let e = "q3_k".parse::<Codec>().expect_err("unknown name");
        assert!(e.to_string().contains("q8_0, q4_0, q4_1, nf4, q5_0, q5_1, q4_k, q5_k, q6_k"), "{e}");
        assert_eq!(
            Codec::ALL.map(|c| (c.block_size(), c.block_bytes())),
            [(32, 34), (32, 18), (32, 20), (64, 34), (32, 22), (32, 24), (256, 144), (256, 176), (256, 210)]
        );
        assert_eq!(Codec::ALL.map(Codec::bits_per_weight), [8.5, 4.5, 5.0, 4.25, 5.5, 6.0, 4.5, 5.5, 6.5625]);
    }

    #[test]
    fn k_quants_fall_back_for_partial_super_blocks() {
        for c in Codec::ALL {
            assert_eq!(c.for_row(1536), c, "{c}");
            assert_eq!(c.for_row(0), c, "{c}");
        }
        assert_eq!(Codec::Q4K.for_row(576), Codec::Q5_0);
        assert_eq!(Codec::Q5K.for_row(576), Codec::Q5_1);
        assert_eq!(Codec::Q6K.for_row(100), Codec::Q8_0);
        assert_eq!(Codec::Q4_1.for_row(100), Codec::Q4_1);
        for c in Codec::ALL {
            // a fallback never stores fewer bits than asked for
            assert!(c.for_row(576).bits_per_weight() >= c.bits_per_weight(), "{c}");
        }
    }

    #[test]
    fn length_errors_name_the_argument() {
        let e = Codec::Q8_0.encode_row(Floats::F32(&[0.0; 40]), &mut [0; 34]).expect_err("short");
        assert!(matches!(e, QuantError::Length { expected: 68, got: 34, .. }), "{e}");
        let e = Codec::Q4_0.decode_matrix(&[0; 18], 2, 32).expect_err("short");
        assert!(matches!(e, QuantError::Length { expected: 36, got: 18, .. }), "{e}");
        let e = Codec::Q4_0.encode_matrix(Floats::F32(&[]), usize::MAX, 2).expect_err("overflow");
        assert!(matches!(e, QuantError::ShapeOverflow { .. }), "{e}");
    }

    #[test]
    fn empty_rows_and_matrices() {
        for c in Codec::ALL {
            assert_eq!(c.encode(&[]).ok(), Some(vec![]));
            assert_eq!(c.encode_matrix(Floats::F32(&[]), 5, 0).ok(), Some(vec![]));
            assert_eq!(c.decode_matrix(&[], 5, 0).ok(), Some(vec![]));
            assert_eq!(c.decode_matrix(&[], 0, 7).ok(), Some(vec![]));
            assert_eq!(c.dot_row(&[], &[]), 0.0);
        }
    }
}
