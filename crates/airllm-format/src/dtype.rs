//! Element types of stored tensors: dense floats, or a block codec from `airllm-quant`.

use std::fmt;
use std::str::FromStr;

use airllm_quant::Codec;
use serde::{Deserialize, Serialize};

/// A dense floating-point element type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16 (the top half of an f32).
    Bf16,
}

impl DType {
    /// Bytes per element.
    pub const fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::Bf16 => 2,
        }
    }
    /// Lower-case name as in the manifest.
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::Bf16 => "bf16",
        }
    }
    /// Map a safetensors dtype, if supported.
    pub fn from_safetensors(d: safetensors::Dtype) -> Option<DType> {
        match d {
            safetensors::Dtype::F32 => Some(DType::F32),
            safetensors::Dtype::F16 => Some(DType::F16),
            safetensors::Dtype::BF16 => Some(DType::Bf16),
            _ => None,
        }
    }
    /// The safetensors name ("F32", "F16", "BF16").
    pub const fn safetensors_name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::Bf16 => "BF16",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a tensor's bytes are stored: dense elements or codec blocks (rows padded to whole blocks).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum StorageFormat {
    /// Dense elements, row-major.
    Dense(DType),
    /// Block-wise codec; each row encoded independently, see `airllm_quant`.
    Quant(Codec),
}

impl StorageFormat {
    /// Bytes needed for a tensor of this logical shape (row-major; last dim is the row).
    /// Saturates at `usize::MAX` for shapes whose size overflows (see
    /// [`StorageFormat::checked_byte_len`] to tell them apart).
    pub fn byte_len(self, shape: &[usize]) -> usize {
        self.checked_byte_len(shape).unwrap_or(usize::MAX)
    }

    /// Bytes needed for a tensor of this logical shape, or `None` when the element
    /// count or the byte count overflows (a damaged or hostile manifest or header).
    pub fn checked_byte_len(self, shape: &[usize]) -> Option<usize> {
        let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))?;
        match self {
            StorageFormat::Dense(d) => numel.checked_mul(d.size()),
            StorageFormat::Quant(c) => {
                let cols = shape.last().copied().unwrap_or(1);
                let rows = numel.checked_div(cols).unwrap_or(0);
                let blocks = cols.div_ceil(c.block_size());
                blocks.checked_mul(c.block_bytes())?.checked_mul(rows)
            }
        }
    }
    /// Name as written in the manifest: "f32", "bf16", "q8_0", "nf4", ...
    pub fn name(self) -> &'static str {
        match self {
            StorageFormat::Dense(d) => d.name(),
            StorageFormat::Quant(c) => c.name(),
        }
    }
    /// The dense dtype, if dense.
    pub fn dense(self) -> Option<DType> {
        match self {
            StorageFormat::Dense(d) => Some(d),
            StorageFormat::Quant(_) => None,
        }
    }
}

impl fmt::Display for StorageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for StorageFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "f32" => Ok(StorageFormat::Dense(DType::F32)),
            "f16" => Ok(StorageFormat::Dense(DType::F16)),
            "bf16" => Ok(StorageFormat::Dense(DType::Bf16)),
            other => other
                .parse::<Codec>()
                .map(StorageFormat::Quant)
                .map_err(|_| format!("unknown storage format {other:?} (f32, f16, bf16, q8_0, q4_0, q4_1, nf4)")),
        }
    }
}

impl Serialize for StorageFormat {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for StorageFormat {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Widen stored dense elements (little-endian bytes) to f32.
pub fn dense_to_f32(dtype: DType, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        DType::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        DType::F16 => {
            bytes.chunks_exact(2).map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()).collect()
        }
        DType::Bf16 => {
            bytes.chunks_exact(2).map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()).collect()
        }
    }
}
