//! Measures this machine's fp32 FMA peak on one thread: independent chains of
//! vector FMAs, long enough that the loop overhead vanishes. Benchmarks report
//! their throughput as a share of this number.

use std::hint::black_box;
use std::time::Instant;

use super::Isa;

/// GFLOP/s of one thread issuing only FMAs on `isa` (a multiply-add counts 2).
pub fn fma_gflops(isa: Isa) -> f64 {
    let iterations = 20_000_000u64;
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
