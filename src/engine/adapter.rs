//! LoRA adapters as ingredients: a directory that `peft` wrote
//! (`adapter_config.json` + `adapter_model.safetensors`, or `adapter_model.bin`)
//! read as the full model it makes of its base.
//!
//! Souping adapters means averaging their *merged* deltas ΔW = s·B·A (the mean of
//! products is not the product of means), so an adapter is opened as its base
//! with every adapted matrix replaced by a computed tensor `W₀ + s·B·A`, and every
//! tensor the adapter saves whole (`modules_to_save`, trained biases) taking the
//! base's place. Everything downstream — every merge method, the searches,
//! angles, convert — reads it through [`Checkpoint::bytes`] like any checkpoint
//! and never learns it was computed.
//!
//! **What is computed.** For a `Linear` layer, `W₀ + s·(B·A)` with `B` of
//! `out × r` and `A` of `r × in`; with `fan_in_fan_out` (GPT-2's `Conv1D`) and for
//! an `Embedding` (`lora_embedding_A` of `r × num`, `lora_embedding_B` of
//! `dim × r`) the stored matrix is the transpose, `W₀ + s·(B·A)ᵀ`. `s` is
//! `α/r`, or `α/√r` with `use_rslora`, with `r` and `α` per module from
//! `rank_pattern` and `alpha_pattern` (matched as `peft` does, by regular
//! expression on the module's name); the rank must agree with the stored `A` and
//! `B`, and every adapted module must be one `target_modules` selects.
//!
//! **How.** A chunk of elements `e₀..e₁` of the output is whole or partial rows of
//! the matrix. Each element is computed in f64, `w₀ + s·Σₖ Lᵢₖ·Rₖⱼ` with the sum in
//! order of `k` (products of two f32 are exact in f64), and handed out as F64
//! bytes, so the soup rounds once, to its own output dtype, as for stored
//! tensors. Rows of the result come from rows of `B` (the left factor), columns
//! from a tile of at most [`TILE_ELEMENTS`] elements of the right factor, widened
//! once per chunk and tile: the whole ΔW is never in memory. Per worker and
//! adapted input the memory is two f64 buffers of the chunk (the result and the
//! running sums; 1 MiB at the default 64 Ki elements) plus the tile (16 KiB),
//! whatever the model's size. The adapter's own files stay mapped (their size is
//! the adapter's: `r·(in + out)` per matrix).
//!
//! Other PEFT methods (IA³, LoHa, LoKr, prompt tuning, …) and LoRA variants whose
//! effect is not `W₀ + s·B·A` (DoRA, LoRA with a bias on `B`, aLoRA, layer
//! replication, trainable tokens, convolution layers) are refused by name.

use std::borrow::Cow;
use std::ops::Range;
use std::path::{Path, PathBuf};

use regex::Regex;
use serde_json::Value;

use crate::engine::checkpoint::{read_bounded, Checkpoint, OpenOptions, TensorEntry};
use crate::engine::dtype::FloatDtype;
use crate::engine::kernel::widen_into;
use crate::error::{Error, Result};

/// The adapter's configuration file: its presence makes a directory an adapter.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The adapter's weight files, in the order looked for.
const WEIGHT_FILES: [&str; 2] = ["adapter_model.safetensors", "adapter_model.bin"];
/// Largest configuration read.
const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// The prefix `peft` gives every saved name.
const PREFIX: &str = "base_model.model.";
/// Elements of the right factor widened at once (16 KiB of f64: it stays in L1).
pub const TILE_ELEMENTS: usize = 2048;

/// Whether `path` is a LoRA adapter directory (it holds `adapter_config.json`),
/// or a Hub id whose cached snapshot is one.
pub fn is_adapter(path: &Path) -> bool {
    let dir = match crate::engine::hub::locate(path) {
        Ok(Some((_, snapshot))) => snapshot.dir,
        _ => path.to_path_buf(),
    };
    dir.is_dir() && dir.join(CONFIG_FILE).is_file()
}

