"""Fused LM head -> per-token log-probs (and entropy), without the [N, V] logits.

RLHF scores every generated token under the policy, the old policy and the reference model. The plain
``log_softmax(hidden @ W.T)[targets]`` builds float32 logits for all N tokens at once: 8 x 1024 tokens with
Llama-3's 128,256-word vocabulary is 3.9 GiB, and autograd keeps it (and the softmax) alive until backward.
Here the LM head runs chunk by chunk over tokens: a (rows, V) float32 tile is computed, reduced by a row
kernel with an online log-sum-exp over vocabulary tiles, and freed.

Backward costs no matmul for the hidden states. The gradient of a row's log-prob and entropy w.r.t. its
logits is g (onehot - p) - e p (log p + H), where the upstream gradients g and e are ONE NUMBER PER ROW. So
the forward pass, while the tile is in hand, also computes (onehot - p) @ W and -p (log p + H) @ W, and
backward only scales those [N, H] rows by g and e. Two matmuls in all (three with entropy) instead of the
usual forward + recompute + backward three (five). Only a trainable LM head (rare under LoRA) needs a
recomputation, for its [V, H] gradient.

A soft-capped head (Gemma 2: logits = cap * tanh(x / cap)) is the same computation on the capped tile, with
each logit gradient multiplied by the cap's derivative 1 - tanh^2, which the row kernels read off the tile.
"""

from __future__ import annotations

import torch

