//! Kernel launchers. Each `kernels/<op>.rs` pairs a `launch` that records
//! into a [`Recorder`](crate::Recorder) with a `reference` CPU function of the
//! same semantics; the tests compare the two.
//!
//! Conventions of every launcher: activations, outputs and caches are f32;
//! every tensor argument is a [`BufView`]; views start at a multiple of the
//! adapter's storage alignment (256 on all common adapters) except weights,
//! which may start at any offset their format allows (their binding is moved
//! down to an aligned offset and the rest passed to the kernel). An input and
//! an output of one launch must be different buffers (wgpu forbids binding one
//! buffer writable and read-only in the same dispatch).

pub mod act_mul;
pub mod attention;
pub mod elementwise;
pub mod kv_append;
pub mod kv_compact;
pub mod matmul;
pub mod moe;
pub mod moe_sparse;
pub mod paged;
pub mod rmsnorm;
pub mod rope;

use std::fmt;

use airllm_quant::Codec;

use crate::device::GpuContext;
use crate::error::{GpuError, Result};
use crate::pool::BufView;

/// How a weight tensor is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WeightFormat {
    /// 32-bit floats.
    F32,
    /// IEEE half floats (widened in registers).
    F16,
    /// bfloat16 (widened in registers as `u32 << 16`; never converted to f16).
    Bf16,
    /// Block-quantized (ggml layouts), dequantized inside the kernel.
    Quant(Codec),
}

impl WeightFormat {
    /// Every format.
    pub const ALL: [WeightFormat; 12] = [
        WeightFormat::F32,
        WeightFormat::F16,
        WeightFormat::Bf16,
        WeightFormat::Quant(Codec::Q8_0),
        WeightFormat::Quant(Codec::Q4_0),
        WeightFormat::Quant(Codec::Q4_1),
        WeightFormat::Quant(Codec::Nf4),
        WeightFormat::Quant(Codec::Q5_0),
        WeightFormat::Quant(Codec::Q5_1),
        WeightFormat::Quant(Codec::Q4K),
        WeightFormat::Quant(Codec::Q5K),
        WeightFormat::Quant(Codec::Q6K),
    ];

    /// Lower-case name (`f32`, `f16`, `bf16`, `q8_0`, ...).
    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::F32 => "f32",
            WeightFormat::F16 => "f16",
            WeightFormat::Bf16 => "bf16",
            WeightFormat::Quant(c) => c.name(),
        }
    }

    /// Whether this is F32, F16 or Bf16.
    pub fn is_dense(self) -> bool {
        !matches!(self, WeightFormat::Quant(_))
    }

    /// Bytes per element of a dense format (`None` for quantized).
    pub fn elem_bytes(self) -> Option<u64> {
        match self {
            WeightFormat::F32 => Some(4),
            WeightFormat::F16 | WeightFormat::Bf16 => Some(2),
            WeightFormat::Quant(_) => None,
        }
    }

    /// Bytes of one row of `cols` values (quantized: whole blocks, zero-padded).
    pub fn row_bytes(self, cols: u64) -> u64 {
        match self {
            WeightFormat::Quant(c) => c.row_bytes(cols as usize) as u64,
            _ => cols * self.elem_bytes().unwrap_or(4),
        }
    }

    /// Values per row as stored (quantized rows are padded to whole blocks).
    pub fn padded_cols(self, cols: u64) -> u64 {
        match self {
            WeightFormat::Quant(c) => cols.div_ceil(c.block_size() as u64) * c.block_size() as u64,
            _ => cols,
        }
    }

    /// Alignment a tensor's start offset needs (element size; 2 for the
    /// quantized layouts, whose rows start at even offsets).
    pub fn offset_align(self) -> u64 {
        self.elem_bytes().unwrap_or(2)
    }
}

impl fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A weight view re-based for binding: the binding starts at an aligned
/// offset at or before the tensor, `skip` bytes before it.
pub(crate) struct Rebased<'a> {
    pub view: BufView<'a>,
    pub skip: u64,
}

/// Moves `view`'s start down to the storage alignment; the binding then
/// covers `skip + view.size` bytes.
pub(crate) fn rebase<'a>(ctx: &GpuContext, view: BufView<'a>) -> Rebased<'a> {
    let align = ctx.caps().storage_align.max(4);
    let start = view.offset / align * align;
    let skip = view.offset - start;
    Rebased { view: BufView::new(view.buffer, start, skip + view.size), skip }
}

/// Checks `v` fits in u32 (kernel parameters are u32).
pub(crate) fn u32_arg(op: &'static str, arg: &'static str, v: u64) -> Result<u32> {
    u32::try_from(v).map_err(|_| GpuError::arg(op, arg, format!("{v} does not fit in 32 bits")))
}

/// Checks a condition, else an [`GpuError::InvalidArgument`].
pub(crate) fn ensure(ok: bool, op: &'static str, arg: &'static str, reason: impl FnOnce() -> String) -> Result<()> {
    if ok { Ok(()) } else { Err(GpuError::arg(op, arg, reason())) }
}

/// Parameters as little-endian words, the layout of every kernel's uniform
/// struct (u32 and f32 fields, 16-byte multiple). At most [`Params::MAX`]
/// words: pushing more is an error at [`Params::bytes`], never a silent cut.
#[derive(Default)]
pub(crate) struct Params {
    words: [u32; Params::MAX],
    len: usize,
}

impl Params {
    /// Words a kernel's parameter struct may have.
    pub const MAX: usize = 16;

    pub fn u(mut self, v: u32) -> Self {
        if self.len < self.words.len() {
            self.words[self.len] = v;
        }
        self.len += 1;
        self
    }

    pub fn f(self, v: f32) -> Self {
        self.u(v.to_bits())
    }

    /// The words as bytes, padded to 16 bytes.
    pub fn bytes(&self) -> Result<&[u8]> {
        if self.len > Self::MAX {
            return Err(GpuError::arg(
                "kernel launch",
                "params",
                format!("{} parameter words exceed the {} a kernel's uniform struct holds", self.len, Self::MAX),
            ));
        }
        let n = self.len.div_ceil(4) * 4;
        Ok(bytemuck::cast_slice(&self.words[..n.max(4)]))
    }
}

/// Workgroups for `threads` threads of `wg` each.
pub(crate) fn groups_for(ctx: &GpuContext, threads: u64, wg: u32) -> Result<(u32, u32)> {
    crate::recorder::grid(ctx, threads.div_ceil(u64::from(wg)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_bytes_per_format() {
        assert_eq!(WeightFormat::F32.row_bytes(10), 40);
        assert_eq!(WeightFormat::Bf16.row_bytes(10), 20);
        assert_eq!(WeightFormat::Quant(Codec::Q4_0).row_bytes(33), 36);
        assert_eq!(WeightFormat::Quant(Codec::Nf4).row_bytes(65), 68);
        assert_eq!(WeightFormat::Quant(Codec::Q8_0).padded_cols(33), 64);
    }

    #[test]
    fn params_pad_to_16_bytes() {
        let p = Params::default().u(1).f(2.0).u(3);
        assert_eq!(p.bytes().unwrap().len(), 16);
        let p = Params::default().u(1).u(2).u(3).u(4).u(5);
        assert_eq!(p.bytes().unwrap().len(), 32);
    }

    #[test]
    fn params_overflow_is_an_error() {
        let mut p = Params::default();
        for i in 0..Params::MAX as u32 {
            p = p.u(i);
        }
        assert!(p.bytes().is_ok());
        let e = p.u(99).bytes().unwrap_err().to_string();
        assert!(e.contains("17 parameter words"), "{e}");
    }
}
