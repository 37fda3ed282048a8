"""Exact per-token KL(policy || reference) over the full vocabulary, straight from hidden states.

The sampled-token estimators in token_kl are cheap but noisy. The exact KL needs both models' full
distributions at every token: two [N, V] logit tensors through the naive path. Both models share the LM
head here (LoRA roles on one frozen base), so this runs the head on both hidden states chunk by chunk over
tokens, reduces each pair of (rows, V) tiles to one number per row, and recomputes the tiles in backward
from the saved inputs and per-row log-sum-exps.
"""

from __future__ import annotations

import torch

from ._common import (
    autocast_off,
    check_hidden_weight,
    check_temperature,
    chunk_logits,
    chunk_rows,
    compute_dtype,
    row_chunks,
)


def linear_kl_reference(
    hidden: torch.Tensor, ref_hidden: torch.Tensor, weight: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Slow, obviously-correct version: full [N, V] log-softmaxes, then sum_k p_k (log p_k - log q_k)."""
    dtype = compute_dtype(hidden, ref_hidden, weight)
    w = weight.to(dtype)
    logp = torch.log_softmax(hidden.to(dtype) @ w.T / temperature, dim=-1)  # (N, V)
    logq = torch.log_softmax(ref_hidden.to(dtype) @ w.T / temperature, dim=-1)  # (N, V)
    return (logp.exp() * (logp - logq)).sum(-1)


class LinearKLFunction(torch.autograd.Function):
    """Chunked KL(p || q) per row, p = softmax(W h / T) (policy), q = softmax(W r / T) (reference).

    Forward, per row (z = W h / T, y = W r / T, both (V,)):
        log p = z - lse(z),   log q = y - lse(y)
        KL    = sum_k p_k (log p_k - log q_k)

    Backward, with upstream g = dL/dKL of that row:
        dKL/dz_k = p_k (log p_k - log q_k - KL)
        dKL/dy_k = q_k - p_k
        dL/dh = W^T (g dKL/dz) / T,   dL/dr = W^T (g dKL/dy) / T
        dL/dW = sum_rows [(g dKL/dz) h^T + (g dKL/dy) r^T] / T

    Saved for backward: the inputs, lse(z) [N], lse(y) [N] and KL [N]; the logits are recomputed.
    Computed in float32 (float64 for float64 inputs); gradients come back in the input dtypes.
    """

    @staticmethod
    def forward(ctx, hidden, ref_hidden, weight, temperature, rows):
        dtype = compute_dtype(hidden, ref_hidden, weight)
        n = hidden.shape[0]
        w = weight.to(dtype)  # (V, H)
        lse_p = torch.empty(n, dtype=dtype, device=hidden.device)
        lse_q = torch.empty(n, dtype=dtype, device=hidden.device)
        kl = torch.empty(n, dtype=dtype, device=hidden.device)
        with autocast_off(hidden.device):
            for s, e in row_chunks(n, rows):
                logp = chunk_logits(hidden[s:e].to(dtype), w, None, temperature)  # (rows, V)
                logq = chunk_logits(ref_hidden[s:e].to(dtype), w, None, temperature)  # (rows, V)
                lse_p[s:e] = lp = torch.logsumexp(logp, dim=-1)
                lse_q[s:e] = lq = torch.logsumexp(logq, dim=-1)
                logp.sub_(lp[:, None])
                logq.sub_(lq[:, None])
                p = logp.exp()  # (rows, V)
                kl[s:e] = (p * logp.sub_(logq)).sum(-1)
                del logp, logq, p

        ctx.save_for_backward(hidden, ref_hidden, weight, lse_p, lse_q, kl)
        ctx.temperature, ctx.rows = temperature, rows
        return kl

    @staticmethod
    def backward(ctx, grad_kl):
        hidden, ref_hidden, weight, lse_p, lse_q, kl = ctx.saved_tensors
        need_h, need_r, need_w = ctx.needs_input_grad[:3]
        if not (need_h or need_r or need_w):
            return None, None, None, None, None

        dtype, temperature = kl.dtype, ctx.temperature
        g = grad_kl.to(dtype) / temperature  # (N,); folds the 1/T of both logit chains into the upstream
        w = weight.to(dtype)  # (V, H)
        grad_h = torch.empty_like(hidden) if need_h else None  # (N, H)
        grad_r = torch.empty_like(ref_hidden) if need_r else None  # (N, H)
        grad_w = torch.zeros_like(w) if need_w else None  # (V, H)
        with autocast_off(hidden.device):
            for s, e in row_chunks(hidden.shape[0], ctx.rows):
                h, r = hidden[s:e].to(dtype), ref_hidden[s:e].to(dtype)  # (rows, H)
                logp = chunk_logits(h, w, None, temperature).sub_(lse_p[s:e, None])  # (rows, V)
                logq = chunk_logits(r, w, None, temperature).sub_(lse_q[s:e, None])  # (rows, V)
                p = logp.exp()
                g_c = g[s:e, None]  # (rows, 1)
                # Reference side: dy = g (q - p), in a fresh buffer since p is still needed for dz
                if need_r or need_w:
                    dy = logq.exp().sub_(p).mul_(g_c)  # (rows, V)
                    if need_r:
                        grad_r[s:e] = dy @ w
                    if need_w:
                        grad_w.addmm_(dy.T, r)
                    del dy
                if need_h or need_w:
                    # dz = g p (log p - log q - KL), in place over the log p buffer
                    dz = logp.sub_(logq).sub_(kl[s:e, None]).mul_(p).mul_(g_c)  # (rows, V)
                    if need_h:
                        grad_h[s:e] = dz @ w
                    if need_w:
                        grad_w.addmm_(dz.T, h)
                del logp, logq, p

        return (
            grad_h,
            grad_r,
            None if grad_w is None else grad_w.to(weight.dtype),
            None,
            None,
        )


def fused_linear_kl(
    hidden: torch.Tensor,
    ref_hidden: torch.Tensor,
    weight: torch.Tensor,
    *,
    temperature: float = 1.0,
    _chunk_rows: int | None = None,
) -> torch.Tensor:
    """Exact KL(p || q) per token, p = softmax(hidden @ W.T / T), q = softmax(ref_hidden @ W.T / T).

    Args:
        hidden: [N, H] policy hidden states, any float dtype.
        ref_hidden: [N, H] reference-model hidden states for the same tokens.
        weight: [V, H] LM-head weight shared by both.
        temperature: logits are divided by it before both softmaxes; finite and > 0.
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

    rows = chunk_rows(weight.shape[0], compute_dtype(hidden, ref_hidden, weight), _chunk_rows)
    # Dispatch point: CUDA tensors will go to a Triton Function here once it exists. Today every device
    # uses the chunked PyTorch path.
    return LinearKLFunction.apply(hidden, ref_hidden, weight, float(temperature), rows)
