//! The dataset side: a Parquet round trip of synthetic logs; scoring a
//! table equals scoring the same requests through the API, whatever the
//! batch size (requests spanning batches) and thread count; bad rows are
//! reported by row and field and the rest of their request is scored.

use std::sync::Arc;

use mmoe::request::{OwnedFeature, OwnedRequest};
use mmoe::{Config, DType, Model, Scores, Session};

use super::score::score_table;
use super::synth::{synthesize, SynthOptions};
use super::table::{read_all, schema, Chunk, FeatureColumn, TableReader, TableWriter};

/// The integration tests' small config (a model of every expert type).
const SMALL_CONFIG: &str = include_str!("../../../../tests/common/small_config.json");

/// The small model, packed in a temporary folder (kept while it lives).
struct Packed {
    _dir: test_support::TempDir,
    path: std::path::PathBuf,
}

fn small_model() -> Packed {
    let config = small_config();
    let source = mmoe::demo::synthetic_tensors(&config, 3).expect("synthetic tensors");
    let dir = test_support::tempdir().expect("temp dir");
    let path = dir.path().join("model.mmoe");
    mmoe::format::writer::pack(&config, &source, DType::F16, &path, &mut |_, _| {}).expect("pack");
    Packed { _dir: dir, path }
}

fn small_config() -> Config {
    Config::parse(SMALL_CONFIG).unwrap()
}

/// Small synthetic logs for `config` at `path`, deterministic by `seed`.
fn synth_to(path: &std::path::Path, config: &Config, rows: usize, seed: u64) {
    let options = SynthOptions {
        rows,
        seed,
        days: 4,
        users: 300,
        ads: 500,
        ..SynthOptions::default()
    };
    let summary = synthesize(config, &options, path, &mut |_| {}).unwrap();
    assert_eq!(summary.rows, rows);
}

fn synth(dir: &std::path::Path, config: &Config, rows: usize) -> std::path::PathBuf {
    let path = dir.join("synth.parquet");
    synth_to(&path, config, rows, 5);
    path
}

/// Bitwise equality (missing values are NaN).
fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

fn same_chunks(a: &Chunk, b: &Chunk) -> bool {
    a.request_id == b.request_id
        && a.day == b.day
        && a.view
            .iter()
            .map(|&v| &a.view_names[v as usize])
            .eq(b.view.iter().map(|&v| &b.view_names[v as usize]))
        && a.labels == b.labels
        && a.features.len() == b.features.len()
        && a.features
            .iter()
            .zip(&b.features)
            .all(|((na, ca), (nb, cb))| {
                na == nb
                    && match (ca, cb) {
                        (
                            FeatureColumn::Dense { values: x, .. },
                            FeatureColumn::Dense { values: y, .. },
                        ) => same_bits(x, y),
                        (x, y) => x == y,
                    }
            })
}

#[test]
fn parquet_round_trip_keeps_every_value() {
    let dir = test_support::tempdir().unwrap();
    let config = small_config();
    let path = synth(dir.path(), &config, 5000);
    let first = read_all(&path, &config).unwrap();
    assert_eq!(first.rows(), 5000);
    // Request-level features are shared by a request's rows; some candidate
    // values are missing (the input allows it).
    let FeatureColumn::Dense { values, .. } = &first.features[1].1 else {
        panic!()
    };
    assert!(values.iter().any(|v| v.is_nan()));
    let again = dir.path().join("again.parquet");
    let mut writer = TableWriter::create(&again, schema(&config, true, &[])).unwrap();
    writer.write(&first).unwrap();
    writer.finish().unwrap();
    let second = read_all(&again, &config).unwrap();
    assert!(same_chunks(&first, &second));
    // The same seed gives the same file; another seed another one.
    let other = dir.path().join("other.parquet");
    synth_to(&other, &config, 5000, 5);
    assert!(same_chunks(&first, &read_all(&other, &config).unwrap()));
    synth_to(&other, &config, 5000, 6);
    assert!(!same_chunks(&first, &read_all(&other, &config).unwrap()));
}

