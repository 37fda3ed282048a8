"""fused_linear_logprobs against the full-logits float64 reference: values, gradients, memory, validation.

Every test that takes `backend_device` runs once per backend (chunked PyTorch row ops, Triton row kernels)
and device available; the Triton kernels run on CPU tensors under TRITON_INTERPRET=1.
"""

import pytest
import torch
from kernel_testing import GRAD_TOL, OUT_TOL, ShapeRecorder, assert_grad_close, rel_err, shape_checks_apply
from lorarlhf.kernels import fused_linear_logprobs
from lorarlhf.kernels._common import LOGITS_CHUNK_BYTES, chunk_rows
from lorarlhf.kernels.logprobs import LinearLogprobsFunction, logprobs_reference

IGNORE = -100

# (N, H, V, rows per chunk or None for the memory-budget rule, which gives a single chunk at these sizes).
# Vocabularies that are not a multiple of any tile (1,271 is prime-ish, 131 and 7 are prime), N = 1, N in
# the hundreds; the real vocabulary sizes are in test_real_vocabulary_sizes.
SHAPES = [(37, 19, 131, None), (37, 19, 131, 8), (5, 8, 7, None), (64, 16, 50, 3), (1, 12, 1271, None)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def make_inputs(n, h, v, dtype=torch.float32, bias=True, seed=0, ignore_every=5, device="cpu"):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=gen).to(dtype)
    # 1/sqrt(H) scale keeps the logits O(1)-O(10) like a trained head: softmaxes neither uniform nor one-hot
    weight = (torch.randn(v, h, generator=gen) * 2 / h**0.5).to(dtype)
    b = torch.randn(v, generator=gen).to(dtype) if bias else None
    targets = torch.randint(0, v, (n,), generator=gen)
    if n > 1:
        targets[::ignore_every] = IGNORE
    grad_logp = torch.randn(n, generator=gen)
    grad_ent = torch.randn(n, generator=gen)
    return tuple(None if t is None else t.to(device) for t in (hidden, weight, b, targets, grad_logp, grad_ent))


def leaves(*tensors, dtype=None):
    return [None if t is None else t.detach().to(dtype or t.dtype).requires_grad_() for t in tensors]


def reference_with_grads(hidden, weight, bias, targets, temperature, grad_logp, grad_ent):
    """float64 reference outputs and the gradients of sum(grad_logp * logp + grad_ent * entropy)."""
    h, w, b = leaves(hidden, weight, bias, dtype=torch.float64)
    logp, ent = logprobs_reference(h, w, targets, b, temperature)
    loss = (logp * grad_logp.double()).sum() + (ent * grad_ent.double()).sum()
    inputs = [t for t in (h, w, b) if t is not None]
    grads = list(torch.autograd.grad(loss, inputs)) + ([None] if b is None else [])
    return logp, ent, grads


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.kernels
def test_matches_reference_values_and_grads(backend_device, shape, temperature, with_bias, dtype):
    _, device = backend_device
    n, h_dim, v, rows = shape
    hidden, weight, bias, targets, g_lp, g_ent = make_inputs(n, h_dim, v, dtype, with_bias, device=device)
    h, w, b = leaves(hidden, weight, bias)

    logp, ent = fused_linear_logprobs(
        h, w, targets, bias=b, temperature=temperature, return_entropy=True, _chunk_rows=rows
    )
    loss = (logp * g_lp).sum() + (ent * g_ent).sum()
    loss.backward()

    ref_logp, ref_ent, (ref_gh, ref_gw, ref_gb) = reference_with_grads(
        hidden, weight, bias, targets, temperature, g_lp, g_ent
    )
    assert logp.dtype == ent.dtype == torch.float32
    assert logp.shape == ent.shape == (n,)
    torch.testing.assert_close(logp.double(), ref_logp, **OUT_TOL)
    torch.testing.assert_close(ent.double(), ref_ent, **OUT_TOL)
    for got, ref, leaf in ((h.grad, ref_gh, h), (w.grad, ref_gw, w), (None if b is None else b.grad, ref_gb, b)):
        if leaf is None:
            continue
        assert got.dtype == dtype  # gradients come back in the input dtype
        assert_grad_close(got, ref, dtype)


