"""The chat-family fixtures behave as the real tokenizers do: templates render, BOS appears exactly where the
model puts it, the rendered text tokenizes as apply_chat_template tokenizes it and decodes back, special
tokens are single ids, and each generation_config stops on the family's end-of-turn token."""

from __future__ import annotations

import hashlib
import re

import pytest
from chat_families import FAMILIES, generation_config, make_model_dir, make_tokenizer
from jinja2.exceptions import TemplateError
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from lorarlhf import HydraModel

NAMES = sorted(FAMILIES)

SINGLE = [{"role": "user", "content": "Hi there"}]
MULTI = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": " Hello! "},  # spaces around, to see which templates trim
    {"role": "user", "content": "Bye"},
    {"role": "assistant", "content": "See you"},
]
SYSTEM = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
UNICODE = [{"role": "user", "content": "naïve café 😀 \t tab  two spaces"}, {"role": "assistant", "content": "ok"}]

# sha256 (first 16 hex digits) of each template as copied: an edit, a reformat or a lost newline shows here.
TEMPLATE_SHA256 = {
    "gemma-2": "ecd6ae513fe103f0",
    "gemma-3": "7de1c58e208eda46",
    "llama-3.2": "5816fce10444e03c",
    "mistral": "e16746b40344d6c5",
    "phi-3": "dcaee66df77bfbb7",
    "qwen2.5": "cd8e9439f0570856",
    "qwen3": "87a2728cb8dc9fe4",
    "smollm2": "872be49dbb638044",
}


def render(name, messages, add_generation_prompt, tokenize=False):
    tokenizer = make_tokenizer(name)
    return tokenizer.apply_chat_template(
        messages,
        tokenize=tokenize,
        return_dict=False,  # transformers 5 returns a BatchEncoding by default
        add_generation_prompt=add_generation_prompt,
        **FAMILIES[name].template_kwargs,
    )


def conversations(name):
    cases = [(SINGLE, True), (MULTI, False), (MULTI[:3], True), (UNICODE, False)]
    return cases + ([(SYSTEM, True)] if FAMILIES[name].supports_system else [])


def test_every_family_is_there_and_its_template_is_the_copied_one():
    assert set(FAMILIES) == {"llama-3.2", "qwen2.5", "qwen3", "gemma-2", "gemma-3", "mistral", "phi-3", "smollm2"}
    for name, family in FAMILIES.items():
        assert family.name == name
        assert hashlib.sha256(family.chat_template.encode()).hexdigest()[:16] == TEMPLATE_SHA256[name]
        assert make_tokenizer(name).chat_template == family.chat_template


@pytest.mark.parametrize("name", NAMES)
def test_conversations_render_and_tokenize_as_apply_chat_template_does(name):
    family, tokenizer = FAMILIES[name], make_tokenizer(name)
    for messages, add_generation_prompt in conversations(name):
        text = render(name, messages, add_generation_prompt)
        ids = render(name, messages, add_generation_prompt, tokenize=True)
        assert isinstance(ids, list) and all(isinstance(i, int) for i in ids)
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == ids
        assert text.startswith(family.bos_token or "\0") == family.template_writes_bos
        assert (ids[0] == tokenizer.bos_token_id) == family.template_writes_bos


@pytest.mark.parametrize("name", NAMES)
def test_rendered_text_decodes_back_except_whitespace_that_rstrip_tokens_take(name):
    family, tokenizer = FAMILIES[name], make_tokenizer(name)
    for messages, add_generation_prompt in conversations(name):
        text = render(name, messages, add_generation_prompt)
        expected = text
        if family.rstrip_tokens:
            expected = re.sub("(" + "|".join(map(re.escape, family.rstrip_tokens)) + r")\s+", r"\1", text)
            assert expected != text  # Phi-3's turn tokens swallow the template's newlines
        assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == expected


@pytest.mark.parametrize("name", NAMES)
def test_the_tokenizer_adds_bos_exactly_when_the_real_one_does(name):
    family, tokenizer = FAMILIES[name], make_tokenizer(name)
    plain = tokenizer("Hi", add_special_tokens=False)["input_ids"]
    with_specials = tokenizer("Hi")["input_ids"]
    if family.tokenizer_adds_bos:
        assert with_specials == [tokenizer.bos_token_id, *plain]
    else:
        assert with_specials == plain
    assert tokenizer.bos_token == family.bos_token
    assert tokenizer.eos_token == family.eos_token
    assert tokenizer.pad_token == family.pad_token


@pytest.mark.parametrize("name", NAMES)
def test_special_and_added_tokens_are_single_ids(name):
    family, tokenizer = FAMILIES[name], make_tokenizer(name)
    assert len(tokenizer) < 500  # small, as promised
    ids = set()
    for token in family.special_tokens + family.added_tokens:
        (token_id,) = tokenizer(token, add_special_tokens=False)["input_ids"]
        assert token_id == tokenizer.convert_tokens_to_ids(token)
        kept = token in family.added_tokens  # skip_special_tokens keeps Qwen3's <think>, drops the specials
        assert tokenizer.decode([token_id], skip_special_tokens=True) == (token if kept else "")
        ids.add(token_id)
    assert len(ids) == len(family.special_tokens) + len(family.added_tokens)
    assert tokenizer.convert_ids_to_tokens(list(range(family.leading_specials))) == list(
        family.special_tokens[: family.leading_specials]
    )


