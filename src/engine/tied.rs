//! Tied word embeddings: models whose `config.json` sets `tie_word_embeddings` (the
//! `transformers` default) use their input embedding as the output head, and
//! checkpoints may store the head, or leave it out and let the loader tie it.
//!
//! When ingredients disagree — some store the head, some do not — the head of
//! those that leave it out *is* their input embedding, so it is read from there.
//! The first ingredient decides the output's tensors: when it leaves the head out,
//! the head is not invented, and the others' copies are set aside. Nothing changes
//! when every ingredient stores both (both are merged) or neither does, or when a
//! model's config does not tie (a missing head is then a real difference).
//!
//! A PyTorch file may store a tied head as a second name on the embedding's very
//! storage. safetensors cannot alias, so writing both would duplicate the matrix;
//! when the config ties them, such a head is left out, as `save_pretrained` does
//! (the loader ties it back). A head stored as its own copy is kept.

use std::path::Path;

use crate::engine::checkpoint::{Checkpoint, TensorEntry};
use crate::engine::layers::LayerGroup;

/// Output heads that tie to the input embedding, by name.
const HEADS: [&str; 2] = ["lm_head.weight", "embed_out.weight"];

/// Whether the config in `dir` ties the embeddings (`tie_word_embeddings`, true
/// when absent as in `transformers`); `None` without a readable config.
fn ties_embeddings(dir: Option<&Path>) -> Option<bool> {
    let text = std::fs::read_to_string(dir?.join("config.json")).ok()?;
    let config: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some(config.get("tie_word_embeddings").and_then(serde_json::Value::as_bool).unwrap_or(true))
}

/// The input embedding a head of `shape` ties to: the one embedding matrix of
/// that shape.
fn input_embedding<'a>(ck: &'a Checkpoint, shape: &[usize]) -> Option<&'a TensorEntry> {
    let mut found = ck
        .tensors()
        .iter()
        .filter(|t| t.shape == shape && LayerGroup::of(&t.name) == LayerGroup::Embeddings);
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

/// `ck` without heads that are a second name on the input embedding's bytes, when
/// its config ties them.
fn without_aliased_heads(ck: &Checkpoint) -> Checkpoint {
    let aliased = |head: &TensorEntry| {
        input_embedding(ck, &head.shape).is_some_and(|e| {
            let same = |t: &TensorEntry| (t.shard, t.offset, t.len, t.strided, t.computed, t.dtype);
            e.name != head.name && same(e) == same(head)
        })
    };
    let drop: Vec<&str> = HEADS.into_iter().filter(|h| ck.get(h).is_some_and(aliased)).collect();
    if drop.is_empty() || ties_embeddings(ck.directory()) != Some(true) {
        return ck.clone();
    }
    ck.with_tensors(
        ck.tensors().iter().filter(|t| !drop.contains(&t.name.as_str())).cloned().collect(),
    )
}

/// The ingredients with tied heads reconciled as the module describes; the
/// others are returned unchanged.
pub fn reconcile(ingredients: &[Checkpoint]) -> Vec<Checkpoint> {
    let ingredients: Vec<Checkpoint> = ingredients.iter().map(without_aliased_heads).collect();
    let mut out = ingredients.clone();
    let Some(first) = ingredients.first() else { return out };
    for head in HEADS {
        let holders: Vec<bool> = ingredients.iter().map(|ck| ck.get(head).is_some()).collect();
        if holders.iter().all(|&h| h) || !holders.iter().any(|&h| h) {
            continue;
        }
        let tied = |ck: &Checkpoint| ties_embeddings(ck.directory()) == Some(true);
        if let Some(first_head) = first.get(head) {
            let shape = first_head.shape.clone();
            for ck in out.iter_mut().filter(|ck| ck.get(head).is_none()) {
                if !tied(ck) {
                    continue;
                }
                if let Some(embedding) = input_embedding(ck, &shape) {
                    let alias = TensorEntry { name: head.to_owned(), ..embedding.clone() };
                    let mut entries = ck.tensors().to_vec();
                    entries.push(alias);
                    *ck = ck.with_tensors(entries);
                }
            }
        } else if tied(first) {
            for ck in out.iter_mut().filter(|ck| ck.get(head).is_some() && tied(ck)) {
                let entries = ck.tensors().iter().filter(|t| t.name != head).cloned().collect();
                *ck = ck.with_tensors(entries);
            }
        }
    }
    out
}