/// The base model an adapter's config names (`base_model_name_or_path`), as
/// written: a path or a Hub id. `None` when it names none.
pub fn configured_base(adapter: &Path) -> Result<Option<String>> {
    let dir = match crate::engine::hub::locate(adapter)? {
        Some((_, snapshot)) => snapshot.dir,
        None => adapter.to_path_buf(),
    };
    Ok(Config::read(&dir)?.base)
}

/// The settings of an adapter that decide its weights.
#[derive(Debug)]
struct Config {
    r: usize,
    alpha: f64,
    rslora: bool,
    fan_in_fan_out: bool,
    targets: Targets,
    excluded: Option<Targets>,
    modules_to_save: Vec<String>,
    rank_pattern: Vec<(Regex, String, f64)>,
    alpha_pattern: Vec<(Regex, String, f64)>,
    base: Option<String>,
}

/// `target_modules`: names matched as `peft` matches them.
#[derive(Debug)]
enum Targets {
    /// Exact names or dotted suffixes.
    Names(Vec<String>),
    /// A regular expression the whole module name must match.
    Pattern(Regex),
    /// `all-linear`: every linear layer (the file says which).
    AllLinear,
}

impl Targets {
    fn parse(value: &Value, key: &str, fail: &dyn Fn(String) -> Error) -> Result<Option<Targets>> {
        Ok(match value {
            Value::Null => None,
            Value::String(s) if s == "all-linear" => Some(Targets::AllLinear),
            Value::String(s) => Some(Targets::Pattern(
                Regex::new(&format!("^(?:{s})$"))
                    .map_err(|e| fail(format!("{key} is not a regular expression: {e}")))?,
            )),
            Value::Array(items) => Some(Targets::Names(
                items
                    .iter()
                    .map(|v| v.as_str().map(str::to_owned))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| fail(format!("{key} must be a list of names")))?,
            )),
            _ => return Err(fail(format!("{key} must be a list of names or a pattern"))),
        })
    }

    fn matches(&self, module: &str) -> bool {
        match self {
            Targets::Names(names) => {
                names.iter().any(|t| module == t || module.ends_with(&format!(".{t}")))
            }
            Targets::Pattern(re) => re.is_match(module),
            Targets::AllLinear => true,
        }
    }
}