@pytest.mark.parametrize("vocab", [1271, 32003, 50257])
@pytest.mark.kernels
def test_real_vocabulary_sizes(backend_device, vocab):
    """GPT-2's 50,257 and an odd 32,003: several vocabulary tiles with a ragged last one.

    Outputs meet 1e-5. A gradient is a sum over V terms, and a float32 matmul over K = 50k terms carries
    ~eps * sqrt(K) ~ 1e-5 relative error by itself, so gradients are held to 1e-5 or to 2.5x eager float32
    PyTorch's own error (full logits, log_softmax, autograd), whichever is larger. The factor is for the
    joint log-prob + entropy gradient, which backward sums from two precomputed products (see logprobs.py):
    at V = 50,257 that measured 1.8e-5 against eager's 0.95e-5.
    """
    _, device = backend_device
    hidden, weight, bias, targets, g_lp, g_ent = make_inputs(3, 8, vocab, bias=True, device=device)
    targets[0] = vocab - 1  # the very last column, in the ragged tile
    h, w = leaves(hidden, weight)
    logp, ent = fused_linear_logprobs(h, w, targets, bias=bias, temperature=0.9, return_entropy=True)
    torch.autograd.backward((logp, ent), (g_lp, g_ent))
    ref_logp, ref_ent, (ref_gh, ref_gw, _) = reference_with_grads(hidden, weight, bias, targets, 0.9, g_lp, g_ent)
    eager_h, eager_w = leaves(hidden, weight)
    eager_logp, eager_ent = logprobs_reference(eager_h, eager_w, targets, bias, 0.9)  # float32 full logits
    torch.autograd.backward((eager_logp, eager_ent), (g_lp, g_ent))

    assert rel_err(logp, ref_logp) <= 1e-5 and rel_err(ent, ref_ent) <= 1e-5
    assert rel_err(h.grad, ref_gh) <= max(1e-5, 2.5 * rel_err(eager_h.grad, ref_gh))
    assert rel_err(w.grad, ref_gw) <= max(1e-5, 2.5 * rel_err(eager_w.grad, ref_gw))


@pytest.mark.kernels
def test_hundreds_of_rows_in_many_chunks(backend_device):
    _, device = backend_device
    hidden, weight, bias, targets, g_lp, g_ent = make_inputs(300, 16, 1271, device=device)
    h, w, b = leaves(hidden, weight, bias)
    logp, ent = fused_linear_logprobs(h, w, targets, bias=b, return_entropy=True, _chunk_rows=64)
    torch.autograd.backward((logp, ent), (g_lp, g_ent))
    ref_logp, ref_ent, grads = reference_with_grads(hidden, weight, bias, targets, 1.0, g_lp, g_ent)
    assert rel_err(logp, ref_logp) <= 1e-5 and rel_err(ent, ref_ent) <= 1e-5
    for got, ref in zip((h.grad, w.grad, b.grad), grads, strict=True):
        assert rel_err(got, ref) <= 1e-5


@pytest.mark.kernels
def test_backends_agree(backend_device):
    """Triton and PyTorch row ops give the same numbers (each is also checked against float64 above)."""
    from lorarlhf.kernels._common import force_backend

    _, device = backend_device
    hidden, weight, bias, targets, g_lp, g_ent = make_inputs(37, 19, 131, device=device)
    results = []
    for backend in ("torch", backend_device[0]):
        with force_backend(backend):
            h, w = leaves(hidden, weight)
            logp, ent = fused_linear_logprobs(h, w, targets, bias=bias, return_entropy=True, _chunk_rows=5)
            torch.autograd.backward((logp, ent), (g_lp, g_ent))
            results.append((logp, ent, h.grad, w.grad))
    # A few float32 rounding steps of each tensor's largest entry: the log-probs reach ~17, where one ulp is 1.9e-6,
    # and the sums run in a different order (one CPU differed by 1.1e-6 of the largest h.grad entry).
    for got, ref in zip(*results, strict=True):
        torch.testing.assert_close(got, ref, atol=1e-5 * ref.abs().max().item(), rtol=2e-6)


