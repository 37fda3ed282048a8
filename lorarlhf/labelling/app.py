"""The labelling page: a Gradio app over a LabellingSession, served on this machine or inline in a notebook.

Everything the model wrote, and every prompt, is shown in a read-only text box, never as HTML or Markdown,
so a response that contains markup shows that markup as text; characters that draw nothing or turn the
text around are shown as ⟨U+XXXX⟩, and responses that read the same are marked (text.py). Analytics, share
links, the API page and server-side rendering are off; fonts and scripts come from the installed package,
so the page works offline and calls nothing outside this server. RequestGuard refuses requests from anywhere
but the page.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path

from lorarlhf.labelling.candidates import read_candidates
from lorarlhf.labelling.guard import COLAB_FRAME_ANCESTORS, FRAME_ANCESTORS, RequestGuard, allowed_hosts, is_loopback
from lorarlhf.labelling.session import LabellingSession, Shown
from lorarlhf.labelling.text import look_alikes, unicode_problem, visible
from lorarlhf.labelling.thumbs import ShownResponse, ThumbsSession
from lorarlhf.labelling.votes import VoteLog
from lorarlhf.model.chat import plain_text

logger = logging.getLogger("lorarlhf.labelling")

MAX_RANKED = 9
"""Responses per item the page can rank: one digit key each."""

KEYS_HELP = (
    "**Keys**: `A` or `←` A is better · `B` or `→` B is better · `T` or `↓` tie · `S` skip for later. "
    "Ranking: press the numbers best first (`1`–`9`), `Backspace` to undo, `Enter` to submit. "
    "`Esc` leaves the reason box."
)
THUMBS_KEYS_HELP = (
    "**Keys**: `U` or `↑` thumbs up: a good answer · `D` or `↓` thumbs down: a bad one · `S` skip for later. "
    "`Esc` leaves the reason box."
)

# Keyboard shortcuts click the page's own buttons, so a key does exactly what the click does.
MIN_PAUSE_MS = 500
"""Judgements closer together than this are one (a double click); nobody reads a new pair faster."""

KEYS_SCRIPT = """<script>
(() => {
  const shown = (id) => {
    const element = document.getElementById(id);
    return element && element.offsetParent !== null ? element : null;
  };
  const pairKeys = {a: "vote-a", ArrowLeft: "vote-a", 1: "vote-a", b: "vote-b", ArrowRight: "vote-b",
                    2: "vote-b", t: "vote-tie", ArrowDown: "vote-tie", s: "skip"};
  const rankKeys = {Backspace: "rank-undo", Enter: "rank-submit", s: "skip"};
  const thumbKeys = {u: "thumb-up", ArrowUp: "thumb-up", d: "thumb-down", ArrowDown: "thumb-down", s: "skip"};
  // The second click of a double click would land on the next item, unseen: a judgement needs a pause.
  const judging = new Set(["vote-a", "vote-b", "vote-tie", "rank-submit", "thumb-up", "thumb-down", "skip"]);
  let lastJudgement = -Infinity;
  document.addEventListener("click", (event) => {
    const button = event.target.closest ? event.target.closest("button") : null;
    if (!button || !judging.has(button.id)) return;
    if (event.timeStamp - lastJudgement < MIN_PAUSE_MS) {
      event.stopImmediatePropagation();
      event.preventDefault();
      return;
    }
    lastJudgement = event.timeStamp;
  }, true);
  document.addEventListener("keydown", (event) => {
    if (event.repeat) return;  // a key held down judges once
    const target = event.target;
    const typing = target && (target.tagName === "TEXTAREA" || target.tagName === "INPUT")
      && !target.readOnly && !target.disabled;
    if (typing) {
      if (event.key === "Escape") target.blur();
      return;
    }
    if (event.ctrlKey || event.metaKey || event.altKey) return;
    const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
    const id = shown("vote-a") ? pairKeys[key] : shown("thumb-up") ? thumbKeys[key]
      : (/^[1-9]$/.test(key) ? "rank-" + key : rankKeys[key]);
    const button = id && shown(id);
    if (button) {
      event.preventDefault();
      button.click();
    }
  });
})();
</script>""".replace("MIN_PAUSE_MS", str(MIN_PAUSE_MS))

CSS = """
#prompt textarea, .response textarea { font-family: ui-monospace, monospace; }
#status { min-height: 1.5em; }
#notes { border-left: 4px solid #d97706; padding-left: 0.75em; }
"""

HIDDEN_NOTE = (
    "⟨U+…⟩ marks a character that draws nothing or changes the direction of the text around it; "
    "the response holds it exactly as written."
)


@dataclass
class LabellingServer:
    """A running labelling page. close() stops it; wait() serves until Ctrl-C."""

    url: str
    session: LabellingSession | ThumbsSession
    blocks: object

    def close(self) -> None:
        self.blocks.close(verbose=False)

    def wait(self) -> None:
        try:
            self.blocks.block_thread()
        finally:
            self.close()


def label(
    candidates,
    *,
    annotator: str,
    out=None,
    thumbs: bool = False,
    guidelines: str | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    inline: bool | None = None,
    open_browser: bool = False,
    shuffle: bool = True,
    allow_hosts: tuple[str, ...] = (),
) -> LabellingServer:
    """Serve the labelling page for `candidates` (a file from `lorarlhf sample`) and return at once.

    Each judgement is appended to `out` as soon as it is made; opening the page again, or calling label()
    again after a crash, continues at this annotator's first unlabelled item. Several annotators can label
    into one `out`, each with their own server.
    thumbs: judge each response on its own, thumbs up or down (unpaired labels, for method="kto"), instead
        of comparing an item's responses. out: None is votes.jsonl, or feedback.jsonl with thumbs.
    guidelines: Markdown (or a path to a .md/.txt file) shown above the items: what makes an answer better.
        None shows general default guidelines.
    host: 127.0.0.1 serves this machine only; give 0.0.0.0 to let others on the network reach the page.
    allow_hosts: more host names the page may be reached by (e.g. a LAN name), when host is not loopback.
    port: None takes the first free port from 7860. inline: show the page in the notebook (None: when in
    one). The returned server's .url is the page; .close() stops it and .wait() serves until Ctrl-C.
    """
    try:
        import gradio as gr
    except ImportError as error:
        raise ImportError(
            "the labelling page needs Gradio, an optional extra: pip install 'lorarlhf[label]'"
        ) from error

    items = read_candidates(candidates)
    longest = max(len(item.responses) for item in items)
    if longest > MAX_RANKED:
        raise ValueError(f"{candidates}: an item has {longest} responses; the page ranks at most {MAX_RANKED}")
    log = VoteLog(out if out is not None else "feedback.jsonl" if thumbs else "votes.jsonl")
    title = visible(Path(str(candidates)).name)
    if thumbs:
        session = ThumbsSession(items, log, annotator, shuffle=shuffle)
        blocks = build_thumbs_page(session, _guidelines_text(guidelines, thumbs=True), title=title)
    else:
        session = LabellingSession(items, log, annotator, shuffle=shuffle)
        blocks = build_page(session, longest, _guidelines_text(guidelines), title=title)
    if "google.colab" in sys.modules:  # reachable only through Colab's own proxy, under Colab's host names
        guard = _middleware(None, f"{FRAME_ANCESTORS} {COLAB_FRAME_ANCESTORS}")
    else:
        guard = _middleware(allowed_hosts(host, allow_hosts), FRAME_ANCESTORS)
    if not is_loopback(host):
        logger.warning("serving on %s: anyone who can reach this machine can open the page and vote", host)
    blocks.launch(
        server_name=host,
        server_port=port,
        share=False,
        inline=inline,
        inbrowser=open_browser,
        prevent_thread_lock=True,
        quiet=True,
        show_error=True,
        footer_links=[],
        ssr_mode=False,
        pwa=False,
        mcp_server=False,
        enable_monitoring=False,
        max_file_size=1,
        app_kwargs={"middleware": [guard]},
        theme=gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]),
        css=CSS,
        head=KEYS_SCRIPT,
    )
    return LabellingServer(blocks.local_url, session, blocks)


def _middleware(hosts, frame_ancestors: str):
    from starlette.middleware import Middleware

    return Middleware(RequestGuard, hosts=hosts, frame_ancestors=frame_ancestors)


DEFAULT_GUIDELINES = """Prefer the response that **answers the prompt** best: correct first, then helpful and clear,
then polite. Judge what is written, not its length. If neither is better, or both are equally bad, choose **tie**;
if you cannot judge (you do not know the answer), **skip**. Write a short reason when the choice was hard.

