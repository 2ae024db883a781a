//! The request's features packed for the device: one contiguous staging
//! buffer (a header, one [`InputDesc`] per input, dense values, CSR offsets
//! and ids) copied to the GPU in one transfer. The layout mirrors
//! `kernels/common.cuh`; this module is plain Rust and tested without a GPU.

use bytemuck::{Pod, Zeroable};

use crate::config::{Input, InputKind, Pooling, Scope};
use crate::error::{Error, Result};
use crate::model::Model;
use crate::request::{Feature, Request};

pub const FLAG_LOG1P: u32 = 1;
pub const FLAG_STANDARDIZE: u32 = 2;
pub const FLAG_CLIP: u32 = 4;
pub const FLAG_MISSING_ZERO: u32 = 8;
pub const FLAG_MEAN: u32 = 16;
pub const FLAG_TABLE_F16: u32 = 32;
pub const FLAG_VALUES_F16: u32 = 64;
pub const FLAG_IDS_U32: u32 = 128;

/// The largest single copy into the staging buffer. glibc's memcpy uses
/// non-temporal (cache-bypassing) stores for copies above a threshold set
/// from the cache sizes (0.7 MB or less on a many-core server), which write
/// at the core's streaming rate; the staging buffer is rewritten by every
/// call and fits in the caches, so it is written in pieces below any such
/// threshold (the per-call overhead of 20 copies a MiB is well under a µs).
pub const COPY_PIECE: usize = 64 << 10;

/// `struct InputDesc` of `kernels/common.cuh`.
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable, PartialEq)]
#[repr(C)]
pub struct InputDesc {
    pub table: u64,
    pub mean: u64,
    pub std: u64,
    pub rows: u64,
    pub kind: u32,
    pub scope: u32,
    pub dim: u32,
    pub x0_offset: u32,
    pub flags: u32,
    pub clip: f32,
    pub values: u32,
    pub ids: u32,
}

/// `struct StagingHeader` of `kernels/common.cuh`.
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable, PartialEq)]
#[repr(C)]
pub struct StagingHeader {
    pub candidates: u64,
    pub num_inputs: u64,
    pub floats_at: u64,
    pub offsets_at: u64,
    pub ids_at: u64,
    pub descs_at: u64,
}

const _: () = assert!(std::mem::size_of::<InputDesc>() == 64);
const _: () = assert!(std::mem::size_of::<StagingHeader>() == 48);

/// Device addresses of an input's tensors (0 where it has none), and how
/// its values are uploaded.
#[derive(Clone, Copy, Debug, Default)]
pub struct InputTensors {
    pub table: u64,
    /// The embedding table is fp16 on the device (as in an fp16 file).
    pub table_f16: bool,
    pub mean: u64,
    pub std: u64,
    /// The input's dense values go to the device as fp16 (see
    /// [`values_as_f16`]), two to a 4-byte slot of the value region.
    pub values_f16: bool,
    /// The input's ids go to the device as u32, reduced modulo its rows by
    /// the host (see [`ids_as_u32`]); else as u64 (reduced by the device).
    pub ids_u32: bool,
}

/// Whether a sparse input's ids go to the device as u32: its table has
/// fewer than 2³² rows (every table but the largest the format allows), so
/// each id modulo the rows (the contract's lookup) and the rows themselves
/// fit. The host reduces them (mostly a compare: ids are usually below the
/// rows already) and the request's ids take half the bytes (the benchmark
/// model: 80 instead of 160 bytes a candidate).
pub fn ids_as_u32(input: &Input) -> bool {
    input.kind == InputKind::Sparse && input.rows.is_some_and(|rows| rows <= u64::from(u32::MAX))
}

/// Whether a dense input's values may be uploaded as fp16 when the GPU
/// computes in fp16 (`PlanOptions::half_values`): one of candidate scope
/// whose transform is at most a clip. Its value reaches the tensor-core
/// GEMMs as fp16 anyway; rounding it on the host instead halves the bytes
/// the host writes and the device reads (the benchmark model's 256
/// candidate values are 80% of a request). The f32 readers of x0 see the
/// rounded value (`PlanOptions::half_values`). Values that log1p or
/// standardize read stay f32: their raw range (counts, prices) may exceed
/// fp16's. Request-scope inputs stay f32: a few hundred bytes a request.
pub fn values_as_f16(input: &Input) -> bool {
    input.kind == InputKind::Dense
        && input.scope == Scope::Candidate
        && !input.log1p()
        && !input.standardize()
}

/// Where an input's ids start in the id region (4-byte slots, from `at`):
/// u64 ids at an even slot (the region starts at a multiple of 8 bytes).
fn ids_slot(tensors: &InputTensors, at: usize) -> usize {
    if tensors.ids_u32 {
        at
    } else {
        at.next_multiple_of(2)
    }
}

