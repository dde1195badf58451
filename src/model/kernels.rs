//! Fused CPU kernels for the parts of a training step that candle would run
//! as chains of small ops, each with its own backward: gated GELU, softmax,
//! RMS norm, cross-entropy and dropout; linear maps, the packed key/value
//! map and attention between projections; attention's batched products.
//!
//! Why they exist: on the CPU every candle op is a full pass over memory,
//! and in the backward pass every edge of the graph costs one more zeroed
//! buffer and one more add (candle's gradient store starts each gradient at
//! zero). A profile of a tiny-T5 step put a fifth of its time in the scalar
//! `tanhf`/`powf` calls of GELU's backward alone. Here each part is one
//! pass forward and one backward, with a polynomial `exp` the compiler
//! vectorises (AVX-512 or AVX2 where the CPU has them, chosen at run time).
//!
//! Off the CPU (CUDA, Metal), and for tensors that are not f32, the same
//! functions fall back to candle's composed ops, so the model has one call
//! for each part whatever the device.
//!
//! Reductions (row sums, the RMS-norm weight gradient, the attention bias
//! gradient) are summed in a fixed order, so results do not depend on how
//! threads were scheduled: a resumed run repeats its losses bit for bit.

use candle_core::{
    backend::BackendStorage, bail, CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout,
    Shape, Tensor, D,
};
use rayon::prelude::*;

type CResult<T> = candle_core::Result<T>;

/// Elements per parallel task in elementwise kernels: big enough that the
/// scheduling cost vanishes, small enough that both cores get work.
const CHUNK: usize = 1 << 14;

/// Compiles `$body` three times (AVX-512, AVX2+FMA, baseline) and picks the
/// best the CPU has at run time. The body's helpers are `#[inline(always)]`,
/// so they are compiled with the same instructions.
macro_rules! vectorized {
    ($(#[$m:meta])* fn $name:ident($($a:ident: $t:ty),* $(,)?) $body:block) => {
        $(#[$m])*
        fn $name($($a: $t),*) {
            #[inline(always)]
            fn generic($($a: $t),*) $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                unsafe fn v4($($a: $t),*) {
                    generic($($a),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn v3($($a: $t),*) {
                    generic($($a),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512vl")
                {
                    // SAFETY: the CPU has every feature `v4` is compiled for.
                    return unsafe { v4($($a),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: as above, for `v3`.
                    return unsafe { v3($($a),*) };
                }
            }
            generic($($a),*)
        }
    };
}

// ---------------------------------------------------------------- math

/// `e^x` in f32 (Cephes' polynomial, within 2 ulp), branch-free so that it
/// vectorises. NaN stays NaN; below -87.3 it is 0, as the true value
/// rounds to (almost) 0 in f32.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // 1.5 * 2^23 rounds to an integer; +127 puts the exponent bias in the
    // low bits, ready to shift into place.
    const MAGIC: f32 = 12_582_912.0 + 127.0;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // `clamp`, not `max`/`min`: NaN must pass through.
    let xc = x.clamp(-87.0, 88.0);
    let t = xc * LOG2E + MAGIC;
    let n = t - MAGIC;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    let scale = f32::from_bits(t.to_bits() << 23);
    if x < -87.3 {
        0.0
    } else {
        y * scale
    }
}

const GELU_K: f32 = 0.797_884_6; // sqrt(2 / pi)
const GELU_C: f32 = 0.044_715;

/// `(1 + tanh(u)) / 2` with `u = k (x + c x³)`, the tanh-approximate
/// GELU's (`gelu_new`) gate, written as the logistic `1 / (1 + e^(-2u))`:
/// `1 + tanh(u)` loses the digits of small values by cancellation.
#[inline(always)]
fn gelu_gate(x: f32) -> f32 {
    let u = GELU_K * (x + GELU_C * x * x * x);
    1.0 / (1.0 + exp(-2.0 * u))
}

// -------------------------------------------------------------- helpers

/// Lanes of the reductions below: float sums only vectorise when written
/// as independent partial sums (the compiler may not reorder float adds).
const LANES: usize = 16;

/// `Σ f(x_i)` in a fixed order (so the same bits every time).
#[inline(always)]
fn sum_map(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            acc[i] += f(c[i]);
        }
    }
    let mut s = chunks.remainder().iter().fold(0f32, |s, &v| s + f(v));
    for a in acc {
        s += a;
    }
    s
}

/// `Σ f(x_i, y_i)` in a fixed order.
#[inline(always)]
fn sum_map2(x: &[f32], y: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    let n = x.len().min(y.len());
    let (x, y) = (&x[..n], &y[..n]);
    let mut acc = [0f32; LANES];
    let full = n / LANES * LANES;
    for (cx, cy) in x[..full]
        .chunks_exact(LANES)
        .zip(y[..full].chunks_exact(LANES))
    {
        for i in 0..LANES {
            acc[i] += f(cx[i], cy[i]);
        }
    }
    let mut s = 0f32;
    for i in full..n {
        s += f(x[i], y[i]);
    }
    for a in acc {
        s += a;
    }
    s
}

/// The largest value (NaN is skipped here, and surfaces in the `exp`
/// that follows every use).
#[inline(always)]
fn max_of(x: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let mut chunks = x.chunks_exact(LANES);
    for c in &mut chunks {
        for i in 0..LANES {
            acc[i] = if c[i] > acc[i] { c[i] } else { acc[i] };
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &v in acc.iter().chain(chunks.remainder()) {
        m = if v > m { v } else { m };
    }
    m
}

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> CResult<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        bail!("{op}: expects f32 tensors, got {:?}", s.dtype())
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => bail!("{op}: expects contiguous tensors"),
    }
}

fn u32_slice<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> CResult<&'a [u32]> {
    let CpuStorage::U32(v) = s else {
        bail!("{op}: expects u32 targets, got {:?}", s.dtype())
    };
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => bail!("{op}: expects contiguous tensors"),
    }
}

/// Whether the fused kernels can take these tensors: all f32 on the CPU.
fn fusable(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// Runs `f(start, out_chunk)` over `out` in parallel chunks.
fn for_chunks(out: &mut [f32], chunk: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    if out.len() <= chunk {
        f(0, out);
    } else {
        out.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, c)| f(i * chunk, c));
    }
}

/// Rows per parallel task for row-wise kernels of rows `len` long.
fn rows_per_task(len: usize) -> usize {
    (CHUNK / len.max(1)).max(1)
}

// ------------------------------------------------------------ gated GELU

vectorized! {
    fn gated_gelu_fwd(gate: &[f32], up: &[f32], out: &mut [f32]) {
        for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
            *o = g * gelu_gate(g) * u;
        }
    }
}

vectorized! {
    /// `d_gate = grad · up · gelu'(gate)`, `d_up = grad · gelu(gate)`.
    fn gated_gelu_bwd(gate: &[f32], up: &[f32], grad: &[f32], d_gate: &mut [f32], d_up: &mut [f32]) {
        for i in 0..d_gate.len() {
            let (x, u, g) = (gate[i], up[i], grad[i]);
            let s = gelu_gate(x);
            let du = GELU_K * (1.0 + 3.0 * GELU_C * x * x);
            let d_gelu = s + 2.0 * x * s * (1.0 - s) * du;
            d_gate[i] = g * u * d_gelu;
            d_up[i] = g * x * s;
        }
    }
}

struct GatedGelu;