*These are the default guidelines: write your own in a .md file and pass `--guidelines FILE`, so every
annotator judges by the same rules.*"""


DEFAULT_THUMBS_GUIDELINES = """Give a **thumbs up** to a response you would be glad to receive: it answers the prompt,
correctly, helpfully and politely. Give a **thumbs down** to one that is wrong, unhelpful or rude. Judge each on its
own, not against others you have seen. If you cannot judge (you do not know the answer), **skip**.

*These are the default guidelines: write your own in a .md file and pass `--guidelines FILE`, so every
annotator judges by the same rules.*"""


def _guidelines_text(guidelines: str | None, *, thumbs: bool = False) -> str:
    """Guidelines are a file's path or the text itself; one word ending in .md or .txt is a path."""
    if guidelines is None:
        return DEFAULT_THUMBS_GUIDELINES if thumbs else DEFAULT_GUIDELINES
    one_line = "\n" not in guidelines
    if one_line and Path(guidelines).is_file():
        try:
            return Path(guidelines).read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as error:
            raise ValueError(f"guidelines file {visible(guidelines)} is not UTF-8 text ({error})") from None
    if one_line and len(guidelines.split()) == 1 and guidelines.endswith((".md", ".txt")):
        raise FileNotFoundError(f"guidelines file {visible(guidelines)} does not exist")
    if unicode_problem(guidelines) is not None:  # the page could not show it
        raise ValueError(f"the guidelines text is {unicode_problem(guidelines)}")
    return guidelines


