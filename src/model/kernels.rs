//! Fused CPU kernels for the parts of a training step that candle would run
//! as chains of small ops: gated GELU, softmax, RMS norm and cross-entropy,
//! each with its own backward.
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
//! Reductions over rows (the RMS-norm weight gradient) are summed in a fixed
//! order, so results do not depend on how threads were scheduled: a resumed
//! run repeats its losses bit for bit.

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

fn batched_matmul_raw(a: &Tensor, b: &Tensor) -> CResult<Tensor> {
    let fold = |t: &Tensor| operand(t.layout()).is_some();
    let a = if fold(a) { a.clone() } else { a.contiguous()? };
    let b = if fold(b) { b.clone() } else { b.contiguous()? };
    a.apply_op2_no_bwd(&b, &BatchedMatMul)
}

/// `a.matmul(b)` for `[..., m, k] x [..., k, n]` with the same batch dims:
/// the batch split over the threads on the CPU (see [`BatchedMatMul`]).
pub fn batched_matmul(a: &Tensor, b: &Tensor) -> CResult<Tensor> {
    let r = a.rank();
    if fusable(&[a, b]) && r >= 3 && b.rank() == r && a.dims()[..r - 2] == b.dims()[..r - 2] {
        let fold = |t: &Tensor| operand(t.layout()).is_some();
        let a = if fold(a) { a.clone() } else { a.contiguous()? };
        let b = if fold(b) { b.clone() } else { b.contiguous()? };
        a.apply_op2(&b, BatchedMatMul)
    } else {
        a.matmul(b)
    }
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
        let gf = (fused * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gc = (composed * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for v in [&gate, &up] {
            close(gf.get(v).unwrap(), gc.get(v).unwrap(), 1e-5);
        }

        let x = Var::from_tensor(&randn(&[4, 7, 130], 4)).unwrap();
        let probe = randn(&[4, 7, 130], 5);
        let fused = softmax_last_dim(&x).unwrap();
        let composed = candle_nn::ops::softmax(&x, D::Minus1).unwrap();
        close(&fused, &composed, 1e-6);
        let gf = (fused * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gc = (composed * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
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
        let gf = (fused * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gc = (composed * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
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
        let go = (ours * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let gt = (theirs * &probe)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
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
