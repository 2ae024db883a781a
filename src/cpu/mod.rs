//! CPU kernels with runtime dispatch: the Linear layer (`Y = X Wᵀ + b`, the
//! bulk of the work) per instruction set, over the packed panel layout.
//!
//! The instruction set is detected once per process ([`Isa::detected`]) and can
//! be forced with `MMOE_ISA=avx512|avx2|generic` (an ISA the CPU lacks is
//! refused, not emulated). Each kernel counts its calls, so tests can prove
//! that a forced path really ran ([`calls`]).

pub mod bf16;
pub mod generic;
pub mod ids_u32;
pub mod peak;
pub mod to_f16;

#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx512;

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use crate::error::{Error, Result};
use crate::model::Values;

/// An instruction set the CPU kernels are written for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Isa {
    /// AVX-512F + F16C (+ AVX512-BF16 for the bf16 mode when present).
    Avx512,
    /// AVX2 + FMA + F16C.
    Avx2,
    /// Portable Rust, any target.
    Generic,
}

impl Isa {
    pub const ALL: [Isa; 3] = [Isa::Avx512, Isa::Avx2, Isa::Generic];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Generic => "generic",
        }
    }

    pub fn parse(name: &str) -> Option<Isa> {
        Isa::ALL.into_iter().find(|i| i.name() == name)
    }

    /// Whether this CPU can run the ISA's kernels.
    pub fn supported(self) -> bool {
        match self {
            Isa::Generic => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("f16c")
                    && is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The best supported ISA.
    pub fn best() -> Isa {
        Isa::ALL
            .into_iter()
            .find(|i| i.supported())
            .unwrap_or(Isa::Generic)
    }

    /// The process-wide choice: `MMOE_ISA` when set, else the best. Read once.
    pub fn detected() -> Result<Isa> {
        static CHOICE: OnceLock<std::result::Result<Isa, String>> = OnceLock::new();
        CHOICE
            .get_or_init(|| match std::env::var("MMOE_ISA") {
                Ok(name) => match Isa::parse(&name) {
                    Some(isa) if isa.supported() => Ok(isa),
                    Some(isa) => Err(format!(
                        "MMOE_ISA={name}: this CPU cannot run the {} kernels",
                        isa.name()
                    )),
                    None => Err(format!("MMOE_ISA={name}: expected avx512, avx2 or generic")),
                },
                Err(_) => Ok(Isa::best()),
            })
            .clone()
            .map_err(Error::argument)
    }
}

/// The arithmetic of the CPU path, chosen when a model is opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CpuMode {
    /// fp32 accumulation of the stored weights: the parity target.
    #[default]
    Exact,
    /// bf16 inputs and weights, fp32 accumulation (AVX512-BF16); where the
    /// CPU lacks it, the model falls back to `Exact` and says so.
    Bf16,
}

impl CpuMode {
    pub fn name(self) -> &'static str {
        match self {
            CpuMode::Exact => "exact",
            CpuMode::Bf16 => "bf16",
        }
    }
    pub fn parse(name: &str) -> Option<CpuMode> {
        match name {
            "exact" => Some(CpuMode::Exact),
            "bf16" => Some(CpuMode::Bf16),
            _ => None,
        }
    }
}

/// The ISAs this CPU can run, in `Isa::ALL`'s order; each one it cannot is
/// named on stderr as skipped (the SIMD paths' tests).
#[cfg(test)]
pub(crate) fn isas_to_test() -> Vec<Isa> {
    Isa::ALL
        .into_iter()
        .filter(|isa| {
            if !isa.supported() {
                eprintln!("skipped: this CPU has no {}", isa.name());
            }
            isa.supported()
        })
        .collect()
}

/// Calls per ISA, and (last slot) of the bf16 kernel.
static CALLS: [AtomicU64; 4] = [
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
    AtomicU64::new(0),
];
const BF16_SLOT: usize = 3;