def build_page(session: LabellingSession, longest: int, guidelines: str, *, title: str):
    """The Gradio Blocks of the page; every event handler is private to the page (not an API endpoint)."""
    import gradio as gr

    with gr.Blocks(title=f"lorarlhf label: {title}", analytics_enabled=False) as page:
        progress, prompt, notes = _page_top(session.annotator, guidelines, title)
        with gr.Row(equal_height=True):
            responses = [
                gr.Textbox(
                    interactive=False, elem_id=f"response-{p + 1}", elem_classes="response", lines=4, max_lines=24
                )
                for p in range(longest)
            ]
        with gr.Row(visible=False) as pair_row:
            vote_a = gr.Button("A is better", elem_id="vote-a", variant="primary")
            vote_tie = gr.Button("Tie", elem_id="vote-tie")
            vote_b = gr.Button("B is better", elem_id="vote-b", variant="primary")
        with gr.Row(visible=False) as rank_row:
            rank_buttons = [gr.Button(str(p + 1), elem_id=f"rank-{p + 1}", min_width=60) for p in range(longest)]
            rank_undo = gr.Button("Undo", elem_id="rank-undo")
            rank_submit = gr.Button("Submit ranking", elem_id="rank-submit", variant="primary")
        ranking = gr.Markdown(elem_id="ranking", visible=False)
        reason, skip, status, item_id = _page_bottom(KEYS_HELP)

        view = [progress, prompt, notes, *responses, pair_row, rank_row, *rank_buttons, ranking, reason, skip]
        view += [status, item_id]

        def render(shown: Shown | None, message: str = ""):
            done = f"{session.done} of {session.total} labelled"
            if shown is None:
                return _finished(session, "items", len(view), message)
            texts, pairwise = shown.responses, len(shown.order) == 2
            names = ["A", "B"] if pairwise else [str(p + 1) for p in range(len(texts))]
            # What is shown, not what is stored: the vote records the texts of shown.item, unchanged.
            prompt_text, shown_texts = visible(plain_text(shown.item.prompt)), [visible(text) for text in texts]
            boxes = [
                gr.update(value=shown_texts[p], label=names[p], visible=True)
                if p < len(texts)
                else gr.update(visible=False)
                for p in range(longest)
            ]
            note = _notes(texts, names, hidden=prompt_text != plain_text(shown.item.prompt) or shown_texts != texts)
            buttons = [gr.update(visible=not pairwise and p < len(texts)) for p in range(longest)]
            return [
                f"**{done}** · {session.total - session.done} to go",
                gr.update(value=prompt_text, visible=True),
                gr.update(value=note, visible=bool(note)),
                *boxes,
                gr.update(visible=pairwise),
                gr.update(visible=not pairwise),
                *buttons,
                gr.update(value=_ranking_text(session.draft(shown.item.id)), visible=not pairwise),
                gr.update(value="", visible=True),
                gr.update(visible=True),
                message,
                shown.item.id,
            ]

        def on_vote(label: str):
            def handler(current, why):
                if current is None:
                    return render(session.next())
                recorded = session.vote(current, label, why or "")
                said = {"a": "A is better", "b": "B is better", "tie": "a tie"}[label]
                return render(session.next(), f"Recorded: {said}." if recorded else "Already recorded.")

            return handler

        def on_place(position: int):
            def handler(current):
                return gr.update() if current is None else _ranking_text(session.place(current, position))

            return handler

        def on_unplace(current):
            return gr.update() if current is None else _ranking_text(session.unplace(current))

        def on_submit(current, why):
            if current is None:
                return render(session.next())
            draft, count = session.draft(current), len(session.shown(current).order)
            if len(draft) != count:
                message = f"Rank every response first: {count - len(draft)} to place."
                return [gr.update()] * (len(view) - 2) + [message, current]
            recorded = session.rank(current, draft, why or "")
            return render(session.next(), "Recorded the ranking." if recorded else "Already recorded.")

        def on_skip(current):
            if current is not None:
                session.skip(current)
            return render(session.next(), "Skipped; it comes back after the others.")

        # One queue, one event at a time, in the order they were made: quick key presses apply in order.
        events = {"api_visibility": "private", "concurrency_id": "page", "concurrency_limit": 1}
        page.load(lambda: render(session.next()), None, view, **events)
        for button, label_ in ((vote_a, "a"), (vote_b, "b"), (vote_tie, "tie")):
            button.click(on_vote(label_), [item_id, reason], view, **events)
        for position, button in enumerate(rank_buttons):
            button.click(on_place(position), [item_id], [ranking], trigger_mode="multiple", **events)
        rank_undo.click(on_unplace, [item_id], [ranking], trigger_mode="multiple", **events)
        rank_submit.click(on_submit, [item_id, reason], view, **events)
        skip.click(on_skip, [item_id], view, **events)
    return page


