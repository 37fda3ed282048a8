"""Every compiled form of the Triton row kernels, and compiling them ahead of time for named GPUs (no GPU needed).

Triton compiles a kernel once per specialization: the argument types, the constexpr values, and the alignment
it reads off each pointer and integer at launch (tt.divisibility = 16). The launchers (`_stats_triton`,
`_dlogits_triton`, ... and the autograd code that calls them) decide which specializations exist, so they are
not listed here by hand: `launches()` runs the public functions over their whole option space on small CPU
tensors with the Triton backend forced and every kernel launch recorded instead of run, and packs each
launch's arguments with Triton's own launch-time binder, the code `JITFunction.run` uses on a GPU.
`compile_for` compiles one of them for a named architecture down to a cubin, with Triton's bundled ptxas.

The TRITON_INTERPRET=1 runs test what the kernels compute; only the compiler checks what a GPU would refuse
(types, layouts, operations an architecture lacks). tests/test_kernel_compile.py compiles `plan()`.
"""

from __future__ import annotations

import importlib
import inspect
import itertools
import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from ._common import FP_FUSION, force_backend, triton

# Compute capabilities compiled for: T4 (the free Colab GPU), A100, A10 / RTX 30xx, L4 / RTX 40xx, H100.
ARCHS = (75, 80, 86, 89, 90)

# The input dtypes the public functions are driven with. float64 is left out: it runs on the torch row ops.
DTYPES = (torch.float32, torch.bfloat16, torch.float16)

# Vocabulary sizes the public functions are driven with, one per kind of specialization the launchers produce.
VOCABS = (
    1040,  # like Llama 2's 32000: V % 16 == 0, so V and the row strides are marked divisible by 16; BLOCK_V = 1024
    1031,  # like GPT-2's 50257: odd, no divisibility; BLOCK_V = 1024, as for every LM head with V >= 1024
    7,  # a test-sized vocabulary: BLOCK_V = 8, fewer columns than a warp has lanes
)

# Rows driven through each call, one row per chunk: the chunk at row 0 has every row-sliced pointer (targets,
# lse, ...) 16-byte aligned, the chunk at row 1 none of them. Production chunks (55 rows for Qwen2, 262 for
# Llama 2) start at both kinds of offset, and at ones that align the int64 targets but not the float32 rows.
ROWS = 2
HIDDEN = 8

# The public functions' options, by keyword. Every public keyword-only argument must be here
# (tests/test_kernel_compile.py checks it), so a new option cannot bring a kernel variant nobody compiles.
OPTIONS: dict[str, dict[str, tuple]] = {
    "fused_linear_logprobs": {
        "bias": (False, True),  # True: a [V] bias tensor is passed
        "temperature": (0.7,),  # reaches the kernels only as a float (scale), which Triton never specializes
        "return_entropy": (False, True),
        "softcap": (None, 30.0),
    },
    "fused_linear_kl": {
        "temperature": (0.7,),
        "softcap": (None, 30.0),
    },
    "token_kl": {
        "estimator": ("k1", "k2", "k3"),
    },
}


@dataclass(frozen=True)
class Variant:
    """One compiled form of a kernel: the arguments of triton.compiler.ASTSource, as hashable tuples."""

    module: str  # e.g. "lorarlhf.kernels.logprobs"
    kernel: str  # e.g. "_stats_kernel"
    signature: tuple[tuple[str, str], ...]  # (argument, Triton type): "*fp32", "i32", "fp32", "constexpr"
    constexprs: tuple[tuple[tuple[int, ...], object], ...]  # (argument path, value)
    attrs: tuple[tuple[tuple[int, ...], tuple[tuple[str, int], ...]], ...]  # (argument path, ((attr, value),))

    @property
    def group(self) -> tuple:
        """The variant without its alignment: kernel, argument types, constexpr values."""
        return self.module, self.kernel, self.signature, self.constexprs

    @property
    def aligned(self) -> tuple[str, ...]:
        """The arguments Triton may assume divisible by 16 (bytes for a pointer)."""
        return tuple(self.signature[path[0]][0] for path, attr in self.attrs if attr)

    @property
    def name(self) -> str:
        """e.g. `_stats_kernel(WITH_ENTROPY=True, BLOCK_V=1024; divisible by 16: z_ptr, V)`, for messages."""
        values = ", ".join(f"{self.signature[path[0]][0]}={value}" for path, value in self.constexprs)
        return f"{self.kernel}({values}; divisible by 16: {', '.join(self.aligned) or 'none'})"

    def source(self) -> triton.compiler.ASTSource:
        kernel = getattr(importlib.import_module(self.module), self.kernel)
        attrs = {path: [list(attr) for attr in values] for path, values in self.attrs}
        return triton.compiler.ASTSource(jit_function(kernel), dict(self.signature), dict(self.constexprs), attrs)


def jit_function(kernel) -> triton.runtime.JITFunction:
    """The kernel as a JITFunction: under TRITON_INTERPRET=1, @triton.jit made an interpreter object instead."""
    return kernel if isinstance(kernel, triton.runtime.JITFunction) else triton.runtime.JITFunction(kernel.fn)


