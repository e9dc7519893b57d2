//! Dtype conversion fused into the load: BF16/F16 to F32, F32 to BF16/F16, and BF16 to
//! F16 and back (through the exact F32 value, as PyTorch's `.to()` does).
//!
//! Narrowing rounds to nearest, ties to even, as IEEE 754 and PyTorch's `.to()` do; a NaN
//! stays a NaN (quiet, sign kept); values too large for F16 become infinities. All data is
//! little-endian, as in both formats.

use crate::dtype::DType;

/// How elements change on the way from the file to the destination.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Conversion {
    /// Bytes are copied as they are.
    None,
    /// BF16 to F32.
    Bf16ToF32,
    /// F16 to F32.
    F16ToF32,
    /// F32 to BF16.
    F32ToBf16,
    /// F32 to F16.
    F32ToF16,
    /// BF16 to F16 (rounded; large values become infinities, small ones subnormals).
    Bf16ToF16,
    /// F16 to BF16 (rounded).
    F16ToBf16,
}

impl Conversion {
    /// The conversion from `from` to `to`, or `None` for a pair npkio does not convert.
    pub(crate) fn between(from: DType, to: DType) -> Option<Conversion> {
        Some(match (from, to) {
            (a, b) if a == b => Conversion::None,
            (DType::BF16, DType::F32) => Conversion::Bf16ToF32,
            (DType::F16, DType::F32) => Conversion::F16ToF32,
            (DType::F32, DType::BF16) => Conversion::F32ToBf16,
            (DType::F32, DType::F16) => Conversion::F32ToF16,
            (DType::BF16, DType::F16) => Conversion::Bf16ToF16,
            (DType::F16, DType::BF16) => Conversion::F16ToBf16,
            _ => return None,
        })
    }

    /// (source element bytes, destination element bytes); (1, 1) for no conversion.
    pub(crate) fn sizes(self) -> (u64, u64) {
        match self {
            Conversion::None => (1, 1),
            Conversion::Bf16ToF32 | Conversion::F16ToF32 => (2, 4),
            Conversion::F32ToBf16 | Conversion::F32ToF16 => (4, 2),
            Conversion::Bf16ToF16 | Conversion::F16ToBf16 => (2, 2),
        }
    }

    /// Converts `src` (whole source elements) into `dst`, which must be exactly as long as
    /// the converted elements.
    pub(crate) fn run(self, src: &[u8], dst: &mut [u8]) {
        let (a, b) = self.sizes();
        debug_assert_eq!(src.len() as u64 / a * b, dst.len() as u64);
        match self {
            Conversion::None => dst.copy_from_slice(src),
            Conversion::Bf16ToF32 => {
                for (s, d) in src.chunks_exact(2).zip(dst.chunks_exact_mut(4)) {
                    let h = u16::from_le_bytes([s[0], s[1]]);
                    d.copy_from_slice(&((h as u32) << 16).to_le_bytes());
                }
            }
            Conversion::F16ToF32 => {
                for (s, d) in src.chunks_exact(2).zip(dst.chunks_exact_mut(4)) {
                    let h = u16::from_le_bytes([s[0], s[1]]);
                    d.copy_from_slice(&f16_to_f32(h).to_le_bytes());
                }
            }
            Conversion::F32ToBf16 => {
                for (s, d) in src.chunks_exact(4).zip(dst.chunks_exact_mut(2)) {
                    let f = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
                    d.copy_from_slice(&f32_to_bf16(f).to_le_bytes());
                }
            }
            Conversion::F32ToF16 => {
                for (s, d) in src.chunks_exact(4).zip(dst.chunks_exact_mut(2)) {
                    let f = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
                    d.copy_from_slice(&f32_to_f16(f).to_le_bytes());
                }
            }
            Conversion::Bf16ToF16 => {
                for (s, d) in src.chunks_exact(2).zip(dst.chunks_exact_mut(2)) {
                    let h = u16::from_le_bytes([s[0], s[1]]);
                    d.copy_from_slice(&bf16_to_f16(h).to_le_bytes());
                }
            }
            Conversion::F16ToBf16 => {
                for (s, d) in src.chunks_exact(2).zip(dst.chunks_exact_mut(2)) {
                    let h = u16::from_le_bytes([s[0], s[1]]);
                    d.copy_from_slice(&f16_to_bf16(h).to_le_bytes());
                }
            }
        }
    }
}

