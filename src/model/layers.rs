//! The parts of a T5 layer: linear maps, RMS norm, attention with relative
//! position bias, the feed-forward blocks, and the dropout they share.

use candle_core::{DType, Device, Module, Tensor};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::error::Result;

/// Whether a forward pass trains (dropout on, drawn from a seeded RNG that a
/// checkpoint can save) or evaluates (dropout off).
///
/// It also carries the compute dtype: weights stay as they are (f32 master
/// weights in training) and are cast on use, so gradients flow back to
/// them in their own dtype; norms, softmax and the logits stay in f32.
pub struct ForwardMode {
    rng: Option<ChaCha8Rng>,
    compute: DType,
}

impl ForwardMode {
    pub fn eval() -> Self {
        Self {
            rng: None,
            compute: DType::F32,
        }
    }

    pub fn train(rng: ChaCha8Rng) -> Self {
        Self {
            rng: Some(rng),
            compute: DType::F32,
        }
    }

    /// Computes activations in `dtype` (f32, bf16, f16).
    pub fn with_compute(mut self, dtype: DType) -> Self {
        self.compute = dtype;
        self
    }

    pub fn compute(&self) -> DType {
        self.compute
    }

    pub fn is_train(&self) -> bool {
        self.rng.is_some()
    }

    /// The RNG state, to save with a checkpoint.
    pub fn rng(&self) -> Option<&ChaCha8Rng> {
        self.rng.as_ref()
    }

    /// The keep mask of inverted dropout over `n` elements (1 keeps, 0
    /// drops; each dropped with probability `p`) and the scale of the kept
    /// ones, `1 / (1 - p)`; `None` when evaluating or `p` is 0. Drawn on
    /// the host from the seeded RNG, because candle's CPU device cannot be
    /// seeded: a run with the same seed drops the same units on any device.
    pub fn dropout_mask(&mut self, n: usize, p: f64) -> Option<(Vec<u8>, f32)> {
        let rng = self.rng.as_mut()?;
        if p <= 0.0 {
            return None;
        }
        let scale = (1.0 / (1.0 - p)) as f32;
        let p = p as f32;
        let mask = (0..n).map(|_| u8::from(rng.random::<f32>() >= p)).collect();
        Some((mask, scale))
    }

    /// Inverted dropout: zero each element with probability `p`, scale the
    /// rest by `1 / (1 - p)` (see [`Self::dropout_mask`]).
    pub fn dropout(&mut self, xs: &Tensor, p: f64) -> Result<Tensor> {
        let Some((mask, scale)) = self.dropout_mask(xs.elem_count(), p) else {
            return Ok(xs.clone());
        };
        if let Some(out) = super::kernels::dropout(xs, &mask, scale)? {
            return Ok(out);
        }
        let mask: Vec<f32> = mask.iter().map(|&k| f32::from(k) * scale).collect();
        let mask = Tensor::from_vec(mask, xs.shape(), &Device::Cpu)?
            .to_device(xs.device())?
            .to_dtype(xs.dtype())?;
        Ok(xs.mul(&mask)?)
    }
}

/// A bias-free linear map `y = x Wᵀ` with `W: [out, in]`, as all of T5's.
///
/// The input is flattened to 2-D first: a 3-D matmul against a weight
/// broadcast over the batch makes the backward pass build one weight
/// gradient per batch element and sum them, which is slower and bigger.
#[derive(Clone)]
pub struct Linear {
    pub weight: Tensor,
}

impl Linear {
    pub fn new(weight: Tensor) -> Self {
        Self { weight }
    }
}

impl Module for Linear {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        // On the CPU in f32 one fused op; elsewhere a 2-D matmul, with the
        // weight cast to the compute dtype inside the graph (a no-op in
        // f32; in bf16 the gradient still reaches the f32 weight).
        super::kernels::linear(xs, &self.weight)
    }
}

/// T5's layer norm: scale by the root mean square, no mean subtraction and
/// no bias. Computed in f32 whatever the compute dtype, as `transformers`.
#[derive(Clone)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let dtype = xs.dtype();
        let x32 = xs.to_dtype(DType::F32)?;
        Ok(super::kernels::rms_norm(&x32, &self.weight, self.eps)?.to_dtype(dtype)?)
    }
}

/// The feed-forward block: v1.0's ReLU or v1.1's gated GELU.
#[derive(Clone)]
pub enum FeedForwardBlock {
    Relu {
        wi: Linear,
        wo: Linear,
    },
    GatedGelu {
        wi_0: Linear,
        wi_1: Linear,
        wo: Linear,
    },
}

impl FeedForwardBlock {
    pub fn forward(&self, xs: &Tensor, dropout: f64, mode: &mut ForwardMode) -> Result<Tensor> {
        match self {
            FeedForwardBlock::Relu { wi, wo } => {
                let h = wi.forward(xs)?.relu()?;
                let h = mode.dropout(&h, dropout)?;
                Ok(wo.forward(&h)?)
            }
            FeedForwardBlock::GatedGelu { wi_0, wi_1, wo } => {
                // `gelu` in candle is the tanh approximation, T5's `gelu_new`.
                let h = super::kernels::gated_gelu(&wi_0.forward(xs)?, &wi_1.forward(xs)?)?;
                let h = mode.dropout(&h, dropout)?;
                Ok(wo.forward(&h)?)
            }
        }
    }
}