def compile_for(source: triton.compiler.ASTSource, arch: int) -> bytes:
    """The cubin for sm_<arch>; raises what Triton's compiler or ptxas refuses. Kept in Triton's cache
    (TRITON_CACHE_DIR, ~/.triton/cache by default), so a second compile of the same source is a lookup."""
    target = triton.backends.compiler.GPUTarget("cuda", arch, 32)
    compiled = triton.compile(source, target=target, options={"enable_fp_fusion": FP_FUSION})
    cubin = compiled.asm.get("cubin")
    if not cubin:
        raise RuntimeError(f"{source.name} for sm_{arch} produced no cubin")
    return cubin


def kernels() -> dict[tuple[str, str], object]:
    """Every @triton.jit kernel of the kernel modules, by (module, name)."""
    found = {}
    for module in _modules():
        for name, value in vars(module).items():
            if isinstance(value, triton.runtime.KernelInterface):
                found[(module.__name__, name)] = value
    return found


def launches(dtypes: tuple[torch.dtype, ...] = DTYPES) -> list[tuple[torch.dtype, Variant]]:
    """(input dtype, variant) of every kernel launch the public functions make, forward and backward, over
    OPTIONS x dtypes x VOCABS and every choice of trainable inputs and of outputs that receive a gradient."""
    found = []
    for dtype, vocab in itertools.product(dtypes, VOCABS):
        recorded: list[Variant] = []
        with _recording(recorded):
            for call in _calls(dtype, vocab):
                call()
        found += [(dtype, variant) for variant in recorded]
    return found


def plan(variants: set[Variant]) -> list[tuple[Variant, int]]:
    """(variant, arch) pairs to compile: every group (kernel, argument types, constexprs) for every arch.

    Alignment only decides how wide the loads and stores may be. So each group is compiled for every arch in
    its most aligned recorded form (the widest accesses: an even vocabulary's aligned chunks) and, for
    ARCHS[0] only, in its least aligned one (odd vocabulary, odd chunk offset), which is a compile of the
    same code with narrow accesses; the forms in between would only add compile time.
    """
    groups: dict[tuple, list[Variant]] = {}
    for variant in sorted(variants, key=lambda v: v.name):
        groups.setdefault(variant.group, []).append(variant)
    pairs = []
    for members in groups.values():
        most = max(members, key=lambda v: len(v.aligned))
        least = min(members, key=lambda v: len(v.aligned))
        pairs += [(most, arch) for arch in ARCHS]
        if least != most:
            pairs.append((least, ARCHS[0]))
    return pairs


def compile_all(pairs: list[tuple[Variant, int]], workers: int | None = None) -> dict[tuple[Variant, int], str]:
    """Compile every (variant, arch); returns the failures, each with the compiler's message.

    In this process for as long as Triton's cache has the cubins (a lookup each, so a second run takes a
    second or two); from the first one it lacks on, in a pool of `workers` processes (default: one per core).
    Processes, because Triton's compiler holds the GIL; spawned, because this one has torch and Triton loaded.
    """
    failures, hits, done = {}, [], 0
    previous = triton.knobs.compilation.listener
    triton.knobs.compilation.listener = lambda **event: hits.append(event["cache_hit"])  # called on success
    try:
        for pair in pairs:
            hits.clear()
            done += 1
            if (error := _try_compile(pair)) is not None:
                failures[pair] = error
            if hits != [True]:
                break
    finally:
        triton.knobs.compilation.listener = previous
    rest = pairs[done:]
    if rest:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers or os.cpu_count() or 1, mp_context=context) as pool:
            # a few at a time: ~2 s of compiling per round trip of ~1 ms
            errors = pool.map(_try_compile, rest, chunksize=4)
            failures |= {pair: error for pair, error in zip(rest, errors, strict=True) if error is not None}
    return failures


def _try_compile(pair: tuple[Variant, int]) -> str | None:
    variant, arch = pair
    try:
        compile_for(variant.source(), arch)
    except Exception as error:  # reported, with every other failure, by the caller
        return f"{type(error).__name__}: {error}"
    return None


# --------------------------------------------------------------------------- driving the public functions


def _modules():
    from . import linear_kl, logprobs, token_kl

    return (logprobs, linear_kl, token_kl)


def _public(name: str) -> Callable:
    from . import fused_linear_kl, fused_linear_logprobs, token_kl

    return {fn.__name__: fn for fn in (fused_linear_logprobs, fused_linear_kl, token_kl)}[name]


def keyword_options(name: str) -> set[str]:
    """The public keyword-only arguments of a public function: what OPTIONS[name] must cover."""
    parameters = inspect.signature(_public(name)).parameters.values()
    return {p.name for p in parameters if p.kind is p.KEYWORD_ONLY and not p.name.startswith("_")}


