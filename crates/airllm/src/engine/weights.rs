//! Where a unit's weights live on the GPU and how its tensors are bound: a unit's
//! whole shard file is one buffer (resident, or a ring slot it was copied into),
//! and each tensor is a view at its 256-byte-aligned file offset.

use airllm_format::{Role, ShardEntry, StorageFormat, TensorEntry};
use airllm_gpu::wgpu;
use airllm_gpu::{BufView, WeightFormat};

use crate::error::{EngineError, Result};

/// A tensor ready to bind.
#[derive(Clone, Copy, Debug)]
pub struct BoundTensor<'a> {
    /// The bytes.
    pub view: BufView<'a>,
    /// How they are stored.
    pub format: WeightFormat,
    /// Rows (first dim; 1 for vectors).
    pub rows: u32,
    /// Columns (last dim).
    pub cols: u32,
}

/// One unit's shard, bound to the buffer that holds its bytes.
#[derive(Clone, Copy, Debug)]
pub struct UnitWeights<'a> {
    /// The buffer (offset 0 = file offset 0).
    pub buffer: &'a wgpu::Buffer,
    /// The manifest entry.
    pub entry: &'a ShardEntry,
}

/// Map a stored format to the kernel's.
pub fn weight_format(f: StorageFormat) -> WeightFormat {
    match f {
        StorageFormat::Dense(airllm_format::DType::F32) => WeightFormat::F32,
        StorageFormat::Dense(airllm_format::DType::F16) => WeightFormat::F16,
        StorageFormat::Dense(airllm_format::DType::Bf16) => WeightFormat::Bf16,
        StorageFormat::Quant(c) => WeightFormat::Quant(c),
    }
}

fn bind<'a>(buffer: &'a wgpu::Buffer, t: &TensorEntry) -> BoundTensor<'a> {
    let cols = t.shape.last().copied().unwrap_or(1);
    let rows: usize = t.shape.iter().rev().skip(1).product();
    BoundTensor {
        view: BufView::new(buffer, t.offset, t.bytes),
        format: weight_format(t.format),
        rows: rows.max(1) as u32,
        cols: cols as u32,
    }
}

impl<'a> UnitWeights<'a> {
    /// The tensor with `role`, if the unit has it.
    pub fn get(&self, role: Role) -> Option<BoundTensor<'a>> {
        self.entry.tensor(role).map(|t| bind(self.buffer, t))
    }

    /// The tensor with `role`, or an error naming the shard.
    pub fn need(&self, role: Role) -> Result<BoundTensor<'a>> {
        self.get(role).ok_or_else(|| {
            EngineError::invalid(self.entry.file.clone(), format!("shard has no {role} tensor; re-run `airllm shard`"))
        })
    }

    /// The first tensor of the unit (the lm_head, or the embedding for a tied model).
    pub fn first(&self) -> Option<BoundTensor<'a>> {
        self.entry.tensors.first().map(|t| bind(self.buffer, t))
    }
}
