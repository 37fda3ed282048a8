"""The machinery every training stage shares: the supervised and RL loops, rollouts, rewards, losses,
checkpoints and resume, data parallelism, and the options every method has.

Knows the Hydra (lorarlhf.model) but no method: methods/ is built on it.
"""