/// The 4-byte slots of the id region an input's `len` ids take.
fn id_slots(tensors: &InputTensors, len: usize) -> usize {
    if tensors.ids_u32 {
        len
    } else {
        2 * len
    }
}

/// The 4-byte slots of the value region an input's `len` values take.
fn value_slots(tensors: &InputTensors, len: usize) -> usize {
    if tensors.values_f16 {
        len.div_ceil(2)
    } else {
        len
    }
}

/// Packs a validated request into `out` (cleared first, capacity reused).
pub fn pack_request(
    model: &Model,
    tensors: &[InputTensors],
    request: &Request<'_>,
    out: &mut Vec<u8>,
) -> Result<()> {
    let layout = staging_layout(model, tensors, request)?;
    out.clear();
    out.resize(layout.total, 0);
    write_staging(model, tensors, request, &layout, out)
}

/// Where each region of a request's staging buffer starts (bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StagingLayout {
    pub descs_at: usize,
    pub floats_at: usize,
    pub offsets_at: usize,
    pub ids_at: usize,
    pub total: usize,
}

/// The staging layout of a validated request, with each input's values
/// uploaded as `tensors` says. Non-finite values of inputs that do not allow
/// missing values are refused here, on the host, with the input and
/// candidate named.
pub fn staging_layout(
    model: &Model,
    tensors: &[InputTensors],
    request: &Request<'_>,
) -> Result<StagingLayout> {
    let config = model.config();
    let inputs = &config.inputs;
    let (mut floats, mut offsets, mut ids) = (0usize, 0usize, 0usize);
    for (index, input) in inputs.iter().enumerate() {
        match request.feature(index) {
            Feature::Dense(values) => {
                if !input.missing_is_zero() {
                    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
                        let (candidate, element) = (i / input.dim, i % input.dim);
                        return Err(crate::features::not_finite(
                            input, candidate, element, values[i],
                        ));
                    }
                }
                floats += value_slots(&tensors[index], values.len());
            }
            Feature::Sparse {
                ids: bag_ids,
                offsets: bag_offsets,
            } => {
                offsets += bag_offsets.len();
                ids = ids_slot(&tensors[index], ids) + id_slots(&tensors[index], bag_ids.len());
            }
            Feature::Unset => {
                return Err(Error::request(format!("input `{}` is not set", input.name)))
            }
        }
    }
    check_slots(floats, offsets, ids)?;
    let header_len = std::mem::size_of::<StagingHeader>();
    let descs_at = header_len;
    let floats_at = descs_at + inputs.len() * std::mem::size_of::<InputDesc>();
    let offsets_at = floats_at + floats * 4;
    let ids_at = (offsets_at + offsets * 4).div_ceil(8) * 8;
    let total = ids_at + ids * 4;
    Ok(StagingLayout {
        descs_at,
        floats_at,
        offsets_at,
        ids_at,
        total,
    })
}

/// The input descriptors address the value, offset and id regions by u32
/// slot: a request past that is refused here, before any staging memory is
/// pinned for it, rather than after, as the descriptors are written.
fn check_slots(floats: usize, offsets: usize, ids: usize) -> Result<()> {
    if [floats, offsets, ids].iter().all(|&n| n <= MAX_SLOTS) {
        return Ok(());
    }
    Err(Error::request(format!(
        "request too large for the GPU staging buffer: {floats} value, {offsets} offset and {ids} id slots, at most {MAX_SLOTS} each"
    )))
}

/// u32 slot indices, with room for the kernels' id loops, which step up to
/// 64 slots past a bag's end before they compare (in u32).
const MAX_SLOTS: usize = u32::MAX as usize - 64;

/// Writes the request into `out` (at least `layout.total` bytes, for
/// instance pinned host memory: written once, never read back here).
pub fn write_staging(
    model: &Model,
    tensors: &[InputTensors],
    request: &Request<'_>,
    layout: &StagingLayout,
    out: &mut [u8],
) -> Result<()> {
    write_staging_in_chunks(
        model,
        tensors,
        request,
        layout,
        out,
        usize::MAX,
        &mut |_, _| Ok(()),
    )
}