impl CustomOp2 for GatedGelu {
    fn name(&self) -> &'static str {
        "gated-gelu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let gate = f32_slice(s1, l1, self.name())?;
        let up = f32_slice(s2, l2, self.name())?;
        if gate.len() != up.len() {
            bail!(
                "gated-gelu: shapes {:?} and {:?} differ",
                l1.shape(),
                l2.shape()
            );
        }
        let mut out = vec![0f32; gate.len()];
        for_chunks(&mut out, CHUNK, |start, o| {
            gated_gelu_fwd(
                &gate[start..start + o.len()],
                &up[start..start + o.len()],
                o,
            )
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let both = gate.apply_op3_no_bwd(up, &grad.contiguous()?, &GatedGeluGrad)?;
        Ok((Some(both.get(0)?), Some(both.get(1)?)))
    }
}

/// Both gradients of [`GatedGelu`] in one pass, stacked as `[2, ...]`.
struct GatedGeluGrad;

impl CustomOp3 for GatedGeluGrad {
    fn name(&self) -> &'static str {
        "gated-gelu-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let gate = f32_slice(s1, l1, self.name())?;
        let up = f32_slice(s2, l2, self.name())?;
        let grad = f32_slice(s3, l3, self.name())?;
        let n = gate.len();
        let mut out = vec![0f32; 2 * n];
        let (d_gate, d_up) = out.split_at_mut(n);
        let chunk = CHUNK;
        d_gate
            .par_chunks_mut(chunk)
            .zip(d_up.par_chunks_mut(chunk))
            .enumerate()
            .for_each(|(i, (dg, du))| {
                let r = i * chunk..i * chunk + dg.len();
                gated_gelu_bwd(&gate[r.clone()], &up[r.clone()], &grad[r], dg, du);
            });
        let mut dims = vec![2];
        dims.extend_from_slice(l1.dims());
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

/// `gelu_tanh(gate) * up`: T5 v1.1's gated feed-forward activation.
pub fn gated_gelu(gate: &Tensor, up: &Tensor) -> CResult<Tensor> {
    if fusable(&[gate, up]) && gate.shape() == up.shape() {
        gate.contiguous()?.apply_op2(&up.contiguous()?, GatedGelu)
    } else {
        gate.gelu()?.mul(up)
    }
}

// --------------------------------------------------------------- softmax

vectorized! {
    fn softmax_rows(x: &[f32], out: &mut [f32], len: usize) {
        for (xr, yr) in x.chunks_exact(len).zip(out.chunks_exact_mut(len)) {
            let max = max_of(xr);
            for (y, &v) in yr.iter_mut().zip(xr) {
                *y = exp(v - max);
            }
            let inv = 1.0 / sum_map(yr, |v| v);
            for y in yr.iter_mut() {
                *y *= inv;
            }
        }
    }
}

vectorized! {
    fn softmax_grad_rows(y: &[f32], g: &[f32], out: &mut [f32], len: usize) {
        for ((yr, gr), dr) in y.chunks_exact(len).zip(g.chunks_exact(len)).zip(out.chunks_exact_mut(len)) {
            let dot = sum_map2(yr, gr, |a, b| a * b);
            for ((d, &yv), &gv) in dr.iter_mut().zip(yr).zip(gr) {
                *d = yv * (gv - dot);
            }
        }
    }
}

struct Softmax;

impl CustomOp1 for Softmax {
    fn name(&self) -> &'static str {
        "softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let len = l.dims().last().copied().unwrap_or(1);
        let mut out = vec![0f32; x.len()];
        let rows = rows_per_task(len) * len;
        for_chunks(&mut out, rows, |start, o| {
            softmax_rows(&x[start..start + o.len()], o, len)
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> CResult<Option<Tensor>> {
        Ok(Some(
            res.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxGrad)?,
        ))
    }
}

struct SoftmaxGrad;

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let y = f32_slice(s1, l1, self.name())?;
        let g = f32_slice(s2, l2, self.name())?;
        let len = l1.dims().last().copied().unwrap_or(1);
        let mut out = vec![0f32; y.len()];
        let rows = rows_per_task(len) * len;
        for_chunks(&mut out, rows, |start, o| {
            let r = start..start + o.len();
            softmax_grad_rows(&y[r.clone()], &g[r], o, len)
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Softmax over the last dimension.
pub fn softmax_last_dim(xs: &Tensor) -> CResult<Tensor> {
    if fusable(&[xs]) && xs.rank() > 0 {
        xs.contiguous()?.apply_op1(Softmax)
    } else {
        candle_nn::ops::softmax(xs, D::Minus1)
    }
}

// -------------------------------------------------------------- RMS norm

vectorized! {
    fn rms_norm_rows(x: &[f32], w: &[f32], out: &mut [f32], eps: f32) {
        let d = w.len();
        for (xr, yr) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
            let ss = sum_map(xr, |v| v * v);
            let r = 1.0 / (ss / d as f32 + eps).sqrt();
            for ((y, &v), &wv) in yr.iter_mut().zip(xr).zip(w) {
                *y = wv * (v * r);
            }
        }
    }
}

vectorized! {
    /// `dx` of the rows, and their share of `dw` added into `dw`.
    fn rms_norm_grad_rows(x: &[f32], w: &[f32], g: &[f32], dx: &mut [f32], dw: &mut [f32], eps: f32) {
        let d = w.len();
        for ((xr, gr), dr) in x.chunks_exact(d).zip(g.chunks_exact(d)).zip(dx.chunks_exact_mut(d)) {
            let ss = sum_map(xr, |v| v * v);
            let r = 1.0 / (ss / d as f32 + eps).sqrt();
            // Σ g·w·x, as Σ (g·w)·x over lanes.
            let mut gw = [0f32; 1024];
            let ax = if d <= gw.len() {
                for ((o, &gv), &wv) in gw.iter_mut().zip(gr).zip(w) {
                    *o = gv * wv;
                }
                sum_map2(&gw[..d], xr, |a, b| a * b)
            } else {
                gr.iter().zip(w).zip(xr).fold(0f32, |s, ((&gv, &wv), &xv)| s + gv * wv * xv)
            };
            let c = r * r * ax / d as f32;
            for (((o, &gv), &wv), &xv) in dr.iter_mut().zip(gr).zip(w).zip(xr) {
                *o = r * (gv * wv - xv * c);
            }
            for ((acc, &gv), &xv) in dw.iter_mut().zip(gr).zip(xr) {
                *acc += gv * xv * r;
            }
        }
    }
}

struct RmsNormOp {
    eps: f32,
}

impl CustomOp2 for RmsNormOp {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, self.name())?;
        let w = f32_slice(s2, l2, self.name())?;
        let d = w.len();
        let mut out = vec![0f32; x.len()];
        let eps = self.eps;
        for_chunks(&mut out, rows_per_task(d) * d, |start, o| {
            rms_norm_rows(&x[start..start + o.len()], w, o, eps)
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let n = x.elem_count();
        let d = w.elem_count();
        let out = x.apply_op3_no_bwd(w, &grad.contiguous()?, &RmsNormGrad { eps: self.eps })?;
        let dx = out.narrow(0, 0, n)?.reshape(x.shape())?;
        let dw = out.narrow(0, n, d)?.reshape(w.shape())?;
        Ok((Some(dx), Some(dw)))
    }
}

/// `dx` and `dw` of [`RmsNormOp`], flat: `n` values of `dx`, then `d` of `dw`.
struct RmsNormGrad {
    eps: f32,
}

impl CustomOp3 for RmsNormGrad {
    fn name(&self) -> &'static str {
        "rms-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, self.name())?;
        let w = f32_slice(s2, l2, self.name())?;
        let g = f32_slice(s3, l3, self.name())?;
        let (n, d) = (x.len(), w.len());
        let mut out = vec![0f32; n + d];
        let (dx, dw) = out.split_at_mut(n);
        let chunk = rows_per_task(d) * d;
        let eps = self.eps;
        // One partial dw per fixed block of rows, summed in block order:
        // the same bits whatever the thread schedule.
        let partials: Vec<Vec<f32>> = dx
            .par_chunks_mut(chunk)
            .enumerate()
            .map(|(i, dxc)| {
                let r = i * chunk..i * chunk + dxc.len();
                let mut part = vec![0f32; d];
                rms_norm_grad_rows(&x[r.clone()], w, &g[r], dxc, &mut part, eps);
                part
            })
            .collect();
        for part in &partials {
            for (acc, p) in dw.iter_mut().zip(part) {
                *acc += p;
            }
        }
        Ok((CpuStorage::F32(out), Shape::from(n + d)))
    }
}

/// T5's layer norm on f32 `xs`: `w · x / sqrt(mean(x²) + eps)`, no mean
/// subtraction and no bias.
pub fn rms_norm(xs: &Tensor, weight: &Tensor, eps: f64) -> CResult<Tensor> {
    let d = weight.elem_count();
    if fusable(&[xs, weight]) && xs.rank() > 0 && xs.dim(D::Minus1)? == d {
        xs.contiguous()?
            .apply_op2(&weight.contiguous()?, RmsNormOp { eps: eps as f32 })
    } else {
        let var = xs.sqr()?.mean_keepdim(D::Minus1)?;
        let normed = xs.broadcast_div(&(var + eps)?.sqrt()?)?;
        normed.to_dtype(weight.dtype())?.broadcast_mul(weight)
    }
}

// --------------------------------------------------------- cross-entropy

vectorized! {
    /// Per row: `[logsumexp - x[target], logsumexp]`.
    fn cross_entropy_rows(x: &[f32], targets: &[u32], out: &mut [f32], len: usize) {
        for ((xr, &t), o) in x.chunks_exact(len).zip(targets).zip(out.chunks_exact_mut(2)) {
            let max = max_of(xr);
            let sum = sum_map(xr, |v| exp(v - max));
            let lse = max + sum.ln();
            o[0] = lse - xr[t as usize];
            o[1] = lse;
        }
    }
}

vectorized! {
    /// `d logits = (g_nll + g_lse) · softmax - g_nll · onehot(target)`.
    fn cross_entropy_grad_rows(x: &[f32], stats: &[f32], grads: &[f32], targets: &[u32], out: &mut [f32], len: usize) {
        for (i, (xr, dr)) in x.chunks_exact(len).zip(out.chunks_exact_mut(len)).enumerate() {
            let lse = stats[2 * i + 1];
            let (g_nll, g_lse) = (grads[2 * i], grads[2 * i + 1]);
            let scale = g_nll + g_lse;
            for (d, &v) in dr.iter_mut().zip(xr) {
                *d = scale * exp(v - lse);
            }
            dr[targets[i] as usize] -= g_nll;
        }
    }
}

struct CrossEntropy;

impl CustomOp2 for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, self.name())?;
        let targets = u32_slice(s2, l2, self.name())?;
        let (rows, len) = l1.shape().dims2()?;
        if targets.len() != rows {
            bail!("cross-entropy: {} targets for {rows} rows", targets.len());
        }
        if let Some(&t) = targets.iter().find(|&&t| t as usize >= len) {
            bail!("cross-entropy: target {t} is outside the {len} classes");
        }
        let mut out = vec![0f32; rows * 2];
        let per = rows_per_task(len);
        for_chunks(&mut out, per * 2, |start, o| {
            let r0 = start / 2;
            let r1 = r0 + o.len() / 2;
            cross_entropy_rows(&x[r0 * len..r1 * len], &targets[r0..r1], o, len)
        });
        Ok((CpuStorage::F32(out), Shape::from((rows, 2))))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let op = CrossEntropyGrad {
            stats: res.flatten_all()?.to_vec1()?,
            grads: grad.flatten_all()?.to_vec1()?,
            targets: targets.to_vec1()?,
        };
        Ok((Some(logits.apply_op1_no_bwd(&op)?), None))
    }
}

