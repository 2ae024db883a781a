//! Impression tables in memory ([`Chunk`]: columns by name, rows of one
//! request contiguous) and their Parquet form (docs/DATASETS.md):
//!
//! | column | Arrow type | |
//! |---|---|---|
//! | `request_id` | UInt64 | rows of one request are contiguous |
//! | `day` | Int32 | day index |
//! | `view` | Utf8 | `related_pins` or `search` |
//! | `<input>` (dense) | FixedSizeList<Float32>[dim] | NaN: missing |
//! | `<input>` (sparse) | List<UInt64> | the bag's ids |
//! | `label.<task>` | UInt8 | 0 or 1 |
//! | `logit.<model>.<task>` | Float32, nullable | added by `score-dataset` |

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{FixedSizeListBuilder, Float32Builder, ListBuilder, UInt64Builder};
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Int32Type, UInt64Type, UInt8Type};
use arrow_array::{
    Array, ArrayRef, Float32Array, Int32Array, RecordBatch, StringArray, UInt64Array, UInt8Array,
};
use arrow_schema::{DataType, Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

use mmoe::config::{Config, InputKind};
use mmoe::{Error, ErrorKind, Result};

/// The view types of the synthetic logs (any string is read back).
pub const VIEWS: [&str; 2] = ["related_pins", "search"];

/// One input's values for every row of a chunk.
#[derive(Clone, Debug, PartialEq)]
pub enum FeatureColumn {
    /// `rows × dim` values, row-major; NaN marks a missing value.
    Dense { dim: usize, values: Vec<f32> },
    /// CSR: row r's bag is `ids[offsets[r]..offsets[r + 1]]`; `offsets[0] = 0`.
    Sparse { offsets: Vec<u32>, ids: Vec<u64> },
}

/// Rows of an impression table: the model's inputs, in config order, and
/// what else the file holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Chunk {
    pub request_id: Vec<u64>,
    pub day: Vec<i32>,
    /// Index into `view_names`.
    pub view: Vec<u16>,
    pub view_names: Vec<String>,
    /// `(task, 0/1 per row)`.
    pub labels: Vec<(String, Vec<u8>)>,
    /// `(input name, values)`, in the config's input order.
    pub features: Vec<(String, FeatureColumn)>,
    /// Float columns carried along (logits): `(name, value per row)`.
    pub floats: Vec<(String, Vec<Option<f32>>)>,
}

/// A day range `A..B` (days A to B−1) given to `flag`.
pub fn parse_day_range(
    flag: &str,
    text: &str,
) -> std::result::Result<std::ops::Range<i32>, String> {
    text.split_once("..")
        .and_then(|(a, b)| Some(a.trim().parse().ok()?..b.trim().parse().ok()?))
        .filter(|r: &std::ops::Range<i32>| r.start < r.end)
        .ok_or_else(|| format!("{flag} {text}: expected A..B with A < B (days A to B−1)"))
}

fn data_error(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::Argument, message)
}

fn parquet_error(path: &Path, e: impl std::fmt::Display) -> Error {
    data_error(format!("{}: {e}", path.display()))
}

impl Chunk {
    /// No rows, with an empty column for every input and task of `config`.
    pub fn empty(config: &Config, view_names: Vec<String>) -> Chunk {
        Chunk {
            view_names,
            labels: config
                .tasks
                .iter()
                .map(|t| (t.name.clone(), Vec::new()))
                .collect(),
            features: config
                .inputs
                .iter()
                .map(|i| {
                    let column = match i.kind {
                        InputKind::Dense => FeatureColumn::Dense {
                            dim: i.dim,
                            values: Vec::new(),
                        },
                        InputKind::Sparse => FeatureColumn::Sparse {
                            offsets: vec![0],
                            ids: Vec::new(),
                        },
                    };
                    (i.name.clone(), column)
                })
                .collect(),
            ..Chunk::default()
        }
    }

