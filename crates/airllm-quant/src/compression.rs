//! [`Compression`]: what the user asks for on the command line.

use std::fmt;
use std::str::FromStr;

use crate::{Codec, QuantError};

/// The 4-bit codec that `--compression 4bit` picks.
///
/// Chosen by measurement (`cargo run --release -p airllm-quant --example
/// quality`; full table in the crate docs, "Quality"): `q4_1` has the lowest
/// error of the three 4-bit codecs on every data set measured. On SmolLM2's
/// token embedding (28 M real weights) its RMS error is 0.090 of the weights'
/// RMS against 0.111 for `q4_0` and 0.107 for `nf4`, and its largest error
/// 0.67 RMS against 0.90 and 1.76; on N(0,1) 0.078 against 0.086 and 0.092;
/// on heavy-tailed Student-t(4) 0.094 against 0.116 and 0.111. It costs 5.0
/// bits per weight (`q4_0` 4.5, `nf4` 4.25), so shards are 11% larger than
/// with `q4_0`; name `q4_0` or `nf4` to trade that quality for bytes. It is
/// also what llama.cpp ships 4-bit GGUFs as (SmolLM2's among them), whose
/// tensors are then used without re-encoding.
pub const BEST_4BIT: Codec = Codec::Q4_1;

/// What the user asks for: no compression, "8 bits", "4 bits" (the crate
/// picks the codec), or one codec by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Compression {
    /// Keep weights in their stored dtype.
    None,
    /// 8-bit: [`Codec::Q8_0`].
    Bits8,
    /// 4-bit: [`BEST_4BIT`].
    Bits4,
    /// One codec by name.
    Codec(Codec),
}

impl Compression {
    /// The 4-bit codec that [`Compression::Bits4`] means (same as [`BEST_4BIT`]).
    pub const BEST_4BIT: Codec = BEST_4BIT;

    /// The codec to encode with, `None` for no compression.
    pub fn codec(self) -> Option<Codec> {
        match self {
            Compression::None => None,
            Compression::Bits8 => Some(Codec::Q8_0),
            Compression::Bits4 => Some(BEST_4BIT),
            Compression::Codec(c) => Some(c),
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Compression::None => f.write_str("none"),
            Compression::Bits8 => f.write_str("8bit"),
            Compression::Bits4 => f.write_str("4bit"),
            Compression::Codec(c) => f.write_str(c.name()),
        }
    }
}

impl FromStr for Compression {
    type Err = QuantError;

    /// Accepts `none`, `8bit`, `4bit` or a codec name, in any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "none" => Ok(Compression::None),
            "8bit" => Ok(Compression::Bits8),
            "4bit" => Ok(Compression::Bits4),
            other => other
                .parse::<Codec>()
                .map(Compression::Codec)
                .map_err(|_| QuantError::UnknownCompression { name: s.to_owned() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_display_round_trip() {
        let all = [
            Compression::None,
            Compression::Bits8,
            Compression::Bits4,
            Compression::Codec(Codec::Q8_0),
            Compression::Codec(Codec::Q4_0),
            Compression::Codec(Codec::Q4_1),
            Compression::Codec(Codec::Nf4),
            Compression::Codec(Codec::Q4K),
            Compression::Codec(Codec::Q6K),
        ];
        for c in all {
            assert_eq!(c.to_string().parse::<Compression>().ok(), Some(c));
        }
        assert_eq!("4BIT".parse::<Compression>().ok(), Some(Compression::Bits4));
        assert_eq!(Compression::Bits4.codec(), Some(BEST_4BIT));
        assert_eq!(Compression::Bits8.codec(), Some(Codec::Q8_0));
        assert_eq!(Compression::None.codec(), None);
        let e = "2bit".parse::<Compression>().expect_err("unknown");
        assert!(matches!(&e, QuantError::UnknownCompression { name } if name == "2bit"));
        assert!(e.to_string().contains("none, 8bit, 4bit, q8_0, q4_0, q4_1, nf4, q5_0, q5_1, q4_k, q5_k, q6_k"), "{e}");
    }
}
