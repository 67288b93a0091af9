//! Demo models as real checkpoints: `model.safetensors` (F32, one `fcN.weight` /
//! `fcN.bias` pair per layer) beside a `config.json` that names the layer widths
//! and the data [`Spec`], so an evaluator can rebuild the network and its data
//! from the directory alone, as a user's evaluator does with `from_pretrained`.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use serde::{Deserialize, Serialize};

use super::data::Spec;
use super::mlp::{Dense, Grad, Mlp};

/// `model_type` in config.json.
const MODEL_TYPE: &str = "modelsoup-demo-mlp";

/// The config.json of a demo checkpoint.
#[derive(Debug, Serialize, Deserialize)]
struct Config {
    model_type: String,
    sizes: Vec<usize>,
    task: Spec,
}

/// Writes `model` into the new directory `dir`.
pub fn save(model: &Mlp, spec: &Spec, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let layers: Vec<(&[f32], &[f32])> =
        model.layers.iter().map(|l| (l.w.as_slice(), l.b.as_slice())).collect();
    write_layers(model, &layers, &dir.join("model.safetensors"))?;
    let config = Config { model_type: MODEL_TYPE.to_owned(), sizes: model.sizes(), task: *spec };
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&config)? + "\n")?;
    Ok(())
}

/// Writes a gradient of `model`'s loss (one weight and bias gradient per layer)
/// to the safetensors file `path`, under the checkpoint's tensor names.
pub fn save_gradient(model: &Mlp, gradient: &[Grad], path: &Path) -> anyhow::Result<()> {
    let layers: Vec<(&[f32], &[f32])> =
        gradient.iter().map(|(w, b)| (w.as_slice(), b.as_slice())).collect();
    write_layers(model, &layers, path).with_context(|| format!("cannot write {}", path.display()))
}

/// `fcN.weight` and `fcN.bias` for each of `layers` (weights and biases shaped
/// like `model`'s), F32, into the file `path`.
fn write_layers(model: &Mlp, layers: &[(&[f32], &[f32])], path: &Path) -> anyhow::Result<()> {
    let bytes = |v: &[f32]| v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>();
    let mut owned = Vec::new();
    for (n, (layer, (w, b))) in model.layers.iter().zip(layers).enumerate() {
        let outputs = layer.b.len();
        owned.push((format!("fc{n}.weight"), vec![outputs, layer.inputs], bytes(w)));
        owned.push((format!("fc{n}.bias"), vec![outputs], bytes(b)));
    }
    let views = owned
        .iter()
        .map(|(name, shape, data)| {
            Ok((name.as_str(), TensorView::new(Dtype::F32, shape.clone(), data)?))
        })
        .collect::<Result<Vec<_>, safetensors::SafeTensorError>>()?;
    let metadata = HashMap::from([("format".to_owned(), "pt".to_owned())]);
    safetensors::serialize_to_file(views, Some(metadata), path)?;
    Ok(())
}

/// Reads the model and data spec in `dir` (a soup written by `soup` included).
pub fn load(dir: &Path) -> anyhow::Result<(Mlp, Spec)> {
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path)
        .with_context(|| format!("cannot read {}", config_path.display()))?;
    let config: Config = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a demo config", config_path.display()))?;
    if config.model_type != MODEL_TYPE {
        bail!("{} is not a {MODEL_TYPE} checkpoint", dir.display());
    }
    let path = dir.join("model.safetensors");
    let buffer = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let file = SafeTensors::deserialize(&buffer)
        .with_context(|| format!("{} is not a safetensors file", path.display()))?;
    let read = |name: &str, len: usize| -> anyhow::Result<Vec<f32>> {
        let view = file.tensor(name).with_context(|| format!("{}: {name}", path.display()))?;
        if view.dtype() != Dtype::F32 || view.data().len() != 4 * len {
            bail!("{}: {name} is not F32 with {len} values", path.display());
        }
        let floats =
            view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        Ok(floats.collect())
    };
    let layers = config
        .sizes
        .windows(2)
        .enumerate()
        .map(|(n, pair)| {
            Ok(Dense {
                w: read(&format!("fc{n}.weight"), pair[0] * pair[1])?,
                b: read(&format!("fc{n}.bias"), pair[1])?,
                inputs: pair[0],
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((Mlp { layers }, config.task))
}
