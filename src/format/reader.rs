//! Reads a packed file from bytes, trusting nothing: every offset, length,
//! alignment and shape that guards memory safety is checked, with checked
//! arithmetic, before a tensor is handed out. The bytes are usually a memory
//! map, but the parser takes any slice (the fuzz target feeds it arbitrary
//! bytes).

use std::ops::Range;

use xxhash_rust::xxh3::xxh3_64;

use super::{
    align_up, meta_checksum, placement, DType, FileHeader, Layout, TensorRecord, ENDIAN_TAG,
    FORMAT_VERSION, HEADER_LEN, LAYOUT_VERSION, MAGIC, MAX_CONFIG, MAX_TENSORS,
    OLDEST_LAYOUT_VERSION, PAGE_ALIGN, RECORD_LEN, TENSOR_ALIGN,
};
use crate::config::Config;
use crate::error::{Error, ErrorKind, Result};
use crate::plan::Plan;

/// A tensor of a validated file.
#[derive(Clone, Debug)]
pub struct TensorEntry {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: DType,
    pub layout: Layout,
    /// Byte range in the file: in bounds, aligned, not overlapping any other.
    pub bytes: Range<usize>,
    pub checksum: u64,
}

/// A validated packed file: its config, plan and tensor table.
#[derive(Clone, Debug)]
pub struct PackedLayout {
    pub header: FileHeader,
    pub dtype: DType,
    pub config: Config,
    pub plan: Plan,
    /// In plan order: `tensors[id]` is the plan's tensor `id`.
    pub tensors: Vec<TensorEntry>,
}

fn bad(message: impl Into<String>) -> Error {
    Error::format(message)
}