/// How many Linear kernel calls each ISA has served in this process.
pub fn calls(isa: Isa) -> u64 {
    CALLS[isa as usize].load(Ordering::Relaxed)
}

/// How many Linear kernel calls the bf16 kernel has served in this process.
pub fn bf16_calls() -> u64 {
    CALLS[BF16_SLOT].load(Ordering::Relaxed)
}

/// Hints the CPU to bring the cache line holding `value` toward L1; a no-op
/// on targets without a prefetch instruction.
#[inline(always)]
pub fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint: it changes no architectural state and
    // cannot fault, whatever the address; SSE (which has it) is part of the
    // x86_64 baseline.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(value as *const T as *const i8)
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// One Linear layer over a tile of rows, with its epilogue:
/// `y[r, out_off + j] = scale[r, j] · act(Σ_{k ∈ k_ranges} x[r, in_off + k] · W[j, k] + bias[j] + add[j]) + shift[r, j]`
/// for `r < rows`, `j < n`, with `W [n, k_total]` in the panel layout
/// (`scale`, `shift`: row-major with row strides `ld_scale`, `ld_shift`).
pub struct LinearJob<'a> {
    pub x: &'a [f32],
    pub ldx: usize,
    pub in_off: usize,
    pub rows: usize,
    pub k_ranges: &'a [Range<usize>],
    pub k_total: usize,
    pub w: Values<'a>,
    /// The same weights in the bf16 pair layout, in the bf16 mode.
    pub w_bf16: Option<&'a [u16]>,
    pub n: usize,
    pub bias: Option<Values<'a>>,
    pub add: Option<&'a [f32]>,
    pub act: crate::program::Act,
    pub scale: Option<&'a [f32]>,
    pub ld_scale: usize,
    pub shift: Option<&'a [f32]>,
    pub ld_shift: usize,
    pub y: &'a mut [f32],
    pub ldy: usize,
    pub out_off: usize,
}

impl LinearJob<'_> {
    /// Checks every index the kernels will form, so that they may read and
    /// write without bounds checks.
    fn check(&self) {
        let panels = self.n.div_ceil(crate::format::PANEL);
        assert!(
            self.w.len() >= panels * crate::format::PANEL * self.k_total,
            "weights too short"
        );
        let k_end = self.k_ranges.iter().map(|r| r.end).max().unwrap_or(0);
        assert!(k_end <= self.k_total, "k range past the weights");
        if self.rows > 0 {
            assert!(
                self.x.len() >= (self.rows - 1) * self.ldx + self.in_off + k_end,
                "input too short"
            );
            assert!(
                self.y.len() >= (self.rows - 1) * self.ldy + self.out_off + self.n,
                "output too short"
            );
        }
        if let Some(b) = &self.bias {
            assert!(b.len() >= self.n, "bias too short");
        }
        if let Some(a) = self.add {
            assert!(a.len() >= self.n, "add too short");
        }
        if self.rows > 0 {
            if let Some(s) = self.scale {
                assert!(
                    s.len() >= (self.rows - 1) * self.ld_scale + self.n,
                    "scale too short"
                );
            }
            if let Some(s) = self.shift {
                assert!(
                    s.len() >= (self.rows - 1) * self.ld_shift + self.n,
                    "shift too short"
                );
            }
        }
    }

    /// The epilogue of output `j` of row `r`, from its accumulated sum.
    #[inline(always)]
    pub(crate) fn finish(&self, r: usize, j: usize, sum: f32) -> f32 {
        let mut v = sum;
        if let Some(b) = &self.bias {
            v += b.get(j);
        }
        if let Some(a) = self.add {
            v += a[j];
        }
        v = self.act.apply(v);
        if let Some(s) = self.scale {
            v *= s[r * self.ld_scale + j];
        }
        if let Some(s) = self.shift {
            v += s[r * self.ld_shift + j];
        }
        v
    }

    /// `bias[j] + add[j]` (the part of the epilogue before act).
    #[inline(always)]
    pub(crate) fn bias_add(&self, j: usize) -> f32 {
        self.bias.as_ref().map_or(0.0, |b| b.get(j)) + self.add.map_or(0.0, |a| a[j])
    }
}