@pytest.mark.parametrize("return_entropy", [False, True])
@pytest.mark.kernels
def test_logprobs_only_and_entropy_only_gradients(backend_device, return_entropy):
    _, device = backend_device
    # One output unused: its gradient arrives as None and the kernel must handle the other one alone.
    hidden, weight, bias, targets, g_lp, g_ent = make_inputs(37, 19, 131, seed=1, device=device)
    h, w, b = leaves(hidden, weight, bias)
    out = fused_linear_logprobs(h, w, targets, bias=b, temperature=0.7, return_entropy=return_entropy, _chunk_rows=6)
    if return_entropy:
        loss = (out[1] * g_ent).sum()  # entropy only
        g_lp = torch.zeros_like(g_lp)
    else:
        assert isinstance(out, torch.Tensor)
        loss = (out * g_lp).sum()  # log-probs only
        g_ent = torch.zeros_like(g_ent)
    loss.backward()
    _, _, (ref_gh, ref_gw, ref_gb) = reference_with_grads(hidden, weight, bias, targets, 0.7, g_lp, g_ent)
    for got, ref in ((h.grad, ref_gh), (w.grad, ref_gw), (b.grad, ref_gb)):
        torch.testing.assert_close(got.double(), ref, **GRAD_TOL[torch.float32])


@pytest.mark.kernels
def test_ignored_rows_give_zero_output_and_exactly_zero_gradient(backend_device):
    _, device = backend_device
    hidden, weight, bias, targets, g_lp, g_ent = make_inputs(37, 19, 131, ignore_every=3, device=device)
    targets[1] = -1  # any negative id is ignored, not only -100
    ignored = targets < 0
    # Even a non-finite upstream gradient on an ignored row must not leak into anything.
    g_lp[ignored] = float("inf")
    g_ent[ignored] = float("nan")
    h, w, b = leaves(hidden, weight, bias)

    logp, ent = fused_linear_logprobs(h, w, targets, bias=b, return_entropy=True, _chunk_rows=4)
    gh, gw, gb = torch.autograd.grad((logp, ent), (h, w, b), grad_outputs=(g_lp, g_ent))

    assert torch.equal(logp[ignored], torch.zeros(int(ignored.sum()), device=device))
    assert torch.equal(ent[ignored], torch.zeros(int(ignored.sum()), device=device))
    assert torch.equal(gh[ignored], torch.zeros_like(gh[ignored]))
    assert torch.isfinite(gw).all() and torch.isfinite(gb).all()
    # The kept rows are unaffected by the ignored ones.
    keep = ~ignored
    g_lp[ignored], g_ent[ignored] = 0.0, 0.0
    ref_logp, ref_ent, (ref_gh, ref_gw, ref_gb) = reference_with_grads(hidden, weight, bias, targets, 1.0, g_lp, g_ent)
    assert (ent[keep] > 0).all()
    torch.testing.assert_close(logp.double(), ref_logp, **OUT_TOL)
    torch.testing.assert_close(gh.double(), ref_gh, **GRAD_TOL[torch.float32])
    torch.testing.assert_close(gw.double(), ref_gw, **GRAD_TOL[torch.float32])


@pytest.mark.kernels
def test_all_rows_ignored(backend_device):
    _, device = backend_device
    hidden, weight, _, _, _, _ = make_inputs(6, 8, 7, bias=False, device=device)
    h, w = leaves(hidden, weight)
    targets = torch.full((6,), IGNORE, device=device)
    logp = fused_linear_logprobs(h, w, targets)
    logp.sum().backward()
    assert torch.equal(logp, torch.zeros(6, device=device))
    assert torch.equal(h.grad, torch.zeros_like(h)) and torch.equal(w.grad, torch.zeros_like(w))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.kernels