@pytest.mark.parametrize("name", NAMES)
def test_a_space_becomes_what_the_family_makes_of_it(name):
    family, tokenizer = FAMILIES[name], make_tokenizer(name)
    pieces = tokenizer.convert_ids_to_tokens(tokenizer("Hi you", add_special_tokens=False)["input_ids"])
    if not family.sentencepiece:
        assert pieces == ["H", "i", "Ġ", "y", "o", "u"]  # byte-level: the space is the byte Ġ
    elif family.prefix_space:
        assert pieces == ["▁H", "i", "▁y", "o", "u"]  # Llama-2 style: a ▁ before the first piece too
    else:
        assert pieces == ["H", "i", "▁y", "o", "u"]  # Gemma: no prefix space


@pytest.mark.parametrize("name", NAMES)
def test_an_assistant_turn_ends_with_the_end_of_turn_token_and_what_follows_it(name):
    family = FAMILIES[name]
    text = render(name, MULTI, add_generation_prompt=False)
    reply = {"all": "Hello!", "assistant": "Hello!", "none": " Hello! "}[family.trims]
    assert reply + family.end_of_turn + family.after_end_of_turn in text
    assert "See you" + family.end_of_turn + family.after_end_of_turn in text
    if family.trims == "none":
        assert "Hello!" + family.end_of_turn not in text


@pytest.mark.parametrize("name", NAMES)
def test_generation_config_stops_on_the_listed_end_ids_including_the_end_of_turn(name):
    family, tokenizer = FAMILIES[name], make_tokenizer(name)
    config = generation_config(name, tokenizer)
    assert config.eos_token_id == [tokenizer.convert_tokens_to_ids(t) for t in family.generation_eos_ids]
    assert family.end_of_turn in family.generation_eos_ids
    if family.generation_bos is None:
        assert config.bos_token_id is None
    else:
        assert config.bos_token_id == tokenizer.convert_tokens_to_ids(family.generation_bos)
    if family.generation_pad is None:
        assert config.pad_token_id is None
    else:
        assert config.pad_token_id == tokenizer.convert_tokens_to_ids(family.generation_pad)


def test_gemma_2_rejects_a_system_message():
    with pytest.raises(TemplateError, match="System role not supported"):
        render("gemma-2", SYSTEM, add_generation_prompt=True)


def test_mistral_puts_the_system_prompt_into_the_last_user_turn():
    messages = [{"role": "system", "content": "Be brief."}, *MULTI[:3]]
    assert render("mistral", messages, add_generation_prompt=True) == (
        "<s>[INST] Hi[/INST] Hello!</s>[INST] Be brief.\n\nBye[/INST]"
    )


def test_qwen3_writes_an_empty_think_block_only_into_the_last_assistant_turn():
    text = render("qwen3", MULTI, add_generation_prompt=False)
    assert "<|im_start|>assistant\n Hello! <|im_end|>" in text  # an earlier turn: as given
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\nSee you<|im_end|>\n")
    # The generation prompt has no think block: a model that thinks writes it itself.
    assert render("qwen3", MULTI[:3], add_generation_prompt=True).endswith("<|im_start|>assistant\n")


def test_llama_3_2_dates_its_system_header():
    text = render("llama-3.2", SINGLE, add_generation_prompt=True)
    assert "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n<|eot_id|>" in text


def test_templates_that_inject_a_default_system_prompt():
    assert "You are Qwen, created by Alibaba Cloud." in render("qwen2.5", SINGLE, add_generation_prompt=True)
    assert "named SmolLM" in render("smollm2", SINGLE, add_generation_prompt=True)
    assert "You are" not in render("qwen3", SINGLE, add_generation_prompt=True)


def test_phi_3_ends_a_conversation_without_a_generation_prompt_with_eos():
    assert render("phi-3", MULTI, add_generation_prompt=False).endswith("See you<|end|>\n<|endoftext|>")


@pytest.mark.parametrize("name", NAMES)
def test_the_model_directory_loads_with_the_same_tokenizer_and_end_ids(name, tmp_path):
    family, tokenizer = FAMILIES[name], make_tokenizer(name)
    path = make_model_dir(name, tmp_path / name)
    loaded = AutoTokenizer.from_pretrained(path)
    assert loaded.chat_template == family.chat_template
    for messages, add_generation_prompt in conversations(name):
        assert loaded.apply_chat_template(
            messages, return_dict=False, add_generation_prompt=add_generation_prompt, **family.template_kwargs
        ) == render(name, messages, add_generation_prompt, tokenize=True)
    assert loaded("Hi you")["input_ids"] == tokenizer("Hi you")["input_ids"]
    expected_eos = generation_config(name, tokenizer).eos_token_id
    assert GenerationConfig.from_pretrained(path).eos_token_id == expected_eos
    model = AutoModelForCausalLM.from_pretrained(path)
    assert model.config.vocab_size == len(tokenizer)
    hydra = HydraModel.from_pretrained(path, quantize=None, device="cpu", roles=("actor",))
    assert set(hydra.end_ids) == set(expected_eos)
