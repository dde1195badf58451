//! T5 (encoder-decoder, text-to-text) on candle, written to be trained.
//!
//! The parameter names, their shapes and `config.json` are Hugging Face's
//! `T5ForConditionalGeneration`, so checkpoints go both ways; the numerics
//! follow `transformers` closely enough to match its logits, loss and
//! gradients (see `tests/hf_parity.rs`).

pub mod config;
pub mod generate;
pub mod kernels;
pub mod layers;
pub mod position;
pub mod weights;

use candle_core::{DType, Device, Module, Tensor, Var, D};

pub use config::{FeedForward, T5Config};
pub use layers::ForwardMode;
use layers::{Attention, FeedForwardBlock, KvCache, Linear, RmsNorm};
use weights::ParamBuilder;
pub use weights::{ParamStore, SafetensorsSource, WeightSource};

use crate::error::{Error, Result};

/// The label that the loss ignores, as in PyTorch and `transformers`.
pub const IGNORE_INDEX: i64 = -100;

/// The most negative value of `dtype`, added to masked attention scores.
fn mask_min(dtype: DType) -> f64 {
    match dtype {
        DType::F16 => -65504.0,
        DType::BF16 => -3.38e38,
        DType::F64 => f64::MIN,
        _ => f32::MIN as f64,
    }
}

struct Block {
    self_attn: Attention,
    self_norm: RmsNorm,
    cross: Option<(Attention, RmsNorm)>,
    ff: FeedForwardBlock,
    ff_norm: RmsNorm,
}

/// The encoder or the decoder: blocks between a shared embedding and a
/// final norm, with one relative position bias table for all layers.
struct Stack {
    blocks: Vec<Block>,
    final_norm: RmsNorm,
    relative_bias: Tensor,
    is_decoder: bool,
}

/// Per-sequence decoding state: each layer's self-attention keys and values
/// so far, and the cross-attention keys and values of the encoder output.
#[derive(Clone)]
pub struct DecoderCache {
    self_kv: Vec<Option<KvCache>>,
    cross_kv: Vec<KvCache>,
    /// `[b, 1, 1, s]` additive mask of the encoder's padding.
    cross_bias: Tensor,
}