def test_frozen_weight_gets_no_weight_grad(backend_device, dtype):
    _, device = backend_device
    n, h_dim, v = 37, 19, 131
    hidden, weight, bias, targets, g_lp, g_ent = make_inputs(n, h_dim, v, dtype, bias=False, device=device)
    (h,) = leaves(hidden)
    logp, ent = fused_linear_logprobs(h, weight, targets, return_entropy=True, _chunk_rows=8)
    with ShapeRecorder() as rec:
        torch.autograd.backward((logp, ent), (g_lp, g_ent))
    assert weight.grad is None
    # With a frozen head, backward is a per-row scaling of what forward prepared: no [V, H] tensor, no
    # (rows, V) tile, no matmul.
    assert (v, h_dim) not in rec.shapes
    assert not [shape for shape in rec.shapes if v in shape]
    _, _, (ref_gh, _, _) = reference_with_grads(hidden, weight, None, targets, 1.0, g_lp, g_ent)
    assert_grad_close(h.grad, ref_gh, dtype)


@pytest.mark.kernels
def test_autocast_region_does_not_lower_precision():
    # Under autocast the matmuls would silently run in bfloat16 (~0.1 error on a log-prob); the kernel opts out.
    hidden, weight, bias, targets, g_lp, g_ent = make_inputs(37, 19, 131, seed=2)
    h, w, b = leaves(hidden, weight, bias)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logp, ent = fused_linear_logprobs(h, w, targets, bias=b, return_entropy=True, _chunk_rows=8)
        torch.autograd.backward((logp, ent), (g_lp, g_ent))
    ref_logp, ref_ent, (ref_gh, ref_gw, ref_gb) = reference_with_grads(hidden, weight, bias, targets, 1.0, g_lp, g_ent)
    torch.testing.assert_close(logp.double(), ref_logp, **OUT_TOL)
    torch.testing.assert_close(ent.double(), ref_ent, **OUT_TOL)
    for got, ref in ((h.grad, ref_gh), (w.grad, ref_gw), (b.grad, ref_gb)):
        torch.testing.assert_close(got.double(), ref, **GRAD_TOL[torch.float32])


@pytest.mark.kernels
def test_no_grad_needed_returns_plain_tensors():
    hidden, weight, bias, targets, _, _ = make_inputs(5, 8, 7)
    logp, ent = fused_linear_logprobs(hidden, weight, targets, bias=bias, return_entropy=True)
    assert not logp.requires_grad and not ent.requires_grad
    with torch.no_grad():
        h = hidden.clone().requires_grad_()
        assert not fused_linear_logprobs(h, weight, targets).requires_grad


@pytest.mark.kernels
def test_memory_never_builds_full_logits_and_saves_only_inputs_and_row_stats(backend_device):
    _, device = backend_device
    n, h_dim, v, rows = 64, 8, 50, 3  # N*V = 3200 dwarfs every legitimate tensor below
    hidden, weight, bias, targets, g_lp, g_ent = make_inputs(n, h_dim, v, device=device)
    h, w, b = leaves(hidden, weight, bias)

    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), ShapeRecorder() as fwd:
        logp, ent = fused_linear_logprobs(h, w, targets, bias=b, return_entropy=True, _chunk_rows=rows)
    with ShapeRecorder() as bwd:
        torch.autograd.backward((logp, ent), (g_lp, g_ent))

    # Largest tensors allowed: one (rows, V) logits tile, the [V, H] weight (gradient) and the [N, H] hidden
    # (gradient). Nothing the size of the [N, V] logits, in either pass.
    limit = max(rows * v, v * h_dim, n * h_dim)
    assert limit < n * v
    checked = (fwd, bwd) if shape_checks_apply(backend_device[0]) else ()
    for rec in checked:
        assert rec.shapes, "the recorder saw no ops"
        assert max(torch.Size(s).numel() for s in rec.shapes) <= limit
        # Every [*, V] tensor is a logits tile of at most `rows` rows, or the [H, V] view weight.T.
        assert all(s[0] in range(rows + 1) or s[0] == h_dim for s in rec.shapes if len(s) == 2 and s[1] == v)

    # Saved for backward: the inputs themselves (same storage, no copies), O(N) per-row stats, and the two
    # (N, H) float32 per-row gradients of log-prob and entropy w.r.t. hidden that forward prepared.
    input_ptrs = {t.data_ptr() for t in (h, w, b, targets)}
    inputs_saved = [t for t in saved if t.data_ptr() in input_ptrs]
    others = [t for t in saved if t.data_ptr() not in input_ptrs]
    assert len(inputs_saved) == 4
    stats = [t for t in others if t.shape == (n,)]
    prepared = [t for t in others if t.shape == (n, h_dim)]
    assert stats and len(prepared) == 2 and len(stats) + len(prepared) == len(others)
    assert all(t.dtype == torch.float32 for t in prepared)


