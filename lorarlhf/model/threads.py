"""CPU threads that suit the model: one thread for a small model, PyTorch's default otherwise.

A small model's matmuls are a few microseconds of work each, less than waking and joining a second thread
costs, so extra threads only add synchronisation, and on a busy machine they queue behind other work. On a
2-core machine with other load, ten DPO steps of the bundled demo model (0.1M parameters) took 55 s with two
threads and 9.5 s with one. Below `SMALL_MODEL_PARAMETERS` (10M: every matrix is at most ~256 wide) a CPU
run therefore uses torch.set_num_threads(1). Larger models keep PyTorch's default, and so does every GPU run.

The user's choice always wins: OMP_NUM_THREADS or MKL_NUM_THREADS in the environment, a thread count
already set with torch.set_num_threads (one that is not PyTorch's default for this machine), or
LORARLHF_CPU_THREADS (a number, or "default" to keep PyTorch's choice) leave the rule out.
"""

from __future__ import annotations

import contextlib
import logging
import os

import torch

log = logging.getLogger("lorarlhf.model")

SMALL_MODEL_PARAMETERS = 10_000_000
THREADS_ENV = "LORARLHF_CPU_THREADS"
_USER_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
_logged = False
_applied: int | None = None  # the count this module set: not the user's choice


def parameter_count(config) -> int | None:
    """The parameters of a decoder-only transformer, estimated from its config without building it.

    Embeddings (+ an untied LM head) + per layer 4·H² for attention and 3·H·I for a gated MLP: within a
    small factor of the true count for every causal LM family, which is all the bar above needs. None when
    the config lacks a size.
    """
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    sizes = [getattr(text, name, None) for name in ("vocab_size", "hidden_size", "num_hidden_layers")]
    if not all(isinstance(size, int) and size > 0 for size in sizes):
        return None
    vocab, hidden, layers = sizes
    intermediate = getattr(text, "intermediate_size", None) or 4 * hidden
    heads = 1 if getattr(text, "tie_word_embeddings", True) else 2
    return heads * vocab * hidden + layers * (4 * hidden * hidden + 3 * hidden * intermediate)


def user_chose_threads() -> bool:
    """Whether the user set the CPU thread count: by environment variable or by torch.set_num_threads."""
    if any(os.environ.get(name) for name in (*_USER_ENV, THREADS_ENV)):
        return True
    cpus = os.cpu_count() or 1
    available = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cpus
    now = torch.get_num_threads()
    # PyTorch starts with one thread per physical core it may use; SMT doubles the logical count.
    return now != _applied and now not in {cpus, available, max(cpus // 2, 1), max(available // 2, 1)}


def cpu_threads(parameters: int | None) -> int | None:
    """The thread count a CPU run of a model of `parameters` should use; None: leave PyTorch's as it is."""
    chosen = os.environ.get(THREADS_ENV, "").strip().lower()
    if chosen:
        if chosen == "default":
            return None
        if not chosen.isdigit() or int(chosen) < 1:
            raise ValueError(f'{THREADS_ENV}={chosen!r} must be a positive number of threads or "default"')
        return int(chosen)
    if user_chose_threads() or parameters is None or parameters >= SMALL_MODEL_PARAMETERS:
        return None
    return 1


def apply_cpu_threads(config, device: torch.device) -> None:
    """Set the CPU thread count for a model with `config` on `device` (a GPU run is left as it is)."""
    global _logged, _applied
    if device.type != "cpu":
        return
    parameters = parameter_count(config)
    threads = cpu_threads(parameters)
    if threads is None or threads == torch.get_num_threads():
        return
    torch.set_num_threads(threads)
    _applied = threads
    if threads == 1:
        # Allowed once per process, before any inter-op work; a later call raises and changes nothing.
        with contextlib.suppress(RuntimeError):
            torch.set_num_interop_threads(1)
    if not _logged:
        _logged = True
        size = "" if parameters is None else f" (a model of ~{parameters / 1e6:.1f}M parameters)"
        log.info("CPU run on %d thread(s)%s; set %s=N or OMP_NUM_THREADS to choose", threads, size, THREADS_ENV)
