//! mergekit configurations read into [`Recipe`]s.

use super::Recipe;

/// Translates a parsed mergekit configuration into a recipe, or says which key
/// cannot be honoured.
pub fn translate(_config: &serde_json::Value) -> Result<Recipe, String> {
    Err("mergekit configurations are not read yet".to_owned())
}
