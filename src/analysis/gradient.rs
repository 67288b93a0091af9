//! The gradient of a loss with respect to a soup's mixing coefficients, from the
//! gradient with respect to its weights, without holding any model in memory.
//!
//! A soup is `θ = Σᵢ wᵢ·θᵢ` (per layer group, for layer-wise coefficients), so by
//! the chain rule `∂L/∂wᵢ = ⟨∇θL, θᵢ⟩`, the sum running over the tensors whose
//! weights `wᵢ` mixes. The user's evaluator computes `∇θL` once, by one backward
//! pass at the soup, and writes it to a safetensors file; this pass streams that
//! file and the k ingredients once and takes the k dot products per group (plus
//! `‖∇θL‖²`). It is the same kind of pass as the angles' Gram pass
//! ([`crate::analysis::gram`]), with the same guarantees: inputs widened exactly
//! to f64 a tile at a time, each product summed in f64 with eight lanes, each
//! chunk's partial sums added to its group's totals in chunk order, so the result
//! is bit-identical at any thread count; consumed pages are released as it goes.
//!
//! The gradient file comes from another program and is checked as untrusted
//! input before any of its data is used: its header is validated like any
//! checkpoint's, every tensor must be a float tensor of the soup with the soup's
//! shape, in F32, BF16, F16 or F64, and every value must be finite. A tensor the
//! file leaves out has a zero gradient.

use std::path::Path;

use crate::analysis::chunks::{Pass, PassTensor};
use crate::analysis::gram::{dot, TILE};
use crate::engine::checkpoint::Checkpoint;
use crate::engine::dtype::FloatDtype;
use crate::engine::execute::RunOptions;
use crate::engine::kernel::widen_into;
use crate::engine::stream;
use crate::error::{Error, Result};

/// What one pass over a gradient file found.
#[derive(Debug, Clone, PartialEq)]
pub struct GradientDots {
    /// `dots[g][i]`: `⟨∇θL, θᵢ⟩` over the tensors of group `g`, i.e. `∂L/∂wᵢ`
    /// for group `g`'s weight of ingredient `i` (0 for a group the file has no
    /// tensor of).
    pub dots: Vec<Vec<f64>>,
    /// `‖∇θL‖²` over every tensor of the file.
    pub norm_sq: f64,
    /// Tensors in the file.
    pub tensors: usize,
    /// Elements in the file's tensors.
    pub elements: u64,
}

/// Streams the gradient file at `path` and `ingredients` once and returns the dot
/// products of the gradient with every ingredient, per group of `groups`, where
/// `group_of` puts a tensor (by name) in one group or none. `run.progress` is told
/// the bytes read per chunk.
///
/// Errors: [`Error::Gradient`] when the file is missing or not a regular file,
/// names a tensor the ingredients lack or do not average, has another shape or a
/// dtype that is not a float, or holds a NaN or an infinity (naming the tensor
/// and the element); the checkpoint errors of any malformed file.
pub fn gradient_dots(
    path: &Path,
    ingredients: &[Checkpoint],
    groups: usize,
    group_of: &dyn Fn(&str) -> Option<usize>,
    run: &RunOptions,
) -> Result<GradientDots> {
    if ingredients.is_empty() {
        return Err(Error::NoIngredients);
    }
    let gradient = open(path)?;
    let tensors = plan(path, &gradient, ingredients, groups, group_of)?;
    let k = ingredients.len();
    let inputs: Vec<&Checkpoint> = std::iter::once(&gradient).chain(ingredients).collect();
    let mut out = GradientDots {
        dots: vec![vec![0.0; k]; groups],
        norm_sq: 0.0,
        tensors: gradient.tensors().len(),
        elements: tensors.iter().map(|t| t.numel as u64).sum(),
    };
    let pass = Pass::new(inputs, tensors, run.chunk_elements);
    let in_order = |i: usize, partial: Vec<f64>| {
        let Some((norm_sq, dots)) = partial.split_last() else { return };
        out.norm_sq += norm_sq;
        if let Some(g) = pass.tensors[pass.chunks[i].tensor].group {
            for (total, d) in out.dots[g].iter_mut().zip(dots) {
                *total += d;
            }
        }
    };
    stream::run(
        run.threads,
        pass.chunks.len(),
        run.cancel,
        pass.watched(),
        || vec![vec![0.0; TILE]; pass.inputs()],
        |i, tiles| {
            let (chunk, read) = (pass.chunks[i], pass.read(i));
            let bytes: Vec<(FloatDtype, &[u8])> = read.iter().map(|(d, b)| (*d, &**b)).collect();
            let mut partial = vec![0.0; k + 1];
            if let Some((at, value)) = chunk_sums(&bytes, tiles, &mut partial) {
                let element = chunk.start + at;
                let name = &pass.tensors[chunk.tensor].name;
                let reason = format!("tensor {name:?} holds {value} at element {element}");
                return Err(Error::Gradient { path: path.to_owned(), reason });
            }
            if let Some(progress) = run.progress {
                progress(bytes.iter().map(|(_, b)| b.len() as u64).sum());
            }
            Ok(partial)
        },
        in_order,
        |range| pass.release(range),
    )?;
    if out.dots.iter().flatten().chain([&out.norm_sq]).any(|v| !v.is_finite()) {
        let reason = "its products with the ingredients are not finite: an ingredient holds \
                      NaN or infinite values (`soup inspect --check-values` finds them), or \
                      the gradient's values are too large"
            .to_owned();
        return Err(Error::Gradient { path: path.to_owned(), reason });
    }
    Ok(out)
}