impl Config {
    fn read(dir: &Path) -> Result<Config> {
        let path = dir.join(CONFIG_FILE);
        let fail = |reason: String| Error::Adapter { path: dir.to_path_buf(), reason };
        let text = read_bounded(&path, MAX_CONFIG_BYTES)?;
        let json: Value = serde_json::from_str(&text)
            .map_err(|e| fail(format!("{CONFIG_FILE} is not valid JSON: {e}")))?;
        let get = |key: &str| json.get(key).unwrap_or(&Value::Null);
        let on = |key: &str| get(key).as_bool().unwrap_or(false);
        let set = |key: &str| match get(key) {
            Value::Null | Value::Bool(false) => false,
            Value::Array(a) => !a.is_empty(),
            Value::Object(o) => !o.is_empty(),
            _ => true,
        };
        let peft_type = get("peft_type").as_str().unwrap_or("");
        if peft_type != "LORA" {
            let found = if peft_type.is_empty() { "none" } else { peft_type };
            return Err(fail(format!(
                "peft_type {found}: only LoRA adapters (peft_type LORA) can be souped, as \
                 W₀ + s·B·A; other PEFT methods are not supported"
            )));
        }
        let refusals = [
            (
                "use_dora",
                "DoRA (use_dora)",
                ": its magnitude vector rescales every column of W₀ + ΔW",
            ),
            ("lora_bias", "LoRA with a bias on B (lora_bias)", ""),
            ("layer_replication", "layer replication (layer_replication)", ""),
            ("target_parameters", "LoRA on parameters (target_parameters)", ""),
            ("trainable_token_indices", "trainable tokens (trainable_token_indices)", ""),
            (
                "alora_invocation_tokens",
                "aLoRA (alora_invocation_tokens)",
                ": it acts on some tokens only",
            ),
            ("use_qalora", "QA-LoRA (use_qalora)", ""),
            ("use_bdlora", "BD-LoRA (use_bdlora)", ""),
        ];
        if let Some((_, what, why)) = refusals.iter().find(|(key, _, _)| set(key)) {
            return Err(fail(format!("{what} is not supported{why}; only plain LoRA is")));
        }
        let r = get("r")
            .as_u64()
            .filter(|&r| r > 0)
            .ok_or_else(|| fail("r must be a positive integer".into()))?;
        let alpha = get("lora_alpha")
            .as_f64()
            .filter(|a| a.is_finite())
            .ok_or_else(|| fail("lora_alpha must be a number".into()))?;
        let pattern = |key: &str| -> Result<Vec<(Regex, String, f64)>> {
            let Some(map) = get(key).as_object() else { return Ok(Vec::new()) };
            map.iter()
                .map(|(k, v)| {
                    let value = v
                        .as_f64()
                        .filter(|x| x.is_finite())
                        .ok_or_else(|| fail(format!("{key} entry {k:?} is not a number")))?;
                    // peft: re.match(rf"(.*\.)?({key})$", module)
                    let re = Regex::new(&format!(r"^(?:.*\.)?(?:{k})$"))
                        .map_err(|e| fail(format!("{key} entry {k:?}: {e}")))?;
                    Ok((re, k.clone(), value))
                })
                .collect()
        };
        let targets = Targets::parse(get("target_modules"), "target_modules", &fail)?
            .ok_or_else(|| fail("target_modules is missing".into()))?;
        let excluded = Targets::parse(get("exclude_modules"), "exclude_modules", &fail)?;
        let modules_to_save = match get("modules_to_save") {
            Value::Null => Vec::new(),
            Value::Array(items) => items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| fail("modules_to_save must be a list of names".into()))?,
            _ => return Err(fail("modules_to_save must be a list of names".into())),
        };
        Ok(Config {
            r: r as usize,
            alpha,
            rslora: on("use_rslora"),
            fan_in_fan_out: on("fan_in_fan_out"),
            targets,
            excluded,
            modules_to_save,
            rank_pattern: pattern("rank_pattern")?,
            alpha_pattern: pattern("alpha_pattern")?,
            base: get("base_model_name_or_path").as_str().map(str::to_owned),
        })
    }

    /// The rank and alpha of a module, from the patterns (first match, as `peft`).
    fn rank_alpha(&self, module: &str) -> (usize, f64) {
        let find = |p: &[(Regex, String, f64)]| {
            p.iter().find(|(re, _, _)| re.is_match(module)).map(|(_, _, v)| *v)
        };
        let r = find(&self.rank_pattern).map_or(self.r, |v| v as usize);
        (r, find(&self.alpha_pattern).unwrap_or(self.alpha))
    }

    /// Whether `peft` would have put LoRA on `module`.
    fn targets(&self, module: &str) -> bool {
        let saved = self.modules_to_save.iter().any(|m| has_segments(module, m));
        !saved
            && !self.excluded.as_ref().is_some_and(|e| e.matches(module))
            && self.targets.matches(module)
    }
}

/// A tensor computed when read.
#[derive(Debug, Clone)]
pub struct Computed {
    lora: Lora,
}

