//! A launch plan bound to addresses: the tensors' images as the kernels read
//! them, the session tables (pointers, Linear problems) and every launch's
//! argument values, given where each memory region lives. Plain Rust, shared
//! by the CUDA runtime (device addresses) and the host emulator of the
//! kernels (`gpu-emu/`, host addresses), so both run the same bindings.

use bytemuck::{Pod, Zeroable};
use half::f16;

use super::launch_plan::{
    f16_ldw, f16_rows, Arg, DeviceWeight, LaunchPlan, LinearLaunch, Loc, PointerEntry, Precision,
};
use super::staging::InputTensors;
use crate::format::{bilinear_index, Layout, PANEL};
use crate::model::{Model, Values};
use crate::plan::{TensorId, TensorRole};

/// `struct LinearArgs` of `kernels/mmoe.cu`.
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable, PartialEq, Eq)]
#[repr(C)]
pub struct LinearArgs {
    pub x: u64,
    pub ldx: i32,
    pub in_off: i32,
    pub w: u64,
    pub ldw: i32,
    pub n: i32,
    pub ranges: u64,
    pub nranges: i32,
    pub _pad0: i32,
    pub bias: u64,
    pub add: u64,
    pub act: i32,
    pub norm_act: i32,
    pub y: u64,
    pub ldy: i32,
    pub out_off: i32,
    pub rows: i32,
    pub _pad2: i32,
    pub scale: u64,
    pub ldscale: i32,
    pub _pad3: i32,
    pub shift: u64,
    pub ldshift: i32,
    pub _pad4: i32,
    pub y16: u64,
    pub ldy16: i32,
    pub _pad5: i32,
    pub x16: u64,
    pub ldx16: i32,
    pub x16_exp: i32,
    pub gamma: u64,
    pub beta: u64,
    pub done: u64,
    pub stats: u64,
    pub logit_w: u64,
    pub logit_b: u64,
    pub logits: u64,
    pub ldlogits: i32,
    pub logit_col: i32,
}
const _: () = assert!(std::mem::size_of::<LinearArgs>() == 224);

/// A model tensor as the kernels read it.
pub enum TensorImage {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

/// The image of tensor `id` for `precision`: Linear weights row-major
/// `[rows, ldw]`, zero padded (fp16 padded for the tensor-core tiles);
/// embedding tables as stored (fp16 in an fp16 file: half the device memory
/// and the same values); every other tensor f32 (at least one element, so
/// every tensor has an address).
pub fn tensor_image(
    model: &Model,
    id: TensorId,
    precision: Precision,
) -> (TensorImage, DeviceWeight) {
    let spec = &model.plan().tensors[id];
    let values = model.values(id);
    if let Some((n, k)) = model.linear_shape(id) {
        return match precision {
            Precision::F16 => {
                let ldw = f16_ldw(k);
                let image = row_major(&values, n, k, f16_rows(n), ldw, f16::from_f32);
                (TensorImage::F16(image), DeviceWeight { ldw })
            }
            Precision::F32 => {
                let image = row_major(&values, n, k, n, k, |v| v);
                (TensorImage::F32(image), DeviceWeight { ldw: k })
            }
        };
    }
    if let (TensorRole::Bilinear { hy }, Layout::Bilinear) = (spec.role, model.layout_of(id)) {
        // The direct sum (`bilinear`) reads MODEL.md's flat array.
        let (k_total, h) = (spec.shape[0], spec.shape[1]);
        let image = (0..values.len().min(k_total * h).max(1))
            .map(|flat| values.get(bilinear_index(Layout::Bilinear, flat, hy, h, k_total)))
            .collect();
        return (TensorImage::F32(image), DeviceWeight { ldw: 0 });
    }
    if let (true, Values::F16(table)) = (table_is_f16(model, id), &values) {
        return (TensorImage::F16(table.to_vec()), DeviceWeight { ldw: 0 });
    }
    let mut image = vec![0.0f32; values.len().max(1)];
    values.read_into(0, &mut image[..values.len()]);
    (TensorImage::F32(image), DeviceWeight { ldw: 0 })
}

/// A Linear weight from the file's panel layout into row-major
/// `[rows, ldw]`, zero padded.
fn row_major<T: Copy + Default>(
    values: &Values<'_>,
    n: usize,
    k: usize,
    rows: usize,
    ldw: usize,
    convert: impl Fn(f32) -> T,
) -> Vec<T> {
    let mut out = vec![T::default(); rows * ldw];
    for i in 0..n {
        for kk in 0..k {
            let v = values.get((i / PANEL) * k * PANEL + kk * PANEL + i % PANEL);
            out[i * ldw + kk] = convert(v);
        }
    }
    out
}

/// Whether tensor `id` is an embedding table kept as fp16 on the device
/// (stored as fp16).
pub fn table_is_f16(model: &Model, id: TensorId) -> bool {
    model.plan().tensors[id].role == TensorRole::Embedding
        && matches!(model.values(id), Values::F16(t) if !t.is_empty())
}

/// Where a session's memory regions start. `problems` is known only once
/// the problem table (which holds the other addresses) is placed.
#[derive(Clone, Copy, Debug, Default)]
pub struct Regions<'a> {
    pub tensors: &'a [u64],
    pub arena: u64,
    pub ranges: u64,
    pub pointers: u64,
    pub problems: u64,
    /// A device cell holding the address of the request's staging buffer.
    pub staging_cell: u64,
    /// The bucket's logits, `[capacity × tasks]` f32.
    pub logits: u64,
}

