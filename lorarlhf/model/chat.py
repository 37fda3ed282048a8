"""The one rendering rule: how a prompt (a string or a conversation) and a response become token ids.

A chat model is trained, scored and sampled on exactly the ids its own template gives,
`tokenizer.apply_chat_template(messages)`: the prompt is the template's generation prompt, the response is
what the template writes for the assistant's turn, through its end-of-turn token, and no special token is
added twice (the template writes BOS itself where the model wants one). A model without a template, or
`chat_template="never"`, keeps the plain rule: the tokenizer's BOS + the prompt, the response + EOS.

The prompt and the whole conversation are rendered and tokenized as the template gives them, and the
response is the conversation's ids after the prompt's, so the seam between them is the template's own
(a SentencePiece tokenizer tokenizing the response alone would add a prefix space the template never has).
The response stops after its end-of-turn token: sampling stops there too, so what follows it (Qwen's and
Gemma's newline) is never trained on.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cached_property, lru_cache
from typing import NamedTuple

CHAT_TEMPLATE_CHOICES = ("auto", "never")
"""Besides these, chat_template may be a Jinja template string, used instead of the tokenizer's own."""
_PROBE = "4242"  # an assistant reply the probe renders, to find what a template writes after a reply


class Message(NamedTuple):
    role: str
    content: str


class Conversation(tuple):
    """A prompt given as messages: a system prompt, the history, the last user turn.

    Immutable and hashable, so it keys dicts and compares like a string prompt does.
    """

    def __new__(cls, messages):
        if isinstance(messages, str) or not hasattr(messages, "__iter__"):
            raise TypeError(f"a conversation is a list of messages, not {type(messages).__name__}")
        normalised = []
        for i, message in enumerate(messages):
            role, content = (
                (message.get("role"), message.get("content"))
                if isinstance(message, Mapping)
                else (message if isinstance(message, tuple) and len(message) == 2 else (None, None))
            )
            if not isinstance(role, str) or not isinstance(content, str):
                raise TypeError(f"message {i} must have a string 'role' and a string 'content', got {message!r}")
            normalised.append(Message(role, content))
        if not normalised:
            raise ValueError("a conversation needs at least one message")
        return super().__new__(cls, normalised)

    def dicts(self) -> list[dict[str, str]]:
        """The messages as {"role", "content"} dicts: what chat templates, JSON and reward functions take."""
        return [{"role": m.role, "content": m.content} for m in self]

    def __repr__(self) -> str:
        return f"Conversation({self.dicts()!r})"


def as_prompt(prompt):
    """A prompt as the rule reads it: a string, or a Conversation (from any list of message dicts)."""
    return prompt if isinstance(prompt, str | Conversation) else Conversation(prompt)


def jsonable(prompt):
    """A prompt as it is written to JSON files: the string, or the list of message dicts."""
    return prompt.dicts() if isinstance(prompt, Conversation) else prompt


def plain_text(prompt) -> str:
    """A conversation without a template: "role: content" lines, then "assistant:", which speaks next."""
    prompt = as_prompt(prompt)
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{m.role}: {m.content}" for m in prompt) + "\nassistant:"


def check_chat_template(chat_template) -> str:
    if not isinstance(chat_template, str) or not (
        chat_template in CHAT_TEMPLATE_CHOICES or "{{" in chat_template or "{%" in chat_template
    ):
        raise ValueError(
            f"chat_template={chat_template!r} is not supported; choose 'auto' (the tokenizer's template when it "
            "has one), 'never' (plain text: BOS + prompt, response + EOS) or a Jinja chat template string"
        )
    return chat_template


