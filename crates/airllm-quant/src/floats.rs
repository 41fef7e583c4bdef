//! [`Floats`]: a borrowed slice of f32, f16 or bf16 values, the input of the encoders.

use std::ops::Range;

use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

/// A borrowed run of floating-point values in one of the dtypes checkpoints
/// store weights in. Encoders widen each value to f32 exactly (f16 and bf16
/// are subsets of f32), so an f16 tensor encodes to the same bytes as its
/// f32 copy.
#[derive(Clone, Copy, Debug)]
pub enum Floats<'a> {
    /// 32-bit floats.
    F32(&'a [f32]),
    /// IEEE half floats.
    F16(&'a [f16]),
    /// bfloat16.
    Bf16(&'a [bf16]),
}

impl<'a> Floats<'a> {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            Floats::F32(x) => x.len(),
            Floats::F16(x) => x.len(),
            Floats::Bf16(x) => x.len(),
        }
    }

    /// Whether there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Value `i` widened to f32.
    ///
    /// # Panics
    /// If `i >= self.len()`.
    pub fn get(&self, i: usize) -> f32 {
        match self {
            Floats::F32(x) => x[i],
            Floats::F16(x) => x[i].to_f32(),
            Floats::Bf16(x) => x[i].to_f32(),
        }
    }

    /// The values in `range`, same dtype.
    ///
    /// # Panics
    /// If `range` is out of bounds.
    pub fn slice(self, range: Range<usize>) -> Floats<'a> {
        match self {
            Floats::F32(x) => Floats::F32(&x[range]),
            Floats::F16(x) => Floats::F16(&x[range]),
            Floats::Bf16(x) => Floats::Bf16(&x[range]),
        }
    }

    /// Widens all values into `out`, which must have the same length.
    ///
    /// # Panics
    /// If `out.len() != self.len()`.
    pub fn copy_to_f32(&self, out: &mut [f32]) {
        match self {
            Floats::F32(x) => out.copy_from_slice(x),
            // half uses the CPU's conversion instructions where it finds them.
            Floats::F16(x) => x.convert_to_f32_slice(out),
            Floats::Bf16(x) => x.convert_to_f32_slice(out),
        }
    }

    /// All values widened to a new `Vec<f32>`.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        let mut v = vec![0.0; self.len()];
        self.copy_to_f32(&mut v);
        v
    }
}

impl<'a> From<&'a [f32]> for Floats<'a> {
    fn from(x: &'a [f32]) -> Self {
        Floats::F32(x)
    }
}

impl<'a> From<&'a [f16]> for Floats<'a> {
    fn from(x: &'a [f16]) -> Self {
        Floats::F16(x)
    }
}

impl<'a> From<&'a [bf16]> for Floats<'a> {
    fn from(x: &'a [bf16]) -> Self {
        Floats::Bf16(x)
    }
}

impl<'a> From<&'a Vec<f32>> for Floats<'a> {
    fn from(x: &'a Vec<f32>) -> Self {
        Floats::F32(x)
    }
}

impl<'a, const N: usize> From<&'a [f32; N]> for Floats<'a> {
    fn from(x: &'a [f32; N]) -> Self {
        Floats::F32(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn widening_is_exact_and_slices_agree() {
        let f = [1.5f32, -2.25, 65504.0, 6.0e-8];
        let h: Vec<f16> = f.iter().map(|&v| f16::from_f32(v)).collect();
        let b: Vec<bf16> = f.iter().map(|&v| bf16::from_f32(v)).collect();
        for x in [Floats::from(&f[..]), Floats::from(&h[..]), Floats::from(&b[..])] {
            assert_eq!(x.len(), 4);
            let v = x.to_f32_vec();
            for (i, &vi) in v.iter().enumerate() {
                assert_eq!(vi.to_bits(), x.get(i).to_bits(), "index {i}");
            }
            let s = x.slice(1..3);
            assert_eq!(s.len(), 2);
            assert_eq!(s.get(0), v[1]);
        }
        assert_eq!(Floats::from(&h[..]).get(0), 1.5);
        assert!(Floats::F32(&[]).is_empty());
    }
}
