//! Measures this machine's fp32 FMA peak on one thread: independent chains of
//! vector FMAs, long enough that the loop overhead vanishes. Benchmarks report
//! their throughput as a share of this number.

use std::hint::black_box;
use std::time::Instant;

use super::Isa;

/// GFLOP/s of one thread issuing only FMAs on `isa` (a multiply-add counts 2).
pub fn fma_gflops(isa: Isa) -> f64 {
    fma_gflops_over(isa, 20_000_000)
}

/// [`fma_gflops`] over `iterations` of the chains' loop (16 FMAs each with
/// AVX-512): a shorter, noisier measure.
pub fn fma_gflops_over(isa: Isa, iterations: u64) -> f64 {
    let start = Instant::now();
    let lanes = match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller passes an ISA this CPU supports (checked below).
        Isa::Avx512 if isa.supported() => unsafe { avx512(iterations) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        Isa::Avx2 if isa.supported() => unsafe { avx2(iterations) },
        _ => generic(iterations),
    };
    let seconds = start.elapsed().as_secs_f64();
    (iterations as f64 * lanes as f64 * 2.0) / seconds / 1e9
}

/// Returns the FMA lanes issued per iteration.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn avx512(iterations: u64) -> u64 {
    use std::arch::x86_64::*;
    let a = _mm512_set1_ps(black_box(0.999_999));
    let b = _mm512_set1_ps(black_box(1e-7));
    let mut acc = [_mm512_setzero_ps(); 16];
    for _ in 0..iterations {
        for c in acc.iter_mut() {
            *c = _mm512_fmadd_ps(*c, a, b);
        }
    }
    black_box(acc);
    16 * 16
}

/// GFLOP/s of one thread issuing only 512-bit bf16 dot products
/// (`vdpbf16ps`: 32 multiply-adds each) over `iterations` of 16 chains;
/// `None` where the CPU lacks AVX512-BF16.
pub fn bf16_dot_gflops(iterations: u64) -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    if super::bf16::supported() {
        let start = Instant::now();
        // SAFETY: supported() proved AVX-512F and AVX512-BF16.
        unsafe { bf16_dots(iterations) };
        let seconds = start.elapsed().as_secs_f64().max(1e-9);
        return Some((iterations * 16 * 64) as f64 / seconds / 1e9);
    }
    let _ = iterations;
    None
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn bf16_dots(iterations: u64) {
    use std::arch::x86_64::*;
    let w: __m512bh = std::mem::transmute(_mm512_set1_epi32(black_box(0x3f80_3f80)));
    let mut acc = [_mm512_setzero_ps(); 16];
    for _ in 0..iterations {
        for a in acc.iter_mut() {
            *a = _mm512_dpbf16_ps(*a, w, w);
        }
    }
    black_box(acc);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2(iterations: u64) -> u64 {
    use std::arch::x86_64::*;
    let a = _mm256_set1_ps(black_box(0.999_999));
    let b = _mm256_set1_ps(black_box(1e-7));
    let mut acc = [_mm256_setzero_ps(); 12];
    for _ in 0..iterations {
        for c in acc.iter_mut() {
            *c = _mm256_fmadd_ps(*c, a, b);
        }
    }
    black_box(acc);
    12 * 8
}

fn generic(iterations: u64) -> u64 {
    let (a, b) = (black_box(0.999_999f32), black_box(1e-7f32));
    let mut acc = [0.0f32; 32];
    for _ in 0..iterations / 8 {
        for c in acc.iter_mut() {
            *c = c.mul_add(a, b);
        }
    }
    black_box(acc);
    32 / 8
}

/// GFLOP/s of the Linear kernel alone on `isa`: `rows` rows through `layers`
/// distinct fp16 layers of `n` outputs over `k` inputs (bias and ReLU
/// epilogue), taken in turn; the best of several timed passes. One 512×512
/// layer stays in L2; eighteen (9 MB) come from L3 as a model's layers do.
/// This separates what the kernel can do from what a whole model call adds.
/// Each timed pass does about `flops_per_pass` (at least one call per layer,
/// at most 10⁷ calls). An ISA this CPU lacks runs the generic kernel (see
/// [`super::linear`]).
pub fn linear_gflops(
    isa: Isa,
    rows: usize,
    k: usize,
    n: usize,
    layers: usize,
    flops_per_pass: f64,
) -> f64 {
    use super::{linear, KernelScratch, LinearJob};
    use crate::format::PANEL;
    use crate::model::Values;
    let (rows, k, n, layers) = (rows.max(1), k.max(1), n.max(1), layers.max(1));
    let layer_len = n.div_ceil(PANEL) * PANEL * k;
    let weights: Vec<half::f16> = (0..layer_len * layers)
        .map(|i| half::f16::from_f32(((i % 61) as f32 - 30.0) * 1e-3))
        .collect();
    let bias: Vec<half::f16> = vec![half::f16::from_f32(0.01); n];
    let x: Vec<f32> = (0..rows * k).map(|i| (i % 7) as f32 * 0.1).collect();
    let mut y = vec![0.0f32; rows * n];
    let ranges = [0..k];
    let mut scratch = KernelScratch::default();
    let flops_per_call = 2.0 * (rows * k * n) as f64;
    let calls = ((flops_per_pass / flops_per_call).min(1e7) as usize).max(layers);
    let mut best = f64::MAX;
    for _ in 0..30 {
        let start = Instant::now();
        for call in 0..calls {
            let at = (call % layers) * layer_len;
            let mut job = LinearJob {
                x: &x,
                ldx: k,
                in_off: 0,
                rows,
                k_ranges: &ranges,
                k_total: k,
                w: Values::F16(&weights[at..at + layer_len]),
                w_bf16: None,
                n,
                bias: Some(Values::F16(&bias)),
                add: None,
                act: crate::program::Act::Relu,
                scale: None,
                ld_scale: 0,
                shift: None,
                ld_shift: 0,
                y: &mut y,
                ldy: n,
                out_off: 0,
            };
            linear(isa, &mut job, &mut scratch);
        }
        best = best.min(start.elapsed().as_secs_f64());
        black_box(&y);
    }
    calls as f64 * flops_per_call / best.max(1e-9) / 1e9
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_throughput_is_measured_on_every_supported_isa() {
        for isa in Isa::ALL.into_iter().filter(|i| i.supported()) {
            let before = super::super::calls(isa);
            let gflops = linear_gflops(isa, 4, 64, 40, 2, 1e5);
            assert!(gflops.is_finite() && gflops > 0.0, "{isa:?}: {gflops}");
            assert!(
                super::super::calls(isa) > before,
                "{isa:?} kernel did not run"
            );
        }
    }
}
