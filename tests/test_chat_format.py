"""Token-exact chat rendering: for each model family's real chat template and special-token habits, the ids of
DPO, reward and SFT batches, rollout prompts and `generate` inputs are `apply_chat_template`'s, token for token.

The expected ids always come from transformers' own `tokenizer.apply_chat_template(...)` on the same messages;
a response is the whole conversation's ids after the generation prompt's, through the template's end of turn.
"""

from __future__ import annotations

import pytest
import torch
from chat_families import FAMILIES, generation_config, make_model_dir, make_tokenizer

from lorarlhf import HydraModel
from lorarlhf.data import Conversation, load_preferences
from lorarlhf.data.demonstrations import load_demonstrations
from lorarlhf.methods.dpo import pair_logprobs
from lorarlhf.methods.reward import pair_rewards
from lorarlhf.methods.sft import completion_logprobs
from lorarlhf.model.chat import ChatFormat
from lorarlhf.training.config import CommonConfig
from lorarlhf.training.rollout import SamplingConfig, generate_rollout

NAMES = list(FAMILIES)
SYSTEM = {"role": "system", "content": "You answer in one sentence."}
CONVERSATIONS = {
    "single-turn": [{"role": "user", "content": "What is the capital of France?"}],
    "multi-turn": [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello. How can I help?"},
        {"role": "user", "content": "Name a prime number."},
    ],
    "system": [SYSTEM, {"role": "user", "content": "Why is the sky blue?"}],
}
RESPONSES = ["Paris.", "  Seven, for one.\n\n", "Rayleigh\nscattering. "]  # whitespace at the ends too


def _ids(out) -> list[int]:
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def template_prompt(tokenizer, messages) -> list[int]:
    return _ids(tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True))


def template_turn(tokenizer, messages, response: str, end_of_turn: str) -> list[int]:
    """The whole conversation's ids, through the first end of turn after the generation prompt."""
    reply = {"role": "assistant", "content": response}
    whole = _ids(tokenizer.apply_chat_template([*messages, reply], tokenize=True))
    prompt = template_prompt(tokenizer, messages)
    if whole[: len(prompt)] != prompt:
        # Mistral v0.3 writes the system prompt into the last user turn only while it is the last message, so
        # with a reply after it the system prompt is gone. The model answers the prompt as sampled (system
        # included): the reply is the template's turn for it, as it writes it without a system message.
        assert messages[0]["role"] == "system"
        history = messages[1:]
        whole = _ids(tokenizer.apply_chat_template([*history, reply], tokenize=True))
        whole = prompt + whole[len(template_prompt(tokenizer, history)) :]
    end = whole.index(tokenizer.convert_tokens_to_ids(end_of_turn), len(prompt))
    return whole[: end + 1]


def conversations_of(name: str):
    return [(k, v) for k, v in CONVERSATIONS.items() if FAMILIES[name].supports_system or k != "system"]


@pytest.fixture(scope="module", params=NAMES)
def family(request):
    return request.param, make_tokenizer(request.param)


def test_prompt_and_response_ids_are_the_templates_token_for_token(family):
    name, tokenizer = family
    chat = ChatFormat(tokenizer, generation_config=generation_config(name, tokenizer))
    end_of_turn = tokenizer.convert_tokens_to_ids(FAMILIES[name].end_of_turn)
    assert end_of_turn in chat.end_ids
    for _, messages in conversations_of(name):
        prompt = chat.prompt_ids(messages)
        assert prompt == template_prompt(tokenizer, messages)
        for response in RESPONSES:
            turn = chat.response_ids(messages, response)
            assert prompt + turn == template_turn(tokenizer, messages, response, FAMILIES[name].end_of_turn)
            assert turn[-1] == end_of_turn and end_of_turn not in turn[:-1]  # one turn, ended as sampling ends
        if FAMILIES[name].bos_token and FAMILIES[name].template_writes_bos:
            assert prompt[:2] != [tokenizer.bos_token_id] * 2  # BOS once, though the tokenizer also adds one