impl DecoderCache {
    /// How many decoder positions the cache holds.
    pub fn len(&self) -> usize {
        self.self_kv
            .first()
            .and_then(|c| c.as_ref())
            .map_or(0, |c| c.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keeps (and repeats) the batch rows named by `indices`.
    pub fn select(&self, indices: &[u32]) -> Result<Self> {
        let device = self.cross_bias.device();
        let idx = Tensor::new(indices, device)?;
        Ok(Self {
            self_kv: self
                .self_kv
                .iter()
                .map(|c| c.as_ref().map(|c| c.select(&idx)).transpose())
                .collect::<Result<_>>()?,
            cross_kv: self
                .cross_kv
                .iter()
                .map(|c| c.select(&idx))
                .collect::<Result<_>>()?,
            cross_bias: self.cross_bias.index_select(&idx, 0)?,
        })
    }
}

/// A T5 model with its parameters.
pub struct T5 {
    cfg: T5Config,
    params: ParamStore,
    shared: Tensor,
    encoder: Stack,
    decoder: Stack,
    lm_head: Option<Linear>,
    device: Device,
    dtype: DType,
}

impl T5 {
    /// A freshly initialised model, the Mesh TensorFlow way that
    /// `transformers`' `_init_weights` mirrors, reproducible from `seed`.
    pub fn new_random(cfg: &T5Config, seed: u64, device: &Device) -> Result<Self> {
        let mut source = weights::InitSource::new(cfg, seed);
        Self::build(cfg, &mut source, device, DType::F32)
    }

    /// Builds the model from `source`, taking every tensor by its
    /// Hugging Face name.
    pub fn build(
        cfg: &T5Config,
        source: &mut dyn WeightSource,
        device: &Device,
        dtype: DType,
    ) -> Result<Self> {
        cfg.validate().map_err(Error::Invalid)?;
        let mut p = ParamBuilder::new(source, device.clone(), dtype);
        let (d, v) = (cfg.d_model, cfg.vocab_size);
        let shared = p.take("shared.weight", &[v, d])?;
        let encoder = build_stack(cfg, &mut p, false)?;
        let decoder = build_stack(cfg, &mut p, true)?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(Linear::new(p.take("lm_head.weight", &[v, d])?))
        };
        Ok(Self {
            cfg: cfg.clone(),
            params: p.finish(),
            shared,
            encoder,
            decoder,
            lm_head,
            device: device.clone(),
            dtype,
        })
    }

    /// Loads a Hugging Face T5 folder: `config.json` and `model.safetensors`.
    pub fn load_hf_dir(dir: &std::path::Path, device: &Device) -> Result<Self> {
        let cfg = T5Config::from_json_file(&dir.join("config.json"))?;
        Self::load_safetensors(&cfg, &dir.join("model.safetensors"), device)
    }

    /// Loads the weights of a model of shape `cfg` from a safetensors file.
    /// Every tensor must be there with the right shape, and the file must
    /// hold no tensor the model does not use (the sign of another shape).
    pub fn load_safetensors(
        cfg: &T5Config,
        path: &std::path::Path,
        device: &Device,
    ) -> Result<Self> {
        let mut source = SafetensorsSource::open(path)?;
        let model = Self::build(cfg, &mut source, device, DType::F32)?;
        let unused = source.unused(model.params());
        if let Some(first) = unused.first() {
            return Err(Error::checkpoint(
                path,
                format!(
                    "tensor `{first}` (and {} more) is not part of a model of this config ({} encoder / {} decoder layers, feed_forward_proj {}, tie_word_embeddings {}): the checkpoint is of another model shape",
                    unused.len() - 1,
                    cfg.num_layers,
                    cfg.decoder_layers(),
                    cfg.feed_forward_proj.as_str(),
                    cfg.tie_word_embeddings
                ),
            ));
        }
        Ok(model)
    }

    /// The parameters by Hugging Face name, as saved.
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        self.params()
            .iter()
            .map(|(n, v)| (n.clone(), v.as_tensor().detach()))
            .collect()
    }