/// The logits' gradient of [`CrossEntropy`]; the per-row values are few
/// (one pair a row), so they travel in the op itself.
struct CrossEntropyGrad {
    stats: Vec<f32>,
    grads: Vec<f32>,
    targets: Vec<u32>,
}

impl CustomOp1 for CrossEntropyGrad {
    fn name(&self) -> &'static str {
        "cross-entropy-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        let (rows, len) = l.shape().dims2()?;
        if self.targets.len() != rows
            || self.stats.len() != 2 * rows
            || self.grads.len() != 2 * rows
        {
            bail!("cross-entropy-grad: per-row values do not match {rows} rows");
        }
        let mut out = vec![0f32; x.len()];
        let per = rows_per_task(len);
        for_chunks(&mut out, per * len, |start, o| {
            let (r0, r1) = (start / len, (start + o.len()) / len);
            cross_entropy_grad_rows(
                &x[start..start + o.len()],
                &self.stats[2 * r0..2 * r1],
                &self.grads[2 * r0..2 * r1],
                &self.targets[r0..r1],
                o,
                len,
            )
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// Per row of `logits` `[n, classes]` (f32) and `targets` `[n]` (u32):
/// `(-log softmax(row)[target], logsumexp(row))`, both `[n]`.
pub fn cross_entropy_rows_lse(logits: &Tensor, targets: &Tensor) -> CResult<(Tensor, Tensor)> {
    let targets = targets.to_dtype(DType::U32)?;
    if fusable(&[logits]) && targets.device().is_cpu() && logits.rank() == 2 {
        let out = logits
            .contiguous()?
            .apply_op2(&targets.contiguous()?, CrossEntropy)?;
        Ok((
            out.narrow(1, 0, 1)?.squeeze(1)?,
            out.narrow(1, 1, 1)?.squeeze(1)?,
        ))
    } else {
        let lse = logits.log_sum_exp(D::Minus1)?;
        let picked = logits.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?;
        Ok(((&lse - picked)?, lse))
    }
}

// ------------------------------------------------------- batched matmul

/// A matrix operand of a batched product: where it starts in its storage
/// and its strides (batch, row, column), in elements.
#[derive(Clone, Copy)]
struct Operand {
    offset: usize,
    batch: usize,
    row: usize,
    col: usize,
}

/// The operand of a `[..., rows, cols]` layout whose leading dims fold into
/// one batch stride, or `None` (candle's matmul then takes it).
fn operand(l: &Layout) -> Option<(Operand, usize, usize, usize)> {
    let dims = l.dims();
    let strides = l.stride();
    let r = dims.len();
    if r < 2 {
        return None;
    }
    let batches: usize = dims[..r - 2].iter().product();
    // Leading dims fold when each stride is the next one times its dim
    // (size-1 dims fold whatever their stride).
    for i in 0..r.saturating_sub(3) {
        if dims[i] != 1 && strides[i] != strides[i + 1] * dims[i + 1] {
            return None;
        }
    }
    let batch = if r > 2 { strides[r - 3] } else { 0 };
    Some((
        Operand {
            offset: l.start_offset(),
            batch,
            row: strides[r - 2],
            col: strides[r - 1],
        },
        batches,
        dims[r - 2],
        dims[r - 1],
    ))
}

/// `[B, m, k] x [B, k, n]`. candle runs the batch as a loop of gemm calls,
/// each split over the threads: for attention's many small products
/// (128 x 128 x 32 per head) the splitting costs more than the work. Here
/// the batch itself is split over the threads, one gemm per matrix.
struct BatchedMatMul;

impl CustomOp2 for BatchedMatMul {
    fn name(&self) -> &'static str {
        "batched-matmul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let (CpuStorage::F32(a), CpuStorage::F32(b)) = (s1, s2) else {
            bail!("batched-matmul: expects f32 tensors");
        };
        let (Some((oa, ba, m, k)), Some((ob, bb, k2, n))) = (operand(l1), operand(l2)) else {
            bail!("batched-matmul: batch dims that do not fold");
        };
        if ba != bb || k != k2 {
            bail!(
                "batched-matmul: shapes {:?} and {:?} do not multiply",
                l1.dims(),
                l2.dims()
            );
        }
        let mut out = vec![0f32; ba * m * n];
        let one = |i: usize, dst: &mut [f32], parallelism: gemm::Parallelism| {
            let a = &a[oa.offset + i * oa.batch..];
            let b = &b[ob.offset + i * ob.batch..];
            // SAFETY: the layouts come from candle and describe elements
            // inside the storages; `dst` is one contiguous m x n matrix.
            unsafe {
                gemm::gemm(
                    m,
                    n,
                    k,
                    dst.as_mut_ptr(),
                    1,
                    n as isize,
                    false,
                    a.as_ptr(),
                    oa.col as isize,
                    oa.row as isize,
                    b.as_ptr(),
                    ob.col as isize,
                    ob.row as isize,
                    0f32,
                    1f32,
                    false,
                    false,
                    false,
                    parallelism,
                )
            }
        };
        let threads = rayon::current_num_threads();
        if ba >= 2 * threads && m * n > 0 {
            out.par_chunks_mut(m * n)
                .enumerate()
                .for_each(|(i, dst)| one(i, dst, gemm::Parallelism::None));
        } else if m * n > 0 {
            let par = if threads > 1 {
                gemm::Parallelism::Rayon(threads)
            } else {
                gemm::Parallelism::None
            };
            for (i, dst) in out.chunks_mut(m * n).enumerate() {
                one(i, dst, par);
            }
        }
        let mut dims = l1.dims().to_vec();
        let r = dims.len();
        dims[r - 1] = n;
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let da = batched_matmul_raw(grad, &b.t()?)?;
        let db = batched_matmul_raw(&a.t()?, grad)?;
        Ok((Some(da), Some(db)))
    }
}

/// `t` as it is when [`BatchedMatMul`] can read its layout, else a
/// contiguous copy.
fn foldable(t: &Tensor) -> CResult<Tensor> {
    if operand(t.layout()).is_some() {
        Ok(t.clone())
    } else {
        t.contiguous()
    }
}

fn batched_matmul_raw(a: &Tensor, b: &Tensor) -> CResult<Tensor> {
    foldable(a)?.apply_op2_no_bwd(&foldable(b)?, &BatchedMatMul)
}

/// `a.matmul(b)` for `[..., m, k] x [..., k, n]` with the same batch dims:
/// the batch split over the threads on the CPU (see [`BatchedMatMul`]).
pub fn batched_matmul(a: &Tensor, b: &Tensor) -> CResult<Tensor> {
    let r = a.rank();
    if fusable(&[a, b]) && r >= 3 && b.rank() == r && a.dims()[..r - 2] == b.dims()[..r - 2] {
        foldable(a)?.apply_op2(&foldable(b)?, BatchedMatMul)
    } else {
        a.matmul(b)
    }
}

// ------------------------------------------------- linear and attention
//
// The ops below take whole parts of a layer (a linear map, the key and
// value maps together, the attention between projections) so that the
// graph has two or three edges where candle's composed ops have a dozen:
// every edge of candle's backward pass zeroes a buffer the size of its
// tensor and adds into it, and every node keeps its output alive until the
// backward pass is done.

/// A raw output pointer shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: only used where each task writes elements no other task touches.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// Through a method, so that closures capture the whole (Sync) struct
    /// rather than the raw pointer field.
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

fn gemm_threads() -> gemm::Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => gemm::Parallelism::None,
        n => gemm::Parallelism::Rayon(n),
    }
}