/// Keys and values of one attention layer, kept between decoding steps.
#[derive(Clone)]
pub struct KvCache {
    pub k: Tensor,
    pub v: Tensor,
}

impl KvCache {
    pub fn len(&self) -> usize {
        self.k.dim(2).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps the rows of `indices` (a u32 tensor), in that order: the
    /// cache follows the beams that survive a beam-search step.
    pub fn select(&self, indices: &Tensor) -> Result<Self> {
        Ok(Self {
            k: self.k.index_select(indices, 0)?,
            v: self.v.index_select(indices, 0)?,
        })
    }
}

/// Multi-head attention without the `1/sqrt(d_kv)` scaling: T5 folds it
/// into the initialisation of the query weights.
#[derive(Clone)]
pub struct Attention {
    pub q: Linear,
    pub k: Linear,
    pub v: Linear,
    pub o: Linear,
    pub num_heads: usize,
    pub d_kv: usize,
}

impl Attention {
    /// `[b, s, h*d] -> [b, h, s, d]`
    fn split_heads(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, s, _) = xs.dims3()?;
        Ok(xs
            .reshape((b, s, self.num_heads, self.d_kv))?
            .transpose(1, 2)?
            .contiguous()?)
    }

    /// Keys and values of `source` (the encoder output, for cross-attention).
    pub fn project_kv(&self, source: &Tensor) -> Result<KvCache> {
        Ok(KvCache {
            k: self.split_heads(&self.k.forward(source)?)?,
            v: self.split_heads(&self.v.forward(source)?)?,
        })
    }

    /// Keys and values of `source` in one tensor, for
    /// [`Self::forward_packed`]; `None` where the fused kernels do not apply.
    pub fn project_kv_packed(&self, source: &Tensor) -> Result<Option<Tensor>> {
        Ok(super::kernels::kv_projection(
            source,
            &self.k.weight,
            &self.v.weight,
        )?)
    }

    /// [`Self::forward`] without a cache, through the fused CPU
    /// kernels: `kv` from [`Self::project_kv_packed`] (self-attention when
    /// `None`). `None` where the kernels do not apply; the caller then
    /// takes [`Self::forward`].
    pub fn forward_packed(
        &self,
        xs: &Tensor,
        kv: Option<&Tensor>,
        bias: &Tensor,
        dropout: f64,
        mode: &mut ForwardMode,
    ) -> Result<Option<Tensor>> {
        let own;
        let kv = match kv {
            Some(kv) => kv,
            None => match self.project_kv_packed(xs)? {
                Some(t) => {
                    own = t;
                    &own
                }
                None => return Ok(None),
            },
        };
        let q = self.q.forward(xs)?;
        if !super::kernels::attention_applies(&q, kv, bias, self.num_heads) {
            return Ok(None);
        }
        // The weights' mask, drawn where the composed path draws it, so
        // both drop the same units.
        let (b, s, _) = q.dims3()?;
        let t = kv.dim(1)?;
        let mask = mode.dropout_mask(b * self.num_heads * s * t, dropout);
        let Some(out) = super::kernels::attention(&q, kv, bias, self.num_heads, mask)? else {
            return Ok(None);
        };
        Ok(Some(self.o.forward(&out)?))
    }

    /// Attention of `xs` over `kv` (self-attention when `kv` is `None`).
    ///
    /// `bias` is added to the scores: the relative position bias and the
    /// mask together, `[1 or b, h or 1, q, k]`. With `cache`, self-attention
    /// appends this step's keys and values to it and attends over all.
    pub fn forward(
        &self,
        xs: &Tensor,
        kv: Option<&KvCache>,
        bias: &Tensor,
        cache: Option<&mut Option<KvCache>>,
        dropout: f64,
        mode: &mut ForwardMode,
    ) -> Result<Tensor> {
        let (b, s, _) = xs.dims3()?;
        let q = self.split_heads(&self.q.forward(xs)?)?;
        let own;
        let kv = match kv {
            Some(kv) => kv,
            None => {
                let mut fresh = self.project_kv(xs)?;
                if let Some(cache) = cache {
                    if let Some(past) = cache.as_ref() {
                        fresh = KvCache {
                            k: Tensor::cat(&[&past.k, &fresh.k], 2)?,
                            v: Tensor::cat(&[&past.v, &fresh.v], 2)?,
                        };
                    }
                    *cache = Some(fresh.clone());
                }
                own = fresh;
                &own
            }
        };
        let scores = super::kernels::batched_matmul(&q, &kv.k.t()?)?;
        let dtype = scores.dtype();
        // Bias, mask and softmax in f32 whatever the compute dtype.
        let scores = scores.to_dtype(DType::F32)?.broadcast_add(bias)?;
        let weights = super::kernels::softmax_last_dim(&scores)?.to_dtype(dtype)?;
        let weights = mode.dropout(&weights, dropout)?;
        let out = super::kernels::batched_matmul(&weights, &kv.v)?;
        let out = out
            .transpose(1, 2)?
            .reshape((b, s, self.num_heads * self.d_kv))?;
        Ok(self.o.forward(&out)?)
    }
}
