//! The files a recipe writes beside the weights besides the support files
//! copied from a model: the tokenizer of `output.tokenizer`, the chat template
//! of `output.chat_template` written into `tokenizer_config.json`, and, for a
//! recipe built from slices, `config.json` with the output's number of blocks.
//!
//! mergekit builds these with `transformers`; soup edits the JSON files
//! directly (other keys are kept; their order may change) and copies the rest
//! byte for byte.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value as Json;

use super::Recipe;
use crate::error::{Error, Result};

/// Tokenizer files copied from `output.tokenizer`'s model, when present.
pub const TOKENIZER_FILES: [&str; 12] = [
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer.model",
    "added_tokens.json",
    "merges.txt",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "chat_template.jinja",
    "chat_template.json",
];

/// Keys of `config.json` that hold a model's number of blocks, by architecture.
const LAYER_KEYS: [&str; 4] = ["num_hidden_layers", "n_layer", "num_layers", "n_layers"];

/// Largest support file edited in memory (configs and tokenizer configs are a
/// few KiB; `tokenizer.json` is copied, not parsed).
const MAX_EDITED_BYTES: u64 = 64 << 20;

/// ChatML, as written by soup (`<|im_start|>role\ncontent<|im_end|>\n`).
const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' \
+ message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ \
'<|im_start|>assistant\\n' }}{% endif %}";

/// Llama 3's format, as written by soup (`<|start_header_id|>role<|end_header_id|>\n\n
/// content<|eot_id|>`, after the BOS token).
const LLAMA3: &str = "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + \
message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% \
endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' \
}}{% endif %}";

/// A file name and its new contents, or `None` for a support file that must
/// not be copied (a tokenizer file that the tokenizer source lacks).
pub type File = (String, Option<Vec<u8>>);

/// The files `recipe` writes over the support files copied from
/// `support` (the directory they come from, if any), and those it removes
/// from them (a tokenizer comes whole from `tokenizer_source`, never mixed
/// with the support directory's files): `blocks` is the output's
/// number of blocks for a recipe with slices; `model_dir` gives the directory of
/// a model path of the recipe (an intermediate's soup, a Hub snapshot).
pub fn support_files(
    recipe: &Recipe,
    support: Option<&Path>,
    blocks: Option<usize>,
    model_dir: &dyn Fn(&str) -> Result<PathBuf>,
) -> Result<Vec<File>> {
    let mut files: BTreeMap<String, Option<Vec<u8>>> = BTreeMap::new();
    if let (Some(n), Some(dir)) = (blocks, support) {
        let path = dir.join("config.json");
        if path.is_file() {
            let mut config = read_json(&path)?;
            let map = config.as_object_mut().ok_or_else(|| invalid(&path, "not a JSON object"))?;
            let mut set = false;
            for key in LAYER_KEYS {
                if let Some(v) = map.get_mut(key) {
                    *v = Json::from(n);
                    set = true;
                }
            }
            if !set {
                map.insert(LAYER_KEYS[0].to_owned(), Json::from(n));
            }
            files.insert("config.json".to_owned(), Some(pretty(&config)));
        }
    }
    let tokenizer_dir = match &recipe.output.tokenizer {
        Some(model) => {
            let dir = model_dir(model)?;
            let found: Vec<&str> =
                TOKENIZER_FILES.iter().copied().filter(|f| dir.join(f).is_file()).collect();
            if !found.iter().any(|f| f.starts_with("tokenizer")) {
                return Err(invalid(
                    &dir,
                    "has no tokenizer files (tokenizer.json, tokenizer.model, \
                     tokenizer_config.json) to copy as the soup's tokenizer",
                ));
            }
            for name in TOKENIZER_FILES {
                if found.contains(&name) {
                    let path = dir.join(name);
                    let bytes = std::fs::read(&path).map_err(Error::io("read", &path))?;
                    files.insert(name.to_owned(), Some(bytes));
                } else if support.is_some_and(|s| s.join(name).is_file()) {
                    files.insert(name.to_owned(), None);
                }
            }
            Some(dir)
        }
        None => support.map(Path::to_path_buf),
    };
    if let Some(template) = &recipe.output.chat_template {
        let text = match template.as_str() {
            "chatml" => Some(CHATML.to_owned()),
            "llama3" => Some(LLAMA3.to_owned()),
            "auto" => most_common_template(recipe, model_dir)?,
            literal => Some(literal.to_owned()),
        };
        if let Some(text) = text {
            write_template(&text, tokenizer_dir.as_deref(), &mut files)?;
        }
    }
    Ok(files.into_iter().collect())
}

