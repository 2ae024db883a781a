//! The AVX2 Linear kernel: a 32-output panel is four ymm registers; blocks of
//! up to 3 rows keep 12 accumulators in registers. fp16 panels are converted
//! with F16C in registers.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::LinearJob;
use crate::format::PANEL;
use crate::model::Values;

pub fn linear(job: &mut LinearJob<'_>) {
    // SAFETY: the dispatcher only selects this kernel when the CPU has AVX2,
    // FMA and F16C (Isa::Avx2.supported()); `job.check()` has proved every
    // index the kernel forms to be in bounds.
    unsafe { linear_avx2(job) }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn linear_avx2(job: &mut LinearJob<'_>) {
    for p in 0..job.n.div_ceil(PANEL) {
        let mut r = 0;
        while r + 3 <= job.rows {
            block::<3>(job, p, r);
            r += 3;
        }
        while r < job.rows {
            block::<1>(job, p, r);
            r += 1;
        }
    }
}

#[inline(always)]
unsafe fn load_panel_row(w: Values<'_>, at: usize) -> [__m256; 4] {
    match w {
        Values::F32(w) => {
            let p = w.as_ptr().add(at);
            [
                _mm256_loadu_ps(p),
                _mm256_loadu_ps(p.add(8)),
                _mm256_loadu_ps(p.add(16)),
                _mm256_loadu_ps(p.add(24)),
            ]
        }
        Values::F16(w) => {
            let p = w.as_ptr().add(at) as *const __m128i;
            [
                _mm256_cvtph_ps(_mm_loadu_si128(p)),
                _mm256_cvtph_ps(_mm_loadu_si128(p.add(1))),
                _mm256_cvtph_ps(_mm_loadu_si128(p.add(2))),
                _mm256_cvtph_ps(_mm_loadu_si128(p.add(3))),
            ]
        }
    }
}

#[inline(always)]
unsafe fn block<const MR: usize>(job: &mut LinearJob<'_>, p: usize, r0: usize) {
    let mut acc = [[_mm256_setzero_ps(); 4]; MR];
    let x = job.x.as_ptr();
    let base = p * job.k_total * PANEL;
    for range in job.k_ranges {
        for k in range.clone() {
            let w = load_panel_row(job.w, base + k * PANEL);
            for (i, a) in acc.iter_mut().enumerate() {
                let b = _mm256_set1_ps(*x.add((r0 + i) * job.ldx + job.in_off + k));
                for (aq, wq) in a.iter_mut().zip(&w) {
                    *aq = _mm256_fmadd_ps(*wq, b, *aq);
                }
            }
        }
    }
    let valid = PANEL.min(job.n - p * PANEL);
    let mut lanes = [0.0f32; PANEL];
    for (i, a) in acc.iter().enumerate() {
        for (q, aq) in a.iter().enumerate() {
            _mm256_storeu_ps(lanes.as_mut_ptr().add(8 * q), *aq);
        }
        let row = (r0 + i) * job.ldy + job.out_off + p * PANEL;
        for (j, &v) in lanes.iter().enumerate().take(valid) {
            let value = job.finish(r0 + i, p * PANEL + j, v);
            *job.y.get_unchecked_mut(row + j) = value;
        }
    }
}