    pub fn rows(&self) -> usize {
        self.request_id.len()
    }

    pub fn labels_of(&self, task: &str) -> Option<&[u8]> {
        self.labels
            .iter()
            .find(|(t, _)| t == task)
            .map(|(_, v)| v.as_slice())
    }

    /// Moves rows `at..` into a new chunk (the tail of a request that may
    /// continue in the next batch).
    pub fn split_off(&mut self, at: usize) -> Chunk {
        let mut tail = Chunk {
            request_id: self.request_id.split_off(at),
            day: self.day.split_off(at),
            view: self.view.split_off(at),
            view_names: self.view_names.clone(),
            labels: self
                .labels
                .iter_mut()
                .map(|(t, v)| (t.clone(), v.split_off(at)))
                .collect(),
            features: Vec::with_capacity(self.features.len()),
            floats: self
                .floats
                .iter_mut()
                .map(|(n, v)| (n.clone(), v.split_off(at)))
                .collect(),
        };
        for (name, column) in &mut self.features {
            let moved = match column {
                FeatureColumn::Dense { dim, values } => FeatureColumn::Dense {
                    dim: *dim,
                    values: values.split_off(at * *dim),
                },
                FeatureColumn::Sparse { offsets, ids } => {
                    let start = offsets[at];
                    let tail_ids = ids.split_off(start as usize);
                    let tail_offsets = offsets[at..].iter().map(|o| o - start).collect();
                    offsets.truncate(at + 1);
                    FeatureColumn::Sparse {
                        offsets: tail_offsets,
                        ids: tail_ids,
                    }
                }
            };
            tail.features.push((name.clone(), moved));
        }
        tail
    }

    /// Appends `other`'s rows (same columns).
    pub fn append(&mut self, mut other: Chunk) -> Result<()> {
        if self.rows() == 0 && self.features.is_empty() {
            *self = other;
            return Ok(());
        }
        let views: Vec<u16> = other
            .view
            .iter()
            .map(|&v| intern(&mut self.view_names, &other.view_names[v as usize]))
            .collect::<std::result::Result<_, _>>()
            .map_err(data_error)?;
        self.request_id.append(&mut other.request_id);
        self.day.append(&mut other.day);
        self.view.extend(views);
        for ((name, a), (_, b)) in self.labels.iter_mut().zip(&mut other.labels) {
            if a.len() + b.len() != self.request_id.len() {
                return Err(data_error(format!(
                    "label column `{name}` differs between batches"
                )));
            }
            a.append(b);
        }
        for ((_, a), (_, b)) in self.floats.iter_mut().zip(&mut other.floats) {
            a.append(b);
        }
        for ((name, a), (_, b)) in self.features.iter_mut().zip(other.features) {
            match (a, b) {
                (
                    FeatureColumn::Dense { values, .. },
                    FeatureColumn::Dense { values: more, .. },
                ) => values.extend(more),
                (
                    FeatureColumn::Sparse { offsets, ids },
                    FeatureColumn::Sparse {
                        offsets: more_offsets,
                        ids: more_ids,
                    },
                ) => {
                    let base = *offsets.last().unwrap_or(&0);
                    offsets.extend(more_offsets[1..].iter().map(|o| o + base));
                    ids.extend(more_ids);
                }
                _ => {
                    return Err(data_error(format!(
                        "column `{name}` changes kind between batches"
                    )))
                }
            }
        }
        Ok(())
    }
}

/// The most distinct values of the `view` column (surfaces such as home or
/// search: a handful); each row holds its view as a u16 index.
pub(crate) const MAX_VIEWS: usize = 1024;