/// Writes `template` into `tokenizer_config.json` (taken from `files` when it is
/// being replaced, else from `dir`), and into `chat_template.jinja` where the
/// soup has one (which `transformers` reads first).
fn write_template(
    template: &str,
    dir: Option<&Path>,
    files: &mut BTreeMap<String, Option<Vec<u8>>>,
) -> Result<()> {
    let name = "tokenizer_config.json";
    let (mut config, path) = match (files.get(name).and_then(Option::as_ref), dir) {
        (Some(bytes), Some(d)) => {
            let path = d.join(name);
            (
                serde_json::from_slice::<Json>(bytes)
                    .map_err(|e| invalid(&path, &e.to_string()))?,
                path,
            )
        }
        (None, Some(d)) if d.join(name).is_file() => (read_json(&d.join(name))?, d.join(name)),
        _ => {
            let at = dir.map_or_else(|| PathBuf::from("the soup"), Path::to_path_buf);
            return Err(invalid(
                &at,
                "has no tokenizer_config.json to write the chat template into (set \
                 tokenizer_source, or copy the support files from a model with a tokenizer)",
            ));
        }
    };
    let map = config.as_object_mut().ok_or_else(|| invalid(&path, "not a JSON object"))?;
    map.insert("chat_template".to_owned(), Json::from(template));
    files.insert(name.to_owned(), Some(pretty(&config)));
    let jinja = "chat_template.jinja";
    if files.get(jinja).is_some_and(Option::is_some)
        || (!files.contains_key(jinja) && dir.is_some_and(|d| d.join(jinja).is_file()))
    {
        files.insert(jinja.to_owned(), Some(template.as_bytes().to_vec()));
    }
    Ok(())
}

/// `chat_template: auto`: the template most of the recipe's models have (the
/// first of those tied), or none when no model has one, as mergekit chooses.
fn most_common_template(
    recipe: &Recipe,
    model_dir: &dyn Fn(&str) -> Result<PathBuf>,
) -> Result<Option<String>> {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for model in recipe.models() {
        let dir = model_dir(model)?;
        let Some(template) = template_of(&dir)? else { continue };
        match counts.iter_mut().find(|(t, _)| *t == template) {
            Some((_, n)) => *n += 1,
            None => counts.push((template, 1)),
        }
    }
    let best = counts.iter().map(|(_, n)| *n).max();
    Ok(counts.into_iter().find(|(_, n)| Some(*n) == best).map(|(t, _)| t))
}

/// A model's chat template: `chat_template.jinja`, else `tokenizer_config.json`'s
/// `chat_template` (a string, or the `default` of a list of named ones),
/// trimmed.
fn template_of(dir: &Path) -> Result<Option<String>> {
    let jinja = dir.join("chat_template.jinja");
    if jinja.is_file() {
        let text = crate::engine::checkpoint::read_bounded(&jinja, MAX_EDITED_BYTES)?;
        return Ok(Some(text.trim().to_owned()));
    }
    let path = dir.join("tokenizer_config.json");
    if !path.is_file() {
        return Ok(None);
    }
    let config = read_json(&path)?;
    let template = match config.get("chat_template") {
        Some(Json::String(t)) => Some(t.clone()),
        Some(Json::Array(named)) => named
            .iter()
            .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
            .and_then(|t| t.get("template")?.as_str().map(str::to_owned)),
        _ => None,
    };
    Ok(template.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()))
}

fn read_json(path: &Path) -> Result<Json> {
    let text = crate::engine::checkpoint::read_bounded(path, MAX_EDITED_BYTES)?;
    serde_json::from_str(&text).map_err(|e| invalid(path, &format!("not valid JSON: {e}")))
}

fn pretty(value: &Json) -> Vec<u8> {
    let mut bytes = serde_json::to_vec_pretty(value).unwrap_or_default();
    bytes.push(b'\n');
    bytes
}

fn invalid(path: &Path, reason: &str) -> Error {
    Error::SupportFile { path: path.to_path_buf(), reason: reason.to_owned() }
}
