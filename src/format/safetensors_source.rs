//! Reads a safetensors file as PyTorch writes it (`save_file(model.state_dict())`)
//! for the packer: F32, F16 and BF16 tensors, memory-mapped, converted to f32
//! chunk by chunk.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use memmap2::Mmap;
use safetensors::tensor::{Dtype, SafeTensors};

use super::writer::TensorSource;
use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SourceType {
    F32,
    F16,
    BF16,
}

impl SourceType {
    fn size(self) -> usize {
        match self {
            SourceType::F32 => 4,
            SourceType::F16 | SourceType::BF16 => 2,
        }
    }
}

struct Entry {
    dtype: SourceType,
    shape: Vec<usize>,
    /// Absolute byte range in the file.
    start: usize,
    end: usize,
}

/// A memory-mapped safetensors file.
pub struct SafetensorsSource {
    path: PathBuf,
    map: Mmap,
    entries: HashMap<String, Entry>,
}

impl SafetensorsSource {
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io("cannot open", path, e))?;
        crate::error::refuse_directory(&file, path)?;
        // SAFETY: the packer only reads the file; like every mmap reader it
        // relies on the file not being truncated while it runs (a concurrent
        // truncation could fault the process; that is the documented contract
        // of `mmoe pack`).
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io("cannot map", path, e))?;
        let (header_len, metadata) = SafeTensors::read_metadata(&map).map_err(|e| {
            Error::tensor(format!(
                "{}: not a valid safetensors file: {e}",
                path.display()
            ))
        })?;
        let data_start = 8 + header_len;
        let mut entries = HashMap::new();
        for (name, info) in metadata.tensors() {
            let dtype = match info.dtype {
                Dtype::F32 => SourceType::F32,
                Dtype::F16 => SourceType::F16,
                Dtype::BF16 => SourceType::BF16,
                other => {
                    return Err(Error::tensor(format!(
                    "{}: tensor `{name}` has dtype {other:?}; the packer reads F32, F16 and BF16",
                    path.display()
                )))
                }
            };
            let (begin, end) = info.data_offsets;
            // read_metadata checked that offsets cover the data and match the
            // shapes; check once more what this reader relies on.
            let numel: usize = info.shape.iter().product();
            if end - begin != numel * dtype.size() || data_start + end > map.len() {
                return Err(Error::tensor(format!(
                    "{}: tensor `{name}`: its byte range does not match its shape",
                    path.display()
                )));
            }
            entries.insert(
                name,
                Entry {
                    dtype,
                    shape: info.shape.clone(),
                    start: data_start + begin,
                    end: data_start + end,
                },
            );
        }
        Ok(SafetensorsSource {
            path: path.to_path_buf(),
            map,
            entries,
        })
    }

    /// Total bytes of tensor data, for progress reporting.
    pub fn data_bytes(&self) -> u64 {
        self.entries
            .values()
            .map(|e| (e.end - e.start) as u64)
            .sum()
    }
}

impl TensorSource for SafetensorsSource {
    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.entries.keys().cloned().collect();
        names.sort();
        names
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.entries.get(name).map(|e| e.shape.clone())
    }

    fn read(&self, name: &str, start: usize, out: &mut [f32]) -> Result<()> {
        let entry = self.entries.get(name).ok_or_else(|| {
            Error::tensor(format!(
                "missing tensor `{name}` in {}",
                self.path.display()
            ))
        })?;
        let size = entry.dtype.size();
        let from = entry.start + start * size;
        let to = from + out.len() * size;
        if to > entry.end {
            return Err(Error::tensor(format!("tensor `{name}`: read past its end")));
        }
        let bytes = &self.map[from..to];
        match entry.dtype {
            SourceType::F32 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                    *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                }
            }
            SourceType::F16 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
                }
            }
            SourceType::BF16 => {
                for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                    *o = bf16::from_le_bytes([b[0], b[1]]).to_f32();
                }
            }
        }
        Ok(())
    }
}
