//! Request values rounded to fp16 for the GPU upload (`PlanOptions::
//! half_values`): half the bytes of f32 to write into the pinned staging
//! buffer, copy and read on the device.
//!
//! The rule, on every ISA: a finite value rounds to the nearest fp16 (ties to
//! even; beyond ±65504 it becomes ±inf, as `__float2half_rn` on the device);
//! a non-finite value (a missing one: the host refuses them for inputs
//! without `missing: zero`) becomes NaN, so the device can tell a missing
//! value (NaN) from a finite one out of fp16's range (±inf).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::Isa;

/// fp16's quiet NaN.
pub const NAN_F16: u16 = 0x7e00;

/// One value by the rule above (the reference for the SIMD paths).
#[inline]
pub fn value_to_f16(v: f32) -> u16 {
    if v.is_finite() {
        half::f16::from_f32(v).to_bits()
    } else {
        NAN_F16
    }
}

/// Bytes `2i, 2i + 1` of `dst` = `value_to_f16(src[i])`, little-endian (any
/// alignment: `dst` is a piece of the staging buffer), with the process's
/// ISA ([`Isa::detected`]; the generic path where that is refused).
///
/// Panics unless `dst` holds two bytes per value (a caller's bug, not a
/// user's).
pub fn values_to_f16(src: &[f32], dst: &mut [u8]) {
    values_to_f16_with(Isa::detected().unwrap_or(Isa::Generic), src, dst)
}

