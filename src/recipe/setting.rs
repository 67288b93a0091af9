//! Parameters that may vary by tensor: a plain number, a *gradient* (a list of
//! values interpolated across the layers), or a list of *rules* whose first match
//! on the tensor's name decides — the forms mergekit's `parameters` take.
//!
//! A tensor's position for gradients is that of its transformer block among the
//! blocks with the same prefix: block `i` of `n` sits at `i / (n − 1)` (a lone
//! block at 1); tensors outside blocks (embeddings, final norm, head) sit at 0.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::engine::layers::LayerGroup;

/// A number, or a gradient of numbers across the layers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    /// The same number everywhere.
    Number(f64),
    /// Values spread evenly from the first layer (position 0) to the last
    /// (position 1), linearly interpolated in between.
    Gradient(Vec<f64>),
}

/// A parameter's setting: a value everywhere, or rules tried in order.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Setting {
    /// One value (number or gradient) for every tensor.
    Value(Value),
    /// The first rule that matches a tensor decides its value.
    Rules(Vec<Rule>),
}

/// One rule of a [`Setting`]: a value for the tensors it matches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Matches tensors whose name contains this text (`*`, or no filter at all,
    /// matches every tensor).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    /// Matches tensors in these layer groups, by label: `embeddings`, `rest`, or a
    /// block such as `model.layers.3` (see [`LayerGroup::label`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<String>>,
    /// The value for matching tensors.
    pub value: Value,
}

/// A number, a list of numbers (a gradient) or a list of rules; a rule's unknown
/// keys are errors that name them.
impl<'de> Deserialize<'de> for Setting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error as _;
        use serde_json::Value as Json;
        let expected = "a number, a list of numbers (a gradient) or a list of rules \
                        ({filter, layers, value})";
        match Json::deserialize(d)? {
            Json::Number(n) => {
                n.as_f64().map(Setting::from).ok_or_else(|| D::Error::custom(expected))
            }
            Json::Array(items) if items.iter().all(Json::is_number) => {
                Ok(Setting::Value(Value::Gradient(items.iter().filter_map(Json::as_f64).collect())))
            }
            Json::Array(items) if items.iter().all(Json::is_object) => items
                .into_iter()
                .map(|item| Rule::deserialize(item).map_err(D::Error::custom))
                .collect::<Result<_, _>>()
                .map(Setting::Rules),
            Json::Object(map) => Rule::deserialize(Json::Object(map))
                .map(|rule| Setting::Rules(vec![rule]))
                .map_err(D::Error::custom),
            other => Err(D::Error::custom(format!("expected {expected}, found {other}"))),
        }
    }
}

impl From<f64> for Setting {
    fn from(x: f64) -> Self {
        Setting::Value(Value::Number(x))
    }
}

impl Value {
    /// The value at `position` in `[0, 1]`. A gradient of `m` values puts value
    /// `j` at `j / (m − 1)` and interpolates linearly between neighbours (the
    /// arithmetic is mergekit's, so shared recipes give the same numbers).
    pub fn at(&self, position: f64) -> f64 {
        match self {
            Value::Number(x) => *x,
            Value::Gradient(values) => match values.as_slice() {
                [] => f64::NAN,
                [only] => *only,
                _ => {
                    let scaled = position.clamp(0.0, 1.0) * (values.len() - 1) as f64;
                    let i0 = scaled.floor() as usize;
                    let i1 = (i0 + 1).min(values.len() - 1);
                    let frac = scaled - i0 as f64;
                    (1.0 - frac) * values[i0] + frac * values[i1]
                }
            },
        }
    }

    fn numbers(&self) -> &[f64] {
        match self {
            Value::Number(x) => std::slice::from_ref(x),
            Value::Gradient(values) => values,
        }
    }
}

impl Rule {
    fn matches(&self, tensor: &str, group: &LayerGroup) -> bool {
        let filter = self.filter.as_deref().is_none_or(|f| f == "*" || tensor.contains(f));
        let layers = self.layers.as_ref().is_none_or(|ls| ls.contains(&group.label()));
        filter && layers
    }
}

impl Setting {
    /// The value for `tensor`, at its layer `position`; `None` when no rule
    /// matches it.
    pub fn at(&self, tensor: &str, position: f64) -> Option<f64> {
        match self {
            Setting::Value(v) => Some(v.at(position)),
            Setting::Rules(rules) => {
                let group = LayerGroup::of(tensor);
                rules.iter().find(|r| r.matches(tensor, &group)).map(|r| r.value.at(position))
            }
        }
    }

    /// Every number written in the setting, for validation.
    pub fn numbers(&self) -> Vec<f64> {
        match self {
            Setting::Value(v) => v.numbers().to_vec(),
            Setting::Rules(rules) => {
                rules.iter().flat_map(|r| r.value.numbers()).copied().collect()
            }
        }
    }