/// `W₀ + s·Σₖ L(i,k)·R(k,j)` over a `rows × cols` matrix.
#[derive(Debug, Clone)]
struct Lora {
    w0: TensorEntry,
    w0_dtype: FloatDtype,
    /// `lora_A` (`r × in`, or `r × rows` when transposed).
    a: TensorEntry,
    a_dtype: FloatDtype,
    /// `lora_B` (`out × r`, or `cols × r` when transposed).
    b: TensorEntry,
    b_dtype: FloatDtype,
    rows: usize,
    cols: usize,
    rank: usize,
    scale: f64,
    /// The stored matrix is `(B·A)ᵀ`'s shape: `L(i,k) = A[k,i]`, `R(k,j) = B[j,k]`.
    transposed: bool,
}

impl Computed {
    /// The dtype of the matrix it starts from.
    pub(crate) fn declared(&self) -> safetensors::Dtype {
        self.lora.w0.dtype
    }

    /// The stored matrix's file bytes for elements covering bytes `start..start+len`.
    pub(crate) fn span(&self, start: usize, len: usize) -> (usize, Range<usize>) {
        let w0 = &self.lora.w0;
        let size = self.lora.w0_dtype.size();
        let (first, end) = (start / 8, (start + len).div_ceil(8));
        (w0.shard, w0.offset + first * size..w0.offset + end * size)
    }

    /// Bytes `start..start + len` of the computed tensor's F64 elements.
    pub(crate) fn bytes(&self, ck: &Checkpoint, start: usize, len: usize) -> Vec<u8> {
        let (first, end) = (start / 8, (start + len).div_ceil(8));
        let values = self.lora.elements(ck, first..end);
        // Little-endian target (lib.rs): the f64s' bytes are their safetensors bytes.
        let mut out: Vec<u8> = bytemuck::cast_slice::<f64, u8>(&values).to_vec();
        let skip = start - first * 8;
        out.truncate(skip + len);
        out.drain(..skip);
        out
    }
}

impl Lora {
    /// Elements `range` (row-major) of `W₀ + s·L·R`.
    fn elements(&self, ck: &Checkpoint, range: Range<usize>) -> Vec<f64> {
        let n = range.len();
        let mut out = vec![0.0; n];
        if n == 0 {
            return out;
        }
        let (e0, e1) = (range.start, range.end);
        let read =
            |entry: &TensorEntry, dtype: FloatDtype, first: usize, count: usize| -> Cow<'_, [u8]> {
                ck.bytes(entry, first * dtype.size(), count * dtype.size())
            };
        widen_into(self.w0_dtype, &read(&self.w0, self.w0_dtype, e0, n), &mut out);
        let (r, cols) = (self.rank, self.cols);
        let width = (TILE_ELEMENTS / r).max(1).min(cols);
        let mut sums = vec![0.0; n];
        let mut tile = vec![0.0; width * r];
        let mut raw = vec![0.0; width * r];
        let mut left = vec![0.0; r];
        let (row0, row1) = (e0 / cols, (e1 - 1) / cols);
        for ja in (0..cols).step_by(width) {
            let t = width.min(cols - ja);
            // Skip tiles no row of the chunk reaches (a chunk inside one row).
            if row0 == row1 && (e1 <= row0 * cols + ja || e0 >= row0 * cols + ja + t) {
                continue;
            }
            // tile[k·t + jj] = R(k, ja + jj)
            if self.transposed {
                widen_into(
                    self.b_dtype,
                    &read(&self.b, self.b_dtype, ja * r, t * r),
                    &mut raw[..t * r],
                );
                for jj in 0..t {
                    for k in 0..r {
                        tile[k * t + jj] = raw[jj * r + k];
                    }
                }
            } else {
                for k in 0..r {
                    let dst = &mut tile[k * t..(k + 1) * t];
                    widen_into(self.a_dtype, &read(&self.a, self.a_dtype, k * cols + ja, t), dst);
                }
            }
            for i in row0..=row1 {
                let lo = e0.max(i * cols + ja);
                let hi = e1.min(i * cols + ja + t);
                if lo >= hi {
                    continue;
                }
                if self.transposed {
                    for (k, l) in left.iter_mut().enumerate() {
                        let mut one = [0.0];
                        widen_into(
                            self.a_dtype,
                            &read(&self.a, self.a_dtype, k * self.rows + i, 1),
                            &mut one,
                        );
                        *l = one[0];
                    }
                } else {
                    widen_into(self.b_dtype, &read(&self.b, self.b_dtype, i * r, r), &mut left);
                }
                let col = lo - i * cols - ja;
                accumulate(&mut sums[lo - e0..hi - e0], &left, &tile[..r * t], t, col);
            }
        }
        for (w, s) in out.iter_mut().zip(&sums) {
            *w += self.scale * s;
        }
        out
    }
}