/// Scratch a kernel may use: converted weight panels.
#[derive(Debug, Default)]
pub struct KernelScratch {
    /// Generic kernel: the accumulators of one panel for a tile.
    pub panel: Vec<f32>,
    /// bf16 mode: merged column-pair ranges, inputs as bf16 pairs, one row.
    pub pair_ranges: Vec<Range<usize>>,
    pub x_pairs: Vec<u32>,
    pub row: Vec<f32>,
    /// AVX-512 kernel: a weight panel converted to fp32 by the first row
    /// block of a group, for the others.
    pub converted: Vec<f32>,
}

/// Runs a Linear job on `isa`; an ISA this CPU cannot run falls back to the
/// generic kernel (the engine only passes supported ones; the counters of
/// [`calls`] show which ran).
pub fn linear(isa: Isa, job: &mut LinearJob<'_>, scratch: &mut KernelScratch) {
    job.check();
    let isa = if isa.supported() { isa } else { Isa::Generic };
    if let Some(w) = job.w_bf16 {
        CALLS[BF16_SLOT].fetch_add(1, Ordering::Relaxed);
        return bf16::linear(job, w, scratch);
    }
    CALLS[isa as usize].fetch_add(1, Ordering::Relaxed);
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => avx512::linear(job, &mut scratch.converted),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => avx2::linear(job),
        _ => generic::linear(job, scratch),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::program::Act;
    use half::f16;

    /// A random Linear job in panel layout, solved by every supported ISA and
    /// by a plain triple loop.
    fn check_all_isas(
        n: usize,
        k: usize,
        rows: usize,
        ranges: Vec<Range<usize>>,
        f16_weights: bool,
        seed: u64,
    ) {
        let mut rng = crate::demo::Rng::new(seed);
        let panels = n.div_ceil(32);
        let dense: Vec<f32> = (0..n * k).map(|_| rng.symmetric(1.0)).collect();
        let mut panel = vec![0.0f32; panels * 32 * k];
        for i in 0..n {
            for kk in 0..k {
                panel[(i / 32) * k * 32 + kk * 32 + i % 32] = dense[i * k + kk];
            }
        }
        let panel16: Vec<f16> = panel.iter().map(|&v| f16::from_f32(v)).collect();
        let w = if f16_weights {
            Values::F16(&panel16)
        } else {
            Values::F32(&panel)
        };
        let exact_w = |i: usize, kk: usize| {
            if f16_weights {
                f16::from_f32(dense[i * k + kk]).to_f32()
            } else {
                dense[i * k + kk]
            }
        };
        let (ldx, in_off, ldy, out_off) = (k + 5, 3, n + 7, 2);
        let x: Vec<f32> = (0..rows * ldx + in_off + k)
            .map(|_| rng.symmetric(2.0))
            .collect();
        let bias: Vec<f32> = (0..n).map(|_| rng.symmetric(0.5)).collect();
        let add: Vec<f32> = (0..n).map(|_| rng.symmetric(0.5)).collect();
        // Epilogue inputs (the DCN cross combine's x0 and x), row stride n + 3.
        let ld_epi = n + 3;
        let scale: Vec<f32> = (0..rows * ld_epi).map(|_| rng.symmetric(1.5)).collect();
        let shift: Vec<f32> = (0..rows * ld_epi).map(|_| rng.symmetric(1.0)).collect();
        for act in [Act::None, Act::Relu, Act::TwoSigmoid] {
            let mut want = vec![0.0f32; rows * ldy + out_off + n];
            for r in 0..rows {
                for i in 0..n {
                    let mut s = 0.0f64;
                    for range in &ranges {
                        for kk in range.clone() {
                            s += x[r * ldx + in_off + kk] as f64 * exact_w(i, kk) as f64;
                        }
                    }
                    let v = s as f32 + bias[i] + add[i];
                    let v = act.apply(v);
                    want[r * ldy + out_off + i] = scale[r * ld_epi + i] * v + shift[r * ld_epi + i];
                }
            }
            if bf16::supported() {
                // The bf16 kernel against the same sum over bf16-rounded operands.
                let w_bf16 = bf16::convert_weight(&w, n, k);
                let round = |v: f32| half::bf16::from_f32(v).to_f32() as f64;
                let mut y = vec![f32::NAN; rows * ldy + out_off + n];
                let mut job = LinearJob {
                    x: &x,
                    ldx,
                    in_off,
                    rows,
                    k_ranges: &ranges,
                    k_total: k,
                    w,
                    w_bf16: Some(&w_bf16),
                    n,
                    bias: Some(Values::F32(&bias)),
                    add: Some(&add),
                    act,
                    scale: Some(&scale),
                    ld_scale: ld_epi,
                    shift: Some(&shift),
                    ld_shift: ld_epi,
                    y: &mut y,
                    ldy,
                    out_off,
                };
                let before = bf16_calls();
                linear(Isa::Avx512, &mut job, &mut KernelScratch::default());
                assert!(bf16_calls() > before);
                for r in 0..rows {
                    for i in 0..n {
                        let mut s = 0.0f64;
                        for range in &ranges {
                            for kk in range.clone() {
                                s += round(x[r * ldx + in_off + kk]) * round(exact_w(i, kk));
                            }
                        }
                        let v = s as f32 + bias[i] + add[i];
                        let v = act.apply(v);
                        let exp = scale[r * ld_epi + i] * v + shift[r * ld_epi + i];
                        let got = y[r * ldy + out_off + i];
                        assert!(
                            (got - exp).abs() <= 1e-4 * (1.0 + exp.abs()),
                            "bf16 n {n} k {k} rows {rows}: {got} vs {exp}"
                        );
                    }
                }
            }
            for isa in Isa::ALL.into_iter().filter(|i| i.supported()) {
                let before = calls(isa);
                let mut y = vec![f32::NAN; rows * ldy + out_off + n];
                let mut job = LinearJob {
                    x: &x,
                    ldx,
                    in_off,
                    rows,
                    k_ranges: &ranges,
                    k_total: k,
                    w,
                    w_bf16: None,
                    n,
                    bias: Some(Values::F32(&bias)),
                    add: Some(&add),
                    act,
                    scale: Some(&scale),
                    ld_scale: ld_epi,
                    shift: Some(&shift),
                    ld_shift: ld_epi,
                    y: &mut y,
                    ldy,
                    out_off,
                };
                linear(isa, &mut job, &mut KernelScratch::default());
                assert!(calls(isa) > before);
                for r in 0..rows {
                    for i in 0..n {
                        let (got, exp) = (y[r * ldy + out_off + i], want[r * ldy + out_off + i]);
                        assert!(
                            (got - exp).abs() <= 1e-4 * (1.0 + exp.abs()),
                            "{isa:?} n {n} k {k} rows {rows} r {r} i {i}: {got} vs {exp}"
                        );
                    }
                    // Columns outside the output view are untouched.
                    assert!(y[r * ldy..r * ldy + out_off].iter().all(|v| v.is_nan()));
                }
            }
        }
    }

    #[test]
    fn every_isa_matches_the_scalar_sum() {
        let mut seed = 1;
        for &(n, k) in &[
            (1, 1),
            (5, 3),
            (32, 16),
            (33, 40),
            (64, 7),
            (100, 129),
            (256, 64),
            // Three panels: AVX2 takes a row's panels two at a time, then
            // the odd one.
            (80, 20),
            // Second halves of a last panel with 1–15 valid outputs.
            (57, 33),
            (50, 9),
            (24, 5),
        ] {
            // Every block size of the AVX-512 and bf16 kernels (1 to 12
            // rows; 13 = 7 + 6, 28 = 10 + 9 + 9) and the AVX2 kernel's;
            // 50 and 100 rows: the AVX-512 kernel's groups of 4 blocks,
            // then 1 (each group converting the panels again).
            for rows in [
                1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 16, 17, 28, 32, 50, 100,
            ] {
                for f16_weights in [true, false] {
                    check_all_isas(n, k, rows, vec![0..k], f16_weights, seed);
                    seed += 1;
                }
            }
        }
        // Column subsets (the candidate part of a split layer).
        check_all_isas(40, 50, 9, vec![0..4, 10..30, 45..50], true, 99);
        check_all_isas(40, 50, 9, vec![], true, 100);
        for rows in 1..=3 {
            check_all_isas(96, 50, rows, vec![0..4, 10..30, 45..50], true, 101);
        }
    }

    /// Every supported ISA's exact kernel, and the bf16 one (given its
    /// weights) where the CPU has it.
    fn kernels(w_bf16: &[u16]) -> Vec<(Isa, Option<&[u16]>)> {
        let mut runs: Vec<(Isa, Option<&[u16]>)> = Isa::ALL
            .into_iter()
            .filter(|i| i.supported())
            .map(|i| (i, None))
            .collect();
        if bf16::supported() {
            runs.push((Isa::Avx512, Some(w_bf16)));
        }
        runs
    }

    /// The Linear kernel of `isa` (the bf16 kernel for a job with bf16
    /// weights), for [`run_rows`].
    fn on(isa: Isa) -> impl FnOnce(&mut LinearJob<'_>) {
        move |job| linear(isa, job, &mut KernelScratch::default())
    }

    /// Rows `first..first + rows` of `x` (row stride `ldx`) through
    /// `kernel` (with `w_bf16`, if given, in the job), into a fresh output
    /// of row stride `n` (NaN where nothing was written).
    #[allow(clippy::too_many_arguments)]
    fn run_rows(
        kernel: impl FnOnce(&mut LinearJob<'_>),
        w: Values<'_>,
        w_bf16: Option<&[u16]>,
        n: usize,
        k: usize,
        ranges: &[Range<usize>],
        x: &[f32],
        ldx: usize,
        first: usize,
        rows: usize,
    ) -> Vec<f32> {
        let bias: Vec<f32> = (0..n).map(|i| 0.01 * i as f32).collect();
        // A row at least: a job of no rows must leave it untouched.
        let mut y = vec![f32::NAN; rows.max(1) * n];
        let mut job = LinearJob {
            x: &x[first * ldx..],
            ldx,
            in_off: 0,
            rows,
            k_ranges: ranges,
            k_total: k,
            w,
            w_bf16,
            n,
            bias: Some(Values::F32(&bias)),
            add: None,
            act: Act::Relu,
            scale: None,
            ld_scale: 0,
            shift: None,
            ld_shift: 0,
            y: &mut y,
            ldy: n,
            out_off: 0,
        };
        kernel(&mut job);
        y
    }

    /// A row's result is the same to the bit whatever job it is in: alone,
    /// with one or two others (the kernels' paths for 1 to 3 rows, panels
    /// taken several at a time) or in a larger block, on layers of 1 to 8
    /// panels with a narrow or a whole last panel and a subset of the
    /// columns. Threads cut requests anywhere on this.
    #[test]
    fn a_rows_bits_do_not_depend_on_its_job() {
        let (k, rows) = (70, 13);
        for n in [1usize, 16, 33, 80, 96, 112, 160, 224, 256] {
            let mut rng = crate::demo::Rng::new(n as u64);
            let panel: Vec<f16> = (0..n.div_ceil(32) * 32 * k)
                .map(|_| f16::from_f32(rng.symmetric(1.0)))
                .collect();
            let w = Values::F16(&panel);
            let w_bf16 = bf16::convert_weight(&w, n, k);
            let x: Vec<f32> = (0..rows * k).map(|_| rng.symmetric(2.0)).collect();
            for ranges in [vec![0..k], vec![0..9, 20..64]] {
                for (isa, bf16_w) in kernels(&w_bf16) {
                    let whole = run_rows(on(isa), w, bf16_w, n, k, &ranges, &x, k, 0, rows);
                    for len in [1, 2, 3, 4, 7, 12] {
                        for first in 0..=rows - len {
                            let part =
                                run_rows(on(isa), w, bf16_w, n, k, &ranges, &x, k, first, len);
                            let same = part
                                .iter()
                                .zip(&whole[first * n..(first + len) * n])
                                .all(|(a, b)| a.to_bits() == b.to_bits());
                            let mode = if bf16_w.is_some() { "bf16" } else { "exact" };
                            assert!(
                                same,
                                "{isa:?} {mode}, n {n}, ranges {ranges:?}: rows {first}..{} alone differ",
                                first + len
                            );
                        }
                    }
                }
            }
        }
    }

    /// The AVX-512 kernel converts fp16 16 lanes at a time, or on Zen 4 8
    /// (`avx512::converts_in_halves`): the same bits either way, for jobs
    /// of 1 to 3 rows (panels taken several at a time), one block and
    /// groups of blocks, on layers of 1 to 8 panels with a narrow or a
    /// whole last panel and a subset of the columns. The halves run with
    /// one scratch for every case (other layer widths, other inputs): what
    /// an earlier job converted must not leak into a later one.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx512_conversions_in_halves_give_the_same_bits() {
        if !Isa::Avx512.supported() {
            eprintln!("skipped: this CPU has no avx512");
            return;
        }
        let mut shared = Vec::new();
        for (n, k) in [
            (16usize, 70usize),
            (33, 70),
            (80, 33),
            (96, 70),
            (160, 33),
            (256, 70),
        ] {
            let mut rng = crate::demo::Rng::new(n as u64);
            let panel: Vec<f16> = (0..n.div_ceil(32) * 32 * k)
                .map(|_| f16::from_f32(rng.symmetric(1.0)))
                .collect();
            let w = Values::F16(&panel);
            let x: Vec<f32> = (0..100 * k).map(|_| rng.symmetric(2.0)).collect();
            for ranges in [vec![0..k], vec![0..9, 20..30]] {
                for rows in [1, 2, 3, 4, 12, 13, 32, 50, 100] {
                    let zmm = run_rows(
                        |job: &mut LinearJob<'_>| {
                            job.check();
                            avx512::linear_converting(job, &mut Vec::new(), false)
                        },
                        w,
                        None,
                        n,
                        k,
                        &ranges,
                        &x,
                        k,
                        0,
                        rows,
                    );
                    let halves = run_rows(
                        |job: &mut LinearJob<'_>| {
                            job.check();
                            avx512::linear_converting(job, &mut shared, true)
                        },
                        w,
                        None,
                        n,
                        k,
                        &ranges,
                        &x,
                        k,
                        0,
                        rows,
                    );
                    assert!(
                        zmm.iter()
                            .zip(&halves)
                            .all(|(a, b)| a.to_bits() == b.to_bits()),
                        "n {n}, ranges {ranges:?}, {rows} rows: the conversions differ"
                    );
                    assert!(
                        halves.iter().all(|v| v.is_finite()),
                        "n {n}: rows unwritten"
                    );
                }
            }
        }
    }

    /// A job of no rows writes nothing, on every ISA and in bf16 mode.
    #[test]
    fn a_job_of_no_rows_writes_nothing() {
        let (n, k) = (64, 8);
        let panel = vec![f16::from_f32(0.5); n * k];
        let w = Values::F16(&panel);
        let w_bf16 = bf16::convert_weight(&w, n, k);
        let x = vec![1.0f32; 4 * k];
        for (isa, bf16_w) in kernels(&w_bf16) {
            let y = run_rows(on(isa), w, bf16_w, n, k, &[0..k], &x, k, 0, 0);
            assert!(
                y.iter().all(|v| v.is_nan()),
                "{isa:?}: a job of no rows wrote"
            );
        }
    }
}