/// As [`write_staging`], front to back: each time at least `chunk` bytes
/// past what was last handed over are written, `send(bytes, at)` gets them
/// (`at`: their offset in `out`), and the rest at the end. The pieces are
/// contiguous and cover the request's `layout.total` bytes in order, so the
/// runtime can copy the front of the buffer to the device while the rest is
/// being written.
pub fn write_staging_in_chunks(
    model: &Model,
    tensors: &[InputTensors],
    request: &Request<'_>,
    layout: &StagingLayout,
    out: &mut [u8],
    chunk: usize,
    send: &mut dyn FnMut(&[u8], usize) -> Result<()>,
) -> Result<()> {
    check_room(layout, out)?;
    let mut writer = FrontToBack {
        out: &mut out[..layout.total],
        written: 0,
        sent: 0,
        chunk: chunk.max(1),
        send,
    };
    write_head(model, tensors, request, layout, &mut |at, bytes| {
        writer.put(at, bytes)
    })?;
    let mut result = Ok(());
    for_each_run(model, tensors, request, layout, &mut |at, run| {
        if result.is_ok() {
            result = match run {
                Run::Bytes(bytes) => writer.put(at, bytes),
                Run::Half(values) => {
                    writer.put_as(at, values, 2, crate::cpu::to_f16::values_to_f16)
                }
                Run::Narrow { ids, rows } => writer.put_as(at, ids, 4, |ids, to| {
                    crate::cpu::ids_u32::ids_to_u32(ids, rows, to)
                }),
            };
        }
    });
    result?;
    writer.finish()
}

/// The smallest request (bytes past the descriptors) that
/// [`write_staging_shared`] splits; below it the helpers' wake-up would
/// cost more than their share.
pub const SHARED_MIN_BYTES: usize = 128 << 10;

/// The bytes of one part of [`write_staging_shared`] (at most; a multiple
/// of 8, so that no value or id straddles two parts): small enough that a
/// helper that wakes late still finds parts left, and below any streaming
/// threshold (see [`COPY_PIECE`]).
pub const SHARED_PART: usize = 32 << 10;

/// How [`write_staging_shared`] splits a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Split {
    /// The bytes of a part, at most (rounded up to a multiple of 8).
    pub part: usize,
    /// Requests with fewer bytes past their descriptors go unsplit.
    pub min_bytes: usize,
}

impl Split {
    /// Whether a request of this layout is split (else written whole).
    pub fn applies(&self, layout: &StagingLayout) -> bool {
        layout.total - layout.floats_at >= self.min_bytes.max(1)
    }
}

/// Parts of [`SHARED_PART`] bytes from [`SHARED_MIN_BYTES`] on. (Not an
/// associated const: cbindgen would put the struct in the C header.)
impl Default for Split {
    fn default() -> Split {
        Split {
            part: SHARED_PART,
            min_bytes: SHARED_MIN_BYTES,
        }
    }
}

/// As [`write_staging`], the values, offsets and ids written in parts of
/// at most `split.part` bytes by this thread and whichever of `helpers`
/// join (smaller requests than `split.min_bytes` by this thread alone).
/// The same bytes as [`write_staging`]; with no copy handed over before
/// the end, the runtime uploads the request in one copy after this.
pub fn write_staging_shared(
    model: &Model,
    tensors: &[InputTensors],
    request: &Request<'_>,
    layout: &StagingLayout,
    out: &mut [u8],
    helpers: &crate::helper_threads::HelperThreads,
    split: Split,
) -> Result<()> {
    check_room(layout, out)?;
    let (head, bulk) = out[..layout.total].split_at_mut(layout.floats_at);
    write_head(model, tensors, request, layout, &mut |at, bytes| {
        head[at..at + bytes.len()].copy_from_slice(bytes);
        Ok(())
    })?;
    // Part boundaries at multiples of 8 from the buffer's start: every
    // value and id starts at a multiple of its width (`for_each_run`).
    debug_assert_eq!(layout.floats_at % 8, 0);
    if !split.applies(layout) || helpers.count() == 0 {
        write_bulk_part(model, tensors, request, layout, layout.floats_at, bulk);
        return Ok(());
    }
    const MAX_PARTS: usize = 256;
    let part = split
        .part
        .max(bulk.len().div_ceil(MAX_PARTS))
        .next_multiple_of(8);
    let count = bulk.len().div_ceil(part);
    // Each part's bytes, taken once by whichever thread runs it.
    let mut slots: [std::sync::Mutex<Option<&mut [u8]>>; MAX_PARTS] =
        std::array::from_fn(|_| std::sync::Mutex::new(None));
    for (slot, bytes) in slots.iter_mut().zip(bulk.chunks_mut(part)) {
        *slot
            .get_mut()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(bytes);
    }
    helpers.run(count, &|index| {
        let taken = slots[index]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(bytes) = taken {
            let at = layout.floats_at + index * part;
            write_bulk_part(model, tensors, request, layout, at, bytes);
        }
    });
    Ok(())
}

/// Refuses an `out` shorter than the request.
fn check_room(layout: &StagingLayout, out: &[u8]) -> Result<()> {
    if out.len() < layout.total {
        return Err(Error::new(
            crate::error::ErrorKind::Device,
            format!(
                "GPU staging buffer of {} bytes is smaller than the request's {}",
                out.len(),
                layout.total
            ),
        ));
    }
    Ok(())
}

