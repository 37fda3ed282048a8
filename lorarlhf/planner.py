"""The memory planner: peak GPU memory of a run, per phase, from the model's config alone.

No weights are loaded (AutoConfig suffices), so a user learns before downloading 16 GB whether a run fits,
and align() can choose micro-batches that fit the card instead of finding out by running out of memory.

What a phase holds, in bytes:

    weights      the base once: 4-bit NF4 linear layers and MoE experts, all of them (two codes per byte, one
                 8-bit scale per 64 weights, one fp32 scale per 256 scales, code tables), embeddings, LM head,
                 routers and norms in the compute dtype; the parameters are counted on a weightless (meta-device)
                 copy of the architecture
    adapters     per role: LoRA A and B of every adapted linear layer, fp32, plus a scalar head where it has one
    training     per trainable role: its gradients (fp32) and AdamW's two moments (fp32)
    kv cache     generation: keys and values of every layer for every sequence at full length
    activations  the update: with gradient checkpointing one hidden state per layer and sequence position,
                 plus one layer recomputed in full; without it, every layer's intermediates (an MoE token's
                 MLP intermediates are those of its top-k experts and the shared ones)
    kernels      the fused log-prob kernels: a few float32 tiles of at most 32 MiB
    cuda         the CUDA context and allocator slack, a measured constant

Every estimate is a formula in these terms; the parts that can be checked without a GPU (weights, adapters,
optimizer state, KV cache) are tested exactly against real objects on the CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import nn

from lorarlhf.kernels import LOGITS_CHUNK_BYTES
from lorarlhf.methods.table import method_named
from lorarlhf.model.memory import available_memory_bytes
from lorarlhf.validation import check_int

GiB = 2**30
NF4_BLOCK = 64  # weights per first-level scale
NF4_SCALE_BLOCK = 256  # first-level scales per second-level (fp32) scale under double quantization
NF4_CODE_BYTES = 16 * 4  # the 16-entry NF4 code, fp32, per quantized layer
SCALE_CODE_BYTES = 256 * 4 + 4  # the 8-bit dynamic code of the scales, fp32, and the scales' offset
CUDA_CONTEXT_BYTES = int(0.5 * GiB)  # CUDA context + cuBLAS workspace + allocator rounding, measured on H100/4090
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
ADAM_STATES = 2  # exp_avg and exp_avg_sq
TRAINED_ROLES = {"sft": ("sft",)}
"""Where the adapters a method trains differ from its roles in the table of methods: SFT trains the sft
adapter, which the actor starts from."""
HEAD_ROLES = ("critic", "reward")


# Where each family's config keeps what the estimate needs: the first name present (and not None) wins. The
# names are those of transformers' config classes; "n_inner" (GPT-2) and "ffn_hidden_size" (Falcon) are None
# by default, meaning 4 x hidden, as those models build it.
CONFIG_FIELDS = {
    "vocab_size": ("vocab_size", "padded_vocab_size"),
    "hidden_size": ("hidden_size", "n_embd", "d_model"),
    "num_layers": ("num_hidden_layers", "n_layer", "num_layers", "n_layers"),
    "num_heads": ("num_attention_heads", "n_head", "num_heads", "n_heads"),
    "num_kv_heads": ("num_key_value_heads", "num_kv_heads", "n_head_kv", "multi_query_group_num"),
    "intermediate_size": ("intermediate_size", "ffn_dim", "n_inner", "ffn_hidden_size", "d_ff"),
    "tied_embeddings": ("tie_word_embeddings",),
}
MOE_FIELDS = {
    "num_experts": ("num_local_experts", "num_experts", "n_routed_experts"),
    "experts_per_token": ("num_experts_per_tok", "num_experts_per_token", "moe_topk"),
    "expert_intermediate_size": ("moe_intermediate_size", "expert_intermediate_size"),
    "shared_intermediate_size": ("shared_expert_intermediate_size",),
}
"""Where MoE configs keep their experts' counts and widths; a routed expert's width defaults to
intermediate_size (Mixtral, gpt-oss), DeepSeek's shared experts are n_shared_experts x moe_intermediate_size."""
FOUR_X_HIDDEN = ("n_inner", "ffn_hidden_size")  # None there means an MLP 4 x hidden wide
_MISSING = object()