/// The index of view `name` in `names`, added if new; an error past
/// [`MAX_VIEWS`] views.
pub(crate) fn intern(names: &mut Vec<String>, name: &str) -> std::result::Result<u16, String> {
    if let Some(i) = names.iter().position(|n| n == name) {
        return Ok(i as u16);
    }
    if names.len() >= MAX_VIEWS {
        return Err(format!(
            "column `view` has more than {MAX_VIEWS} distinct values (views are surfaces such as home or search)"
        ));
    }
    names.push(name.to_string());
    Ok((names.len() - 1) as u16)
}

/// The Arrow schema of a table for `config` (labels for every task when
/// `labels`), with the given extra float columns.
pub fn schema(config: &Config, labels: bool, floats: &[String]) -> Schema {
    let mut fields = vec![
        Field::new("request_id", DataType::UInt64, false),
        Field::new("day", DataType::Int32, false),
        Field::new("view", DataType::Utf8, false),
    ];
    for input in &config.inputs {
        fields.push(match input.kind {
            InputKind::Dense => Field::new(
                &input.name,
                DataType::FixedSizeList(
                    Arc::new(Field::new("item", DataType::Float32, false)),
                    input.dim as i32,
                ),
                false,
            ),
            InputKind::Sparse => Field::new(
                &input.name,
                DataType::List(Arc::new(Field::new("item", DataType::UInt64, false))),
                false,
            ),
        });
    }
    if labels {
        for task in &config.tasks {
            fields.push(Field::new(
                format!("label.{}", task.name),
                DataType::UInt8,
                false,
            ));
        }
    }
    for name in floats {
        fields.push(Field::new(name, DataType::Float32, true));
    }
    Schema::new(fields)
}

fn to_batch(chunk: &Chunk, schema: &Arc<Schema>) -> Result<RecordBatch> {
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from(chunk.request_id.clone())),
        Arc::new(Int32Array::from(chunk.day.clone())),
        Arc::new(StringArray::from_iter_values(
            chunk
                .view
                .iter()
                .map(|&v| chunk.view_names[v as usize].as_str()),
        )),
    ];
    for (_, column) in &chunk.features {
        columns.push(match column {
            FeatureColumn::Dense { dim, values } => {
                let mut builder = FixedSizeListBuilder::with_capacity(
                    Float32Builder::with_capacity(values.len()),
                    *dim as i32,
                    chunk.rows(),
                )
                .with_field(Arc::new(Field::new("item", DataType::Float32, false)));
                for row in values.chunks_exact((*dim).max(1)).take(chunk.rows()) {
                    builder.values().append_slice(row);
                    builder.append(true);
                }
                Arc::new(builder.finish())
            }
            FeatureColumn::Sparse { offsets, ids } => {
                let mut builder = ListBuilder::with_capacity(
                    UInt64Builder::with_capacity(ids.len()),
                    chunk.rows(),
                )
                .with_field(Arc::new(Field::new("item", DataType::UInt64, false)));
                for w in offsets.windows(2) {
                    builder
                        .values()
                        .append_slice(&ids[w[0] as usize..w[1] as usize]);
                    builder.append(true);
                }
                Arc::new(builder.finish())
            }
        });
    }
    for (_, labels) in &chunk.labels {
        columns.push(Arc::new(UInt8Array::from(labels.clone())));
    }
    for (_, values) in &chunk.floats {
        columns.push(Arc::new(Float32Array::from(values.clone())));
    }
    RecordBatch::try_new(schema.clone(), columns)
        .map_err(|e| data_error(format!("building a record batch: {e}")))
}

/// Writes chunks to a Parquet file (Snappy).
pub struct TableWriter {
    writer: ArrowWriter<File>,
    schema: Arc<Schema>,
    path: std::path::PathBuf,
}

