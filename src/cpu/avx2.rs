//! The AVX2 Linear kernel. A 32-output panel is taken in two halves of 16
//! outputs (two ymm registers); a block of up to 6 rows keeps 12 accumulators
//! in registers, which with two weight registers and a broadcast fills the 16
//! ymm registers without spilling (a whole panel for 3 rows needed 17, and
//! ran at 45% of the AVX2 FMA peak). fp16 weights are converted with F16C in
//! registers.

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

pub fn linear(job: &mut LinearJob<'_>) {
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
        // weight stream: each panel row is read once, whole, with 8
        // accumulators (two partial sums of 32 outputs).
        for p in 0..panels {
            block::<1, ONE_ROW_UNROLL, 4, false>(job, p, 0, 0);
        }
    } else if job.rows <= PANEL_OUTER_ROWS {
        for p in 0..panels {
            for h in 0..halves(job, p) {
                let mut r = 0;
                while r < job.rows {
                    let mr = block_rows(job.rows - r);
                    half_block::<false>(job, p, h, r, mr);
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
                    half_block::<true>(job, p, h, r, mr);
                }
            }
            r += mr;
        }
    }
}

/// The partial sums a block of `mr` rows keeps per output (`U` of
/// [`block`]): the order in which a row's products are added.
const fn unroll(mr: usize) -> usize {
    match mr {
        3.. => 1,
        2 => 2,
        _ => 4,
    }
}

/// A job of one row takes a kernel of its own over whole panels, with
/// this many partial sums per output.
const ONE_ROW_UNROLL: usize = 2;

/// The partial sums each row of a job of `rows` rows is added with, row
/// by row: what sets its bits besides its own inputs.
pub(super) fn row_orders(rows: usize) -> impl Iterator<Item = usize> {
    let mut at = 0;
    std::iter::from_fn(move || {
        let left = rows.checked_sub(at).filter(|&left| left > 0)?;
        let mr = block_rows(left);
        at += mr;
        let order = if rows == 1 {
            ONE_ROW_UNROLL
        } else {
            unroll(mr)
        };
        Some(std::iter::repeat_n(order, mr))
    })
    .flatten()
}

/// Rows in the next block when `left` rows remain: 6 while more remain,
/// then the rest in one block (3 and 5 rows used to run as 2 + 1 and 4 + 1,
/// converting every weight twice: 6–12% slower, bench/RESULTS.md). Blocks
/// of 6 + 1 stay as they are: 4 + 3 measured slower for 7 rows.
fn block_rows(left: usize) -> usize {
    left.min(6)
}

/// Rows `r..r + mr` (`mr` from [`block_rows`]) of half `h` of panel `p`.
#[inline(always)]
unsafe fn half_block<const PF: bool>(
    job: &mut LinearJob<'_>,
    p: usize,
    h: usize,
    r: usize,
    mr: usize,
) {
    match mr {
        6 => block::<6, { unroll(6) }, 2, PF>(job, p, h, r),
        5 => block::<5, { unroll(5) }, 2, PF>(job, p, h, r),
        4 => block::<4, { unroll(4) }, 2, PF>(job, p, h, r),
        3 => block::<3, { unroll(3) }, 2, PF>(job, p, h, r),
        2 => block::<2, { unroll(2) }, 2, PF>(job, p, h, r),
        _ => block::<1, { unroll(1) }, 2, PF>(job, p, h, r),
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
/// (half `h` when Q = 2, the whole panel when Q = 4 and h = 0). With few
/// rows, `U` independent partial sums over interleaved columns keep the FMA
/// units busy instead of chaining every FMA on the previous one.
#[inline(always)]
unsafe fn block<const MR: usize, const U: usize, const Q: usize, const PF: bool>(
    job: &mut LinearJob<'_>,
    p: usize,
    h: usize,
    r0: usize,
) {
    debug_assert!(Q == 2 || h == 0, "a whole panel starts at its first output");
    let mut partial = [[[_mm256_setzero_ps(); Q]; MR]; U];
    let x = job.x.as_ptr();
    let mut rows = [x; MR];
    for (i, row) in rows.iter_mut().enumerate() {
        *row = x.add((r0 + i) * job.ldx + job.in_off);
    }
    let base = p * job.k_total * PANEL + h * HALF;
    for range in job.k_ranges {
        let mut k = range.start;
        while k + U <= range.end {
            for (u, acc) in partial.iter_mut().enumerate() {
                let w = load_row::<Q, PF>(job.w, base + (k + u) * PANEL);
                for i in 0..MR {
                    let b = _mm256_set1_ps(*rows[i].add(k + u));
                    for q in 0..Q {
                        acc[i][q] = _mm256_fmadd_ps(w[q], b, acc[i][q]);
                    }
                }
            }
            k += U;
        }
        for k in k..range.end {
            let w = load_row::<Q, PF>(job.w, base + k * PANEL);
            for i in 0..MR {
                let b = _mm256_set1_ps(*rows[i].add(k));
                for q in 0..Q {
                    partial[0][i][q] = _mm256_fmadd_ps(w[q], b, partial[0][i][q]);
                }
            }
        }
    }
    let mut acc = partial[0];
    for more in &partial[1..] {
        for (a, m) in acc.iter_mut().zip(more) {
            for q in 0..Q {
                a[q] = _mm256_add_ps(a[q], m[q]);
            }
        }
    }
    let col = p * PANEL + h * HALF;
    let valid = (8 * Q).min(job.n - col);
    let mut lanes = [0.0f32; PANEL];
    for (i, a) in acc.iter().enumerate() {
        for (q, aq) in a.iter().enumerate() {
            _mm256_storeu_ps(lanes.as_mut_ptr().add(8 * q), *aq);
        }
        let row = (r0 + i) * job.ldy + job.out_off + col;
        for (j, &v) in lanes.iter().enumerate().take(valid) {
            let value = job.finish(r0 + i, col + j, v);
            *job.y.get_unchecked_mut(row + j) = value;
        }
    }
}