/// A matrix in memory: its first element and its row and column strides.
#[derive(Clone, Copy)]
struct Mat {
    ptr: *const f32,
    rs: usize,
    cs: usize,
}

impl Mat {
    /// A row-major matrix whose rows are `rs` apart.
    fn rows(data: &[f32], rs: usize) -> Self {
        Mat {
            ptr: data.as_ptr(),
            rs,
            cs: 1,
        }
    }

    /// The transpose of a row-major matrix whose rows are `rs` apart.
    fn transposed(data: &[f32], rs: usize) -> Self {
        Mat {
            ptr: data.as_ptr(),
            rs: 1,
            cs: rs,
        }
    }
}

/// `y = x Wᵀ` for `x: rows x inn`, `W: out x inn`, into `y` whose rows are
/// `y_rs` apart.
///
/// # Safety
/// `y` must hold `rows` rows of `out` values `y_rs` apart, and overlap
/// nothing else.
#[allow(clippy::too_many_arguments)]
unsafe fn x_wt(
    y: *mut f32,
    y_rs: usize,
    x: &[f32],
    w: &[f32],
    rows: usize,
    out: usize,
    inn: usize,
) {
    gemm_into(
        y,
        y_rs,
        false,
        rows,
        out,
        inn,
        Mat::rows(x, inn),
        Mat::transposed(w, inn),
        gemm_threads(),
    )
}

/// The gradients of [`x_wt`]: `dx (+)= g W` and `dW = gᵀ x`, where the rows
/// of `g` (`rows x out`) are `g_rs` apart.
#[allow(clippy::too_many_arguments)]
fn linear_grads(
    dx: &mut [f32],
    accumulate: bool,
    dw: &mut [f32],
    g: &[f32],
    g_rs: usize,
    w: &[f32],
    x: &[f32],
    (rows, out, inn): (usize, usize, usize),
) {
    assert!(dx.len() >= rows * inn && dw.len() >= out * inn && x.len() >= rows * inn);
    assert!(w.len() >= out * inn && (rows == 0 || g.len() >= (rows - 1) * g_rs + out));
    // SAFETY: the asserts above bound every element the strides reach;
    // dx and dw are distinct buffers of their own.
    unsafe {
        gemm_into(
            dx.as_mut_ptr(),
            inn,
            accumulate,
            rows,
            inn,
            out,
            Mat::rows(g, g_rs),
            Mat::rows(w, inn),
            gemm_threads(),
        );
        gemm_into(
            dw.as_mut_ptr(),
            inn,
            false,
            out,
            inn,
            rows,
            Mat::transposed(g, g_rs),
            Mat::rows(x, inn),
            gemm_threads(),
        );
    }
}

/// `dst (m x n, row stride dst_rs) [+]= a (m x k) · b (k x n)`.
///
/// # Safety
/// Every element the strides reach must lie inside its buffer, and `dst`
/// must not overlap `a` or `b` or another task's output.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_into(
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    m: usize,
    n: usize,
    k: usize,
    a: Mat,
    b: Mat,
    par: gemm::Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        accumulate,
        a.ptr,
        a.cs as isize,
        a.rs as isize,
        b.ptr,
        b.cs as isize,
        b.rs as isize,
        if accumulate { 1f32 } else { 0f32 },
        1f32,
        false,
        false,
        false,
        par,
    )
}

/// The f32 values of a contiguous CPU tensor.
fn host<'a>(s: &'a candle_core::Storage, l: &Layout, op: &str) -> CResult<&'a [f32]> {
    match s {
        candle_core::Storage::Cpu(c) => f32_slice(c, l, op),
        _ => bail!("{op}: expects tensors on the CPU"),
    }
}

/// `x Wᵀ` for `x: [..., in]`, `W: [out, in]`.
struct LinearOp;

impl CustomOp2 for LinearOp {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, self.name())?;
        let w = f32_slice(s2, l2, self.name())?;
        let (out, inn) = l2.shape().dims2()?;
        let rows = x.len() / inn.max(1);
        let mut y = vec![0f32; rows * out];
        // SAFETY: y is rows x out, contiguous and fresh.
        unsafe { x_wt(y.as_mut_ptr(), out, x, w, rows, out, inn) };
        let mut dims = l1.dims().to_vec();
        let r = dims.len();
        dims[r - 1] = out;
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (out, inn) = w.dims2()?;
        let rows = x.elem_count() / inn.max(1);
        let mut dx = vec![0f32; rows * inn];
        let mut dw = vec![0f32; out * inn];
        {
            let (xs, xl) = x.storage_and_layout();
            let (ws, wl) = w.storage_and_layout();
            let (gs, gl) = grad.storage_and_layout();
            let (xv, wv, gv) = (
                host(&xs, xl, "linear")?,
                host(&ws, wl, "linear")?,
                host(&gs, gl, "linear")?,
            );
            linear_grads(&mut dx, false, &mut dw, gv, out, wv, xv, (rows, out, inn));
        }
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(dw, w.shape(), dev)?),
        ))
    }
}