def _experts_shape(config) -> dict[str, int]:
    """The MOE_FIELDS of `config`; none for a dense model (Shape's defaults, 0)."""

    def first(concept):
        return next((v for n in MOE_FIELDS[concept] if (v := getattr(config, n, None)) is not None), None)

    experts = first("num_experts") or 0
    if not experts:
        return {}
    width = first("expert_intermediate_size") or config_field(config, "intermediate_size")
    shared = first("shared_intermediate_size") or (getattr(config, "n_shared_experts", None) or 0) * width
    return dict(
        num_experts=experts,
        experts_per_token=first("experts_per_token") or 1,
        expert_intermediate_size=width,
        shared_intermediate_size=shared,
    )


def config_field(config, concept: str, default=_MISSING):
    """The value of `concept` (a key of CONFIG_FIELDS) in `config`, under whichever family name it has.

    Raises ValueError naming the concept, the names tried and the model_type when none holds a value and no
    default is given.
    """
    names = CONFIG_FIELDS[concept]
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    if concept == "intermediate_size" and any(hasattr(config, name) for name in FOUR_X_HIDDEN):
        return 4 * config_field(config, "hidden_size")
    if default is not _MISSING:
        return default
    model_type = getattr(config, "model_type", None) or type(config).__name__
    raise UnreadableConfig(
        f"model_type={model_type!r}: the config has no {concept.replace('_', ' ')} (looked for "
        f"{', '.join(names)}); the memory planner cannot size this architecture"
    )


class UnreadableConfig(ValueError):
    """A model config the planner cannot size: it lacks a field of every name the table knows."""


@dataclass(frozen=True)
class Layout:
    """The base's parameters as lorarlhf loads them, counted on a weightless (meta-device) copy of the model."""

    linear: tuple[tuple[int, int], ...]
    """(in, out) features of every Linear-like layer of the whole model but the LM head: what NF4 quantizes
    (lorarlhf.model.quantization.linear_layers)."""
    other: int
    """Entries of every other parameter (embeddings, LM head, norms, biases, MoE routers), kept in the compute
    dtype; a tied LM head counted once."""
    experts: tuple[tuple[int, int], ...] = ()
    """(in, out) of every MoE expert's every projection (E per projection and layer): NF4 quantizes each as a
    matrix of its own (lorarlhf.model.experts), LoRA leaves them."""
    adapted: tuple[tuple[int, int], ...] | None = None
    """(in, out) of the layers an "all-linear" LoRA adapts when they are fewer than `linear` (an MoE model: no
    router; lorarlhf.model.experts.lora_targets); None: all of `linear`."""
    unquantized_matrices: int = 0
    """Entries of the decoder's other matrix weights (routers, convolutions; not embeddings or the LM head),
    which NF4 leaves in the compute dtype."""

    @property
    def nf4_fraction(self) -> float:
        """The share of the decoder's matrix weights NF4 holds in 4-bit, as HydraModel.quantized_fraction
        measures it after loading."""
        quantized = sum(i * o for i, o in self.linear + self.experts)
        total = quantized + self.unquantized_matrices
        return quantized / total if total else 0.0

    @classmethod
    def of_config(cls, config) -> Layout | None:
        """The layout of the causal LM transformers builds from `config`; None when it cannot build one (an
        architecture that needs the repository's own code, a config that is not a causal LM's)."""
        import torch
        from transformers import AutoModelForCausalLM

        from lorarlhf.model.experts import expert_weights, is_experts_module, lora_targets
        from lorarlhf.model.quantization import linear_layers

        try:
            with torch.device("meta"):  # shapes only: no memory, milliseconds for an 8B model
                model = AutoModelForCausalLM.from_config(config)
        except (ValueError, KeyError, TypeError, AttributeError, ImportError):
            return None
        layers = [module for _, module in linear_layers(model)]
        weights = {id(module.weight) for module in layers}
        experts = []
        for module in model.modules():
            if is_experts_module(module):
                weights |= {id(p) for p in module.parameters(recurse=False) if p.dim() == 3}  # biases stay in other
                for _, weight, _ in expert_weights(module):  # (E, out, in)
                    experts += [(weight.shape[2], weight.shape[1])] * weight.shape[0]
        other = sum(p.numel() for p in model.parameters() if id(p) not in weights)
        head = model.get_output_embeddings()
        left = {  # matrices outside the quantized layers, embeddings and the head: routers, convolutions
            id(p): p.numel()
            for module in model.modules()
            if module is not head and not isinstance(module, nn.Embedding)
            for p in module.parameters(recurse=False)
            if p.dim() >= 2 and id(p) not in weights
        }
        adapted = [_in_out(model.get_submodule(name)) for name in lora_targets(model)]
        linear = tuple(_in_out(module) for module in layers)
        return cls(
            linear=linear,
            other=other,
            experts=tuple(experts),
            adapted=None if len(adapted) == len(linear) else tuple(adapted),
            unquantized_matrices=sum(left.values()),
        )

    @property
    def adapted_layers(self) -> tuple[tuple[int, int], ...]:
        return self.linear if self.adapted is None else self.adapted