def test_chunk_size_rule():
    # rows = budget // (V * 4 bytes of float32 logits), at least 1
    assert LOGITS_CHUNK_BYTES == 32 * 2**20
    assert chunk_rows(151_936, torch.float32) == 55
    assert chunk_rows(32_000, torch.float32) == 262
    assert chunk_rows(32_000, torch.float64) == 131
    assert chunk_rows(10**8, torch.float32) == 1
    assert chunk_rows(151_936, torch.float32, override=4) == 4
    with pytest.raises(ValueError, match="_chunk_rows must be an int >= 1"):
        chunk_rows(100, torch.float32, override=0)


@pytest.mark.kernels
def test_result_does_not_depend_on_chunking(backend_device):
    _, device = backend_device
    hidden, weight, bias, targets, _, _ = make_inputs(37, 19, 131, device=device)
    outs = [
        fused_linear_logprobs(hidden, weight, targets, bias=bias, return_entropy=True, _chunk_rows=r)
        for r in (None, 1, 7, 37, 1000)
    ]
    for logp, ent in outs[1:]:
        torch.testing.assert_close(logp, outs[0][0], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(ent, outs[0][1], atol=1e-6, rtol=1e-6)


@pytest.mark.kernels
def test_empty_batch(backend_device):
    _, device = backend_device
    _, weight, bias, _, _, _ = make_inputs(1, 8, 7, device=device)
    h = torch.zeros(0, 8, requires_grad=True, device=device)
    w, b = leaves(weight, bias)
    logp, ent = fused_linear_logprobs(
        h, w, torch.zeros(0, dtype=torch.long, device=device), bias=b, return_entropy=True
    )
    assert logp.shape == ent.shape == (0,) and logp.dtype == torch.float32
    (logp.sum() + ent.sum()).backward()
    assert h.grad.shape == (0, 8)
    assert torch.equal(w.grad, torch.zeros_like(w)) and torch.equal(b.grad, torch.zeros_like(b))


@pytest.mark.kernels
def test_int32_targets_accepted():
    hidden, weight, _, targets, _, _ = make_inputs(5, 8, 7, bias=False)
    torch.testing.assert_close(
        fused_linear_logprobs(hidden, weight, targets.int()), fused_linear_logprobs(hidden, weight, targets)
    )


@pytest.mark.parametrize("return_entropy", [False, True])
@pytest.mark.kernels
def test_gradcheck_float64(return_entropy):
    hidden, weight, bias, targets, _, _ = make_inputs(6, 4, 5, ignore_every=4)
    h, w, b = leaves(hidden, weight, bias, dtype=torch.float64)

    def fn(h, w, b):
        return fused_linear_logprobs(
            h, w, targets, bias=b, temperature=0.7, return_entropy=return_entropy, _chunk_rows=4
        )

    assert torch.autograd.gradcheck(fn, (h, w, b))
    # The Function itself, called directly (the public wrapper adds only checks).
    assert torch.autograd.gradcheck(
        lambda h, w, b: LinearLogprobsFunction.apply(h, w, targets, b, 1.3, None, return_entropy, 2, "torch", True),
        (h, w, b),
    )


def _bad(**overrides):
    hidden, weight, bias, targets, _, _ = make_inputs(5, 8, 7)
    args = dict(hidden=hidden, weight=weight, targets=targets, bias=bias, temperature=1.0)
    args.update(overrides)
    return args


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (dict(hidden=torch.randn(5, 8, 1)), r"hidden must be 2-D \[N, H\], got shape \(5, 8, 1\)"),
        (dict(hidden=torch.ones(5, 8, dtype=torch.long)), r"hidden must have a floating dtype"),
        (dict(weight=torch.randn(7)), r"weight must be 2-D \[V, H\]"),
        (dict(weight=torch.randn(7, 9)), r"weight must have shape \[V, H\] with H = 8"),
        (dict(targets=torch.zeros(5, 1, dtype=torch.long)), r"targets must be 1-D with shape \[N\] = \[5\]"),
        (dict(targets=torch.zeros(4, dtype=torch.long)), r"targets must be 1-D with shape \[N\] = \[5\]"),
        (dict(targets=torch.zeros(5)), r"targets must have an integer dtype"),
        (dict(targets=torch.zeros(5, dtype=torch.bool)), r"targets must have an integer dtype"),
        (dict(targets=torch.tensor([0, 1, 7, 2, 3])), r"targets must be < V = 7 .*got 7"),
        (dict(bias=torch.randn(8)), r"bias must have shape \[V\] = \[7\]"),
        (dict(temperature=0.0), r"temperature must be a finite number > 0, got 0.0"),
        (dict(temperature=-1.0), r"temperature must be a finite number > 0"),
        (dict(temperature=float("inf")), r"temperature must be a finite number > 0"),
        (dict(temperature=float("nan")), r"temperature must be a finite number > 0"),
    ],
)
def test_validation_messages(overrides, match):
    args = _bad(**overrides)
    with pytest.raises(ValueError, match=match):
        fused_linear_logprobs(
            args["hidden"], args["weight"], args["targets"], bias=args["bias"], temperature=args["temperature"]
        )