/// The request of rows `rows` (all of one request) of `chunk`.
fn request_of(config: &Config, chunk: &Chunk, rows: &[usize]) -> OwnedRequest {
    let features = config
        .inputs
        .iter()
        .zip(&chunk.features)
        .map(|(input, (_, column))| {
            let rows: &[usize] = if input.scope == mmoe::config::Scope::Request {
                &rows[..1]
            } else {
                rows
            };
            match column {
                FeatureColumn::Dense { dim, values } => OwnedFeature::Dense(
                    rows.iter()
                        .flat_map(|&r| values[r * dim..(r + 1) * dim].to_vec())
                        .collect(),
                ),
                FeatureColumn::Sparse { offsets, ids } => {
                    let mut out = OwnedFeature::Sparse {
                        ids: Vec::new(),
                        offsets: vec![0],
                    };
                    if let OwnedFeature::Sparse { ids: i, offsets: o } = &mut out {
                        for &r in rows {
                            i.extend_from_slice(&ids[offsets[r] as usize..offsets[r + 1] as usize]);
                            o.push(i.len() as u32);
                        }
                    }
                    out
                }
            }
        })
        .collect();
    OwnedRequest {
        candidates: rows.len(),
        features,
    }
}

fn api_logits(model: &Arc<Model>, request: &OwnedRequest) -> Vec<f32> {
    let mut session = Session::new(model.clone());
    let mut out = vec![0.0; request.candidates * model.num_tasks()];
    session
        .score(
            &request.as_request(),
            &mut Scores {
                logits: Some(&mut out),
                probabilities: None,
            },
        )
        .unwrap();
    out
}

/// Scores the table at `path` in batches of `batch_rows` with `threads`:
/// the whole table and its logits `[task][row]`.
fn score(
    model: &Arc<Model>,
    path: &std::path::Path,
    batch_rows: usize,
    threads: usize,
) -> (Chunk, Vec<Vec<Option<f32>>>, super::score::ScoreSummary) {
    let mut reader = TableReader::open(path, model.config(), batch_rows).unwrap();
    let mut all = Chunk::default();
    let mut logits: Vec<Vec<Option<f32>>> = vec![Vec::new(); model.num_tasks()];
    let summary = score_table(
        model,
        &mut reader,
        threads,
        &mut |chunk, out| {
            all.append(chunk)?;
            for (column, values) in logits.iter_mut().zip(out) {
                column.extend(values);
            }
            Ok(())
        },
        &mut |_| {},
    )
    .unwrap();
    (all, logits, summary)
}

fn requests(chunk: &Chunk) -> Vec<Vec<usize>> {
    let mut out: Vec<Vec<usize>> = Vec::new();
    for r in 0..chunk.rows() {
        match out.last_mut() {
            Some(rows) if chunk.request_id[rows[0]] == chunk.request_id[r] => rows.push(r),
            _ => out.push(vec![r]),
        }
    }
    out
}

#[test]
fn scoring_a_table_equals_scoring_its_requests_through_the_api() {
    let dir = test_support::tempdir().unwrap();
    let config = small_config();
    let path = synth(dir.path(), &config, 3000);
    let packed = small_model();
    let model = Model::open(&packed.path, &Default::default()).unwrap();
    let (chunk, logits, summary) = score(&model, &path, 65_536, 1);
    assert_eq!(
        (summary.rows, summary.scored_rows, summary.bad_row_count),
        (3000, 3000, 0)
    );
    let tasks = model.num_tasks();
    let groups = requests(&chunk);
    assert_eq!(summary.requests, groups.len());
    for rows in &groups {
        let expected = api_logits(&model, &request_of(&config, &chunk, rows));
        for (j, &r) in rows.iter().enumerate() {
            for t in 0..tasks {
                assert_eq!(
                    logits[t][r],
                    Some(expected[j * tasks + t]),
                    "row {r} task {t}"
                );
            }
        }
    }
    // Small batches (requests spanning them) and several threads: the same.
    for (batch, threads) in [(97, 1), (1000, 3), (1, 2)] {
        let (other_chunk, other, s) = score(&model, &path, batch, threads);
        assert!(same_chunks(&chunk, &other_chunk), "batch {batch}");
        assert_eq!(other, logits, "batch {batch}, {threads} threads");
        assert_eq!(s.requests, groups.len());
    }
}

