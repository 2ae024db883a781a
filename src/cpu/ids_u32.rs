//! Request ids narrowed to u32 for the GPU upload (`staging::ids_as_u32`):
//! each id reduced modulo its table's rows (the contract's lookup; the
//! rows are below 2³²), half the bytes of the u64 ids.
//!
//! Ids are usually below the rows already, so the SIMD paths compare a
//! group of ids with the rows and narrow the group at once; a group with an
//! id at or past the rows takes the scalar rule, a division each.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::Isa;

/// One id by the rule (the reference for the SIMD paths). `rows` is at
/// least 1 and below 2³².
#[inline]
pub fn id_to_u32(id: u64, rows: u64) -> u32 {
    (if id < rows { id } else { id % rows }) as u32
}

/// Bytes `4i..4i + 4` of `dst` = `id_to_u32(ids[i], rows)`, little-endian
/// (any alignment: `dst` is a piece of the staging buffer), with the
/// process's ISA ([`Isa::detected`]; the generic path where that is
/// refused).
///
/// Panics unless `dst` holds four bytes per id and `rows` is in
/// `1..2³²` (a caller's bug, not a user's: the config bounds the rows).
pub fn ids_to_u32(ids: &[u64], rows: u64, dst: &mut [u8]) {
    ids_to_u32_with(Isa::detected().unwrap_or(Isa::Generic), ids, rows, dst)
}

/// As [`ids_to_u32`] with a given ISA (one the CPU lacks runs the generic
/// path).
pub fn ids_to_u32_with(isa: Isa, ids: &[u64], rows: u64, dst: &mut [u8]) {
    assert_eq!(4 * ids.len(), dst.len(), "ids_to_u32: lengths differ");
    assert!(
        (1..=u64::from(u32::MAX)).contains(&rows),
        "ids_to_u32: rows {rows}"
    );
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 if isa.supported() => {
            // SAFETY: the CPU has AVX-512F (checked just above); `dst`
            // holds four bytes per id (asserted), the only bound the loop
            // relies on; its stores are unaligned ones.
            unsafe { ids_to_u32_avx512(ids, rows, dst) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 if isa.supported() => {
            // SAFETY: the CPU has AVX2 (checked just above); `dst` holds
            // four bytes per id (asserted); unaligned stores.
            unsafe { ids_to_u32_avx2(ids, rows, dst) }
        }
        _ => scalar(ids, rows, dst),
    }
}

fn scalar(ids: &[u64], rows: u64, dst: &mut [u8]) {
    for (slot, &id) in dst.chunks_exact_mut(4).zip(ids) {
        slot.copy_from_slice(&id_to_u32(id, rows).to_le_bytes());
    }
}

/// 8 ids per step: an unsigned compare with the rows, then `vpmovqd`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn ids_to_u32_avx512(ids: &[u64], rows: u64, dst: &mut [u8]) {
    let n = ids.len();
    let limit = _mm512_set1_epi64(rows as i64);
    let mut i = 0;
    while i + 8 <= n {
        let v = _mm512_loadu_si512(ids.as_ptr().add(i) as *const _);
        if _mm512_cmpge_epu64_mask(v, limit) == 0 {
            let narrow = _mm512_cvtepi64_epi32(v);
            _mm256_storeu_si256(dst.as_mut_ptr().add(4 * i) as *mut __m256i, narrow);
        } else {
            scalar(&ids[i..i + 8], rows, &mut dst[4 * i..4 * i + 32]);
        }
        i += 8;
    }
    scalar(&ids[i..], rows, &mut dst[4 * i..]);
}

/// 4 ids per step: AVX2 compares signed 64-bit lanes, so both sides are
/// offset by 2⁶³ for an unsigned compare; the low halves are gathered by a
/// permute.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn ids_to_u32_avx2(ids: &[u64], rows: u64, dst: &mut [u8]) {
    let n = ids.len();
    let bias = _mm256_set1_epi64x(i64::MIN);
    let limit = _mm256_xor_si256(_mm256_set1_epi64x(rows as i64), bias);
    let low_halves = _mm256_setr_epi32(0, 2, 4, 6, 0, 0, 0, 0);
    let mut i = 0;
    while i + 4 <= n {
        let v = _mm256_loadu_si256(ids.as_ptr().add(i) as *const __m256i);
        // Lanes with rows > id (unsigned): all four, or the scalar rule.
        let below = _mm256_cmpgt_epi64(limit, _mm256_xor_si256(v, bias));
        if _mm256_movemask_epi8(below) == -1 {
            let narrow = _mm256_permutevar8x32_epi32(v, low_halves);
            _mm_storeu_si128(
                dst.as_mut_ptr().add(4 * i) as *mut __m128i,
                _mm256_castsi256_si128(narrow),
            );
        } else {
            scalar(&ids[i..i + 4], rows, &mut dst[4 * i..4 * i + 16]);
        }
        i += 4;
    }
    scalar(&ids[i..], rows, &mut dst[4 * i..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every ISA this CPU has gives the reference's bytes: ids below, at
    /// and past the rows (and past 2⁶³, where a signed compare would go
    /// wrong), groups all below and mixed, every tail length, odd offsets
    /// into `dst`, and rows from 1 to 2³² − 1.
    #[test]
    fn simd_paths_match_the_reference() {
        let mut rng = crate::demo::Rng::new(2);
        let mut next = || rng.next_u64();
        let mut ran = 0;
        for rows in [1u64, 7, 1000, 100_000, u64::from(u32::MAX)] {
            // Mostly below the rows, in runs, with some far past them.
            let ids: Vec<u64> = (0..3000)
                .map(|j| match (j / 40) % 4 {
                    0 | 1 => next() % rows,
                    2 => rows - 1 - (j as u64 % rows),
                    _ => match next() % 4 {
                        0 => rows,
                        1 => u64::MAX - (next() % 5),
                        2 => (1 << 63) + next() % 1000,
                        _ => next(),
                    },
                })
                .collect();
            let reference: Vec<u8> = ids
                .iter()
                .flat_map(|&id| id_to_u32(id, rows).to_le_bytes())
                .collect();
            for isa in crate::cpu::isas_to_test() {
                ran += 1;
                let mut buffer = vec![0u8; 4 * ids.len() + 3];
                for start in 0..3 {
                    for len in [0, 1, 3, 4, 5, 7, 8, 9, 17, 80, ids.len() - start] {
                        let dst = &mut buffer[start..start + 4 * len];
                        dst.fill(0xdd);
                        ids_to_u32_with(isa, &ids[start..start + len], rows, dst);
                        assert_eq!(
                            dst,
                            &reference[4 * start..4 * (start + len)],
                            "{} rows {rows} at {start}+{len}",
                            isa.name()
                        );
                    }
                }
            }
        }
        assert!(ran >= 5);
    }

    #[test]
    fn the_rule() {
        assert_eq!(id_to_u32(5, 10), 5);
        assert_eq!(id_to_u32(10, 10), 0);
        assert_eq!(id_to_u32(23, 10), 3);
        assert_eq!(id_to_u32(u64::MAX, 1000), (u64::MAX % 1000) as u32);
        assert_eq!(id_to_u32(5 << 32, u64::from(u32::MAX)), 5);
    }
}
