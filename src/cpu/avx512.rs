//! The AVX-512 Linear kernel. Each 32-output panel is two zmm registers of
//! fp32; a block of up to 12 rows keeps 24 accumulators in registers and
//! multiplies each panel row by a broadcast input value. Panels are the
//! outer loop over groups of up to four row blocks: the first block of a
//! group converts the panel's fp16 rows with F16C in registers and keeps
//! them in fp32 for the others, so each weight is converted once per group.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::LinearJob;
use crate::format::PANEL;
use crate::model::Values;
use crate::program::{two_sigmoid, Act};

/// The kernel. For the dispatcher only: it relies on the CPU having
/// AVX-512F, F16C and FMA and on `job.check()` having passed.
pub(super) fn linear(job: &mut LinearJob<'_>, converted: &mut Vec<f32>) {
    linear_converting(job, converted, converts_in_halves());
}

/// [`linear`], converting fp16 in 8-lane halves or not (the same bits
/// either way; the kernel tests run both).
pub(super) fn linear_converting(job: &mut LinearJob<'_>, converted: &mut Vec<f32>, halves: bool) {
    // A panel's rows converted to fp32 (see `run_blocks`), for every k,
    // from a 64-byte boundary (each row two aligned cache lines).
    let len = job.k_total * PANEL + 16;
    if converted.len() < len {
        converted.resize(len, 0.0);
    }
    let start = converted.as_ptr().align_offset(64).min(16);
    // SAFETY: the callers (the dispatcher, and the kernel test that
    // compares the conversions) only run this kernel when the CPU has
    // AVX-512F, F16C and FMA (Isa::Avx512.supported()) and after
    // `job.check()` has proved every index the kernel forms to be in
    // bounds; `converted` holds a panel's `k_total` rows after `start`
    // (at most 16).
    unsafe {
        let converted = converted.as_mut_ptr().add(start);
        if halves {
            linear_avx512::<true>(job, converted)
        } else {
            linear_avx512::<false>(job, converted)
        }
    }
}

/// Whether the kernel converts fp16 weights 8 lanes at a time (two
/// `vcvtph2ps ymm` and an insert per 16 weights) rather than 16: yes on
/// AMD's Zen 4 (family 19h, the only one of that family with AVX-512),
/// which runs 512-bit instructions as two 256-bit halves. There the 16-lane
/// form bounded one-row jobs (one FMA per conversion), and one candidate
/// of the benchmark model took 1.07× less time in halves, and 1.16× less
/// again with [`one_row_ymm`], which multiplies them unjoined; 2 to 32
/// candidates ran the same (bench/RESULTS.md).
/// Elsewhere the 16-lane form stays: halves are unmeasured there, and on
/// cores that run 512-bit instructions whole they are three instructions
/// instead of one.
fn converts_in_halves() -> bool {
    static HALVES: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HALVES.get_or_init(|| {
        // SAFETY: CPUID exists on every x86_64 CPU, with leaves 0 and 1.
        // (A safe function in recent compilers, `unsafe` in older ones.)
        #[allow(unused_unsafe)]
        let (vendor, signature) = unsafe { (__cpuid(0), __cpuid(1)) };
        let amd = (vendor.ebx, vendor.edx, vendor.ecx) == (0x6874_7541, 0x6974_6e65, 0x444d_4163);
        let base = (signature.eax >> 8) & 0xf;
        let family = if base == 0xf {
            base + ((signature.eax >> 20) & 0xff)
        } else {
            base
        };
        amd && family == 0x19
    })
}

/// Where a panel's fp32 (or fp16) rows come from.
#[derive(Clone, Copy)]
enum PanelSource {
    F32(*const f32),
    F16(*const half::f16),
    /// fp16 rows, each also stored converted at the same row of the fp32
    /// panel (for the other blocks of the group to read as `F32`).
    F16Keep(*const half::f16, *mut f32),
}