/// `sums[j] += Σₖ left[k]·tile[k·t + col + j]`, adding in order of `k`. Four
/// values of `k` per pass keep the partial sum in a register, with the same
/// roundings as one pass per `k` (no fused multiply-add), so every instruction
/// set gives the same bits.
#[multiversion::multiversion(targets(
    "x86_64+avx512f+avx512bw+avx512vl+avx2+fma+f16c+bmi1+bmi2+lzcnt+popcnt+sse4.2",
    "x86_64+avx2+fma+f16c+bmi1+bmi2+lzcnt+popcnt+sse4.2",
    "x86_64+sse4.2+popcnt",
))]
fn accumulate(sums: &mut [f64], left: &[f64], tile: &[f64], t: usize, col: usize) {
    let n = sums.len();
    let row = |k: usize| &tile[k * t + col..k * t + col + n];
    let mut k = 0;
    while k + 4 <= left.len() {
        let (l0, l1, l2, l3) = (left[k], left[k + 1], left[k + 2], left[k + 3]);
        let (x0, x1, x2, x3) = (row(k), row(k + 1), row(k + 2), row(k + 3));
        for ((((s, &a), &b), &c), &d) in sums.iter_mut().zip(x0).zip(x1).zip(x2).zip(x3) {
            *s = (((*s + l0 * a) + l1 * b) + l2 * c) + l3 * d;
        }
        k += 4;
    }
    for (k, &l) in left.iter().enumerate().skip(k) {
        for (s, &x) in sums.iter_mut().zip(row(k)) {
            *s += l * x;
        }
    }
}

/// Whether the dotted `name` contains `part` as whole segments (`peft`'s test for
/// `modules_to_save`: `classifier` in `classifier.weight`, `x.classifier`).
fn has_segments(name: &str, part: &str) -> bool {
    format!(".{name}.").contains(&format!(".{part}."))
}

/// The role of a tensor in the adapter's file.
enum Role {
    /// `lora_A`/`lora_B` of a module (`embedding`: of an `Embedding`).
    Factor { module: String, a: bool, embedding: bool },
    /// A tensor saved whole under the base's name.
    Whole(String),
}

fn role(name: &str) -> Role {
    let name = name.strip_prefix(PREFIX).unwrap_or(name);
    for (suffix, a, embedding) in [
        (".lora_A.weight", true, false),
        (".lora_B.weight", false, false),
        (".lora_embedding_A", true, true),
        (".lora_embedding_B", false, true),
    ] {
        if let Some(module) = name.strip_suffix(suffix) {
            return Role::Factor { module: module.to_owned(), a, embedding };
        }
    }
    Role::Whole(name.replace(".base_layer.", "."))
}

/// The base an adapter is applied to: `options.base`, else the model its config
/// names, as a local path or a Hub id in the local cache.
fn base_of(dir: &Path, config: &Config, options: &OpenOptions) -> Result<Checkpoint> {
    if let Some(base) = &options.base {
        return Ok(base.clone());
    }
    let fail = |reason: String| Error::Adapter { path: dir.to_path_buf(), reason };
    let Some(named) = &config.base else {
        return Err(fail(
            "its config names no base model (base_model_name_or_path): give one with --base"
                .to_owned(),
        ));
    };
    let path = PathBuf::from(named);
    let found = path.exists() || crate::engine::hub::locate(&path).is_ok_and(|l| l.is_some());
    if !found {
        return Err(fail(format!(
            "its base model {named:?} (base_model_name_or_path) is neither a local path nor a \
             model in the local Hugging Face cache: give it with --base"
        )));
    }
    Checkpoint::open(&path).map_err(|e| fail(format!("its base model {named:?}: {e}")))
}

