"""Fused LM head -> per-token log-probs (and entropy), without the [N, V] logits.

RLHF scores every generated token under the policy, the old policy and the reference model. The plain
``log_softmax(hidden @ W.T)[targets]`` builds fp32 logits for all N tokens at once: N = 16k tokens with
V = 152k is ~10 GB, and autograd keeps it (plus the softmax) alive until backward. Here the LM head runs
chunk by chunk over tokens: a (rows, V) tile is computed, reduced to per-row numbers and freed. Backward
saves only the inputs and the per-row log-sum-exp and recomputes each tile, trading one extra matmul per
chunk for O(N) instead of O(N * V) memory.
"""

from __future__ import annotations

import torch

from ._common import (
    autocast_off,
    check_floating,
    check_hidden_weight,
    check_temperature,
    chunk_logits,
    chunk_rows,
    compute_dtype,
    row_chunks,
)


def logprobs_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Slow, obviously-correct version: full [N, V] logits, then log_softmax. Returns (logprobs, entropy)."""
    dtype = compute_dtype(hidden, weight, bias)
    logits = hidden.to(dtype) @ weight.to(dtype).T  # (N, V)
    if bias is not None:
        logits = logits + bias.to(dtype)
    logp_all = torch.log_softmax(logits / temperature, dim=-1)  # (N, V)
    ignore = targets < 0
    logp = logp_all.gather(1, targets.clamp_min(0).long()[:, None]).squeeze(1)  # (N,)
    entropy = -(logp_all.exp() * logp_all).sum(-1)  # (N,)
    zero = logp.new_zeros(())
    return torch.where(ignore, zero, logp), torch.where(ignore, zero, entropy)


class LinearLogprobsFunction(torch.autograd.Function):
    """Chunked log-probs and entropy of the targets under softmax((hidden @ W.T + b) / T).

    Forward, per row (h = hidden row, t = target, T = temperature):
        z    = (W h + b) / T                                   (V,) logits
        lse  = log sum_k exp(z_k)
        logp = z_t - lse                                       log p_t,  p = softmax(z) = exp(z - lse)
        H    = -sum_k p_k log p_k

    Backward, with upstream g = dL/dlogp and e = dL/dH of that row (any values, either may be absent):
        dL/dz_k = g (1[k = t] - p_k)  -  e p_k (log p_k + H)
        dL/dh   = W^T (dL/dz) / T
        dL/dW   = sum_rows (dL/dz) h^T / T
        dL/db   = sum_rows (dL/dz) / T

    Rows with t < 0 are ignored: logp = H = 0 and dL/dz = 0, so they send no gradient anywhere.
    Saved for backward: the inputs, lse [N] and H [N]; each chunk's logits are recomputed, never stored.
    Everything is computed in float32 (float64 for float64 inputs); gradients come back in the input dtypes.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, bias, temperature, return_entropy, rows):
        dtype = compute_dtype(hidden, weight, bias)
        n = hidden.shape[0]
        w = weight.to(dtype)  # (V, H); a no-op for a float32 head
        b = None if bias is None else bias.to(dtype)
        tgt = targets.clamp_min(0)  # ignored rows read column 0, then get masked to 0

        lse = torch.empty(n, dtype=dtype, device=hidden.device)
        logp = torch.empty(n, dtype=dtype, device=hidden.device)
        entropy = torch.empty(n, dtype=dtype, device=hidden.device) if return_entropy else None
        with autocast_off(hidden.device):
            for s, e in row_chunks(n, rows):
                z = chunk_logits(hidden[s:e].to(dtype), w, b, temperature)  # (rows, V)
                lse_c = torch.logsumexp(z, dim=-1)  # (rows,)
                lse[s:e] = lse_c
                logp[s:e] = z.gather(1, tgt[s:e, None]).squeeze(1) - lse_c
                if return_entropy:
                    z.sub_(lse_c[:, None])  # log p, in place over the logits
                    entropy[s:e] = -(z.exp() * z).sum(-1)
                del z  # free the tile before the next one is allocated

        ignore = targets < 0
        logp.masked_fill_(ignore, 0.0)
        if return_entropy:
            entropy.masked_fill_(ignore, 0.0)

        ctx.save_for_backward(hidden, weight, targets, bias, lse, entropy)
        ctx.temperature = temperature
        ctx.rows = rows
        # An output nobody used arrives in backward as None instead of a tensor of zeros: skip its work.
        ctx.set_materialize_grads(False)
        return (logp, entropy) if return_entropy else logp

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy=None):
        hidden, weight, targets, bias, lse, entropy = ctx.saved_tensors
        need_h, need_w, _, need_b = ctx.needs_input_grad[:4]
        none = (None,) * 7
        if (grad_logp is None and grad_entropy is None) or not (need_h or need_w or need_b):
            return none

        dtype, temperature = lse.dtype, ctx.temperature
        keep = targets >= 0
        # where, not multiply: an inf/nan upstream gradient on an ignored row must still give exactly 0.
        g = None if grad_logp is None else torch.where(keep, grad_logp.to(dtype), 0.0)  # (N,)
        eg = None if grad_entropy is None else torch.where(keep, grad_entropy.to(dtype), 0.0)  # (N,)
        tgt = targets.clamp_min(0)
        w = weight.to(dtype)  # (V, H)
        b = None if bias is None else bias.to(dtype)

        grad_h = torch.empty_like(hidden) if need_h else None  # (N, H) in hidden's dtype
        grad_w = torch.zeros_like(w) if need_w else None  # (V, H) accumulated in the compute dtype
        grad_b = torch.zeros_like(b) if need_b else None  # (V,)
        with autocast_off(hidden.device):
            for s, e in row_chunks(hidden.shape[0], ctx.rows):
                h = hidden[s:e].to(dtype)  # (rows, H)
                logp = chunk_logits(h, w, b, temperature).sub_(lse[s:e, None])  # (rows, V) log p, recomputed
                p = logp.exp()  # (rows, V)
                # dz = dL/dz, built in place over the two (rows, V) buffers we already hold.
                if eg is not None:
                    dz = logp.add_(entropy[s:e, None]).mul_(p).mul_(-eg[s:e, None])  # -e p (log p + H)
                    if g is not None:
                        dz.sub_(p.mul_(g[s:e, None]))  # - g p
                else:
                    dz = p.mul_(-g[s:e, None])  # - g p
                if g is not None:
                    dz.scatter_add_(1, tgt[s:e, None], g[s:e, None])  # + g at the target column
                if temperature != 1.0:
                    dz.div_(temperature)  # chain through z = (W h + b) / T
                if need_h:
                    grad_h[s:e] = dz @ w  # (rows, V) @ (V, H)
                if need_w:
                    grad_w.addmm_(dz.T, h)  # (V, rows) @ (rows, H)
                if need_b:
                    grad_b += dz.sum(0)
                del logp, p, dz

        return (
            grad_h,
            None if grad_w is None else grad_w.to(weight.dtype),
            None,
            None if grad_b is None else grad_b.to(bias.dtype),
            None,
            None,
            None,
        )