/// fp16 panel rows are prefetched this far ahead (8 KiB): a layer's weights
/// come from L3 on their first pass of a tile, and the hardware prefetcher
/// alone left the kernel waiting on them (measured on Zen 5: 247 against
/// 255 GFLOP/s for 16 rows over 9 MB of weights; 16 and 32 rows ahead gave
/// less).
const PREFETCH_ROWS: usize = 128;

/// The rows of the next block with `left` rows to go: the fewest blocks
/// of at most 12 rows, as even as can be (32 = 11 + 11 + 10, 7 = 7): 3, 5
/// and 7 rows in one block took 1.3–1.5× less time than in blocks of
/// 2 + 1, 4 + 1 and 4 + 2 + 1 (bench/RESULTS.md; measured when every
/// block converted the weights it multiplied, before [`run_blocks`]).
pub(super) fn block_rows(left: usize) -> usize {
    let blocks = left.div_ceil(MAX_BLOCK_ROWS).max(1);
    left.div_ceil(blocks)
}

/// The most rows of a block: 24 accumulators, two weight vectors and a
/// broadcast in the 32 zmm registers.
const MAX_BLOCK_ROWS: usize = 12;

#[target_feature(enable = "avx512f,f16c,fma")]
unsafe fn linear_avx512<const HALVES: bool>(job: &mut LinearJob<'_>, converted: *mut f32) {
    let panels = job.n.div_ceil(PANEL);
    if (1..=6).contains(&job.rows) {
        few_rows::<HALVES>(job, panels);
        return;
    }
    // Row blocks of `block_rows`, run in groups of up to `GROUP_BLOCKS`.
    let mut blocks = [(0usize, 0usize); GROUP_BLOCKS];
    let mut count = 0;
    let mut r = 0;
    while r < job.rows {
        let mr = block_rows(job.rows - r);
        if count == blocks.len() {
            run_blocks::<HALVES>(job, &blocks[..count], panels, converted);
            count = 0;
        }
        blocks[count] = (r, mr);
        count += 1;
        r += mr;
    }
    run_blocks::<HALVES>(job, &blocks[..count], panels, converted);
}

/// Row blocks taken together: each panel's fp16 rows are converted once,
/// by the first block, which keeps them in `converted` (fp32) for the
/// others. The conversions take the FMA units' time: on a host whose
/// 512-bit FMAs run at half rate, a 32-row tile of 512×512 layers ran at
/// 88–89% of the FMA peak converting in every block, 95–98% with fp32
/// weights (bench/RESULTS.md). Panels are the outer loop, so the group's
/// inputs (48 rows × 2 KiB for 512 inputs) are read once per panel, from
/// L1 or L2.
const GROUP_BLOCKS: usize = 4;

#[inline(always)]
unsafe fn run_blocks<const HALVES: bool>(
    job: &mut LinearJob<'_>,
    blocks: &[(usize, usize)],
    panels: usize,
    converted: *mut f32,
) {
    for p in 0..panels {
        // The first block's source, and the others'.
        let (first, rest) = match panel_source(job, p) {
            PanelSource::F16(w) if blocks.len() > 1 => (
                PanelSource::F16Keep(w, converted),
                PanelSource::F32(converted),
            ),
            source => (source, source),
        };
        for (i, &(r, mr)) in blocks.iter().enumerate() {
            panel_block::<HALVES>(job, if i == 0 { first } else { rest }, p, r, mr);
        }
    }
}

