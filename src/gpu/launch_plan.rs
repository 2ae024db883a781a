//! The lowered program turned into kernel launches for one batch capacity:
//! which kernel runs each step, its grid, and its arguments as symbolic
//! locations (arena offsets, tensors, the staging buffer). The runtime
//! resolves the locations to device addresses and captures the launches in a
//! CUDA graph. Plain Rust, unit-tested without a GPU.

use crate::plan::TensorId;
use crate::program::{Act, BufId, Program, Step, View};

/// How Linear layers compute on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// fp16 weights and inputs on tensor cores, fp32 accumulation.
    F16,
    /// fp32 weights and arithmetic (the parity baseline on the device).
    F32,
}

/// The kernels of `kernels/mmoe.cu`, by entry name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    FeaturesRequest,
    FeaturesCandidate,
    LinearSimtF32,
    LinearSimtF16,
    LinearMma,
    FeatureGate,
    Gather,
    LayerNorm,
    Bilinear,
    Mixture,
    OutputLogit,
}

impl Kernel {
    pub const ALL: [Kernel; 11] = [
        Kernel::FeaturesRequest,
        Kernel::FeaturesCandidate,
        Kernel::LinearSimtF32,
        Kernel::LinearSimtF16,
        Kernel::LinearMma,
        Kernel::FeatureGate,
        Kernel::Gather,
        Kernel::LayerNorm,
        Kernel::Bilinear,
        Kernel::Mixture,
        Kernel::OutputLogit,
    ];
    pub fn entry(self) -> &'static str {
        match self {
            Kernel::FeaturesRequest => "features_request",
            Kernel::FeaturesCandidate => "features_candidate",
            Kernel::LinearSimtF32 => "linear_simt_f32",
            Kernel::LinearSimtF16 => "linear_simt_f16",
            Kernel::LinearMma => "linear_mma",
            Kernel::FeatureGate => "feature_gate",
            Kernel::Gather => "gather",
            Kernel::LayerNorm => "layer_norm",
            Kernel::Bilinear => "bilinear",
            Kernel::Mixture => "mixture",
            Kernel::OutputLogit => "output_logit",
        }
    }
}

/// Where a pointer argument points; resolved by the runtime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Loc {
    /// f32 element offset in the session's activation arena.
    Arena(usize),
    /// A model tensor on the device.
    Tensor(TensorId),
    /// u32 element offset in the session's range table.
    Ranges(usize),
    /// u64 element offset in the session's pointer table.
    Pointers(usize),
    Staging,
    Logits,
    Null,
}

/// `struct LinearArgs` of `kernels/mmoe.cu`, with symbolic pointers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearLaunch {
    pub x: Loc,
    pub ldx: i32,
    pub in_off: i32,
    pub w: Loc,
    pub ldw: i32,
    pub n: i32,
    pub ranges: Loc,
    pub nranges: i32,
    pub bias: Loc,
    pub add: Loc,
    /// Activation code (`Act::code`).
    pub act: i32,
    pub y: Loc,
    pub ldy: i32,
    pub out_off: i32,
    pub rows: i32,
    pub scale: Loc,
    pub ldscale: i32,
    pub shift: Loc,
    pub ldshift: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arg {
    Ptr(Loc),
    I32(i32),
    Linear(LinearLaunch),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    pub kernel: Kernel,
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub args: Vec<Arg>,
}

/// An entry of the session's pointer table (expert lists of mixtures).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PointerEntry {
    Arena(usize),
    Value(u64),
}

/// How a Linear weight is laid out on the device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceWeight {
    /// Row stride in elements.
    pub ldw: usize,
}

/// Row stride of fp16 weights on the device: columns padded to 16.
pub fn f16_ldw(k: usize) -> usize {
    k.div_ceil(16) * 16
}

/// Rows of fp16 weights on the device: padded to the MMA kernel's 64.
pub fn f16_rows(n: usize) -> usize {
    n.div_ceil(64) * 64
}