    /// Saves `config.json` and `model.safetensors` (f32) into `dir`, the
    /// layout `transformers`' `from_pretrained` reads.
    pub fn save_hf_dir(&self, dir: &std::path::Path) -> Result<()> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        weights::save_safetensors(
            &self.named_tensors(),
            DType::F32,
            &dir.join("model.safetensors"),
        )?;
        self.cfg.write_json_file(&dir.join("config.json"))
    }

    pub fn config(&self) -> &T5Config {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Every trainable parameter with its Hugging Face name, in a fixed order.
    pub fn params(&self) -> &[(String, Var)] {
        self.params.entries()
    }

    pub fn num_parameters(&self) -> usize {
        self.params().iter().map(|(_, v)| v.elem_count()).sum()
    }

    /// Runs the encoder: `input_ids` (u32, `[b, s]`) and `attention_mask`
    /// (1 for tokens, 0 for padding) give `[b, s, d_model]`.
    pub fn encode(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        mode: &mut ForwardMode,
    ) -> Result<Tensor> {
        let (_, s) = input_ids.dims2()?;
        let x = self.embed(input_ids, mode)?;
        let pad = self.padding_bias(attention_mask, 1)?;
        let bias = self
            .encoder
            .position_bias(&self.cfg, 0, s, s)?
            .broadcast_add(&pad)?;
        self.encoder.run(&self.cfg, x, &bias, None, mode)
    }

    /// Starts decoding against an encoder output: projects the
    /// cross-attention keys and values once for every step to come.
    pub fn start_decoding(
        &self,
        encoder_out: &Tensor,
        attention_mask: &Tensor,
    ) -> Result<DecoderCache> {
        let cross_kv = self
            .decoder
            .blocks
            .iter()
            .map(|b| {
                let (attn, _) = b
                    .cross
                    .as_ref()
                    .expect("decoder blocks have cross-attention");
                attn.project_kv(encoder_out)
            })
            .collect::<Result<_>>()?;
        Ok(DecoderCache {
            self_kv: vec![None; self.decoder.blocks.len()],
            cross_kv,
            cross_bias: self.padding_bias(attention_mask, 1)?,
        })
    }

    /// Runs the decoder on `decoder_ids` (u32, `[b, t]`) after what `cache`
    /// holds, appends to the cache and returns logits `[b, t, vocab]`.
    /// `decoder_mask`, when given, covers the cached and the new positions.
    pub fn decode_step(
        &self,
        decoder_ids: &Tensor,
        decoder_mask: Option<&Tensor>,
        cache: &mut DecoderCache,
        mode: &mut ForwardMode,
    ) -> Result<Tensor> {
        let past = cache.len();
        let (b, t) = decoder_ids.dims2()?;
        let x = self.embed(decoder_ids, mode)?;
        let self_bias = self.decoder_self_bias(b, past, t, decoder_mask)?;
        let h = self.decoder.run(
            &self.cfg,
            x,
            &self_bias,
            Some((
                CrossKeys::Split(&cache.cross_kv),
                &cache.cross_bias,
                &mut cache.self_kv,
            )),
            mode,
        )?;
        self.lm_logits(&h)
    }

    /// Full-sequence logits `[b, t, vocab]` for training and scoring.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &Tensor,
        decoder_ids: &Tensor,
        decoder_mask: Option<&Tensor>,
        mode: &mut ForwardMode,
    ) -> Result<Tensor> {
        let enc = self.encode(input_ids, attention_mask, mode)?;
        let (b, t) = decoder_ids.dims2()?;
        let x = self.embed(decoder_ids, mode)?;
        let self_bias = self.decoder_self_bias(b, 0, t, decoder_mask)?;
        fn cross_attn(blk: &Block) -> &Attention {
            &blk.cross
                .as_ref()
                .expect("decoder blocks have cross-attention")
                .0
        }
        // The fused kernels take keys and values packed in one tensor.
        let packed: Option<Vec<Tensor>> = if fused_attention(mode) {
            self.decoder
                .blocks
                .iter()
                .map(|blk| cross_attn(blk).project_kv_packed(&enc))
                .collect::<Result<_>>()?
        } else {
            None
        };
        let split: Vec<KvCache> = match packed {
            Some(_) => Vec::new(),
            None => self
                .decoder
                .blocks
                .iter()
                .map(|blk| cross_attn(blk).project_kv(&enc))
                .collect::<Result<_>>()?,
        };
        let keys = match &packed {
            Some(p) => CrossKeys::Packed(p),
            None => CrossKeys::Split(&split),
        };
        let cross_bias = self.padding_bias(attention_mask, 1)?;
        let mut no_cache = vec![None; 0];
        let h = self.decoder.run(
            &self.cfg,
            x,
            &self_bias,
            Some((keys, &cross_bias, &mut no_cache)),
            mode,
        )?;
        self.lm_logits(&h)
    }

    fn embed(&self, ids: &Tensor, mode: &mut ForwardMode) -> Result<Tensor> {
        let (b, s) = ids.dims2()?;
        let flat = ids.flatten_all()?.to_dtype(DType::U32)?;
        let x = self
            .shared
            .index_select(&flat, 0)?
            .reshape((b, s, self.cfg.d_model))?
            .to_dtype(mode.compute())?;
        mode.dropout(&x, self.cfg.dropout_rate)
    }

    /// Logits in f32 whatever the compute dtype: the loss and the softmax
    /// of generation need the range.
    fn lm_logits(&self, h: &Tensor) -> Result<Tensor> {
        let logits = match &self.lm_head {
            Some(head) => head.forward(h)?,
            None => {
                // v1.0 ties the head to the embedding and rescales first.
                let h = (h * (self.cfg.d_model as f64).powf(-0.5))?;
                Linear::new(self.shared.clone()).forward(&h)?
            }
        };
        Ok(logits.to_dtype(DType::F32)?)
    }

    /// `[b, 1, rows, k]` additive bias: 0 where `mask` is 1, the dtype's
    /// minimum where it is 0.
    fn padding_bias(&self, mask: &Tensor, rows: usize) -> Result<Tensor> {
        let (b, k) = mask.dims2()?;
        let allowed = mask.to_dtype(DType::F32)?.reshape((b, 1, 1, k))?;
        let min = mask_min(self.dtype);
        let bias = allowed.affine(-min, min)?.to_dtype(self.dtype)?;
        Ok(if rows == 1 {
            bias
        } else {
            bias.broadcast_as((b, 1, rows, k))?.contiguous()?
        })
    }

    /// Relative position bias plus causal and padding mask for decoder
    /// queries at `past..past + t`: `[b, h, t, past + t]`.
    fn decoder_self_bias(
        &self,
        b: usize,
        past: usize,
        t: usize,
        decoder_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let k = past + t;
        let mut causal = Vec::with_capacity(t * k);
        for q in past..past + t {
            for key in 0..k {
                causal.push(if key <= q { 1f32 } else { 0f32 });
            }
        }
        let mut allowed = Tensor::from_vec(causal, (1, 1, t, k), &self.device)?;
        if let Some(mask) = decoder_mask {
            let (mb, mk) = mask.dims2()?;
            if mb != b || mk != k {
                return Err(Error::Invalid(format!(
                    "decoder attention mask is [{mb}, {mk}], expected [{b}, {k}] (batch, cached + new positions)"
                )));
            }
            let pad = mask.to_dtype(DType::F32)?.reshape((b, 1, 1, k))?;
            allowed = allowed.broadcast_mul(&pad)?;
        }
        let min = mask_min(self.dtype);
        let mask = allowed.affine(-min, min)?.to_dtype(self.dtype)?;
        let pos = self.decoder.position_bias(&self.cfg, past, t, k)?;
        Ok(pos.broadcast_add(&mask)?)
    }
}