def test_a_string_prompt_on_a_chat_model_is_one_user_message_and_never_keeps_plain_text(family):
    name, tokenizer = family
    user = [{"role": "user", "content": "Tell me a joke."}]
    assert ChatFormat(tokenizer).prompt_ids("Tell me a joke.") == template_prompt(tokenizer, user)
    plain = ChatFormat(tokenizer, "never")
    assert plain.prompt_ids("Tell me a joke.") == tokenizer("Tell me a joke.")["input_ids"]  # the tokenizer's BOS
    assert plain.response_ids("Tell me a joke.", "No.") == [
        *tokenizer("No.", add_special_tokens=False)["input_ids"],
        tokenizer.eos_token_id,
    ]


def test_a_template_given_as_a_string_is_used_instead_of_the_tokenizers(family):
    name, tokenizer = family
    messages = CONVERSATIONS["single-turn"]
    bare = make_tokenizer(name)
    bare.chat_template = None
    given = ChatFormat(bare, FAMILIES[name].chat_template)
    assert given.prompt_ids(messages) == template_prompt(tokenizer, messages)
    assert given.response_ids(messages, "Paris.") == ChatFormat(tokenizer).response_ids(messages, "Paris.")
    assert not ChatFormat(bare).uses_template  # no template of its own: the plain rule


def test_a_template_that_rejects_a_conversation_is_an_error_naming_its_roles():
    tokenizer = make_tokenizer("gemma-2")
    assert not FAMILIES["gemma-2"].supports_system
    with pytest.raises(ValueError, match=r"cannot render a conversation with roles \['system', 'user'\]"):
        ChatFormat(tokenizer).prompt_ids(CONVERSATIONS["system"])


def test_chat_template_option_is_checked():
    with pytest.raises(ValueError, match=r"chat_template='sometimes' is not supported; choose 'auto'"):
        CommonConfig(chat_template="sometimes")
    assert CommonConfig(chat_template="never").chat_template == "never"


# --------------------------------------------------------------------------- through the real code paths


@pytest.fixture(scope="module", params=NAMES)
def hydra(request, tmp_path_factory):
    path = make_model_dir(request.param, tmp_path_factory.mktemp(request.param))
    torch.manual_seed(0)
    return request.param, HydraModel.from_pretrained(path, quantize=None, roles=("sft", "actor", "reward"))


def _record_inputs(model, monkeypatch) -> list[list[int]]:
    """The real (unpadded) rows of every batch the model's forward passes and generate calls receive."""
    seen = []
    hidden_states, generate = model.hidden_states, model.causal_lm.generate

    def rows(input_ids, attention_mask):
        seen.extend(ids[mask.bool()].tolist() for ids, mask in zip(input_ids, attention_mask, strict=True))

    def recording_hidden_states(input_ids, attention_mask, **kwargs):
        rows(input_ids, attention_mask)
        return hidden_states(input_ids, attention_mask, **kwargs)

    def recording_generate(*, input_ids, attention_mask, **kwargs):
        rows(input_ids, attention_mask)
        return generate(input_ids=input_ids, attention_mask=attention_mask, **kwargs)

    monkeypatch.setattr(model, "hidden_states", recording_hidden_states)
    monkeypatch.setattr(model.causal_lm, "generate", recording_generate)
    return seen