from ._common import (
    FP_FUSION,
    autocast_off,
    backend_for,
    block_v,
    check_floating,
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

# Row-kernel modes for the per-row coefficients g (of d logp) and e (of d entropy).
ZERO, ONE, LOAD = 0, 1, 2


def logprobs_reference(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    softcap: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Slow, obviously-correct version: full [N, V] logits, soft-capped as transformers' Gemma 2 does, then
    log_softmax. Returns (logprobs, entropy)."""
    dtype = compute_dtype(hidden, weight, bias)
    logits = hidden.to(dtype) @ weight.to(dtype).T  # (N, V)
    if bias is not None:
        logits = logits + bias.to(dtype)
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    logp_all = torch.log_softmax(logits / temperature, dim=-1)  # (N, V)
    ignore = targets < 0
    logp = logp_all.gather(1, targets.clamp_min(0).long()[:, None]).squeeze(1)  # (N,)
    entropy = -(logp_all.exp() * logp_all).sum(-1)  # (N,)
    zero = logp.new_zeros(())
    return torch.where(ignore, zero, logp), torch.where(ignore, zero, entropy)


# --------------------------------------------------------------------------- Triton row kernels

if triton is not None:

    @triton.jit
    def _stats_kernel(
        z_ptr, z_stride, targets_ptr, lse_ptr, logp_ptr, entropy_ptr, V,
        WITH_ENTROPY: tl.constexpr, BLOCK_V: tl.constexpr,
    ):  # fmt: skip
        """One row of logits -> lse, log p(target), entropy, in one pass with an online log-sum-exp.

        m is the running max, s = sum exp(z - m), u = sum exp(z - m) (z - m). The entropy is
        log s - u / s: both terms are O(log V), so no cancellation of two O(|z|) numbers.
        """
        row = tl.program_id(0).to(tl.int64)
        z_row = z_ptr + row * z_stride
        m = tl.full((), float("-inf"), tl.float32)
        s = tl.zeros((), tl.float32)
        u = tl.zeros((), tl.float32)
        for start in range(0, V, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            z = tl.load(z_row + cols, mask=cols < V, other=float("-inf")).to(tl.float32)
            m_new = tl.maximum(m, tl.max(z, 0))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # a fully masked prefix stays s = 0
            scale = tl.exp(m - m_safe)
            p = tl.exp(z - m_safe)  # unnormalised, 0 on masked columns
            if WITH_ENTROPY:
                # where() before multiplying: both branches are evaluated, and 0 * -inf would be NaN
                shift = tl.where(s > 0, m - m_safe, 0.0) * s
                u = scale * (u + shift) + tl.sum(tl.where(p > 0, z - m_safe, 0.0) * p, 0)
            s = s * scale + tl.sum(p, 0)
            m = m_new
        lse = m + tl.log(s)
        target = tl.load(targets_ptr + row)
        ignore = target < 0
        z_target = tl.load(z_row + tl.maximum(target, 0)).to(tl.float32)
        tl.store(lse_ptr + row, lse)
        tl.store(logp_ptr + row, tl.where(ignore, 0.0, z_target - lse))
        if WITH_ENTROPY:
            tl.store(entropy_ptr + row, tl.where(ignore, 0.0, tl.log(s) - u / s))

    @triton.jit
    def _dlogits_kernel(
        z_ptr, z_stride, out_ptr, out_stride, targets_ptr, lse_ptr, entropy_ptr, g_ptr, e_ptr, scale, cap_slope, V,
        G_MODE: tl.constexpr, E_MODE: tl.constexpr, SOFTCAP: tl.constexpr, BLOCK_V: tl.constexpr,
    ):  # fmt: skip
        """out = scale * (g (onehot - p) - e p (log p + H)) for one row; out may be the logits buffer itself.

        With SOFTCAP, times the cap's derivative 1 - (z * cap_slope)^2 = 1 - tanh(x / cap)^2 (see softcap_slope).
        """
        row = tl.program_id(0).to(tl.int64)
        target = tl.load(targets_ptr + row)
        keep = target >= 0
        lse = tl.load(lse_ptr + row)
        g = 0.0
        if G_MODE == 1:
            g = 1.0
        if G_MODE == 2:
            g = tl.load(g_ptr + row).to(tl.float32)
        e = 0.0
        entropy = 0.0
        if E_MODE != 0:
            entropy = tl.load(entropy_ptr + row)
            e = 1.0
        if E_MODE == 2:
            e = tl.load(e_ptr + row).to(tl.float32)
        g = tl.where(keep, g * scale, 0.0)  # where, not *: an inf upstream on an ignored row still gives 0
        e = tl.where(keep, e * scale, 0.0)
        for start in range(0, V, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            valid = cols < V
            z = tl.load(z_ptr + row * z_stride + cols, mask=valid, other=float("-inf")).to(tl.float32)
            logp = z - lse
            p = tl.exp(logp)
            grad = -g * p
            if E_MODE != 0:
                grad -= e * tl.where(p > 0, logp + entropy, 0.0) * p
            grad = tl.where(cols == target, grad + g, grad)
            if SOFTCAP:
                t = tl.where(valid, z * cap_slope, 0.0)  # tanh(x / cap), in (-1, 1)
                grad = grad * (1.0 - t * t)
            tl.store(out_ptr + row * out_stride + cols, grad, mask=valid)


# --------------------------------------------------------------------------- row ops, one per backend


def _stats_torch(z, targets, with_entropy):
    lse = torch.logsumexp(z, dim=-1)  # (rows,)
    logp = z.gather(1, targets.clamp_min(0)[:, None]).squeeze(1) - lse
    entropy = None
    if with_entropy:  # two (rows, V) buffers, worked in place
        logp_all = z - lse[:, None]  # (rows, V)
        plogp = logp_all.exp().mul_(logp_all).nan_to_num_(nan=0.0)  # p log p; 0 * -inf (masked vocab) -> 0
        entropy = -plogp.sum(-1)
        del logp_all, plogp
    ignore = targets < 0
    return lse, logp.masked_fill(ignore, 0.0), None if entropy is None else entropy.masked_fill(ignore, 0.0)


def _stats_triton(z, targets, with_entropy):
    rows, vocab = z.shape
    lse, logp = (torch.empty(rows, dtype=torch.float32, device=z.device) for _ in range(2))
    entropy = torch.empty(rows, dtype=torch.float32, device=z.device) if with_entropy else lse
    if rows:
        _stats_kernel[(rows,)](
            z, z.stride(0), targets, lse, logp, entropy, vocab,
            WITH_ENTROPY=with_entropy, BLOCK_V=block_v(vocab), enable_fp_fusion=FP_FUSION,
        )  # fmt: skip
    return lse, logp, entropy if with_entropy else None


def _dlogits_torch(z, out, targets, lse, entropy, g, e, scale, cap_slope):
    """Same contract as _dlogits_kernel; g and e are None (zero), 1.0, or per-row tensors; cap_slope 0 = no cap.

    Works in `out` in place (it may be z itself), with at most two extra (rows, V) buffers: one when e is
    given, one for the cap's derivative when out is z (otherwise that reuses the first, or z is still there).
    """
    keep = targets >= 0
    g_rows = _row_coefficient(g, keep, scale, z.dtype)  # (rows, 1)
    cap_grad = None
    if cap_slope and out is z:  # 1 - tanh(x / cap)^2, read off the tile before it is overwritten
        cap_grad = (z * cap_slope).square_().neg_().add_(1.0)  # (rows, V)
    if out is not z:
        out.copy_(z)
    out.sub_(lse[:, None])  # log p
    weighted = None
    if e is None:
        out.exp_().mul_(-g_rows)  # -g p
    else:
        weighted = out + entropy[:, None]  # log p + H
        out.exp_()  # p
        weighted.mul_(out).masked_fill_(out == 0, 0.0)  # p (log p + H); 0 where p = 0, not 0 * -inf
        out.mul_(-g_rows).sub_(weighted.mul_(_row_coefficient(e, keep, scale, z.dtype)))
    out.scatter_add_(1, targets.clamp_min(0)[:, None], g_rows)  # + g at the target column
    if cap_slope:  # chain rule through the soft-cap
        if cap_grad is None:  # z is intact: its derivative goes into the spent buffer, or a new one
            cap_grad = torch.mul(z, cap_slope, out=weighted) if weighted is not None else z * cap_slope
            cap_grad.square_().neg_().add_(1.0)
        out.mul_(cap_grad)


def _row_coefficient(c, keep, scale, dtype):
    """(rows, 1): the per-row coefficient times scale, 0 on ignored rows and when c is None."""
    if c is None:
        return torch.zeros(keep.shape[0], 1, dtype=dtype, device=keep.device)
    c = torch.as_tensor(c, dtype=dtype, device=keep.device).expand(keep.shape)
    return torch.where(keep, c * scale, 0.0)[:, None]


def _dlogits_triton(z, out, targets, lse, entropy, g, e, scale, cap_slope):
    rows, vocab = z.shape
    if not rows:
        return
    modes = [ZERO if c is None else ONE if isinstance(c, float) else LOAD for c in (g, e)]
    g_ptr = g if modes[0] == LOAD else lse  # any tensor: the kernel never reads it in the other modes
    e_ptr = e if modes[1] == LOAD else lse
    _dlogits_kernel[(rows,)](
        z, z.stride(0), out, out.stride(0), targets, lse, entropy if entropy is not None else lse, g_ptr, e_ptr,
        float(scale), float(cap_slope), vocab,
        G_MODE=modes[0], E_MODE=modes[1], SOFTCAP=bool(cap_slope), BLOCK_V=block_v(vocab),
        enable_fp_fusion=FP_FUSION,
    )  # fmt: skip


ROW_OPS = {"torch": (_stats_torch, _dlogits_torch), "triton": (_stats_triton, _dlogits_triton)}


# --------------------------------------------------------------------------- autograd


class LinearLogprobsFunction(torch.autograd.Function):
    """Chunked log-probs and entropy of the targets under softmax(softcap(hidden @ W.T + b) / T).

    Forward, per row (h = hidden row, t = target, T = temperature, c = the soft-cap, if any):
        x    = W h + b                                         (V,) raw logits
        z    = c tanh(x / c) / T    (or x / T without a cap)   (V,) logits
        lse  = log sum_k exp(z_k)
        logp = z_t - lse                                       log p_t,  p = softmax(z) = exp(z - lse)
        H    = -sum_k p_k log p_k

    Backward, with upstream g = dL/dlogp and e = dL/dH of that row (any values, either may be absent):
        dL/dz_k = g (1[k = t] - p_k)  -  e p_k (log p_k + H)
        dL/dx_k = dL/dz_k s_k / T,   s_k = 1 - tanh(x_k / c)^2 = 1 - (z_k T / c)^2   (s = 1 without a cap)
        dL/dh   = W^T (dL/dx)  =  g [W^T ((onehot - p) s) / T]  +  e [W^T (-p (log p + H) s) / T]
        dL/dW   = sum_rows (dL/dx) h^T
        dL/db   = sum_rows (dL/dx)
    The two bracketed [N, H] terms do not depend on g or e, so forward computes them from the tile it
    already holds and backward is a per-row scaling. dL/dW and dL/db recompute the tiles.

    Rows with t < 0 are ignored: logp = H = 0 and dL/dz = 0, so they send no gradient anywhere.
    Everything is computed in float32 (float64 for float64 inputs); gradients come back in the input dtypes.
    """

    @staticmethod
    def forward(ctx, hidden, weight, targets, bias, temperature, softcap, return_entropy, rows, backend, grad_hidden):
        stats, dlogits = ROW_OPS[backend]
        dtype = compute_dtype(hidden, weight, bias)
        n = hidden.shape[0]
        slope = softcap_slope(temperature, softcap)
        w = weight if backend == "triton" or weight.dtype == dtype else weight.to(dtype)  # CPU: upcast once
        lse = torch.empty(n, dtype=dtype, device=hidden.device)
        logp = torch.empty(n, dtype=dtype, device=hidden.device)
        entropy = torch.empty(n, dtype=dtype, device=hidden.device) if return_entropy else None
        # d logp / dh and d H / dh per row, before the upstream scaling: (N, H). Alone, d logp / dh is
        # kept in hidden's dtype (the gradient is returned in it anyway); with entropy both are float32,
        # because backward sums g * one + e * other and 16-bit roundings would not survive cancellation.
        prepared = dtype if return_entropy else hidden.dtype
        dlogp_dh = hidden.new_empty(hidden.shape, dtype=prepared) if grad_hidden else None
        dent_dh = hidden.new_empty(hidden.shape, dtype=prepared) if grad_hidden and return_entropy else None
        with autocast_off(hidden.device):
            for s, e in row_chunks(n, rows):
                z = chunk_logits(hidden[s:e], w, bias, temperature, softcap, dtype)  # (rows, V)
                lse[s:e], logp[s:e], ent = stats(z, targets[s:e], return_entropy)
                if return_entropy:
                    entropy[s:e] = ent
                if grad_hidden:
                    if return_entropy:  # before the in-place write below consumes the logits
                        d_ent = torch.empty_like(z)
                        dlogits(z, d_ent, targets[s:e], lse[s:e], entropy[s:e], None, 1.0, 1.0 / temperature, slope)
                        dent_dh[s:e] = matmul_into(d_ent, w, prepared)  # (rows, V) @ (V, H)
                        del d_ent
                    dlogits(z, z, targets[s:e], lse[s:e], None, 1.0, None, 1.0 / temperature, slope)
                    dlogp_dh[s:e] = matmul_into(z, w, prepared)  # (rows, V) @ (V, H)
                del z  # free the tile before the next one is allocated

        ctx.save_for_backward(hidden, weight, targets, bias, lse, entropy, dlogp_dh, dent_dh)
        ctx.temperature, ctx.softcap, ctx.rows, ctx.backend = temperature, softcap, rows, backend
        # An output nobody used arrives in backward as None instead of a tensor of zeros: skip its work.
        ctx.set_materialize_grads(False)
        return (logp, entropy) if return_entropy else logp

    @staticmethod
    def backward(ctx, grad_logp, grad_entropy=None):
        hidden, weight, targets, bias, lse, entropy, dlogp_dh, dent_dh = ctx.saved_tensors
        need_h, need_w, _, need_b = ctx.needs_input_grad[:4]
        none = (None,) * 10
        if grad_logp is None and grad_entropy is None:
            return none
        keep = targets >= 0
        # where, not multiply: an inf/nan upstream gradient on an ignored row must still give exactly 0.
        g = None if grad_logp is None else torch.where(keep, grad_logp.to(lse.dtype), 0.0)  # (N,)
        e = None if grad_entropy is None else torch.where(keep, grad_entropy.to(lse.dtype), 0.0)  # (N,)

        grad_h = None
        if need_h:
            grad_h = torch.zeros(hidden.shape, dtype=lse.dtype, device=hidden.device)  # (N, H)
            if g is not None:
                grad_h += g[:, None] * dlogp_dh
            if e is not None:
                grad_h += e[:, None] * dent_dh
            grad_h = grad_h.to(hidden.dtype)

        grad_w = grad_b = None
        if need_w or need_b:
            grad_w, grad_b = _recompute_head_grads(ctx, hidden, weight, targets, bias, lse, entropy, g, e)
        return grad_h, grad_w, None, grad_b, None, None, None, None, None, None


def _recompute_head_grads(ctx, hidden, weight, targets, bias, lse, entropy, g, e):
    """dL/dW and dL/db for a trainable LM head: each tile's logits are recomputed, never stored."""
    need_w, need_b = ctx.needs_input_grad[1], ctx.needs_input_grad[3]
    dlogits = ROW_OPS[ctx.backend][1]
    dtype = lse.dtype
    w = weight if ctx.backend == "triton" or weight.dtype == dtype else weight.to(dtype)
    grad_w = torch.zeros(weight.shape, dtype=dtype, device=weight.device) if need_w else None  # (V, H)
    grad_b = torch.zeros(bias.shape, dtype=dtype, device=bias.device) if need_b else None  # (V,)
    slope = softcap_slope(ctx.temperature, ctx.softcap)
    with autocast_off(hidden.device):
        for s, end in row_chunks(hidden.shape[0], ctx.rows):
            z = chunk_logits(hidden[s:end], w, bias, ctx.temperature, ctx.softcap, dtype)  # (rows, V)
            g_c = None if g is None else g[s:end]
            e_c = None if e is None else e[s:end]
            ent = None if entropy is None else entropy[s:end]
            dlogits(z, z, targets[s:end], lse[s:end], ent, g_c, e_c, 1.0 / ctx.temperature, slope)  # dL/dx in place
            if need_w:
                grad_w.addmm_(z.T, hidden[s:end].to(dtype))  # (V, rows) @ (rows, H)
            if need_b:
                grad_b += z.sum(0)
            del z
    return (
        None if grad_w is None else grad_w.to(weight.dtype),
        None if grad_b is None else grad_b.to(bias.dtype),
    )


def fused_linear_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    return_entropy: bool = False,
    softcap: float | None = None,
    _chunk_rows: int | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Log-prob of each target token, and optionally the entropy of each row's distribution.

    Args:
        hidden: [N, H] final hidden states, any float dtype.
        weight: [V, H] LM-head weight.
        targets: [N] integer token ids; a negative id (e.g. -100) marks a row to ignore.
        bias: optional [V] LM-head bias.
        temperature: logits are divided by it before the softmax; finite and > 0.
        return_entropy: also return the entropy -sum p log p of each row. Ask only when it is used:
            with autograd on it costs one more matmul.
        softcap: None, or a finite cap > 0: the logits become cap * tanh(logits / cap) before the
            temperature divides them (Gemma 2's final_logit_softcapping, applied as transformers does).
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
    check_softcap(softcap)
    # One reduction (a host sync on GPU) to turn an out-of-range id into a clear error instead of a
    # device-side assert in gather.
    if n > 0 and (top := int(targets.max())) >= vocab:
        raise ValueError(f"targets must be < V = {vocab} (negative ids are ignored), got {top}")

    dtype = compute_dtype(hidden, weight, bias)
    rows = chunk_rows(vocab, dtype, _chunk_rows)
    # The row kernels are float32; float64 is for gradcheck and always takes the torch rows.
    backend = "torch" if dtype == torch.float64 else backend_for(hidden.device)
    grad_hidden = torch.is_grad_enabled() and hidden.requires_grad
    return LinearLogprobsFunction.apply(
        hidden,
        weight,
        targets.long().contiguous(),
        bias,
        float(temperature),
        None if softcap is None else float(softcap),
        bool(return_entropy),
        rows,
        backend,
        grad_hidden,
    )
