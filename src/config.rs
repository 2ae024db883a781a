//! The model config of `MODEL.md`: parsing and every rule of the contract.
//!
//! A config is parsed in two steps, so that a message can name the input,
//! expert or task at fault: the document into JSON values, then each list
//! entry into its typed form. [`Config::parse`] returns only configs that pass
//! [`Config::validate`]; everything downstream (plan, packer, loader) may rely
//! on the rules checked here.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// A validated model config.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Config {
    pub name: String,
    pub expert_dim: usize,
    pub inputs: Vec<Input>,
    pub experts: Vec<Expert>,
    pub tasks: Vec<Task>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputKind {
    Dense,
    Sparse,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// One value per request, shared by every candidate.
    Request,
    /// One value per candidate.
    Candidate,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transform {
    Log1p,
    Standardize,
    /// Listing `clip` is optional: a `clip` field alone turns clipping on.
    Clip,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Missing {
    /// A non-finite value is an invalid request (the default).
    Error,
    /// A non-finite value becomes 0 after the transforms.
    Zero,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    Sum,
    Mean,
}

/// One entry of `inputs`. Fields that belong to the other kind must be absent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub name: String,
    pub kind: InputKind,
    pub scope: Scope,
    pub dim: usize,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transform: Vec<Transform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip: Option<f32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<Missing>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pooling: Option<Pooling>,
}

impl Input {
    pub fn log1p(&self) -> bool {
        self.transform.contains(&Transform::Log1p)
    }
    pub fn standardize(&self) -> bool {
        self.transform.contains(&Transform::Standardize)
    }
    pub fn missing_is_zero(&self) -> bool {
        self.missing == Some(Missing::Zero)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DcnStructure {
    Stacked,
    Parallel,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MaskNetMode {
    Serial,
    Parallel,
}

/// One entry of `experts`.
#[derive(Clone, Debug, PartialEq)]
pub struct Expert {
    pub name: String,
    pub kind: ExpertKind,
}

impl Serialize for Expert {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // The name sits beside the kind's fields in one JSON object.
        let mut object = match serde_json::to_value(&self.kind) {
            Ok(Value::Object(object)) => object,
            _ => return Err(serde::ser::Error::custom("expert kind is not an object")),
        };
        object.insert("name".into(), Value::String(self.name.clone()));
        object.serialize(serializer)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ExpertKind {
    Mlp {
        hidden: Vec<usize>,
    },
    Dcnv2 {
        cross_layers: usize,
        #[serde(default)]
        rank: Option<usize>,
        structure: DcnStructure,
        deep: Vec<usize>,
    },
    Masknet {
        mode: MaskNetMode,
        blocks: Vec<usize>,
        mask_hidden: usize,
        #[serde(default)]
        head: Vec<usize>,
    },
    Finalmlp {
        mlp1: Vec<usize>,
        mlp2: Vec<usize>,
        heads: usize,
        #[serde(default)]
        feature_selection: bool,
        #[serde(default)]
        fs_hidden: Vec<usize>,
        #[serde(default)]
        fs1_context: Vec<String>,
        #[serde(default)]
        fs2_context: Vec<String>,
    },
}

impl ExpertKind {
    pub fn type_name(&self) -> &'static str {
        match self {
            ExpertKind::Mlp { .. } => "mlp",
            ExpertKind::Dcnv2 { .. } => "dcnv2",
            ExpertKind::Masknet { .. } => "masknet",
            ExpertKind::Finalmlp { .. } => "finalmlp",
        }
    }
}

/// One entry of `tasks`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    pub name: String,
    #[serde(default)]
    pub gate_hidden: Vec<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate_inputs: Option<Vec<String>>,
    #[serde(default)]
    pub tower: Vec<usize>,
}

/// Largest width of any layer, and largest embedding table, that a config may
/// declare: far above any real model, low enough that sizes cannot overflow.
pub(crate) const MAX_WIDTH: usize = 1 << 20;
const MAX_ROWS: u64 = 1 << 40;

impl Config {
    /// Parses and validates a config from JSON text.
    pub fn parse(json: &str) -> Result<Config> {
        let document: Value = serde_json::from_str(json)
            .map_err(|e| Error::config(format!("config is not valid JSON: {e}")))?;
        let Value::Object(mut top) = document else {
            return Err(Error::config("config must be a JSON object"));
        };
        let name = take_string(&mut top, "name", "config")?;
        let expert_dim = take_field::<usize>(&mut top, "expert_dim", "config")?;
        let inputs = take_list(&mut top, "inputs", "input", |_, v| {
            serde_json::from_value::<Input>(v)
        })?;
        let experts = take_list(&mut top, "experts", "expert", |_, v| parse_expert(v))?;
        let tasks = take_list(&mut top, "tasks", "task", |_, v| {
            serde_json::from_value::<Task>(v)
        })?;
        if let Some(key) = top.keys().next() {
            return Err(Error::config(format!(
                "config: unknown field `{key}` (expected name, expert_dim, inputs, experts, tasks)"
            )));
        }
        let config = Config {
            name,
            expert_dim,
            inputs,
            experts,
            tasks,
        };
        config.validate()?;
        Ok(config)
    }

    /// The config as compact JSON (what a packed file stores).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| unreachable!("config serializes: {e}"))
    }

    /// `D`: the width of x0.
    pub fn x0_dim(&self) -> usize {
        self.inputs.iter().map(|i| i.dim).sum()
    }

    /// The start of each input's slice in x0, in config order.
    pub fn x0_offsets(&self) -> Vec<usize> {
        let mut offset = 0;
        self.inputs
            .iter()
            .map(|input| {
                let start = offset;
                offset += input.dim;
                start
            })
            .collect()
    }

    pub fn input_index(&self, name: &str) -> Option<usize> {
        self.inputs.iter().position(|i| i.name == name)
    }

    /// Checks every rule of the contract. Each error names what is at fault.
    pub fn validate(&self) -> Result<()> {
        check_name("config name", &self.name, false)?;
        check_width("config: expert_dim", self.expert_dim)?;
        if self.inputs.is_empty() {
            return Err(Error::config("config: inputs must not be empty"));
        }
        if self.experts.is_empty() {
            return Err(Error::config("config: experts must not be empty"));
        }
        if self.tasks.is_empty() {
            return Err(Error::config("config: tasks must not be empty"));
        }
        check_unique("input", self.inputs.iter().map(|i| i.name.as_str()))?;
        check_unique("expert", self.experts.iter().map(|e| e.name.as_str()))?;
        check_unique("task", self.tasks.iter().map(|t| t.name.as_str()))?;
        for input in &self.inputs {
            self.validate_input(input)?;
        }
        if self.x0_dim() > MAX_WIDTH {
            return Err(Error::config(format!(
                "config: the inputs' dims add up to {}, above the limit {MAX_WIDTH}",
                self.x0_dim()
            )));
        }
        // Names looked up by hash: a file may hold many (every check here
        // stays linear in the config's size).
        let known: HashSet<&str> = self.inputs.iter().map(|i| i.name.as_str()).collect();
        for expert in &self.experts {
            self.validate_expert(&known, expert)
                .map_err(|e| e.context(format!("expert `{}`", expert.name)))?;
        }
        for task in &self.tasks {
            self.validate_task(&known, task)
                .map_err(|e| e.context(format!("task `{}`", task.name)))?;
        }
        Ok(())
    }

    fn validate_input(&self, input: &Input) -> Result<()> {
        let at = format!("input `{}`", input.name);
        check_name("input name", &input.name, true)?;
        check_width(&format!("{at}: dim"), input.dim)?;
        match input.kind {
            InputKind::Dense => {
                for (field, present) in [
                    ("rows", input.rows.is_some()),
                    ("pooling", input.pooling.is_some()),
                ] {
                    if present {
                        return Err(Error::config(format!(
                            "{at}: `{field}` belongs to sparse inputs, this one is dense"
                        )));
                    }
                }
                for (i, t) in input.transform.iter().enumerate() {
                    if input.transform[..i].contains(t) {
                        return Err(Error::config(format!(
                            "{at}: transform {t:?} is listed twice"
                        )));
                    }
                }
                if input.transform.contains(&Transform::Clip) && input.clip.is_none() {
                    return Err(Error::config(format!(
                        "{at}: transform lists clip but the `clip` field (the bound c) is missing"
                    )));
                }
                if let Some(c) = input.clip {
                    if !(c.is_finite() && c > 0.0) {
                        return Err(Error::config(format!(
                            "{at}: clip must be a finite number above 0, got {c}"
                        )));
                    }
                }
            }
            InputKind::Sparse => {
                for (field, present) in [
                    ("transform", !input.transform.is_empty()),
                    ("clip", input.clip.is_some()),
                    ("missing", input.missing.is_some()),
                ] {
                    if present {
                        return Err(Error::config(format!(
                            "{at}: `{field}` belongs to dense inputs, this one is sparse"
                        )));
                    }
                }
                match input.rows {
                    None => return Err(Error::config(format!("{at}: sparse input needs `rows`"))),
                    Some(0) => return Err(Error::config(format!("{at}: rows must be at least 1"))),
                    Some(r) if r > MAX_ROWS => {
                        return Err(Error::config(format!(
                            "{at}: rows {r} is above the limit {MAX_ROWS}"
                        )))
                    }
                    Some(_) => {}
                }
                if input.pooling.is_none() {
                    return Err(Error::config(format!(
                        "{at}: sparse input needs `pooling` (sum or mean)"
                    )));
                }
            }
        }
        Ok(())
    }

    fn validate_expert(&self, known: &HashSet<&str>, expert: &Expert) -> Result<()> {
        check_name("expert name", &expert.name, true)?;
        let h = self.expert_dim;
        let last_is_h = |field: &str, widths: &[usize]| -> Result<()> {
            match widths.last() {
                Some(&w) if w == h => Ok(()),
                Some(&w) => Err(Error::config(format!(
                    "{field} ends with width {w}, but expert_dim is {h}"
                ))),
                None => Err(Error::config(format!("{field} must not be empty"))),
            }
        };
        match &expert.kind {
            ExpertKind::Mlp { hidden } => {
                check_widths("hidden", hidden)?;
                last_is_h("hidden", hidden)?;
            }
            ExpertKind::Dcnv2 {
                cross_layers,
                rank,
                structure,
                deep,
            } => {
                if *cross_layers < 1 || *cross_layers > 64 {
                    return Err(Error::config(format!(
                        "cross_layers must be between 1 and 64, got {cross_layers}"
                    )));
                }
                if let Some(r) = rank {
                    check_width("rank", *r)?;
                }
                check_widths("deep", deep)?;
                if deep.is_empty() {
                    return Err(Error::config("deep must not be empty"));
                }
                if *structure == DcnStructure::Stacked {
                    last_is_h("deep (stacked structure)", deep)?;
                }
            }
            ExpertKind::Masknet {
                mode,
                blocks,
                mask_hidden,
                head,
            } => {
                if blocks.is_empty() {
                    return Err(Error::config("blocks must not be empty"));
                }
                check_widths("blocks", blocks)?;
                if *mode == MaskNetMode::Parallel {
                    // The head reads the blocks' outputs side by side.
                    let sum = blocks.iter().sum();
                    check_width("the sum of blocks (parallel mode concatenates them)", sum)?;
                }
                check_width("mask_hidden", *mask_hidden)?;
                check_widths("head", head)?;
                if head.is_empty() {
                    if *mode == MaskNetMode::Parallel {
                        return Err(Error::config(
                            "head may be empty in serial mode only; parallel mode needs a head ending with expert_dim",
                        ));
                    }
                    last_is_h("blocks (serial mode with an empty head)", blocks)?;
                } else {
                    last_is_h("head", head)?;
                }
            }
            ExpertKind::Finalmlp {
                mlp1,
                mlp2,
                heads,
                feature_selection: _,
                fs_hidden,
                fs1_context,
                fs2_context,
            } => {
                for (field, widths) in [("mlp1", mlp1), ("mlp2", mlp2)] {
                    if widths.is_empty() {
                        return Err(Error::config(format!("{field} must not be empty")));
                    }
                    check_widths(field, widths)?;
                }
                check_width("heads", *heads)?;
                for (field, widths) in [("mlp1", mlp1), ("mlp2", mlp2)] {
                    let d = widths[widths.len() - 1];
                    if d % heads != 0 {
                        return Err(Error::config(format!(
                            "{field} ends with width {d}, which does not divide by heads = {heads}"
                        )));
                    }
                }
                let (d1, d2) = (mlp1[mlp1.len() - 1], mlp2[mlp2.len() - 1]);
                // Wxy holds d1 * (d2 / k) * H values: keep it addressable.
                let bilinear = (d1 as u128) * (d2 / heads) as u128 * h as u128;
                if bilinear > (1u128 << 36) {
                    return Err(Error::config(format!(
                        "agg.w_xy would hold {bilinear} values, above the limit 2^36"
                    )));
                }
                // Checked even when feature_selection is false, which MODEL.md
                // lets a trainer write beside them: unused then (no `fs`
                // tensors), but a typo in them is still a typo.
                check_widths("fs_hidden", fs_hidden)?;
                check_input_list(known, "fs1_context", fs1_context)?;
                check_input_list(known, "fs2_context", fs2_context)?;
            }
        }
        Ok(())
    }

    fn validate_task(&self, known: &HashSet<&str>, task: &Task) -> Result<()> {
        check_name("task name", &task.name, true)?;
        check_widths("gate_hidden", &task.gate_hidden)?;
        check_widths("tower", &task.tower)?;
        if let Some(list) = &task.gate_inputs {
            if list.is_empty() {
                return Err(Error::config(
                    "gate_inputs is an empty list; leave it out to read all of x0",
                ));
            }
            check_input_list(known, "gate_inputs", list)?;
        }
        Ok(())
    }

    /// The x0 ranges of the named inputs, in config order (not list order).
    pub fn input_ranges(&self, names: &[String]) -> Vec<std::ops::Range<usize>> {
        let offsets = self.x0_offsets();
        let names: HashSet<&str> = names.iter().map(String::as_str).collect();
        self.inputs
            .iter()
            .zip(offsets)
            .filter(|(input, _)| names.contains(input.name.as_str()))
            .map(|(input, start)| start..start + input.dim)
            .collect()
    }
}

fn parse_expert(value: Value) -> std::result::Result<Expert, serde_json::Error> {
    use serde::de::Error as _;
    let Value::Object(mut object) = value else {
        return Err(serde_json::Error::custom("an expert must be a JSON object"));
    };
    let name = match object.remove("name") {
        Some(Value::String(name)) => name,
        Some(_) => return Err(serde_json::Error::custom("`name` must be a string")),
        None => return Err(serde_json::Error::missing_field("name")),
    };
    let kind = serde_json::from_value::<ExpertKind>(Value::Object(object))?;
    Ok(Expert { name, kind })
}

fn take_string(top: &mut Map<String, Value>, key: &str, at: &str) -> Result<String> {
    take_field::<String>(top, key, at)
}

fn take_field<T: serde::de::DeserializeOwned>(
    top: &mut Map<String, Value>,
    key: &str,
    at: &str,
) -> Result<T> {
    let value = top
        .remove(key)
        .ok_or_else(|| Error::config(format!("{at}: missing field `{key}`")))?;
    serde_json::from_value(value).map_err(|e| Error::config(format!("{at}: field `{key}`: {e}")))
}

/// Parses the list `key`, naming a failing entry by its index and, when it has
/// one, its name.
fn take_list<T>(
    top: &mut Map<String, Value>,
    key: &str,
    what: &str,
    parse: impl Fn(usize, Value) -> std::result::Result<T, serde_json::Error>,
) -> Result<Vec<T>> {
    let Some(value) = top.remove(key) else {
        return Err(Error::config(format!("config: missing field `{key}`")));
    };
    let Value::Array(items) = value else {
        return Err(Error::config(format!("config: `{key}` must be a list")));
    };
    items
        .into_iter()
        .enumerate()
        .map(|(index, item)| {
            let label = match item.get("name").and_then(Value::as_str) {
                Some(name) => format!("{what} #{index} `{name}`"),
                None => format!("{what} #{index}"),
            };
            parse(index, item).map_err(|e| Error::config(format!("{label}: {e}")))
        })
        .collect()
}

/// Names become parts of tensor names (`experts.<name>.…`), so they may not
/// hold dots or odd characters.
fn check_name(what: &str, name: &str, strict: bool) -> Result<()> {
    if name.is_empty() {
        return Err(Error::config(format!("{what} must not be empty")));
    }
    if name.len() > 128 {
        return Err(Error::config(format!(
            "{what} `{name}` is longer than 128 bytes"
        )));
    }
    if strict
        && !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(Error::config(format!(
            "{what} `{name}` may hold only letters, digits, `_` and `-` (it becomes part of tensor names)"
        )));
    }
    Ok(())
}

fn check_width(what: &str, width: usize) -> Result<()> {
    if width == 0 {
        return Err(Error::config(format!("{what} must be at least 1")));
    }
    if width > MAX_WIDTH {
        return Err(Error::config(format!(
            "{what} = {width} is above the limit {MAX_WIDTH}"
        )));
    }
    Ok(())
}

fn check_widths(what: &str, widths: &[usize]) -> Result<()> {
    if widths.len() > 64 {
        return Err(Error::config(format!("{what} lists more than 64 layers")));
    }
    for (i, &w) in widths.iter().enumerate() {
        check_width(&format!("{what}[{i}]"), w)?;
    }
    Ok(())
}

/// A list of input names (gate_inputs, fs contexts): each must exist
/// (in `known`, the inputs' names), once.
fn check_input_list(known: &HashSet<&str>, field: &str, names: &[String]) -> Result<()> {
    let mut seen = HashSet::with_capacity(names.len());
    for name in names {
        if !known.contains(name.as_str()) {
            return Err(Error::config(format!(
                "{field} names unknown input `{name}`"
            )));
        }
        if !seen.insert(name.as_str()) {
            return Err(Error::config(format!("{field} lists input `{name}` twice")));
        }
    }
    Ok(())
}

fn check_unique<'a>(what: &str, names: impl Iterator<Item = &'a str>) -> Result<()> {
    let mut seen = HashSet::new();
    for name in names {
        if !seen.insert(name) {
            return Err(Error::config(format!("{what} name `{name}` is used twice")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../models/bench-model.json");

    #[test]
    fn bench_model_parses_and_round_trips() {
        let config = Config::parse(EXAMPLE).expect("bench model is valid");
        assert_eq!(config.x0_dim(), 64 + 256 + 12 * 16);
        assert_eq!(config.experts.len(), 6);
        let again = Config::parse(&config.to_json()).expect("re-serialized config parses");
        assert_eq!(again, config);
    }

    fn with(edit: impl FnOnce(&mut Value)) -> Result<Config> {
        let mut v: Value = serde_json::from_str(EXAMPLE).unwrap();
        edit(&mut v);
        Config::parse(&v.to_string())
    }

    fn err(edit: impl FnOnce(&mut Value)) -> String {
        with(edit)
            .expect_err("config should be refused")
            .to_string()
    }

    #[test]
    fn errors_name_the_thing_at_fault() {
        let e = err(|v| v["inputs"][1]["transfrom"] = Value::Null);
        assert!(
            e.contains("input #1 `ad_dense`") && e.contains("transfrom"),
            "{e}"
        );
        let e = err(|v| v["experts"][2]["deep"] = serde_json::json!([512, 255]));
        assert!(
            e.contains("expert `dcn2`") && e.contains("expert_dim is 256"),
            "{e}"
        );
        let e = err(|v| v["tasks"][1]["gate_inputs"] = serde_json::json!(["nope"]));
        assert!(
            e.contains("task `good_click`") && e.contains("unknown input `nope`"),
            "{e}"
        );
        let e = err(|v| v["inputs"][2]["rows"] = serde_json::json!(0));
        assert!(
            e.contains("input `user_sparse0`") && e.contains("rows"),
            "{e}"
        );
        let e = err(|v| v["experts"][0]["type"] = serde_json::json!("transformer"));
        assert!(
            e.contains("expert #0 `dcn0`") && e.contains("transformer"),
            "{e}"
        );
        let e = err(|v| v["tasks"][2]["name"] = serde_json::json!("click"));
        assert!(e.contains("task name `click` is used twice"), "{e}");
        let e = err(|v| v["inputs"][0]["name"] = serde_json::json!("user.dense"));
        assert!(e.contains("user.dense"), "{e}");
        let e = err(|v| v["extra"] = serde_json::json!(1));
        assert!(e.contains("unknown field `extra`"), "{e}");
        let e = err(|v| v["inputs"][0]["clip"] = serde_json::json!(-1.0));
        assert!(e.contains("user_dense") && e.contains("clip"), "{e}");
        let e = err(|v| v["inputs"][1]["pooling"] = serde_json::json!("sum"));
        assert!(e.contains("ad_dense") && e.contains("pooling"), "{e}");
        let e = err(|v| v["inputs"][3]["transform"] = serde_json::json!(["log1p"]));
        assert!(e.contains("user_sparse1") && e.contains("transform"), "{e}");
    }

    #[test]
    fn every_kind_of_bad_config_is_refused_with_a_reason() {
        use serde_json::json;
        type Edit = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(Edit, &str)> = vec![
            (
                Box::new(|v| v["expert_dim"] = json!(0)),
                "expert_dim must be at least 1",
            ),
            (
                Box::new(|v| v["expert_dim"] = json!(-3)),
                "field `expert_dim`",
            ),
            (
                Box::new(|v| v["inputs"] = json!([])),
                "inputs must not be empty",
            ),
            (
                Box::new(|v| v["experts"] = json!([])),
                "experts must not be empty",
            ),
            (
                Box::new(|v| v["tasks"] = json!([])),
                "tasks must not be empty",
            ),
            (
                Box::new(|v| {
                    v.as_object_mut().unwrap().remove("name");
                }),
                "missing field `name`",
            ),
            (
                Box::new(|v| v["inputs"][0]["dim"] = json!(0)),
                "input `user_dense`: dim must be at least 1",
            ),
            (
                Box::new(|v| {
                    v["inputs"][0].as_object_mut().unwrap().remove("dim");
                }),
                "input #0 `user_dense`: missing field `dim`",
            ),
            (
                Box::new(|v| v["inputs"][0]["kind"] = json!("image")),
                "input #0 `user_dense`: unknown variant `image`",
            ),
            (
                Box::new(|v| v["inputs"][0]["scope"] = json!("global")),
                "unknown variant `global`",
            ),
            (
                Box::new(|v| v["inputs"][0]["transform"] = json!(["log1p", "log1p"])),
                "listed twice",
            ),
            (
                Box::new(|v| v["inputs"][0]["transform"] = json!(["sqrt"])),
                "unknown variant `sqrt`",
            ),
            (
                Box::new(|v| v["inputs"][1]["transform"] = json!(["clip"])),
                "input `ad_dense`: transform lists clip but the `clip` field",
            ),
            (
                Box::new(|v| v["inputs"][1]["missing"] = json!("mean")),
                "unknown variant `mean`",
            ),
            (
                Box::new(|v| {
                    v["inputs"][2].as_object_mut().unwrap().remove("rows");
                }),
                "input `user_sparse0`: sparse input needs `rows`",
            ),
            (
                Box::new(|v| {
                    v["inputs"][2].as_object_mut().unwrap().remove("pooling");
                }),
                "sparse input needs `pooling`",
            ),
            (
                Box::new(|v| v["inputs"][2]["pooling"] = json!("max")),
                "unknown variant `max`",
            ),
            (
                Box::new(|v| v["inputs"][2]["missing"] = json!("zero")),
                "`missing` belongs to dense inputs",
            ),
            (
                Box::new(|v| v["inputs"][3]["name"] = json!("user_sparse0")),
                "input name `user_sparse0` is used twice",
            ),
            (
                Box::new(|v| v["experts"][1]["name"] = json!("dcn0")),
                "expert name `dcn0` is used twice",
            ),
            (
                Box::new(|v| v["experts"][0]["cross_layers"] = json!(0)),
                "expert `dcn0`: cross_layers must be between 1 and 64",
            ),
            (
                Box::new(|v| v["experts"][0]["rank"] = json!(0)),
                "expert `dcn0`: rank must be at least 1",
            ),
            (
                Box::new(|v| v["experts"][0]["deep"] = json!([])),
                "expert `dcn0`: deep must not be empty",
            ),
            (
                Box::new(|v| v["experts"][0]["structure"] = json!("mixed")),
                "unknown variant `mixed`",
            ),
            (
                Box::new(|v| v["experts"][4]["hidden"] = json!([])),
                "expert `mlp0`: hidden must not be empty",
            ),
            (
                Box::new(|v| v["experts"][4]["hidden"] = json!([512, 0, 256])),
                "expert `mlp0`: hidden[1] must be at least 1",
            ),
            (
                Box::new(|v| v["experts"][4]["depth"] = json!(3)),
                "expert #4 `mlp0`: unknown field `depth`",
            ),
            (
                Box::new(|v| {
                    v["experts"][4].as_object_mut().unwrap().remove("type");
                }),
                "missing field `type`",
            ),
            (
                Box::new(|v| v["tasks"][0]["gate_inputs"] = json!([])),
                "task `click`: gate_inputs is an empty list",
            ),
            (
                Box::new(|v| v["tasks"][0]["gate_inputs"] = json!(["ad_dense", "ad_dense"])),
                "task `click`: gate_inputs lists input `ad_dense` twice",
            ),
            (
                Box::new(|v| v["tasks"][0]["tower"] = json!([0])),
                "task `click`: tower[0] must be at least 1",
            ),
            (
                Box::new(|v| v["tasks"][0]["gate_hidden"] = json!([-1])),
                "task #0 `click`",
            ),
            (
                Box::new(|v| v["tasks"][0]["name"] = json!("")),
                "task name must not be empty",
            ),
            (
                Box::new(|v| v["tasks"][0]["name"] = json!("a b")),
                "task name `a b` may hold only",
            ),
        ];
        for (edit, expect) in cases {
            let e = err(edit);
            assert!(e.contains(expect), "`{e}` should contain `{expect}`");
        }
        // Not JSON, not an object.
        assert!(Config::parse("{")
            .unwrap_err()
            .to_string()
            .contains("not valid JSON"));
        assert!(Config::parse("[]")
            .unwrap_err()
            .to_string()
            .contains("must be a JSON object"));
    }

    /// A parallel MaskNet's head reads its blocks side by side: their sum
    /// is a width too, under the same limit (the per-thread scratch holds
    /// it for a tile of rows).
    #[test]
    fn parallel_masknet_blocks_add_up_under_the_width_limit() {
        let masknet = |blocks: Value| {
            with(|v| {
                v["experts"][0] = serde_json::json!({"name": "m", "type": "masknet",
                    "mode": "parallel", "blocks": blocks, "mask_hidden": 32, "head": [256]});
            })
        };
        let half = MAX_WIDTH / 2;
        assert!(masknet(serde_json::json!([half, half])).is_ok());
        let e = masknet(serde_json::json!([half, half, 1]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("expert `m`") && e.contains("sum of blocks"),
            "{e}"
        );
    }

    /// Many names check in time linear in their number: 100,000 inputs, a
    /// task gate listing them all, a feature-selection context too (names
    /// compared pairwise took minutes at a few hundred thousand).
    #[test]
    fn many_names_validate_in_linear_time() {
        let names: Vec<String> = (0..100_000).map(|i| format!("d{i}")).collect();
        let start = std::time::Instant::now();
        let config = with(|v| {
            let inputs = v["inputs"].as_array_mut().unwrap();
            for name in &names {
                inputs.push(serde_json::json!({"name": name, "kind": "dense",
                    "scope": "candidate", "dim": 1}));
            }
            v["tasks"][0]["gate_inputs"] = serde_json::json!(names);
        })
        .unwrap();
        let ranges = config.input_ranges(&names);
        assert_eq!(ranges.iter().map(|r| r.len()).sum::<usize>(), names.len());
        // Seconds, where pairwise comparisons took 5·10⁹ of them.
        assert!(start.elapsed().as_secs() < 20, "{:?}", start.elapsed());
        let e = with(|v| {
            v["tasks"][0]["gate_inputs"] = serde_json::json!(["ad_dense", "ad_dense"]);
        })
        .unwrap_err()
        .to_string();
        assert!(e.contains("lists input `ad_dense` twice"), "{e}");
    }

    #[test]
    fn masknet_and_finalmlp_rules() {
        let masknet = |mode: &str, blocks: Value, head: Value| {
            with(|v| {
                v["experts"][0] = serde_json::json!({"name": "m", "type": "masknet", "mode": mode,
                    "blocks": blocks, "mask_hidden": 32, "head": head});
            })
        };
        assert!(masknet(
            "serial",
            serde_json::json!([64, 256]),
            serde_json::json!([])
        )
        .is_ok());
        assert!(masknet(
            "serial",
            serde_json::json!([64, 128]),
            serde_json::json!([])
        )
        .is_err());
        assert!(masknet("parallel", serde_json::json!([256]), serde_json::json!([])).is_err());
        assert!(masknet(
            "parallel",
            serde_json::json!([64, 64]),
            serde_json::json!([256])
        )
        .is_ok());
        let finalmlp = |m1: Value, heads: usize, fs: bool, ctx: Value| {
            with(|v| {
                v["experts"][0] = serde_json::json!({"name": "f", "type": "finalmlp", "mlp1": m1,
                    "mlp2": [64], "heads": heads, "feature_selection": fs, "fs1_context": ctx});
            })
        };
        assert!(finalmlp(
            serde_json::json!([64]),
            4,
            true,
            serde_json::json!(["ad_dense"])
        )
        .is_ok());
        assert!(finalmlp(serde_json::json!([66]), 4, true, serde_json::json!([])).is_err());
        // Feature-selection fields beside `feature_selection: false` (a
        // trainer writing all its fields): accepted, as MODEL.md allows them,
        // and still checked.
        assert!(finalmlp(
            serde_json::json!([64]),
            4,
            false,
            serde_json::json!(["ad_dense"])
        )
        .is_ok());
        assert!(finalmlp(serde_json::json!([64]), 4, false, serde_json::json!(["x"])).is_err());
        assert!(finalmlp(serde_json::json!([64]), 4, true, serde_json::json!(["x"])).is_err());
    }
}
