"""The table of methods: what `align()` and the `lorarlhf` command know about each method, in one place.

An entry names the method's config class and trainer, the data its stage reads, the adapters it trains or
reads, and the stages that may run before it. Adding a method is: write its module in methods/ (a config
dataclass and a trainer), then add its entry here. Config and trainer are named as "module:attribute" and
imported on first use, so reading the table (the command line's help, say) loads no model code.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import import_module

DATA_KINDS = ("demonstrations", "pairs", "prompts", "feedback")
# The trainers' keyword for held-out data, by the kind of data they read (prompts have none).
HELD_OUT_KEYWORD = {"demonstrations": "eval_demos", "pairs": "eval_pairs", "feedback": "eval_feedback"}


@dataclass(frozen=True)
class Method:
    name: str
    """What align(method=...) and --method call it."""
    summary: str
    """One line for the command line's help."""
    config_path: str
    """"module:Class" of its config dataclass."""
    trainer_path: str
    """"module:function" of its trainer: trainer(hydra, data, config, *, on_step, progress, checkpoints, ...)."""
    data: str
    """What its own stage reads: "demonstrations", "pairs" (preference pairs), "feedback" (unpaired thumbs up /
    down; pairs are split into them) or "prompts" (it samples and needs a reward: reward_fn, or a reward-model
    stage first)."""
    roles: tuple[str, ...]
    """The adapters its stage trains or reads, in the order they are created."""
    before: tuple[str, ...] = ()
    """Stages that may run first: "sft" (with sft=True), "rm" (sampling methods given pairs, no reward_fn)."""

    @property
    def config(self) -> type:
        return resolve(self.config_path)

    @property
    def trainer(self):
        return resolve(self.trainer_path)

    @property
    def samples(self) -> bool:
        """Whether it samples responses during training (and so takes a reward_fn)."""
        return self.data == "prompts"

    @property
    def trains_actor(self) -> bool:
        return "actor" in self.roles


METHODS: dict[str, Method] = {
    method.name: method
    for method in (
        Method(
            "sft",
            "supervised fine-tuning on demonstrations (or the preferred answers of pairs)",
            "lorarlhf.methods.sft:SFTConfig",
            "lorarlhf.methods.sft:train_sft",
            data="demonstrations",
            roles=("sft", "actor"),
        ),
        Method(
            "rm",
            "a reward model (the reward adapter and head) on preference pairs",
            "lorarlhf.methods.reward:RewardConfig",
            "lorarlhf.methods.reward:train_reward_model",
            data="pairs",
            roles=("reward",),
        ),
        Method(
            "dpo",
            "DPO, IPO or CPL on preference pairs: no reward model, no sampling",
            "lorarlhf.methods.dpo:DPOConfig",
            "lorarlhf.methods.dpo:train_dpo",
            data="pairs",
            roles=("actor",),
            before=("sft",),
        ),
        Method(
            "kto",
            "KTO on unpaired thumbs up / down (or pairs split into them): no pairs needed, no sampling",
            "lorarlhf.methods.kto:KTOConfig",
            "lorarlhf.methods.kto:train_kto",
            data="feedback",
            roles=("actor",),
            before=("sft",),
        ),
        Method(
            "orpo",
            "ORPO on preference pairs: SFT and an odds-ratio penalty in one loss, no reference model",
            "lorarlhf.methods.orpo:ORPOConfig",
            "lorarlhf.methods.orpo:train_orpo",
            data="pairs",
            roles=("actor",),
        ),
        Method(
            "simpo",
            "SimPO on preference pairs: length-normalised likelihood as the reward, no reference model",
            "lorarlhf.methods.simpo:SimPOConfig",
            "lorarlhf.methods.simpo:train_simpo",
            data="pairs",
            roles=("actor",),
            before=("sft",),
        ),
        Method(
            "ppo",
            "PPO with a critic adapter, rewarded by the reward adapter or a reward_fn",
            "lorarlhf.methods.ppo:PPOConfig",
            "lorarlhf.methods.ppo:train_ppo",
            data="prompts",
            roles=("actor", "critic"),
            before=("sft", "rm"),
        ),
        Method(
            "grpo",
            "GRPO: no critic, each prompt's samples are each other's baseline",
            "lorarlhf.methods.grpo:GRPOConfig",
            "lorarlhf.methods.grpo:train_grpo",
            data="prompts",
            roles=("actor",),
            before=("sft", "rm"),
        ),
        Method(
            "rloo",
            "RLOO: REINFORCE, each sample's baseline is the mean reward of its prompt's other samples",
            "lorarlhf.methods.rloo:RLOOConfig",
            "lorarlhf.methods.rloo:train_rloo",
            data="prompts",
            roles=("actor",),
            before=("sft", "rm"),
        ),
        Method(
            "reinforce_pp",
            "REINFORCE++: per-token KL in the reward, advantages whitened over the batch, PPO clipping, no critic",
            "lorarlhf.methods.reinforce_pp:ReinforcePPConfig",
            "lorarlhf.methods.reinforce_pp:train_reinforce_pp",
            data="prompts",
            roles=("actor",),
            before=("sft", "rm"),
        ),
        Method(
            "online_dpo",
            "online DPO: the best and worst of each prompt's fresh samples, judged by the reward, form a DPO pair",
            "lorarlhf.methods.online_dpo:OnlineDPOConfig",
            "lorarlhf.methods.online_dpo:train_online_dpo",
            data="prompts",
            roles=("actor",),
            before=("sft", "rm"),
        ),
    )
}


def method_named(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"method={name!r} is not a method; choose one of {tuple(METHODS)}")
    return METHODS[name]


@dataclass(frozen=True)
class Stage:
    """One stage of a run: a method's trainer with its config."""

    method: Method
    config: object

    @property
    def name(self) -> str:
        return self.method.name


def stages_of(method: Method, config, *, reward_stage: bool) -> list[Stage]:
    """The run's stages in order: SFT first (when config.sft), then the reward model (when the method samples
    and must learn its reward), then the method itself."""
    stages = []
    if "sft" in method.before and config.sft:
        stages.append(Stage(METHODS["sft"], config.sft_stage_config()))
    if "rm" in method.before and reward_stage:
        stages.append(Stage(METHODS["rm"], config.reward_stage_config()))
    return [*stages, Stage(method, config)]


def roles_of(stages: list[Stage]) -> tuple[str, ...]:
    """Every adapter the stages train or read, each once: the SFT stage's, the method's, the reward stage's.

    That order is the order the adapters are created in, which decides their random initialisation."""
    *before, main = stages
    ordered = [s for s in before if s.name == "sft"] + [main] + [s for s in before if s.name != "sft"]
    return tuple(dict.fromkeys(role for stage in ordered for role in stage.method.roles))


def resolve(path: str):
    """The object a "module:attribute" path names (attribute may be dotted: Class.method)."""
    module, _, attribute = path.partition(":")
    found = import_module(module)
    for part in attribute.split("."):
        found = getattr(found, part)
    return found
