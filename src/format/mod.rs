//! The packed model file: a versioned header, the config, a tensor table,
//! and the tensors in the layout the CPU kernels read. `docs/FORMAT.md` is the
//! written specification; the constants and records here are its source.
//!
//! All integers are little-endian. Tensor data is aligned to 64 bytes, large
//! embedding tables to the page.

pub mod reader;
pub mod safetensors_source;
pub mod writer;

use bytemuck::{Pod, Zeroable};

use crate::plan::{TensorRole, TensorSpec};

pub const MAGIC: [u8; 8] = *b"MMOEPACK";
/// Version of the container (header, table, checksums).
pub const FORMAT_VERSION: u32 = 1;
/// Version of the tensor layouts (panel width and order); bumped when the
/// kernels' layout changes, so an old engine never misreads a new file.
/// 2: FinalMLP's `agg.w_xy` in [`Layout::Bilinear`]; version 1 stored it
/// row-major. Both are read; files are written in the newest unless asked.
pub const LAYOUT_VERSION: u32 = 2;
/// The oldest layout version this engine reads (and can write).
pub const OLDEST_LAYOUT_VERSION: u32 = 1;
/// Written as a native u32; reads back as this value only on a little-endian
/// host.
pub const ENDIAN_TAG: u32 = 0x0102_0304;

pub const HEADER_LEN: usize = 128;
pub const RECORD_LEN: usize = 80;
/// Most tensors a file may list; far above any model, and it bounds the table.
pub const MAX_TENSORS: u64 = 1 << 20;
/// Largest config text.
pub const MAX_CONFIG: u64 = 16 << 20;
/// Alignment of every tensor.
pub const TENSOR_ALIGN: usize = 64;
/// Alignment of the data region and of large embedding tables.
pub const PAGE_ALIGN: usize = 4096;
/// An embedding table at least this large starts on a page boundary.
pub const PAGE_ALIGN_THRESHOLD: usize = 64 * 1024;

/// Output rows per panel of a Linear weight: 32 fp16 values are one 64-byte
/// cache line, two AVX-512 registers of fp32 after conversion.
pub const PANEL: usize = 32;

/// Element type of the stored tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum DType {
    F32 = 1,
    F16 = 2,
}

impl DType {
    pub fn from_u8(v: u8) -> Option<DType> {
        match v {
            1 => Some(DType::F32),
            2 => Some(DType::F16),
            _ => None,
        }
    }
    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 => 2,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
        }
    }
    pub fn parse(name: &str) -> Option<DType> {
        match name {
            "f32" => Some(DType::F32),
            "f16" => Some(DType::F16),
            _ => None,
        }
    }
}

/// How a tensor's elements are ordered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Layout {
    /// Row-major, as PyTorch holds it.
    RowMajor = 1,
    /// A Linear weight `[n, k]` cut into panels of [`PANEL`] output rows; in
    /// each panel, for each `k`, the [`PANEL`] values `W[p·PANEL + j, k]`
    /// (zero where `p·PANEL + j ≥ n`). Element `(i, k)` is at
    /// `(i / PANEL)·k_total·PANEL + k·PANEL + i % PANEL`.
    Panel = 2,
    /// FinalMLP's `agg.w_xy` (`[d1·hy, H]`, read by MODEL.md as a flat
    /// array) as the Linear weight `W'[o, j·hy + b] = flat[j·hy·H + o·hy + b]`
    /// (`[H, d1·hy]`) in the panel layout: the bilinear sum is then
    /// `W' z` over the heads' outer products `z[j·hy + b] = o1[j]·o2[(j / hx)·hy + b]`,
    /// a Linear layer (layout version 2).
    Bilinear = 3,
}

impl Layout {
    pub fn from_u8(v: u8) -> Option<Layout> {
        match v {
            1 => Some(Layout::RowMajor),
            2 => Some(Layout::Panel),
            3 => Some(Layout::Bilinear),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Layout::RowMajor => "row-major",
            Layout::Panel => "panel32",
            Layout::Bilinear => "bilinear32",
        }
    }
    /// The layout of a tensor of this role in files of `layout_version`.
    pub fn for_role(role: TensorRole, layout_version: u32) -> Layout {
        match role {
            TensorRole::LinearWeight => Layout::Panel,
            TensorRole::Bilinear { .. } if layout_version >= 2 => Layout::Bilinear,
            _ => Layout::RowMajor,
        }
    }
}