@pytest.mark.kernels
def test_dpo_reward_sft_rollout_and_generate_see_the_templates_ids(hydra, monkeypatch):
    name, model = hydra
    tokenizer, end_of_turn = model.tokenizer, FAMILIES[name].end_of_turn
    conversations = [messages for _, messages in conversations_of(name)]
    # The data as the hub writes it: whole conversations in chosen/rejected, and SFT messages.
    records = [
        {
            "chosen": [*m, {"role": "assistant", "content": f"  Good answer {i}. "}],
            "rejected": [*m, {"role": "assistant", "content": f"Bad answer {i}."}],
        }
        for i, m in enumerate(conversations)
    ]
    pairs = load_preferences(records, tokenizer=model.chat, max_length=4096)
    assert [p.prompt for p in pairs] == [Conversation(m) for m in conversations]  # system and history kept
    demos = load_demonstrations([{"messages": r["chosen"]} for r in records], tokenizer=model.chat, max_length=4096)
    seen = _record_inputs(model, monkeypatch)

    pair_logprobs(model, pairs, "actor")  # DPO
    chosen = [template_turn(tokenizer, m, f"  Good answer {i}. ", end_of_turn) for i, m in enumerate(conversations)]
    rejected = [template_turn(tokenizer, m, f"Bad answer {i}.", end_of_turn) for i, m in enumerate(conversations)]
    assert seen == chosen + rejected
    seen.clear()
    pair_rewards(model, pairs)  # the reward model
    assert seen == chosen + rejected
    seen.clear()
    completion_logprobs(model, demos)  # SFT
    assert seen == chosen
    seen.clear()

    prompts = [template_prompt(tokenizer, m) for m in conversations]
    rollout = generate_rollout(
        model, [p.prompt for p in pairs], SamplingConfig(max_new_tokens=2), list(range(len(pairs)))
    )
    rollout_prompts = [ids[mask].tolist() for ids, mask in zip(rollout.prompt_ids, rollout.prompt_mask, strict=True)]
    assert rollout_prompts == prompts  # PPO / GRPO rollouts
    assert not seen  # they run the model through its KV cache, not hidden_states
    model.generate(conversations, max_new_tokens=2, do_sample=False)
    assert seen == prompts  # generate


def test_an_hh_transcript_on_a_chat_model_is_read_as_its_conversation():
    """HH-RLHF's "\\n\\nHuman: … \\n\\nAssistant:" text is a conversation; a chat model gets it in its template."""
    tokenizer = make_tokenizer("qwen2.5")
    prompt = "\n\nHuman: Hi!\n\nAssistant: Hello.\n\nHuman: Capital of France?\n\nAssistant:"
    record = {"chosen": prompt + " Paris.", "rejected": prompt + " Lyon, I think."}
    (pair,) = load_preferences([record], tokenizer=ChatFormat(tokenizer))
    assert pair.prompt == Conversation(
        [
            {"role": "user", "content": "Hi!"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Capital of France?"},
        ]
    )
    assert (pair.chosen, pair.rejected) == ("Paris.", "Lyon, I think.")
    (plain,) = load_preferences([record], tokenizer=ChatFormat(tokenizer, "never"))
    assert (plain.prompt, plain.chosen) == (prompt, " Paris.")  # without a template the transcript stays text


@pytest.mark.kernels
def test_align_on_a_chat_model_with_hub_shaped_data_keeps_the_conversations(tmp_path):
    """An H4-style DPO set on a Qwen-like model: samples are written as messages, the option is saved."""
    import json

    import lorarlhf

    path = make_model_dir("qwen2.5", tmp_path / "model")
    records = [
        {
            "prompt": f"Question {i}?",
            "chosen": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": "Yes."}],
            "rejected": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": "No."}],
            "score_chosen": 8.0,
            "score_rejected": 8.0 if i == 0 else 3.0,  # row 0 is a tie: dropped
        }
        for i in range(6)
    ]
    result = lorarlhf.align(
        str(path), records, method="dpo", output_dir=tmp_path / "run", steps=1, batch_size=2, quantize=None,
        samples=2, max_new_tokens=2, eval_fraction=0.2,
    )  # fmt: skip
    samples = [json.loads(line) for line in (result.output_dir / "samples.jsonl").read_text().splitlines()]
    assert all(isinstance(s["prompt"], list) and s["prompt"][-1]["role"] == "user" for s in samples)
    assert HydraModel.load(result.output_dir).chat_template == "auto"
    manifest = json.loads((result.output_dir / "hydra.json").read_text())
    assert manifest["chat_template"] == "auto"
