"""The Hydra: one frozen (4-bit) base model carrying a LoRA adapter per RLHF role.

Classic PPO-RLHF holds four models (actor, critic, reward, reference). Here the
base weights exist once; each role is a peft LoRA adapter on that same base,
plus a scalar head where the role needs one, and the reference is the base with
adapters off (or with the frozen `sft` adapter when an SFT stage ran). Switching
roles is a pointer change, done in exactly one place: `HydraModel.role`.

Forward passes stop at the hidden states. Token log-probs come from the hidden
states and the LM-head weight through `lorarlhf.kernels`, so the (tokens x vocab)
logits are never built.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import __version__ as peft_version
from peft import get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from lorarlhf.kernels import fused_linear_kl, fused_linear_logprobs
from lorarlhf.model.chat import ChatFormat, check_chat_template
from lorarlhf.model.dropout import disable_dropout
from lorarlhf.model.heads import HEAD_ROLES, ScalarHead, gather_last_token
from lorarlhf.model.loading import (
    DEMO_MODEL_DIR,
    check_quantize,
    check_source,
    load_base_model,
    load_tokenizer,
    logit_scale,
    logit_softcap,
    resolve_device,
    resolve_dtype,
)
from lorarlhf.model.lora import LoraSettings
from lorarlhf.model.memory import available_memory_bytes, parameter_bytes
from lorarlhf.model.quantization import quantization_coverage
from lorarlhf.model.quiet import peft_deprecations
from lorarlhf.model.saving import MANIFEST, load_hydra, save_hydra
from lorarlhf.model.tokenization import (
    TokenizedBatch,
    encode_prompt_response,
    encode_prompts_left_padded,
)
from lorarlhf.validation import check_int

ADAPTER_ROLES = ("sft", "actor", "critic", "reward")
ROLES = ("reference", *ADAPTER_ROLES)
DEFAULT_ROLES = ("actor", "critic", "reward")
CRITIC_MODES = ("separate", "shared")
MERGE_MEMORY_SHARE = 0.5
"""A 4-bit base on a CPU merges for sampling when its full-precision copy fits in this share of the memory
the OS reports available (see HydraModel.merge_sampling)."""


def check_role(role: str, available: tuple[str, ...]) -> None:
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; roles are {ROLES}")
    if role not in available:
        raise ValueError(f"role {role!r} has no adapter on this model; its roles are {available}")


class HydraModel(nn.Module):
    """One frozen base, a LoRA adapter per role, fp32 heads for the critic and reward roles.

    Build with `HydraModel.from_pretrained(...)` or reload a saved run with `HydraModel.load(dir)`.
    """

    def __init__(
        self,
        base_model: nn.Module,
        tokenizer,
        *,
        source: str,
        quantize: str | None,
        lora: LoraSettings,
        roles: tuple[str, ...] = DEFAULT_ROLES,
        gradient_checkpointing: bool = False,
        critic: str = "separate",
        chat_template: str = "auto",
    ):
        super().__init__()
        roles = _check_roles(roles)
        if critic not in CRITIC_MODES:
            raise ValueError(f"critic={critic!r} is not supported; choose one of {CRITIC_MODES}")
        if critic == "shared":  # the critic runs on the actor's adapter (joint Hydra): no adapter of its own
            if "actor" not in roles:
                raise ValueError("critic='shared' puts the value head on the actor adapter; roles must include 'actor'")
            roles = tuple(role for role in roles if role != "critic")
        self.critic_mode = critic
        self.source = source
        self.quantize = quantize
        self.lora = lora
        self.tokenizer = tokenizer
        self.chat_template = check_chat_template(chat_template)
        self.logit_scale = logit_scale(base_model.config)
        self.logit_softcap = logit_softcap(base_model.config)  # Gemma 2's final-logit cap, or None
        self.base_bytes = parameter_bytes(base_model.parameters())
        # Share of the decoder's matrix weights in 4-bit (0 unquantized), measured before LoRA adds its own.
        self.quantized_fraction = quantization_coverage(base_model).fraction
        if gradient_checkpointing:
            # Non-reentrant checkpointing: its context_fn lets the recomputation in backward run under
            # the role of the forward. It takes effect in training mode (call .train()), as in transformers.
            kwargs = {"use_reentrant": False, "context_fn": self._checkpoint_contexts}
            if hasattr(base_model, "activation_checkpointing_enable"):  # the name from transformers 5.2x on
                base_model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
            else:
                base_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        # No prepare_model_for_kbit_training: it upcasts the embeddings and LM head to fp32, which for a
        # 128k-vocab 8B model costs 2 GB on a 24 GB card; the frozen weights stay in the compute dtype.
        with peft_deprecations():  # peft reads a property transformers has deprecated; not the user's concern
            self.peft = get_peft_model(base_model, lora.peft_config(base_model), adapter_name=roles[0])
        for role in roles[1:]:
            self.peft.add_adapter(role, lora.peft_config(base_model))
        hidden_size = self.causal_lm.get_output_embeddings().weight.shape[1]
        self.heads = nn.ModuleDict({role: ScalarHead(hidden_size) for role in HEAD_ROLES})
        self.heads.to(self.device)
        self._adapter_groups: dict[str, list[nn.Parameter]] | None = None
        self._lora_layers = _lora_layers(self.peft)
        self._trainable_adapters()
        self._role, self._switched, self._merged = "reference", False, False
        self.merge_sampling: bool | None = None
        """Whether merged_for_sampling folds the adapter into a full-precision copy of the base weights: True,
        False, or None (the default) for a 4-bit base on a CPU only, when the copy fits in half the memory
        available. There a 4-bit matmul dequantizes its whole weight at every decoded token, which made the
        64.5M Llama's GRPO sampling take 7.8 s against 4.6 s on the fp32 base. On an unquantized base the
        merge did not measurably speed sampling up (CPU, 8 x 64 tokens, 3 interleaved runs: median 14.7 s
        merged, 17.1 s unmerged, spread +-2 s) and nearly doubled the marginal peak memory (+650 MiB against
        +350 MiB), so None leaves it unmerged."""
        self._apply_role("reference")
        self.eval()  # like a transformers model after from_pretrained; training code calls .train()

    # ----------------------------------------------------------------- construction

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | os.PathLike,
        *,
        quantize: str | None = "nf4",
        lora_r: int = 16,
        lora_alpha: float = 32,
        target_modules: str | list[str] = "all-linear",
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        lora_dropout: float = 0.0,
        roles: tuple[str, ...] = DEFAULT_ROLES,
        gradient_checkpointing: bool = False,
        critic: str = "separate",
        trust_remote_code: bool = False,
        chat_template: str = "auto",
    ) -> HydraModel:
        """Load a causal LM (hub id or local directory), freeze it, and put an adapter on it per role.

        quantize: "nf4" (4-bit NF4, double quant, via bitsandbytes) or None (keep `dtype`).
        device: None picks CUDA when available, else CPU. dtype: compute dtype; None picks
        bf16 on GPUs that have it, fp16 on older ones (T4), fp32 on CPU.
        roles: the adapter roles to create, from "sft", "actor", "critic", "reward".
        gradient_checkpointing: recompute activations in backward (in training mode, after `.train()`),
            each segment under the role it ran with, trading compute for activation memory.
        critic: "separate" (its own adapter + value head) or "shared" (the actor's adapter + value head).
        trust_remote_code: run the model repository's own Python code (off: only transformers' own models).
        chat_template: "auto" (the tokenizer's template when it has one), "never" (plain text) or a Jinja
            template string: how prompts and responses become tokens (lorarlhf.model.chat).
        Weights are read from safetensors only. The model starts in eval mode, as transformers models do.
        """
        quantize = check_quantize(quantize)
        check_chat_template(chat_template)
        source = check_source(name_or_path)
        lora = LoraSettings(r=lora_r, alpha=lora_alpha, dropout=lora_dropout, target_modules=target_modules)
        roles = _check_roles(roles)
        device = resolve_device(device)
        dtype = resolve_dtype(dtype, device)
        base = load_base_model(
            source, quantize=quantize, device=device, dtype=dtype, trust_remote_code=trust_remote_code
        )
        tokenizer = load_tokenizer(source, trust_remote_code=trust_remote_code)
        return cls(
            base,
            tokenizer,
            source=source,
            quantize=quantize,
            lora=lora,
            roles=roles,
            gradient_checkpointing=gradient_checkpointing,
            critic=critic,
            chat_template=chat_template,
        )

    @classmethod
    def load(
        cls,
        output_dir: str | os.PathLike,
        *,
        base: str | None = None,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        gradient_checkpointing: bool = False,
        trust_remote_code: bool = False,
    ) -> HydraModel:
        """Reload a run written by `save`; `base` overrides the recorded base model location.

        dtype None keeps the run's compute dtype on the same kind of device, else picks the device's default.
        Nothing is unpickled: adapters and heads are safetensors, the manifest JSON.
        """
        return load_hydra(
            cls,
            Path(output_dir),
            base=base,
            device=device,
            dtype=dtype,
            gradient_checkpointing=gradient_checkpointing,
            trust_remote_code=trust_remote_code,
        )

    def save(self, output_dir: str | os.PathLike) -> Path:
        """Adapters and heads as safetensors plus a JSON manifest; the base is referenced, not copied."""
        return save_hydra(self, Path(output_dir))

    def add_role(self, role: str) -> None:
        """Add a fresh adapter for `role` (e.g. "sft" before an SFT stage)."""
        if role not in ADAPTER_ROLES:
            raise ValueError(f"cannot add role {role!r}; adapter roles are {ADAPTER_ROLES}")
        if role in self.adapters:
            raise ValueError(f"role {role!r} already has an adapter")
        self.peft.add_adapter(role, self.lora.peft_config(self.causal_lm))
        self._adapter_groups = None
        self._lora_layers = _lora_layers(self.peft)
        self._trainable_adapters()
        self._switched = False
        self._apply_role(self._role)  # peft marks new adapters trainable; restore the role's own state

    @torch.no_grad()
    def is_trained(self, role: str) -> bool:
        """Whether `role`'s adapter has moved from its initialisation (peft starts every LoRA B at zero)."""
        if role not in self.adapters:
            return False
        return any(bool(p.any()) for n, p in self.peft.named_parameters() if ".lora_B." in n and f".{role}." in n)

    @torch.no_grad()
    def copy_adapter(self, source: str, target: str) -> None:
        """Set adapter `target`'s LoRA weights to a copy of `source`'s (the actor starting from sft)."""
        for role in (source, target):
            if role not in self.adapters:
                raise ValueError(f"role {role!r} has no adapter on this model; its adapters are {self.adapters}")
        weights = {}
        for name, param in self.peft.named_parameters():
            parts = name.split(".")
            if source in parts:
                weights[tuple(target if part == source else part for part in parts)] = param
        copied = 0
        for name, param in self.peft.named_parameters():
            parts = tuple(name.split("."))
            if target in parts and parts in weights:
                param.copy_(weights[parts])
                copied += 1
        if copied != len(self._adapter_parameters()[target]):
            raise RuntimeError(f"adapters {source!r} and {target!r} do not have the same layers")

    # ----------------------------------------------------------------- roles

    @property
    def causal_lm(self) -> nn.Module:
        """The transformers causal LM, with the LoRA layers injected in place."""
        return self.peft.base_model.model

    @property
    def device(self) -> torch.device:
        return self.causal_lm.get_output_embeddings().weight.device

    @property
    def adapters(self) -> tuple[str, ...]:
        return tuple(name for name in ADAPTER_ROLES if name in self.peft.peft_config)

    @property
    def roles(self) -> tuple[str, ...]:
        shared = ("critic",) if self.critic_mode == "shared" else ()
        return ("reference", *self.adapters, *shared)

    @property
    def active_role(self) -> str:
        return self._role

    def adapter_for(self, role: str) -> str | None:
        """The adapter a role runs with; None means the bare base."""
        if role == "reference":
            return "sft" if "sft" in self.adapters else None
        if role == "critic" and self.critic_mode == "shared":
            return "actor"
        return role

    @contextmanager
    def role(self, role: str) -> Iterator[HydraModel]:
        """Run the enclosed code as `role`, and restore the previous role however the block exits."""
        check_role(role, self.roles)
        previous = self._role
        try:
            self._apply_role(role)
            yield self
        finally:
            self._apply_role(previous)

    def _apply_role(self, role: str) -> None:
        """The only place adapters are switched.

        Every adapter and head keeps requires_grad=True whatever the role: only the active adapter
        takes part in a forward pass, so gradients reach it alone, and a loss built under one role can
        still be backpropagated after the context has switched back (PPO sums an actor loss and a
        critic loss). peft's set_adapter would freeze the others, and a parameter frozen after the
        graph was built silently gets no gradient. The reference never trains: its forward passes run
        without autograd.

        The switch writes the two fields each LoRA layer's forward reads (its active adapter and its
        disabled flag) on a cached list of layers. peft's own set_adapter / enable_adapter_layers walk
        every module of the model and reset requires_grad on every adapter weight, ~15 ms per switch
        on a 32-layer model; gradient checkpointing switches twice per layer in every backward.
        """
        if role == self._role and self._switched:
            return
        if self._merged:
            raise RuntimeError(f"cannot switch to role {role!r} while {self._role!r} is merged for sampling")
        adapter = self.adapter_for(role)
        for layer in self._lora_layers:
            layer._disable_adapters = adapter is None
            if adapter is not None:
                layer._active_adapter = [adapter]
        if adapter is not None:  # peft's own bookkeeping of the active adapter, kept in step
            self.peft.active_adapter = self.peft.base_model.active_adapter = adapter
        self._role = role
        self._switched = True

    @contextmanager
    def merged_for_sampling(self) -> Iterator[HydraModel]:
        """No-grad passes of the active role with its LoRA adapter folded into full-precision base weights:
        each adapted layer runs one matmul instead of three (base, A, B), and a 4-bit layer no longer
        dequantizes its weight at every call (see `merge_sampling` for when this happens).

        The merged weights are new tensors (W + scale * B @ A, W dequantized first on a 4-bit base) put in
        place of the base's, a 4-bit layer's by a plain Linear; the original weights and layers are put back
        however the block exits, so the base is bit-identical afterwards (an in-place merge and unmerge would
        round) and the adapters, and what save() writes, are never touched. The price is one full-precision
        copy of the adapted base weights while the block runs. The bare base (reference role), a pass that
        records gradients, or a model that should not merge runs unmerged.
        """
        adapter = self.adapter_for(self._role)
        layers = [  # the role's LoRA linears (a 4-bit Linear4bit is an nn.Linear too)
            layer
            for layer in self._lora_layers
            if adapter in getattr(layer, "lora_A", {}) and isinstance(layer.get_base_layer(), nn.Linear)
        ]
        if adapter is None or torch.is_grad_enabled() or not layers or not self._merges_for_sampling(layers):
            yield self
            return
        restore = []  # (lora layer, its 4-bit child layer, None) or (lora layer, base layer, original weight)
        compute_dtype = self.causal_lm.get_input_embeddings().weight.dtype  # what the hidden states are in
        try:
            for layer in layers:
                base = layer.get_base_layer()
                if _is_4bit(base):  # a plain Linear of the dequantized, merged weight stands in for it
                    weight = _dequantized(base, compute_dtype)
                    weight += layer.get_delta_weight(adapter).to(weight.dtype)
                    restore.append((layer, layer.base_layer, None))  # the layer's own child, put back as it was
                    layer.base_layer = _frozen_linear(weight, base.bias)
                else:
                    original = base.weight
                    merged = original.detach() + layer.get_delta_weight(adapter).to(original.dtype)
                    restore.append((layer, base, original))
                    base.weight = nn.Parameter(merged, requires_grad=False)
                layer._disable_adapters = True
            self._merged = True
            yield self
        finally:
            for layer, base, original in restore:
                if original is None:
                    layer.base_layer = base
                else:
                    base.weight = original
            self._merged = False
            self._switched = False
            self._apply_role(self._role)  # every layer's disabled flag back to the role's

    def _merges_for_sampling(self, layers: list[nn.Module]) -> bool:
        """merge_sampling, or, where it is None, whether this is a 4-bit base on a CPU whose merged copy
        (4 bytes a weight on the CPU) fits in half the memory the OS reports available."""
        if self.merge_sampling is not None:
            return self.merge_sampling
        if self.quantize is None or self.device.type != "cpu":
            return False
        bases = [layer.get_base_layer() for layer in layers]
        copy_bytes = 4 * sum(base.weight.quant_state.shape.numel() for base in bases if _is_4bit(base))
        available = available_memory_bytes()
        return available is not None and copy_bytes <= available * MERGE_MEMORY_SHARE

    def disable_dropout(self) -> None:
        """Set every dropout of the base and the adapters to 0, for good.

        Policy-gradient methods compare the policy's log-probs before and after an update (the PPO ratio)
        and against the reference: with dropout on, the two passes differ by noise and the first,
        on-policy ratio is not 1. The RL and DPO stages call this, as TRL's trainers do. Covers nn.Dropout
        modules (peft's lora_dropout too) and the float probabilities that functional dropout reads from
        modules and configs (lorarlhf.model.dropout).
        """
        disable_dropout(self)

    @contextmanager
    def train_mode(self) -> Iterator[HydraModel]:
        """Training mode (gradient checkpointing is active only then) for the block, eval mode after it."""
        self.train()
        try:
            yield self
        finally:
            self.eval()

    def _trainable_adapters(self) -> None:
        """All adapter weights and heads require grad, always (see _apply_role); peft freezes inactive ones."""
        for params in self._adapter_parameters().values():
            for param in params:
                param.requires_grad_(True)
        self.heads.requires_grad_(True)

    def _checkpoint_contexts(self):
        """(forward, recompute) contexts for a checkpointed segment: recompute as the forward's role.

        Backward runs after the role context has exited (and PPO backpropagates actor and critic
        losses together), so without this the recomputed activations would use the wrong adapter.
        """
        return nullcontext(), self.role(self._role)

    def _adapter_parameters(self) -> dict[str, list[nn.Parameter]]:
        """LoRA parameters grouped by adapter, read from peft's names (`...lora_A.<adapter>.weight`)."""
        if self._adapter_groups is not None:
            return self._adapter_groups
        groups: dict[str, list[nn.Parameter]] = {name: [] for name in self.adapters}
        for name, param in self.peft.named_parameters():
            parts = name.split(".")
            for i, part in enumerate(parts[:-1]):
                if part.startswith("lora_") and parts[i + 1] in groups:
                    groups[parts[i + 1]].append(param)
                    break
        self._adapter_groups = groups
        return groups

    def trainable_parameters(self, role: str) -> list[nn.Parameter]:
        """What an optimizer for `role` updates: its adapter's LoRA weights and its head."""
        check_role(role, self.roles)
        if role == "reference":
            return []
        params = list(self._adapter_parameters()[self.adapter_for(role)])
        if role in self.heads:
            params += list(self.heads[role].parameters())
        return params

    def memory_report(self) -> dict[str, int]:
        """Bytes of the shared base and of each role's own weights (adapter + head)."""
        report = {"base": self.base_bytes}
        for role in self.adapters:
            report[role] = parameter_bytes(self.trainable_parameters(role))
        if self.critic_mode == "shared":
            report["critic"] = parameter_bytes(self.heads["critic"].parameters())  # its adapter is the actor's
        return report

    # ----------------------------------------------------------------- forward passes

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, *, role: str | None = None):
        """Final-layer hidden states (B, T, H) as `role`; the LM head is never applied here."""
        with self._as(role):
            body = self.causal_lm.base_model  # the decoder stack without the LM head
            # Positions count real tokens only, so a left-padded row is encoded exactly like the same
            # row unpadded (rotary and absolute position embeddings alike), as generation does.
            position_ids = (attention_mask.long().cumsum(1) - 1).clamp(min=0)
            with torch.set_grad_enabled(torch.is_grad_enabled() and self._role != "reference"):
                output = body(
                    input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
                )
        return output.last_hidden_state

    def token_logprobs(
        self,
        batch: TokenizedBatch,
        *,
        role: str | None = None,
        temperature: float = 1.0,
        return_entropy: bool = False,
    ):
        """log p(token_t | tokens_<t) at every response position, 0 elsewhere: (B, T) float32.

        With return_entropy, also the entropy of the full next-token distribution there.
        """
        hidden = self.hidden_states(batch.input_ids, batch.attention_mask, role=role)  # (B, T, H)
        scored = batch.response_mask[:, 1:]  # (B, T-1): token t is predicted from position t-1
        lm_head = self.causal_lm.get_output_embeddings()
        result = fused_linear_logprobs(
            hidden[:, :-1][scored],  # (N, H), only the scored positions
            lm_head.weight,
            batch.input_ids[:, 1:][scored],  # (N,)
            bias=lm_head.bias,
            temperature=temperature / self.logit_scale,
            return_entropy=return_entropy,
            softcap=self.logit_softcap,
        )
        outputs = result if return_entropy else (result,)
        # Place the N values back at their (B, T) positions; position 0 is never predicted.
        placed = tuple(F.pad(_scatter(scored, values), (1, 0)) for values in outputs)
        return placed if return_entropy else placed[0]

    def kl_to_reference(self, batch: TokenizedBatch, *, role: str = "actor", temperature: float = 1.0):
        """Exact KL(role || reference) of the full next-token distributions at response positions: (B, T).

        Position t holds the KL of the distributions that predict token t (0 elsewhere), like
        `token_logprobs`. Differentiable w.r.t. the role's adapter; the reference side runs without autograd.
        """
        lm_head = self.causal_lm.get_output_embeddings()
        if lm_head.bias is not None:
            raise ValueError("kl_to_reference does not support an LM head with a bias; use token_logprobs + token_kl")
        scored = batch.response_mask[:, 1:]  # (B, T-1)
        hidden = self.hidden_states(batch.input_ids, batch.attention_mask, role=role)[:, :-1][scored]  # (N, H)
        ref_hidden = self.hidden_states(batch.input_ids, batch.attention_mask, role="reference")[:, :-1][scored]
        kl = fused_linear_kl(
            hidden, ref_hidden, lm_head.weight, temperature=temperature / self.logit_scale, softcap=self.logit_softcap
        )
        return F.pad(_scatter(scored, kl), (1, 0))

    def values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Critic values per token (B, T): the expected return after each prefix."""
        with self.role("critic"):
            hidden = self.hidden_states(input_ids, attention_mask)
            return self.heads["critic"](hidden)

    def rewards(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Reward per sequence (B,), read at each row's last real token."""
        with self.role("reward"):
            hidden = self.hidden_states(input_ids, attention_mask)
            return self.heads["reward"](gather_last_token(hidden, attention_mask))

    # ----------------------------------------------------------------- text in, text out

    @property
    def chat(self) -> ChatFormat:
        """The rendering rule of this model's tokenizer and chat_template: prompts and responses to ids."""
        key = (id(self.tokenizer), self.chat_template)
        if getattr(self, "_chat_key", None) != key:
            generation_config = getattr(self.causal_lm, "generation_config", None)
            self._chat, self._chat_key = ChatFormat(self.tokenizer, self.chat_template, generation_config), key
        return self._chat

    def encode(self, prompts: list, responses: list[str], *, max_length: int | None = None) -> TokenizedBatch:
        """Tokenize prompt/response pairs by the rule every method shares, on this model's device."""
        return encode_prompt_response(self.chat, prompts, responses, max_length=max_length).to(self.device)

    def score(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        """Reward-role score of each (prompt, response): (B,) float32."""
        batch = self.encode(prompts, responses)
        return self.rewards(batch.input_ids, batch.attention_mask)

    def sequence_logprobs(self, prompts: list[str], responses: list[str], *, role: str = "actor") -> torch.Tensor:
        """log p(response | prompt) under `role`, summed over response tokens (EOS included): (B,)."""
        batch = self.encode(prompts, responses)
        return self.token_logprobs(batch, role=role).sum(dim=1)

    @property
    def end_ids(self) -> tuple[int, ...]:
        """The token ids that end a response: the tokenizer's EOS, the generation_config's end ids and the
        chat template's end of turn."""
        return self.chat.end_ids

    @torch.no_grad()
    def generate(self, prompts: list, *, max_new_tokens: int = 64, role: str = "actor", **sampling) -> list[str]:
        """Complete each prompt (a string, or a list of messages) as `role`, rendered by `self.chat`.
        `sampling` goes to transformers' generate (do_sample, temperature, top_p, top_k, ...); without it
        the model's generation config applies."""
        check_int("max_new_tokens", max_new_tokens)
        input_ids, attention_mask = encode_prompts_left_padded(self.chat, prompts)
        modes = {module: module.training for module in self.modules()}
        self.eval()  # no dropout while sampling, and the KV cache stays on under gradient checkpointing
        try:
            with self.role(role), self.merged_for_sampling():
                output = self.causal_lm.generate(
                    input_ids=input_ids.to(self.device),
                    attention_mask=attention_mask.to(self.device),
                    max_new_tokens=max_new_tokens,
                    pad_token_id=self.tokenizer.pad_token_id,
                    eos_token_id=list(self.end_ids),
                    **sampling,
                )
        finally:
            for module, training in modes.items():
                module.training = training
        new = output[:, input_ids.shape[1] :]  # (B, R)
        ended = torch.isin(new, torch.tensor(self.end_ids, device=new.device)).cumsum(dim=1) > 0
        # The text stops before the end token, which may not be a special token the decoder skips.
        return self.tokenizer.batch_decode(
            new.masked_fill(ended, self.tokenizer.pad_token_id), skip_special_tokens=True
        )

    @contextmanager
    def _as(self, role: str | None):
        if role is None:
            yield
        else:
            with self.role(role):
                yield


def resolve_model(model, *, trust_remote_code: bool = False) -> HydraModel | str | os.PathLike:
    """A HydraModel as given; a saved run's directory reloaded with its trained adapters; "demo" as the bundled
    model's directory; any other hub id or local path checked and returned for loading."""
    if isinstance(model, HydraModel):
        return model
    if not isinstance(model, str | os.PathLike):
        raise TypeError(f'model must be a hub id, a local path, "demo" or a HydraModel, not {type(model).__name__}')
    if model == "demo":
        model = DEMO_MODEL_DIR
    if (Path(model) / MANIFEST).is_file():
        return HydraModel.load(model, trust_remote_code=trust_remote_code)
    return check_source(model)


def _lora_layers(peft_model) -> list[nn.Module]:
    """peft's tuner layers (one per adapted Linear), found once instead of on every switch."""
    layers = [m for m in peft_model.modules() if isinstance(m, BaseTunerLayer)]
    if not all(hasattr(m, "_active_adapter") and hasattr(m, "_disable_adapters") for m in layers):
        raise RuntimeError(f"peft {peft_version} tuner layers lack the adapter-state fields lorarlhf switches")
    return layers


def _is_4bit(layer: nn.Module) -> bool:
    """A bitsandbytes 4-bit layer: its weight carries the packed codes' quantization state."""
    return getattr(layer.weight, "quant_state", None) is not None


def _dequantized(layer: nn.Module, dtype: torch.dtype) -> torch.Tensor:
    """A 4-bit layer's (out, in) weight in full precision, as a new tensor of `dtype`."""
    from bitsandbytes.functional import dequantize_4bit

    return dequantize_4bit(layer.weight.data, layer.weight.quant_state).to(dtype)


def _frozen_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    """An nn.Linear computing x weightᵀ + bias, without gradients, on `weight`'s own storage."""
    out_features, in_features = weight.shape
    linear = nn.Linear(in_features, out_features, bias=False, device="meta")
    linear.weight = nn.Parameter(weight, requires_grad=False)
    if bias is not None:
        linear.bias = nn.Parameter(bias.detach().to(weight.dtype), requires_grad=False)
    return linear


def _scatter(mask: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Inverse of `tensor[mask]`: a zero tensor shaped like `mask` holding `values` where it is True."""
    return torch.zeros(mask.shape, dtype=values.dtype, device=values.device).masked_scatter(mask, values)


def _check_roles(roles) -> tuple[str, ...]:
    roles = (roles,) if isinstance(roles, str) else tuple(roles)
    unknown = [role for role in roles if role not in ADAPTER_ROLES]
    if unknown or not roles or len(set(roles)) != len(roles):
        raise ValueError(f"roles={roles!r} must be distinct names from {ADAPTER_ROLES}")
    return roles


__all__ = ["ADAPTER_ROLES", "DEFAULT_ROLES", "ROLES", "HydraModel"]