/// A job of 1 to 6 rows: one block, whose one panel would give only 2 to
/// 6 FMA chains (each waiting on the previous FMA) for 1 to 3 rows, so
/// panels are taken several at a time (4 for one row, 2 for 2 to 6): 8 to
/// 24 chains. For 4 to 6 rows two panels also broadcast each input once
/// per 4 FMAs instead of 2: 4 to 6 candidates took 1.13–1.21× less time
/// on the Zen 4 host (bench/RESULTS.md). Each output keeps its one
/// accumulator, added in the same order as in [`block`], so the bits are
/// those of any other block. The panels taken together are not prefetched
/// by hand (measured: one row took 189 against 198 µs per call of the
/// benchmark model without; 2 and 3 rows the same); those left over go
/// through [`panel_block`], which does.
///
/// A function of its own: inlined into [`linear_avx512`], its code changed
/// the register allocation of the larger blocks' loops there, which ran
/// 5% slower (the `--kernel` table, bench/RESULTS.md).
#[inline(never)]
#[target_feature(enable = "avx512f,f16c,fma")]
unsafe fn few_rows<const HALVES: bool>(job: &mut LinearJob<'_>, panels: usize) {
    // Whole panels only in a group (a last one of 16 outputs or fewer
    // takes the narrow path of `panel_block`).
    let n = job.n;
    if let (true, 1, Values::F16(w)) = (HALVES, job.rows, job.w) {
        // Zen 4: one row in 256-bit pieces (see `one_row_ymm`).
        let (w, panel_len) = (w.as_ptr(), job.k_total * PANEL);
        for (p, count) in few_rows_groups(2, panels, |p| n - p * PANEL > 16) {
            if count == 2 {
                one_row_ymm(job, [w.add(p * panel_len), w.add((p + 1) * panel_len)], p);
            } else {
                panel_block::<HALVES>(job, panel_source(job, p), p, 0, 1);
            }
        }
        return;
    }
    for (p, count) in few_rows_groups(job.rows, panels, |p| n - p * PANEL > 16) {
        match (job.rows, count) {
            (1, 4) => panels_block::<1, 4, HALVES>(job, p, 0),
            (1, 2) => panels_block::<1, 2, HALVES>(job, p, 0),
            (2, 2) => panels_block::<2, 2, HALVES>(job, p, 0),
            (3, 2) => panels_block::<3, 2, HALVES>(job, p, 0),
            (4, 2) => panels_block::<4, 2, HALVES>(job, p, 0),
            (5, 2) => panels_block::<5, 2, HALVES>(job, p, 0),
            (6, 2) => panels_block::<6, 2, HALVES>(job, p, 0),
            _ => panel_block::<HALVES>(job, panel_source(job, p), p, 0, job.rows),
        }
    }
}

/// One row of fp16 panels `p` and `p + 1` (both whole) on Zen 4, in
/// 256-bit pieces: each 8 weights converted by one `vcvtph2ps ymm` and
/// multiplied by one 256-bit FMA (8 chains), as the AVX2 kernel does. The
/// 512-bit form spent an insert per 16 weights joining converted halves:
/// one candidate of the benchmark model took 151.9 µs against 176.1
/// (bench/RESULTS.md).
/// Each output keeps its one accumulator, added in the order of [`block`]
/// (an FMA per lane either way), and the epilogue is [`store_rows`]'s: the
/// same bits as any other block.
#[inline(always)]
unsafe fn one_row_ymm(job: &mut LinearJob<'_>, panels: [*const half::f16; 2], p: usize) {
    let mut acc = [[_mm256_setzero_ps(); 4]; 2];
    let x = job.x.as_ptr().add(job.in_off);
    for range in job.k_ranges {
        for k in range.clone() {
            let b = _mm256_set1_ps(*x.add(k));
            for (a, &w) in acc.iter_mut().zip(&panels) {
                let w = w.add(k * PANEL);
                for (q, a) in a.iter_mut().enumerate() {
                    let wq = _mm256_cvtph_ps(_mm_loadu_si128(w.add(8 * q) as *const __m128i));
                    *a = _mm256_fmadd_ps(wq, b, *a);
                }
            }
        }
    }
    for (j, a) in acc.iter().enumerate() {
        let (bias_add, valid) = panel_bias(job, p + j);
        let sums = [[join(a[0], a[1]), join(a[2], a[3])]];
        store_rows(job, &sums, 0, p + j, &bias_add, valid);
    }
}