def fused_linear_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    return_entropy: bool = False,
    _chunk_rows: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of each target token, and optionally the entropy of each row's distribution.

    Args:
        hidden: [N, H] final hidden states, any float dtype.
        weight: [V, H] LM-head weight.
        targets: [N] integer token ids; a negative id (e.g. -100) marks a row to ignore.
        bias: optional [V] LM-head bias.
        temperature: logits are divided by it before the softmax; finite and > 0.
        return_entropy: also return the entropy -sum p log p of each row.
        _chunk_rows: private, for tests: rows per chunk instead of the memory-budget rule.

    Returns:
        logprobs [N] float32 (float64 for float64 inputs), or (logprobs, entropy); both are 0 on ignored
        rows, which also receive no gradient. Differentiable w.r.t. hidden, weight and bias.
    """
    check_hidden_weight(hidden, weight)
    n, vocab = hidden.shape[0], weight.shape[0]
    if not isinstance(targets, torch.Tensor):
        raise ValueError(f"targets must be a torch.Tensor, got {type(targets).__name__}")
    if targets.dtype == torch.bool or targets.is_floating_point() or targets.is_complex():
        raise ValueError(f"targets must have an integer dtype (int64), got {targets.dtype}")
    if tuple(targets.shape) != (n,):
        raise ValueError(f"targets must be 1-D with shape [N] = [{n}] (N from hidden), got {tuple(targets.shape)}")
    if targets.device != hidden.device:
        raise ValueError(f"targets is on {targets.device} but hidden is on {hidden.device}")
    if bias is not None:
        check_floating("bias", bias)
        if tuple(bias.shape) != (vocab,):
            raise ValueError(f"bias must have shape [V] = [{vocab}] (V from weight), got {tuple(bias.shape)}")
        if bias.device != hidden.device:
            raise ValueError(f"bias is on {bias.device} but hidden is on {hidden.device}")
    check_temperature(temperature)
    # One reduction (a host sync on GPU) to turn an out-of-range id into a clear error instead of a
    # device-side assert in gather.
    if n > 0 and (top := int(targets.max())) >= vocab:
        raise ValueError(f"targets must be < V = {vocab} (negative ids are ignored), got {top}")

    rows = chunk_rows(vocab, compute_dtype(hidden, weight, bias), _chunk_rows)
    # Dispatch point: CUDA tensors will go to a Triton Function here once it exists. Today every device
    # uses the chunked PyTorch path.
    return LinearLogprobsFunction.apply(
        hidden, weight, targets.long(), bias, float(temperature), bool(return_entropy), rows
    )
