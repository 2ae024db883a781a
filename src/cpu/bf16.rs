//! The bf16 compute mode: Linear weights converted once, at open, into bf16
//! pairs for AVX512-BF16's `vdpbf16ps` (two multiply-adds per lane per
//! instruction, fp32 accumulation), and the kernel that uses them. Inputs are
//! rounded to bf16 per layer; the accuracy cost is measured, not assumed
//! (`tests/integration/cpu_paths.rs`, bench/RESULTS.md).
//!
//! Layout of a Linear weight `[n, k]`: per 32-output panel `p`, per column
//! pair `q` (columns `2q`, `2q + 1`), two halves of 16 outputs, each output's
//! pair adjacent: element `(i, c)` is at
//! `((p·Q + q)·2 + h)·32 + 2·j + c % 2` with `i = 32p + 16h + j`, `q = c / 2`,
//! `Q = ceil(k / 2)`; zero where `i ≥ n` or `c ≥ k`.

use std::ops::Range;

use half::bf16;

use super::{KernelScratch, LinearJob};
use crate::format::PANEL;
use crate::model::Values;

/// Whether this CPU can run the bf16 kernel.
pub fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::Isa::Avx512.supported() && is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// This CPU's throughput of bf16 dot products (`vdpbf16ps`) and of fp32
/// FMAs, in GFLOP/s on one thread, measured once per process (a few
/// milliseconds, `cpu::peak`): where the dot products are not clearly
/// faster, the bf16 mode would only cost accuracy. Zen 4 runs a 512-bit
/// `vdpbf16ps` (32 multiply-adds) at the rate of a 512-bit FMA (16), so
/// twice the FLOPs; Sapphire and Emerald Rapids run it at half an FMA's
/// rate, so the same FLOPs as their two FMA ports at best (measured: 85
/// against 171 GFLOP/s on an Emerald Rapids Xeon). `None` where the kernel
/// is unsupported.
pub fn dot_speed() -> Option<DotSpeed> {
    static SPEED: std::sync::OnceLock<Option<DotSpeed>> = std::sync::OnceLock::new();
    *SPEED.get_or_init(|| {
        const ITERATIONS: u64 = 50_000;
        // Alternated, best of three each: a neighbour's burst or a
        // frequency step does not decide alone.
        let (mut bf16, mut fp32) = (0.0f64, 0.0f64);
        for _ in 0..3 {
            bf16 = bf16.max(super::peak::bf16_dot_gflops(ITERATIONS)?);
            fp32 = fp32.max(super::peak::fma_gflops_over(super::Isa::Avx512, ITERATIONS));
        }
        Some(DotSpeed { bf16, fp32 })
    })
}

/// GFLOP/s of bf16 dot products and of fp32 FMAs on one thread.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DotSpeed {
    pub bf16: f64,
    pub fp32: f64,
}

impl DotSpeed {
    /// Whether the bf16 kernel is worth its accuracy price here: its dot
    /// products at least 1.25 times the FLOPs of fp32 FMAs.
    pub fn bf16_faster(&self) -> bool {
        self.bf16 >= 1.25 * self.fp32
    }
}

/// Converts a panel-layout Linear weight into the bf16 pair layout.
pub fn convert_weight(w: &Values<'_>, n: usize, k: usize) -> Vec<u16> {
    let panels = n.div_ceil(PANEL);
    let pairs = k.div_ceil(2);
    let mut out = vec![0u16; panels * pairs * 2 * PANEL];
    for p in 0..panels {
        for c in 0..k {
            for slot in 0..PANEL {
                let i = p * PANEL + slot;
                if i >= n {
                    break;
                }
                let (h, j) = (slot / 16, slot % 16);
                let at = ((p * pairs + c / 2) * 2 + h) * 32 + 2 * j + c % 2;
                out[at] = bf16::from_f32(w.get((p * k + c) * PANEL + slot)).to_bits();
            }
        }
    }
    out
}

/// Pair ranges covering `ranges` (columns `c` → pairs `c / 2`), merged so
/// that no pair is counted twice. Columns outside `ranges` are zeroed in the
/// converted inputs, so covering them is harmless.
fn pair_ranges(ranges: &[Range<usize>], out: &mut Vec<Range<usize>>) {
    out.clear();
    for r in ranges.iter().filter(|r| !r.is_empty()) {
        let pr = r.start / 2..r.end.div_ceil(2);
        match out.last_mut() {
            Some(last) if pr.start <= last.end => last.end = last.end.max(pr.end),
            _ => out.push(pr),
        }
    }
}