/// The panels of a job of few rows in groups `(first, count)`, in order:
/// 4 at a time for one row, 2 for more, over panels for which `groupable`
/// holds, the others one at a time. Shared with the bf16 kernel (1 to 3
/// rows).
pub(super) fn few_rows_groups(
    rows: usize,
    panels: usize,
    groupable: impl Fn(usize) -> bool,
) -> impl Iterator<Item = (usize, usize)> {
    let sizes: &[usize] = if rows == 1 { &[4, 2] } else { &[2] };
    let mut p = 0;
    std::iter::from_fn(move || {
        (p < panels).then(|| {
            let count = sizes
                .iter()
                .copied()
                .find(|&c| p + c <= panels && (p..p + c).all(&groupable))
                .unwrap_or(1);
            p += count;
            (p - count, count)
        })
    })
}

/// Where panel `p`'s rows start.
#[inline(always)]
unsafe fn panel_source(job: &LinearJob<'_>, p: usize) -> PanelSource {
    let base = p * job.k_total * PANEL;
    match job.w {
        Values::F32(w) => PanelSource::F32(w.as_ptr().add(base)),
        Values::F16(w) => PanelSource::F16(w.as_ptr().add(base)),
    }
}

/// Panel `p`'s count of valid outputs, and bias + add of each (fp32, zero
/// past the valid ones). Shared with the bf16 kernel.
#[inline(always)]
pub(super) fn panel_bias(job: &LinearJob<'_>, p: usize) -> ([f32; PANEL], usize) {
    let valid = PANEL.min(job.n - p * PANEL);
    let mut bias_add = [0.0f32; PANEL];
    for (j, slot) in bias_add.iter_mut().enumerate().take(valid) {
        *slot = job.bias_add(p * PANEL + j);
    }
    (bias_add, valid)
}

/// Rows `r0..r0 + MR` of panels `p..p + NP`, side by side, each output
/// with one accumulator added in the order of [`block`].
#[inline(always)]
unsafe fn panels_block<const MR: usize, const NP: usize, const HALVES: bool>(
    job: &mut LinearJob<'_>,
    p: usize,
    r0: usize,
) {
    let mut acc = [[[_mm512_setzero_ps(); 2]; MR]; NP];
    let sources: [PanelSource; NP] = std::array::from_fn(|j| panel_source(job, p + j));
    let x = job.x.as_ptr();
    let mut rows = [x; MR];
    for (i, row) in rows.iter_mut().enumerate() {
        *row = x.add((r0 + i) * job.ldx + job.in_off);
    }
    for range in job.k_ranges {
        for k in range.clone() {
            let b: [__m512; MR] = std::array::from_fn(|i| _mm512_set1_ps(*rows[i].add(k)));
            for j in 0..NP {
                let (w0, w1) = load_panel_row::<2, false, HALVES>(sources[j], k);
                for i in 0..MR {
                    acc[j][i][0] = _mm512_fmadd_ps(w0, b[i], acc[j][i][0]);
                    acc[j][i][1] = _mm512_fmadd_ps(w1, b[i], acc[j][i][1]);
                }
            }
        }
    }
    for (j, a) in acc.iter().enumerate() {
        let (bias_add, valid) = panel_bias(job, p + j);
        // A copy, as in `block`.
        let a = *a;
        store_rows(job, &a, r0, p + j, &bias_add, valid);
    }
}

/// Rows `r..r + mr` of panel `p`, whose rows come from `source`.
#[inline(always)]
unsafe fn panel_block<const HALVES: bool>(
    job: &mut LinearJob<'_>,
    source: PanelSource,
    p: usize,
    r: usize,
    mr: usize,
) {
    let (bias_add, valid) = panel_bias(job, p);
    // `block::<mr, H>` for a runtime `mr` of 1 to 12.
    macro_rules! blocks {
        ($h:literal: $($rows:literal)*) => {
            match mr {
                $($rows => block::<$rows, $h, HALVES>(job, source, p, r, &bias_add, valid),)*
                _ => block::<1, $h, HALVES>(job, source, p, r, &bias_add, valid),
            }
        };
    }
    if valid > 16 {
        blocks!(2: 12 11 10 9 8 7 6 5 4 3 2);
    } else {
        // A narrow layer (a gate over a few experts, a tower's logit): the
        // panel's second half holds only padding, so it is not computed.
        blocks!(1: 12 11 10 9 8 7 6 5 4 3 2);
    }
}

