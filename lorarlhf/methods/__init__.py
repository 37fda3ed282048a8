"""One module per training method: its config (a dataclass) and its trainer, reading like the paper."""