#[test]
fn bad_rows_are_reported_by_row_and_field_and_the_rest_scored() {
    let dir = test_support::tempdir().unwrap();
    let config = small_config();
    let path = synth(dir.path(), &config, 600);
    let mut chunk = read_all(&path, &config).unwrap();
    let groups = requests(&chunk);
    let big: Vec<&Vec<usize>> = groups.iter().filter(|g| g.len() >= 4).take(2).collect();
    let (first, second) = (big[0].clone(), big[1].clone());
    // Input 0 (`u`, request scope, no missing values): a NaN in one row of
    // the first request, a different value in one row of the second.
    let nan_row = first[2];
    let differ_row = second[1];
    if let FeatureColumn::Dense { dim, values } = &mut chunk.features[0].1 {
        values[nan_row * *dim] = f32::NAN;
        values[differ_row * *dim + 1] += 1.0;
    }
    let bad_path = dir.path().join("bad.parquet");
    let mut writer = TableWriter::create(&bad_path, schema(&config, true, &[])).unwrap();
    writer.write(&chunk).unwrap();
    writer.finish().unwrap();
    let packed = small_model();
    let model = Model::open(&packed.path, &Default::default()).unwrap();
    let (_, logits, summary) = score(&model, &bad_path, 100, 2);
    assert_eq!(summary.bad_row_count, 2);
    let rows: Vec<(usize, &str)> = summary
        .bad_rows
        .iter()
        .map(|b| (b.row, b.field.as_str()))
        .collect();
    assert_eq!(
        rows,
        vec![
            (nan_row.min(differ_row), "u"),
            (nan_row.max(differ_row), "u")
        ]
    );
    let nan_report = summary.bad_rows.iter().find(|b| b.row == nan_row).unwrap();
    assert!(
        nan_report.reason.contains("element 0 is NaN"),
        "{}",
        nan_report.reason
    );
    let differ_report = summary
        .bad_rows
        .iter()
        .find(|b| b.row == differ_row)
        .unwrap();
    assert!(
        differ_report
            .reason
            .contains("differ from the request's first row"),
        "{}",
        differ_report.reason
    );
    assert_eq!(summary.scored_rows, 598);
    let tasks = model.num_tasks();
    for (group, bad) in [(&first, nan_row), (&second, differ_row)] {
        assert!(logits.iter().all(|t| t[bad].is_none()));
        let good: Vec<usize> = group.iter().copied().filter(|&r| r != bad).collect();
        let expected = api_logits(&model, &request_of(&config, &chunk, &good));
        for (j, &r) in good.iter().enumerate() {
            for t in 0..tasks {
                assert_eq!(logits[t][r], Some(expected[j * tasks + t]));
            }
        }
    }
}

#[test]
fn a_table_without_a_models_input_is_refused_naming_it() {
    let dir = test_support::tempdir().unwrap();
    let config = small_config();
    let path = synth(dir.path(), &config, 100);
    let bench = Config::parse(mmoe::demo::BENCH_MODEL_JSON).unwrap();
    let err = TableReader::open(&path, &bench, 100)
        .err()
        .expect("refused");
    assert!(
        err.message().contains("no column for input `user_dense`"),
        "{err}"
    );
}