/// Parses and validates the whole layout of a packed file. It reads the
/// header, config, table and names (checksummed), never the tensor data.
pub fn parse(bytes: &[u8]) -> Result<PackedLayout> {
    let head = bytes.get(..HEADER_LEN).ok_or_else(|| {
        bad(format!(
            "file is {} bytes, shorter than the {HEADER_LEN}-byte header",
            bytes.len()
        ))
    })?;
    let header: FileHeader = bytemuck::pod_read_unaligned(head);
    if header.magic != MAGIC {
        return Err(bad("not a packed mmoe model (bad magic)"));
    }
    if header.endian_tag != ENDIAN_TAG {
        return Err(bad(
            "the file's byte order differs from this machine's (packed files are little-endian)",
        ));
    }
    if header.format_version != FORMAT_VERSION {
        return Err(bad(format!(
            "format version {} is not supported (this engine reads version {FORMAT_VERSION}); repack the model",
            header.format_version
        )));
    }
    if !(OLDEST_LAYOUT_VERSION..=LAYOUT_VERSION).contains(&header.layout_version) {
        return Err(bad(format!(
            "layout version {} is not supported (this engine reads versions {OLDEST_LAYOUT_VERSION} to {LAYOUT_VERSION}); repack the model",
            header.layout_version
        )));
    }
    let dtype = u8::try_from(header.dtype)
        .ok()
        .and_then(DType::from_u8)
        .ok_or_else(|| bad(format!("unknown dtype code {}", header.dtype)))?;
    if header.flags != 0 || header.reserved != [0; 2] {
        return Err(bad(
            "header flags or reserved fields are set; the file is from a newer engine or corrupt",
        ));
    }
    let file_len = bytes.len() as u64;
    if header.file_len != file_len {
        return Err(bad(format!(
            "the header says the file is {} bytes but it is {file_len} (truncated or appended to)",
            header.file_len
        )));
    }
    let count = u64::from(header.tensor_count);
    if count == 0 || count > MAX_TENSORS {
        return Err(bad(format!("tensor count {count} is out of range")));
    }
    if header.config_len > MAX_CONFIG {
        return Err(bad(format!(
            "config length {} is out of range",
            header.config_len
        )));
    }

    // The regions follow each other in a fixed order with no gaps beyond
    // alignment, and end exactly at the end of the file.
    let config_end = checked_end("config", header.config_offset, header.config_len)?;
    let table_end = checked_end("tensor table", header.table_offset, header.table_len)?;
    let names_end = checked_end("names", header.names_offset, header.names_len)?;
    let data_end = checked_end("tensor data", header.data_offset, header.data_len)?;
    let expect = |what: &str, got: u64, want: Option<u64>| -> Result<()> {
        if want == Some(got) {
            Ok(())
        } else {
            Err(bad(format!("{what} is at {got}, expected {want:?}")))
        }
    };
    expect("config", header.config_offset, Some(HEADER_LEN as u64))?;
    expect("tensor table", header.table_offset, align_up(config_end, 8))?;
    if Some(header.table_len) != count.checked_mul(RECORD_LEN as u64) {
        return Err(bad(format!(
            "tensor table is {} bytes, expected {count} records of {RECORD_LEN}",
            header.table_len
        )));
    }
    expect("names", header.names_offset, Some(table_end))?;
    expect(
        "tensor data",
        header.data_offset,
        align_up(names_end, PAGE_ALIGN as u64),
    )?;
    if data_end != file_len {
        return Err(bad("tensor data does not end at the end of the file"));
    }

    let config_bytes = slice(bytes, header.config_offset, config_end)?;
    let table_bytes = slice(bytes, header.table_offset, table_end)?;
    let names = slice(bytes, header.names_offset, names_end)?;
    // Alignment padding is not covered by the checksum; it must be zero, so
    // that no byte of the file's meta part can change unnoticed.
    if !is_zero(slice(bytes, config_end, header.table_offset)?)
        || !is_zero(slice(bytes, names_end, header.data_offset)?)
    {
        return Err(bad("padding between regions is not zero (corrupt file)"));
    }
    if meta_checksum(&header, config_bytes, table_bytes, names) != header.meta_checksum {
        return Err(Error::new(
            ErrorKind::Checksum,
            "header, config or tensor table is corrupt (meta checksum mismatch)",
        ));
    }

    let config_text =
        std::str::from_utf8(config_bytes).map_err(|_| bad("the stored config is not UTF-8"))?;
    let config = Config::parse(config_text).map_err(|e| e.context("the stored config"))?;

    let records: Vec<TensorRecord> = table_bytes
        .chunks_exact(RECORD_LEN)
        .map(bytemuck::pod_read_unaligned)
        .collect();
    let mut tensors = Vec::with_capacity(records.len());
    let mut cursor = header.data_offset;
    for (index, record) in records.iter().enumerate() {
        let entry = read_record(index, record, names, dtype, cursor, data_end)?;
        cursor = entry.bytes.end as u64;
        tensors.push(entry);
    }
    if align_up(cursor, TENSOR_ALIGN as u64) != Some(data_end) {
        return Err(bad("tensor data does not cover its region exactly"));
    }

    // The table must be exactly the plan's tensor list, in order and shape.
    // By hash: the plan asks once per tensor it may find, and a file may
    // hold up to MAX_TENSORS.
    let by_name: std::collections::HashMap<&str, &Vec<usize>> = tensors
        .iter()
        .map(|t| (t.name.as_str(), &t.shape))
        .collect();
    let plan = Plan::build(&config, &|name| {
        by_name.get(name).map(|&shape| shape.clone())
    })?;
    if plan.tensors.len() != tensors.len() {
        return Err(bad(format!(
            "the file holds {} tensors, its config needs {}",
            tensors.len(),
            plan.tensors.len()
        )));
    }
    for (spec, entry) in plan.tensors.iter().zip(&tensors) {
        if spec.name != entry.name || spec.shape != entry.shape {
            return Err(bad(format!(
                "tensor table has `{}` {:?} where the config needs `{}` {:?}",
                entry.name, entry.shape, spec.name, spec.shape
            )));
        }
        let place = placement(spec, dtype, header.layout_version)
            .ok_or_else(|| bad(format!("tensor `{}` is too large", spec.name)))?;
        if place.layout != entry.layout
            || place.nbytes != entry.bytes.len()
            || entry.bytes.start % place.align != 0
        {
            return Err(bad(format!(
                "tensor `{}` has layout {}, {} bytes at offset {}; expected {}, {} bytes aligned to {}",
                entry.name,
                entry.layout.name(),
                entry.bytes.len(),
                entry.bytes.start,
                place.layout.name(),
                place.nbytes,
                place.align
            )));
        }
    }

    Ok(PackedLayout {
        header,
        dtype,
        config,
        plan,
        tensors,
    })
}

