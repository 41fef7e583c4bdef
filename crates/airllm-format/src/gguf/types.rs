//! ggml tensor types: ids as stored in GGUF tensor infos, block sizes, and how
//! each one is offered to the shard writer.

use std::fmt;

use airllm_quant::Codec;

use crate::dtype::{DType, StorageFormat};

/// A ggml tensor type, as numbered in GGUF tensor infos (`ggml_type` in ggml.h).
///
/// Every type llama.cpp has written is listed, so that sizes can be checked and
/// errors can name the type; only some of them can be read (see
/// [`GgmlType::offered_as`]).
#[allow(non_camel_case_types, missing_docs)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
}

/// Values per K-quant super-block.
pub const QK_K: usize = 256;

impl GgmlType {
    /// Every known type.
    pub const ALL: [GgmlType; 32] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q8_1,
        GgmlType::Q2_K,
        GgmlType::Q3_K,
        GgmlType::Q4_K,
        GgmlType::Q5_K,
        GgmlType::Q6_K,
        GgmlType::Q8_K,
        GgmlType::IQ2_XXS,
        GgmlType::IQ2_XS,
        GgmlType::IQ3_XXS,
        GgmlType::IQ1_S,
        GgmlType::IQ4_NL,
        GgmlType::IQ3_S,
        GgmlType::IQ2_S,
        GgmlType::IQ4_XS,
        GgmlType::I8,
        GgmlType::I16,
        GgmlType::I32,
        GgmlType::I64,
        GgmlType::F64,
        GgmlType::IQ1_M,
        GgmlType::BF16,
        GgmlType::TQ1_0,
        GgmlType::TQ2_0,
        GgmlType::MXFP4,
    ];

    /// The id stored in GGUF.
    pub const fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q8_1 => 9,
            GgmlType::Q2_K => 10,
            GgmlType::Q3_K => 11,
            GgmlType::Q4_K => 12,
            GgmlType::Q5_K => 13,
            GgmlType::Q6_K => 14,
            GgmlType::Q8_K => 15,
            GgmlType::IQ2_XXS => 16,
            GgmlType::IQ2_XS => 17,
            GgmlType::IQ3_XXS => 18,
            GgmlType::IQ1_S => 19,
            GgmlType::IQ4_NL => 20,
            GgmlType::IQ3_S => 21,
            GgmlType::IQ2_S => 22,
            GgmlType::IQ4_XS => 23,
            GgmlType::I8 => 24,
            GgmlType::I16 => 25,
            GgmlType::I32 => 26,
            GgmlType::I64 => 27,
            GgmlType::F64 => 28,
            GgmlType::IQ1_M => 29,
            GgmlType::BF16 => 30,
            GgmlType::TQ1_0 => 34,
            GgmlType::TQ2_0 => 35,
            GgmlType::MXFP4 => 39,
        }
    }

    /// Look a type up by its GGUF id.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        GgmlType::ALL.into_iter().find(|t| t.id() == id)
    }

    /// (values per block, bytes per block), as in ggml's type traits.
    pub const fn block(self) -> (usize, usize) {
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 => (1, 2),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q5_0 => (32, 22),
            GgmlType::Q5_1 => (32, 24),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q8_1 => (32, 36),
            GgmlType::Q2_K => (QK_K, 84),
            GgmlType::Q3_K => (QK_K, 110),
            GgmlType::Q4_K => (QK_K, 144),
            GgmlType::Q5_K => (QK_K, 176),
            GgmlType::Q6_K => (QK_K, 210),
            GgmlType::Q8_K => (QK_K, 292),
            GgmlType::IQ2_XXS => (QK_K, 66),
            GgmlType::IQ2_XS => (QK_K, 74),
            GgmlType::IQ3_XXS => (QK_K, 98),
            GgmlType::IQ1_S => (QK_K, 50),
            GgmlType::IQ4_NL => (32, 18),
            GgmlType::IQ3_S => (QK_K, 110),
            GgmlType::IQ2_S => (QK_K, 82),
            GgmlType::IQ4_XS => (QK_K, 136),
            GgmlType::I8 => (1, 1),
            GgmlType::I16 => (1, 2),
            GgmlType::I32 => (1, 4),
            GgmlType::I64 => (1, 8),
            GgmlType::F64 => (1, 8),
            GgmlType::IQ1_M => (QK_K, 56),
            GgmlType::BF16 => (1, 2),
            GgmlType::TQ1_0 => (QK_K, 54),
            GgmlType::TQ2_0 => (QK_K, 66),
            GgmlType::MXFP4 => (32, 17),
        }
    }

    /// Upper-case ggml name ("Q4_K").
    pub fn name(self) -> String {
        format!("{self:?}")
    }

    /// The `airllm-quant` codec with this type's exact byte layout, if any.
    pub const fn codec(self) -> Option<Codec> {
        match self {
            GgmlType::Q4_0 => Some(Codec::Q4_0),
            GgmlType::Q4_1 => Some(Codec::Q4_1),
            GgmlType::Q5_0 => Some(Codec::Q5_0),
            GgmlType::Q5_1 => Some(Codec::Q5_1),
            GgmlType::Q8_0 => Some(Codec::Q8_0),
            GgmlType::Q4_K => Some(Codec::Q4K),
            GgmlType::Q5_K => Some(Codec::Q5K),
            GgmlType::Q6_K => Some(Codec::Q6K),
            _ => None,
        }
    }

    /// How tensors of this type are offered to the shard writer, or `None` if
    /// they cannot be read:
    ///
    /// - F32 / F16 / BF16: dense, bytes copied.
    /// - Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K: the `airllm-quant`
    ///   codec of the same byte layout ([`GgmlType::codec`]), bytes copied: the
    ///   shards and the kernels use them as the file stores them.
    /// - Q2_K: dequantized and re-encoded as Q4_1; Q3_K: dequantized and
    ///   re-encoded as Q8_0 (no codec; see the [module docs](crate::gguf) for
    ///   the measured error).
    pub fn offered_as(self) -> Option<StorageFormat> {
        match self {
            GgmlType::F32 => Some(StorageFormat::Dense(DType::F32)),
            GgmlType::F16 => Some(StorageFormat::Dense(DType::F16)),
            GgmlType::BF16 => Some(StorageFormat::Dense(DType::Bf16)),
            GgmlType::Q2_K => Some(StorageFormat::Quant(Codec::Q4_1)),
            GgmlType::Q3_K => Some(StorageFormat::Quant(Codec::Q8_0)),
            t => t.codec().map(StorageFormat::Quant),
        }
    }

    /// True when reading converts the bytes (dequantize + re-encode) rather
    /// than copying them: Q2_K and Q3_K.
    pub fn is_transcoded(self) -> bool {
        matches!(self, GgmlType::Q2_K | GgmlType::Q3_K)
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_are_unique() {
        for t in GgmlType::ALL {
            assert_eq!(GgmlType::from_id(t.id()), Some(t));
        }
        assert_eq!(GgmlType::from_id(4), None);
        assert_eq!(GgmlType::from_id(1000), None);
    }

    #[test]
    fn readable_codecs_match_ggml_block_sizes() {
        for t in GgmlType::ALL {
            if let Some(c) = t.codec() {
                assert_eq!((c.block_size(), c.block_bytes()), t.block(), "{t}");
                assert_eq!(t.offered_as(), Some(StorageFormat::Quant(c)), "{t}");
                assert!(!t.is_transcoded(), "{t}");
            }
        }
        // Every codec a GGUF type maps to is one of them, exactly once.
        let mapped: Vec<Codec> = GgmlType::ALL.iter().filter_map(|t| t.codec()).collect();
        assert_eq!(mapped.len(), 8);
        assert!(Codec::ALL.iter().filter(|c| **c != Codec::Nf4).all(|c| mapped.contains(c)));
    }
}