/// A buffer's place in the arena.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    pub offset: usize,
    /// Row stride passed to kernels: 0 for per-request buffers (broadcast).
    pub ld: usize,
    pub rows: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LaunchPlan {
    /// Candidate rows every launch computes (the batch bucket).
    pub capacity: usize,
    pub placements: Vec<Placement>,
    pub arena_len: usize,
    pub ranges: Vec<u32>,
    pub pointers: Vec<PointerEntry>,
    pub launches: Vec<Launch>,
}

/// The batch bucket for `n` candidates: a power of two, at least 32.
pub fn bucket(n: usize) -> usize {
    n.max(32).next_power_of_two()
}

const BLOCK: u32 = 128;

fn blocks(n: usize, per: usize) -> u32 {
    n.div_ceil(per).max(1) as u32
}

impl LaunchPlan {
    pub fn new(
        program: &Program,
        capacity: usize,
        precision: Precision,
        weight: &dyn Fn(TensorId) -> DeviceWeight,
    ) -> LaunchPlan {
        let mut placements = Vec::with_capacity(program.buffers.len());
        let mut offset = 0;
        for buffer in &program.buffers {
            let rows = if buffer.per_request { 1 } else { capacity };
            placements.push(Placement {
                offset,
                ld: if buffer.per_request { 0 } else { buffer.width },
                rows,
            });
            // 64-element (256-byte) alignment for every buffer.
            offset += (rows * buffer.width).div_ceil(64) * 64;
        }
        let mut plan = LaunchPlan {
            capacity,
            placements,
            arena_len: offset.max(64),
            ranges: Vec::new(),
            pointers: Vec::new(),
            launches: Vec::new(),
        };
        for step in program.request_steps.iter().chain(&program.candidate_steps) {
            plan.lower(program, step, precision, weight);
        }
        plan
    }

    fn at(&self, buf: BufId) -> Loc {
        Loc::Arena(self.placements[buf].offset)
    }

    fn ld(&self, buf: BufId) -> i32 {
        self.placements[buf].ld as i32
    }

    fn rows(&self, buf: BufId) -> usize {
        self.placements[buf].rows
    }

    /// Storage row stride (the real width, also for per-request buffers).
    fn stride(&self, program: &Program, buf: BufId) -> i32 {
        program.buffers[buf].width as i32
    }

    fn ranges(&mut self, ranges: &[std::ops::Range<usize>]) -> (Loc, i32) {
        let at = self.ranges.len();
        for r in ranges {
            self.ranges.push(r.start as u32);
            self.ranges.push(r.end as u32);
        }
        (Loc::Ranges(at), ranges.len() as i32)
    }

    fn push(
        &mut self,
        kernel: Kernel,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        args: Vec<Arg>,
    ) {
        self.launches.push(Launch {
            kernel,
            grid,
            block,
            args,
        });
    }

    fn gather(
        &mut self,
        program: &Program,
        input: Loc,
        ldi: i32,
        ranges: &[std::ops::Range<usize>],
        out: View,
    ) {
        let (table, count) = self.ranges(ranges);
        let rows = self.rows(out.buf);
        let ldo = self.stride(program, out.buf);
        self.push(
            Kernel::Gather,
            (rows as u32, 1, 1),
            (BLOCK, 1, 1),
            vec![
                Arg::Ptr(input),
                Arg::I32(ldi),
                Arg::Ptr(table),
                Arg::I32(count),
                Arg::Ptr(self.at(out.buf)),
                Arg::I32(ldo),
                Arg::I32(out.offset as i32),
                Arg::I32(rows as i32),
            ],
        );
    }