/// Panel row `k` as two fp32 vectors (the second left zero when `H` is 1:
/// only the first half of the panel is used).
#[inline(always)]
unsafe fn load_panel_row<const H: usize, const PF: bool, const HALVES: bool>(
    source: PanelSource,
    k: usize,
) -> (__m512, __m512) {
    match source {
        PanelSource::F32(w) => (
            _mm512_loadu_ps(w.add(k * PANEL)),
            if H == 2 {
                _mm512_loadu_ps(w.add(k * PANEL + 16))
            } else {
                _mm512_setzero_ps()
            },
        ),
        PanelSource::F16(w) => convert_panel_row::<H, PF, HALVES>(w, k),
        PanelSource::F16Keep(w, to) => {
            let (w0, w1) = convert_panel_row::<H, PF, HALVES>(w, k);
            _mm512_storeu_ps(to.add(k * PANEL), w0);
            if H == 2 {
                _mm512_storeu_ps(to.add(k * PANEL + 16), w1);
            }
            (w0, w1)
        }
    }
}

/// fp16 panel row `k` converted, as [`load_panel_row`].
#[inline(always)]
unsafe fn convert_panel_row<const H: usize, const PF: bool, const HALVES: bool>(
    w: *const half::f16,
    k: usize,
) -> (__m512, __m512) {
    if PF {
        _mm_prefetch::<_MM_HINT_T0>(w.wrapping_add((k + PREFETCH_ROWS) * PANEL) as *const i8);
    }
    (
        convert16::<HALVES>(w.add(k * PANEL)),
        if H == 2 {
            convert16::<HALVES>(w.add(k * PANEL + 16))
        } else {
            _mm512_setzero_ps()
        },
    )
}

/// 16 fp16 values at `w` as fp32: in one 16-lane conversion, or with
/// `HALVES` in two 8-lane ones (see [`converts_in_halves`]).
#[inline(always)]
unsafe fn convert16<const HALVES: bool>(w: *const half::f16) -> __m512 {
    if HALVES {
        let lo = _mm256_cvtph_ps(_mm_loadu_si128(w as *const __m128i));
        let hi = _mm256_cvtph_ps(_mm_loadu_si128(w.add(8) as *const __m128i));
        join(lo, hi)
    } else {
        _mm512_cvtph_ps(_mm256_loadu_si256(w as *const __m256i))
    }
}

/// `lo` and `hi` as the low and high halves of one 512-bit vector.
#[inline(always)]
unsafe fn join(lo: __m256, hi: __m256) -> __m512 {
    _mm512_castpd_ps(_mm512_insertf64x4::<1>(
        _mm512_castps_pd(_mm512_castps256_ps512(lo)),
        _mm256_castps_pd(hi),
    ))
}

/// Rows `r0..r0 + MR` of panel `p`.
///
/// One accumulator per output and row: every row's products are added in
/// the same order (k ascending) whatever the block's size, so a tile cut
/// anywhere across threads keeps every row's bits. A block of 1 to 3 rows
/// has only 2 to 6 independent FMA chains: a job of up to 6 rows takes
/// several panels at a time instead ([`few_rows`]), and [`block_rows`]
/// never leaves a block of 1 to 3 rows in a larger job.
#[inline(always)]
unsafe fn block<const MR: usize, const H: usize, const HALVES: bool>(
    job: &mut LinearJob<'_>,
    source: PanelSource,
    p: usize,
    r0: usize,
    bias_add: &[f32; PANEL],
    valid: usize,
) {
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    let x = job.x.as_ptr();
    let mut rows = [x; MR];
    for (i, row) in rows.iter_mut().enumerate() {
        *row = x.add((r0 + i) * job.ldx + job.in_off);
    }
    for range in job.k_ranges {
        for k in range.clone() {
            let (w0, w1) = load_panel_row::<H, true, HALVES>(source, k);
            for i in 0..MR {
                let b = _mm512_set1_ps(*rows[i].add(k));
                acc[i][0] = _mm512_fmadd_ps(w0, b, acc[i][0]);
                if H == 2 {
                    acc[i][1] = _mm512_fmadd_ps(w1, b, acc[i][1]);
                }
            }
        }
    }
    // A copy for `store_rows`: with the loop's own array passed by
    // reference, LLVM kept blocks of 9 to 12 rows' accumulators on the
    // stack (3,181 zmm spills and reloads in this function against 1,621,
    // and 32 rows of 512×512 at 78 against 102 GFLOP/s on the development
    // machine).
    let acc = acc;
    store_rows(job, &acc, r0, p, bias_add, valid);
}