# --------------------------------------------------------------------------- soft-capped heads (Gemma 2)

# A cap of 3 bends logits of O(1)-O(10) hard (tanh saturates), so a missing or misplaced cap cannot pass.
CAP = 3.0


def softcapped_reference(hidden, weight, bias, targets, temperature, cap):
    """Written out as transformers' Gemma2ForCausalLM computes it, in float64: logits = lm_head(h); logits /
    cap; tanh; * cap; then our temperature and log_softmax over the full vocabulary."""
    logits = hidden.double() @ weight.double().T  # (N, V)
    if bias is not None:
        logits = logits + bias.double()
    logits = logits / cap
    logits = torch.tanh(logits)
    logits = logits * cap
    logp_all = torch.log_softmax(logits / temperature, dim=-1)  # (N, V)
    logp = logp_all.gather(1, targets.clamp_min(0)[:, None]).squeeze(1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    keep = targets >= 0
    return logp * keep, entropy * keep


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("return_entropy", [False, True])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("shape", [(37, 19, 131, 8), (5, 8, 7, None), (1, 12, 1271, None)])
@pytest.mark.kernels
def test_soft_capped_values_and_grads_match_reference(backend_device, shape, temperature, return_entropy, dtype):
    _, device = backend_device
    n, h_dim, v, rows = shape
    hidden, weight, bias, targets, g_lp, g_ent = make_inputs(n, h_dim, v, dtype, seed=11, device=device)
    h, w, b = leaves(hidden, weight, bias)

    out = fused_linear_logprobs(
        h, w, targets, bias=b, temperature=temperature, return_entropy=return_entropy, softcap=CAP, _chunk_rows=rows
    )
    logp, ent = out if return_entropy else (out, None)
    gh, gw, gb = torch.autograd.grad((logp, ent) if return_entropy else logp, (h, w, b), (g_lp, g_ent)[: len(out)])

    h64, w64, b64 = leaves(hidden, weight, bias, dtype=torch.float64)
    ref_logp, ref_ent = softcapped_reference(h64, w64, b64, targets, temperature, CAP)
    loss = (ref_logp * g_lp.double()).sum() + ((ref_ent * g_ent.double()).sum() if return_entropy else 0.0)
    ref_grads = torch.autograd.grad(loss, (h64, w64, b64))
    # The reference in logprobs.py, which other tests lean on, agrees with the written-out one.
    torch.testing.assert_close(logprobs_reference(h64, w64, targets, b64, temperature, CAP)[0], ref_logp)
    uncapped, _ = logprobs_reference(h64, w64, targets, b64, temperature)
    assert (uncapped - ref_logp).abs().max() > 0.1  # the cap matters at these inputs

    torch.testing.assert_close(logp.double(), ref_logp, **OUT_TOL)
    if return_entropy:
        torch.testing.assert_close(ent.double(), ref_ent, **OUT_TOL)
    for got, ref in zip((gh, gw, gb), ref_grads, strict=True):
        assert got.dtype == dtype
        assert_grad_close(got, ref, dtype)


@pytest.mark.kernels
def test_soft_capped_frozen_head_backward_is_a_row_scaling(backend_device):
    _, device = backend_device
    hidden, weight, _, targets, g_lp, g_ent = make_inputs(37, 19, 131, bias=False, seed=12, device=device)
    (h,) = leaves(hidden)
    logp, ent = fused_linear_logprobs(h, weight, targets, return_entropy=True, softcap=CAP, _chunk_rows=8)
    with ShapeRecorder() as rec:
        torch.autograd.backward((logp, ent), (g_lp, g_ent))
    assert not [shape for shape in rec.shapes if 131 in shape]  # no tile recomputed for a frozen head
    (h64,) = leaves(hidden, dtype=torch.float64)
    ref_logp, ref_ent = softcapped_reference(h64, weight, None, targets, 1.0, CAP)
    (ref_gh,) = torch.autograd.grad((ref_logp * g_lp.double()).sum() + (ref_ent * g_ent.double()).sum(), h64)
    assert_grad_close(h.grad, ref_gh, torch.float32)


@pytest.mark.kernels
def test_soft_capped_backends_agree(backend_device):
    from lorarlhf.kernels._common import force_backend

    _, device = backend_device
    hidden, weight, bias, targets, g_lp, g_ent = make_inputs(37, 19, 131, seed=13, device=device)
    results = []
    for backend in ("torch", backend_device[0]):
        with force_backend(backend):
            h, w, b = leaves(hidden, weight, bias)
            logp, ent = fused_linear_logprobs(
                h, w, targets, bias=b, temperature=0.8, return_entropy=True, softcap=CAP, _chunk_rows=5
            )
            torch.autograd.backward((logp, ent), (g_lp, g_ent))
            results.append((logp, ent, h.grad, w.grad, b.grad))
    # A few float32 rounding steps of each tensor's largest entry: the log-probs reach ~17, where one ulp is 1.9e-6,
    # and the sums run in a different order (one CPU differed by 1.1e-6 of the largest h.grad entry).
    for got, ref in zip(*results, strict=True):
        torch.testing.assert_close(got, ref, atol=1e-5 * ref.abs().max().item(), rtol=2e-6)


@pytest.mark.kernels
def test_a_huge_cap_is_no_cap():
    hidden, weight, bias, targets, _, _ = make_inputs(37, 19, 131, seed=14)
    capped = fused_linear_logprobs(hidden, weight, targets, bias=bias, temperature=0.7, softcap=1e6)
    torch.testing.assert_close(capped, fused_linear_logprobs(hidden, weight, targets, bias=bias, temperature=0.7))


@pytest.mark.parametrize("return_entropy", [False, True])
@pytest.mark.kernels
def test_soft_capped_gradcheck_float64(return_entropy):
    hidden, weight, bias, targets, _, _ = make_inputs(6, 4, 5, ignore_every=4, seed=15)
    h, w, b = leaves(hidden, weight, bias, dtype=torch.float64)

    def fn(h, w, b):
        return fused_linear_logprobs(
            h, w, targets, bias=b, temperature=0.7, return_entropy=return_entropy, softcap=1.5, _chunk_rows=4
        )

    assert torch.autograd.gradcheck(fn, (h, w, b))


@pytest.mark.parametrize("softcap", [0.0, -30.0, float("inf"), float("nan"), True, "30"])
def test_softcap_validation(softcap):
    hidden, weight, _, targets, _, _ = make_inputs(5, 8, 7)
    with pytest.raises(ValueError, match=r"softcap must be None \(no soft-capping\) or a finite number > 0, got"):
        fused_linear_logprobs(hidden, weight, targets, softcap=softcap)