/// Writes the header and the input descriptors (everything before
/// `layout.floats_at`), each by `put(at, bytes)`, in increasing `at`.
fn write_head(
    model: &Model,
    tensors: &[InputTensors],
    request: &Request<'_>,
    layout: &StagingLayout,
    put: &mut dyn FnMut(usize, &[u8]) -> Result<()>,
) -> Result<()> {
    let inputs = &model.config().inputs;
    let to_u32 = |v: usize| {
        u32::try_from(v).map_err(|_| Error::request("request too large for the GPU staging buffer"))
    };
    let StagingLayout {
        descs_at,
        floats_at,
        offsets_at,
        ids_at,
        ..
    } = *layout;
    let header = StagingHeader {
        candidates: request.candidates() as u64,
        num_inputs: inputs.len() as u64,
        floats_at: floats_at as u64,
        offsets_at: offsets_at as u64,
        ids_at: ids_at as u64,
        descs_at: descs_at as u64,
    };
    put(0, bytemuck::bytes_of(&header))?;
    let (mut f, mut o, mut i) = (0usize, 0usize, 0usize);
    for (index, (input, plan)) in inputs.iter().zip(&model.plan().inputs).enumerate() {
        let mut desc = InputDesc {
            table: tensors[index].table,
            mean: tensors[index].mean,
            std: tensors[index].std,
            rows: input.rows.unwrap_or(0),
            kind: (input.kind == InputKind::Sparse) as u32,
            scope: (input.scope == Scope::Candidate) as u32,
            dim: to_u32(input.dim)?,
            x0_offset: to_u32(plan.offset)?,
            flags: 0,
            clip: input.clip.unwrap_or(0.0),
            values: 0,
            ids: 0,
        };
        if input.log1p() {
            desc.flags |= FLAG_LOG1P;
        }
        if input.standardize() {
            desc.flags |= FLAG_STANDARDIZE;
        }
        if input.clip.is_some() {
            desc.flags |= FLAG_CLIP;
        }
        if input.missing_is_zero() {
            desc.flags |= FLAG_MISSING_ZERO;
        }
        if input.pooling == Some(Pooling::Mean) {
            desc.flags |= FLAG_MEAN;
        }
        if tensors[index].table_f16 {
            desc.flags |= FLAG_TABLE_F16;
        }
        if tensors[index].values_f16 {
            desc.flags |= FLAG_VALUES_F16;
        }
        if tensors[index].ids_u32 {
            desc.flags |= FLAG_IDS_U32;
        }
        match request.feature(index) {
            Feature::Dense(values) => {
                desc.values = to_u32(f)?;
                f += value_slots(&tensors[index], values.len());
            }
            Feature::Sparse {
                ids: bag_ids,
                offsets: bag_offsets,
            } => {
                desc.values = to_u32(o)?;
                i = ids_slot(&tensors[index], i);
                desc.ids = to_u32(i)?;
                o += bag_offsets.len();
                i += id_slots(&tensors[index], bag_ids.len());
            }
            Feature::Unset => {
                return Err(Error::request(format!("input `{}` is not set", input.name)))
            }
        }
        let at = descs_at + index * std::mem::size_of::<InputDesc>();
        put(at, bytemuck::bytes_of(&desc))?;
    }
    Ok(())
}