impl TableWriter {
    pub fn create(path: &Path, schema: Schema) -> Result<TableWriter> {
        let file = File::create(path).map_err(|e| Error::io("cannot create", path, e))?;
        let schema = Arc::new(schema);
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .set_max_row_group_row_count(Some(65_536))
            .build();
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(props))
            .map_err(|e| parquet_error(path, e))?;
        Ok(TableWriter {
            writer,
            schema,
            path: path.to_path_buf(),
        })
    }

    pub fn write(&mut self, chunk: &Chunk) -> Result<()> {
        let batch = to_batch(chunk, &self.schema)?;
        self.writer
            .write(&batch)
            .map_err(|e| parquet_error(&self.path, e))
    }

    pub fn finish(self) -> Result<()> {
        self.writer
            .close()
            .map(|_| ())
            .map_err(|e| parquet_error(&self.path, e))
    }
}

/// Reads a Parquet impression table in batches of about `batch_rows`,
/// checking its columns against `config`.
pub struct TableReader {
    batches: parquet::arrow::arrow_reader::ParquetRecordBatchReader,
    config: Config,
    path: std::path::PathBuf,
    pub total_rows: usize,
    /// Float columns to carry (by name), e.g. teacher logits.
    pub float_columns: Vec<String>,
    pub has_labels: bool,
}

