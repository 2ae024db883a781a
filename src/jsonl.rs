//! Requests and answers as JSON lines (`mmoe score`):
//!
//! ```text
//! {"n": N,
//!  "dense":  {name: [dim floats] (request scope) | [[dim floats] x N] (candidate scope)},
//!  "sparse": {name: [[ids]] (request scope: one bag) | [[ids] x N] (candidate scope)}}
//! ```
//! `null` marks a missing dense value. An answer is
//! `{"logits": [[one per task] x N], "probabilities": [[...] x N]}`.

use serde_json::{Map, Value};

use crate::config::{Config, InputKind, Scope};
use crate::error::{Error, Result};
use crate::request::{OwnedFeature, OwnedRequest};

fn field_error(field: &str, message: impl std::fmt::Display) -> Error {
    Error::request(format!("field `{field}`: {message}"))
}

/// Parses one request line for a model with this config. Errors name the field.
pub fn parse_request(line: &str, config: &Config) -> Result<OwnedRequest> {
    let value: Value =
        serde_json::from_str(line).map_err(|e| Error::request(format!("not valid JSON: {e}")))?;
    let Value::Object(mut top) = value else {
        return Err(Error::request("a request must be a JSON object"));
    };
    let n = match top.remove("n") {
        Some(v) => v
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| field_error("n", format!("expected a candidate count, got {v}")))?,
        None => return Err(field_error("n", "missing")),
    };
    // Before anything is sized by it (the caller's outputs too).
    if n > crate::session::MAX_CANDIDATES {
        return Err(field_error(
            "n",
            format!(
                "{n} candidates, above the limit of {} per request",
                crate::session::MAX_CANDIDATES
            ),
        ));
    }
    let mut dense = take_object(&mut top, "dense")?;
    let mut sparse = take_object(&mut top, "sparse")?;
    if let Some(key) = top.keys().next() {
        return Err(field_error(
            key,
            "unknown field (expected n, dense, sparse)",
        ));
    }

    let mut features = Vec::with_capacity(config.inputs.len());
    for input in &config.inputs {
        let per_request = input.scope == Scope::Request;
        let feature = match input.kind {
            InputKind::Dense => {
                let field = format!("dense.{}", input.name);
                let value = dense
                    .remove(&input.name)
                    .ok_or_else(|| field_error(&field, "missing"))?;
                OwnedFeature::Dense(parse_dense(&field, value, per_request, n, input.dim)?)
            }
            InputKind::Sparse => {
                let field = format!("sparse.{}", input.name);
                let value = sparse
                    .remove(&input.name)
                    .ok_or_else(|| field_error(&field, "missing"))?;
                let (ids, offsets) = parse_bags(&field, value, if per_request { 1 } else { n })?;
                OwnedFeature::Sparse { ids, offsets }
            }
        };
        features.push(feature);
    }
    for (section, rest) in [("dense", &dense), ("sparse", &sparse)] {
        if let Some(name) = rest.keys().next() {
            let hint = match config.input_index(name) {
                Some(_) => "the input is of the other kind",
                None => "the model has no such input",
            };
            return Err(field_error(&format!("{section}.{name}"), hint));
        }
    }
    Ok(OwnedRequest {
        candidates: n,
        features,
    })
}

fn take_object(top: &mut Map<String, Value>, key: &str) -> Result<Map<String, Value>> {
    match top.remove(key) {
        None => Ok(Map::new()),
        Some(Value::Object(object)) => Ok(object),
        Some(_) => Err(field_error(key, "expected an object of inputs")),
    }
}

fn parse_dense(
    field: &str,
    value: Value,
    per_request: bool,
    n: usize,
    dim: usize,
) -> Result<Vec<f32>> {
    let rows: Vec<Value> = if per_request {
        vec![value]
    } else {
        let Value::Array(rows) = value else {
            return Err(field_error(
                field,
                format!("expected {n} lists of {dim} numbers"),
            ));
        };
        if rows.len() != n {
            return Err(field_error(
                field,
                format!("{} candidates, expected n = {n}", rows.len()),
            ));
        }
        rows
    };
    let mut values = Vec::with_capacity(rows.len() * dim);
    for (c, row) in rows.into_iter().enumerate() {
        let at = if per_request {
            field.to_string()
        } else {
            format!("{field}[{c}]")
        };
        let Value::Array(row) = row else {
            return Err(field_error(
                &at,
                format!("expected a list of {dim} numbers"),
            ));
        };
        if row.len() != dim {
            return Err(field_error(
                &at,
                format!("{} values, expected dim = {dim}", row.len()),
            ));
        }
        for (k, v) in row.iter().enumerate() {
            values.push(match v {
                Value::Null => f32::NAN,
                Value::Number(x) => match x.as_f64() {
                    // A finite number past f32's range would arrive as inf,
                    // read as missing: refused as written instead.
                    Some(x) if x.abs() <= f32::MAX as f64 => x as f32,
                    _ => {
                        return Err(field_error(
                            &format!("{at}[{k}]"),
                            format!("{x} is outside the range of a 32-bit float"),
                        ))
                    }
                },
                other => {
                    return Err(field_error(
                        &format!("{at}[{k}]"),
                        format!("expected a number or null, got {other}"),
                    ))
                }
            });
        }
    }
    Ok(values)
}

fn parse_bags(field: &str, value: Value, bags: usize) -> Result<(Vec<u64>, Vec<u32>)> {
    let Value::Array(list) = value else {
        return Err(field_error(
            field,
            format!("expected a list of {bags} bag(s) of ids"),
        ));
    };
    if list.len() != bags {
        return Err(field_error(
            field,
            format!("{} bags, expected {bags}", list.len()),
        ));
    }
    let mut ids = Vec::new();
    let mut offsets = vec![0u32];
    for (b, bag) in list.into_iter().enumerate() {
        let Value::Array(bag) = bag else {
            return Err(field_error(
                &format!("{field}[{b}]"),
                "expected a list of ids",
            ));
        };
        for (i, id) in bag.iter().enumerate() {
            let id = id.as_u64().ok_or_else(|| {
                field_error(
                    &format!("{field}[{b}][{i}]"),
                    format!("expected an id from 0 to 2^64-1, got {id}"),
                )
            })?;
            ids.push(id);
        }
        let end = u32::try_from(ids.len()).map_err(|_| field_error(field, "more than 2^32 ids"))?;
        offsets.push(end);
    }
    Ok((ids, offsets))
}

/// One answer line. Floats are written in their shortest exact f32 form.
pub fn format_answer(logits: &[f32], probabilities: &[f32], tasks: usize) -> String {
    #[derive(serde::Serialize)]
    struct Answer<'a> {
        logits: Vec<&'a [f32]>,
        probabilities: Vec<&'a [f32]>,
    }
    let answer = Answer {
        logits: logits.chunks(tasks.max(1)).collect(),
        probabilities: probabilities.chunks(tasks.max(1)).collect(),
    };
    serde_json::to_string(&answer).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

/// An error line, for a request that could not be scored.
pub fn format_error(line: usize, error: &Error) -> String {
    let mut answer = Map::new();
    answer.insert(
        "error".into(),
        Value::String(format!("line {line}: {error}")),
    );
    Value::Object(answer).to_string()
}