impl Regions<'_> {
    pub fn resolve(&self, loc: Loc) -> u64 {
        match loc {
            Loc::Arena(offset) => self.arena + 4 * offset as u64,
            Loc::Tensor(id) => self.tensors[id],
            Loc::Ranges(offset) => self.ranges + 4 * offset as u64,
            Loc::Pointers(offset) => self.pointers + 8 * offset as u64,
            Loc::Problems(index) => {
                self.problems + (std::mem::size_of::<LinearArgs>() * index) as u64
            }
            Loc::StagingCell => self.staging_cell,
            Loc::Logits => self.logits,
            Loc::Null => 0,
        }
    }
}

/// The plan's range table (never empty, so it has an address).
pub fn range_table(plan: &LaunchPlan) -> Vec<u32> {
    if plan.ranges.is_empty() {
        vec![0]
    } else {
        plan.ranges.clone()
    }
}

/// The plan's pointer table for an arena at `arena` and the model's tensors
/// at `tensors` (one spare entry, so it is never empty).
pub fn pointer_table(plan: &LaunchPlan, arena: u64, tensors: &[u64]) -> Vec<u64> {
    plan.pointers
        .iter()
        .map(|p| match *p {
            PointerEntry::Arena(offset) => arena + 4 * offset as u64,
            PointerEntry::Tensor(id) => tensors[id],
            PointerEntry::Value(v) => v,
        })
        .chain(std::iter::once(0))
        .collect()
}

/// The plan's Linear problems (one default entry when it has none).
pub fn problem_table(plan: &LaunchPlan, regions: &Regions<'_>) -> Vec<LinearArgs> {
    let mut table: Vec<LinearArgs> = plan
        .problems
        .iter()
        .map(|l| linear_args(l, regions))
        .collect();
    if table.is_empty() {
        table.push(LinearArgs::default());
    }
    table
}

/// A launch argument's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgValue {
    U64(u64),
    I32(i32),
}

impl ArgValue {
    /// As one 64-bit word (an `int` sign-extended).
    pub fn word(self) -> u64 {
        match self {
            ArgValue::U64(v) => v,
            ArgValue::I32(v) => v as i64 as u64,
        }
    }
}

/// Every launch's argument values, in the plan's order.
pub fn launch_values(plan: &LaunchPlan, regions: &Regions<'_>) -> Vec<Vec<ArgValue>> {
    plan.launches
        .iter()
        .map(|launch| {
            launch
                .args
                .iter()
                .map(|arg| match *arg {
                    Arg::Ptr(loc) => ArgValue::U64(regions.resolve(loc)),
                    Arg::I32(v) => ArgValue::I32(v),
                })
                .collect()
        })
        .collect()
}

fn linear_args(l: &LinearLaunch, regions: &Regions<'_>) -> LinearArgs {
    let at = |loc| regions.resolve(loc);
    LinearArgs {
        x: at(l.x),
        ldx: l.ldx,
        in_off: l.in_off,
        w: at(l.w),
        ldw: l.ldw,
        n: l.n,
        ranges: at(l.ranges),
        nranges: l.nranges,
        bias: at(l.bias),
        add: at(l.add),
        act: l.act,
        y: at(l.y),
        ldy: l.ldy,
        out_off: l.out_off,
        rows: l.rows,
        scale: at(l.scale),
        ldscale: l.ldscale,
        shift: at(l.shift),
        ldshift: l.ldshift,
        y16: at(l.y16),
        ldy16: l.ldy16,
        x16: at(l.x16),
        ldx16: l.ldx16,
        x16_exp: l.x16_exp,
        norm_act: l.norm_act,
        gamma: at(l.gamma),
        beta: at(l.beta),
        done: at(l.done),
        stats: at(l.stats),
        logit_w: at(l.logit_w),
        logit_b: at(l.logit_b),
        logits: at(l.logits),
        ldlogits: l.ldlogits,
        logit_col: l.logit_col,
        ..LinearArgs::default()
    }
}

/// The addresses of each input's tensors (embedding table, mean, std) for
/// the staging descriptors, given every tensor's address, whether its
/// table is fp16 (`tensor_image`), and whether its values go as fp16:
/// with `half_values` (fp16 compute and `PlanOptions::half_values`), those
/// of the inputs `staging::values_as_f16` allows; and whether its ids go
/// as u32 (`staging::ids_as_u32`, exact: always where the rows allow).
pub fn input_tensors(model: &Model, tensors: &[u64], half_values: bool) -> Vec<InputTensors> {
    let at = |id: Option<usize>| id.map_or(0, |id| tensors[id]);
    model
        .plan()
        .inputs
        .iter()
        .zip(&model.config().inputs)
        .map(|(i, input)| InputTensors {
            table: at(i.embedding),
            table_f16: i.embedding.is_some_and(|id| table_is_f16(model, id)),
            mean: at(i.mean),
            std: at(i.std),
            values_f16: half_values && super::staging::values_as_f16(input),
            ids_u32: super::staging::ids_as_u32(input),
        })
        .collect()
}