impl Stack {
    /// `[1, h, q_len, k_len]` from the learned bucket table.
    fn position_bias(
        &self,
        cfg: &T5Config,
        q_offset: usize,
        q_len: usize,
        k_len: usize,
    ) -> Result<Tensor> {
        let buckets = position::bucket_matrix(
            q_offset,
            q_len,
            k_len,
            !self.is_decoder,
            cfg.relative_attention_num_buckets,
            cfg.relative_attention_max_distance,
        );
        let ids = Tensor::from_vec(buckets, q_len * k_len, self.relative_bias.device())?;
        let bias = self
            .relative_bias
            .index_select(&ids, 0)?
            .reshape((q_len, k_len, cfg.num_heads))?
            .permute((2, 0, 1))?
            .unsqueeze(0)?;
        Ok(bias)
    }

    /// The blocks and the final norm. The decoder takes the cross-attention
    /// keys/values, their bias and (when decoding step by step) the
    /// self-attention cache, empty for a full-sequence pass.
    #[allow(clippy::type_complexity)]
    fn run(
        &self,
        cfg: &T5Config,
        mut x: Tensor,
        self_bias: &Tensor,
        mut cross: Option<(CrossKeys, &Tensor, &mut Vec<Option<KvCache>>)>,
        mode: &mut ForwardMode,
    ) -> Result<Tensor> {
        let p = cfg.dropout_rate;
        let caching = matches!(&cross, Some((_, _, caches)) if !caches.is_empty());
        let fused = !caching && fused_attention(mode);
        for (i, block) in self.blocks.iter().enumerate() {
            let h = block.self_norm.forward(&x)?;
            let packed = if fused {
                block
                    .self_attn
                    .forward_packed(&h, None, self_bias, p, mode)?
            } else {
                None
            };
            let h = match packed {
                Some(h) => h,
                None => {
                    let cache = match cross.as_mut() {
                        Some((_, _, caches)) if !caches.is_empty() => Some(&mut caches[i]),
                        _ => None,
                    };
                    block
                        .self_attn
                        .forward(&h, None, self_bias, cache, p, mode)?
                }
            };
            x = (x + mode.dropout(&h, p)?)?;
            if let (Some((attn, norm)), Some((keys, bias, _))) = (&block.cross, cross.as_ref()) {
                let h = norm.forward(&x)?;
                let h = match keys {
                    CrossKeys::Packed(kvs) => attn
                        .forward_packed(&h, Some(&kvs[i]), bias, p, mode)?
                        .ok_or_else(|| Error::Other("packed keys off the fused path".into()))?,
                    CrossKeys::Split(kvs) => {
                        attn.forward(&h, Some(&kvs[i]), bias, None, p, mode)?
                    }
                };
                x = (x + mode.dropout(&h, p)?)?;
            }
            let h = block.ff_norm.forward(&x)?;
            let h = block.ff.forward(&h, p, mode)?;
            x = (x + mode.dropout(&h, p)?)?;
        }
        let x = self.final_norm.forward(&x)?;
        mode.dropout(&x, p)
    }
}