/// Opens the gradient file: a regular file (a missing one is the evaluator's
/// mistake, said so), read like any weights file.
fn open(path: &Path) -> Result<Checkpoint> {
    let reason = match std::fs::metadata(path) {
        Ok(meta) if meta.is_file() => return Checkpoint::open_files(path, &Default::default()),
        Ok(_) => "not a regular file".to_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            "the evaluator wrote no gradient (it must write one to $SOUP_GRAD, or {grad}, \
             whenever that is set)"
                .to_owned()
        }
        Err(e) => return Err(Error::io("open", path)(e)),
    };
    Err(Error::Gradient { path: path.to_owned(), reason })
}

/// The tensors of the pass, in the soup's order, after checking every tensor of
/// the gradient file against the soup (the first ingredient).
fn plan(
    path: &Path,
    gradient: &Checkpoint,
    ingredients: &[Checkpoint],
    groups: usize,
    group_of: &dyn Fn(&str) -> Option<usize>,
) -> Result<Vec<PassTensor>> {
    let first = &ingredients[0];
    let bad = |reason: String| Error::Gradient { path: path.to_owned(), reason };
    let mut present = vec![None; first.tensors().len()];
    for (g, entry) in gradient.tensors().iter().enumerate() {
        let name = &entry.name;
        let Some(m) = first.position(name) else {
            return Err(bad(format!("tensor {name:?} is not a tensor of the soup")));
        };
        let model = &first.tensors()[m];
        if FloatDtype::from_safetensors(model.dtype).is_none() {
            return Err(bad(format!(
                "tensor {name:?} is {} in the soup, which is copied, not mixed: it has no \
                 gradient",
                model.dtype
            )));
        }
        let Some(dtype) = FloatDtype::from_safetensors(entry.dtype) else {
            return Err(bad(format!(
                "tensor {name:?} is {}; a gradient must be F32, BF16, F16 or F64",
                entry.dtype
            )));
        };
        if entry.shape != model.shape {
            return Err(bad(format!(
                "tensor {name:?} has shape {:?}, but the soup's is {:?}",
                entry.shape, model.shape
            )));
        }
        present[m] = Some((dtype, g));
    }
    let mut tensors = Vec::new();
    for (entry, grad) in first.tensors().iter().zip(present) {
        let Some(grad) = grad else { continue };
        let mut sources = vec![grad];
        for ck in ingredients {
            // The ingredients were checked compatible when the search began.
            let source = ck
                .position(&entry.name)
                .and_then(|i| Some((FloatDtype::from_safetensors(ck.tensors()[i].dtype)?, i)));
            let Some(source) = source else {
                return Err(bad(format!(
                    "tensor {:?} is not a float tensor of {}",
                    entry.name,
                    ck.path().display()
                )));
            };
            sources.push(source);
        }
        let group = group_of(&entry.name).filter(|&g| g < groups);
        tensors.push(PassTensor { name: entry.name.clone(), numel: entry.numel(), group, sources });
    }
    Ok(tensors)
}

/// The sums of one chunk, compiled once per instruction set; the position and
/// value of the chunk's first non-finite gradient element, if any.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx2+fma+f16c+bmi1+bmi2+lzcnt+popcnt+sse4.2",
    "x86_64+avx2+fma+f16c+bmi1+bmi2+lzcnt+popcnt+sse4.2",
    "x86_64+sse4.2+popcnt",
))]
fn chunk_sums(
    inputs: &[(FloatDtype, &[u8])],
    tiles: &mut [Vec<f64>],
    partial: &mut [f64],
) -> Option<(usize, f64)> {
    sums(inputs, tiles, partial)
}

/// The body of [`chunk_sums`]: tile by tile, widen the gradient and every
/// ingredient, check the gradient is finite, and add `⟨g, θᵢ⟩` and `⟨g, g⟩` to
/// `partial` (`[⟨g, θ₀⟩, …, ⟨g, θₖ₋₁⟩, ‖g‖²]`).
#[inline(always)]
fn sums(
    inputs: &[(FloatDtype, &[u8])],
    tiles: &mut [Vec<f64>],
    partial: &mut [f64],
) -> Option<(usize, f64)> {
    let len = inputs.first().map_or(0, |(d, b)| b.len() / d.size());
    let (grad, rest) = tiles.split_first_mut()?;
    let (norm_sq, dots) = partial.split_last_mut()?;
    for start in (0..len).step_by(TILE) {
        let n = TILE.min(len - start);
        for ((dtype, bytes), tile) in
            inputs.iter().zip(std::iter::once(&mut *grad).chain(&mut *rest))
        {
            let size = dtype.size();
            widen_into(*dtype, &bytes[start * size..(start + n) * size], &mut tile[..n]);
        }
        let g = &grad[..n];
        if let Some(at) = g.iter().position(|x| !x.is_finite()) {
            return Some((start + at, g[at]));
        }
        *norm_sq += dot(g, g);
        for (d, theta) in dots.iter_mut().zip(rest.iter()) {
            *d += dot(g, &theta[..n]);
        }
    }
    None
}