/// Opens the adapter directory `dir` as the model it makes of its base.
pub(crate) fn open(dir: &Path, options: &OpenOptions) -> Result<Checkpoint> {
    let fail = |reason: String| Error::Adapter { path: dir.to_path_buf(), reason };
    let config = Config::read(dir)?;
    let base = base_of(dir, &config, options)?;
    if base.has_computed() {
        return Err(fail(format!(
            "its base {} is itself an adapter; give the full model",
            base.path().display()
        )));
    }
    let file = WEIGHT_FILES.iter().map(|f| dir.join(f)).find(|p| p.is_file()).ok_or_else(|| {
        fail(format!("no {} or {} beside {CONFIG_FILE}", WEIGHT_FILES[0], WEIGHT_FILES[1]))
    })?;
    let adapter = Checkpoint::open_files(&file, None)?;

    // Sort the adapter's tensors: factors per module, whole tensors by name.
    let mut factors: std::collections::BTreeMap<String, [Option<&TensorEntry>; 2]> =
        Default::default();
    let mut embeddings = std::collections::BTreeSet::new();
    let mut whole: Vec<(String, &TensorEntry)> = Vec::new();
    for t in adapter.tensors() {
        match role(&t.name) {
            Role::Factor { module, a, embedding } => {
                if embedding {
                    embeddings.insert(module.clone());
                }
                factors.entry(module).or_default()[usize::from(!a)] = Some(t);
            }
            Role::Whole(name) if name.contains("lora_") => {
                return Err(fail(format!("tensor {:?} is not a LoRA factor soup knows", t.name)))
            }
            Role::Whole(name) => whole.push((name, t)),
        }
    }

    let shift = adapter.shards().len();
    let mut shards = adapter.shared_shards();
    shards.extend(base.shared_shards());
    let rebase = |t: &TensorEntry| TensorEntry { shard: t.shard + shift, ..t.clone() };

    let mut computed: Vec<Computed> = Vec::new();
    let mut adapted: std::collections::HashMap<String, usize> = Default::default();
    for (module, [a, b]) in &factors {
        let (Some(a), Some(b)) = (a, b) else {
            return Err(fail(format!("module {module:?} has only one of lora_A and lora_B")));
        };
        if !config.targets(module) {
            return Err(fail(format!(
                "module {module:?} has LoRA factors but target_modules does not select it"
            )));
        }
        let embedding = embeddings.contains(module);
        let weight = format!("{module}.weight");
        let w0 = base.get(&weight).ok_or_else(|| {
            fail(format!(
                "module {module:?} is adapted but the base {} has no tensor {weight:?}",
                base.path().display()
            ))
        })?;
        let lora = lora_of(&config, module, embedding, w0, a, b, &fail)?;
        let lora = Lora { w0: rebase(w0), ..lora };
        adapted.insert(weight, computed.len());
        computed.push(Computed { lora });
    }

    // Base tensors: adapted ones (and names sharing their bytes) computed, saved
    // ones replaced; then the saved tensors the base lacks.
    let same = |t: &TensorEntry| (t.shard, t.offset, t.len, t.strided, t.dtype);
    let mut tensors: Vec<TensorEntry> = Vec::with_capacity(base.tensors().len());
    let replacing: std::collections::HashMap<&str, &TensorEntry> =
        whole.iter().map(|(n, t)| (n.as_str(), *t)).collect();
    for t in base.tensors() {
        let alias_of = computed.iter().position(|c| {
            let w0 = &c.lora.w0;
            (w0.shard - shift, w0.offset, w0.len, w0.strided, w0.dtype) == same(t)
        });
        if let Some(i) = adapted.get(&t.name).copied().or(alias_of) {
            tensors.push(TensorEntry {
                name: t.name.clone(),
                dtype: safetensors::Dtype::F64,
                shape: t.shape.clone(),
                shard: t.shard + shift,
                offset: t.offset,
                len: t.numel() * 8,
                strided: t.strided,
                computed: Some(i),
            });
        } else if let Some(saved) = replacing.get(t.name.as_str()) {
            if saved.shape != t.shape {
                return Err(fail(format!(
                    "tensor {:?} has shape {:?} in the adapter but {:?} in the base",
                    t.name, saved.shape, t.shape
                )));
            }
            tensors.push(TensorEntry { name: t.name.clone(), ..(*saved).clone() });
        } else {
            tensors.push(rebase(t));
        }
    }
    for (name, t) in &whole {
        if base.get(name).is_none() {
            let saved = config.modules_to_save.iter().any(|m| has_segments(name, m));
            if !saved {
                return Err(fail(format!(
                    "tensor {:?} is neither a LoRA factor, nor in the base, nor in \
                     modules_to_save",
                    t.name
                )));
            }
            tensors.push(TensorEntry { name: name.clone(), ..(*t).clone() });
        }
    }
    let directory = base.directory().map(Path::to_path_buf);
    Ok(Checkpoint::from_parts(dir, directory, shards, tensors, computed))
}

