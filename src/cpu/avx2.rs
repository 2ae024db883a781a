//! The AVX2 Linear kernel. A 32-output panel is taken in two halves of 16
//! outputs (two ymm registers); a block of up to 6 rows keeps 12 accumulators
//! in registers, which with two weight registers and a broadcast fills the 16
//! ymm registers without spilling (a whole panel for 3 rows needed 17, and
//! ran at 45% of the AVX2 FMA peak); blocks of 1 or 2 rows take the whole
//! panel. Every block keeps one accumulator per output, so a row's products
//! are added in one order whatever its block. fp16 weights are converted
//! with F16C in registers.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::LinearJob;
use crate::format::PANEL;
use crate::model::Values;

/// Outputs of one half panel.
const HALF: usize = PANEL / 2;

/// Up to this many rows, panels are the outer loop (the rows' inputs stay in
/// L1 while each panel streams once); above, row blocks are.
const PANEL_OUTER_ROWS: usize = 16;

/// fp16 panel rows are prefetched this far ahead (8 KiB) when row blocks are
/// the outer loop (measured: 4% faster at batch 256; at batch 16, where
/// panels are the outer loop, 1.5% slower, so not there).
const PREFETCH_ROWS: usize = 128;

/// The kernel. For the dispatcher only: it relies on the CPU having AVX2,
/// FMA and F16C and on `job.check()` having passed.
pub(super) fn linear(job: &mut LinearJob<'_>) {
    // SAFETY: the dispatcher only selects this kernel when the CPU has AVX2,
    // FMA and F16C (Isa::Avx2.supported()); `job.check()` has proved every
    // index the kernel forms to be in bounds.
    unsafe { linear_avx2(job) }
}

#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn linear_avx2(job: &mut LinearJob<'_>) {
    let panels = job.n.div_ceil(PANEL);
    // The halves of panel `p` that hold outputs.
    let halves = |job: &LinearJob<'_>, p: usize| if job.n - p * PANEL > HALF { 2 } else { 1 };
    if job.rows == 1 {
        // One row (a request's own step, or a batch of one) is bound by the
        // weight stream: each panel row is read once, whole, two panels at
        // a time (8 FMA chains).
        let mut p = 0;
        while p + 1 < panels {
            one_row_two_panels(job, p);
            p += 2;
        }
        if p < panels {
            block::<1, 4, false>(job, p, 0, 0);
        }
    } else if job.rows <= PANEL_OUTER_ROWS {
        for p in 0..panels {
            for h in 0..halves(job, p) {
                let mut r = 0;
                while r < job.rows {
                    let mr = block_rows(job.rows - r);
                    rows_block::<false>(job, p, h, r, mr);
                    r += mr;
                }
            }
        }
    } else {
        let mut r = 0;
        while r < job.rows {
            let mr = block_rows(job.rows - r);
            for p in 0..panels {
                for h in 0..halves(job, p) {
                    rows_block::<true>(job, p, h, r, mr);
                }
            }
            r += mr;
        }
    }
}

/// Rows in the next block when `left` rows remain: 6 while more remain,
/// then the rest in one block, but 5 + 2 rather than 6 + 1 (a single row
/// has only 4 FMA chains). 3 and 5 rows used to run as 2 + 1 and 4 + 1,
/// converting every weight twice: 6–12% slower (bench/RESULTS.md).
fn block_rows(left: usize) -> usize {
    if left == 7 {
        5
    } else {
        left.min(6)
    }
}

/// Rows `r..r + mr` (`mr` from [`block_rows`]) of half `h` of panel `p`:
/// blocks of 3 to 6 rows take half a panel (12 accumulators at most, with
/// two weight registers and a broadcast in the 16 ymm registers); blocks
/// of 1 or 2 rows the whole panel, at its first half (4 or 8 FMA chains).
#[inline(always)]
unsafe fn rows_block<const PF: bool>(
    job: &mut LinearJob<'_>,
    p: usize,
    h: usize,
    r: usize,
    mr: usize,
) {
    match (mr, h) {
        (6, _) => block::<6, 2, PF>(job, p, h, r),
        (5, _) => block::<5, 2, PF>(job, p, h, r),
        (4, _) => block::<4, 2, PF>(job, p, h, r),
        (3, _) => block::<3, 2, PF>(job, p, h, r),
        (2, 0) => block::<2, 4, PF>(job, p, 0, r),
        // Not reached (`block_rows` never leaves one row of a larger job,
        // and a job of one row has its own path), but correct.
        (_, 0) => block::<1, 4, PF>(job, p, 0, r),
        _ => {}
    }
}

