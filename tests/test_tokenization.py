"""The shared prompt + response tokenization rule, and the tiny local tokenizer it is tested with."""

from __future__ import annotations

import pytest
import torch

from lorarlhf.model.chat import ChatFormat
from lorarlhf.model.tiny import build_tiny_tokenizer
from lorarlhf.model.tokenization import encode_prompt_response, encode_prompts_left_padded


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


def test_prompt_then_response_then_eos_with_an_exact_mask(tokenizer):
    batch = encode_prompt_response(tokenizer, ["ab", "abcd"], ["xyz", "q"])
    prompt = tokenizer("ab")["input_ids"]
    response = tokenizer("xyz", add_special_tokens=False)["input_ids"]
    row = prompt + response + [tokenizer.eos_token_id]
    assert batch.input_ids[0, : len(row)].tolist() == row
    assert batch.response_mask[0].tolist() == [False] * len(prompt) + [True] * (len(response) + 1) + [False] * (
        batch.input_ids.shape[1] - len(row)
    )
    assert batch.attention_mask.sum(1).tolist() == [len(row), len(tokenizer("abcd")["input_ids"]) + 2]
    assert (batch.input_ids[batch.attention_mask == 0] == tokenizer.pad_token_id).all()
    assert not (batch.response_mask & (batch.attention_mask == 0)).any()


def test_long_responses_are_cut_to_max_length_and_long_prompts_refused(tokenizer):
    batch = encode_prompt_response(tokenizer, ["ab"], ["a long answer"], max_length=6)
    assert batch.input_ids.shape == (1, 6)
    assert batch.response_mask.sum() == 6 - len(tokenizer("ab")["input_ids"])
    with pytest.raises(ValueError, match=r"prompts\[1\] is 11 tokens, which leaves no room .* max_length=8"):
        encode_prompt_response(tokenizer, ["ok", "0123456789"], ["a", "b"], max_length=8)


@pytest.mark.parametrize(
    ("prompts", "responses", "error", "message"),
    [
        (["a"], ["b", "c"], ValueError, "got 1 prompts but 2 responses"),
        ([], [], ValueError, "prompts is empty"),
        ("a", ["b"], TypeError, "prompts must be a list of strings or conversations"),
        (["a", 3], ["b", "c"], TypeError, r"prompts\[1\] must be a string or a list of messages, not int"),
        (["a"], [None], TypeError, r"responses\[0\] must be a string, not NoneType"),
    ],
)
def test_bad_texts_are_named(tokenizer, prompts, responses, error, message):
    with pytest.raises(error, match=message):
        encode_prompt_response(tokenizer, prompts, responses)


def test_empty_prompt_without_bos_has_no_context(tokenizer):
    tokenizer = build_tiny_tokenizer()
    tokenizer._tokenizer.post_processor = None  # a tokenizer that adds no BOS
    with pytest.raises(ValueError, match=r"prompts\[0\] is empty and the tokenizer adds no BOS"):
        encode_prompt_response(tokenizer, [""], ["b"])


def test_generation_prompts_are_left_padded_with_the_same_tokens(tokenizer):
    input_ids, attention_mask = encode_prompts_left_padded(tokenizer, ["a", "abc"])
    scored = encode_prompt_response(tokenizer, ["a", "abc"], ["", ""])
    for row in range(2):
        prompt = input_ids[row][attention_mask[row].bool()]
        assert (
            prompt.tolist()
            == scored.input_ids[row][scored.attention_mask[row].bool() & ~scored.response_mask[row]].tolist()
        )
    assert attention_mask[0].tolist() == [0, 0, 1, 1]


def test_tiny_tokenizer_round_trips_any_text_and_is_the_same_every_build(tokenizer):
    text = "naïve café — 日本語 🙂\t\x00 <s> plain"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert len(tokenizer) == 259
    assert build_tiny_tokenizer()(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert tokenizer("a")["input_ids"][0] == tokenizer.bos_token_id


def test_batch_moves_to_a_device(tokenizer):
    batch = encode_prompt_response(tokenizer, ["a"], ["b"]).to(torch.device("cpu"))
    assert batch.input_ids.device.type == "cpu" and batch.response_mask.dtype == torch.bool


# A chat template that writes BOS itself, as Llama 3's and Gemma's do.
BOS_WRITING_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _template_ids(tokenizer, messages) -> list[int]:
    out = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def test_a_conversation_gets_the_templates_ids_with_its_bos_once():
    tokenizer = build_tiny_tokenizer()
    tokenizer.chat_template = BOS_WRITING_TEMPLATE
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    expected = _template_ids(tokenizer, messages)
    assert expected.count(tokenizer.bos_token_id) == 1

    ids, mask = encode_prompts_left_padded(tokenizer, [messages, "plain text"])
    assert ids[0][mask[0].bool()].tolist() == expected  # rollouts and generate see the template's ids
    as_user = _template_ids(tokenizer, [{"role": "user", "content": "plain text"}])
    assert ids[1][mask[1].bool()].tolist() == as_user  # a string prompt on a chat model is a user message
    never, never_mask = encode_prompts_left_padded(ChatFormat(tokenizer, "never"), ["plain text"])
    assert never[0][never_mask[0].bool()].tolist() == tokenizer("plain text")["input_ids"]  # BOS + text
    batch = encode_prompt_response(tokenizer, [messages], ["Hello."])
    prompt = batch.input_ids[0][~batch.response_mask[0] & batch.attention_mask[0].bool()].tolist()
    assert prompt == expected  # DPO, reward and SFT batches too
