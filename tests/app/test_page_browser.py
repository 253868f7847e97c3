"""The web page in headless Chromium: type a sentence, click, read the translation, see the heatmap."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .test_server import Server, post, start_server

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]  # fmt: skip


PAGE_KEY = "page-key-5d1e9b"


@pytest.fixture(scope="module")
def page_server(models_dir: Path) -> Iterator[Server]:
    running = start_server(models_dir)
    yield running
    running.process.terminate()
    running.process.wait(timeout=30)


@pytest.fixture(scope="module")
def keyed_page_server(models_dir: Path) -> Iterator[Server]:
    running = start_server(models_dir, MT_API_KEYS=PAGE_KEY)
    yield running
    running.process.terminate()
    running.process.wait(timeout=30)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    if not Path(CHROMIUM).exists():
        pytest.skip("Chromium is not installed (Debian packages chromium, chromium-driver)")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield launched
        launched.close()


def open_page(browser: Any, server: Server) -> Any:
    """A new page on the server's web page, once its language lists are filled."""
    page = browser.new_page()
    page.goto(server.url + "/")
    page.wait_for_function("document.querySelectorAll('#source option').length > 0")
    return page


def translate_on(page: Any, text: str) -> None:
    """Ask the page for `text` from src to tgt."""
    page.select_option("#source", "src")
    page.select_option("#target", "tgt")
    page.fill("#text", text)
    page.click("#translate")


def test_typing_and_clicking_shows_the_translation_and_draws_the_heatmap(
    browser: Any, page_server: Server, tmp_path: Path
) -> None:
    page = open_page(browser, page_server)
    translate_on(page, "alpha bravo golf")
    page.wait_for_function("document.querySelector('#heatmap').dataset.drawn !== undefined", timeout=30_000)
    assert page.inner_text("#output") == "GOLF BRAVO ALPHA"
    assert page.inner_text("#error") == ""
    coloured = page.evaluate(
        """() => {
            const c = document.querySelector('#heatmap');
            const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0;
            for (let i = 0; i < data.length; i += 4) if (data[i + 2] > data[i] + 60) n++;  // blue cells
            return n;
        }"""
    )
    assert coloured > 100
    page.screenshot(path=str(tmp_path / "page.png"), full_page=True)


def test_the_page_asks_for_a_key_when_the_server_requires_one_and_remembers_it(
    browser: Any, keyed_page_server: Server
) -> None:
    page = open_page(browser, keyed_page_server)  # /languages is open
    assert not page.is_visible("#api-key")
    translate_on(page, "alpha bravo golf")
    page.wait_for_function("document.querySelector('#error').textContent !== ''", timeout=30_000)
    assert "an API key is required" in page.inner_text("#error")
    assert page.is_visible("#api-key")
    page.fill("#api-key", PAGE_KEY)
    page.click("#translate")
    page.wait_for_function("document.querySelector('#heatmap').dataset.drawn !== undefined", timeout=30_000)
    assert page.inner_text("#output") == "GOLF BRAVO ALPHA"
    assert page.inner_text("#error") == ""
    page.reload()
    assert page.input_value("#api-key") == PAGE_KEY
    assert page.is_visible("#api-key")


def test_a_proxy_error_that_is_not_json_shows_its_status_and_clears_the_last_translation(
    browser: Any, page_server: Server
) -> None:
    page = open_page(browser, page_server)
    page.fill("#text", "alpha bravo golf")
    page.click("#translate")
    page.wait_for_function("document.querySelector('#heatmap').dataset.drawn !== undefined", timeout=30_000)
    bad_gateway = {"status": 502, "body": "<html>Bad Gateway</html>", "content_type": "text/html"}
    page.route("**/translate", lambda route: route.fulfill(**bad_gateway))
    page.fill("#text", "kilo lima echo")
    page.click("#translate")
    page.wait_for_function("document.querySelector('#error').textContent !== ''", timeout=30_000)
    assert page.inner_text("#error").startswith("502")  # not a JSON parse error
    assert page.inner_text("#output") == ""  # the previous text's translation does not stand beside it
    assert page.evaluate("document.querySelector('#heatmap').dataset.drawn") is None


def test_a_language_that_is_only_a_target_is_not_offered_as_a_source(browser: Any, page_server: Server) -> None:
    page = browser.new_page()
    only_one_way = [
        {"code": "src", "name": "Source", "targets": ["tgt"]},
        {"code": "tgt", "name": "Target", "targets": []},  # a models folder with src-tgt alone
    ]
    page.route("**/languages", lambda route: route.fulfill(json=only_one_way))
    page.goto(page_server.url + "/")
    page.wait_for_function("document.querySelectorAll('#source option').length > 0")
    assert page.eval_on_selector_all("#source option", "options => options.map(o => o.value)") == ["src"]
    assert page.eval_on_selector_all("#target option", "options => options.map(o => o.value)") == ["tgt"]


def test_a_long_texts_heatmap_stays_within_what_browsers_draw(browser: Any, page_server: Server) -> None:
    """Cells shrink (and lose their labels) so that the canvas stays within about 4,000 px a side."""
    page = open_page(browser, page_server)
    page.fill("#text", "Alpha bravo golf. " * 100)  # 100 sentences: some 400 pieces on each side
    page.click("#translate")
    page.wait_for_function("document.querySelector('#heatmap').dataset.drawn !== undefined", timeout=30_000)
    assert page.inner_text("#error") == ""
    rows, columns = map(int, page.evaluate("document.querySelector('#heatmap').dataset.drawn").split("x"))
    assert rows > 160 and columns > 160  # 26-px cells would have made it over 4,000 px
    size = page.evaluate("[document.querySelector('#heatmap').width, document.querySelector('#heatmap').height]")
    assert max(size) <= 4002


def test_the_page_works_where_site_storage_is_blocked(browser: Any, page_server: Server) -> None:
    """With storage blocked, reading localStorage throws; the page must still load and translate."""
    page = browser.new_page()
    page.add_init_script(
        "Object.defineProperty(window, 'localStorage', "
        "{get() { throw new DOMException('The operation is insecure.', 'SecurityError'); }});"
    )
    page.goto(page_server.url + "/")
    page.wait_for_function("document.querySelectorAll('#source option').length > 0")
    translate_on(page, "alpha bravo golf")
    page.wait_for_function("document.querySelector('#output').textContent !== ''", timeout=30_000)
    assert page.inner_text("#output") == "GOLF BRAVO ALPHA"


def test_a_text_whose_alignment_is_over_the_limit_is_translated_without_it(browser: Any, models_dir: Path) -> None:
    """The page asks for alignments; where the server refuses them as too large, the translation still shows."""
    server = start_server(models_dir, MT_MAX_ALIGNMENT_WEIGHTS="30")
    try:
        body: dict[str, object] = {"q": ["alpha bravo golf", "kilo lima echo"], "source": "src", "target": "tgt"}
        status, lines = post(server.url, body)
        assert status == 200
        page = open_page(browser, server)
        translate_on(page, "alpha bravo golf\nkilo lima echo")
        page.wait_for_function("document.querySelector('#output').textContent !== ''", timeout=30_000)
        assert page.inner_text("#output") == "\n".join(lines["translatedText"])  # type: ignore[arg-type]
        assert page.inner_text("#error") == "The text is too long to show its alignment."
        assert page.evaluate("document.querySelector('#heatmap').dataset.drawn") is None
    finally:
        server.process.terminate()
        server.process.wait(timeout=30)