/// Elements stored for a tensor of `shape` in `layout` (panels are padded).
pub fn stored_elements(shape: &[usize], layout: Layout) -> Option<usize> {
    match layout {
        Layout::RowMajor => shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)),
        Layout::Panel => match shape {
            [n, k] => n.div_ceil(PANEL).checked_mul(PANEL)?.checked_mul(*k),
            _ => None,
        },
        // The panels of `[H, d1·hy]` for the logical `[d1·hy, H]`.
        Layout::Bilinear => match shape {
            [k, n] => n.div_ceil(PANEL).checked_mul(PANEL)?.checked_mul(*k),
            _ => None,
        },
    }
}

/// Where element `flat` of a bilinear tensor (`[d1·hy, H]`, MODEL.md's flat
/// index `j·hy·H + o·hy + b`) is stored in `layout`.
#[inline]
pub fn bilinear_index(layout: Layout, flat: usize, hy: usize, h: usize, k_total: usize) -> usize {
    match layout {
        Layout::Bilinear => {
            let (j, rest) = (flat / (hy * h), flat % (hy * h));
            let (o, b) = (rest / hy, rest % hy);
            (o / PANEL) * k_total * PANEL + (j * hy + b) * PANEL + o % PANEL
        }
        _ => flat,
    }
}

/// Alignment the file gives a tensor of this role and size.
pub fn alignment(role: TensorRole, nbytes: usize) -> usize {
    if role == TensorRole::Embedding && nbytes >= PAGE_ALIGN_THRESHOLD {
        PAGE_ALIGN
    } else {
        TENSOR_ALIGN
    }
}

/// What the file stores for a tensor spec: layout, element count, bytes and
/// alignment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    pub layout: Layout,
    pub elements: usize,
    pub nbytes: usize,
    pub align: usize,
}

pub fn placement(spec: &TensorSpec, dtype: DType, layout_version: u32) -> Option<Placement> {
    let layout = Layout::for_role(spec.role, layout_version);
    let elements = stored_elements(&spec.shape, layout)?;
    let nbytes = elements.checked_mul(dtype.size())?;
    Some(Placement {
        layout,
        elements,
        nbytes,
        align: alignment(spec.role, nbytes),
    })
}

pub fn align_up(value: u64, align: u64) -> Option<u64> {
    debug_assert!(align.is_power_of_two());
    value.checked_add(align - 1).map(|v| v & !(align - 1))
}

/// The fixed header at offset 0.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct FileHeader {
    pub magic: [u8; 8],
    pub format_version: u32,
    pub endian_tag: u32,
    pub layout_version: u32,
    /// [`DType`] of every tensor.
    pub dtype: u32,
    pub tensor_count: u32,
    /// Must be 0 in this version.
    pub flags: u32,
    pub config_offset: u64,
    pub config_len: u64,
    pub table_offset: u64,
    pub table_len: u64,
    pub names_offset: u64,
    pub names_len: u64,
    pub data_offset: u64,
    pub data_len: u64,
    pub file_len: u64,
    /// xxh3-64 of header (with this field zero), config, table and names.
    pub meta_checksum: u64,
    pub reserved: [u64; 2],
}

/// One entry of the tensor table.
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
#[repr(C)]
pub struct TensorRecord {
    /// Into the names region.
    pub name_offset: u32,
    pub name_len: u32,
    pub dtype: u8,
    pub layout: u8,
    pub rank: u8,
    pub align_log2: u8,
    pub reserved0: u32,
    /// Logical shape; unused dimensions are 0.
    pub shape: [u64; 4],
    /// From the start of the file.
    pub offset: u64,
    pub nbytes: u64,
    /// xxh3-64 of the tensor's bytes.
    pub checksum: u64,
    pub reserved1: u64,
}

const _: () = assert!(std::mem::size_of::<FileHeader>() == HEADER_LEN);
const _: () = assert!(std::mem::size_of::<TensorRecord>() == RECORD_LEN);

/// The meta checksum: header (checksum field zeroed), config, table, names.
pub fn meta_checksum(header: &FileHeader, config: &[u8], table: &[u8], names: &[u8]) -> u64 {
    let mut header = *header;
    header.meta_checksum = 0;
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    hasher.update(bytemuck::bytes_of(&header));
    hasher.update(config);
    hasher.update(table);
    hasher.update(names);
    hasher.digest()
}