impl TableReader {
    pub fn open(path: &Path, config: &Config, batch_rows: usize) -> Result<TableReader> {
        let file = File::open(path).map_err(|e| Error::io("cannot open", path, e))?;
        let builder =
            ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| parquet_error(path, e))?;
        let total_rows = builder.metadata().file_metadata().num_rows().max(0) as usize;
        let schema = builder.schema().clone();
        for required in ["request_id"] {
            if schema.field_with_name(required).is_err() {
                return Err(data_error(format!(
                    "{}: no `{required}` column",
                    path.display()
                )));
            }
        }
        for input in &config.inputs {
            let field = schema.field_with_name(&input.name).map_err(|_| {
                data_error(format!(
                    "{}: no column for input `{}` of model `{}`",
                    path.display(),
                    input.name,
                    config.name
                ))
            })?;
            let ok = match (input.kind, field.data_type()) {
                (InputKind::Dense, DataType::FixedSizeList(item, n)) => {
                    *n as usize == input.dim && item.data_type() == &DataType::Float32
                }
                (InputKind::Sparse, DataType::List(item)) => item.data_type() == &DataType::UInt64,
                _ => false,
            };
            if !ok {
                return Err(data_error(format!(
                    "{}: column `{}` is {}, but input `{}` needs {}",
                    path.display(),
                    input.name,
                    field.data_type(),
                    input.name,
                    match input.kind {
                        InputKind::Dense => format!("FixedSizeList<Float32>[{}]", input.dim),
                        InputKind::Sparse => "List<UInt64>".into(),
                    }
                )));
            }
        }
        let has_labels = config
            .tasks
            .iter()
            .all(|t| schema.field_with_name(&format!("label.{}", t.name)).is_ok());
        let float_columns = schema
            .fields()
            .iter()
            .filter(|f| f.data_type() == &DataType::Float32 && f.name().starts_with("logit."))
            .map(|f| f.name().clone())
            .collect();
        let batches = builder
            .with_batch_size(batch_rows.max(1))
            .build()
            .map_err(|e| parquet_error(path, e))?;
        Ok(TableReader {
            batches,
            config: config.clone(),
            path: path.to_path_buf(),
            total_rows,
            float_columns,
            has_labels,
        })
    }

    /// The next batch of rows, or `None` at the end.
    pub fn next_chunk(&mut self) -> Result<Option<Chunk>> {
        let Some(batch) = self.batches.next() else {
            return Ok(None);
        };
        let batch = batch.map_err(|e| parquet_error(&self.path, e))?;
        self.convert(&batch).map(Some)
    }

    fn convert(&self, batch: &RecordBatch) -> Result<Chunk> {
        let path = &self.path;
        let column = |name: &str| {
            batch
                .column_by_name(name)
                .ok_or_else(|| data_error(format!("{}: no `{name}` column", path.display())))
        };
        let no_nulls = |name: &str, array: &dyn Array| {
            if array.null_count() > 0 {
                Err(data_error(format!(
                    "{}: column `{name}` has nulls",
                    path.display()
                )))
            } else {
                Ok(())
            }
        };
        let rows = batch.num_rows();
        let ids = column("request_id")?;
        no_nulls("request_id", ids.as_ref())?;
        let request_id = ids
            .as_primitive_opt::<UInt64Type>()
            .ok_or_else(|| data_error(format!("{}: `request_id` is not UInt64", path.display())))?
            .values()
            .to_vec();
        let day = match batch.column_by_name("day") {
            Some(a) => {
                no_nulls("day", a.as_ref())?;
                a.as_primitive_opt::<Int32Type>()
                    .ok_or_else(|| data_error(format!("{}: `day` is not Int32", path.display())))?
                    .values()
                    .to_vec()
            }
            None => vec![0; rows],
        };
        let mut view_names = Vec::new();
        let view = match batch.column_by_name("view") {
            Some(a) => {
                no_nulls("view", a.as_ref())?;
                let strings = a
                    .as_string_opt::<i32>()
                    .ok_or_else(|| data_error(format!("{}: `view` is not Utf8", path.display())))?;
                strings
                    .iter()
                    .map(|v| {
                        intern(&mut view_names, v.unwrap_or_default())
                            .map_err(|e| format!("{}: {e}", path.display()))
                    })
                    .collect::<std::result::Result<_, _>>()
                    .map_err(data_error)?
            }
            None => {
                view_names.push("all".into());
                vec![0; rows]
            }
        };
        let mut features = Vec::with_capacity(self.config.inputs.len());
        for input in &self.config.inputs {
            let array = column(&input.name)?;
            no_nulls(&input.name, array.as_ref())?;
            let feature = match input.kind {
                InputKind::Dense => {
                    let list = array.as_fixed_size_list();
                    let values = list.values().as_primitive::<Float32Type>();
                    no_nulls(&input.name, values)?;
                    let start = list.offset() * input.dim;
                    FeatureColumn::Dense {
                        dim: input.dim,
                        values: values.values()[start..start + rows * input.dim].to_vec(),
                    }
                }
                InputKind::Sparse => {
                    let list = array.as_list::<i32>();
                    let values = list.values().as_primitive::<UInt64Type>();
                    no_nulls(&input.name, values)?;
                    let offsets = list.value_offsets();
                    let base = offsets[0];
                    let ids = values.values()[base as usize..offsets[rows] as usize].to_vec();
                    FeatureColumn::Sparse {
                        offsets: offsets.iter().map(|o| (o - base) as u32).collect(),
                        ids,
                    }
                }
            };
            features.push((input.name.clone(), feature));
        }
        let mut labels = Vec::new();
        if self.has_labels {
            for task in &self.config.tasks {
                let name = format!("label.{}", task.name);
                let array = column(&name)?;
                no_nulls(&name, array.as_ref())?;
                let values = array.as_primitive_opt::<UInt8Type>().ok_or_else(|| {
                    data_error(format!("{}: `{name}` is not UInt8", path.display()))
                })?;
                labels.push((task.name.clone(), values.values().to_vec()));
            }
        }
        let mut floats = Vec::new();
        for name in &self.float_columns {
            let array = column(name)?;
            floats.push((
                name.clone(),
                array.as_primitive::<Float32Type>().iter().collect(),
            ));
        }
        Ok(Chunk {
            request_id,
            day,
            view,
            view_names,
            labels,
            features,
            floats,
        })
    }
}

/// Reads a whole table into one chunk (tests).
#[cfg(test)]
pub fn read_all(path: &Path, config: &Config) -> Result<Chunk> {
    let mut reader = TableReader::open(path, config, 65_536)?;
    let mut all = Chunk::default();
    while let Some(chunk) = reader.next_chunk()? {
        all.append(chunk)?;
    }
    Ok(all)
}
