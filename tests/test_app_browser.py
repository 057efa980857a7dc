"""End to end in a real browser: `streamlit run app/app.py` served on 127.0.0.1, driven by headless
chromium through playwright: type a prompt, press Generate, wait for the continuation, open the
charts, save screenshots. Skips (with the reason) only where no browser can be had."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import psutil
import pytest
from app_fixtures import make_run

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


@pytest.fixture(scope="module")
def served_app(repo_root, tmp_path_factory):
    """The page served by `streamlit run` from the repository root (so .streamlit/config.toml applies),
    listing models from a runs/ folder of its own (--runs), never the repository's runs/, with a home
    folder of its own, so nothing of the user's is read or written."""
    runs = tmp_path_factory.mktemp("browser") / "runs"
    model = make_run(runs / "demo")
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
