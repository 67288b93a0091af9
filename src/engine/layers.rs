//! Layer groups from tensor names, for statistics per layer (`soup angles
//! --per-layer`): the embeddings, each numbered transformer block, and the rest
//! (final norm, head, pooler, classifier).
//!
//! Names follow the Hugging Face conventions: a block is the part of a name up to
//! `layers.N`, `layer.N`, `h.N`, `blocks.N` or `block.N` (`model.layers.3`,
//! `bert.encoder.layer.11`, `transformer.h.0`, `encoder.block.5`), so the encoder
//! and the decoder of a T5, or the two towers of a CLIP, get blocks of their own.
//! Every block is its own group (no contiguous ranges): per-block angles are what
//! layer-wise soups choose coefficients for.

use std::collections::BTreeMap;

/// The segments that, followed by a number, name a transformer block.
const BLOCK_WORDS: [&str; 5] = ["layers", "layer", "h", "blocks", "block"];

/// A group of tensors. Groups order as embeddings, blocks (by prefix, then number),
/// the rest.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LayerGroup {
    /// Token, position and patch embeddings (`embed_tokens`, `embeddings`, `wte`,
    /// `wpe`, T5's `shared`).
    Embeddings,
    /// A numbered block: `prefix.number`, e.g. `model.layers` and 3.
    Block {
        /// The name up to the block number, e.g. `model.layers`.
        prefix: String,
        /// The block number.
        number: usize,
    },
    /// Everything else: final norms, the head, poolers, classifiers.
    Rest,
}

impl LayerGroup {
    /// The group of a tensor name.
    pub fn of(name: &str) -> LayerGroup {
        let parts: Vec<&str> = name.split('.').collect();
        for (i, pair) in parts.windows(2).enumerate() {
            if BLOCK_WORDS.contains(&pair[0]) {
                if let Ok(number) = pair[1].parse::<usize>() {
                    return LayerGroup::Block { prefix: parts[..=i].join("."), number };
                }
            }
        }
        let embedding =
            parts.iter().any(|p| p.contains("embed") || matches!(*p, "wte" | "wpe" | "shared"));
        if embedding {
            LayerGroup::Embeddings
        } else {
            LayerGroup::Rest
        }
    }

    /// A short label: `embeddings`, `model.layers.3`, `rest`.
    pub fn label(&self) -> String {
        match self {
            LayerGroup::Embeddings => "embeddings".to_owned(),
            LayerGroup::Block { prefix, number } => format!("{prefix}.{number}"),
            LayerGroup::Rest => "rest".to_owned(),
        }
    }
}

/// The groups present among `names`, in group order, and each name's index in
/// that list.
pub fn group_names<'a>(
    names: impl IntoIterator<Item = &'a str>,
) -> (Vec<LayerGroup>, BTreeMap<&'a str, usize>) {
    let of: Vec<(&str, LayerGroup)> = names.into_iter().map(|n| (n, LayerGroup::of(n))).collect();
    let mut groups: Vec<LayerGroup> = of.iter().map(|(_, g)| g.clone()).collect();
    groups.sort();
    groups.dedup();
    let index =
        of.into_iter().map(|(n, g)| (n, groups.binary_search(&g).unwrap_or_default())).collect();
    (groups, index)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(prefix: &str, number: usize) -> LayerGroup {
        LayerGroup::Block { prefix: prefix.to_owned(), number }
    }

    #[test]
    fn hugging_face_names_fall_into_their_groups() {
        let cases = [
            ("model.embed_tokens.weight", LayerGroup::Embeddings),
            ("bert.embeddings.LayerNorm.weight", LayerGroup::Embeddings),
            ("transformer.wte.weight", LayerGroup::Embeddings),
            ("shared.weight", LayerGroup::Embeddings),
            ("model.layers.12.mlp.up_proj.weight", block("model.layers", 12)),
            ("bert.encoder.layer.3.output.dense.bias", block("bert.encoder.layer", 3)),
            ("transformer.h.0.attn.c_attn.weight", block("transformer.h", 0)),
            ("decoder.block.5.layer.0.SelfAttention.q.weight", block("decoder.block", 5)),
            ("blocks.7.norm1.weight", block("blocks", 7)),
            ("model.norm.weight", LayerGroup::Rest),
            ("lm_head.weight", LayerGroup::Rest),
            ("classifier.bias", LayerGroup::Rest),
        ];
        for (name, group) in cases {
            assert_eq!(LayerGroup::of(name), group, "{name}");
        }
    }

    #[test]
    fn groups_order_embeddings_blocks_by_number_then_rest() {
        let names =
            ["lm_head.weight", "m.layers.10.w", "m.layers.2.w", "m.embed.weight", "m.layers.2.b"];
        let (groups, index) = group_names(names);
        let labels: Vec<String> = groups.iter().map(LayerGroup::label).collect();
        assert_eq!(labels, ["embeddings", "m.layers.2", "m.layers.10", "rest"]);
        assert_eq!(index["m.layers.2.b"], 1);
        assert_eq!(index["lm_head.weight"], 3);
    }
}