/// Adds bias and request part, applies the activation, scale and shift, and stores the valid outputs
/// of rows `r0..r0 + MR` of panel `p` (masked: nothing past the output
/// view is touched). Shared with the bf16 kernel.
#[inline(always)]
pub(super) unsafe fn store_rows<const MR: usize>(
    job: &mut LinearJob<'_>,
    acc: &[[__m512; 2]; MR],
    r0: usize,
    p: usize,
    bias_add: &[f32; PANEL],
    valid: usize,
) {
    let b0 = _mm512_loadu_ps(bias_add.as_ptr());
    let b1 = _mm512_loadu_ps(bias_add.as_ptr().add(16));
    let zero = _mm512_setzero_ps();
    // Masks of the valid outputs of each half of the panel.
    let m0: __mmask16 = if valid >= 16 {
        0xffff
    } else {
        ((1u32 << valid) - 1) as u16
    };
    let m1: __mmask16 = if valid >= 32 {
        0xffff
    } else if valid > 16 {
        ((1u32 << (valid - 16)) - 1) as u16
    } else {
        0
    };
    let y = job.y.as_mut_ptr();
    for (i, a) in acc.iter().enumerate() {
        let mut v0 = _mm512_add_ps(a[0], b0);
        let mut v1 = _mm512_add_ps(a[1], b1);
        match job.act {
            Act::None => {}
            Act::Relu => {
                v0 = _mm512_max_ps(v0, zero);
                v1 = _mm512_max_ps(v1, zero);
            }
            Act::TwoSigmoid => {
                // FinalMLP gates' last layer; the compiler vectorizes this loop.
                let mut lanes = [0.0f32; PANEL];
                _mm512_storeu_ps(lanes.as_mut_ptr(), v0);
                _mm512_storeu_ps(lanes.as_mut_ptr().add(16), v1);
                for v in lanes.iter_mut() {
                    *v = two_sigmoid(*v);
                }
                v0 = _mm512_loadu_ps(lanes.as_ptr());
                v1 = _mm512_loadu_ps(lanes.as_ptr().add(16));
            }
        }
        let col = p * PANEL;
        if let Some(scale) = job.scale {
            let at = scale.as_ptr().add((r0 + i) * job.ld_scale + col);
            v0 = _mm512_mul_ps(v0, _mm512_maskz_loadu_ps(m0, at));
            v1 = _mm512_mul_ps(v1, _mm512_maskz_loadu_ps(m1, at.wrapping_add(16)));
        }
        if let Some(shift) = job.shift {
            let at = shift.as_ptr().add((r0 + i) * job.ld_shift + col);
            v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, at));
            v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, at.wrapping_add(16)));
        }
        let out = y.add((r0 + i) * job.ldy + job.out_off + col);
        _mm512_mask_storeu_ps(out, m0, v0);
        // Past the view when `valid` ≤ 16: then `m1` is 0 and nothing is
        // touched (hence `wrapping_add`, not `add`, for the address).
        _mm512_mask_storeu_ps(out.wrapping_add(16), m1, v1);
    }
}
