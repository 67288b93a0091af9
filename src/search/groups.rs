//! Layer groups for layer-wise soups: which coefficient vector applies to which
//! tensor, decided from tensor names alone.
//!
//! Transformer checkpoints name their blocks `….layers.N.…` (Llama, Mistral),
//! `….layer.N.…` (BERT, ViT), `….h.N.…` (GPT-2), `….blocks.N.…` or `….block.N.…`
//! (T5, CLIP). Tensors are grouped into `embeddings` (everything before the first
//! block that names an embedding), the blocks split by number into contiguous
//! ranges, and `head` (everything else: final norms, poolers, classifiers, LM
//! heads). Names that match no pattern all go to `head`, so a model of unknown
//! layout still gets a valid, if coarse, grouping.

use std::collections::BTreeMap;

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

    /// Embeddings, the blocks in `ranges` contiguous ranges of block numbers (as
    /// even as possible; fewer when there are fewer blocks), and the head. Empty
    /// groups are left out.
    pub fn by_layer<'a>(tensors: impl IntoIterator<Item = &'a str>, ranges: usize) -> Grouping {
        let tensors: Vec<&str> = tensors.into_iter().collect();
        let blocks: Vec<Option<usize>> = tensors.iter().map(|t| block_number(t)).collect();
        let count = blocks.iter().flatten().max().map_or(0, |&m| m + 1);
        let ranges = ranges.clamp(1, count.max(1));
        let range_of = |b: usize| b * ranges / count.max(1);
        let mut keys: Vec<(u8, usize)> = Vec::with_capacity(tensors.len());
        for (t, b) in tensors.iter().zip(&blocks) {
            keys.push(match b {
                Some(b) => (1, range_of(*b)),
                None if t.contains("embed") || t.contains("wte") || t.contains("wpe") => (0, 0),
                None => (2, 0),
            });
        }
        let mut present: Vec<(u8, usize)> = keys.clone();
        present.sort_unstable();
        present.dedup();
        let names: Vec<String> = present
            .iter()
            .map(|&(kind, r)| match kind {
                0 => "embeddings".to_owned(),
                1 => {
                    let first = (0..count).find(|&b| range_of(b) == r).unwrap_or(0);
                    let last = (0..count).rev().find(|&b| range_of(b) == r).unwrap_or(first);
                    if first == last {
                        format!("block {first}")
                    } else {
                        format!("blocks {first}-{last}")
                    }
                }
                _ => "head".to_owned(),
            })
            .collect();
        let of_tensor = tensors
            .iter()
            .zip(&keys)
            .map(|(t, key)| ((*t).to_owned(), present.binary_search(key).unwrap_or(0)))
            .collect();
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

/// The block number in names like `model.layers.12.mlp.up_proj.weight`.
fn block_number(name: &str) -> Option<usize> {
    let parts: Vec<&str> = name.split('.').collect();
    parts.windows(2).find_map(|w| {
        matches!(w[0], "layers" | "layer" | "h" | "blocks" | "block")
            .then(|| w[1].parse().ok())
            .flatten()
    })
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
        assert_eq!(
            g.names,
            ["embeddings", "blocks 0-2", "blocks 3-4", "blocks 5-7", "blocks 8-9", "head"]
        );
        assert_eq!(g.group("model.embed_tokens.weight"), 0);
        assert_eq!(g.group("model.layers.4.mlp.up_proj.weight"), 2);
        assert_eq!(g.group("model.layers.9.mlp.up_proj.weight"), 4);
        assert_eq!(g.group("lm_head.weight"), 5);
        assert_eq!(g.sizes(), [1, 6, 4, 6, 4, 2]);
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
        assert_eq!(g.names, ["embeddings", "block 0", "block 1", "head"]);
        let gpt2 = [
            "transformer.wte.weight",
            "transformer.h.0.attn.c_attn.weight",
            "transformer.ln_f.weight",
        ];
        assert_eq!(Grouping::by_layer(gpt2, 2).names, ["embeddings", "block 0", "head"]);
        let unknown = ["fc1.weight", "fc2.weight"];
        assert_eq!(Grouping::by_layer(unknown, 4).names, ["head"]);
        let single = Grouping::single(unknown);
        assert_eq!((single.names.len(), single.group("fc2.weight")), (1, 0));
    }
}