/// The `8·Q` weights from element `at` (a row of a half panel, Q = 2, or of
/// a whole one, Q = 4), as fp32; with `PF`, prefetching ahead.
#[inline(always)]
unsafe fn load_row<const Q: usize, const PF: bool>(w: Values<'_>, at: usize) -> [__m256; Q] {
    let mut out = [_mm256_setzero_ps(); Q];
    match w {
        Values::F32(w) => {
            let p = w.as_ptr().add(at);
            for (q, o) in out.iter_mut().enumerate() {
                *o = _mm256_loadu_ps(p.add(8 * q));
            }
        }
        Values::F16(w) => {
            if PF {
                _mm_prefetch::<_MM_HINT_T0>(
                    w.as_ptr().wrapping_add(at + PREFETCH_ROWS * PANEL) as *const i8
                );
            }
            let p = w.as_ptr().add(at) as *const __m128i;
            for (q, o) in out.iter_mut().enumerate() {
                *o = _mm256_cvtph_ps(_mm_loadu_si128(p.add(q)));
            }
        }
    }
    out
}

/// Rows `r0..r0 + MR` of `8·Q` outputs of panel `p` from output `16·h`
/// (half `h` when Q = 2, the whole panel when Q = 4 and h = 0).
///
/// One accumulator per output and row, as in every block: each row's
/// products are added in one order (k ascending) whatever its block, so a
/// job cut anywhere across threads keeps every row's bits.
#[inline(always)]
unsafe fn block<const MR: usize, const Q: usize, const PF: bool>(
    job: &mut LinearJob<'_>,
    p: usize,
    h: usize,
    r0: usize,
) {
    debug_assert!(Q == 2 || h == 0, "a whole panel starts at its first output");
    let mut acc = [[_mm256_setzero_ps(); Q]; MR];
    let x = job.x.as_ptr();
    let mut rows = [x; MR];
    for (i, row) in rows.iter_mut().enumerate() {
        *row = x.add((r0 + i) * job.ldx + job.in_off);
    }
    let base = p * job.k_total * PANEL + h * HALF;
    for range in job.k_ranges {
        for k in range.clone() {
            let w = load_row::<Q, PF>(job.w, base + k * PANEL);
            for i in 0..MR {
                let b = _mm256_set1_ps(*rows[i].add(k));
                for q in 0..Q {
                    acc[i][q] = _mm256_fmadd_ps(w[q], b, acc[i][q]);
                }
            }
        }
    }
    let col = p * PANEL + h * HALF;
    for (i, a) in acc.iter().enumerate() {
        store_row(job, r0 + i, col, a);
    }
}

/// A job of one row, panels `p` and `p + 1` together: 8 FMA chains, one
/// accumulator per output as in [`block`].
#[inline(always)]
unsafe fn one_row_two_panels(job: &mut LinearJob<'_>, p: usize) {
    let mut acc = [[_mm256_setzero_ps(); 4]; 2];
    let x = job.x.as_ptr().add(job.in_off);
    let bases = [p * job.k_total * PANEL, (p + 1) * job.k_total * PANEL];
    for range in job.k_ranges {
        for k in range.clone() {
            let b = _mm256_set1_ps(*x.add(k));
            for (a, &base) in acc.iter_mut().zip(&bases) {
                let w = load_row::<4, false>(job.w, base + k * PANEL);
                for q in 0..4 {
                    a[q] = _mm256_fmadd_ps(w[q], b, a[q]);
                }
            }
        }
    }
    for (i, a) in acc.iter().enumerate() {
        store_row(job, 0, (p + i) * PANEL, a);
    }
}

/// The epilogue of row `r`'s `8·Q` outputs from column `col` (those below
/// `n` only).
#[inline(always)]
unsafe fn store_row<const Q: usize>(
    job: &mut LinearJob<'_>,
    r: usize,
    col: usize,
    acc: &[__m256; Q],
) {
    let valid = (8 * Q).min(job.n - col);
    let mut lanes = [0.0f32; PANEL];
    for (q, aq) in acc.iter().enumerate() {
        _mm256_storeu_ps(lanes.as_mut_ptr().add(8 * q), *aq);
    }
    let row = r * job.ldy + job.out_off + col;
    for (j, &v) in lanes.iter().enumerate().take(valid) {
        let value = job.finish(r, col + j, v);
        *job.y.get_unchecked_mut(row + j) = value;
    }
}