/// Checks one module's factors against its base matrix and the config, and
/// describes the product (its `w0` still the base's entry).
fn lora_of(
    config: &Config,
    module: &str,
    embedding: bool,
    w0: &TensorEntry,
    a: &TensorEntry,
    b: &TensorEntry,
    fail: &dyn Fn(String) -> Error,
) -> Result<Lora> {
    let float = |t: &TensorEntry| {
        FloatDtype::from_safetensors(t.dtype)
            .ok_or_else(|| fail(format!("tensor {:?} is {:?}, not a float", t.name, t.dtype)))
    };
    if a.shape.len() != 2 || b.shape.len() != 2 || w0.shape.len() != 2 {
        let what = if a.shape.len() == 4 { "a convolution" } else { "not a matrix" };
        return Err(fail(format!(
            "module {module:?} is {what} (A {:?}, B {:?}, W {:?}); only Linear, Conv1D and \
             Embedding layers are supported",
            a.shape, b.shape, w0.shape
        )));
    }
    let (r, alpha) = config.rank_alpha(module);
    let rank = a.shape[0];
    if b.shape[1] != rank || rank != r {
        return Err(fail(format!(
            "module {module:?}: lora_A {:?} and lora_B {:?} do not have the rank {r} the config \
             gives it",
            a.shape, b.shape
        )));
    }
    let transposed = embedding || config.fan_in_fan_out;
    // Stored W: out × in, or in × out (Conv1D) / num × dim (Embedding).
    let expected =
        if transposed { vec![a.shape[1], b.shape[0]] } else { vec![b.shape[0], a.shape[1]] };
    if w0.shape != expected {
        return Err(fail(format!(
            "module {module:?}: B·A{} has shape {expected:?} but the base's {:?} has {:?}{}",
            if transposed { "ᵀ" } else { "" },
            w0.name,
            w0.shape,
            if config.fan_in_fan_out || embedding { "" } else { " (fan_in_fan_out?)" }
        )));
    }
    let scale = if config.rslora { alpha / (r as f64).sqrt() } else { alpha / r as f64 };
    Ok(Lora {
        w0: w0.clone(),
        w0_dtype: float(w0)?,
        a: a.clone(),
        a_dtype: float(a)?,
        b: b.clone(),
        b_dtype: float(b)?,
        rows: w0.shape[0],
        cols: w0.shape[1],
        rank,
        scale,
        transposed,
    })
}