def build_thumbs_page(session: ThumbsSession, guidelines: str, *, title: str):
    """The page of the thumbs mode: one response at a time, thumbs up or down."""
    import gradio as gr

    with gr.Blocks(title=f"lorarlhf label: {title}", analytics_enabled=False) as page:
        progress, prompt, notes = _page_top(session.annotator, guidelines, title)
        response = gr.Textbox(
            label="Response", interactive=False, elem_id="response-1", elem_classes="response", lines=4, max_lines=24
        )
        with gr.Row(visible=False) as thumbs_row:
            up = gr.Button("👍 Good answer", elem_id="thumb-up", variant="primary")
            down = gr.Button("👎 Bad answer", elem_id="thumb-down", variant="stop")
        reason, skip, status, unit_id = _page_bottom(THUMBS_KEYS_HELP)
        view = [progress, prompt, notes, response, thumbs_row, reason, skip, status, unit_id]

        def render(shown: ShownResponse | None, message: str = ""):
            if shown is None:
                return _finished(session, "responses", len(view), message)
            prompt_text, text = visible(plain_text(shown.item.prompt)), visible(shown.response)
            hidden = prompt_text != plain_text(shown.item.prompt) or text != shown.response
            note = _notes([shown.response], ["the response"], hidden=hidden)
            return [
                f"**{session.done} of {session.total} labelled** · {session.total - session.done} to go",
                gr.update(value=prompt_text, visible=True),
                gr.update(value=note, visible=bool(note)),
                gr.update(value=text, visible=True),
                gr.update(visible=True),
                gr.update(value="", visible=True),
                gr.update(visible=True),
                message,
                shown.id,
            ]

        def on_judge(good: bool):
            def handler(current, why):
                if current is None:
                    return render(session.next())
                recorded = session.judge(current, good, why or "")
                said = "thumbs up" if good else "thumbs down"
                return render(session.next(), f"Recorded: {said}." if recorded else "Already recorded.")

            return handler

        def on_skip(current):
            if current is not None:
                session.skip(current)
            return render(session.next(), "Skipped; it comes back after the others.")

        events = {"api_visibility": "private", "concurrency_id": "page", "concurrency_limit": 1}
        page.load(lambda: render(session.next()), None, view, **events)
        up.click(on_judge(True), [unit_id, reason], view, **events)
        down.click(on_judge(False), [unit_id, reason], view, **events)
        skip.click(on_skip, [unit_id], view, **events)
    return page