/// What the regions after the descriptors hold, a run of items at a time:
/// copied as they are, or converted as they are written.
#[derive(Clone, Copy)]
enum Run<'r> {
    /// f32 values, CSR offsets or u64 ids.
    Bytes(&'r [u8]),
    /// f32 values written as fp16 (2 bytes each).
    Half(&'r [f32]),
    /// u64 ids written as u32 (4 bytes each), modulo `rows`.
    Narrow { ids: &'r [u64], rows: u64 },
}

impl Run<'_> {
    /// Bytes an item takes in the buffer.
    fn width(&self) -> usize {
        match self {
            Run::Bytes(_) => 1,
            Run::Half(_) => 2,
            Run::Narrow { .. } => 4,
        }
    }

    fn items(&self) -> usize {
        match self {
            Run::Bytes(bytes) => bytes.len(),
            Run::Half(values) => values.len(),
            Run::Narrow { ids, .. } => ids.len(),
        }
    }

    /// Writes items `from..from + to.len() / width` into `to`.
    fn write(&self, from: usize, to: &mut [u8]) {
        let end = from + to.len() / self.width();
        match *self {
            Run::Bytes(bytes) => to.copy_from_slice(&bytes[from..end]),
            Run::Half(values) => crate::cpu::to_f16::values_to_f16(&values[from..end], to),
            Run::Narrow { ids, rows } => crate::cpu::ids_u32::ids_to_u32(&ids[from..end], rows, to),
        }
    }
}

/// Each run of the regions after the descriptors, as `visit(at, run)` in
/// increasing `at` (bytes from the buffer's start): the dense values, the
/// CSR offsets, the ids, each input's in input order. Every run starts at a
/// multiple of its width; the bytes between runs (an odd count of fp16
/// values' last half slot, the ids' alignment) are zeros.
fn for_each_run<'r>(
    model: &Model,
    tensors: &[InputTensors],
    request: &Request<'r>,
    layout: &StagingLayout,
    visit: &mut dyn FnMut(usize, Run<'r>),
) {
    let inputs = &model.config().inputs;
    let features = || (0..inputs.len()).map(|index| request.feature(index));
    let mut at = layout.floats_at;
    for (feature, tensors) in features().zip(tensors) {
        if let Feature::Dense(values) = feature {
            if tensors.values_f16 {
                visit(at, Run::Half(values));
                at = (at + 2 * values.len()).next_multiple_of(4);
            } else {
                visit(at, Run::Bytes(bytemuck::cast_slice(values)));
                at += values.len() * 4;
            }
        }
    }
    let mut at = layout.offsets_at;
    for feature in features() {
        if let Feature::Sparse { offsets, .. } = feature {
            visit(at, Run::Bytes(bytemuck::cast_slice(offsets)));
            at += offsets.len() * 4;
        }
    }
    let mut at = layout.ids_at;
    for ((feature, tensors), input) in features().zip(tensors).zip(inputs) {
        if let Feature::Sparse { ids, .. } = feature {
            if tensors.ids_u32 {
                let rows = input.rows.unwrap_or(1).max(1);
                visit(at, Run::Narrow { ids, rows });
                at += ids.len() * 4;
            } else {
                at = at.next_multiple_of(8);
                visit(at, Run::Bytes(bytemuck::cast_slice(ids)));
                at += ids.len() * 8;
            }
        }
    }
}

/// Writes the bytes `at..at + out.len()` of the regions after the
/// descriptors into `out`: the parts of the runs that fall there, zeros
/// between them. `at` and `at + out.len()` (unless the end of the request)
/// are multiples of 8, so no item is cut.
fn write_bulk_part(
    model: &Model,
    tensors: &[InputTensors],
    request: &Request<'_>,
    layout: &StagingLayout,
    at: usize,
    out: &mut [u8],
) {
    let end = at + out.len();
    let mut written = at;
    for_each_run(model, tensors, request, layout, &mut |start, run| {
        let width = run.width();
        let stop = start + width * run.items();
        if stop <= at || start >= end {
            return;
        }
        let (from, to) = (start.max(at), stop.min(end));
        out[written - at..from - at].fill(0);
        run.write((from - start) / width, &mut out[from - at..to - at]);
        written = to;
    });
    out[written - at..].fill(0);
}

/// Writes a buffer front to back, handing over finished pieces.
struct FrontToBack<'a, 'b> {
    out: &'a mut [u8],
    /// Bytes written (from 0) and bytes handed over.
    written: usize,
    sent: usize,
    chunk: usize,
    send: &'b mut dyn FnMut(&[u8], usize) -> Result<()>,
}

impl FrontToBack<'_, '_> {
    /// Writes `bytes` at `at` (at or past what is written; a gap, the ids'
    /// alignment, is zeroed), handing over a piece each `chunk` bytes, in
    /// copies of at most `COPY_PIECE` bytes.
    fn put(&mut self, at: usize, bytes: &[u8]) -> Result<()> {
        self.put_as(at, bytes, 1, |from, to| to.copy_from_slice(from))
    }

    /// As `put`, each item written as `width` bytes by `write(items, to)`
    /// (`to`: `width` bytes an item), straight into the buffer: the items
    /// are read once and their bytes written once.
    fn put_as<T>(
        &mut self,
        at: usize,
        items: &[T],
        width: usize,
        write: impl Fn(&[T], &mut [u8]),
    ) -> Result<()> {
        self.out[self.written..at].fill(0);
        self.written = at;
        for piece in items.chunks((self.chunk.min(COPY_PIECE) / width).max(1)) {
            let end = self.written + width * piece.len();
            write(piece, &mut self.out[self.written..end]);
            self.written = end;
            if self.written - self.sent >= self.chunk {
                self.hand_over()?;
            }
        }
        Ok(())
    }

    fn hand_over(&mut self) -> Result<()> {
        let (from, to) = (self.sent, self.written);
        self.sent = to;
        (self.send)(&self.out[from..to], from)
    }

    /// Hands over the rest, up to the end of the buffer.
    fn finish(mut self) -> Result<()> {
        let end = self.out.len();
        self.out[self.written..end].fill(0);
        self.written = end;
        if self.written > self.sent {
            self.hand_over()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::{DType, OpenOptions};

    /// Written in pieces of any size, the staging buffer is the same bytes:
    /// the pieces follow each other from 0 to the request's end, each but
    /// the last at least `chunk` bytes, and nothing past the end is touched.
    /// Written in parts by helper threads too.
    #[test]
    fn chunks_cover_the_buffer_in_order_with_the_same_bytes() {
        // Input `a` (candidate dense, may go as fp16) with 5 values a
        // candidate: an odd count leaves half a slot for the next write.
        let text = include_str!("../../tests/common/small_config.json")
            .replace(r#""dim": 6, "missing""#, r#""dim": 5, "missing""#);
        let config = Config::parse(&text).unwrap();
        assert_eq!(config.inputs[1].dim, 5);
        let source = crate::demo::synthetic_tensors(&config, 3).unwrap();
        let dir = test_support::tempdir().unwrap();
        let path = dir.path().join("model.mmoe");
        crate::format::writer::pack(&config, &source, DType::F16, &path, &mut |_, _| {}).unwrap();
        let model = Model::open(&path, &OpenOptions::default()).unwrap();
        // f32 values and u64 ids; the values that may go as fp16 as fp16
        // with u32 ids for `us` and u64 ids for `as` (as for a table of
        // more than 2³² rows; an odd count of u32 ids leaves half a slot
        // before them); and every id as u32.
        let (mut halves, mut narrow, mut odd_before_u64) = (0, 0, 0);
        let pools = [0, 1, 3].map(|n| {
            // The 3 helpers spin between calls: they join at once.
            let spin = std::time::Duration::from_micros(if n == 3 { 50 } else { 0 });
            crate::helper_threads::HelperThreads::new(n, "staging-test", spin).unwrap()
        });
        let parts = [1, 8, 16, 24, 1000, SHARED_PART];
        for (half, u32_ids) in [
            (false, [false; 2]),
            (true, [true, false]),
            (true, [true; 2]),
        ] {
            let tensors: Vec<InputTensors> = config
                .inputs
                .iter()
                .enumerate()
                .map(|(index, input)| InputTensors {
                    table: 0x1000,
                    table_f16: true,
                    mean: 0x2000,
                    std: 0x3000,
                    values_f16: half && values_as_f16(input),
                    ids_u32: ids_as_u32(input) && u32_ids[index.saturating_sub(2).min(1)],
                })
                .collect();
            halves += tensors.iter().filter(|t| t.values_f16).count();
            narrow += tensors.iter().filter(|t| t.ids_u32).count();
            // Odd and even counts: with an even one the ids' 8-byte alignment
            // leaves a gap after the CSR offsets. 16001 candidates: the dense
            // values span several copies of COPY_PIECE bytes.
            let mut gaps = 0;
            for n in [1, 2, 36, 37, 16001] {
                let mut owned = crate::demo::synthetic_request(&config, n, 5);
                // Ids at and past the rows: u32 ids are reduced by the host.
                if let crate::request::OwnedFeature::Sparse { ids, .. } = &mut owned.features[3] {
                    for (j, id) in ids.iter_mut().enumerate() {
                        *id += (j as u64 % 3) * 20 * 1_000_000_007;
                    }
                }
                let request = owned.as_request();
                if let Feature::Sparse { ids, .. } = request.feature(2) {
                    odd_before_u64 += usize::from(u32_ids == [true, false] && ids.len() % 2 == 1);
                }
                let layout = staging_layout(&model, &tensors, &request).unwrap();
                let total = layout.total;
                let mut whole = vec![0xaa; total + 16];
                write_staging(&model, &tensors, &request, &layout, &mut whole).unwrap();
                decode_and_compare(&whole[..total], &config, &request, &tensors);
                let gap = layout.ids_at - gap_start(&request, config.inputs.len(), &layout);
                gaps += gap;
                assert!(whole[layout.ids_at - gap..layout.ids_at]
                    .iter()
                    .all(|&b| b == 0));
                if n == 16001 {
                    assert!(layout.offsets_at - layout.floats_at > 2 * COPY_PIECE);
                }
                for chunk in [1, 7, 64, 1000, COPY_PIECE + 3, total, usize::MAX] {
                    let mut out = vec![0x55; total + 16];
                    let mut pieces: Vec<(usize, Vec<u8>)> = Vec::new();
                    let mut keep = |bytes: &[u8], at: usize| {
                        pieces.push((at, bytes.to_vec()));
                        Ok(())
                    };
                    write_staging_in_chunks(
                        &model, &tensors, &request, &layout, &mut out, chunk, &mut keep,
                    )
                    .unwrap();
                    let mut next = 0;
                    for (k, (at, bytes)) in pieces.iter().enumerate() {
                        assert_eq!(*at, next, "chunk {chunk}: piece {k}");
                        assert!(k + 1 == pieces.len() || bytes.len() >= chunk);
                        next += bytes.len();
                    }
                    assert_eq!(next, total, "chunk {chunk}");
                    if chunk <= 64 {
                        assert!(pieces.len() > 2);
                    }
                    let joined: Vec<u8> = pieces.into_iter().flat_map(|(_, b)| b).collect();
                    assert_eq!(joined, whole[..total]);
                    assert_eq!(out[..total], whole[..total]);
                    assert!(out[total..].iter().all(|&b| b == 0x55));
                }
                // Split between this thread and helpers at part sizes that
                // cut runs anywhere (at multiples of 8), from every size on:
                // the same bytes, nothing past the end touched.
                for (pool, part) in pools.iter().flat_map(|p| parts.map(|part| (p, part))) {
                    let mut out = vec![0x55; total + 16];
                    let split = Split { part, min_bytes: 0 };
                    write_staging_shared(
                        &model, &tensors, &request, &layout, &mut out, pool, split,
                    )
                    .unwrap();
                    let helpers = pool.count();
                    assert_eq!(
                        out[..total],
                        whole[..total],
                        "{helpers} helpers, part {part}"
                    );
                    assert!(out[total..].iter().all(|&b| b == 0x55));
                }
                let mut out = vec![0x55; total + 16];
                write_staging_shared(
                    &model,
                    &tensors,
                    &request,
                    &layout,
                    &mut out,
                    &pools[1],
                    Split::default(),
                )
                .unwrap();
                assert_eq!(out[..total], whole[..total]);
            }
            assert!(gaps > 0, "no request left a gap before the ids");
        }
        assert!(halves > 0, "no input of the test model went as fp16");
        assert_eq!(narrow, 3);
        assert!(
            odd_before_u64 > 0,
            "no odd count of u32 ids before u64 ones"
        );
    }

    /// The flags are those `kernels/common.cuh` defines, value for value.
    #[test]
    fn requests_past_u32_slots_are_refused_before_staging() {
        let most = MAX_SLOTS;
        assert!(check_slots(most, most, most).is_ok());
        for (f, o, i) in [(most + 1, 0, 0), (0, most + 1, 0), (0, 0, most + 1)] {
            let err = check_slots(f, o, i).unwrap_err();
            assert_eq!(err.kind(), crate::ErrorKind::Request);
            assert!(err.message().contains("GPU staging buffer"), "{err}");
        }
    }

    #[test]
    fn flags_match_the_kernels_header() {
        let header = include_str!("../../kernels/common.cuh");
        let flags = [
            ("FLAG_LOG1P", FLAG_LOG1P),
            ("FLAG_STANDARDIZE", FLAG_STANDARDIZE),
            ("FLAG_CLIP", FLAG_CLIP),
            ("FLAG_MISSING_ZERO", FLAG_MISSING_ZERO),
            ("FLAG_MEAN", FLAG_MEAN),
            ("FLAG_TABLE_F16", FLAG_TABLE_F16),
            ("FLAG_VALUES_F16", FLAG_VALUES_F16),
            ("FLAG_IDS_U32", FLAG_IDS_U32),
        ];
        let defined: Vec<(&str, u32)> = header
            .lines()
            .filter_map(|line| {
                let mut words = line.strip_prefix("#define FLAG_")?.split_whitespace();
                let name = words.next()?;
                let value = words.next()?.trim_end_matches('u').parse().ok()?;
                Some((&line[8..8 + 5 + name.len()], value))
            })
            .collect();
        assert_eq!(defined, flags);
    }

    /// Which inputs may go as fp16: dense, candidate scope, no log1p or
    /// standardize (a clip is fine); whose ids may go as u32: sparse, with
    /// fewer than 2³² rows.
    #[test]
    fn values_as_f16_and_ids_as_u32_take_the_inputs_they_may() {
        let config = Config::parse(
            r#"{"name": "t", "expert_dim": 4,
            "inputs": [{"name": "u", "kind": "dense", "scope": "request", "dim": 3},
                       {"name": "a", "kind": "dense", "scope": "candidate", "dim": 5},
                       {"name": "c", "kind": "dense", "scope": "candidate", "dim": 2, "clip": 4.0},
                       {"name": "l", "kind": "dense", "scope": "candidate", "dim": 2, "transform": ["log1p"]},
                       {"name": "s", "kind": "dense", "scope": "candidate", "dim": 2, "transform": ["standardize"]},
                       {"name": "b", "kind": "sparse", "scope": "candidate", "rows": 5, "dim": 2, "pooling": "sum"}],
            "experts": [{"name": "m", "type": "mlp", "hidden": [4]}],
            "tasks": [{"name": "click"}]}"#,
        )
        .unwrap();
        let chosen: Vec<bool> = config.inputs.iter().map(values_as_f16).collect();
        assert_eq!(chosen, [false, true, true, false, false, false]);
        let chosen: Vec<bool> = config.inputs.iter().map(ids_as_u32).collect();
        assert_eq!(chosen, [false, false, false, false, false, true]);
        // Ids go as u32 while the rows fit a u32 (the device reduces by them).
        let mut sparse = config.inputs[5].clone();
        sparse.rows = Some(u64::from(u32::MAX));
        assert!(ids_as_u32(&sparse));
        sparse.rows = Some(1 << 32);
        assert!(!ids_as_u32(&sparse));
    }

    /// Where the CSR offsets end (the ids start at the next multiple of 8).
    fn gap_start(request: &Request<'_>, inputs: usize, layout: &StagingLayout) -> usize {
        let offsets: usize = (0..inputs)
            .map(|i| match request.feature(i) {
                Feature::Sparse { offsets, .. } => offsets.len(),
                _ => 0,
            })
            .sum();
        layout.offsets_at + 4 * offsets
    }

    /// Reads the buffer back the way the kernels do (header, descriptors,
    /// then each input's values, offsets and ids through its descriptor)
    /// and compares with the request.
    fn decode_and_compare(
        buffer: &[u8],
        config: &Config,
        request: &Request<'_>,
        tensors: &[InputTensors],
    ) {
        let header: StagingHeader = bytemuck::pod_read_unaligned(&buffer[..48]);
        assert_eq!(header.candidates, request.candidates() as u64);
        assert_eq!(header.num_inputs as usize, config.inputs.len());
        let floats = header.floats_at as usize;
        let offsets = header.offsets_at as usize;
        let ids = header.ids_at as usize;
        assert_eq!(ids % 8, 0);
        let read = |at: usize, len: usize| &buffer[at..at + len];
        for (index, input) in config.inputs.iter().enumerate() {
            let at = header.descs_at as usize + 64 * index;
            let desc: InputDesc = bytemuck::pod_read_unaligned(read(at, 64));
            assert_eq!(desc.dim as usize, input.dim);
            assert_eq!(desc.table, tensors[index].table);
            assert_eq!(desc.kind, (input.kind == InputKind::Sparse) as u32);
            assert_eq!(
                desc.flags & FLAG_VALUES_F16 != 0,
                tensors[index].values_f16,
                "input {index}"
            );
            match request.feature(index) {
                Feature::Dense(values) if tensors[index].values_f16 => {
                    let bytes = read(floats + 4 * desc.values as usize, 2 * values.len());
                    let expected: Vec<u16> = values
                        .iter()
                        .map(|&v| crate::cpu::to_f16::value_to_f16(v))
                        .collect();
                    assert_eq!(
                        bytes,
                        bytemuck::cast_slice::<u16, u8>(&expected),
                        "input {index}"
                    );
                }
                Feature::Dense(values) => {
                    let bytes = read(floats + 4 * desc.values as usize, 4 * values.len());
                    assert_eq!(
                        bytes,
                        bytemuck::cast_slice::<f32, u8>(values),
                        "input {index}"
                    );
                }
                Feature::Sparse {
                    ids: bag_ids,
                    offsets: bag_offsets,
                } => {
                    let bytes = read(offsets + 4 * desc.values as usize, 4 * bag_offsets.len());
                    assert_eq!(
                        bytes,
                        bytemuck::cast_slice::<u32, u8>(bag_offsets),
                        "input {index}"
                    );
                    assert_eq!(
                        desc.flags & FLAG_IDS_U32 != 0,
                        tensors[index].ids_u32,
                        "input {index}"
                    );
                    let at = ids + 4 * desc.ids as usize;
                    if tensors[index].ids_u32 {
                        let rows = config.inputs[index].rows.unwrap();
                        let expected: Vec<u32> =
                            bag_ids.iter().map(|&id| (id % rows) as u32).collect();
                        let bytes = read(at, 4 * bag_ids.len());
                        assert_eq!(
                            bytes,
                            bytemuck::cast_slice::<u32, u8>(&expected),
                            "input {index}"
                        );
                    } else {
                        assert_eq!(at % 8, 0, "input {index}: u64 ids at {at}");
                        let bytes = read(at, 8 * bag_ids.len());
                        assert_eq!(
                            bytes,
                            bytemuck::cast_slice::<u64, u8>(bag_ids),
                            "input {index}"
                        );
                    }
                }
                Feature::Unset => panic!("input {index} unset"),
            }
        }
    }
}