def _in_out(layer) -> tuple[int, int]:
    rows, cols = layer.weight.shape
    return (cols, rows) if isinstance(layer, nn.Linear) else (rows, cols)  # nn.Linear (out, in); Conv1D (in, out)


@dataclass
class Shape:
    """What the estimate needs from a causal LM's config."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    tied_embeddings: bool
    layout: Layout | None = None
    """The model's real parameters when transformers can build its architecture; None: the Llama-style
    formulas below (7 linear layers and 2 norms per decoder layer) estimate them."""
    num_experts: int = 0
    """Routed experts per MoE layer (0: a dense model)."""
    experts_per_token: int = 0
    """Routed experts each token passes through (top-k)."""
    expert_intermediate_size: int = 0
    """Width of one routed expert's MLP."""
    shared_intermediate_size: int = 0
    """Width of the shared experts every token also passes through (Qwen2-MoE, DeepSeek), all together."""

    @classmethod
    def from_config(cls, config) -> Shape:
        """Read a config of any family (CONFIG_FIELDS); a field it lacks raises ValueError naming it."""
        text = getattr(config, "text_config", None) or config  # multimodal configs nest the language model's
        heads = config_field(text, "num_heads")
        hidden = config_field(text, "hidden_size")
        kv_heads = config_field(text, "num_kv_heads", heads)
        if getattr(text, "multi_query", False) and not getattr(text, "new_decoder_architecture", False):
            kv_heads = 1  # Falcon-7B and GPT-BigCode: one key/value head (Falcon's num_kv_heads applies only to
            # its new decoder architecture)
        return cls(
            vocab_size=config_field(text, "vocab_size"),
            hidden_size=hidden,
            intermediate_size=config_field(text, "intermediate_size"),
            num_layers=config_field(text, "num_layers"),
            num_heads=heads,
            num_kv_heads=kv_heads,
            head_dim=getattr(text, "head_dim", None) or hidden // heads,
            tied_embeddings=bool(config_field(config, "tied_embeddings", False)),
            layout=Layout.of_config(config),
            **_experts_shape(text),
        )

    @property
    def active_intermediate_size(self) -> int:
        """MLP width one token passes through: a dense model's MLP, or an MoE's top-k routed experts and its
        shared experts (Mixtral-8x7B 2 x 14336, Qwen3-30B-A3B 8 x 768)."""
        if not self.num_experts:
            return self.intermediate_size
        return self.experts_per_token * self.expert_intermediate_size + self.shared_intermediate_size

    def expert_layers(self) -> list[tuple[int, int]]:
        """(in, out) of every expert matrix of one decoder layer, for the formulas (gated experts, as Mixtral)."""
        h, inter = self.hidden_size, self.expert_intermediate_size
        return [(h, 2 * inter), (inter, h)] * self.num_experts

    def linear_layers(self) -> list[tuple[int, int]]:
        """(in, out) features of every linear layer of one decoder layer (Llama-style attention and MLP)."""
        h, q, kv, inter = (
            self.hidden_size,
            self.num_heads * self.head_dim,
            self.num_kv_heads * self.head_dim,
            self.intermediate_size,
        )
        if self.num_experts:  # an MoE layer: attention, shared experts (gated); the router stays in `other`
            shared = self.shared_intermediate_size
            mlp = [(h, shared), (h, shared), (shared, h)] if shared else []
            return [(h, q), (h, kv), (h, kv), (q, h), *mlp]
        return [(h, q), (h, kv), (h, kv), (q, h), (h, inter), (h, inter), (inter, h)]


