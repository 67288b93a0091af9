//! Coefficient groups for layer-wise soups: which weight vector applies to which
//! tensor.
//!
//! Tensors are classified by [`crate::engine::layers::LayerGroup`] (embeddings, numbered
//! transformer blocks, the rest); the blocks, in order, are then split into a few
//! contiguous ranges, since a coefficient vector per block would give CMA-ES more
//! dimensions than an evaluation budget can search. A model of unknown layout
//! (no numbered blocks) gets a valid, if coarse, grouping.

use std::collections::BTreeMap;

use crate::engine::layers::{group_names, LayerGroup};

/// A partition of a checkpoint's tensors into named groups.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grouping {
    /// Group names, in model order.
    pub names: Vec<String>,
    /// Tensor name → index into `names`.
    pub of_tensor: BTreeMap<String, usize>,
}

impl Grouping {
    /// One group, `all`, holding every tensor: per-model coefficients.
    pub fn single<'a>(tensors: impl IntoIterator<Item = &'a str>) -> Grouping {
        let of_tensor = tensors.into_iter().map(|t| (t.to_owned(), 0)).collect();
        Grouping { names: vec!["all".to_owned()], of_tensor }
    }

    /// Embeddings, the blocks split into `ranges` contiguous ranges, and the rest.
    /// The ranges are as even as possible, their sizes differing by at most one
    /// and the larger ones first (6 blocks in 4: 0-1, 2-3, 4, 5); fewer ranges
    /// when there are fewer blocks. Empty groups are left out.
    pub fn by_layer<'a>(tensors: impl IntoIterator<Item = &'a str>, ranges: usize) -> Grouping {
        let (layers, index) = group_names(tensors);
        let blocks: Vec<usize> =
            (0..layers.len()).filter(|&g| matches!(layers[g], LayerGroup::Block { .. })).collect();
        let ranges = ranges.clamp(1, blocks.len().max(1));
        // Each layer group's coefficient group: embeddings, block ranges, rest.
        let mut target = vec![0; layers.len()];
        let mut names = Vec::new();
        let mut push = |name: String| {
            names.push(name);
            names.len() - 1
        };
        if let Some(g) = layers.iter().position(|l| *l == LayerGroup::Embeddings) {
            target[g] = push("embeddings".to_owned());
        }
        let (size, larger) = (blocks.len() / ranges, blocks.len() % ranges);
        let bound = |r: usize| r * size + r.min(larger);
        for r in 0..ranges {
            let members = &blocks[bound(r)..bound(r + 1)];
            let (Some(&first), Some(&last)) = (members.first(), members.last()) else { continue };
            let label = match (&layers[first], &layers[last]) {
                _ if first == last => layers[first].label(),
                (
                    LayerGroup::Block { prefix: p, number: a },
                    LayerGroup::Block { prefix: q, number: b },
                ) if p == q => format!("{p}.{a}-{b}"),
                (a, b) => format!("{} to {}", a.label(), b.label()),
            };
            let id = push(label);
            for &g in members {
                target[g] = id;
            }
        }
        if let Some(g) = layers.iter().position(|l| *l == LayerGroup::Rest) {
            target[g] = push("head".to_owned());
        }
        let of_tensor = index.into_iter().map(|(t, g)| (t.to_owned(), target[g])).collect();
        Grouping { names, of_tensor }
    }

    /// The group of `tensor` (the last group, `head`, for a name it has not seen).
    pub fn group(&self, tensor: &str) -> usize {
        self.of_tensor.get(tensor).copied().unwrap_or(self.names.len().saturating_sub(1))
    }

    /// How many tensors each group holds, for display.
    pub fn sizes(&self) -> Vec<usize> {
        let mut sizes = vec![0; self.names.len()];
        for &g in self.of_tensor.values() {
            sizes[g] += 1;
        }
        sizes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn llama(blocks: usize) -> Vec<String> {
        let mut names = vec!["model.embed_tokens.weight".to_owned()];
        for b in 0..blocks {
            names.push(format!("model.layers.{b}.self_attn.q_proj.weight"));
            names.push(format!("model.layers.{b}.mlp.up_proj.weight"));
        }
        names.extend(["model.norm.weight".to_owned(), "lm_head.weight".to_owned()]);
        names
    }

    #[test]
    fn llama_blocks_split_into_contiguous_ranges() {
        let names = llama(10);
        let g = Grouping::by_layer(names.iter().map(String::as_str), 4);
        let want = [
            "embeddings",
            "model.layers.0-2",
            "model.layers.3-5",
            "model.layers.6-7",
            "model.layers.8-9",
            "head",
        ];
        assert_eq!(g.names, want);
        assert_eq!(g.group("model.embed_tokens.weight"), 0);
        assert_eq!(g.group("model.layers.2.mlp.up_proj.weight"), 1);
        assert_eq!(g.group("model.layers.5.mlp.up_proj.weight"), 2);
        assert_eq!(g.group("model.layers.9.mlp.up_proj.weight"), 4);
        assert_eq!(g.group("lm_head.weight"), 5);
        assert_eq!(g.sizes(), [1, 6, 6, 4, 4, 2]);
    }

    #[test]
    fn ranges_are_even_and_larger_first() {
        let ranges = |blocks: usize, n: usize| -> Vec<usize> {
            let names = llama(blocks);
            let g = Grouping::by_layer(names.iter().map(String::as_str), n);
            // Two tensors per block; drop the embeddings and the head.
            g.sizes()[1..g.names.len() - 1].iter().map(|s| s / 2).collect()
        };
        assert_eq!(ranges(6, 4), [2, 2, 1, 1]);
        assert_eq!(ranges(24, 3), [8, 8, 8]);
        assert_eq!(ranges(7, 3), [3, 2, 2]);
        assert_eq!(ranges(3, 8), [1, 1, 1]);
        for blocks in 1..30 {
            for n in 1..10 {
                let sizes = ranges(blocks, n);
                assert_eq!(sizes.iter().sum::<usize>(), blocks);
                assert!(sizes.windows(2).all(|w| w[0] >= w[1] && w[0] - w[1] <= 1), "{sizes:?}");
            }
        }
    }

    #[test]
    fn other_layouts_and_fallbacks() {
        let bert = [
            "bert.embeddings.word_embeddings.weight",
            "bert.encoder.layer.0.output.dense.weight",
            "bert.encoder.layer.1.output.dense.weight",
            "classifier.weight",
        ];
        let g = Grouping::by_layer(bert, 8);
        assert_eq!(g.names, ["embeddings", "bert.encoder.layer.0", "bert.encoder.layer.1", "head"]);
        let gpt2 = [
            "transformer.wte.weight",
            "transformer.h.0.attn.c_attn.weight",
            "transformer.ln_f.weight",
        ];
        assert_eq!(Grouping::by_layer(gpt2, 2).names, ["embeddings", "transformer.h.0", "head"]);
        let unknown = ["fc1.weight", "fc2.weight"];
        assert_eq!(Grouping::by_layer(unknown, 4).names, ["head"]);
        let single = Grouping::single(unknown);
        assert_eq!((single.names.len(), single.group("fc2.weight")), (1, 0));
    }
}
