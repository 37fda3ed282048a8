"""The labelling page in a real headless Chromium: clicks and keys, reload and resume, inert markup, hidden
characters shown, no outside calls, refused foreign requests, a valid framing policy, and a server killed
part-way through labelling.

Chromium is Debian's (`apt-get install chromium`, which .ci/run does), driven by Playwright with that
executable; CI fails rather than skips when it is missing.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from lorarlhf.labelling.app import MIN_PAUSE_MS
from lorarlhf.labelling.guard import FRAME_ANCESTORS

pytestmark = [
    pytest.mark.skipif(
        os.environ.get("TRITON_INTERPRET") == "1",
        reason="the browser and the server: runs once, on the PyTorch kernels",
    ),
    # The page's pauses and key handling are timed: beside another test worker, one of these once waited out its
    # 30 s for a key press to show, so the README's test command runs them on their own, after the others.
    pytest.mark.browser,
]

CHROMIUM = os.environ.get("LORARLHF_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # Chromium's own calls home; the page's requests are what is checked
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "labelling-page.png"
XSS_PROMPT = "Reply to <b>this</b> <script>window.__pwned = 'prompt'; alert('prompt')</script>"
XSS_IMG = "<img src=x onerror=\"window.__pwned = 'img'; alert('img')\">"
XSS_SCRIPT = "<script>window.__pwned = 'script'</script><svg onload=\"window.__pwned = 'svg'\"></svg>"
# Click "A is better", then click it again the moment the next item shows; resolves to the time between.
DOUBLE_CLICK = """() => new Promise((resolve) => {
  const progress = document.querySelector("#progress");
  const start = performance.now();
  const observer = new MutationObserver(() => {
    if (!progress.innerText.startsWith("1 of")) return;
    observer.disconnect();
    document.getElementById("vote-a").click();
    resolve(performance.now() - start);
  });
  observer.observe(progress, {subtree: true, childList: true, characterData: true});
  document.getElementById("vote-a").click();
})"""
CANDIDATES = [
    {"id": "kind", "prompt": "Say hello to a new neighbour.", "responses": ["Welcome! Nice to meet you.", "What?"]},
    {"id": "markup", "prompt": XSS_PROMPT, "responses": [XSS_IMG, XSS_SCRIPT]},
    {
        "id": "rank",
        "prompt": "Name a prime number.",
        "responses": ["7", "Nine, I think.", "2 is the smallest prime."],
    },
    {"id": "sum", "prompt": "What is 2 + 2?", "responses": ["4", "5"]},
    {"id": "sky", "prompt": "What colour is the sky?", "responses": ["Blue on a clear day.", "Plaid."]},
]


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail(f"no Chromium at {CHROMIUM}: .ci/run installs Debian's chromium package")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def candidates(tmp_path):
    path = tmp_path / "candidates.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in CANDIDATES), encoding="utf-8")
    return path


class Page:
    """A browser tab on the labelling page, recording every request, dialog and console message it makes."""

    def __init__(self, browser, url: str):
        self.page = browser.new_page(viewport={"width": 1200, "height": 900})
        self.requests: list[str] = []
        self.dialogs: list[str] = []
        self.console: list[str] = []
        self.page.on("console", lambda message: self.console.append(f"{message.type}: {message.text}"))
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.page.on("dialog", lambda dialog: (self.dialogs.append(dialog.message), dialog.dismiss()))
        self.url = url
        self.last_judgement = 0.0
        self.open()

    def open(self):
        self.page.goto(self.url)
        self.page.wait_for_function("document.querySelector('#progress')?.innerText.includes('labelled')")

    def text(self, element_id: str) -> str:
        return self.page.locator(f"#{element_id} textarea").input_value()

    def shown(self) -> tuple[str, list[str]]:
        """The prompt and the responses, in the order the page shows them."""
        responses = []
        for position in range(1, 4):
            box = self.page.locator(f"#response-{position} textarea")
            if box.count() and box.is_visible():
                responses.append(box.input_value())
        return self.text("prompt"), responses

    def progress(self) -> str:
        return self.page.locator("#progress").inner_text()

    def wait_for_done(self, count: int):
        self.page.wait_for_function(
            f"document.querySelector('#progress')?.innerText.match(/^(\\D*){count} of|All/)", timeout=15_000
        )
        assert self.progress().startswith((f"{count} of", "All"))

    def wait_for_ranking(self, order: str):
        """Until the ranking line ends with `order`; a timeout says what it showed instead."""
        try:
            self.page.wait_for_function(
                f"document.querySelector('#ranking')?.innerText.trim().endsWith({json.dumps(order)})", timeout=15_000
            )
        except Exception as error:
            shown = self.page.evaluate("document.querySelector('#ranking')?.innerText")
            raise AssertionError(f"the ranking shows {shown!r}, not ending with {order!r}") from error

    def press(self, key: str):
        self.page.keyboard.press(key)

    def judge(self, key_or_button: str):
        """A vote, skip or submit, by key or by a click on the button of that id: after the page's pause
        between judgements (MIN_PAUSE_MS), which a person takes anyway to read the next item."""
        wait = self.last_judgement + MIN_PAUSE_MS / 1000 + 0.1 - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        if key_or_button.startswith("#"):
            self.page.locator(key_or_button).click()
        else:
            self.press(key_or_button)
        self.last_judgement = time.monotonic()


def read_votes(path: Path) -> list[tuple]:
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    return [(r["item"], r["a"], r["b"], r["votes"], r["annotators"], r.get("reason")) for r in records]


def test_labelling_with_clicks_and_keys_reloading_and_continuing(browser, candidates, tmp_path):
    from lorarlhf.labelling import label

    votes = tmp_path / "votes.jsonl"
    server = label(candidates, annotator="ann", out=votes, guidelines="Prefer **correct**, then kind, answers.")
    try:
        page = Page(browser, server.url)
        assert page.progress().startswith("0 of 5 labelled")
        assert "Prefer correct, then kind, answers." in page.page.locator("#guidelines").inner_text()
        expected = []

        # 1. A click on "A is better".
        prompt, (a, b) = page.shown()
        assert prompt == CANDIDATES[0]["prompt"] and {a, b} == set(CANDIDATES[0]["responses"])
        page.judge("#vote-a")
        page.wait_for_done(1)
        expected.append(("kind", a, b, ["a"], ["ann"], None))
        assert read_votes(votes) == expected  # on disk as soon as the page says so

        # 2. Markup in the prompt and the responses is shown as text and never runs; the right arrow votes B.
        prompt, (a, b) = page.shown()
        assert prompt == XSS_PROMPT and {a, b} == {XSS_IMG, XSS_SCRIPT}
        assert page.page.evaluate("window.__pwned") is None and page.dialogs == []
        assert page.page.locator("img[src='x'], svg[onload]").count() == 0
        page.judge("ArrowRight")
        page.wait_for_done(2)
        expected.append(("markup", a, b, ["b"], ["ann"], None))

        # 3. A ranking of three by keys, with a reason: 3, then 1 (the last place fills itself), Enter.
        prompt, shown = page.shown()
        assert prompt == "Name a prime number." and sorted(shown) == sorted(CANDIDATES[2]["responses"])
        page.page.locator("#reason textarea").fill("the third one explains")
        page.press("Escape")  # out of the reason box, so keys label again
        page.page.locator("#rank-3").wait_for(state="visible")  # a key does nothing before its button shows
        page.press("3")
        page.wait_for_ranking("3")
        page.press("1")
        page.wait_for_ranking("3 › 1 › 2")
        page.page.wait_for_timeout(500)  # let the buttons' transitions settle for the picture
        page.page.screenshot(path=str(tmp_path / "labelling-page.png"), full_page=True)
        if os.environ.get("LORARLHF_UPDATE_SCREENSHOT"):
            SCREENSHOT.parent.mkdir(exist_ok=True)
            shutil.copy(tmp_path / "labelling-page.png", SCREENSHOT)
        page.judge("Enter")
        page.wait_for_done(3)
        best_first = [shown[2], shown[0], shown[1]]
        reason = "the third one explains"
        expected += [
            ("rank", best_first[i], best_first[j], ["a"], ["ann"], reason) for i, j in ((0, 1), (0, 2), (1, 2))
        ]
        assert read_votes(votes) == expected

        # Reload: the page continues at the first unlabelled item.
        page.open()
        assert page.progress().startswith("3 of 5 labelled")
        assert page.shown()[0] == "What is 2 + 2?"

        # 4. Skip with S; the next item gets a tie with T; the skipped one comes back and gets a click on B.
        page.judge("s")
        page.page.wait_for_function("document.querySelector('#prompt textarea')?.value.includes('sky')")
        _, (a, b) = page.shown()
        page.judge("t")
        page.wait_for_done(4)
        expected.append(("sky", a, b, ["tie"], ["ann"], None))
        prompt, (a, b) = page.shown()
        assert prompt == "What is 2 + 2?"
        page.judge("#vote-b")
        page.page.wait_for_function("document.querySelector('#progress')?.innerText.startsWith('All 5 items')")
        expected.append(("sum", a, b, ["b"], ["ann"], None))
        assert not page.page.locator("#vote-a").is_visible()

        assert read_votes(votes) == expected
        assert page.page.evaluate("window.__pwned") is None and page.dialogs == []
        origin = server.url.rstrip("/")
        outside = [url for url in page.requests if not (url.startswith(origin) or url.startswith("data:"))]
        assert outside == []  # no analytics, fonts or scripts from anywhere else
    finally:
        server.close()


def test_requests_that_do_not_come_from_the_page_are_refused(candidates, tmp_path):
    from lorarlhf.labelling import label

    votes = tmp_path / "votes.jsonl"
    server = label(candidates, annotator="ann", out=votes)
    try:
        host = server.url.split("/")[2]

        def status(path: str, method: str = "GET", **headers) -> int:
            request = urllib.request.Request(server.url.rstrip("/") + path, method=method, headers=headers)
            if method == "POST":
                request.data = b'{"data": [], "fn_index": 0, "session_hash": "x"}'
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    policies.append(response.headers.get("Content-Security-Policy"))
                    return response.status
            except urllib.error.HTTPError as error:
                return error.code

        policies = []

        assert status("/", **{"Sec-Fetch-Site": "none", "Sec-Fetch-Mode": "navigate"}) == 200
        assert status("/", Host=f"rebound.example:{host.split(':')[1]}") == 403  # DNS rebinding
        join = "/gradio_api/queue/join"
        assert status(join, "POST", Origin="http://evil.example", **{"Content-Type": "application/json"}) == 403
        assert status(join, "POST", **{"Content-Type": "text/plain"}) == 403  # a POST without an Origin
        assert status("/config", **{"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"}) == 403
        assert not votes.exists()
        assert server.blocks.analytics_enabled is False
        assert policies == [f"frame-ancestors {FRAME_ANCESTORS}"]  # only local notebooks may frame the page
    finally:
        server.close()


def test_a_double_click_or_a_held_key_judges_one_item_and_other_sites_cannot_frame_the_page(
    browser, candidates, tmp_path
):
    from lorarlhf.labelling import label

    votes = tmp_path / "votes.jsonl"
    server = label(candidates, annotator="ann", out=votes)
    try:
        page = Page(browser, server.url)
        # A double click: the second click lands just after the page has moved on to the next item.
        elapsed_ms = page.page.evaluate(DOUBLE_CLICK)
        assert elapsed_ms < MIN_PAUSE_MS, "the page answered too slowly for this check"
        page.page.wait_for_timeout(MIN_PAUSE_MS + 300)  # time for a second vote to arrive, were there one
        assert page.progress().startswith("1 of 5") and [vote[0] for vote in read_votes(votes)] == ["kind"]
        # A key held down: the browser repeats it after the page has moved on.
        time.sleep(MIN_PAUSE_MS / 1000)
        page.page.keyboard.down("b")
        page.wait_for_done(2)
        page.page.keyboard.down("b")  # a repeat
        page.page.keyboard.up("b")
        page.page.wait_for_timeout(MIN_PAUSE_MS + 300)
        assert page.progress().startswith("2 of 5") and [vote[0] for vote in read_votes(votes)] == ["kind", "markup"]

        # Another site (127.0.0.2 is another origin on this machine) puts the page in an iframe: not shown.
        framing = tmp_path / "framing"
        framing.mkdir()
        (framing / "index.html").write_text(f'<iframe id="victim" src="{server.url}"></iframe>')
        with _static_server(framing, "127.0.0.2") as port:
            attacker = browser.new_page()
            _goto(attacker, f"http://127.0.0.2:{port}/")
            attacker.wait_for_timeout(2000)
            frame = attacker.frame_locator("#victim")
            assert frame.locator("#progress").count() == 0  # the browser refused to render it framed
        # A local notebook (a page at http://localhost:PORT) may show it inline.
        with _static_server(framing, "127.0.0.1") as port:
            notebook = browser.new_page()
            _goto(notebook, f"http://localhost:{port}/")
            frame = notebook.frame_locator("#victim")
            frame.locator("#progress").filter(has_text="labelled").wait_for(timeout=15_000)
    finally:
        server.close()


@contextlib.contextmanager
def _static_server(directory: Path, address: str):
    """`python -m http.server` serving `directory` on `address`; yields its port."""
    port = _free_port(address)
    command = [sys.executable, "-m", "http.server", str(port), "--bind", address, "--directory", str(directory)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield port
    finally:
        process.kill()
        process.wait(10)


def _goto(page, url: str):
    for _ in range(50):
        try:
            page.goto(url)
            return
        except Exception:  # the server is still starting
            time.sleep(0.2)
    page.goto(url)


def test_hidden_characters_are_shown_look_alikes_marked_and_votes_keep_the_exact_texts(browser, tmp_path):
    from lorarlhf.labelling import label

    spoofed, lookalike = "\u202etxt.exe", "Yes,\u00a0sure."
    candidates = tmp_path / "candidates.jsonl"
    records = [
        {"id": "rlo", "prompt": "Name the attachment.", "responses": [spoofed, "report.txt"]},
        {"id": "nbsp", "prompt": "Say yes.", "responses": [lookalike, "Yes, sure."]},
    ]
    candidates.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    votes = tmp_path / "votes.jsonl"
    server = label(candidates, annotator="ann", out=votes, shuffle=False)
    try:
        page = Page(browser, server.url)
        # The policy parses: Chromium logs an invalid source (e.g. an IPv6 literal) on every load.
        assert [line for line in page.console if re.search("content.security.policy", line, re.I)] == []
        assert page.shown()[1] == ["⟨U+202E⟩txt.exe", "report.txt"]  # not "exe.txt"
        assert "U+…⟩ marks a character" in page.page.locator("#notes").inner_text()
        page.judge("#vote-b")
        page.wait_for_done(1)
        assert page.shown()[1] == [lookalike, "Yes, sure."]  # a no-break space shows as a space...
        note = page.page.locator("#notes").inner_text()  # ...so the page says how they differ
        assert "A and B read the same but are different texts" in note and "NO-BREAK SPACE" in note
        page.judge("#vote-a")
        page.page.wait_for_function("document.querySelector('#progress')?.innerText.startsWith('All 2 items')")
        assert [(vote[1], vote[2], vote[3]) for vote in read_votes(votes)] == [
            (spoofed, "report.txt", ["b"]),
            (lookalike, "Yes, sure.", ["a"]),
        ]
    finally:
        server.close()


def _free_port(address: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((address, 0))
        return probe.getsockname()[1]


def _start_server(candidates: Path, votes: Path) -> tuple[subprocess.Popen, str]:
    """`lorarlhf label` in its own process; returns it and the page's address once it serves."""
    command = [sys.executable, "-m", "lorarlhf", "label", str(candidates), "--annotator", "ann"]
    command += ["--out", str(votes), "--port", str(_free_port())]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        found = re.search(r"open (http://\S+)", line)
        if found:
            return process, found.group(1)
    process.kill()
    raise AssertionError("the label command did not start:\n" + "".join(lines))


