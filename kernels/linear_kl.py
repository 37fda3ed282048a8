"""Exact per-token KL(policy || reference) over the full vocabulary, straight from hidden states.

The sampled-token estimators in token_kl are cheap but noisy. The exact KL needs both models' full
distributions at every token: two [N, V] logit tensors through the naive path. Both models share the LM
head here (LoRA roles on one frozen base), so this runs the head on both hidden states chunk by chunk over
tokens and reduces each pair of (rows, V) float32 tiles to one number per row with a row kernel.

As in logprobs.py, the upstream gradient is one number per row, so forward also computes
W^T dKL/dz (and W^T dKL/dy when the reference side wants a gradient) from the tiles it holds, and backward
is a per-row scaling; only a trainable LM head recomputes the tiles. A soft-capped head (Gemma 2) runs on
the capped tiles, and the row kernels multiply each logit gradient by the cap's derivative 1 - tanh^2.
"""

from __future__ import annotations

import torch

from ._common import (
    FP_FUSION,
    autocast_off,
    backend_for,
    block_v,
    check_hidden_weight,
    check_softcap,
    check_temperature,
    chunk_logits,
    chunk_rows,
    compute_dtype,
    matmul_into,
    row_chunks,
    softcap_slope,
    tl,
    triton,
)


def linear_kl_reference(
    hidden: torch.Tensor,
    ref_hidden: torch.Tensor,
    weight: torch.Tensor,
    temperature: float = 1.0,
    softcap: float | None = None,
) -> torch.Tensor:
    """Slow, obviously-correct version: full [N, V] logits (soft-capped as transformers' Gemma 2 does),
    log-softmaxes, then sum_k p_k (log p_k - log q_k)."""
    dtype = compute_dtype(hidden, ref_hidden, weight)
    w = weight.to(dtype)
    z, y = hidden.to(dtype) @ w.T, ref_hidden.to(dtype) @ w.T  # (N, V) each
    if softcap is not None:
        z, y = torch.tanh(z / softcap) * softcap, torch.tanh(y / softcap) * softcap
    logp = torch.log_softmax(z / temperature, dim=-1)  # (N, V)
    logq = torch.log_softmax(y / temperature, dim=-1)  # (N, V)
    return (logp.exp() * (logp - logq)).sum(-1)


# --------------------------------------------------------------------------- Triton row kernels