/// `row` (even length) as bf16 pairs, rounding to nearest even.
fn to_pairs(row: &[f32], out: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    if supported() {
        // SAFETY: supported() proved AVX-512F and AVX512-BF16; every access
        // stays within `row` (32 floats per step) and `out` (16 pairs).
        unsafe { to_pairs_avx512(row, out) };
        return;
    }
    to_pairs_scalar(row, out);
}

fn to_pairs_scalar(row: &[f32], out: &mut [u32]) {
    for (pair, chunk) in out.iter_mut().zip(row.chunks_exact(2)) {
        let lo = bf16::from_f32(chunk[0]).to_bits() as u32;
        let hi = bf16::from_f32(chunk[1]).to_bits() as u32;
        *pair = lo | (hi << 16);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn to_pairs_avx512(row: &[f32], out: &mut [u32]) {
    use std::arch::x86_64::*;
    let full = (row.len() / 32).min(out.len() / 16);
    for c in 0..full {
        let lo = _mm512_loadu_ps(row.as_ptr().add(32 * c));
        let hi = _mm512_loadu_ps(row.as_ptr().add(32 * c + 16));
        // Element i of the result is bf16(lo[i]) for i < 16: consecutive
        // columns land in consecutive halves, i.e. as (even, odd) pairs.
        let packed: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
        _mm512_storeu_si512(out.as_mut_ptr().add(16 * c) as *mut _, packed);
    }
    to_pairs_scalar(&row[32 * full..], &mut out[16 * full..]);
}

/// Runs a Linear job with bf16 weights `w` (layout above). For the
/// dispatcher only: it relies on `job.check()` having passed.
pub(super) fn linear(job: &mut LinearJob<'_>, w: &[u16], scratch: &mut KernelScratch) {
    let pairs = job.k_total.div_ceil(2);
    assert!(
        w.len() >= job.n.div_ceil(PANEL) * pairs * 2 * PANEL,
        "bf16 weights too short"
    );
    pair_ranges(job.k_ranges, &mut scratch.pair_ranges);
    // Inputs as bf16 pairs, zero outside the job's columns: [rows × pairs].
    scratch.x_pairs.clear();
    scratch.x_pairs.resize(job.rows * pairs, 0);
    scratch.row.clear();
    scratch.row.resize(pairs * 2, 0.0);
    for r in 0..job.rows {
        let row = &mut scratch.row;
        row.fill(0.0);
        let x = &job.x[r * job.ldx + job.in_off..];
        for range in job.k_ranges {
            row[range.clone()].copy_from_slice(&x[range.clone()]);
        }
        let out = &mut scratch.x_pairs[r * pairs..(r + 1) * pairs];
        to_pairs(row, out);
    }
    #[cfg(target_arch = "x86_64")]
    {
        assert!(supported(), "the bf16 kernel needs AVX512-BF16");
        // SAFETY: supported() proved AVX-512F and AVX512-BF16; the asserts
        // above and job.check() (run by the dispatcher) bound every index.
        unsafe { kernel(job, w, pairs, scratch) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = w;
        unreachable!("the bf16 mode is only enabled where supported()")
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn kernel(job: &mut LinearJob<'_>, w: &[u16], pairs: usize, scratch: &KernelScratch) {
    let panels = job.n.div_ceil(PANEL);
    if (1..=3).contains(&job.rows) {
        // Panels several at a time, as in the AVX-512 kernel's `few_rows`
        // (each output's sum in the same order); this kernel computes every
        // panel whole, so any panel may join a group.
        for (p, count) in super::avx512::few_rows_groups(job.rows, panels, |_| true) {
            match (job.rows, count) {
                (1, 4) => panels_block::<1, 4>(job, w, scratch, pairs, p),
                (1, 2) => panels_block::<1, 2>(job, w, scratch, pairs, p),
                (2, 2) => panels_block::<2, 2>(job, w, scratch, pairs, p),
                (3, 2) => panels_block::<3, 2>(job, w, scratch, pairs, p),
                (rows, _) => {
                    let (bias_add, valid) = super::avx512::panel_bias(job, p);
                    let panel = w.as_ptr().add(p * pairs * 2 * PANEL);
                    match rows {
                        1 => block::<1>(job, panel, scratch, pairs, p, 0, &bias_add, valid),
                        2 => block::<2>(job, panel, scratch, pairs, p, 0, &bias_add, valid),
                        _ => block::<3>(job, panel, scratch, pairs, p, 0, &bias_add, valid),
                    }
                }
            }
        }
        return;
    }
    let mut r = 0;
    while r < job.rows {
        // The AVX-512 kernel's blocks: the fewest, as even as can be.
        let mr = super::avx512::block_rows(job.rows - r);
        for p in 0..panels {
            let (bias_add, valid) = super::avx512::panel_bias(job, p);
            let panel = w.as_ptr().add(p * pairs * 2 * PANEL);
            // `block::<mr>` for a runtime `mr` of 1 to 12.
            macro_rules! blocks {
                ($($rows:literal)*) => {
                    match mr {
                        $($rows => block::<$rows>(job, panel, scratch, pairs, p, r, &bias_add, valid),)*
                        _ => block::<1>(job, panel, scratch, pairs, p, r, &bias_add, valid),
                    }
                };
            }
            blocks!(12 11 10 9 8 7 6 5 4 3 2);
        }
        r += mr;
    }
}

/// Rows `0..MR` (the whole job) of panels `p..p + NP` side by side, each
/// output's sum in the order of [`block`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn panels_block<const MR: usize, const NP: usize>(
    job: &mut LinearJob<'_>,
    w: &[u16],
    scratch: &KernelScratch,
    pairs: usize,
    p: usize,
) {
    use std::arch::x86_64::*;
    let mut acc = [[[_mm512_setzero_ps(); 2]; MR]; NP];
    let x = scratch.x_pairs.as_ptr();
    let panel = |j: usize| w.as_ptr().add((p + j) * pairs * 2 * PANEL);
    for range in &scratch.pair_ranges {
        for q in range.clone() {
            let b: [__m512bh; MR] = std::array::from_fn(|i| {
                std::mem::transmute(_mm512_set1_epi32(*x.add(i * pairs + q) as i32))
            });
            for (j, acc) in acc.iter_mut().enumerate() {
                let at = panel(j).add(q * 2 * PANEL);
                let w0: __m512bh = std::mem::transmute(_mm512_loadu_si512(at as *const _));
                let w1: __m512bh =
                    std::mem::transmute(_mm512_loadu_si512(at.add(PANEL) as *const _));
                for (a, &b) in acc.iter_mut().zip(&b) {
                    a[0] = _mm512_dpbf16_ps(a[0], w0, b);
                    a[1] = _mm512_dpbf16_ps(a[1], w1, b);
                }
            }
        }
    }
    for (j, a) in acc.iter().enumerate() {
        let (bias_add, valid) = super::avx512::panel_bias(job, p + j);
        // A copy, as in `block`.
        let a = *a;
        super::avx512::store_rows(job, &a, 0, p + j, &bias_add, valid);
    }
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn block<const MR: usize>(
    job: &mut LinearJob<'_>,
    panel: *const u16,
    scratch: &KernelScratch,
    pairs: usize,
    p: usize,
    r0: usize,
    bias_add: &[f32; PANEL],
    valid: usize,
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    let x = scratch.x_pairs.as_ptr();
    for range in &scratch.pair_ranges {
        for q in range.clone() {
            let w0: __m512bh =
                std::mem::transmute(_mm512_loadu_si512(panel.add(q * 2 * PANEL) as *const _));
            let w1: __m512bh = std::mem::transmute(_mm512_loadu_si512(
                panel.add(q * 2 * PANEL + PANEL) as *const _,
            ));
            for (i, a) in acc.iter_mut().enumerate() {
                let b: __m512bh =
                    std::mem::transmute(_mm512_set1_epi32(*x.add((r0 + i) * pairs + q) as i32));
                a[0] = _mm512_dpbf16_ps(a[0], w0, b);
                a[1] = _mm512_dpbf16_ps(a[1], w1, b);
            }
        }
    }
    // A copy, as in the AVX-512 kernel's `block`: 366 zmm spills and
    // reloads in this kernel against 436 without.
    let acc = acc;
    super::avx512::store_rows(job, &acc, r0, p, bias_add, valid);
}