/// Checks one record and places it right after the previous tensor.
fn read_record(
    index: usize,
    record: &TensorRecord,
    names: &[u8],
    dtype: DType,
    previous_end: u64,
    data_end: u64,
) -> Result<TensorEntry> {
    let name_start = record.name_offset as usize;
    let name_end = name_start
        .checked_add(record.name_len as usize)
        .filter(|&end| end <= names.len())
        .ok_or_else(|| bad(format!("tensor #{index}: name out of bounds")))?;
    let name = std::str::from_utf8(&names[name_start..name_end])
        .map_err(|_| bad(format!("tensor #{index}: name is not UTF-8")))?
        .to_string();
    let at = |what: String| bad(format!("tensor #{index} `{name}`: {what}"));
    if DType::from_u8(record.dtype) != Some(dtype) {
        return Err(at(format!(
            "dtype code {} differs from the file's {}",
            record.dtype,
            dtype.name()
        )));
    }
    let layout = Layout::from_u8(record.layout)
        .ok_or_else(|| at(format!("unknown layout code {}", record.layout)))?;
    let rank = record.rank as usize;
    if !(1..=4).contains(&rank) || record.shape[rank..].iter().any(|&d| d != 0) {
        return Err(at(format!("bad rank {rank}")));
    }
    let shape = record.shape[..rank]
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| at("dimension too large".into())))
        .collect::<Result<Vec<_>>>()?;
    if record.reserved0 != 0 || record.reserved1 != 0 {
        return Err(at("reserved fields are set".into()));
    }
    let align_log2 = u32::from(record.align_log2);
    if !(6..=21).contains(&align_log2) {
        return Err(at(format!("alignment 2^{align_log2} is out of range")));
    }
    let start =
        align_up(previous_end, 1 << align_log2).ok_or_else(|| at("offset overflows".into()))?;
    if record.offset != start {
        return Err(at(format!(
            "data at offset {}, expected {start} (tensors are stored in order, aligned, without gaps)",
            record.offset
        )));
    }
    let end = start
        .checked_add(record.nbytes)
        .filter(|&end| end <= data_end)
        .ok_or_else(|| at("data runs past the end of the file".into()))?;
    Ok(TensorEntry {
        name,
        shape,
        dtype,
        layout,
        bytes: to_usize(start)?..to_usize(end)?,
        checksum: record.checksum,
    })
}

fn checked_end(what: &str, offset: u64, len: u64) -> Result<u64> {
    offset
        .checked_add(len)
        .ok_or_else(|| bad(format!("{what}: offset + length overflows")))
}

fn to_usize(v: u64) -> Result<usize> {
    usize::try_from(v).map_err(|_| bad("offset does not fit this machine's address space"))
}

fn slice(bytes: &[u8], start: u64, end: u64) -> Result<&[u8]> {
    bytes
        .get(to_usize(start)?..to_usize(end)?)
        .ok_or_else(|| bad("region out of bounds"))
}

fn is_zero(bytes: &[u8]) -> bool {
    bytes.iter().all(|&b| b == 0)
}

/// Checks every tensor's checksum, and that the padding between tensors is
/// zero; the error names the first corrupt tensor.
pub fn verify_checksums(bytes: &[u8], layout: &PackedLayout) -> Result<()> {
    let mut previous_end = layout.header.data_offset as usize;
    for tensor in &layout.tensors {
        let padding = bytes
            .get(previous_end..tensor.bytes.start)
            .unwrap_or_default();
        if !is_zero(padding) {
            return Err(Error::new(
                ErrorKind::Checksum,
                format!(
                    "the padding before tensor `{}` is not zero (corrupt file)",
                    tensor.name
                ),
            ));
        }
        previous_end = tensor.bytes.end;
        let data = bytes
            .get(tensor.bytes.clone())
            .ok_or_else(|| bad(format!("tensor `{}` out of bounds", tensor.name)))?;
        if xxh3_64(data) != tensor.checksum {
            return Err(Error::new(
                ErrorKind::Checksum,
                format!("tensor `{}` is corrupt (checksum mismatch)", tensor.name),
            ));
        }
    }
    if !is_zero(bytes.get(previous_end..).unwrap_or_default()) {
        return Err(Error::new(
            ErrorKind::Checksum,
            "the padding after the last tensor is not zero (corrupt file)",
        ));
    }
    Ok(())
}