def nf4_bytes(n: int) -> int:
    """Bytes of one linear weight of n entries in NF4 with double quantization, quantization state included."""
    blocks = math.ceil(n / NF4_BLOCK)
    return math.ceil(n / 2) + blocks + 4 * math.ceil(blocks / NF4_SCALE_BLOCK) + NF4_CODE_BYTES + SCALE_CODE_BYTES


def weight_bytes(shape: Shape, *, quantize: str | None, dtype_bytes: int) -> int:
    """The base model's weights: linear layers and MoE experts (NF4 or the compute dtype: all experts, not only the
    active ones, are held), embeddings, LM head, norms."""
    if shape.layout is not None:
        linear = [i * o for i, o in shape.layout.linear + shape.layout.experts]
        layers = sum(nf4_bytes(n) for n in linear) if quantize == "nf4" else sum(linear) * dtype_bytes
        return layers + shape.layout.other * dtype_bytes
    linear = [i * o for i, o in shape.linear_layers() + shape.expert_layers()] * shape.num_layers
    layers = sum(nf4_bytes(n) for n in linear) if quantize == "nf4" else sum(linear) * dtype_bytes
    embeddings = shape.vocab_size * shape.hidden_size * dtype_bytes * (1 if shape.tied_embeddings else 2)
    norms = (2 * shape.num_layers + 1) * shape.hidden_size * dtype_bytes
    return layers + embeddings + norms


def adapter_bytes(shape: Shape, *, lora_r: int, role: str) -> int:
    """One role's LoRA adapter on every linear layer (fp32) but an MoE model's routers and experts
    (lorarlhf.model.experts.lora_targets), plus its scalar head (weight and bias)."""
    if shape.layout is not None:
        params = lora_r * sum(i + o for i, o in shape.layout.adapted_layers)
    else:
        params = lora_r * sum(i + o for i, o in shape.linear_layers()) * shape.num_layers
    if role in HEAD_ROLES:
        params += shape.hidden_size + 1
    return 4 * params


def kv_cache_bytes(shape: Shape, *, sequences: int, tokens: int, dtype_bytes: int) -> int:
    """Keys and values of every layer for `sequences` sequences of `tokens` tokens."""
    return 2 * shape.num_layers * sequences * tokens * shape.num_kv_heads * shape.head_dim * dtype_bytes


def activation_bytes(shape: Shape, *, sequences: int, tokens: int, dtype_bytes: int, checkpointing: bool) -> int:
    """Activations an update keeps for backward: with checkpointing, every layer's input plus one layer in
    full; without, every layer in full (attention projections, MLP intermediates, norms; flash attention)."""
    h, inter = shape.hidden_size, shape.active_intermediate_size  # an MoE token passes through its top-k experts
    q, kv = shape.num_heads * shape.head_dim, shape.num_kv_heads * shape.head_dim
    per_layer = sequences * tokens * (4 * h + q + 2 * kv + q + 3 * inter) * dtype_bytes
    if checkpointing:
        return shape.num_layers * sequences * tokens * h * dtype_bytes + per_layer
    return shape.num_layers * per_layer


