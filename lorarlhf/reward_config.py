"""Options of the reward-model stage (see reward_trainer.py)."""

from __future__ import annotations

from dataclasses import dataclass

from lorarlhf.config import CommonConfig, _is_number

AGGREGATES = ("majority", "bradley_terry")
OBJECTIVES = ("pairwise", "listwise")
UTILITIES = ("log_sigmoid", "prompt_aware")


@dataclass
class RewardConfig(CommonConfig):
    objective: str = "pairwise"
    """"pairwise": Bradley-Terry on every pair. "listwise": Plackett-Luce on each record's full ranking
    (rankings and ratings; a plain pair is a ranking of two)."""
    utility: str = "log_sigmoid"
    """"log_sigmoid": the usual Bradley-Terry utility for every prompt. "prompt_aware" (Song et al. 2023):
    a linear utility on bounded rewards for pairs whose record says utility "closed", against reward
    collapse; log-sigmoid for the rest. Pairwise objective only."""
    center_coef: float = 0.0
    """Weight of the reward-centering penalty (r_c + r_r)^2 (Eisenstein et al. 2023 use 0.01); 0 disables."""
    aggregate: str = "majority"
    """How several annotators' votes on one pair become a preference: "majority" or "bradley_terry"."""
    weight_rankings: bool = False
    """Weight each ranking's K(K-1)/2 pairs by 1/C(K,2), as InstructGPT does, so big rankings do not dominate."""
    score_margin: bool = False
    """Use the rating gap of rated responses as the Bradley-Terry margin."""
    ece_bins: int = 10
    """Bins of the expected calibration error of sigmoid(r_c - r_r)."""

    def __post_init__(self):
        super().__post_init__()
        for name, allowed in (("objective", OBJECTIVES), ("utility", UTILITIES), ("aggregate", AGGREGATES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} is not supported; choose one of {allowed}")
        if self.utility == "prompt_aware" and self.objective != "pairwise":
            raise ValueError("utility='prompt_aware' works with objective='pairwise' only")
        if not _is_number(self.center_coef) or self.center_coef < 0:
            raise ValueError(f"center_coef={self.center_coef!r} must be >= 0")
        if isinstance(self.ece_bins, bool) or not isinstance(self.ece_bins, int) or self.ece_bins < 1:
            raise ValueError(f"ece_bins={self.ece_bins!r} must be a positive integer")
        for name in ("weight_rankings", "score_margin"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}={getattr(self, name)!r} must be True or False")