    fn layer_norm(
        &mut self,
        program: &Program,
        input: View,
        out: View,
        gamma: TensorId,
        beta: TensorId,
        act: Act,
    ) {
        let rows = self.rows(out.buf);
        let args = vec![
            Arg::Ptr(self.at(input.buf)),
            Arg::I32(self.ld(input.buf)),
            Arg::I32(input.offset as i32),
            Arg::Ptr(Loc::Tensor(gamma)),
            Arg::Ptr(Loc::Tensor(beta)),
            Arg::I32(act.code()),
            Arg::Ptr(self.at(out.buf)),
            Arg::I32(self.stride(program, out.buf)),
            Arg::I32(out.offset as i32),
            Arg::I32(input.width as i32),
            Arg::I32(rows as i32),
        ];
        self.push(Kernel::LayerNorm, (rows as u32, 1, 1), (BLOCK, 1, 1), args);
    }

    fn elementwise(&mut self, program: &Program, kernel: Kernel, inputs: &[BufId], out: BufId) {
        let width = program.buffers[out].width;
        let rows = self.rows(out);
        let mut args = Vec::new();
        for &b in inputs {
            args.push(Arg::Ptr(self.at(b)));
            args.push(Arg::I32(self.ld(b)));
        }
        args.push(Arg::Ptr(self.at(out)));
        args.push(Arg::I32(self.stride(program, out)));
        args.push(Arg::I32(width as i32));
        args.push(Arg::I32(rows as i32));
        self.push(
            kernel,
            (blocks(width, BLOCK as usize), rows as u32, 1),
            (BLOCK, 1, 1),
            args,
        );
    }

