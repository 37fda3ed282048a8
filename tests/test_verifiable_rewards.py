"""Reward functions see the row: GSM8K-style data (prompt, answer) reaches fn(prompts, completions, answer),
aligned with each prompt, and lorarlhf.rewards checks answers the way GSM8K and boxed solutions write them."""

from __future__ import annotations

import pytest

import lorarlhf
from lorarlhf.data import load_prompts
from lorarlhf.rewards import exact_answer, final_answer, format_match, length_penalty, numeric_answer, weighted
from lorarlhf.training.rewards import check_reward_columns, reward_functions

# Rows in GSM8K's public schema: a question and an answer whose last line is "#### <number>".
GSM8K_ROWS = [
    {"question": "Tom has 3 apples and buys 4 more. How many?", "answer": "3 + 4 = 7\n#### 7"},
    {"question": "A book costs $12 and a pen $3. Total?", "answer": "12 + 3 = 15\n#### 15"},
    {"question": "What is 1,000 + 234?", "answer": "1000 + 234 = 1234\n#### 1,234"},
]


def test_final_answer_reads_gsm8k_boxed_and_plain_endings():
    assert final_answer("so 3 + 4 = 7\n#### 7") == "7"
    assert final_answer("The answer is \\boxed{42}.") == "42"
    assert final_answer("first 3, then 5, finally -2.5") == "-2.5"
    assert final_answer("no number here") is None


def test_numeric_answer_matches_numbers_however_they_are_written():
    answers = [row["answer"] for row in GSM8K_ROWS]
    completions = ["3 and 4 make 7.", "That is $15.00", "It is 1234"]
    assert numeric_answer([""] * 3, completions, answers) == [1.0, 1.0, 1.0]
    assert numeric_answer([""] * 3, ["8", "no idea", "#### 1,233"], answers) == [0.0, 0.0, 0.0]
    assert exact_answer([""] * 2, ["The answer: \\boxed{Paris}", "rome"], ["paris", "Paris"]) == [1.0, 0.0]


def test_format_length_and_weighted_sum():
    completions = ["reasoning... #### 7", "7", "one two three four five six"]
    assert format_match(r"####\s*\S+")([""] * 3, completions) == [1.0, 0.0, 0.0]
    assert length_penalty(3)([""] * 3, completions) == [0.0, 0.0, -1.0]
    both = weighted((numeric_answer, 1.0), (format_match(r"####"), 0.5))
    assert both([""] * 3, completions, answer=["7", "7", "8"]) == [1.5, 1.0, 0.0]


def test_load_prompts_keeps_the_other_fields_of_each_row_as_columns():
    rows = [{"prompt": r["question"], "answer": r["answer"], "id": i} for i, r in enumerate(GSM8K_ROWS)]
    rows.append(dict(rows[0], answer="a duplicate prompt's row is not read twice"))
    prompts = load_prompts(rows)
    assert list(prompts) == [r["question"] for r in GSM8K_ROWS]
    assert prompts.columns == {"answer": [r["answer"] for r in GSM8K_ROWS], "id": [0, 1, 2]}


def test_a_reward_function_asking_for_a_missing_column_fails_naming_it():
    def needs_solution(prompts, completions, solution):
        return [0.0] * len(completions)

    with pytest.raises(ValueError, match=r"needs a column 'solution'.*their columns: \['answer'\]"):
        check_reward_columns(reward_functions(needs_solution), {"answer": []})
    with pytest.raises(ValueError, match="needs a column 'answer'"):
        check_reward_columns(reward_functions(weighted((numeric_answer, 1.0))), {})
    check_reward_columns(reward_functions(lambda prompts, completions: []), {})  # the two-argument form
    check_reward_columns(reward_functions(numeric_answer), {"answer": []})


@pytest.mark.kernels
def test_grpo_gives_each_reward_call_the_answers_of_its_prompts(tiny_model_dir, tmp_path, monkeypatch):
    rows = [{"prompt": r["question"], "answer": r["answer"]} for r in GSM8K_ROWS]
    answer_of = {row["prompt"]: row["answer"] for row in rows}
    calls = []

    def checks_answers(prompts, completions, answer):
        calls.append(len(prompts))
        assert answer == [answer_of[prompt] for prompt in prompts]  # aligned with each prompt, group by group
        return numeric_answer(prompts, completions, answer)

    result = lorarlhf.align(
        str(tiny_model_dir), rows, method="grpo", reward_fn=checks_answers, output_dir=tmp_path / "run",
        steps=2, batch_size=2, group_size=2, max_new_tokens=4, samples=0, quantize=None,
    )  # fmt: skip
    assert calls and all(n == 4 for n in calls) and "rl/reward_last" in result.metrics

    def loads_nothing(*args, **kwargs):
        raise AssertionError("the model was loaded before the reward function was checked")

    monkeypatch.setattr(lorarlhf.HydraModel, "from_pretrained", loads_nothing)
    with pytest.raises(ValueError, match="needs a column 'solution'"):
        lorarlhf.align(
            str(tiny_model_dir), rows, method="grpo", output_dir=tmp_path / "bad",
            reward_fn=lambda prompts, completions, solution: [0.0] * len(prompts),
        )  # fmt: skip