/// As [`values_to_f16`] with a given ISA (one the CPU lacks runs the generic
/// path).
pub fn values_to_f16_with(isa: Isa, src: &[f32], dst: &mut [u8]) {
    assert_eq!(2 * src.len(), dst.len(), "values_to_f16: lengths differ");
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if isa.supported() => {
            // SAFETY: the CPU has AVX-512F and F16C (checked just above);
            // `dst` holds two bytes per value of `src` (asserted), the only
            // bound the loop relies on; its stores are unaligned ones.
            unsafe { values_to_f16_avx512(src, dst) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if isa.supported() => {
            // SAFETY: the CPU has AVX2 and F16C (checked just above); `dst`
            // holds two bytes per value of `src` (asserted); unaligned
            // stores.
            unsafe { values_to_f16_avx2(src, dst) }
        }
        _ => scalar(src, dst),
    }
}

fn scalar(src: &[f32], dst: &mut [u8]) {
    for (d, &s) in dst.chunks_exact_mut(2).zip(src) {
        d.copy_from_slice(&value_to_f16(s).to_le_bytes());
    }
}

/// 16 values per step: |v| < inf selects the finite lanes (NaN compares
/// false), the others become NaN, then `vcvtps2ph` with round to nearest
/// even.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,f16c")]
unsafe fn values_to_f16_avx512(src: &[f32], dst: &mut [u8]) {
    let n = src.len();
    let nan = _mm512_set1_ps(f32::NAN);
    let inf = _mm512_set1_ps(f32::INFINITY);
    let mut i = 0;
    while i + 16 <= n {
        let v = _mm512_loadu_ps(src.as_ptr().add(i));
        let finite = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(_mm512_abs_ps(v), inf);
        let v = _mm512_mask_mov_ps(nan, finite, v);
        let h = _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
        _mm256_storeu_si256(dst.as_mut_ptr().add(2 * i) as *mut __m256i, h);
        i += 16;
    }
    scalar(&src[i..], &mut dst[2 * i..]);
}

/// 8 values per step: |v| < inf selects finite lanes (NaN compares false),
/// the others become NaN, then `vcvtps2ph`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,f16c")]
unsafe fn values_to_f16_avx2(src: &[f32], dst: &mut [u8]) {
    let n = src.len();
    let nan = _mm256_set1_ps(f32::NAN);
    let inf = _mm256_set1_ps(f32::INFINITY);
    let abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
    let mut i = 0;
    while i + 8 <= n {
        let v = _mm256_loadu_ps(src.as_ptr().add(i));
        let finite = _mm256_cmp_ps::<_CMP_LT_OQ>(_mm256_and_ps(v, abs_mask), inf);
        let v = _mm256_blendv_ps(nan, v, finite);
        let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
        _mm_storeu_si128(dst.as_mut_ptr().add(2 * i) as *mut __m128i, h);
        i += 8;
    }
    scalar(&src[i..], &mut dst[2 * i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values at every edge of the rule: zeros, fp16 subnormals and the
    /// smallest ones (ties to even), the largest finite fp16 and the first
    /// value that rounds past it, ±inf, NaNs with payloads, and random
    /// values over the whole f32 range.
    fn edge_values() -> Vec<f32> {
        let mut values = vec![
            0.0,
            -0.0,
            1.0,
            -1.5,
            65504.0,
            -65504.0,
            65519.99,
            65520.0,
            -65520.0,
            1e6,
            f32::MAX,
            f32::MIN,
            f32::MIN_POSITIVE,
            1e-40,
            5.960_464_5e-8, // fp16's smallest subnormal
            2.980_232_2e-8, // half of it: a tie, to even (zero)
            4.470_348_4e-8, // 1.5 of it: rounds up
            6.097_555e-5,   // near fp16's smallest normal
            1.000_488_3,    // 1 + 2^-11: a tie, to even (1)
            1.001_464_8,    // 1 + 3·2^-11: a tie, to even (1 + 2^-9)
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            -f32::NAN,
            f32::from_bits(0x7f80_0001), // signalling NaN
            f32::from_bits(0xffc0_1234),
        ];
        let mut rng = crate::demo::Rng::new(1);
        for _ in 0..5000 {
            let bits = rng.next_u64();
            values.push(f32::from_bits(bits as u32));
            values.push(((bits >> 32) as i32 as f32) * 1e-5);
        }
        values
    }

    /// Every ISA this CPU has gives the reference's bits for every value and
    /// every length (the SIMD loops' tails).
    #[test]
    fn simd_paths_match_the_reference() {
        let values = edge_values();
        let reference: Vec<u8> = values
            .iter()
            .flat_map(|&v| value_to_f16(v).to_le_bytes())
            .collect();
        let mut ran = 0;
        for isa in crate::cpu::isas_to_test() {
            ran += 1;
            // Odd offsets into `dst`: stores at any alignment.
            let mut buffer = vec![0u8; 2 * values.len() + 1];
            for start in 0..3 {
                for len in [0, 1, 7, 8, 9, 15, 16, 17, 33, values.len() - start] {
                    let src = &values[start..start + len];
                    let dst = &mut buffer[start..start + 2 * len];
                    dst.fill(0xdd);
                    values_to_f16_with(isa, src, dst);
                    assert_eq!(
                        dst,
                        &reference[2 * start..2 * (start + len)],
                        "{} at {start}+{len}",
                        isa.name()
                    );
                }
            }
        }
        assert!(ran >= 1);
    }

    /// The rule itself: finite values round to nearest even with overflow to
    /// ±inf, and only the non-finite ones become NaN.
    #[test]
    fn the_rule() {
        let f16 = |bits: u16| half::f16::from_bits(bits).to_f32();
        assert_eq!(f16(value_to_f16(65504.0)), 65504.0);
        assert_eq!(f16(value_to_f16(65519.99)), 65504.0);
        assert_eq!(f16(value_to_f16(65520.0)), f32::INFINITY);
        assert_eq!(f16(value_to_f16(-1e9)), f32::NEG_INFINITY);
        assert_eq!(f16(value_to_f16(1.000_488_3)), 1.0);
        assert_eq!(f16(value_to_f16(2.980_232_2e-8)), 0.0);
        assert_eq!(value_to_f16(f32::INFINITY), NAN_F16);
        assert_eq!(value_to_f16(f32::NEG_INFINITY), NAN_F16);
        assert_eq!(value_to_f16(f32::NAN), NAN_F16);
        let quiet = value_to_f16(f32::from_bits(0x7f80_0001));
        assert!(f16(quiet).is_nan());
    }
}