if triton is not None:

    @triton.jit
    def _kl_stats_kernel(z_ptr, y_ptr, stride, lse_z_ptr, lse_y_ptr, kl_ptr, V, BLOCK_V: tl.constexpr):
        """Row -> lse(z), lse(y) (one online pass), then KL = sum p (log p - log q) (second pass).

        Summing p (log p - log q) term by term, rather than E_p[z - y] - lse(z) + lse(y), keeps a small KL
        accurate: no difference of two O(|z|) numbers.
        """
        row = tl.program_id(0).to(tl.int64)
        z_row = z_ptr + row * stride
        y_row = y_ptr + row * stride
        m_z = tl.full((), float("-inf"), tl.float32)
        m_y = tl.full((), float("-inf"), tl.float32)
        s_z = tl.zeros((), tl.float32)
        s_y = tl.zeros((), tl.float32)
        for start in range(0, V, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            valid = cols < V
            z = tl.load(z_row + cols, mask=valid, other=float("-inf"))
            y = tl.load(y_row + cols, mask=valid, other=float("-inf"))
            new_z = tl.maximum(m_z, tl.max(z, 0))
            new_y = tl.maximum(m_y, tl.max(y, 0))
            s_z = s_z * tl.exp(m_z - new_z) + tl.sum(tl.exp(z - new_z), 0)
            s_y = s_y * tl.exp(m_y - new_y) + tl.sum(tl.exp(y - new_y), 0)
            m_z, m_y = new_z, new_y
        lse_z = m_z + tl.log(s_z)
        lse_y = m_y + tl.log(s_y)
        kl = tl.zeros((), tl.float32)
        for start in range(0, V, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            valid = cols < V
            logp = tl.load(z_row + cols, mask=valid, other=float("-inf")) - lse_z  # p = 0 off the end
            logq = tl.load(y_row + cols, mask=valid, other=0.0) - lse_y  # finite: no -inf - -inf
            p = tl.exp(logp)
            kl += tl.sum(tl.where(p > 0, logp - logq, 0.0) * p, 0)
        tl.store(lse_z_ptr + row, lse_z)
        tl.store(lse_y_ptr + row, lse_y)
        tl.store(kl_ptr + row, kl)

    @triton.jit
    def _kl_dlogits_kernel(
        z_ptr, y_ptr, stride, lse_z_ptr, lse_y_ptr, kl_ptr, g_ptr, scale, cap_slope, V,
        LOAD_G: tl.constexpr, WRITE_Z: tl.constexpr, WRITE_Y: tl.constexpr, SOFTCAP: tl.constexpr,
        BLOCK_V: tl.constexpr,
    ):  # fmt: skip
        """In place: z <- scale g p (log p - log q - KL), y <- scale g (q - p) (each on request).

        With SOFTCAP, each times its cap's derivative 1 - (z * cap_slope)^2, resp. 1 - (y * cap_slope)^2.
        """
        row = tl.program_id(0).to(tl.int64)
        lse_z = tl.load(lse_z_ptr + row)
        lse_y = tl.load(lse_y_ptr + row)
        kl = tl.load(kl_ptr + row)
        g = scale
        if LOAD_G:
            g = tl.load(g_ptr + row).to(tl.float32) * scale
        for start in range(0, V, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            valid = cols < V
            z = tl.load(z_ptr + row * stride + cols, mask=valid, other=float("-inf"))
            y = tl.load(y_ptr + row * stride + cols, mask=valid, other=0.0)
            logp = z - lse_z
            logq = y - lse_y  # finite: no -inf - -inf
            p = tl.exp(logp)
            if WRITE_Z:
                dz = g * tl.where(p > 0, logp - logq - kl, 0.0) * p
                if SOFTCAP:
                    t = tl.where(valid, z * cap_slope, 0.0)  # tanh(x / cap)
                    dz = dz * (1.0 - t * t)
                tl.store(z_ptr + row * stride + cols, dz, mask=valid)
            if WRITE_Y:
                dy = g * (tl.exp(logq) - p)
                if SOFTCAP:
                    t = y * cap_slope
                    dy = dy * (1.0 - t * t)
                tl.store(y_ptr + row * stride + cols, dy, mask=valid)


# --------------------------------------------------------------------------- row ops, one per backend


def _stats_torch(z, y):
    lse_z, lse_y = torch.logsumexp(z, dim=-1), torch.logsumexp(y, dim=-1)  # (rows,)
    logp, logq = z - lse_z[:, None], y - lse_y[:, None]  # (rows, V)
    p = logp.exp()
    kl = (torch.where(p > 0, logp - logq, 0.0) * p).sum(-1)
    return lse_z, lse_y, kl


def _stats_triton(z, y):
    rows, vocab = z.shape
    lse_z, lse_y, kl = (torch.empty(rows, dtype=torch.float32, device=z.device) for _ in range(3))
    if rows:
        _kl_stats_kernel[(rows,)](
            z, y, z.stride(0), lse_z, lse_y, kl, vocab, BLOCK_V=block_v(vocab), enable_fp_fusion=FP_FUSION
        )
    return lse_z, lse_y, kl


def _dlogits_torch(z, y, lse_z, lse_y, kl, g, scale, cap_slope, write_z, write_y):
    """Same contract as _kl_dlogits_kernel: overwrites z and/or y with the KL's logit gradients."""
    g = torch.as_tensor(g, dtype=z.dtype, device=z.device).expand(z.shape[0])[:, None] * scale  # (rows, 1)
    logp, logq = z - lse_z[:, None], y - lse_y[:, None]  # (rows, V)
    p = logp.exp()
    if write_y:
        dy = g * (logq.exp() - p)
        if cap_slope:  # chain rule through the soft-cap, read off y before it is overwritten
            dy.mul_((y * cap_slope).square_().neg_().add_(1.0))
        y.copy_(dy)
    if write_z:
        dz = g * torch.where(p > 0, logp - logq - kl[:, None], 0.0) * p
        if cap_slope:
            dz.mul_((z * cap_slope).square_().neg_().add_(1.0))
        z.copy_(dz)


def _dlogits_triton(z, y, lse_z, lse_y, kl, g, scale, cap_slope, write_z, write_y):
    rows, vocab = z.shape
    if not rows:
        return
    load_g = isinstance(g, torch.Tensor)
    _kl_dlogits_kernel[(rows,)](
        z, y, z.stride(0), lse_z, lse_y, kl, g if load_g else kl, float(scale), float(cap_slope), vocab,
        LOAD_G=load_g, WRITE_Z=write_z, WRITE_Y=write_y, SOFTCAP=bool(cap_slope), BLOCK_V=block_v(vocab),
        enable_fp_fusion=FP_FUSION,
    )  # fmt: skip


ROW_OPS = {"torch": (_stats_torch, _dlogits_torch), "triton": (_stats_triton, _dlogits_triton)}


# --------------------------------------------------------------------------- autograd


class LinearKLFunction(torch.autograd.Function):
    """Chunked KL(p || q) per row, p = softmax(s(W h) / T) (policy), q = softmax(s(W r) / T) (reference).

    s is the soft-cap s(x) = c tanh(x / c) when a cap c is given, the identity otherwise.

    Forward, per row (z = s(W h) / T, y = s(W r) / T, both (V,)):
        log p = z - lse(z),   log q = y - lse(y)
        KL    = sum_k p_k (log p_k - log q_k)

    Backward, with upstream g = dL/dKL of that row, and the cap's derivatives
    a_k = 1 - (z_k T / c)^2, b_k = 1 - (y_k T / c)^2 (both 1 without a cap):
        dKL/dz_k = p_k (log p_k - log q_k - KL)
        dKL/dy_k = q_k - p_k
        dL/dh = g [W^T (a dKL/dz) / T],   dL/dr = g [W^T (b dKL/dy) / T]      (brackets computed in forward)
        dL/dW = sum_rows g [a dKL/dz h^T + b dKL/dy r^T] / T                   (tiles recomputed)

    Computed in float32 (float64 for float64 inputs); gradients come back in the input dtypes.
    """

    @staticmethod
    def forward(ctx, hidden, ref_hidden, weight, temperature, softcap, rows, backend, grad_hidden, grad_ref):
        stats, dlogits = ROW_OPS[backend]
        dtype = compute_dtype(hidden, ref_hidden, weight)
        n = hidden.shape[0]
        slope = softcap_slope(temperature, softcap)
        w = weight if backend == "triton" or weight.dtype == dtype else weight.to(dtype)  # CPU: upcast once
        lse_z, lse_y, kl = (torch.empty(n, dtype=dtype, device=hidden.device) for _ in range(3))
        dkl_dh = hidden.new_empty(hidden.shape, dtype=dtype) if grad_hidden else None  # (N, H)
        dkl_dr = hidden.new_empty(hidden.shape, dtype=dtype) if grad_ref else None  # (N, H)
        with autocast_off(hidden.device):
            for s, e in row_chunks(n, rows):
                z = chunk_logits(hidden[s:e], w, None, temperature, softcap, dtype)  # (rows, V)
                y = chunk_logits(ref_hidden[s:e], w, None, temperature, softcap, dtype)  # (rows, V)
                lse_z[s:e], lse_y[s:e], kl[s:e] = stats(z, y)
                if grad_hidden or grad_ref:
                    dlogits(z, y, lse_z[s:e], lse_y[s:e], kl[s:e], 1.0, 1.0 / temperature, slope, grad_hidden, grad_ref)
                    if grad_hidden:
                        dkl_dh[s:e] = matmul_into(z, w, dtype)  # (rows, V) @ (V, H)
                    if grad_ref:
                        dkl_dr[s:e] = matmul_into(y, w, dtype)
                del z, y

        ctx.save_for_backward(hidden, ref_hidden, weight, lse_z, lse_y, kl, dkl_dh, dkl_dr)
        ctx.temperature, ctx.softcap, ctx.rows, ctx.backend = temperature, softcap, rows, backend
        return kl

    @staticmethod
    def backward(ctx, grad_kl):
        hidden, ref_hidden, weight, lse_z, lse_y, kl, dkl_dh, dkl_dr = ctx.saved_tensors
        need_h, need_r, need_w = ctx.needs_input_grad[:3]
        g = grad_kl.to(kl.dtype)  # (N,)
        grad_h = (g[:, None] * dkl_dh).to(hidden.dtype) if need_h else None
        grad_r = (g[:, None] * dkl_dr).to(ref_hidden.dtype) if need_r else None
        grad_w = None
        if need_w:
            grad_w = _recompute_head_grad(ctx, hidden, ref_hidden, weight, lse_z, lse_y, kl, g)
        return grad_h, grad_r, grad_w, None, None, None, None, None, None


def _recompute_head_grad(ctx, hidden, ref_hidden, weight, lse_z, lse_y, kl, g):
    """dL/dW for a trainable LM head: both tiles recomputed per chunk, turned into gradients in place."""
    dlogits = ROW_OPS[ctx.backend][1]
    dtype = kl.dtype
    w = weight if ctx.backend == "triton" or weight.dtype == dtype else weight.to(dtype)
    grad_w = torch.zeros(weight.shape, dtype=dtype, device=weight.device)  # (V, H)
    slope = softcap_slope(ctx.temperature, ctx.softcap)
    with autocast_off(hidden.device):
        for s, e in row_chunks(hidden.shape[0], ctx.rows):
            z = chunk_logits(hidden[s:e], w, None, ctx.temperature, ctx.softcap, dtype)  # (rows, V)
            y = chunk_logits(ref_hidden[s:e], w, None, ctx.temperature, ctx.softcap, dtype)
            dlogits(z, y, lse_z[s:e], lse_y[s:e], kl[s:e], g[s:e], 1.0 / ctx.temperature, slope, True, True)
            grad_w.addmm_(z.T, hidden[s:e].to(dtype))  # (V, rows) @ (rows, H)
            grad_w.addmm_(y.T, ref_hidden[s:e].to(dtype))
            del z, y
    return grad_w.to(weight.dtype)


def fused_linear_kl(
    hidden: torch.Tensor,
    ref_hidden: torch.Tensor,
    weight: torch.Tensor,
    *,
    temperature: float = 1.0,
    softcap: float | None = None,
    _chunk_rows: int | None = None,
) -> torch.Tensor:
    """Exact KL(p || q) per token, p = softmax(hidden @ W.T / T), q = softmax(ref_hidden @ W.T / T).

    Args:
        hidden: [N, H] policy hidden states, any float dtype.
        ref_hidden: [N, H] reference-model hidden states for the same tokens.
        weight: [V, H] LM-head weight shared by both.
        temperature: logits are divided by it before both softmaxes; finite and > 0.
        softcap: None, or a finite cap > 0: both sides' logits become cap * tanh(logits / cap) before the
            temperature divides them (Gemma 2's final_logit_softcapping, applied as transformers does).
        _chunk_rows: private, for tests: rows per chunk instead of the memory-budget rule.

    Returns:
        [N] float32 (float64 for float64 inputs), >= 0 up to rounding. Differentiable w.r.t. hidden,
        ref_hidden and weight.
    """
    check_hidden_weight(hidden, weight)
    check_hidden_weight(ref_hidden, weight, hidden_name="ref_hidden")
    if ref_hidden.shape != hidden.shape:
        raise ValueError(
            f"ref_hidden must have the same shape as hidden {tuple(hidden.shape)}, got {tuple(ref_hidden.shape)}"
        )
    check_temperature(temperature)
    check_softcap(softcap)

    dtype = compute_dtype(hidden, ref_hidden, weight)
    rows = chunk_rows(weight.shape[0], dtype, _chunk_rows)
    backend = "torch" if dtype == torch.float64 else backend_for(hidden.device)  # row kernels are float32
    grad_on = torch.is_grad_enabled()
    return LinearKLFunction.apply(
        hidden,
        ref_hidden,
        weight,
        float(temperature),
        None if softcap is None else float(softcap),
        rows,
        backend,
        grad_on and hidden.requires_grad,
        grad_on and ref_hidden.requires_grad,
    )
