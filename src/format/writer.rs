//! The packer: a config and a set of named tensors in, one packed file out.
//!
//! It checks the tensor set against the plan (missing, extra, misshaped),
//! converts to the file's dtype (refusing values that do not fit), lays each
//! tensor out as the kernels read it, and writes to a temporary file that is
//! renamed into place only when complete, so a reader never maps a half-written
//! model.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use half::f16;
use xxhash_rust::xxh3::Xxh3;

use super::{
    align_up, meta_checksum, placement, DType, FileHeader, Layout, Placement, TensorRecord,
    ENDIAN_TAG, FORMAT_VERSION, HEADER_LEN, LAYOUT_VERSION, MAGIC, MAX_CONFIG, MAX_TENSORS,
    OLDEST_LAYOUT_VERSION, PAGE_ALIGN, PANEL, RECORD_LEN, TENSOR_ALIGN,
};
use crate::config::Config;
use crate::error::{Error, ErrorKind, Result};
use crate::plan::{Plan, TensorRole, TensorSpec};

/// Largest fp16 value.
const F16_MAX: f32 = 65504.0;
/// Elements converted per chunk when streaming a row-major tensor.
const CHUNK: usize = 1 << 18;

/// Named tensors offered to the packer, read as f32 whatever they hold.
pub trait TensorSource {
    /// Every tensor on offer.
    fn names(&self) -> Vec<String>;
    /// The shape of `name`, or `None` if there is no such tensor.
    fn shape(&self, name: &str) -> Option<Vec<usize>>;
    /// Fills `out` with the elements of `name` from flat row-major index
    /// `start` on.
    fn read(&self, name: &str, start: usize, out: &mut [f32]) -> Result<()>;
}

/// Receives (bytes written, bytes in all) as tensor data is written.
pub type Progress<'a> = &'a mut dyn FnMut(u64, u64);

#[derive(Clone, Debug)]
pub struct PackSummary {
    pub tensors: usize,
    pub file_len: u64,
    pub dtype: DType,
}

/// Checks the offered tensors against the plan, naming every problem.
pub fn check_tensor_set(plan: &Plan, source: &dyn TensorSource) -> Result<()> {
    let mut problems = Vec::new();
    for spec in &plan.tensors {
        match source.shape(&spec.name) {
            None => problems.push(format!(
                "missing tensor `{}` (shape {:?})",
                spec.name, spec.shape
            )),
            Some(shape) if !shape_matches(spec, &shape) => problems.push(format!(
                "tensor `{}` has shape {shape:?}, expected {:?}",
                spec.name, spec.shape
            )),
            Some(_) => {}
        }
    }
    let mut extra: Vec<String> = source
        .names()
        .into_iter()
        .filter(|name| plan.tensor_id(name).is_none())
        .collect();
    extra.sort();
    for name in extra {
        problems.push(format!(
            "extra tensor `{name}` (the config has no place for it)"
        ));
    }
    if problems.is_empty() {
        return Ok(());
    }
    let count = problems.len();
    if count > 20 {
        problems.truncate(20);
        problems.push(format!("and {} more", count - 20));
    }
    Err(Error::tensor(format!(
        "{count} tensor problem(s): {}",
        problems.join("; ")
    )))
}

/// Every tensor has exactly the shape MODEL.md gives it, but for FinalMLP's
/// learned context, whose shape MODEL.md leaves open: it may also come as
/// `[1, c]`, a PyTorch `Parameter(1, c)` (`plan::learned_context_width`). A
/// bias or a LayerNorm γ of `[1, n]` is misshaped, as MODEL.md says.
fn shape_matches(spec: &TensorSpec, shape: &[usize]) -> bool {
    shape == spec.shape.as_slice()
        || (spec.name.ends_with(".ctx_bias")
            && matches!(spec.shape.as_slice(), [c] if shape == [1, *c]))
}

/// Packs `config` and the tensors of `source` into `out`, in the newest
/// layout version.
pub fn pack(
    config: &Config,
    source: &dyn TensorSource,
    dtype: DType,
    out: &Path,
    progress: Progress<'_>,
) -> Result<PackSummary> {
    pack_for_layout(config, source, dtype, out, progress, LAYOUT_VERSION)
}