/// `x Wᵀ` for `x: [..., in]` and `W: [out, in]`: one op with its own
/// backward on the CPU, candle's reshape and matmul elsewhere.
pub fn linear(xs: &Tensor, weight: &Tensor) -> CResult<Tensor> {
    if fusable(&[xs, weight])
        && xs.rank() >= 1
        && weight.rank() == 2
        && xs.dim(D::Minus1)? == weight.dim(1)?
    {
        xs.contiguous()?.apply_op2(&weight.contiguous()?, LinearOp)
    } else {
        let dims = xs.dims();
        let inner = dims[dims.len() - 1];
        let rows = xs.elem_count() / inner.max(1);
        let w = weight.to_dtype(xs.dtype())?;
        let y = xs.reshape((rows, inner))?.matmul(&w.t()?)?;
        let mut shape = dims.to_vec();
        let r = shape.len();
        shape[r - 1] = weight.dim(0)?;
        y.reshape(shape)
    }
}

/// Keys and values in one tensor, `[..., 2 * inner]`: `x W_kᵀ` then
/// `x W_vᵀ` in each row.
struct KvProjection;

impl CustomOp3 for KvProjection {
    fn name(&self) -> &'static str {
        "kv-projection"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let x = f32_slice(s1, l1, self.name())?;
        let wk = f32_slice(s2, l2, self.name())?;
        let wv = f32_slice(s3, l3, self.name())?;
        let (out, inn) = l2.shape().dims2()?;
        if l3.dims() != l2.dims() {
            bail!("kv-projection: key and value weights differ in shape");
        }
        let rows = x.len() / inn.max(1);
        let mut y = vec![0f32; rows * 2 * out];
        for (i, w) in [wk, wv].into_iter().enumerate() {
            // SAFETY: half of each row of y, rows 2 * out apart.
            unsafe { x_wt(y.as_mut_ptr().add(i * out), 2 * out, x, w, rows, out, inn) };
        }
        let mut dims = l1.dims().to_vec();
        let r = dims.len();
        dims[r - 1] = 2 * out;
        Ok((CpuStorage::F32(y), Shape::from(dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        wk: &Tensor,
        wv: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (out, inn) = wk.dims2()?;
        let rows = x.elem_count() / inn.max(1);
        let mut dx = vec![0f32; rows * inn];
        let mut dwk = vec![0f32; out * inn];
        let mut dwv = vec![0f32; out * inn];
        {
            let (xs, xl) = x.storage_and_layout();
            let (ks, kl) = wk.storage_and_layout();
            let (vs, vl) = wv.storage_and_layout();
            let (gs, gl) = grad.storage_and_layout();
            let name = "kv-projection";
            let (xv, kv, vv, gv) = (
                host(&xs, xl, name)?,
                host(&ks, kl, name)?,
                host(&vs, vl, name)?,
                host(&gs, gl, name)?,
            );
            for (i, (w, dw)) in [(kv, &mut dwk), (vv, &mut dwv)].into_iter().enumerate() {
                // Keys, then values: half of each row of the gradient.
                let g = &gv[i * out..];
                linear_grads(&mut dx, i > 0, dw, g, 2 * out, w, xv, (rows, out, inn));
            }
        }
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(dwk, wk.shape(), dev)?),
            Some(Tensor::from_vec(dwv, wv.shape(), dev)?),
        ))
    }
}

/// `[x W_kᵀ | x W_vᵀ]` along the last dim, on the CPU in f32 (see
/// [`attention`]); `None` where the fused path does not apply.
pub fn kv_projection(xs: &Tensor, wk: &Tensor, wv: &Tensor) -> CResult<Option<Tensor>> {
    if !(fusable(&[xs, wk, wv]) && wk.rank() == 2 && wk.dims() == wv.dims() && xs.rank() == 3) {
        return Ok(None);
    }
    if xs.dim(D::Minus1)? != wk.dim(1)? {
        return Ok(None);
    }
    Ok(Some(xs.contiguous()?.apply_op3(
        &wk.contiguous()?,
        &wv.contiguous()?,
        KvProjection,
    )?))
}

/// Multi-head attention between projections, without T5's scaling:
/// `softmax(q kᵀ + bias) v` per head, where `q: [b, s, h*d]`,
/// `kv: [b, t, 2*h*d]` (keys, then values, as [`kv_projection`] makes
/// them) and `bias: [1 or b, 1 or h, s, t]`. Heads are read in place
/// through strides (no split, transpose or copy), the batch and heads are
/// split over the threads, and the softmax is kept for the backward pass.
struct AttentionOp {
    heads: usize,
    /// Dropout on the weights: the keep mask `[b, h, s, t]` and the scale.
    dropout: Option<(std::sync::Arc<Vec<u8>>, f32)>,
    /// The attention weights of the forward pass, `[b, h, s, t]`.
    probs: std::sync::Mutex<Vec<f32>>,
}

struct AttnDims {
    b: usize,
    s: usize,
    t: usize,
    h: usize,
    d: usize,
    bias_b: usize,
    bias_h: usize,
    /// 1 when the bias is one row for every query (a padding mask).
    bias_s: usize,
}

impl AttnDims {
    fn inner(&self) -> usize {
        self.h * self.d
    }

    fn bias_offset(&self, bi: usize, hi: usize) -> usize {
        let bb = if self.bias_b > 1 { bi } else { 0 };
        let bh = if self.bias_h > 1 { hi } else { 0 };
        (bb * self.bias_h + bh) * self.bias_s * self.t
    }

    /// The bias row of query row `r`, from a head's bias offset.
    fn bias_row(&self, r: usize) -> usize {
        if self.bias_s > 1 {
            r * self.t
        } else {
            0
        }
    }
}

fn attn_dims(q: &[usize], kv: &[usize], bias: &[usize], heads: usize) -> CResult<AttnDims> {
    let (&[b, s, inner], &[kb, t, kv2], &[bb, bh, bs, bt]) = (q, kv, bias) else {
        bail!("attention: expects q [b, s, h*d], kv [b, t, 2*h*d], bias [b, h, s, t]")
    };
    if heads == 0
        || inner % heads != 0
        || kb != b
        || kv2 != 2 * inner
        || !(bs == s || bs == 1)
        || bt != t
    {
        bail!("attention: shapes q {q:?}, kv {kv:?}, bias {bias:?} do not match");
    }
    if !(bb == 1 || bb == b) || !(bh == 1 || bh == heads) {
        bail!("attention: bias {bias:?} does not broadcast over batch {b} and {heads} heads");
    }
    Ok(AttnDims {
        b,
        s,
        t,
        h: heads,
        d: inner / heads,
        bias_b: bb,
        bias_h: bh,
        bias_s: bs,
    })
}