    /// Whether the setting is one number for every tensor, and which.
    pub fn constant(&self) -> Option<f64> {
        match self {
            Setting::Value(Value::Number(x)) => Some(*x),
            _ => None,
        }
    }

    /// Checks that the setting has at least one number, that every number is
    /// finite and inside `range`, and that no gradient is empty; the error says
    /// what is wrong, for the caller to prefix with the parameter's name.
    pub fn validate(&self, range: std::ops::RangeInclusive<f64>) -> Result<(), String> {
        let values: Vec<&Value> = match self {
            Setting::Value(v) => vec![v],
            Setting::Rules(rules) if rules.is_empty() => return Err("has no rules".to_owned()),
            Setting::Rules(rules) => rules.iter().map(|r| &r.value).collect(),
        };
        for v in values {
            if let Value::Gradient(g) = v {
                if g.is_empty() {
                    return Err("has an empty gradient".to_owned());
                }
            }
            for &x in v.numbers() {
                if !x.is_finite() || !range.contains(&x) {
                    return Err(format!(
                        "has the value {x}, outside {}..={}",
                        range.start(),
                        range.end()
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Every tensor's position for gradients: `i / (n − 1)` for block `i` of the `n`
/// blocks sharing its prefix (1 when `n` is 1), 0 outside blocks.
pub fn layer_positions<'a>(names: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, f64> {
    let groups: Vec<(&str, LayerGroup)> =
        names.into_iter().map(|n| (n, LayerGroup::of(n))).collect();
    let mut blocks: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, g) in &groups {
        if let LayerGroup::Block { prefix, number } = g {
            let n = blocks.entry(prefix.as_str()).or_default();
            *n = (*n).max(number + 1);
        }
    }
    groups
        .iter()
        .map(|(name, g)| {
            let position = match g {
                LayerGroup::Block { prefix, number } => match blocks[prefix.as_str()] {
                    0 | 1 => 1.0,
                    n => *number as f64 / (n - 1) as f64,
                },
                _ => 0.0,
            };
            ((*name).to_owned(), position)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Setting {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn numbers_gradients_and_rules_parse_from_their_plain_forms() {
        assert_eq!(parse("0.5"), Setting::from(0.5));
        assert_eq!(parse("[0, 1]"), Setting::Value(Value::Gradient(vec![0.0, 1.0])));
        let rules = parse(r#"[{"filter": "mlp", "value": [0, 1]}, {"value": 0.3}]"#);
        assert_eq!(rules.at("model.layers.0.mlp.up_proj.weight", 0.5), Some(0.5));
        assert_eq!(rules.at("model.layers.0.self_attn.q_proj.weight", 0.5), Some(0.3));
    }

    #[test]
    fn gradients_interpolate_between_neighbours() {
        let g = Value::Gradient(vec![0.0, 1.0, 0.0]);
        assert_eq!(g.at(0.0), 0.0);
        assert_eq!(g.at(0.25), 0.5);
        assert_eq!(g.at(0.5), 1.0);
        assert_eq!(g.at(1.0), 0.0);
        assert_eq!(Value::Gradient(vec![2.0]).at(0.7), 2.0);
    }

    #[test]
    fn rules_match_by_filter_and_by_layer_group_first_match_wins() {
        let s = parse(
            r#"[{"layers": ["embeddings"], "value": 1}, {"filter": "*", "value": 2},
                {"value": 3}]"#,
        );
        assert_eq!(s.at("model.embed_tokens.weight", 0.0), Some(1.0));
        assert_eq!(s.at("lm_head.weight", 0.0), Some(2.0));
        let none = parse(r#"[{"filter": "mlp", "value": 1}]"#);
        assert_eq!(none.at("lm_head.weight", 0.0), None);
    }

    #[test]
    fn positions_spread_blocks_of_each_prefix_from_zero_to_one() {
        let names = [
            "embed.weight",
            "encoder.block.0.w",
            "encoder.block.1.w",
            "encoder.block.2.w",
            "decoder.block.0.w",
            "head.weight",
        ];
        let p = layer_positions(names);
        assert_eq!(p["embed.weight"], 0.0);
        assert_eq!(p["encoder.block.1.w"], 0.5);
        assert_eq!(p["encoder.block.2.w"], 1.0);
        assert_eq!(p["decoder.block.0.w"], 1.0);
        assert_eq!(p["head.weight"], 0.0);
    }

    #[test]
    fn validation_names_what_is_wrong() {
        assert!(Setting::from(0.5).validate(0.0..=1.0).is_ok());
        assert!(Setting::from(1.5).validate(0.0..=1.0).unwrap_err().contains("1.5"));
        assert!(parse("[]").validate(0.0..=1.0).is_err());
        assert!(Setting::from(f64::NAN).validate(f64::MIN..=f64::MAX).is_err());
    }
}