/// [`pack`] in a given layout version: an older one writes a file that
/// engines of that version read too (during a rolling upgrade), at the cost
/// of what the newer layouts bring (version 1: FinalMLP's bilinear sum is
/// not a Linear layer, and much slower).
pub fn pack_for_layout(
    config: &Config,
    source: &dyn TensorSource,
    dtype: DType,
    out: &Path,
    progress: Progress<'_>,
    layout_version: u32,
) -> Result<PackSummary> {
    if !(OLDEST_LAYOUT_VERSION..=LAYOUT_VERSION).contains(&layout_version) {
        return Err(Error::config(format!(
            "layout version {layout_version} cannot be written (this engine writes versions {OLDEST_LAYOUT_VERSION} to {LAYOUT_VERSION})"
        )));
    }
    config.validate()?;
    let plan = Plan::build(config, &|name| source.shape(name))?;
    check_tensor_set(&plan, source)?;

    let config_json = config.to_json().into_bytes();
    let count = plan.tensors.len();
    let names_len: usize = plan.tensors.iter().map(|t| t.name.len()).sum();
    check_file_limits(count, config_json.len(), names_len)?;
    let config_offset = HEADER_LEN as u64;
    let table_offset = align8(config_offset + config_json.len() as u64);
    let table_len = (count * RECORD_LEN) as u64;
    let names_offset = table_offset + table_len;
    let mut names = Vec::new();
    let mut records = Vec::with_capacity(count);
    let mut placements = Vec::with_capacity(count);
    for spec in &plan.tensors {
        let place = placement(spec, dtype, layout_version)
            .ok_or_else(|| Error::tensor(format!("tensor `{}` is too large", spec.name)))?;
        let mut shape = [0u64; 4];
        for (slot, &d) in shape.iter_mut().zip(&spec.shape) {
            *slot = d as u64;
        }
        records.push(TensorRecord {
            name_offset: names.len() as u32,
            name_len: spec.name.len() as u32,
            dtype: dtype as u8,
            layout: place.layout as u8,
            rank: spec.shape.len() as u8,
            align_log2: place.align.trailing_zeros() as u8,
            reserved0: 0,
            shape,
            offset: 0,
            nbytes: place.nbytes as u64,
            checksum: 0,
            reserved1: 0,
        });
        names.extend_from_slice(spec.name.as_bytes());
        placements.push(place);
    }
    let data_offset = align_up(names_offset + names.len() as u64, PAGE_ALIGN as u64)
        .ok_or_else(|| Error::tensor("model too large"))?;
    let mut cursor = data_offset;
    for (record, place) in records.iter_mut().zip(&placements) {
        record.offset =
            align_up(cursor, place.align as u64).ok_or_else(|| Error::tensor("model too large"))?;
        cursor = record.offset + record.nbytes;
    }
    let file_len =
        align_up(cursor, TENSOR_ALIGN as u64).ok_or_else(|| Error::tensor("model too large"))?;
    let total_bytes = file_len - data_offset;

    let temp = temp_path(out);
    let result = (|| -> Result<()> {
        let file = File::create(&temp).map_err(|e| Error::io("cannot create", &temp, e))?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        let io = |e| Error::io("cannot write", &temp, e);
        // Header and table are written last, once the checksums are known.
        w.write_all(&[0u8; HEADER_LEN]).map_err(io)?;
        w.write_all(&config_json).map_err(io)?;
        pad_to(
            &mut w,
            HEADER_LEN as u64 + config_json.len() as u64,
            table_offset,
        )
        .map_err(io)?;
        w.write_all(&vec![0u8; table_len as usize]).map_err(io)?;
        w.write_all(&names).map_err(io)?;
        pad_to(&mut w, names_offset + names.len() as u64, data_offset).map_err(io)?;

        let mut position = data_offset;
        let mut scratch = Vec::new();
        let mut out_bytes = Vec::new();
        for ((spec, record), place) in plan.tensors.iter().zip(records.iter_mut()).zip(&placements)
        {
            pad_to(&mut w, position, record.offset).map_err(io)?;
            let mut hasher = Xxh3::new();
            let mut sink = |bytes: &[u8]| -> Result<()> {
                hasher.update(bytes);
                w.write_all(bytes).map_err(io)
            };
            write_tensor(
                spec,
                place,
                dtype,
                source,
                &mut scratch,
                &mut out_bytes,
                &mut sink,
            )?;
            record.checksum = hasher.digest();
            position = record.offset + record.nbytes;
            progress(position - data_offset, total_bytes);
        }
        pad_to(&mut w, position, file_len).map_err(io)?;

        let table: Vec<u8> = bytemuck::cast_slice(&records).to_vec();
        let mut header = FileHeader {
            magic: MAGIC,
            format_version: FORMAT_VERSION,
            endian_tag: ENDIAN_TAG,
            layout_version,
            dtype: dtype as u32,
            tensor_count: count as u32,
            flags: 0,
            config_offset,
            config_len: config_json.len() as u64,
            table_offset,
            table_len,
            names_offset,
            names_len: names.len() as u64,
            data_offset,
            data_len: file_len - data_offset,
            file_len,
            meta_checksum: 0,
            reserved: [0; 2],
        };
        header.meta_checksum = meta_checksum(&header, &config_json, &table, &names);
        w.seek(SeekFrom::Start(table_offset)).map_err(io)?;
        w.write_all(&table).map_err(io)?;
        w.seek(SeekFrom::Start(0)).map_err(io)?;
        w.write_all(bytemuck::bytes_of(&header)).map_err(io)?;
        let file = w.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        Ok(())
    })();
    match result {
        Ok(()) => {
            std::fs::rename(&temp, out)
                .map_err(|e| Error::io("cannot move the packed file to", out, e))?;
            Ok(PackSummary {
                tensors: count,
                file_len,
                dtype,
            })
        }
        Err(e) => {
            let _ = std::fs::remove_file(&temp);
            Err(e)
        }
    }
}