class ChatFormat:
    """The rendering rule for one tokenizer: its chat template (or the one given), or the plain rule.

    chat_template: "auto" uses the tokenizer's template when it has one; "never" keeps plain text even on a
    chat model; a Jinja string is used instead of the tokenizer's own. A string prompt on a templated model
    is one user message; a conversation without a template is rendered as plain "role: content" lines.
    """

    def __init__(self, tokenizer, chat_template: str = "auto", generation_config=None):
        self.tokenizer, self.chat_template = tokenizer, check_chat_template(chat_template)
        own = getattr(tokenizer, "chat_template", None)
        if isinstance(own, dict):  # several named templates: the default one renders chats
            own = own.get("default")
        self.template = {"auto": own or None, "never": None}.get(chat_template, chat_template)
        self.generation_config = generation_config
        self._prompt_ids = lru_cache(maxsize=8192)(self._render_prompt_ids)
        self._response_ids = lru_cache(maxsize=8192)(self._render_response_ids)

    @classmethod
    def of(cls, tokenizer_or_format) -> ChatFormat:
        """A ChatFormat as given, or the "auto" one of a tokenizer (what a plain tokenizer argument means)."""
        if isinstance(tokenizer_or_format, ChatFormat):
            return tokenizer_or_format
        return cls(tokenizer_or_format)

    @property
    def uses_template(self) -> bool:
        return self.template is not None

    # ----------------------------------------------------------------- text

    def messages(self, prompt) -> list[dict[str, str]]:
        prompt = as_prompt(prompt)
        return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt.dicts()

    def render(self, messages: list[dict], *, generation_prompt: bool) -> str:
        try:
            return self.tokenizer.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=generation_prompt, chat_template=self.template
            )
        except Exception as error:  # jinja's raise_exception: e.g. a system role the template rejects
            roles = [m["role"] for m in messages]
            raise ValueError(f"the chat template cannot render a conversation with roles {roles}: {error}") from error

    def prompt_text(self, prompt) -> str:
        """The text the model reads before it answers: the template's generation prompt, or the plain text."""
        if self.uses_template:
            return self.render(self.messages(prompt), generation_prompt=True)
        return plain_text(prompt)

    # ----------------------------------------------------------------- ids

    def prompt_ids(self, prompt) -> list[int]:
        """The ids the model reads before it answers, with each special token once."""
        return list(self._prompt_ids(as_prompt(prompt)))

    def response_ids(self, prompt, response: str) -> list[int]:
        """The ids of the assistant's turn after `prompt`, through its end-of-turn token (plain: EOS)."""
        return list(self._response_ids(as_prompt(prompt), response))

    def _tokens(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _render_prompt_ids(self, prompt) -> tuple[int, ...]:
        if self.uses_template:
            return tuple(self._tokens(self.prompt_text(prompt)))
        text = plain_text(prompt)
        bos = self.tokenizer.bos_token  # a prompt that already begins with BOS does not get a second one
        return tuple(self.tokenizer(text, add_special_tokens=not (bos and text.startswith(bos)))["input_ids"])

    def _render_response_ids(self, prompt, response: str) -> tuple[int, ...]:
        if not self.uses_template:
            if self.tokenizer.eos_token_id is None:
                raise ValueError("the tokenizer has no EOS token, which ends every response")
            return (*self._tokens(response), self.tokenizer.eos_token_id)
        messages = self.messages(prompt)
        prompt_text = self.render(messages, generation_prompt=True)
        whole = self.render([*messages, {"role": "assistant", "content": response}], generation_prompt=False)
        # A template may write the history otherwise once a reply follows (Mistral v0.3 then drops the system
        # prompt): the reply is then the one it writes after a plain user turn, to the prompt as sampled.
        turn_text = whole[len(prompt_text) :] if whole.startswith(prompt_text) else self._turn_text(response)
        prompt_ids, whole_ids = self._prompt_ids(prompt), self._tokens(prompt_text + turn_text)
        if tuple(whole_ids[: len(prompt_ids)]) == prompt_ids:
            turn = whole_ids[len(prompt_ids) :]
        else:  # the tokens merge across the seam: keep the prompt as sampled
            turn = self._tokens(turn_text)
        ends = [i for i, token in enumerate(turn) if token in self.end_ids]
        return tuple(turn[: ends[0] + 1] if ends else turn)

    @property
    def end_ids(self) -> tuple[int, ...]:
        """Every id that ends a response: the tokenizer's EOS, each eos_token_id of the generation_config
        (Llama 3 lists three, Qwen2.5 two) and the token the template ends an assistant turn with
        (Gemma's <end_of_turn>, which its tokenizer does not call EOS)."""
        ids = [self.tokenizer.eos_token_id]
        configured = getattr(self.generation_config, "eos_token_id", None)
        ids += configured if isinstance(configured, list | tuple) else [configured]
        ids += self._turn_end
        return tuple(dict.fromkeys(int(i) for i in ids if i is not None))

    def _turn_text(self, response: str) -> str:
        """What the template writes for an assistant reply after a one-message user prompt."""
        probe = [{"role": "user", "content": "2 + 2?"}]
        prompt = self.render(probe, generation_prompt=True)
        whole = self.render([*probe, {"role": "assistant", "content": response}], generation_prompt=False)
        if not whole.startswith(prompt):
            raise ValueError(
                "the chat template writes a conversation with a different prompt than its generation prompt, so "
                "a response cannot be split from it; pass chat_template='never' or a template of your own"
            )
        return whole[len(prompt) :]

    @cached_property
    def _turn_end(self) -> list[int]:
        """The first special token the template writes after an assistant reply, found by rendering one."""
        if not self.uses_template:
            return []
        try:
            turn = self._turn_text(_PROBE)
        except ValueError:
            return []
        after = turn[turn.rfind(_PROBE) + len(_PROBE) :]
        special = set(self.tokenizer.all_special_ids) | {
            i for i, token in self.tokenizer.added_tokens_decoder.items() if token.special
        }
        return [next((i for i in self._tokens(after) if i in special), None)]
