//! The model card (`README.md`) written beside a soup, as mergekit writes one:
//! YAML front matter for the Hugging Face Hub (the Hub models merged, tags), the
//! method with its paper, the models and their parameters, the recipe as YAML
//! (and the mergekit configuration it was read from, if any), and the tool's
//! version.

use serde_json::Value as Json;

use super::{Ingredient, Method, Recipe};
use crate::engine::hub::ModelId;

/// A method's full name and the paper (or page) that defines it.
pub fn reference(method: Method) -> (&'static str, &'static str) {
    match method {
        Method::Linear => ("Linear (model soup)", "https://arxiv.org/abs/2203.05482"),
        Method::TaskArithmetic => ("Task Arithmetic", "https://arxiv.org/abs/2212.04089"),
        Method::Ties => ("TIES", "https://arxiv.org/abs/2306.01708"),
        Method::DareLinear => ("Linear DARE", "https://arxiv.org/abs/2311.03099"),
        Method::DareTies => ("DARE TIES", "https://arxiv.org/abs/2311.03099"),
        Method::Slerp => ("SLERP", "https://en.wikipedia.org/wiki/Slerp"),
        Method::ModelStock => ("Model Stock", "https://arxiv.org/abs/2403.19522"),
        Method::Breadcrumbs => ("Model Breadcrumbs", "https://arxiv.org/abs/2312.06795"),
        Method::BreadcrumbsTies => {
            ("Model Breadcrumbs with TIES", "https://arxiv.org/abs/2312.06795")
        }
        Method::Della => ("DELLA", "https://arxiv.org/abs/2406.11617"),
        Method::DellaLinear => ("Linear DELLA", "https://arxiv.org/abs/2406.11617"),
        Method::Sce => ("SCE", "https://arxiv.org/abs/2408.07990"),
        Method::Nuslerp => ("NuSLERP", "https://en.wikipedia.org/wiki/Slerp"),
        Method::Multislerp => {
            ("Multi-SLERP", "https://goddard.blog/posts/multislerp-wow-what-a-cool-idea")
        }
        Method::Karcher => ("Karcher mean", "https://en.wikipedia.org/wiki/Fr%C3%A9chet_mean"),
        Method::Nearswap => {
            ("NearSwap", "https://huggingface.co/alchemonaut/QuartetAnemoi-70B-t0.0001")
        }
        Method::Passthrough => ("Passthrough", "https://github.com/arcee-ai/mergekit"),
    }
}

