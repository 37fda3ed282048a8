"""A response ends at any end id of the model: the tokenizer's EOS and every eos_token_id of its
generation_config (Llama 3 lists three). Nothing after that id is sampled, scored, rewarded or shown."""

from __future__ import annotations

import torch

import lorarlhf.training.rollout as rollout_module
from lorarlhf import HydraModel
from lorarlhf.model.tokenization import end_token_ids
from lorarlhf.training.rollout import SamplingConfig, generate_rollout


class _Config:
    def __init__(self, eos_token_id):
        self.eos_token_id = eos_token_id


def test_end_ids_are_the_tokenizers_eos_and_the_generation_configs(tiny_model_dir):
    tokenizer = HydraModel.from_pretrained(tiny_model_dir, quantize=None, device="cpu", roles=("actor",)).tokenizer
    eos = tokenizer.eos_token_id
    assert end_token_ids(tokenizer) == (eos,)
    assert end_token_ids(tokenizer, _Config(None)) == (eos,)
    assert end_token_ids(tokenizer, _Config(eos)) == (eos,)
    assert end_token_ids(tokenizer, _Config([eos + 40, eos, eos + 41])) == (eos, eos + 40, eos + 41)


def test_a_rollout_stops_at_each_end_id_of_the_generation_config(tiny_model_dir, monkeypatch):
    hydra = HydraModel.from_pretrained(tiny_model_dir, quantize=None, device="cpu", roles=("actor",))
    eos, pad = hydra.tokenizer.eos_token_id, hydra.tokenizer.pad_token_id
    end_of_turn = 50  # a second end id, as Llama 3's <|eot_id|> beside <|end_of_text|>
    hydra.causal_lm.generation_config.eos_token_id = [eos, end_of_turn]
    assert hydra.end_ids == (eos, end_of_turn)
    # Forced draws, one row each: ends on the second end id, ends on EOS, never ends.
    script = iter([[60, 61, 62], [63, eos, 64], [end_of_turn, 65, 66], [67, 68, 69]])
    monkeypatch.setattr(rollout_module, "_sample", lambda logits, sampling, generators: torch.tensor(next(script)))

    rollout = generate_rollout(hydra, ["a", "b", "c"], SamplingConfig(max_new_tokens=4), seeds=[0, 1, 2])

    assert rollout.response_ids.tolist() == [[60, 63, end_of_turn, pad], [61, eos, pad, pad], [62, 64, 66, 69]]
    assert rollout.response_mask.tolist() == [[True, True, True, False], [True, True, False, False], [True] * 4]
    assert rollout.finished.tolist() == [True, True, False]
    assert rollout.response_lengths.tolist() == [3, 2, 4]
    assert rollout.responses[0] == hydra.tokenizer.decode([60, 63])  # the end id is not text


def test_generate_stops_on_every_end_id(tiny_model_dir, monkeypatch):
    hydra = HydraModel.from_pretrained(tiny_model_dir, quantize=None, device="cpu", roles=("actor",))
    eos = hydra.tokenizer.eos_token_id
    hydra.causal_lm.generation_config.eos_token_id = [eos, 50, 51]
    seen = {}
    real = hydra.causal_lm.generate

    def spy(**kwargs):
        seen.update(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(hydra.causal_lm, "generate", spy)
    hydra.generate(["hello"], max_new_tokens=3, do_sample=False)
    assert seen["eos_token_id"] == [eos, 50, 51]
