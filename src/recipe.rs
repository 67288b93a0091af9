//! The recipe recorded in every output file's `__metadata__`, so any soup can be
//! audited and rebuilt: which ingredients, which weights, which method, which tool.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The `__metadata__` key under which the recipe's JSON is stored.
pub const METADATA_KEY: &str = "modelsoup.recipe";

/// How a soup was made.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    /// `modelsoup` and its version.
    pub tool: String,
    /// The method, e.g. `uniform` or `weighted`.
    pub method: String,
    /// The ingredients' paths as given.
    pub ingredients: Vec<String>,
    /// One weight per ingredient, as applied (after normalising).
    pub weights: Vec<f64>,
    /// The output dtype, when one was forced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dtype: Option<String>,
}

impl Recipe {
    /// A recipe stamped with this build's version.
    pub fn new(
        method: &str,
        ingredients: Vec<String>,
        weights: Vec<f64>,
        dtype: Option<String>,
    ) -> Self {
        Recipe {
            tool: format!("modelsoup {}", env!("CARGO_PKG_VERSION")),
            method: method.to_owned(),
            ingredients,
            weights,
            dtype,
        }
    }

    /// The `__metadata__` entries that carry this recipe.
    pub fn to_metadata(&self) -> BTreeMap<String, String> {
        // Serialising plain strings and finite floats cannot fail.
        let json = serde_json::to_string(self).unwrap_or_default();
        BTreeMap::from([(METADATA_KEY.to_owned(), json)])
    }

    /// Reads a recipe back from a file's `__metadata__`, if it has one.
    pub fn from_metadata(metadata: &BTreeMap<String, String>) -> Option<Self> {
        serde_json::from_str(metadata.get(METADATA_KEY)?).ok()
    }
}