/// The card of a soup named `name` made by `recipe`; `source` is the text of
/// the mergekit configuration it was read from, if it was.
pub fn card(recipe: &Recipe, name: &str, source: Option<&str>) -> String {
    let (title, url) = reference(recipe.method);
    let mut out = String::from("---\n");
    let hub: Vec<String> = recipe
        .models()
        .iter()
        .filter(|p| !p.starts_with('/'))
        .filter_map(|p| ModelId::parse(p).map(|id| id.repo))
        .collect();
    if !hub.is_empty() {
        out.push_str("base_model:\n");
        for repo in &hub {
            out.push_str(&format!("- {}\n", scalar(&Json::from(repo.as_str()))));
        }
    }
    out.push_str("library_name: transformers\ntags:\n- merge\n- modelsoup\n---\n");
    out.push_str(&format!("# {name}\n\n"));
    out.push_str(&format!(
        "This model is a merge of pre-trained models, made with {} by `soup merge`.\n\n",
        if recipe.tool.is_empty() { "modelsoup" } else { recipe.tool.as_str() }
    ));
    out.push_str("## Method\n\n");
    out.push_str(&format!("[{title}]({url})"));
    let base = recipe.base.as_ref().or(recipe.slices.first().and_then(|s| s.base.as_ref()));
    if let Some(b) = base {
        out.push_str(&format!(", with `{}` as the base", b.path));
    }
    out.push_str(".\n\n## Models\n\n");
    if recipe.slices.is_empty() {
        for ingredient in &recipe.ingredients {
            out.push_str(&format!("- {}\n", model_line(ingredient)));
        }
    } else {
        let mut start = 0;
        for (s, slice) in recipe.slices.iter().enumerate() {
            let n = slice.ingredients.first().and_then(|i| i.layers).map_or(0, |[a, b]| b - a);
            out.push_str(&format!("- slice {} (output blocks {start}..{}):\n", s + 1, start + n));
            for ingredient in slice.ingredients.iter().chain(&slice.base) {
                out.push_str(&format!("  - {}\n", model_line(ingredient)));
            }
            start += n;
        }
    }
    for intermediate in &recipe.intermediates {
        let (title, _) = reference(intermediate.recipe.method);
        out.push_str(&format!(
            "- `{}`: an intermediate merge ({title}) of {}\n",
            intermediate.name,
            intermediate
                .recipe
                .models()
                .iter()
                .map(|m| format!("`{m}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let parameters = serde_json::to_value(&recipe.parameters).unwrap_or(Json::Null);
    if parameters.as_object().is_some_and(|m| !m.is_empty()) {
        out.push_str("\n## Parameters\n\n```yaml\n");
        out.push_str(&to_yaml(&parameters));
        out.push_str("```\n");
    }
    out.push_str(
        "\n## Recipe\n\nRebuild this soup with `soup merge --recipe recipe.yaml -o OUT` \
                  (the recipe is also in every weight file's metadata):\n\n```yaml\n",
    );
    out.push_str(&to_yaml(&serde_json::to_value(recipe).unwrap_or(Json::Null)));
    out.push_str("```\n");
    if let Some(source) = source {
        out.push_str("\n## mergekit configuration\n\nRead from this configuration:\n\n```yaml\n");
        out.push_str(source.trim_end());
        out.push_str("\n```\n");
    }
    out
}

/// One model and its own parameters.
fn model_line(ingredient: &Ingredient) -> String {
    let mut line = format!("`{}`", ingredient.path);
    let mut own = serde_json::to_value(ingredient).unwrap_or(Json::Null);
    if let Some(map) = own.as_object_mut() {
        map.remove("path");
        if !map.is_empty() {
            let parts: Vec<String> = map.iter().map(|(k, v)| format!("{k}: {}", flow(v))).collect();
            line.push_str(&format!(" ({})", parts.join(", ")));
        }
    }
    line
}

/// A value in YAML's block style (lists of numbers in flow style), ending with
/// a newline.
pub fn to_yaml(value: &Json) -> String {
    let mut out = String::new();
    block(value, 0, &mut out);
    out
}

fn block(value: &Json, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match value {
        Json::Object(map) if !map.is_empty() => {
            for (key, v) in map {
                out.push_str(&format!("{pad}{}:", scalar(&Json::from(key.as_str()))));
                nested(v, indent, out);
            }
        }
        Json::Array(items) if !items.is_empty() && !items.iter().all(Json::is_number) => {
            for item in items {
                out.push_str(&format!("{pad}-"));
                match item {
                    Json::Object(map) if !map.is_empty() => {
                        // The first key on the dash's line, the rest under it.
                        let mut first = true;
                        for (key, v) in map {
                            if first {
                                out.push_str(&format!(" {}:", scalar(&Json::from(key.as_str()))));
                                first = false;
                            } else {
                                out.push_str(&format!(
                                    "{}  {}:",
                                    pad,
                                    scalar(&Json::from(key.as_str()))
                                ));
                            }
                            nested(v, indent + 2, out);
                        }
                    }
                    other => nested(other, indent, out),
                }
            }
        }
        other => out.push_str(&format!("{pad}{}\n", flow(other))),
    }
}

/// The value after `key:` or `-`: on the same line when it is flat, else on the
/// following lines, indented.
fn nested(value: &Json, indent: usize, out: &mut String) {
    match value {
        Json::Object(map) if !map.is_empty() => {
            out.push('\n');
            block(value, indent + 2, out);
        }
        Json::Array(items) if !items.is_empty() && !items.iter().all(Json::is_number) => {
            out.push('\n');
            block(value, indent + 2, out);
        }
        other => out.push_str(&format!(" {}\n", flow(other))),
    }
}

/// A value on one line: scalars, and lists and maps in flow style.
fn flow(value: &Json) -> String {
    match value {
        Json::Array(items) => {
            format!("[{}]", items.iter().map(flow).collect::<Vec<_>>().join(", "))
        }
        Json::Object(map) => format!(
            "{{{}}}",
            map.iter()
                .map(|(k, v)| format!("{}: {}", scalar(&Json::from(k.as_str())), flow(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        other => scalar(other),
    }
}

/// A scalar: numbers, booleans and null as they are; strings plain when YAML
/// reads them back as the same string, else double-quoted (JSON's escapes are
/// YAML's).
fn scalar(value: &Json) -> String {
    let Json::String(s) = value else { return value.to_string() };
    let plain = !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "/._-@".contains(c))
        && !s.starts_with(['-', '.', '@'])
        && s.parse::<f64>().is_err()
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "on" | "off" | "null" | "y" | "n" | "~"
        );
    if plain {
        s.clone()
    } else {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_yaml_reads_back_as_the_same_value() {
        let value = serde_json::json!({
            "method": "ties",
            "ingredients": [{"path": "/a b/c", "weight": 0.5}, {"path": "x", "density": [0.1, 0.2]}],
            "parameters": {"lambda": [{"filter": "mlp", "value": 1.5}, {"value": 1}], "normalize": true},
            "output": {"chat_template": "{% for m in messages %}\n{{ m }}{% endfor %}", "dtype": "bf16"},
            "odd": ["true", "1e5", "", "-x", "null", ": x"],
            "empty": [],
            "nothing": {}
        });
        let yaml = to_yaml(&value);
        let back: Json = serde_saphyr::from_str(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
        assert_eq!(back, value, "\n{yaml}");
    }
}