/// Streams one tensor's bytes, converted and laid out, into `sink`.
fn write_tensor(
    spec: &TensorSpec,
    place: &Placement,
    dtype: DType,
    source: &dyn TensorSource,
    scratch: &mut Vec<f32>,
    out_bytes: &mut Vec<u8>,
    sink: &mut dyn FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    match place.layout {
        Layout::RowMajor => {
            let total = spec.numel();
            let mut start = 0;
            while start < total {
                let len = CHUNK.min(total - start);
                scratch.resize(len, 0.0);
                source.read(&spec.name, start, scratch)?;
                check_values(spec, start, scratch, dtype)?;
                encode(scratch, dtype, out_bytes);
                sink(out_bytes)?;
                start += len;
            }
        }
        Layout::Panel => {
            let (n, k) = (spec.shape[0], spec.shape[1]);
            let mut panel = vec![0.0f32; PANEL * k];
            for p in 0..n.div_ceil(PANEL) {
                let rows = PANEL.min(n - p * PANEL);
                scratch.resize(rows * k, 0.0);
                source.read(&spec.name, p * PANEL * k, scratch)?;
                check_values(spec, p * PANEL * k, scratch, dtype)?;
                // Row-major rows [rows, k] → panel [k, PANEL], zero padded.
                panel.fill(0.0);
                for (j, row) in scratch.chunks_exact(k).enumerate() {
                    for (kk, &v) in row.iter().enumerate() {
                        panel[kk * PANEL + j] = v;
                    }
                }
                encode(&panel, dtype, out_bytes);
                sink(out_bytes)?;
            }
        }
        Layout::Bilinear => {
            let TensorRole::Bilinear { hy } = spec.role else {
                return Err(Error::tensor(format!(
                    "tensor `{}` is not a bilinear weight",
                    spec.name
                )));
            };
            // W'[o, j·hy + b] = flat[j·hy·H + o·hy + b] in panels of 32 o's:
            // for panel p and each j, the 32 × hy values flat[j·hy·H + 32p·hy …]
            // become hy lines of 32 (zero past H). Several j at a time.
            let (k_total, h) = (spec.shape[0], spec.shape[1]);
            let d1 = k_total / hy.max(1);
            let per_write = (CHUNK / (hy * PANEL).max(1)).max(1);
            let mut lines = Vec::new();
            for p in 0..h.div_ceil(PANEL) {
                let outputs = PANEL.min(h - p * PANEL);
                let mut j = 0;
                while j < d1 {
                    let count = per_write.min(d1 - j);
                    lines.clear();
                    lines.resize(count * hy * PANEL, 0.0f32);
                    scratch.resize(outputs * hy, 0.0);
                    for (jj, block) in lines.chunks_exact_mut(hy * PANEL).enumerate() {
                        let start = (j + jj) * hy * h + p * PANEL * hy;
                        source.read(&spec.name, start, scratch)?;
                        check_values(spec, start, scratch, dtype)?;
                        for (o, weights) in scratch.chunks_exact(hy).enumerate() {
                            for (b, &v) in weights.iter().enumerate() {
                                block[b * PANEL + o] = v;
                            }
                        }
                    }
                    encode(&lines, dtype, out_bytes);
                    sink(out_bytes)?;
                    j += count;
                }
            }
        }
    }
    Ok(())
}

/// Refuses non-finite values, and values outside fp16's range for fp16 files,
/// naming the tensor and the element.
fn check_values(spec: &TensorSpec, start: usize, values: &[f32], dtype: DType) -> Result<()> {
    let bad = values
        .iter()
        .position(|v| !v.is_finite() || (dtype == DType::F16 && v.abs() > F16_MAX));
    if let Some(i) = bad {
        let index = unflatten(start + i, &spec.shape);
        let value = values[i];
        let why = if value.is_finite() {
            format!("does not fit in fp16 (largest magnitude {F16_MAX}); pack with --dtype f32 or rescale")
        } else {
            "is not finite".to_string()
        };
        return Err(Error::new(
            ErrorKind::Tensor,
            format!("tensor `{}` element {index:?} = {value} {why}", spec.name),
        ));
    }
    Ok(())
}

