"""Third-party noise off while lorarlhf works, unless verbose: progress bars and chatter of other libraries.

transformers draws "Loading weights" and "Writing model shards" bars and logs info and warnings while it
loads and saves; datasets draws a bar per file it reads. During our own calls those say nothing the user
needs, and in a terminal they bury lorarlhf's report. `quiet()` turns them off for the duration of a call
and restores each library's settings after it, so a user's own transformers calls are not changed.
`verbose=True` or LORARLHF_VERBOSE=1 in the environment shows them again.

`hide_bitsandbytes_kernel_notice()` drops one warning that bitsandbytes logs as it is imported (peft imports
it) on a CPU with AVX512-BF16: "Failed to load CPU gemm_4bit_forward from kernels-community ... pip install
kernels". That kernel is for a packed inference layout which lorarlhf turns off (lorarlhf.model.loading), so
the advice would not help; every other bitsandbytes message still shows.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

VERBOSE_ENV = "LORARLHF_VERBOSE"
BNB_CPU_LOGGER = "bitsandbytes.backends.cpu.ops"
BNB_KERNEL_NOTICE = "Failed to load CPU gemm_4bit_forward from kernels-community"


def is_verbose(verbose: bool | None = None) -> bool:
    """`verbose` when given, else whether LORARLHF_VERBOSE is set to a true value (1, true, yes, on)."""
    if verbose is not None:
        return bool(verbose)
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def _not_the_kernel_notice(record: logging.LogRecord) -> bool:
    return is_verbose() or not str(record.msg).startswith(BNB_KERNEL_NOTICE)


def hide_bitsandbytes_kernel_notice() -> None:
    """Filter bitsandbytes' kernels-community notice out of its CPU backend's logger (once; before its import)."""
    logger = logging.getLogger(BNB_CPU_LOGGER)
    if _not_the_kernel_notice not in logger.filters:
        logger.addFilter(_not_the_kernel_notice)


@contextmanager
def quiet(verbose: bool | None = None) -> Iterator[None]:
    """transformers' logs below errors, and its and datasets' progress bars, off inside the block.

    Only libraries already imported are touched (datasets costs seconds to import, and a library not
    imported draws nothing); one imported inside the block is left as it starts.
    """
    if is_verbose(verbose):
        yield
        return
    restore = []
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        restore.append(lambda: (hf_logging.set_verbosity(level), bars and hf_logging.enable_progress_bar()))
    if "datasets" in sys.modules:
        from datasets.utils import logging as ds_logging

        ds_bars = ds_logging.is_progress_bar_enabled()
        ds_logging.disable_progress_bar()
        restore.append(lambda: ds_bars and ds_logging.enable_progress_bar())
    try:
        yield
    finally:
        for undo in reversed(restore):
            undo()


@contextmanager
def peft_deprecations() -> Iterator[None]:
    """Hide the FutureWarning peft's PeftModel.__init__ triggers, and only that one.

    peft (0.13 to at least 0.21) reads `model.is_gradient_checkpointing`, a property transformers 5
    deprecates in favour of `is_activation_checkpointing`. The warning is about peft's code, which a user
    cannot change, and it repeats on every model built; a FutureWarning from anything else still shows.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield
