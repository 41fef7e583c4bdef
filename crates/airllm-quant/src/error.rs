//! The crate's error type.

use crate::Codec;

/// Everything that can go wrong while encoding, decoding or parsing names.
///
/// Each message says what was wrong and what to do about it. The caller adds
/// the tensor name or file (this crate never sees them).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuantError {
    /// An input value was NaN or infinite. `index` is the flat index into the
    /// input given to the call (row-major for matrices).
    #[error(
        "element {index} is {value}: block codecs need finite weights; check the checkpoint \
         for NaN/inf or keep this tensor unquantized (compression `none`)"
    )]
    NonFinite {
        /// Flat index of the first offending element.
        index: usize,
        /// The value found there.
        value: f32,
    },
    /// A slice had the wrong length.
    #[error(
        "{what}: expected {expected}, got {got}; size buffers with Codec::row_bytes / \
         Codec::matrix_bytes and pass rows * cols input values"
    )]
    Length {
        /// Which argument was wrong.
        what: &'static str,
        /// The length the call needs.
        expected: usize,
        /// The length it got.
        got: usize,
    },
    /// `rows * cols` (or the byte size derived from it) does not fit in `usize`.
    #[error("a {rows} x {cols} matrix is too large to address on this machine; split the tensor")]
    ShapeOverflow {
        /// Rows asked for.
        rows: usize,
        /// Columns asked for.
        cols: usize,
    },
    /// A block's scale does not fit the f16 that the layout stores it in.
    #[error(
        "{codec}: the block starting at element {index} reaches |x| = {max_abs}, beyond what \
         its f16 scale can hold (keep |x| <= {limit}); keep this tensor unquantized \
         (compression `none`){hint}",
        hint = if *codec == Codec::Q8_0 { "" } else { " or use q8_0" }
    )]
    ScaleOverflow {
        /// The codec that was encoding.
        codec: Codec,
        /// Flat index of the block's first element.
        index: usize,
        /// The largest magnitude in the block.
        max_abs: f32,
        /// Magnitudes up to this value always encode with this codec.
        limit: f32,
    },
    /// A codec name that [`Codec::from_str`](std::str::FromStr::from_str) does not know.
    #[error("unknown codec `{name}`; valid codecs: {valid}", valid = Codec::names())]
    UnknownCodec {
        /// The name given.
        name: String,
    },
    /// A compression option that
    /// [`Compression::from_str`](std::str::FromStr::from_str) does not know.
    #[error("unknown compression `{name}`; valid options: none, 8bit, 4bit, {valid}", valid = Codec::names())]
    UnknownCompression {
        /// The option given.
        name: String,
    },
}