def test_killing_the_server_part_way_loses_no_vote_and_resume_continues(browser, candidates, tmp_path):
    votes = tmp_path / "votes.jsonl"
    process, url = _start_server(candidates, votes)
    try:
        page = Page(browser, url)
        page.judge("a")
        page.wait_for_done(1)
        page.judge("b")
        page.wait_for_done(2)
        third_prompt = page.shown()[0]
    finally:
        process.send_signal(signal.SIGKILL)  # no shutdown code runs
        process.wait(30)
    assert process.returncode == -signal.SIGKILL
    before = read_votes(votes)
    assert [vote[0] for vote in before] == ["kind", "markup"]
    assert [vote[3] for vote in before] == [["a"], ["b"]]

    process, url = _start_server(candidates, votes)
    try:
        page = Page(browser, url)
        assert page.progress().startswith("2 of 5 labelled")
        assert page.shown()[0] == third_prompt == "Name a prime number."
        page.press("1")
        page.press("2")
        page.judge("Enter")  # at once: the ranking's key presses are applied in order
        page.wait_for_done(3)
        page.judge("t")
        page.wait_for_done(4)
        page.judge("t")
        page.page.wait_for_function("document.querySelector('#progress')?.innerText.startsWith('All 5 items')")
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C: stops cleanly
        process.wait(30)
    after = read_votes(votes)
    assert after[:2] == before  # what was there is untouched
    assert [vote[0] for vote in after] == ["kind", "markup", "rank", "rank", "rank", "sum", "sky"]