def kernel_bytes(shape: Shape) -> int:
    """The fused kernels' tiles: a float32 logits tile and its temporaries, each within the chunk budget."""
    tile = min(LOGITS_CHUNK_BYTES, max(1, LOGITS_CHUNK_BYTES // (shape.vocab_size * 4)) * shape.vocab_size * 4)
    return 3 * tile


@dataclass
class MemoryPlan:
    """A run's estimated peak memory per phase, and the micro-batches that fit the card."""

    model: str
    method: str
    items: dict[str, int]
    """Bytes of what every phase holds (weights, adapters, optimizer state, ...)."""
    phases: dict[str, int]
    """Peak bytes of each phase: generation, scoring (no-grad passes), update."""
    batch_size: int
    micro_batch: int
    """Sequences per forward/backward of the update that fit (the rest by gradient accumulation)."""
    generation_batch: int
    """Sequences sampled at once that fit."""
    gpu_memory_gb: float | None
    fits: bool
    notes: list[str] = field(default_factory=list)

    @property
    def peak_gb(self) -> float:
        return max(self.phases.values()) / GiB

    @property
    def grad_accumulation(self) -> int:
        return max(1, math.ceil(self.batch_size / self.micro_batch))

    def __str__(self) -> str:
        lines = [f"memory plan: {self.model}, method={self.method}, batch {self.batch_size}"]
        lines.append(f"  {'item':<34}{'GiB':>9}")
        lines += [f"  {name:<34}{size / GiB:>9.3f}" for name, size in self.items.items()]
        lines.append(f"  {'phase peak':<34}{'GiB':>9}")
        lines += [f"  {name:<34}{size / GiB:>9.3f}" for name, size in self.phases.items()]
        if self.gpu_memory_gb is None:
            lines.append(f"  peak {self.peak_gb:.2f} GiB (no card size given: pass --gpu-memory-gb to check a fit)")
        else:
            verdict = "fits" if self.fits else "does NOT fit"
            lines.append(f"  peak {self.peak_gb:.2f} GiB on a {self.gpu_memory_gb:g} GB card: {verdict}")
        lines.append(
            f"  recommended: micro-batch {self.micro_batch} (grad_accumulation={self.grad_accumulation}), "
            f"generation batch {self.generation_batch}"
        )
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def plan(
    model,
    *,
    method: str = "ppo",
    batch_size: int = 8,
    max_length: int = 512,
    max_new_tokens: int = 64,
    group_size: int | None = None,
    gpu_memory_gb: float | None = None,
    lora_r: int = 16,
    quantize: str | None = "nf4",
    dtype: str = "bfloat16",
    gradient_checkpointing: bool = True,
    reward_model: bool = True,
    safety_margin: float = 0.1,
) -> MemoryPlan:
    """Estimate a run's peak GPU memory per phase from `model`'s config, and the micro-batches that fit.

    model: a hub id or local directory (only config.json is read), or a transformers config.
    gpu_memory_gb: the card's memory; the micro-batch is the largest that keeps every phase within it, less
    `safety_margin`. reward_model: for the sampling methods, whether a reward adapter scores the rollouts
    (False: a reward function). group_size: responses sampled per prompt (GRPO, RLOO, online DPO...: batch_size x
    group_size sequences); None is the method's default; PPO samples one.
    """
    entry = method_named(method)  # raises, naming the methods there are
    if not entry.samples:
        group_size = 1
    elif group_size is None or not hasattr(entry.config, "group_size"):  # PPO samples one response per prompt
        group_size = entry.config().samples_per_prompt
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype={dtype!r} is not supported; choose one of {tuple(DTYPE_BYTES)}")
    for name, value in (("batch_size", batch_size), ("max_length", max_length), ("lora_r", lora_r)):
        check_int(name, value)
    config, name = _config_of(model)
    shape = Shape.from_config(config)
    width = DTYPE_BYTES[dtype]
    trainable = TRAINED_ROLES.get(method, entry.roles)
    rl = entry.samples  # it samples: a generation phase, a KV cache, and no-grad scoring passes
    roles = trainable + (("reward",) if rl and reward_model and "reward" not in trainable else ())

    items = {"base weights": weight_bytes(shape, quantize=quantize, dtype_bytes=width)}
    for role in roles:
        items[f"{role} adapter"] = adapter_bytes(shape, lora_r=lora_r, role=role)
    train_bytes = sum(adapter_bytes(shape, lora_r=lora_r, role=r) for r in trainable) * (1 + ADAM_STATES)
    items["gradients + AdamW state"] = train_bytes
    items["fused-kernel tiles"] = kernel_bytes(shape)
    items["CUDA context"] = CUDA_CONTEXT_BYTES
    fixed = sum(items.values())

    # group_size is the samples per prompt of a sampling method (1 for PPO); a pair is two sequences.
    sequences = batch_size * (group_size if rl else 1) * (2 if entry.data == "pairs" else 1)

    def update(micro: int) -> int:
        return fixed + activation_bytes(
            shape, sequences=micro, tokens=max_length, dtype_bytes=width, checkpointing=gradient_checkpointing
        )

    def generation(batch: int) -> int:
        return fixed + kv_cache_bytes(shape, sequences=batch, tokens=max_length, dtype_bytes=width)

    budget = None if gpu_memory_gb is None else gpu_memory_gb * 1e9 * (1 - safety_margin)
    micro = _largest_fitting(sequences, update, budget)
    generation_batch = _largest_fitting(sequences, generation, budget) if rl else 0
    phases = {"update": update(micro)}
    if rl:
        phases["generation"] = generation(generation_batch)
        phases["scoring (no-grad passes)"] = fixed + micro * max_length * shape.hidden_size * width * 2
        items["KV cache (generation batch)"] = kv_cache_bytes(
            shape, sequences=generation_batch, tokens=max_length, dtype_bytes=width
        )
    items["activations (micro-batch)"] = phases["update"] - fixed
    fits = budget is None or max(phases.values()) <= budget
    notes = []
    if not fits:
        notes.append(
            "even one sequence per micro-batch does not fit: lower max_length, use quantize='nf4' or a smaller model"
        )
    if shape.layout is None:
        notes.append(
            "transformers could not build this architecture from its config (custom code?): weights and adapters "
            "are Llama-style estimates (gated MLP, 2 norms per layer), up to ~40% high for a 2-matrix MLP"
        )
    if quantize == "nf4" and shape.layout is not None:
        from lorarlhf.model.quantization import COVERAGE_WARNING  # the loader's bar, where it warns too

        share = shape.layout.nf4_fraction
        notes.append(f"NF4 holds {100 * share:.1f}% of the decoder's matrix weights in 4-bit")
        if share < COVERAGE_WARNING:
            notes.append("under 90% of the decoder is 4-bit: the other matrices stay in the compute dtype")
    if entry.data == "pairs":
        notes.append("a pair is two sequences (chosen and rejected): batch_size pairs are 2 x batch_size sequences")
    return MemoryPlan(
        model=name,
        method=method,
        items=items,
        phases=phases,
        batch_size=sequences,
        micro_batch=micro,
        generation_batch=generation_batch,
        gpu_memory_gb=gpu_memory_gb,
        fits=fits,
        notes=notes,
    )


def _largest_fitting(total: int, peak, budget: float | None) -> int:
    """The largest divisor-friendly micro-batch (total, total/2, ... 1) whose peak is within the budget."""
    size = total
    while budget is not None and size > 1 and peak(size) > budget:
        size = math.ceil(size / 2)
    return size


def _config_of(model):
    if hasattr(model, "vocab_size") or hasattr(model, "text_config"):
        return model, getattr(model, "_name_or_path", "") or type(model).__name__
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model), str(model)


CPU_CHECKPOINT_SAVING_BYTES = 256 * 2**20
"""A CPU run keeps gradient checkpointing when it saves more than this much of the update's memory."""
CPU_MEMORY_MARGIN = 0.25
"""Share of the machine's available memory a CPU run leaves to everything else when it drops checkpointing."""
CPU_NF4_NOTE = (
    "quantize=None on a CPU: NF4 would approximate the base's weights to save some RAM (a 75M-parameter Llama's "
    "GRPO step peaked at 466 MiB in NF4 against 588 MiB in fp32); pass quantize='nf4' to quantize anyway"
)


@dataclass
class CpuSettings:
    """What a CPU run uses where the user left the choice to lorarlhf, and why (`notes`, for the log)."""

    quantize: str | None
    gradient_checkpointing: bool
    notes: list[str] = field(default_factory=list)


def cpu_settings(
    model,
    *,
    method: str,
    explicit: set[str] | frozenset[str] = frozenset(),
    quantize: str | None = "nf4",
    gradient_checkpointing: bool = True,
    memory_bytes: int | None = None,
    **sizes,
) -> CpuSettings:
    """The quantization and gradient checkpointing of a run on a CPU.

    On a GPU the defaults (NF4, checkpointing) buy memory for time. On a CPU NF4 buys a little RAM for
    approximated base weights (CPU_NF4_NOTE), so it is left off unless the user set it (`explicit`: the names of
    the options they gave). Checkpointing stays on when it saves more than CPU_CHECKPOINT_SAVING_BYTES of the
    update's memory, as it does wherever activations outgrow the model (a 75M-parameter Llama's DPO step: 1.4 GiB
    planned without, 0.7 GiB with), or when the update without it would not fit in `memory_bytes` (default: the
    memory the OS reports available) less CPU_MEMORY_MARGIN. Otherwise, for a small model or short sequences, its
    recomputation (~13% of a GRPO step) buys too little and it is turned off.
    `sizes`: batch_size, max_length, max_new_tokens, group_size, lora_r, reward_model, as for plan().
    """
    notes = []
    if quantize == "nf4" and "quantize" not in explicit:
        quantize = None
        notes.append(CPU_NF4_NOTE)
    if gradient_checkpointing and "gradient_checkpointing" not in explicit:

        def update_need(checkpointing: bool) -> int:
            planned = plan(
                model, method=method, quantize=quantize, dtype="float32", gradient_checkpointing=checkpointing,
                **sizes,
            )  # fmt: skip
            return max(planned.phases.values()) - CUDA_CONTEXT_BYTES

        need = update_need(False)
        saving = need - update_need(True)
        memory = available_memory_bytes() if memory_bytes is None else memory_bytes
        fits = memory is not None and need <= memory * (1 - CPU_MEMORY_MARGIN)
        shown = "unknown" if memory is None else f"{memory / GiB:.1f} GiB"
        if fits and saving <= CPU_CHECKPOINT_SAVING_BYTES:
            gradient_checkpointing = False
            notes.append(
                f"gradient_checkpointing=False on a CPU: it would save only ~{saving / GiB:.2f} GiB of the update's "
                f"~{need / GiB:.2f} GiB for ~13% of each step, and {shown} is available"
            )
        elif not fits:
            notes.append(
                f"gradient_checkpointing stays on: without it the update needs ~{need / GiB:.2f} GiB, more than "
                f"{100 * (1 - CPU_MEMORY_MARGIN):.0f}% of the memory available ({shown})"
            )
        else:
            notes.append(
                f"gradient_checkpointing stays on: it saves ~{saving / GiB:.2f} GiB of the update's "
                f"~{need / GiB:.2f} GiB; pass gradient_checkpointing=False to trade that memory for ~13% of each step"
            )
    return CpuSettings(quantize=quantize, gradient_checkpointing=gradient_checkpointing, notes=notes)


def settle_cpu_settings(run_config, method: str, model, *, explicit: set[str]) -> CpuSettings:
    """cpu_settings for a run's config (a method's config dataclass), written back into it: its quantize and
    gradient_checkpointing become what a CPU run should use; `explicit` names the options the user gave."""
    chosen = cpu_settings(
        model,
        method=method,
        explicit=explicit,
        quantize=run_config.quantize,
        gradient_checkpointing=run_config.gradient_checkpointing,
        batch_size=run_config.batch_size,
        max_length=run_config.max_length,
        max_new_tokens=getattr(run_config, "max_new_tokens", 64),
        group_size=getattr(run_config, "samples_per_prompt", 1),
        lora_r=run_config.lora_r,
    )
    run_config.quantize, run_config.gradient_checkpointing = chosen.quantize, chosen.gradient_checkpointing
    return chosen