    fn lower(
        &mut self,
        program: &Program,
        step: &Step,
        precision: Precision,
        weight: &dyn Fn(TensorId) -> DeviceWeight,
    ) {
        let d = program.d as i32;
        match step {
            Step::RequestFeatures { out } => {
                self.push(
                    Kernel::FeaturesRequest,
                    (1, 1, 1),
                    (256, 1, 1),
                    vec![Arg::Ptr(Loc::Staging), Arg::Ptr(self.at(*out)), Arg::I32(d)],
                );
            }
            Step::CandidateFeatures { request, out } => {
                let args = vec![
                    Arg::Ptr(Loc::Staging),
                    Arg::Ptr(self.at(*request)),
                    Arg::Ptr(self.at(*out)),
                    Arg::I32(self.stride(program, *out)),
                    Arg::I32(d),
                ];
                self.push(
                    Kernel::FeaturesCandidate,
                    (self.rows(*out) as u32, 1, 1),
                    (BLOCK, 1, 1),
                    args,
                );
            }
            Step::Linear {
                input,
                k_ranges,
                weight: w,
                n,
                bias,
                add,
                act,
                scale,
                shift,
                norm,
                out,
            } => {
                let whole = [0..input.width];
                let ranges = k_ranges.as_deref().unwrap_or(&whole);
                let aligned = ranges.iter().all(|r| r.start % 16 == 0);
                let kernel = match precision {
                    Precision::F32 => Kernel::LinearSimtF32,
                    Precision::F16 if aligned => Kernel::LinearMma,
                    Precision::F16 => Kernel::LinearSimtF16,
                };
                let (table, count) = self.ranges(ranges);
                let rows = self.rows(out.buf);
                let args = LinearLaunch {
                    x: self.at(input.buf),
                    ldx: self.stride(program, input.buf),
                    in_off: input.offset as i32,
                    w: Loc::Tensor(*w),
                    ldw: weight(*w).ldw as i32,
                    n: *n as i32,
                    ranges: table,
                    nranges: count,
                    bias: bias.map_or(Loc::Null, Loc::Tensor),
                    add: add.map_or(Loc::Null, |a| self.at(a)),
                    act: act.code(),
                    y: self.at(out.buf),
                    ldy: self.stride(program, out.buf),
                    out_off: out.offset as i32,
                    rows: rows as i32,
                    scale: scale.map_or(Loc::Null, |b| self.at(b)),
                    ldscale: scale.map_or(0, |b| self.ld(b)),
                    shift: shift.map_or(Loc::Null, |b| self.at(b)),
                    ldshift: shift.map_or(0, |b| self.ld(b)),
                };
                let (grid, block) = match kernel {
                    Kernel::LinearMma => ((blocks(*n, 64), blocks(rows, 32), 1), (BLOCK, 1, 1)),
                    _ => ((blocks(*n, 16), blocks(rows, 16), 1), (16, 16, 1)),
                };
                self.push(kernel, grid, block, vec![Arg::Linear(args)]);
                if let Some(norm) = norm {
                    // LayerNorm of the output rows, in place.
                    self.layer_norm(program, *out, *out, norm.gamma, norm.beta, norm.act);
                }
            }
            Step::FeatureGate { g, x0, out } => {
                self.elementwise(program, Kernel::FeatureGate, &[*g, *x0], *out)
            }
            Step::LayerNorm {
                input,
                gamma,
                beta,
                act,
                out,
            } => self.layer_norm(program, *input, *out, *gamma, *beta, *act),
            Step::Gather { input, ranges, out } => {
                let loc = self.at(*input);
                let ld = self.ld(*input);
                let view = View {
                    buf: *out,
                    offset: 0,
                    width: program.buffers[*out].width,
                };
                self.gather(program, loc, ld, ranges, view);
            }
            Step::Copy { input, out } => {
                let width = program.buffers[*input].width;
                let (loc, ld) = (self.at(*input), self.ld(*input));
                self.gather(program, loc, ld, &[0..width], *out);
            }
            Step::Constant { tensor, out } => {
                let width = program.buffers[*out].width;
                let view = View {
                    buf: *out,
                    offset: 0,
                    width,
                };
                self.gather(program, Loc::Tensor(*tensor), 0, &[0..width], view);
            }
            Step::Bilinear {
                o1,
                o2,
                wx,
                wy,
                w_xy,
                heads,
                out,
            } => {
                let h_out = program.buffers[*out].width;
                let rows = self.rows(*out);
                let (hx, hy) = (
                    program.buffers[*o1].width / heads,
                    program.buffers[*o2].width / heads,
                );
                let args = vec![
                    Arg::Ptr(self.at(*o1)),
                    Arg::I32(self.ld(*o1)),
                    Arg::Ptr(self.at(*o2)),
                    Arg::I32(self.ld(*o2)),
                    Arg::Ptr(self.at(*wx)),
                    Arg::I32(self.ld(*wx)),
                    Arg::Ptr(self.at(*wy)),
                    Arg::I32(self.ld(*wy)),
                    Arg::Ptr(Loc::Tensor(*w_xy)),
                    Arg::I32(*heads as i32),
                    Arg::I32(hx as i32),
                    Arg::I32(hy as i32),
                    Arg::Ptr(self.at(*out)),
                    Arg::I32(self.stride(program, *out)),
                    Arg::I32(h_out as i32),
                    Arg::I32(rows as i32),
                ];
                self.push(
                    Kernel::Bilinear,
                    (blocks(h_out, BLOCK as usize), rows as u32, 1),
                    (BLOCK, 1, 1),
                    args,
                );
            }
            Step::Mixture { gate, experts, out } => {
                let h = program.buffers[*out].width;
                let rows = self.rows(*out);
                let table = self.pointers.len();
                for &e in experts {
                    self.pointers
                        .push(PointerEntry::Arena(self.placements[e].offset));
                    self.pointers
                        .push(PointerEntry::Value(self.placements[e].ld as u64));
                }
                let args = vec![
                    Arg::Ptr(gate.map_or(Loc::Null, |g| self.at(g))),
                    Arg::I32(gate.map_or(0, |g| self.ld(g))),
                    Arg::I32(experts.len() as i32),
                    Arg::Ptr(Loc::Pointers(table)),
                    Arg::Ptr(self.at(*out)),
                    Arg::I32(self.stride(program, *out)),
                    Arg::I32(h as i32),
                    Arg::I32(rows as i32),
                ];
                self.push(
                    Kernel::Mixture,
                    (blocks(h, BLOCK as usize), rows as u32, 1),
                    (BLOCK, 1, 1),
                    args,
                );
            }
            Step::Output { input, task } => {
                let rows = self.capacity;
                let args = vec![
                    Arg::Ptr(self.at(*input)),
                    Arg::I32(self.ld(*input)),
                    Arg::Ptr(Loc::Logits),
                    Arg::I32(program.tasks as i32),
                    Arg::I32(*task as i32),
                    Arg::I32(rows as i32),
                ];
                self.push(
                    Kernel::OutputLogit,
                    (blocks(rows, BLOCK as usize), 1, 1),
                    (BLOCK, 1, 1),
                    args,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::plan::Plan;

    fn bench_program() -> Program {
        let config = Config::parse(crate::demo::BENCH_MODEL_JSON).unwrap();
        let plan = Plan::build(&config, &|_| None).unwrap();
        Program::lower(&config, &plan)
    }

    #[test]
    fn buckets_are_powers_of_two_from_32() {
        assert_eq!(bucket(1), 32);
        assert_eq!(bucket(32), 32);
        assert_eq!(bucket(33), 64);
        assert_eq!(bucket(1000), 1024);
        assert_eq!(bucket(4096), 4096);
    }

    #[test]
    fn bench_model_runs_every_layer_on_tensor_cores() {
        let program = bench_program();
        let plan = LaunchPlan::new(&program, 256, Precision::F16, &|_| DeviceWeight {
            ldw: 512,
        });
        let linear: Vec<&Launch> = plan
            .launches
            .iter()
            .filter(|l| {
                matches!(
                    l.kernel,
                    Kernel::LinearMma | Kernel::LinearSimtF16 | Kernel::LinearSimtF32
                )
            })
            .collect();
        // The benchmark model's input widths are multiples of 16: no fallback.
        assert!(linear.iter().all(|l| l.kernel == Kernel::LinearMma));
        // Candidate-phase launches compute the whole bucket; request-phase ones one row.
        for l in &linear {
            let Arg::Linear(a) = l.args[0] else { panic!() };
            assert!(a.rows == 256 || a.rows == 1, "{a:?}");
            assert_eq!(l.grid.1 as i32, (a.rows + 31) / 32);
            assert_eq!(l.grid.0 as i32, (a.n + 63) / 64);
        }
        let outputs = plan
            .launches
            .iter()
            .filter(|l| l.kernel == Kernel::OutputLogit)
            .count();
        assert_eq!(outputs, 3);
        // Buffers never overlap and are 256-byte aligned.
        let mut spans: Vec<(usize, usize)> = plan
            .placements
            .iter()
            .zip(&program.buffers)
            .map(|(p, b)| (p.offset, p.offset + p.rows * b.width))
            .collect();
        spans.sort();
        for w in spans.windows(2) {
            assert!(w[0].1 <= w[1].0);
            assert_eq!(w[1].0 % 64, 0);
        }
        assert!(spans.last().unwrap().1 <= plan.arena_len);
    }

    /// Every pointer argument of every launch stays inside what it points to,
    /// for models of every expert type, both precisions and several buckets.
    #[test]
    fn every_launch_addresses_memory_it_owns() {
        let small = include_str!("../../tests/common/small_config.json");
        let mut configs = vec![
            Config::parse(small).unwrap(),
            Config::parse(crate::demo::BENCH_MODEL_JSON).unwrap(),
        ];
        // MaskNet serial without head, FinalMLP with learned contexts.
        let variant = small
            .replace(
                r#""mode": "parallel", "blocks": [5, 6], "mask_hidden": 7, "head": [8]"#,
                r#""mode": "serial", "blocks": [5, 8], "mask_hidden": 7, "head": []"#,
            )
            .replace(r#""fs2_context": ["a"]"#, r#""fs2_context": []"#);
        configs.push(Config::parse(&variant).unwrap());
        for config in &configs {
            let plan =
                Plan::build(config, &|name| name.ends_with("ctx_bias").then(|| vec![4])).unwrap();
            let program = Program::lower(config, &plan);
            for precision in [Precision::F16, Precision::F32] {
                for capacity in [32, 256] {
                    let launch_plan =
                        LaunchPlan::new(&program, capacity, precision, &|id| DeviceWeight {
                            ldw: match precision {
                                Precision::F16 => {
                                    f16_ldw(plan.tensors[id].shape.get(1).copied().unwrap_or(0))
                                }
                                Precision::F32 => {
                                    plan.tensors[id].shape.get(1).copied().unwrap_or(0)
                                }
                            },
                        });
                    let arena = launch_plan.arena_len;
                    let in_arena = |loc: Loc, rows: i32, ld: i32, cols: i32| {
                        if let Loc::Arena(offset) = loc {
                            let rows = if ld == 0 { 1 } else { rows.max(1) } as usize;
                            let end =
                                offset + (rows - 1) * ld.max(0) as usize + cols.max(0) as usize;
                            assert!(
                                end <= arena,
                                "{}: arena access to {end} of {arena}",
                                config.name
                            );
                        }
                    };
                    for launch in &launch_plan.launches {
                        if let Some(Arg::Linear(a)) = launch.args.first() {
                            let k_end = launch_plan.ranges[match a.ranges {
                                Loc::Ranges(at) => at,
                                _ => panic!("ranges live in the range table"),
                            }..]
                                .chunks(2)
                                .take(a.nranges as usize)
                                .map(|r| r[1] as i32)
                                .max()
                                .unwrap_or(0);
                            in_arena(a.x, a.rows, a.ldx, a.in_off + k_end);
                            in_arena(a.y, a.rows, a.ldy, a.out_off + a.n);
                            in_arena(a.scale, a.rows, a.ldscale, a.n);
                            in_arena(a.shift, a.rows, a.ldshift, a.n);
                            in_arena(a.add, 1, 0, a.n);
                            assert!(a.rows == capacity as i32 || a.rows == 1);
                            if launch.kernel == Kernel::LinearMma {
                                assert!(a.ldw % 16 == 0, "mma needs 16-padded rows");
                            }
                        }
                    }
                    for entry in &launch_plan.pointers {
                        if let PointerEntry::Arena(offset) = entry {
                            assert!(*offset < arena);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn unaligned_ranges_fall_back_to_simt_and_fp32_never_uses_mma() {
        let config = Config::parse(
            r#"{"name": "t", "expert_dim": 4,
            "inputs": [{"name": "u", "kind": "dense", "scope": "request", "dim": 3},
                       {"name": "a", "kind": "dense", "scope": "candidate", "dim": 5}],
            "experts": [{"name": "m", "type": "mlp", "hidden": [4]}],
            "tasks": [{"name": "click"}]}"#,
        )
        .unwrap();
        let plan = Plan::build(&config, &|_| None).unwrap();
        let program = Program::lower(&config, &plan);
        let f16 = LaunchPlan::new(&program, 32, Precision::F16, &|_| DeviceWeight { ldw: 16 });
        // The candidate part of the first layer reads columns 3..8: not 16-aligned.
        assert!(f16
            .launches
            .iter()
            .any(|l| l.kernel == Kernel::LinearSimtF16));
        let f32 = LaunchPlan::new(&program, 32, Precision::F32, &|_| DeviceWeight { ldw: 8 });
        assert!(f32
            .launches
            .iter()
            .all(|l| l.kernel != Kernel::LinearMma && l.kernel != Kernel::LinearSimtF16));
    }
}
