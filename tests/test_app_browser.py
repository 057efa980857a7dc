"""End to end in a real browser: `streamlit run app/app.py` served on 127.0.0.1, driven by headless
chromium through playwright: type a prompt, press Generate, wait for the continuation, open the
charts, save screenshots; talk to a chat model (two messages, two replies, Clear). Skips (with the reason) only where no browser can be had."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest
from app_fixtures import make_run

from gpt_ds import chat
from gpt_ds.generate import Sampling
from gpt_ds.model_io import load_model

pytestmark = pytest.mark.slow

# Flags for a sandbox-less container without a GPU or network: background networking otherwise
# floods the log with refused connections, and QUIC/sync/updates are network features.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
SERVER_START_SECONDS = 90
STEP_TIMEOUT_MS = 60_000


def system_chromium() -> str | None:
    """A chromium binary from the system (Debian's `chromium` package), or $GPT_DS_CHROMIUM."""
    for candidate in (os.environ.get("GPT_DS_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    executable = system_chromium()
    with sync_api.sync_playwright() as playwright:
        try:
            # Without a system chromium, fall back to one from `playwright install chromium`.
            chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        except Exception as err:
            pytest.skip(f"no browser can be started (system chromium: {executable}; "
                        f"install Debian's `chromium` or run `playwright install chromium`): {err}")
        yield chromium
        chromium.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serving(repo_root, tmp_path_factory, model: Path):
    """The page served by `streamlit run` from the repository root (so .streamlit/config.toml applies),
    opening `model` (RUNS/NAME/model, made by make_run) and listing models from its RUNS folder (--runs),
    never the repository's runs/, with a home folder of its own, so nothing of the user's is read or written."""
    runs = model.parents[1]
    port = free_port()
    log_path = tmp_path_factory.mktemp("server") / "streamlit.log"
    env = {**os.environ, "HOME": str(tmp_path_factory.mktemp("home"))}
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app/app.py", "--server.port", str(port), "--",
             "--model", str(model), "--runs", str(runs)],
            cwd=repo_root, stdout=log, stderr=subprocess.STDOUT, env=env,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_SECONDS
        while True:
            if server.poll() is not None:
                pytest.fail(f"streamlit exited with {server.returncode}:\n{log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as reply:
                    if reply.read() == b"ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"streamlit did not answer within {SERVER_START_SECONDS}s:\n{log_path.read_text()}")
            time.sleep(0.5)
        yield server, url
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture(scope="module")
def served_app(repo_root, tmp_path_factory):
    with serving(repo_root, tmp_path_factory, make_run(tmp_path_factory.mktemp("browser") / "runs" / "demo")) as served:
        yield served


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("browser") / "runs" / "chat", chat=True)


@pytest.fixture(scope="module")
def served_chat_app(repo_root, tmp_path_factory, chat_model):
    with serving(repo_root, tmp_path_factory, chat_model) as served:
        yield served


def test_server_listens_on_localhost_only(served_app):
    server, url = served_app
    port = int(url.rsplit(":", 1)[1])
    listening = [c.laddr for c in psutil.Process(server.pid).net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
    assert [address.port for address in listening] == [port]
    assert {address.ip for address in listening} == {"127.0.0.1"}


def test_prompt_generate_and_charts_in_a_real_browser(browser, served_app, tmp_path):
    _, url = served_app
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(url)
    page.get_by_text("gpt-ds playground").wait_for(timeout=STEP_TIMEOUT_MS)
    page.get_by_text("Tokens trained").wait_for(timeout=STEP_TIMEOUT_MS)  # the model card: weights loaded

    # A blank line then an indented line: Markdown would turn what follows into a code block.
    page.get_by_label("Prompt").fill("ROMEO:\n\n    What light through yonder window breaks?\n")
    page.get_by_role("button", name="Generate").click()
    page.get_by_text("Done: ").wait_for(timeout=STEP_TIMEOUT_MS)  # streaming finished
    continuation = page.locator(".gen-continuation")
    assert continuation.inner_text().strip()
    assert "yonder window" in page.locator(".gen-prompt").inner_text()
    assert not page.locator(".gen-box code").count() and not page.get_by_text("</span>").count()
    page.screenshot(path=str(tmp_path / "generate.png"), full_page=True)

    page.get_by_role("tab", name="Training curves").click()
    page.locator(".vega-embed").first.wait_for(timeout=STEP_TIMEOUT_MS)
    page.screenshot(path=str(tmp_path / "curves.png"), full_page=True)
    page.get_by_role("tab", name="Attention").click()
    page.get_by_text("each row is a token").wait_for(timeout=STEP_TIMEOUT_MS)
    page.screenshot(path=str(tmp_path / "attention.png"), full_page=True)

    assert not page.get_by_text("Traceback").count()
    assert not errors, errors
    assert (tmp_path / "generate.png").stat().st_size > 10_000
    page.close()


def set_slider(page, label: str, home_then_right: int) -> None:
    """A slider moved as a keyboard user moves it: Home (its minimum), then `home_then_right` steps right."""
    slider = page.get_by_role("slider", name=label)
    slider.focus()
    slider.press("Home")
    for _ in range(home_then_right):
        slider.press("ArrowRight")


def test_a_chat_model_talks_in_a_real_browser(browser, served_chat_app, chat_model, tmp_path):
    """Two messages, two replies streamed in (greedy, 8 tokens): the second is what gpt_ds.chat writes with the
    first exchange and the system message in its context. Clear conversation empties the history."""
    from playwright.sync_api import expect  # the browser fixture has skipped where playwright is missing

    _, url = served_chat_app
    model, info = load_model(chat_model)
    sampling = Sampling(8, temperature=0)

    def expected(messages: list[dict]) -> str:
        prompt = chat.fit_prompt(messages, info.tokenizer, info.config.block_size, chat.reply_budget(info.config.block_size, 8))
        return list(chat.stream_reply(model, info, prompt, sampling))[-1].text

    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    page.goto(url)
    page.get_by_text("Tokens trained").wait_for(timeout=STEP_TIMEOUT_MS)
    assert not page.get_by_role("tab", name="Generate").count() and page.get_by_role("tab", name="Chat").count()
    set_slider(page, "Max new tokens", 7)
    set_slider(page, "Temperature", 0)
    page.get_by_role("textbox", name="System prompt").fill("Be brief.")
    page.get_by_role("textbox", name="System prompt").press("Tab")  # a text area's value is sent when it loses focus
    for slider, value in (("Max new tokens", "8"), ("Temperature", "0")):
        expect(page.get_by_role("slider", name=slider)).to_have_value(value, timeout=STEP_TIMEOUT_MS)

    replies = page.locator(".chat-text")
    for sent, message in enumerate(["first question", "second question"], start=1):
        page.get_by_placeholder("Message the model").fill(message)
        page.get_by_placeholder("Message the model").press("Enter")
        expect(page.get_by_text(re.compile(r"^8 tokens in "))).to_have_count(sent, timeout=STEP_TIMEOUT_MS)
    expect(replies).to_have_count(4)
    system, first_question = {"role": "system", "content": "Be brief."}, {"role": "user", "content": "first question"}
    first = expected([system, first_question])
    second = expected([system, first_question, {"role": "assistant", "content": first},
                       {"role": "user", "content": "second question"}])
    assert second != expected([system, {"role": "user", "content": "second question"}])  # the context matters
    assert [replies.nth(i).inner_text() for i in range(4)] == ["first question", first, "second question", second]
    page.screenshot(path=str(tmp_path / "chat.png"), full_page=True)

    page.get_by_role("button", name="Clear conversation").click()
    expect(replies).to_have_count(0, timeout=STEP_TIMEOUT_MS)
    assert not page.get_by_text("Traceback").count()
    assert not errors, errors
    page.close()