impl CustomOp3 for AttentionOp {
    fn name(&self) -> &'static str {
        "attention"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> CResult<(CpuStorage, Shape)> {
        let q = f32_slice(s1, l1, self.name())?;
        let kv = f32_slice(s2, l2, self.name())?;
        let bias = f32_slice(s3, l3, self.name())?;
        let g = attn_dims(l1.dims(), l2.dims(), l3.dims(), self.heads)?;
        let (inner, st) = (g.inner(), g.s * g.t);
        let mut out = vec![0f32; g.b * g.s * inner];
        let mut probs = vec![0f32; g.b * g.h * st];
        let out_ptr = SharedMut(out.as_mut_ptr());
        probs.par_chunks_mut(st).enumerate().for_each(|(task, p)| {
            let (bi, hi) = (task / g.h, task % g.h);
            let q0 = bi * g.s * inner + hi * g.d;
            let k0 = bi * g.t * 2 * inner + hi * g.d;
            // SAFETY: p is s x t; q, k and v are read through their
            // strides inside their buffers; each task writes only its
            // own head's columns of out.
            unsafe {
                gemm_into(
                    p.as_mut_ptr(),
                    g.t,
                    false,
                    g.s,
                    g.t,
                    g.d,
                    Mat::rows(&q[q0..], inner),
                    Mat::transposed(&kv[k0..], 2 * inner),
                    gemm::Parallelism::None,
                );
            }
            let b0 = g.bias_offset(bi, hi);
            let mut row = vec![0f32; g.t];
            for (r, pr) in p.chunks_exact_mut(g.t).enumerate() {
                let brow = &bias[b0 + g.bias_row(r)..][..g.t];
                for ((o, &v), &bv) in row.iter_mut().zip(pr.iter()).zip(brow) {
                    *o = v + bv;
                }
                softmax_rows(&row, pr, g.t);
            }
            // The weights that meet the values: dropped out, or as they are.
            let dropped: Option<Vec<f32>> = self.dropout.as_ref().map(|(mask, scale)| {
                let m = &mask[task * st..(task + 1) * st];
                p.iter()
                    .zip(m)
                    .map(|(&v, &k)| v * f32::from(k) * scale)
                    .collect()
            });
            let weights: &[f32] = dropped.as_deref().unwrap_or(p);
            unsafe {
                gemm_into(
                    out_ptr.at(q0),
                    inner,
                    false,
                    g.s,
                    g.d,
                    g.t,
                    Mat::rows(weights, g.t),
                    Mat::rows(&kv[k0 + inner..], 2 * inner),
                    gemm::Parallelism::None,
                );
            }
        });
        if let Ok(mut keep) = self.probs.lock() {
            *keep = probs;
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        kv: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> CResult<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let g = attn_dims(q.dims(), kv.dims(), bias.dims(), self.heads)?;
        let (inner, st) = (g.inner(), g.s * g.t);
        let probs = self
            .probs
            .lock()
            .map_err(|_| candle_core::Error::Msg("attention: weights lost".into()))?;
        if probs.len() != g.b * g.h * st {
            bail!("attention: backward without its forward pass");
        }
        let want_bias = bias.track_op();
        let mut dq = vec![0f32; q.elem_count()];
        let mut dkv = vec![0f32; kv.elem_count()];
        // The scores' gradient per head, kept when the bias learns.
        let mut dscores = vec![0f32; g.b * g.h * st];
        {
            let (qs, ql) = q.storage_and_layout();
            let (ks, kl) = kv.storage_and_layout();
            let (gs, gl) = grad.storage_and_layout();
            let name = "attention";
            let (qv, kvv, gv) = (
                host(&qs, ql, name)?,
                host(&ks, kl, name)?,
                host(&gs, gl, name)?,
            );
            let (dq_ptr, dkv_ptr) = (SharedMut(dq.as_mut_ptr()), SharedMut(dkv.as_mut_ptr()));
            dscores
                .par_chunks_mut(st)
                .enumerate()
                .for_each(|(task, ds)| {
                    let (bi, hi) = (task / g.h, task % g.h);
                    let q0 = bi * g.s * inner + hi * g.d;
                    let k0 = bi * g.t * 2 * inner + hi * g.d;
                    let p = &probs[task * st..(task + 1) * st];
                    let mask = self
                        .dropout
                        .as_ref()
                        .map(|(m, scale)| (&m[task * st..(task + 1) * st], *scale));
                    let dropped: Option<Vec<f32>> = mask.map(|(m, scale)| {
                        p.iter()
                            .zip(m)
                            .map(|(&v, &k)| v * f32::from(k) * scale)
                            .collect()
                    });
                    let weights: &[f32] = dropped.as_deref().unwrap_or(p);
                    let none = gemm::Parallelism::None;
                    // SAFETY: as in the forward pass; each task writes its own
                    // head's columns of dq and dkv, and its own ds.
                    unsafe {
                        // dP = dO vᵀ
                        gemm_into(
                            ds.as_mut_ptr(),
                            g.t,
                            false,
                            g.s,
                            g.t,
                            g.d,
                            Mat::rows(&gv[q0..], inner),
                            Mat::transposed(&kvv[k0 + inner..], 2 * inner),
                            none,
                        );
                        // dV = Pᵀ dO, with P after dropout
                        gemm_into(
                            dkv_ptr.at(k0 + inner),
                            2 * inner,
                            false,
                            g.t,
                            g.d,
                            g.s,
                            Mat::transposed(weights, g.t),
                            Mat::rows(&gv[q0..], inner),
                            none,
                        );
                    }
                    // Back through the dropout: the mask and scale again.
                    if let Some((m, scale)) = mask {
                        for (v, &k) in ds.iter_mut().zip(m) {
                            *v *= f32::from(k) * scale;
                        }
                    }
                    // dS = P ⊙ (dP - rowsum(dP ⊙ P))
                    let mut row = vec![0f32; g.t];
                    for (dr, pr) in ds.chunks_exact_mut(g.t).zip(p.chunks_exact(g.t)) {
                        row.copy_from_slice(dr);
                        softmax_grad_rows(pr, &row, dr, g.t);
                    }
                    unsafe {
                        // dQ = dS k
                        gemm_into(
                            dq_ptr.at(q0),
                            inner,
                            false,
                            g.s,
                            g.d,
                            g.t,
                            Mat::rows(ds, g.t),
                            Mat::rows(&kvv[k0..], 2 * inner),
                            none,
                        );
                        // dK = dSᵀ q
                        gemm_into(
                            dkv_ptr.at(k0),
                            2 * inner,
                            false,
                            g.t,
                            g.d,
                            g.s,
                            Mat::transposed(ds, g.t),
                            Mat::rows(&qv[q0..], inner),
                            none,
                        );
                    }
                });
        }
        let dev = q.device();
        let dbias = if want_bias {
            // Sum the heads' score gradients into the bias's shape, in a
            // fixed order.
            let mut db = vec![0f32; bias.elem_count()];
            let slot_len = g.bias_s * g.t;
            db.par_chunks_mut(slot_len)
                .enumerate()
                .for_each(|(slot, acc)| {
                    let (sb, sh) = (slot / g.bias_h, slot % g.bias_h);
                    for bi in 0..g.b {
                        if g.bias_b > 1 && bi != sb {
                            continue;
                        }
                        for hi in 0..g.h {
                            if g.bias_h > 1 && hi != sh {
                                continue;
                            }
                            let task = bi * g.h + hi;
                            let ds = &dscores[task * st..(task + 1) * st];
                            for (r, dr) in ds.chunks_exact(g.t).enumerate() {
                                let a = &mut acc[g.bias_row(r)..][..g.t];
                                for (a, &v) in a.iter_mut().zip(dr) {
                                    *a += v;
                                }
                            }
                        }
                    }
                });
            Some(Tensor::from_vec(db, bias.shape(), dev)?)
        } else {
            None
        };
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), dev)?),
            Some(Tensor::from_vec(dkv, kv.shape(), dev)?),
            dbias,
        ))
    }
}

/// Whether [`attention`] takes these tensors (f32 on the CPU, shapes as
/// it wants them).
pub fn attention_applies(q: &Tensor, kv: &Tensor, bias: &Tensor, heads: usize) -> bool {
    fusable(&[q, kv, bias]) && attn_dims(q.dims(), kv.dims(), bias.dims(), heads).is_ok()
}

/// See [`AttentionOp`]; `dropout` is the weights' keep mask `[b, h, s, t]`
/// and the scale of kept weights. `None` where the fused path does not
/// apply (see [`attention_applies`]): the caller then takes candle's ops.
pub fn attention(
    q: &Tensor,
    kv: &Tensor,
    bias: &Tensor,
    heads: usize,
    dropout: Option<(Vec<u8>, f32)>,
) -> CResult<Option<Tensor>> {
    if !attention_applies(q, kv, bias, heads) {
        return Ok(None);
    }
    let (b, s, _) = q.dims3()?;
    let t = kv.dim(1)?;
    if let Some((mask, _)) = &dropout {
        if mask.len() != b * heads * s * t {
            bail!(
                "attention: a dropout mask of {} for {} weights",
                mask.len(),
                b * heads * s * t
            );
        }
    }
    let op = AttentionOp {
        heads,
        dropout: dropout.map(|(m, scale)| (std::sync::Arc::new(m), scale)),
        probs: std::sync::Mutex::new(Vec::new()),
    };
    Ok(Some(q.contiguous()?.apply_op3(
        &kv.contiguous()?,
        &bias.contiguous()?,
        op,
    )?))
}

// --------------------------------------------------------------- dropout