def _grid(name: str) -> Iterator[dict]:
    options = OPTIONS[name]
    for values in itertools.product(*options.values()):
        yield dict(zip(options, values, strict=True))


def _nonempty_subsets(items) -> list[tuple]:
    return [s for k in range(1, len(items) + 1) for s in itertools.combinations(items, k)]


def _calls(dtype: torch.dtype, vocab: int) -> Iterator[Callable[[], None]]:
    """Closures that each run one public call: without gradients, and once per choice of trainable inputs
    with a backward pass per choice of outputs that receive a gradient."""
    generator = torch.Generator().manual_seed(0)

    def tensor(*shape):
        return torch.randn(*shape, generator=generator).to(dtype)

    targets = torch.randint(vocab, (ROWS,), generator=generator)
    targets[-1] = -100  # an ignored row
    logprobs, linear_kl, token_kl = (_public(name) for name in OPTIONS)

    for options in _grid("fused_linear_logprobs"):
        inputs = {"hidden": tensor(ROWS, HIDDEN), "weight": tensor(vocab, HIDDEN)}
        if options["bias"]:
            inputs["bias"] = tensor(vocab)

        def call(t, options=options):
            kwargs = options | {"bias": t.get("bias"), "_chunk_rows": 1}
            return logprobs(t["hidden"], t["weight"], targets, **kwargs)

        yield from _passes(call, inputs, n_outputs=2 if options["return_entropy"] else 1)

    for options in _grid("fused_linear_kl"):
        inputs = {"hidden": tensor(ROWS, HIDDEN), "ref_hidden": tensor(ROWS, HIDDEN), "weight": tensor(vocab, HIDDEN)}

        def call(t, options=options):
            return linear_kl(t["hidden"], t["ref_hidden"], t["weight"], **options, _chunk_rows=1)

        yield from _passes(call, inputs, n_outputs=1)

    for options in _grid("token_kl"):
        inputs = {"logp": tensor(ROWS), "ref_logp": tensor(ROWS)}

        def call(t, options=options):
            return token_kl(t["logp"], t["ref_logp"], **options)

        yield from _passes(call, inputs, n_outputs=1)


def _passes(call, inputs: dict[str, torch.Tensor], n_outputs: int) -> Iterator[Callable[[], None]]:
    yield lambda: call(inputs)
    for trainable in _nonempty_subsets(list(inputs)):

        def run(trainable=trainable):
            leaves = {name: t.detach().requires_grad_(name in trainable) for name, t in inputs.items()}
            outputs = call(leaves)
            outputs = outputs if isinstance(outputs, tuple) else (outputs,)
            wrt = [leaves[name] for name in trainable]
            for upstream in _nonempty_subsets(range(n_outputs)):
                # The launches were recorded, not run, so the outputs hold garbage: only the paths taken matter.
                chosen = [outputs[i] for i in upstream]
                torch.autograd.grad(chosen, wrt, [torch.ones_like(o) for o in chosen], retain_graph=True)

        yield run


# --------------------------------------------------------------------------- recording launches


class _Recorder:
    """Stands in for a kernel: `kernel[grid](*args, **kwargs)` packs the arguments as a launch would, runs nothing."""

    def __init__(self, module: str, name: str, kernel, recorded: list[Variant]):
        self.module, self.name, self.recorded = module, name, recorded
        self.jit = jit_function(kernel)
        # Triton's alignment rules (16-byte pointers, integers divisible by 16) are the same for every CUDA
        # architecture, so one target's backend packs the arguments for all of them.
        self.backend = triton.compiler.compiler.make_backend(triton.backends.compiler.GPUTarget("cuda", ARCHS[0], 32))
        self.binder = triton.runtime.jit.create_function_from_signature(
            self.jit.signature, self.jit.params, self.backend
        )
        self.packed: dict[tuple, Variant] = {}  # by specialization: packing costs more than the rest of a launch

    def __getitem__(self, grid):
        return self.launch

    def launch(self, *args, **kwargs):
        # What JITFunction.run does before it compiles: bind, specialize, pack.
        bound, specialization, options = self.binder(*args, **kwargs)
        key = tuple(specialization)
        if key not in self.packed:
            _, signature, constexprs, attrs = self.jit._pack_args(self.backend, options, bound, specialization, options)
            self.packed[key] = Variant(
                module=self.module,
                kernel=self.name,
                signature=tuple(signature.items()),
                constexprs=tuple(sorted(constexprs.items())),
                attrs=tuple(sorted((path, tuple(tuple(a) for a in values)) for path, values in attrs.items())),
            )
        self.recorded.append(self.packed[key])


@contextmanager
def _recording(recorded: list[Variant]):
    """Within: every kernel launch of the kernel modules is recorded into `recorded`, not run."""
    found = kernels()
    modules = {m.__name__: m for m in _modules()}
    try:
        for (module, name), kernel in found.items():
            setattr(modules[module], name, _Recorder(module, name, kernel, recorded))
        with force_backend("triton"):
            yield
    finally:
        for (module, name), kernel in found.items():
            setattr(modules[module], name, kernel)