/// BF16 bits to F16 bits: the exact F32 value rounded to nearest even.
pub fn bf16_to_f16(h: u16) -> u16 {
    f32_to_f16((h as u32) << 16)
}

/// F16 bits to BF16 bits: the exact F32 value rounded to nearest even.
pub fn f16_to_bf16(h: u16) -> u16 {
    f32_to_bf16(f16_to_f32(h).to_bits())
}

/// F32 bits to BF16 bits, round to nearest even; NaN stays a quiet NaN with its sign.
pub fn f32_to_bf16(bits: u32) -> u16 {
    if bits & 0x7fff_ffff > 0x7f80_0000 {
        return ((bits >> 16) as u16) | 0x0040;
    }
    let round = 0x7fff + ((bits >> 16) & 1);
    (bits.wrapping_add(round) >> 16) as u16
}

/// F16 bits to the F32 value (exact).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h as u32) & 0x8000) << 16;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: value m * 2^-24, exact in F32.
            let v = m as f32 * f32::from_bits(0x3380_0000); // 2^-24
            return if sign != 0 { -v } else { v };
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, m) => sign | 0x7fc0_0000 | (m << 13),
        (e, m) => sign | ((e + 112) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

/// F32 bits to F16 bits, round to nearest even; overflow gives an infinity, NaN stays a
/// quiet NaN with its sign.
pub fn f32_to_f16(bits: u32) -> u16 {
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let man = bits & 0x7f_ffff;
    if exp == 0xff {
        return if man == 0 {
            sign | 0x7c00
        } else {
            sign | 0x7e00 | ((man >> 13) as u16)
        };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    if e <= 0 {
        // Subnormal or zero in F16: shift the full significand (with its hidden bit) right.
        if e < -10 {
            return sign; // below half the smallest subnormal: rounds to zero
        }
        let full = man | 0x80_0000;
        let shift = (14 - e) as u32; // 24-bit significand down to 10 bits at exponent 1-15
        let half = 1u32 << (shift - 1);
        let rest = full & ((1u32 << shift) - 1);
        let mut v = full >> shift;
        if rest > half || (rest == half && v & 1 == 1) {
            v += 1;
        }
        return sign | v as u16;
    }
    let mut v = ((e as u32) << 10) | (man >> 13);
    let rest = man & 0x1fff;
    if rest > 0x1000 || (rest == 0x1000 && v & 1 == 1) {
        v += 1; // may carry into the exponent, up to infinity: still correct
    }
    sign | v as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounds_to_nearest_even_and_keeps_nan() {
        assert_eq!(f32_to_bf16(1.0f32.to_bits()), 0x3f80);
        // 1 + 2^-8 is halfway between 1.0 and the next bf16: ties to even (1.0).
        assert_eq!(f32_to_bf16(0x3f80_8000), 0x3f80);
        // 1 + 3*2^-8: halfway, odd below, rounds up.
        assert_eq!(f32_to_bf16(0x3f81_8000), 0x3f82);
        assert_eq!(f32_to_bf16(0x3f80_8001), 0x3f81);
        let nan = f32_to_bf16(0x7f80_0001);
        assert!(f32::from_bits((nan as u32) << 16).is_nan());
        assert_eq!(f32_to_bf16(f32::INFINITY.to_bits()), 0x7f80);
        assert_eq!(f32_to_bf16((-0.0f32).to_bits()), 0x8000);
    }

    #[test]
    fn f16_round_trips_every_value() {
        for h in 0..=u16::MAX {
            let f = f16_to_f32(h);
            let back = f32_to_f16(f.to_bits());
            if f.is_nan() {
                assert!(f16_to_f32(back).is_nan(), "{h:#x}");
            } else {
                assert_eq!(back, h, "{h:#x} -> {f}");
            }
        }
    }

    #[test]
    fn f16_rounds_to_nearest_even() {
        // Halfway between 1.0 (0x3c00) and 1 + 2^-10: ties to even.
        assert_eq!(f32_to_f16(1.000_488_3f32.to_bits()), 0x3c00);
        assert_eq!(f32_to_f16(65520.0f32.to_bits()), 0x7c00); // rounds up to infinity
        assert_eq!(f32_to_f16(65504.0f32.to_bits()), 0x7bff);
        assert_eq!(f32_to_f16(1e-8f32.to_bits()), 0x0000);
        // Smallest subnormal 2^-24 and half of it (ties to even: zero).
        assert_eq!(f32_to_f16(5.960_464_5e-8f32.to_bits()), 0x0001);
        assert_eq!(f32_to_f16(2.980_232_2e-8f32.to_bits()), 0x0000);
        assert_eq!(f32_to_f16(f32::NAN.to_bits()) & 0x7e00, 0x7e00);
    }

    #[test]
    fn bf16_and_f16_convert_into_each_other_through_the_exact_value() {
        assert_eq!(bf16_to_f16(0x3f80), 0x3c00); // 1.0
        assert_eq!(bf16_to_f16(0xbd28), 0xa940); // -0.041015625, exact in F16
        assert_eq!(bf16_to_f16(0x4780), 0x7c00); // 65536 is past F16's range: infinity
        assert_eq!(bf16_to_f16(0x3380), 0x0001); // 2^-24, F16's smallest subnormal
        assert_eq!(bf16_to_f16(0x3300), 0x0000); // 2^-25: a tie, to even (zero)
        assert_eq!(bf16_to_f16(0xff80), 0xfc00);
        assert_eq!(f16_to_bf16(0x3c00), 0x3f80);
        assert_eq!(f16_to_bf16(0x3c01), 0x3f80); // 1 + 2^-10 rounds to 1.0 in BF16
        assert_eq!(f16_to_bf16(0x0001), 0x3380);
        // 65504, F16's largest, rounds up to 65536 in BF16.
        assert_eq!(f16_to_bf16(0x7bff), 0x4780);

        // Every value that BF16 and F16 share comes back unchanged.
        for h in 0..=u16::MAX {
            let b = f16_to_bf16(h);
            if f16_to_f32(h).is_nan() {
                assert!(f32::from_bits((b as u32) << 16).is_nan(), "{h:#x}");
            } else if f32::from_bits((b as u32) << 16) == f16_to_f32(h) {
                assert_eq!(bf16_to_f16(b), h, "{h:#x}");
            }
        }
        let conv = Conversion::between(DType::BF16, DType::F16).unwrap();
        assert_eq!(conv.sizes(), (2, 2));
        let mut out = [0u8; 4];
        conv.run(&[0x80, 0x3f, 0x28, 0xbd], &mut out);
        assert_eq!(out, [0x00, 0x3c, 0x40, 0xa9]);
        assert_eq!(
            Conversion::between(DType::F16, DType::BF16),
            Some(Conversion::F16ToBf16)
        );
    }

    #[test]
    fn f32_to_f16_matches_a_reference_built_from_f64() {
        // Reference: the nearest F16 by exhaustive distance over finite F16 values near it.
        let mut x: u32 = 0x3000_0000;
        while x < 0x477f_e000 {
            let f = f32::from_bits(x) as f64;
            let h = f32_to_f16(x);
            let got = f16_to_f32(h) as f64;
            let lo = f16_to_f32(h.wrapping_sub(1)) as f64;
            let hi = f16_to_f32(h + 1) as f64;
            for n in [lo, hi] {
                // Neighbours past zero or infinity are no candidates.
                if n.is_finite() && n >= 0.0 {
                    assert!((got - f).abs() <= (n - f).abs(), "{x:#x}");
                }
            }
            x += 0x1357;
        }
    }
}