def _page_top(annotator: str, guidelines: str, title: str):
    """The heading, the guidelines, the progress line, the prompt and the notes about it, in both modes."""
    import gradio as gr

    gr.Markdown(f"### Labelling `{title}` as **{_markdown_text(visible(annotator))}**")
    if guidelines:
        with gr.Accordion("Guidelines", open=True):
            gr.Markdown(guidelines, elem_id="guidelines")
    progress = gr.Markdown(elem_id="progress")
    prompt = gr.Textbox(label="Prompt", interactive=False, elem_id="prompt", lines=2, max_lines=12)
    notes = gr.Markdown(elem_id="notes", visible=False)
    return progress, prompt, notes


def _page_bottom(keys_help: str):
    """The reason box, the skip button, the status line and the keys, and the shown item's id."""
    import gradio as gr

    reason = gr.Textbox(label="Reason (optional)", elem_id="reason", lines=1, max_lines=4)
    skip = gr.Button("Skip for later", elem_id="skip", size="sm")
    status = gr.Markdown(elem_id="status")
    gr.Markdown(keys_help)
    return reason, skip, status, gr.State(None)


def _finished(session, what: str, count: int, message: str) -> list:
    """The view once everything is labelled: the count and the file, every control hidden."""
    import gradio as gr

    where = visible(str(session.log.path))
    finished = f"**All {session.total} {what} are labelled.** The labels are in `{where}`."
    return [finished] + [gr.update(visible=False)] * (count - 3) + [message, None]


def _notes(texts: list[str], names: list[str], *, hidden: bool) -> str:
    """What the annotator should know before reading: responses that read the same, hidden characters."""
    lines = [
        f"**{names[i]} and {names[j]} read the same but are different texts:** {_markdown_text(how)}."
        for i, j, how in look_alikes(texts, names)
    ]
    return "\n\n".join(lines + ([HIDDEN_NOTE] if hidden else []))


def _ranking_text(positions: list[int]) -> str:
    order = " › ".join(str(p + 1) for p in positions) if positions else "press the numbers, best first"
    return f"**Your ranking, best first:** {order}"


def _markdown_text(text: str) -> str:
    """Text for a Markdown line, with every markup character escaped."""
    return "".join("\\" + ch if ch in "\\`*_{}[]()#+-.!<>|~&" else ch for ch in text)
