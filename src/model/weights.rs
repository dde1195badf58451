//! Where a model's tensors come from (T5's initialisation, or a
//! `model.safetensors` file) and how they are saved, by Hugging Face name.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use super::T5Config;
use crate::error::{Error, Result};

/// Gives the tensor of a parameter, by name and expected shape. The
/// returned tensor is on the CPU in any float dtype; the store moves it.
pub trait WeightSource {
    fn get(&mut self, name: &str, shape: &[usize]) -> Result<Tensor>;
}

/// The model's parameters as candle `Var`s, in the order they were taken.
pub struct ParamStore {
    entries: Vec<(String, Var)>,
}

impl ParamStore {
    pub fn entries(&self) -> &[(String, Var)] {
        &self.entries
    }
}

/// Takes parameters from a source while a model is built.
pub(crate) struct ParamBuilder<'a> {
    source: &'a mut dyn WeightSource,
    entries: Vec<(String, Var)>,
    device: Device,
    dtype: DType,
}

impl<'a> ParamBuilder<'a> {
    pub(crate) fn new(source: &'a mut dyn WeightSource, device: Device, dtype: DType) -> Self {
        Self {
            source,
            entries: Vec::new(),
            device,
            dtype,
        }
    }

    /// Takes the tensor `name` from the source as a new trainable parameter.
    pub(crate) fn take(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.source.get(name, shape)?;
        let t = t.to_dtype(self.dtype)?.to_device(&self.device)?;
        let var = Var::from_tensor(&t)?;
        let tensor = var.as_tensor().clone();
        self.entries.push((name.to_string(), var));
        Ok(tensor)
    }

    pub(crate) fn finish(self) -> ParamStore {
        ParamStore {
            entries: self.entries,
        }
    }
}

/// T5's initialisation (Mesh TensorFlow's, which `transformers`'
/// `_init_weights` mirrors): normal with a standard deviation set by the
/// matrix's role, norms at one. Drawn in parameter order from one seeded
/// RNG, so a seed gives the same model on every machine.
pub struct InitSource {
    cfg: T5Config,
    rng: ChaCha8Rng,
}

impl InitSource {
    pub fn new(cfg: &T5Config, seed: u64) -> Self {
        Self {
            cfg: cfg.clone(),
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// The standard deviation of a parameter, or `None` for a norm weight
    /// (initialised to `initializer_factor`).
    fn std_of(&self, name: &str) -> Option<f64> {
        let c = &self.cfg;
        let f = c.initializer_factor;
        let d = c.d_model as f64;
        if name.ends_with("layer_norm.weight") {
            return None;
        }
        let std = if name == "shared.weight" || name == "lm_head.weight" {
            f
        } else if name.ends_with("relative_attention_bias.weight") {
            f * d.powf(-0.5)
        } else if name.ends_with(".q.weight") {
            f * (d * c.d_kv as f64).powf(-0.5)
        } else if name.ends_with(".k.weight") || name.ends_with(".v.weight") {
            f * d.powf(-0.5)
        } else if name.ends_with(".o.weight") {
            f * (c.inner_dim() as f64).powf(-0.5)
        } else if name.ends_with(".wo.weight") {
            f * (c.d_ff as f64).powf(-0.5)
        } else {
            // wi, wi_0, wi_1
            f * d.powf(-0.5)
        };
        Some(std)
    }
}

impl WeightSource for InitSource {
    fn get(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = match self.std_of(name) {
            None => vec![self.cfg.initializer_factor as f32; n],
            Some(std) => {
                let normal = Normal::new(0.0f32, std as f32)
                    .map_err(|e| Error::Invalid(format!("init of {name}: {e}")))?;
                (0..n).map(|_| normal.sample(&mut self.rng)).collect()
            }
        };
        Ok(Tensor::from_vec(data, shape, &Device::Cpu)?)
    }
}

/// Tensors read from a `.safetensors` file, checked against the shape the
/// model expects. Float tensors of any width are converted; anything else
/// is an error that names the tensor.
pub struct SafetensorsSource {
    path: PathBuf,
    tensors: HashMap<String, Tensor>,
}

impl SafetensorsSource {
    pub fn open(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu).map_err(|e| {
            Error::checkpoint(path, format!("not a readable safetensors file ({e})"))
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            tensors,
        })
    }

    /// Names the file holds that a model of `cfg` does not use.
    pub fn unused(&self, used: &[(String, Var)]) -> Vec<String> {
        // Copies of the shared embedding are stored under other names.
        let aliases = ["encoder.embed_tokens.weight", "decoder.embed_tokens.weight"];
        let mut out: Vec<String> = self
            .tensors
            .keys()
            .filter(|k| !used.iter().any(|(n, _)| n == *k) && !aliases.contains(&k.as_str()))
            .cloned()
            .collect();
        out.sort();
        out
    }
}

impl WeightSource for SafetensorsSource {
    fn get(&mut self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let found = self.tensors.get(name).or_else(|| {
            // `transformers` may store the tied embedding under the
            // encoder's or decoder's name alone.
            if name == "shared.weight" {
                self.tensors
                    .get("encoder.embed_tokens.weight")
                    .or_else(|| self.tensors.get("decoder.embed_tokens.weight"))
            } else {
                None
            }
        });
        let t = found.ok_or_else(|| {
            Error::checkpoint(
                &self.path,
                format!("tensor `{name}` is missing (expected shape {shape:?})"),
            )
        })?;
        if t.dims() != shape {
            return Err(Error::checkpoint(
                &self.path,
                format!(
                    "tensor `{name}` has shape {:?}, but this model needs {shape:?}: the checkpoint is of another model shape",
                    t.dims()
                ),
            ));
        }
        match t.dtype() {
            DType::F32 | DType::F16 | DType::BF16 | DType::F64 => Ok(t.clone()),
            other => Err(Error::checkpoint(
                &self.path,
                format!("tensor `{name}` has dtype {other:?}, but model weights must be a float type (f32, f16, bf16)"),
            )),
        }
    }
}

/// Saves named tensors as safetensors, atomically (temporary file, then
/// rename), converting each to `dtype`.
pub fn save_safetensors(tensors: &[(String, Tensor)], dtype: DType, path: &Path) -> Result<()> {
    let mut map = HashMap::new();
    for (name, t) in tensors {
        map.insert(name.clone(), t.to_dtype(dtype)?.to_device(&Device::Cpu)?);
    }
    let tmp = crate::fsutil::temp_path(path);
    let result = candle_core::safetensors::save(&map, &tmp)
        .map_err(|e| Error::checkpoint(path, format!("could not write ({e})")))
        .and_then(|_| std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
