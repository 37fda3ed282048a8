"""Hostile input, generated: every outcome is a correct result or a clear error naming the row and field.

Never a crash deep inside a library, never a hang. Random unicode, empty and huge strings, wrong types,
missing keys, duplicate rows, prompts longer than the context.
"""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from lorarlhf.data import PreferenceDataError, load_preferences, load_prompts
from lorarlhf.data.demonstrations import load_demonstrations
from lorarlhf.model.tiny import build_tiny_tokenizer
from lorarlhf.pipeline import CONFIGS
from lorarlhf.training.config import CommonConfig

FIELDS = ["prompt", "chosen", "rejected", "responses", "ranks", "ranking", "scores", "a", "b", "votes"]
FIELDS += ["annotators", "completion", "response", "messages", "utility", "junk"]
WORDS = st.text(alphabet=st.characters(exclude_categories=["Cs"]), min_size=1, max_size=30).filter(str.strip)
TEXT = st.one_of(
    WORDS,
    WORDS,
    WORDS,
    st.text(max_size=40),
    st.sampled_from(["", " ", "\x00", "\n\nHuman: hi\n\nAssistant: yo", "<script>alert(1)</script>", "🙂" * 30]),
    st.text(alphabet="ab ", min_size=3000, max_size=3000),
)
SCALAR = st.one_of(TEXT, st.integers(-3, 5), st.floats(allow_nan=True, allow_infinity=True), st.none(), st.booleans())
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", 3]), "content": SCALAR})
VALUE = st.one_of(
    SCALAR, st.lists(SCALAR, max_size=4), st.lists(MESSAGE, max_size=3), st.dictionaries(TEXT, TEXT, max_size=2)
)
RECORD = st.dictionaries(st.sampled_from(FIELDS), VALUE, max_size=5)
SETTINGS = settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
TOKENIZER = build_tiny_tokenizer()


def assert_names_where(error: PreferenceDataError, n_records: int) -> None:
    assert str(error).startswith("records"), error
    if error.row is not None:
        assert 1 <= error.row <= n_records, error
    if error.field is not None:
        assert error.field in FIELDS, error


def realistic_records():
    """Mostly well-formed pairs, votes and rankings with some fields damaged or repeated."""
    pair = st.fixed_dictionaries({"prompt": TEXT, "chosen": TEXT, "rejected": TEXT})
    votes = st.fixed_dictionaries(
        {"prompt": TEXT, "a": TEXT, "b": TEXT, "votes": st.lists(st.sampled_from(["a", "b", "tie", "x"]), max_size=4)}
    )
    ranking = st.fixed_dictionaries(
        {"prompt": TEXT, "responses": st.lists(TEXT, max_size=4), "ranks": st.lists(st.integers(0, 4), max_size=4)}
    )
    return st.lists(st.one_of(pair, votes, ranking, RECORD), max_size=8).flatmap(
        lambda rows: st.just(rows + rows[:1])  # a duplicate row
    )


@SETTINGS
@given(st.lists(RECORD, max_size=6) | realistic_records(), st.sampled_from(["majority", "bradley_terry"]))
def test_load_preferences_gives_pairs_or_names_the_row_and_field(records, aggregate):
    try:
        pairs = load_preferences(records, aggregate=aggregate, tokenizer=TOKENIZER, max_length=64)
    except PreferenceDataError as error:
        assert_names_where(error, len(records))
        event("refused, naming " + ("row and field" if error.field else "row" if error.row else "the source"))
        return
    event("read into pairs")
    assert pairs and pairs.report.pairs == len(pairs)
    for pair in pairs:
        assert all(isinstance(t, str) and t.strip() for t in (pair.prompt, pair.chosen, pair.rejected))
        assert pair.chosen != pair.rejected
        assert math.isfinite(pair.weight) and pair.weight > 0
        length = len(TOKENIZER(pair.prompt)["input_ids"]) + len(
            TOKENIZER(pair.chosen, add_special_tokens=False)["input_ids"]
        )
        assert length + 1 <= 64  # longer ones are dropped, and counted
    keys = [(p.prompt, p.chosen, p.rejected) for p in pairs]
    assert len(keys) == len(set(keys))  # duplicates dropped


def valid_records():
    """Well-formed pairs, votes and rankings of any unicode, with repeats and some too long for the model."""
    long = st.text(alphabet="xyz ", min_size=200, max_size=300).filter(str.strip)
    text = st.one_of(WORDS, WORDS, WORDS, long)
    pair = st.tuples(text, text, text).filter(lambda t: t[1] != t[2])
    pair = pair.map(lambda t: {"prompt": t[0], "chosen": t[1], "rejected": t[2]})
    votes = st.tuples(text, text, text, st.lists(st.sampled_from(["a", "b", "tie"]), min_size=1, max_size=5))
    votes = votes.filter(lambda t: t[1] != t[2]).map(lambda t: {"prompt": t[0], "a": t[1], "b": t[2], "votes": t[3]})
    ranking = st.tuples(text, st.lists(WORDS, min_size=2, max_size=4, unique=True))
    ranking = ranking.map(lambda t: {"prompt": t[0], "ranking": t[1]})
    return st.lists(st.one_of(pair, votes, ranking), min_size=1, max_size=8).map(lambda rows: rows + rows[:2])