/// `x · mask · scale` with the mask (1 keeps, 0 drops) held by the op: no
/// mask tensor in the graph (candle would keep a gradient for it too).
struct Dropout {
    mask: std::sync::Arc<Vec<u8>>,
    scale: f32,
}

impl Dropout {
    fn apply(&self, x: &[f32]) -> Vec<f32> {
        let mut out = vec![0f32; x.len()];
        let scale = self.scale;
        for_chunks(&mut out, CHUNK, |start, o| {
            let xs = &x[start..start + o.len()];
            let ms = &self.mask[start..start + o.len()];
            for ((o, &v), &k) in o.iter_mut().zip(xs).zip(ms) {
                *o = v * f32::from(k) * scale;
            }
        });
        out
    }
}

impl CustomOp1 for Dropout {
    fn name(&self) -> &'static str {
        "dropout"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> CResult<(CpuStorage, Shape)> {
        let x = f32_slice(s, l, self.name())?;
        if x.len() != self.mask.len() {
            bail!(
                "dropout: a mask of {} for {} values",
                self.mask.len(),
                x.len()
            );
        }
        Ok((CpuStorage::F32(self.apply(x)), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> CResult<Option<Tensor>> {
        let again = Dropout {
            mask: self.mask.clone(),
            scale: self.scale,
        };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&again)?))
    }
}

