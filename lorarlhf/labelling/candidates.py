"""Candidates to label: K different responses per prompt, one JSONL record per prompt.

    {"id": "…", "prompt": "…", "responses": ["…", "…"], "model": "…", "sampling": {…}}

`sample_candidates` writes them from a model or a saved run's actor, sampling as rollouts do (one seed per
response, so a seeded run is reproducible). `read_candidates` reads them back for `lorarlhf label`, from
this tool or any other: only prompt and responses are needed, and a missing id is derived from the text,
so an item keeps its identity (and its votes) when the file is reordered or extended. Every text must be
proper Unicode (text.py); two responses that differ only in characters nobody can see are reported.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from lorarlhf.data import PreferenceDataError, load_prompts, read_jsonl
from lorarlhf.labelling.text import look_alikes, reading, unicode_problem
from lorarlhf.model.chat import Conversation, jsonable
from lorarlhf.model.hydra import HydraModel, resolve_model
from lorarlhf.training.rollout import SamplingConfig, generate_in_pieces
from lorarlhf.validation import check_int

logger = logging.getLogger("lorarlhf.labelling")

MAX_ATTEMPTS = 4
"""Sampling rounds per prompt to find K different responses; identical ones are sampled again."""


class CandidatesError(PreferenceDataError):
    """A bad candidates file, named by file, 1-based row and field."""


@dataclass(frozen=True)
class CandidateItem:
    """One prompt and the responses to compare or rank."""

    id: str
    prompt: str | Conversation
    responses: tuple[str, ...]


@dataclass(frozen=True)
class SampleReport:
    """What sample_candidates wrote and what it could not."""

    prompts: int
    written: int
    """Prompts written with K different responses."""
    short: int
    """Prompts written with fewer than K (but at least 2) different responses."""
    dropped: int
    """Prompts left out: the model gave the same (or an empty) response every time."""

    def __str__(self) -> str:
        text = f"{self.written + self.short} of {self.prompts} prompts written"
        if self.short:
            text += f"; {self.short} with fewer different responses than asked"
        if self.dropped:
            text += f"; {self.dropped} left out (every sample was the same text, or empty)"
        return text


def item_id(prompt, responses) -> str:
    """A stable id from the text alone: the same prompt and responses are the same item in any file."""
    digest = hashlib.sha256(json.dumps([jsonable(prompt), sorted(responses)], ensure_ascii=False).encode()).hexdigest()
    return digest[:16]


def read_candidates(path) -> list[CandidateItem]:
    """The items of a candidates JSONL file, checked: every error names the file, the row and the field."""
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise CandidatesError(name, f"no such file: {path}")
    items: list[CandidateItem] = []
    rows_of_id: dict[str, int] = {}
    for number, record in read_jsonl(path, error=CandidatesError):
        item = _item_from(record, name, number)
        if item.id in rows_of_id:
            raise CandidatesError(
                name, f"id {item.id!r} is already used by row {rows_of_id[item.id]}", row=number, field="id"
            )
        rows_of_id[item.id] = number
        items.append(item)
        names = [f"response {i}" for i in range(len(item.responses))]
        for i, j, how in look_alikes(item.responses, names):
            logger.warning(
                "%s, row %d (item %r): responses %d and %d read the same but are different texts: %s",
                name,
                number,
                item.id,
                i,
                j,
                how,
            )
    if not items:
        raise CandidatesError(name, "no candidates: the file is empty")
    return items


def _item_from(record, name: str, number: int) -> CandidateItem:
    if not isinstance(record, dict):
        raise CandidatesError(name, f"a record must be a JSON object, not {type(record).__name__}", row=number)
    prompt = record.get("prompt")
    if prompt is None or (isinstance(prompt, str) and not prompt.strip()):
        raise CandidatesError(name, "missing" if prompt is None else "empty", row=number, field="prompt")
    if isinstance(prompt, list):
        try:
            prompt = Conversation(prompt)
        except (TypeError, ValueError) as error:
            raise CandidatesError(name, f"a list of messages, but {error}", row=number, field="prompt") from None
    if not isinstance(prompt, str | Conversation):
        problem = f"must be text or a list of messages, not {type(prompt).__name__}"
        raise CandidatesError(name, problem, row=number, field="prompt")
    responses = record.get("responses")
    if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
        problem = "missing" if responses is None else "must be a list of texts"
        raise CandidatesError(name, problem, row=number, field="responses")
    given = record.get("id")
    for field, what, text in texts_of(prompt, responses, given if isinstance(given, str) else None):
        problem = unicode_problem(text)
        if problem is not None:  # it would stop the page (and the vote log) when shown: refused here
            raise CandidatesError(name, f"{what} is {problem}", row=number, field=field)
    if any(not reading(text) for text in responses):
        blank = next(i for i, text in enumerate(responses) if not reading(text))
        raise CandidatesError(
            name, f"response {blank} is empty: there is nothing to judge", row=number, field="responses"
        )
    different = len({text.strip() for text in responses})
    if different < 2 or different != len(responses):
        problem = "needs at least 2 responses, all different" + (
            "" if len(responses) < 2 else f" (got {len(responses)}, {different} different apart from spacing)"
        )
        raise CandidatesError(name, problem, row=number, field="responses")
    if given is not None and not (isinstance(given, str) and given.strip()):
        raise CandidatesError(name, "must be a non-empty text when given", row=number, field="id")
    return CandidateItem(given or item_id(prompt, responses), prompt, tuple(responses))


def texts_of(prompt, responses, given_id=None):
    """(field, what, text) for every text of an item: the prompt (or each message's role and content),
    each response, the id."""
    if isinstance(prompt, Conversation):
        for i, message in enumerate(prompt):
            yield "prompt", f"message {i}'s role", message.role
            yield "prompt", f"message {i}'s content", message.content
    else:
        yield "prompt", "the prompt", prompt
    for i, text in enumerate(responses):
        yield "responses", f"response {i}", text
    if given_id is not None:
        yield "id", "the id", given_id


def sample_candidates(
    model,
    prompts,
    out,
    *,
    n: int = 2,
    sampling: SamplingConfig | None = None,
    seed: int = 0,
    batch_size: int = 16,
    quantize: str | None = "nf4",
    trust_remote_code: bool = False,
    overwrite: bool = False,
) -> SampleReport:
    """Sample `n` different responses per prompt and write them to `out` as candidates to label.

    model: a hub id, a local directory, "demo", a HydraModel, or a saved run's output_dir (its actor samples).
    prompts: anything load_prompts reads (prompt-only rows or any preference data), or a list of texts.
    Identical responses (or ones that read the same, see text.reading) are sampled again, up to 4 rounds; a
    prompt that still has fewer than 2 different responses is left out and counted. `out` is never replaced
    unless overwrite=True.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n={n!r}: candidates per prompt must be an integer >= 2 (2 to compare, more to rank)")
    check_int("batch_size", batch_size)
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; choose another --out, or pass overwrite=True (--overwrite) to replace it")
    sampling = sampling or SamplingConfig()
    hydra, model_name = _actor_of(model, quantize=quantize, trust_remote_code=trust_remote_code)
    if not (isinstance(prompts, list) and all(isinstance(p, str) for p in prompts)):
        prompts = load_prompts(prompts, tokenizer=hydra.chat)
    if not prompts:
        raise ValueError("no prompts to sample for")

    found: list[list[str]] = [[] for _ in prompts]
    seeds = np.random.SeedSequence(seed).generate_state(len(prompts) * n * MAX_ATTEMPTS, dtype=np.uint32)
    seeds = seeds.reshape(MAX_ATTEMPTS, len(prompts), n)
    for attempt in range(MAX_ATTEMPTS):
        wanted = [(i, k) for i, texts in enumerate(found) for k in range(n - len(texts))]
        if not wanted:
            break
        for start in range(0, len(wanted), batch_size):
            chunk = wanted[start : start + batch_size]
            rollout = generate_in_pieces(
                hydra, [prompts[i] for i, _ in chunk], sampling, [int(seeds[attempt, i, k]) for i, k in chunk], 1
            )
            for (i, _), text in zip(chunk, rollout.responses, strict=True):
                # An empty response leaves nothing to judge; two that differ only in spacing, invisible
                # characters or composition (NFC vs NFD) read the same, and the annotator could not tell them apart.
                if reading(text) and reading(text) not in {reading(t) for t in found[i]} and len(found[i]) < n:
                    found[i].append(text)

    settings = asdict(sampling) | {"seed": seed}
    records = [
        {
            "id": item_id(prompt, texts),
            "prompt": jsonable(prompt),
            "responses": texts,
            "model": model_name,
            "sampling": settings,
        }
        for prompt, texts in zip(prompts, found, strict=True)
        if len(texts) >= 2
    ]
    _write_atomically(out, records)
    short = sum(2 <= len(texts) < n for texts in found)
    report = SampleReport(len(prompts), len(records) - short, short, len(prompts) - len(records))
    logger.info("%s: %s", out, report)
    return report


def _actor_of(model, *, quantize, trust_remote_code):
    """The model to sample from, as a Hydra whose actor answers: a saved run's trained actor, else the base."""
    resolved = resolve_model(model, trust_remote_code=trust_remote_code)
    if isinstance(resolved, HydraModel):
        return resolved, "HydraModel" if isinstance(model, HydraModel) else str(model)
    hydra = HydraModel.from_pretrained(
        resolved, roles=("actor",), quantize=quantize, trust_remote_code=trust_remote_code
    )
    return hydra, str(model)


def _write_atomically(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", encoding="utf-8") as file:
        for record in records:
            file.write(json.dumps(record, ensure_ascii=False) + "\n")
        file.flush()
        os.fsync(file.fileno())
    partial.replace(path)