@SETTINGS
@given(valid_records(), st.sampled_from(["majority", "bradley_terry"]))
def test_well_formed_records_of_any_text_become_pairs(records, aggregate):
    try:
        pairs = load_preferences(records, aggregate=aggregate, tokenizer=TOKENIZER, max_length=64)
    except PreferenceDataError as error:  # legitimate only when every pair was a tie or too long
        assert "no usable preference pairs" in str(error), error
        event("every pair dropped (ties, too long)")
        return
    event("read into pairs")
    report = pairs.report
    assert report.rows == len(records) and report.pairs == len(pairs)
    # The repeated rows: dropped as duplicates, or, for vote records, pooled into the item they repeat.
    pooled = report.agreement is not None and report.agreement.items < report.shapes.get("votes", 0)
    assert report.dropped["duplicate"] >= 1 or any(report.dropped.values()) or pooled
    for pair in pairs:
        assert pair.chosen != pair.rejected and math.isfinite(pair.weight) and pair.weight > 0


@SETTINGS
@given(st.lists(RECORD, max_size=6))
def test_load_prompts_and_demonstrations_give_results_or_name_the_row(records):
    for load in (load_prompts, load_demonstrations):
        try:
            result = load(records, tokenizer=TOKENIZER)
        except PreferenceDataError as error:
            assert_names_where(error, len(records))
            continue
        assert result


@SETTINGS
@given(st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_any_bytes_in_a_jsonl_file_are_read_or_refused_by_line(tmp_path_factory, content):
    path = tmp_path_factory.mktemp("data") / "prefs.jsonl"
    path.write_bytes(content)
    try:
        load_preferences(path)
    except PreferenceDataError as error:
        assert str(error).startswith("prefs.jsonl"), error
        if error.row is not None:
            assert 1 <= error.row <= content.count(b"\n") + 1


DEFAULTS = {f.name: f.default for cls in CONFIGS.values() for f in cls.__dataclass_fields__.values()}


def option_value(name: str):
    """Values of the option's own type (often valid) and hostile ones of any type."""
    default = DEFAULTS.get(name)
    if isinstance(default, bool):
        typed = st.booleans()
    elif isinstance(default, int):
        typed = st.integers(-2, 300)
    elif isinstance(default, float):
        typed = st.floats(-1, 3)
    elif isinstance(default, str):
        typed = st.sampled_from([default, default.upper(), "bogus"])
    else:
        typed = st.none() | st.floats(0, 2)
    return st.one_of(typed, typed, typed, SCALAR, st.lists(st.integers(), max_size=2))


def options_for(method: str):
    """Up to 3 options: mostly the method's own, some of other methods, some misspelt."""
    own = sorted(CONFIGS[method].__dataclass_fields__)
    names = st.one_of(st.sampled_from(own), st.sampled_from(own), st.sampled_from([*sorted(DEFAULTS), "stepz", ""]))
    pair = names.flatmap(lambda name: st.tuples(st.just(name), option_value(name)))
    return st.lists(pair, max_size=3).map(dict)


@SETTINGS
@given(st.sampled_from(sorted(CONFIGS)).flatmap(lambda method: st.tuples(st.just(method), options_for(method))))
def test_any_options_build_a_valid_config_or_name_the_option(method_and_options):
    method, overrides = method_and_options
    try:
        config = CONFIGS[method].from_overrides(method, overrides)
        event("valid config")
    except TypeError as error:
        event("unknown option named")
        unknown = [name for name in overrides if name not in CONFIGS[method].__dataclass_fields__]
        assert unknown and repr(unknown[0]) in str(error), error
        return
    except ValueError as error:
        event("bad value named")
        assert any(f"{name}=" in str(error) for name in overrides) or "pick one" in str(error), error
        return
    assert isinstance(config, CommonConfig)
    json.dumps(config.to_dict())  # what config.json gets
    assert config.steps >= 1 and config.batch_size >= 1 and config.lr > 0


@pytest.mark.parametrize("method", ["dpo", "sft", "rm"])
@pytest.mark.kernels
def test_prompts_longer_than_the_context_are_dropped_and_counted_not_crashed(tiny_model_dir, tmp_path, method):
    import lorarlhf

    long = "word " * 2000
    data = [{"prompt": f"Q{i}:", "chosen": "yes", "rejected": "no"} for i in range(6)]
    data += [{"prompt": long, "chosen": "yes", "rejected": "no"}]
    result = lorarlhf.align(str(tiny_model_dir), data, method=method, output_dir=tmp_path / "run", steps=1,
                            quantize=None, max_length=64, samples=0, eval_fraction=0.0)  # fmt: skip
    assert result.metrics
    only_long = [{"prompt": long, "chosen": "yes", "rejected": "no"}]
    with pytest.raises(PreferenceDataError, match="no usable"):
        lorarlhf.align(str(tiny_model_dir), only_long, method=method, output_dir=tmp_path / "r2", max_length=64)