/// Inverted dropout of `xs` with a keep mask drawn by the caller, on the
/// CPU in f32; `None` elsewhere (the caller multiplies by a mask tensor).
pub fn dropout(xs: &Tensor, mask: &[u8], scale: f32) -> CResult<Option<Tensor>> {
    if !fusable(&[xs]) || mask.len() != xs.elem_count() {
        return Ok(None);
    }
    let op = Dropout {
        mask: std::sync::Arc::new(mask.to_vec()),
        scale,
    };
    Ok(Some(xs.contiguous()?.apply_op1(op)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn close(a: &Tensor, b: &Tensor, tol: f32) {
        let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(a.len(), b.len());
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            let scale = 1f32.max(x.abs()).max(y.abs());
            assert!((x - y).abs() <= tol * scale, "element {i}: {x} vs {y}");
        }
    }

    /// The gradients of `Σ y ⊙ probe`: every element of `y` gets its own
    /// weight, so a wrong gradient anywhere shows.
    fn grads_against(y: &Tensor, probe: &Tensor) -> candle_core::backprop::GradStore {
        (y * probe).unwrap().sum_all().unwrap().backward().unwrap()
    }

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        use rand::SeedableRng;
        use rand_distr::Distribution;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let n: usize = shape.iter().product();
        let normal = rand_distr::Normal::new(0f32, 2.0).unwrap();
        let v: Vec<f32> = (0..n).map(|_| normal.sample(&mut rng)).collect();
        Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
    }

    #[test]
    fn exp_is_within_a_few_ulp_of_libm() {
        for i in -19770..=20000 {
            let x = i as f32 * 0.0044;
            let (a, b) = (exp(x), x.exp());
            assert!(
                (a - b).abs() <= 4.0 * f32::EPSILON * b,
                "exp({x}) = {a}, libm {b}"
            );
        }
        assert!(exp(-87.2) > 0.0 && exp(-87.2) < 1e-37);
        assert_eq!(exp(-1000.0), 0.0);
        assert!(exp(f32::NAN).is_nan());
    }

    /// Forward and gradients of each fused op against candle's composed
    /// ops, on shapes larger than one parallel chunk.
    #[test]
    fn fused_ops_match_composed_ops() {
        let gate = Var::from_tensor(&randn(&[3, 50, 300], 1)).unwrap();
        let up = Var::from_tensor(&randn(&[3, 50, 300], 2)).unwrap();
        let probe = randn(&[3, 50, 300], 3);
        let fused = gated_gelu(&gate, &up).unwrap();
        let composed = gate.gelu().unwrap().mul(&up).unwrap();
        close(&fused, &composed, 2e-6);
        let gf = grads_against(&fused, &probe);
        let gc = grads_against(&composed, &probe);
        for v in [&gate, &up] {
            close(gf.get(v).unwrap(), gc.get(v).unwrap(), 1e-5);
        }

        let x = Var::from_tensor(&randn(&[4, 7, 130], 4)).unwrap();
        let probe = randn(&[4, 7, 130], 5);
        let fused = softmax_last_dim(&x).unwrap();
        let composed = candle_nn::ops::softmax(&x, D::Minus1).unwrap();
        close(&fused, &composed, 1e-6);
        let gf = grads_against(&fused, &probe);
        let gc = grads_against(&composed, &probe);
        close(gf.get(&x).unwrap(), gc.get(&x).unwrap(), 1e-5);

        let x = Var::from_tensor(&randn(&[2, 300, 96], 6)).unwrap();
        let w = Var::from_tensor(&randn(&[96], 7)).unwrap();
        let probe = randn(&[2, 300, 96], 8);
        let fused = rms_norm(&x, &w, 1e-6).unwrap();
        let var = x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let composed = x
            .broadcast_div(&(var + 1e-6).unwrap().sqrt().unwrap())
            .unwrap()
            .broadcast_mul(&w)
            .unwrap();
        close(&fused, &composed, 1e-5);
        let gf = grads_against(&fused, &probe);
        let gc = grads_against(&composed, &probe);
        for v in [&x, &w] {
            close(gf.get(v).unwrap(), gc.get(v).unwrap(), 1e-4);
        }

        let logits = Var::from_tensor(&randn(&[70, 333], 9)).unwrap();
        let targets: Vec<u32> = (0..70).map(|i| (i * 37 % 333) as u32).collect();
        let targets = Tensor::new(targets.as_slice(), &Device::Cpu).unwrap();
        let weights = randn(&[70], 10);
        let (nll, lse) = cross_entropy_rows_lse(&logits, &targets).unwrap();
        let clse = logits.log_sum_exp(D::Minus1).unwrap();
        let picked = logits
            .gather(&targets.unsqueeze(1).unwrap(), 1)
            .unwrap()
            .squeeze(1)
            .unwrap();
        let cnll = (&clse - picked).unwrap();
        close(&nll, &cnll, 1e-5);
        close(&lse, &clse, 1e-5);
        // Both outputs feed the loss, as with z-loss.
        let loss = |nll: Tensor, lse: Tensor| {
            ((nll * &weights).unwrap() + lse.sqr().unwrap())
                .unwrap()
                .sum_all()
                .unwrap()
        };
        let gf = loss(nll, lse).backward().unwrap();
        let gc = loss(cnll, clse).backward().unwrap();
        close(gf.get(&logits).unwrap(), gc.get(&logits).unwrap(), 1e-4);
    }

    #[test]
    fn batched_matmul_matches_candle_with_its_gradients() {
        // Attention's shapes: scores = q kᵀ (a transposed view), out = w v.
        let q = Var::from_tensor(&randn(&[2, 5, 7, 3], 13)).unwrap();
        let k = Var::from_tensor(&randn(&[2, 5, 6, 3], 14)).unwrap();
        let v = Var::from_tensor(&randn(&[2, 5, 6, 4], 15)).unwrap();
        let probe = randn(&[2, 5, 7, 4], 16);
        let ours = batched_matmul(&batched_matmul(&q, &k.t().unwrap()).unwrap(), &v).unwrap();
        let theirs = q.matmul(&k.t().unwrap()).unwrap().matmul(&v).unwrap();
        close(&ours, &theirs, 1e-5);
        let go = grads_against(&ours, &probe);
        let gt = grads_against(&theirs, &probe);
        for t in [&q, &k, &v] {
            close(go.get(t).unwrap(), gt.get(t).unwrap(), 1e-5);
        }
        // Few batches: the product itself is split instead.
        let a = randn(&[1, 70, 40], 17);
        let b = randn(&[1, 40, 90], 18);
        close(
            &batched_matmul(&a, &b).unwrap(),
            &a.matmul(&b).unwrap(),
            1e-5,
        );
    }

    /// softmax(q kᵀ + bias) v per head with candle's ops, from the packed
    /// layout the fused op takes.
    fn composed_attention(q: &Tensor, kv: &Tensor, bias: &Tensor, h: usize) -> Tensor {
        let (b, s, inner) = q.dims3().unwrap();
        let t = kv.dim(1).unwrap();
        let d = inner / h;
        let heads = |x: &Tensor, len: usize| {
            x.reshape((b, len, h, d))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let qh = heads(q, s);
        let kh = heads(&kv.narrow(2, 0, inner).unwrap(), t);
        let vh = heads(&kv.narrow(2, inner, inner).unwrap(), t);
        let scores = qh
            .matmul(&kh.t().unwrap())
            .unwrap()
            .broadcast_add(bias)
            .unwrap();
        let w = candle_nn::ops::softmax(&scores, D::Minus1).unwrap();
        w.matmul(&vh)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((b, s, inner))
            .unwrap()
    }

    #[test]
    fn fused_linear_and_attention_match_composed_ops() {
        let x = Var::from_tensor(&randn(&[3, 9, 24], 20)).unwrap();
        // Weights of T5's initial scale: scores of order one, where the
        // softmax is well conditioned.
        let small = |seed| Var::from_tensor(&(randn(&[16, 24], seed) * 0.1).unwrap()).unwrap();
        let (wq, wk, wv) = (small(21), small(22), small(23));
        let composed_linear = |x: &Tensor, w: &Tensor| {
            x.reshape((27, 24))
                .unwrap()
                .matmul(&w.t().unwrap())
                .unwrap()
                .reshape((3, 9, 16))
                .unwrap()
        };
        let probe = randn(&[3, 9, 16], 24);
        let ours = linear(&x, &wq).unwrap();
        let theirs = composed_linear(&x, &wq);
        close(&ours, &theirs, 1e-5);
        let go = grads_against(&ours, &probe);
        let gt = grads_against(&theirs, &probe);
        for t in [&x, &wq] {
            close(go.get(t).unwrap(), gt.get(t).unwrap(), 1e-5);
        }

        let kv = kv_projection(&x, &wk, &wv).unwrap().unwrap();
        let kv_c = Tensor::cat(&[composed_linear(&x, &wk), composed_linear(&x, &wv)], 2).unwrap();
        close(&kv, &kv_c, 1e-5);

        // Bias shapes: learned per head, per batch and head, a padding row.
        for (bias_shape, seed) in [
            (vec![1, 4, 9, 9], 30),
            (vec![3, 4, 9, 9], 31),
            (vec![3, 1, 1, 9], 32),
        ] {
            let bias = Var::from_tensor(&randn(&bias_shape, seed)).unwrap();
            let q = linear(&x, &wq).unwrap();
            let kv = kv_projection(&x, &wk, &wv).unwrap().unwrap();
            let ours = attention(&q, &kv, &bias, 4, None).unwrap().unwrap();
            let q_c = composed_linear(&x, &wq);
            let kv_c =
                Tensor::cat(&[composed_linear(&x, &wk), composed_linear(&x, &wv)], 2).unwrap();
            let theirs = composed_attention(&q_c, &kv_c, &bias, 4);
            close(&ours, &theirs, 1e-5);
            let go = grads_against(&ours, &probe);
            let gt = grads_against(&theirs, &probe);
            for t in [&x, &wq, &wk, &wv, &bias] {
                close(go.get(t).unwrap(), gt.get(t).unwrap(), 1e-4);
            }
        }
    }

    #[test]
    fn dropout_in_fused_ops_matches_a_mask_tensor() {
        let x = Var::from_tensor(&randn(&[2, 5, 16], 40)).unwrap();
        let w = Var::from_tensor(&(randn(&[16, 16], 41) * 0.1).unwrap()).unwrap();
        let probe = randn(&[2, 5, 16], 42);
        let keep = |n: usize, seed: u64| -> Vec<u8> {
            (0..n as u64)
                .map(|i| u8::from(!(i * 7 + seed).is_multiple_of(10)))
                .collect()
        };
        let scale = 1.0 / 0.9f32;
        let as_tensor = |m: &[u8], shape: &[usize]| {
            let v: Vec<f32> = m.iter().map(|&k| f32::from(k) * scale).collect();
            Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
        };

        let m = keep(160, 1);
        let ours = dropout(&x, &m, scale).unwrap().unwrap();
        let theirs = (x.as_tensor() * as_tensor(&m, &[2, 5, 16])).unwrap();
        close(&ours, &theirs, 1e-6);
        let go = grads_against(&ours, &probe);
        let gt = grads_against(&theirs, &probe);
        close(go.get(&x).unwrap(), gt.get(&x).unwrap(), 1e-6);

        // Attention: the weights' mask between softmax and values.
        let bias = Var::from_tensor(&randn(&[1, 2, 5, 5], 43)).unwrap();
        let m = keep(2 * 2 * 5 * 5, 3);
        let q = linear(&x, &w).unwrap();
        let kv = kv_projection(&x, &w, &w).unwrap().unwrap();
        let ours = attention(&q, &kv, &bias, 2, Some((m.clone(), scale)))
            .unwrap()
            .unwrap();
        let heads = |t: &Tensor| {
            t.reshape((2, 5, 2, 8))
                .unwrap()
                .transpose(1, 2)
                .unwrap()
                .contiguous()
                .unwrap()
        };
        let qh = heads(&x.matmul_wt(&w));
        let kh = heads(&x.matmul_wt(&w));
        let scores = qh
            .matmul(&kh.t().unwrap())
            .unwrap()
            .broadcast_add(&bias)
            .unwrap();
        let weights = candle_nn::ops::softmax(&scores, D::Minus1).unwrap();
        let weights = (weights * as_tensor(&m, &[2, 2, 5, 5])).unwrap();
        let theirs = weights
            .matmul(&kh)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .reshape((2, 5, 16))
            .unwrap();
        close(&ours, &theirs, 1e-5);
        let go = grads_against(&ours, &probe);
        let gt = grads_against(&theirs, &probe);
        for t in [&x, &w, &bias] {
            close(go.get(t).unwrap(), gt.get(t).unwrap(), 1e-4);
        }
    }

    trait MatmulWt {
        fn matmul_wt(&self, w: &Tensor) -> Tensor;
    }

    impl MatmulWt for Var {
        fn matmul_wt(&self, w: &Tensor) -> Tensor {
            let (b, s, d) = self.dims3().unwrap();
            self.reshape((b * s, d))
                .unwrap()
                .matmul(&w.t().unwrap())
                .unwrap()
                .reshape((b, s, w.dim(0).unwrap()))
                .unwrap()
        }
    }

    #[test]
    fn nan_inputs_stay_nan() {
        let x = Tensor::new(&[[1f32, f32::NAN, 2.0]], &Device::Cpu).unwrap();
        let y: Vec<f32> = softmax_last_dim(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(y.iter().any(|v| v.is_nan()), "{y:?}");
        let t = Tensor::new(&[0u32], &Device::Cpu).unwrap();
        let (nll, _) = cross_entropy_rows_lse(&x, &t).unwrap();
        assert!(nll.to_vec1::<f32>().unwrap()[0].is_nan());
        let w = Tensor::new(&[1f32, 1.0, 1.0], &Device::Cpu).unwrap();
        let y: Vec<f32> = rms_norm(&x, &w, 1e-6)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(y.iter().all(|v| v.is_nan()), "{y:?}");
        let g: Vec<f32> = gated_gelu(&x, &x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(g[1].is_nan(), "{g:?}");
    }

    #[test]
    fn rms_norm_weight_gradient_does_not_depend_on_the_schedule() {
        let x = Var::from_tensor(&randn(&[64, 40, 64], 11)).unwrap();
        let w = Var::from_tensor(&randn(&[64], 12)).unwrap();
        let grad = || {
            let y = rms_norm(&x, &w, 1e-6).unwrap();
            let g = y.sum_all().unwrap().backward().unwrap();
            g.get(&w).unwrap().to_vec1::<f32>().unwrap()
        };
        let first = grad();
        for _ in 0..5 {
            assert_eq!(grad(), first);
        }
    }
}