def test_thumbs_mode_judges_each_response_alone_by_clicks_and_keys(browser, tmp_path):
    from lorarlhf.data import load_feedback
    from lorarlhf.labelling import label

    spoofed = "\u202etxt.exe"
    records = [
        {"id": "kind", "prompt": "Say hello to a new neighbour.", "responses": ["Welcome!", "What?"]},
        {"id": "markup", "prompt": XSS_PROMPT, "responses": [XSS_IMG, spoofed]},
    ]
    candidates = tmp_path / "candidates.jsonl"
    candidates.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    feedback = tmp_path / "feedback.jsonl"
    server = label(candidates, annotator="ann", out=feedback, thumbs=True, shuffle=False)
    try:
        page = Page(browser, server.url)
        assert page.progress().startswith("0 of 4 labelled")
        assert "thumbs up" in page.page.locator("#guidelines").inner_text()
        assert page.shown() == ("Say hello to a new neighbour.", ["Welcome!"])  # one response at a time
        assert not page.page.locator("#vote-a").count()
        page.judge("#thumb-up")
        page.wait_for_done(1)
        assert page.shown()[1] == ["What?"]
        page.judge("d")
        page.wait_for_done(2)
        assert page.shown() == (XSS_PROMPT, [XSS_IMG])  # markup is text, never run
        page.judge("s")  # skipped: comes back last
        page.page.wait_for_function("document.querySelector('#response-1 textarea')?.value.includes('U+202E')")
        assert page.shown()[1] == ["⟨U+202E⟩txt.exe"]  # not "exe.txt"
        assert "U+…⟩ marks a character" in page.page.locator("#notes").inner_text()
        page.judge("ArrowDown")
        page.wait_for_done(3)
        assert page.shown()[1] == [XSS_IMG]
        page.judge("ArrowUp")
        page.page.wait_for_function("document.querySelector('#progress')?.innerText.startsWith('All 4 responses')")
        assert not page.page.locator("#thumb-up").is_visible()
        assert page.page.evaluate("window.__pwned") is None and page.dialogs == []
    finally:
        server.close()
    assert [(f.completion, f.label) for f in load_feedback(feedback)] == [
        ("Welcome!", True),
        ("What?", False),
        (spoofed, False),  # the exact text, not what the page showed
        (XSS_IMG, True),
    ]