fn unflatten(mut flat: usize, shape: &[usize]) -> Vec<usize> {
    let mut index = vec![0; shape.len()];
    for (slot, &d) in index.iter_mut().zip(shape).rev() {
        *slot = flat % d.max(1);
        flat /= d.max(1);
    }
    index
}

fn encode(values: &[f32], dtype: DType, out: &mut Vec<u8>) {
    out.clear();
    match dtype {
        DType::F32 => {
            for v in values {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        DType::F16 => {
            for v in values {
                out.extend_from_slice(&f16::from_f32(*v).to_le_bytes());
            }
        }
    }
}

fn pad_to(w: &mut impl Write, from: u64, to: u64) -> std::io::Result<()> {
    debug_assert!(to >= from);
    const ZEROS: [u8; 4096] = [0; 4096];
    let mut left = to - from;
    while left > 0 {
        let n = left.min(ZEROS.len() as u64) as usize;
        w.write_all(&ZEROS[..n])?;
        left -= n as u64;
    }
    Ok(())
}

fn align8(v: u64) -> u64 {
    v.div_ceil(8) * 8
}

fn temp_path(out: &Path) -> PathBuf {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    out.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Tensors held in memory, row-major f32: the demo model and tests use it.
#[derive(Clone, Debug, Default)]
pub struct MemorySource {
    tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
}

impl MemorySource {
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds (or replaces) a tensor. `values.len()` must equal the shape's
    /// product.
    pub fn insert(&mut self, name: impl Into<String>, shape: Vec<usize>, values: Vec<f32>) {
        let name = name.into();
        assert_eq!(
            shape.iter().product::<usize>(),
            values.len(),
            "tensor `{name}`"
        );
        self.tensors.retain(|(n, _, _)| *n != name);
        self.tensors.push((name, shape, values));
    }
    pub fn remove(&mut self, name: &str) {
        self.tensors.retain(|(n, _, _)| n != name);
    }
    pub fn get_mut(&mut self, name: &str) -> Option<&mut Vec<f32>> {
        self.tensors
            .iter_mut()
            .find(|(n, _, _)| n == name)
            .map(|(_, _, v)| v)
    }
    fn find(&self, name: &str) -> Option<&(String, Vec<usize>, Vec<f32>)> {
        self.tensors.iter().find(|(n, _, _)| n == name)
    }
}

impl TensorSource for MemorySource {
    fn names(&self) -> Vec<String> {
        self.tensors.iter().map(|(n, _, _)| n.clone()).collect()
    }
    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.find(name).map(|(_, s, _)| s.clone())
    }
    fn read(&self, name: &str, start: usize, out: &mut [f32]) -> Result<()> {
        let (_, _, values) = self
            .find(name)
            .ok_or_else(|| Error::tensor(format!("missing tensor `{name}`")))?;
        let src = values
            .get(start..start + out.len())
            .ok_or_else(|| Error::tensor(format!("tensor `{name}`: read past its end")))?;
        out.copy_from_slice(src);
        Ok(())
    }
}

/// The reader's limits, checked before anything is written: a file past
/// them would pack, at length, into one no engine opens.
fn check_file_limits(tensors: usize, config_len: usize, names_len: usize) -> Result<()> {
    if tensors as u64 > MAX_TENSORS {
        return Err(Error::config(format!(
            "the config needs {tensors} tensors, above the file format's limit of {MAX_TENSORS}"
        )));
    }
    if config_len as u64 > MAX_CONFIG {
        return Err(Error::config(format!(
            "the config's JSON is {config_len} bytes, above the file format's limit of {MAX_CONFIG}"
        )));
    }
    if u32::try_from(names_len).is_err() {
        return Err(Error::config(format!(
            "the tensors' names take {names_len} bytes, above the file format's limit of {}",
            u32::MAX
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_refuses_what_the_reader_would() {
        let (most, config) = (MAX_TENSORS as usize, MAX_CONFIG as usize);
        assert!(check_file_limits(most, config, u32::MAX as usize).is_ok());
        for (tensors, config_len, names, what) in [
            (most + 1, 0, 0, "tensors"),
            (1, config + 1, 0, "JSON"),
            (1, 0, u32::MAX as usize + 1, "names"),
        ] {
            let e = check_file_limits(tensors, config_len, names).unwrap_err();
            assert!(
                e.message().contains(what) && e.message().contains("limit"),
                "{e}"
            );
        }
    }
}