/// The cross-attention keys and values of every decoder block: split into
/// heads (generation, dropout) or packed for the fused kernels.
enum CrossKeys<'a> {
    Split(&'a [KvCache]),
    Packed(&'a [Tensor]),
}

/// Whether attention takes the fused CPU kernels: they work in f32 (each
/// kernel also checks its tensors' device and dtype).
fn fused_attention(mode: &ForwardMode) -> bool {
    mode.compute() == DType::F32
}

fn build_stack(cfg: &T5Config, p: &mut ParamBuilder, is_decoder: bool) -> Result<Stack> {
    let (d, inner) = (cfg.d_model, cfg.inner_dim());
    let stack = if is_decoder { "decoder" } else { "encoder" };
    let layers = if is_decoder {
        cfg.decoder_layers()
    } else {
        cfg.num_layers
    };
    let eps = cfg.layer_norm_epsilon;
    let attention = |p: &mut ParamBuilder, prefix: &str| -> Result<Attention> {
        Ok(Attention {
            q: Linear::new(p.take(&format!("{prefix}.q.weight"), &[inner, d])?),
            k: Linear::new(p.take(&format!("{prefix}.k.weight"), &[inner, d])?),
            v: Linear::new(p.take(&format!("{prefix}.v.weight"), &[inner, d])?),
            o: Linear::new(p.take(&format!("{prefix}.o.weight"), &[d, inner])?),
            num_heads: cfg.num_heads,
            d_kv: cfg.d_kv,
        })
    };
    let norm = |p: &mut ParamBuilder, name: &str| -> Result<RmsNorm> {
        Ok(RmsNorm {
            weight: p.take(name, &[d])?,
            eps,
        })
    };
    let mut blocks = Vec::with_capacity(layers);
    let mut relative_bias = None;
    for i in 0..layers {
        let pre = format!("{stack}.block.{i}.layer");
        let self_attn = attention(p, &format!("{pre}.0.SelfAttention"))?;
        if i == 0 {
            relative_bias = Some(p.take(
                &format!("{pre}.0.SelfAttention.relative_attention_bias.weight"),
                &[cfg.relative_attention_num_buckets, cfg.num_heads],
            )?);
        }
        let self_norm = norm(p, &format!("{pre}.0.layer_norm.weight"))?;
        let (cross, ff_idx) = if is_decoder {
            let attn = attention(p, &format!("{pre}.1.EncDecAttention"))?;
            let n = norm(p, &format!("{pre}.1.layer_norm.weight"))?;
            (Some((attn, n)), 2)
        } else {
            (None, 1)
        };
        let ffp = format!("{pre}.{ff_idx}.DenseReluDense");
        let ff = match cfg.feed_forward_proj {
            FeedForward::Relu => FeedForwardBlock::Relu {
                wi: Linear::new(p.take(&format!("{ffp}.wi.weight"), &[cfg.d_ff, d])?),
                wo: Linear::new(p.take(&format!("{ffp}.wo.weight"), &[d, cfg.d_ff])?),
            },
            FeedForward::GatedGelu => FeedForwardBlock::GatedGelu {
                wi_0: Linear::new(p.take(&format!("{ffp}.wi_0.weight"), &[cfg.d_ff, d])?),
                wi_1: Linear::new(p.take(&format!("{ffp}.wi_1.weight"), &[cfg.d_ff, d])?),
                wo: Linear::new(p.take(&format!("{ffp}.wo.weight"), &[d, cfg.d_ff])?),
            },
        };
        let ff_norm = norm(p, &format!("{pre}.{ff_idx}.layer_norm.weight"))?;
        blocks.push(Block {
            self_attn,
            self_norm,
            cross,
            ff,
            ff_norm,
        });
    }
    let final_norm = norm(p, &format!("{stack}.final_layer_norm.weight"))?;
    Ok(Stack {
        blocks,
        final_norm,
        relative_bias: relative_bias.expect("validated: at least one layer"),
        is_decoder,
    })
}

/// The loss of a batch and what it was averaged over.
pub struct Loss {
    /// Mean cross-entropy over the counted tokens (plus the z-loss term).
    pub loss: Tensor,
    /// The cross-entropy alone, detached.
    pub cross_entropy: f32,
    /// How many label positions counted.
    pub tokens: usize,
}

/// Token-level cross-entropy averaged over the labels that count, as
/// `transformers` does: labels equal to [`IGNORE_INDEX`] (and, when given,
/// `pad_id`) are left out. `z_loss > 0` adds `z_loss * mean(logsumexp²)`,
/// which keeps the softmax normaliser near 1 (PaLM, T5X).
pub fn cross_entropy(
    logits: &Tensor,
    labels: &Tensor,
    pad_id: Option<u32>,
    z_loss: f64,
) -> Result<Loss> {
    let vocab = logits.dim(D::Minus1)?;
    let logits = logits.reshape(((), vocab))?.to_dtype(DType::F32)?;
    let labels = labels.flatten_all()?.to_dtype(DType::I64)?;
    let host: Vec<i64> = labels.to_vec1()?;
    let mut keep = Vec::with_capacity(host.len());
    let mut targets = Vec::with_capacity(host.len());
    for &l in &host {
        let counted = l >= 0 && pad_id.is_none_or(|p| l != p as i64);
        if counted && l as usize >= vocab {
            return Err(Error::Invalid(format!(
                "label {l} is outside the vocabulary of {vocab} tokens"
            )));
        }
        keep.push(if counted { 1f32 } else { 0f32 });
        targets.push(if counted { l as u32 } else { 0 });
    }
    let tokens = keep.iter().filter(|&&k| k > 0.0).count();
    let device = logits.device();
    let keep = Tensor::from_vec(keep, host.len(), device)?;
    let targets = Tensor::from_vec(targets, host.len(), device)?;
    let (nll, lse) = kernels::cross_entropy_rows_lse(&logits, &targets)?;
    let denom = tokens.max(1) as f64;
    let ce = ((nll * &keep)?.sum_all()? / denom)?;
    let cross_entropy = ce.to_scalar::<f32>()?;
    let loss = if z_loss > 0.0 {
        let z = ((lse.sqr()? * &keep)?.sum_all()? * (z_loss / denom))?;
        (ce + z)?
    } else {
        ce
    };
    Ok(Loss {
        loss,
        cross_entropy,
        tokens,
    })
}

/// Decoder inputs from labels, as `transformers`' `_shift_right`: the start
/// token, then the labels without the last, with ignored labels as padding.
pub fn shift_right(labels: &[i64], start: u32, pad: u32) -> Vec<u32> {
    let mut out = Vec::with_capacity(labels.len());
    if labels.is_empty() {
        return out;
    }
    out.push(start);
    out.extend(
        labels[..labels.len() - 1]
            .iter()
            .map(|&l| if l < 0 { pad } else { l as u32 }),
    );
    out
}