/// `src` rewritten to `dst` with column `name` replaced by `edit(old)`.
fn rewrite_column(
    src: &std::path::Path,
    dst: &std::path::Path,
    name: &str,
    edit: impl Fn(&arrow_array::ArrayRef) -> arrow_array::ArrayRef,
) {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(src).unwrap())
        .unwrap()
        .with_batch_size(1 << 20) // one batch: `edit` sees every row
        .build()
        .unwrap();
    let mut writer = None;
    for batch in reader {
        let batch = batch.unwrap();
        let schema = batch.schema();
        let at = schema.index_of(name).unwrap();
        let mut columns = batch.columns().to_vec();
        columns[at] = edit(&columns[at]);
        let fields: Vec<arrow_schema::Field> = schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| match i == at {
                true => arrow_schema::Field::new(f.name(), columns[i].data_type().clone(), true),
                false => f.as_ref().clone(),
            })
            .collect();
        let schema = Arc::new(arrow_schema::Schema::new(fields));
        let batch = arrow_array::RecordBatch::try_new(schema.clone(), columns).unwrap();
        writer
            .get_or_insert_with(|| {
                parquet::arrow::ArrowWriter::try_new(
                    std::fs::File::create(dst).unwrap(),
                    schema,
                    None,
                )
                .unwrap()
            })
            .write(&batch)
            .unwrap();
    }
    writer.unwrap().close().unwrap();
}

/// Nulls in `day`, in `view` and among a sparse input's ids are refused
/// naming the column (they were read as day 0, view "unknown" and whatever
/// id the buffer held, and written back so), and a `view` column of more
/// distinct values than a u16 index holds is refused (its indices wrapped).
#[test]
fn nulls_and_too_many_views_are_refused_naming_the_column() {
    use arrow_array::builder::{ListBuilder, UInt64Builder};
    use arrow_array::cast::AsArray;
    use arrow_array::{Array, ArrayRef, Int32Array, StringArray};
    let dir = test_support::tempdir().unwrap();
    let config = small_config();
    let path = synth(dir.path(), &config, 1100);
    let edited = dir.path().join("edited.parquet");
    let refused = |column: &str, edit: &dyn Fn(&ArrayRef) -> ArrayRef, message: &str| {
        rewrite_column(&path, &edited, column, edit);
        let err = read_all(&edited, &config)
            .err()
            .unwrap_or_else(|| panic!("{column}: {message}: not refused"));
        assert!(err.message().contains(message), "{column}: {err}");
    };
    refused(
        "day",
        &|old| {
            let days = old.as_any().downcast_ref::<Int32Array>().unwrap();
            let mut values: Vec<Option<i32>> = days.iter().collect();
            values[7] = None;
            Arc::new(Int32Array::from(values))
        },
        "column `day` has nulls",
    );
    refused(
        "view",
        &|old| {
            let views = old.as_any().downcast_ref::<StringArray>().unwrap();
            let mut values: Vec<Option<&str>> = views.iter().collect();
            values[3] = None;
            Arc::new(StringArray::from(values))
        },
        "column `view` has nulls",
    );
    refused(
        "view",
        &|old| {
            let names: Vec<String> = (0..old.len()).map(|i| format!("v{}", i % 1025)).collect();
            Arc::new(StringArray::from(names))
        },
        "column `view` has more than 1024 distinct values",
    );
    refused(
        "as",
        &|old| {
            let lists = old.as_list::<i32>();
            let mut builder = ListBuilder::new(UInt64Builder::new());
            let mut nulled = false;
            for list in lists.iter() {
                let list = list.unwrap();
                let ids = list.as_primitive::<arrow_array::types::UInt64Type>();
                for id in ids.values() {
                    // The first id of the table becomes a null.
                    builder.values().append_option(nulled.then_some(*id));
                    nulled = true;
                }
                builder.append(true);
            }
            Arc::new(builder.finish())
        },
        "column `as` has nulls",
    );
}
