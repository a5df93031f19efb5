"""The Explorer in a real browser: JupyterLab driven by Playwright with the system's Chromium.

Opens tests/browser_notebooks/explorer.ipynb (an Explorer on the embedded toy model, or on the tiny
random model when the toy model folder is absent: the notebook prints which, and so does this test),
runs it, and then acts as a user would, checking each effect in the page:

- a click on a step thumbnail moves the step and attention panels (five source maps at step 1);
- a click on the attention picture picks a query pixel: the heatmap changes;
- a painted stroke on the foreground reaches the Session's object mask (the cut-and-paste changes),
  and erasing the same stroke gives back the very same cut-and-paste and result;
- tau_b moved with the keyboard (0.80 -> 0.60): the result changes, without recomputing step 0;
  moved back: the first result again, bit for bit;
- a box dragged on the background: the Session gets it (within rounding) and the result changes;
- a prompt outside the toy world: the run ends "done, with a warning" and the banner under the status says why;
  the prompt back: a plain "done" and no banner (toy model only: the tiny model has an open vocabulary);
- the history keeps every finished run; runs 1 and the newest compared (three pictures: A, B, difference), the
  split slider moves the split view; "Restore B" with B = run 1 gives back the first result bit for bit;
- export: the recipe and result download links appear, and the recipe downloads as JSON with the prompt;
- the SweepGrid below: each row label sits right beside its row's first image (not across the page), the inputs
  and the legend are shown, and a click on an image opens that cell in an Explorer that runs it.

Screenshots go to artifacts/ (the page after the first run, the final page, the Explorer alone, the SweepGrid);
the final Explorer and SweepGrid screenshots are copied to docs/explorer.png and docs/sweep_grid.png when
TFICON_UPDATE_SCREENSHOT=1, so that ordinary test runs leave the checkout clean.

Only Debian's (or a given) Chromium is used, never a browser downloaded by Playwright
(``tools/install-browser`` installs it). The test skips, loudly, only when no Chromium, Playwright
or JupyterLab can be found. Every external request is blocked, so a CDN dependency fails the test.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "tests" / "browser_notebooks" / "explorer.ipynb"
ARTIFACTS = ROOT / "artifacts"
TOKEN = "tficon-browser-test"
CHROMIUM_CANDIDATES = ("/usr/lib/chromium/chromium", "/usr/bin/chromium", "/usr/bin/chromium-browser")
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
]


def _loud_skip(reason: str) -> None:
    bar = "#" * 78
    message = f"\n{bar}\n# BROWSER TEST SKIPPED: {reason}\n{bar}"
    print(message, file=sys.stderr)
    pytest.skip(f"BROWSER TEST SKIPPED: {reason}")


def _chromium() -> str | None:
    override = os.environ.get("CHROMIUM")
    if override:
        return override if os.access(override, os.X_OK) else None
    for candidate in CHROMIUM_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def chromium_path():
    path = _chromium()
    if path is None:
        _loud_skip(
            "no Chromium found (looked at $CHROMIUM and " + ", ".join(CHROMIUM_CANDIDATES) + "); "
            "run tools/install-browser (apt-get install chromium) or set CHROMIUM=/path/to/chromium"
        )
    return path


@pytest.fixture(scope="module")
def playwright_api():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _loud_skip("the playwright Python package is not installed (pip install playwright; no browser download needed)")
    return sync_playwright


@pytest.fixture(scope="module")
def jupyter_server(tmp_path_factory, chromium_path, playwright_api):
    try:
        import jupyterlab  # noqa: F401
    except ImportError:
        _loud_skip("JupyterLab is not installed (pip install jupyterlab)")
    root = tmp_path_factory.mktemp("lab")
    shutil.copy(NOTEBOOK, root / "explorer.ipynb")
    state = tmp_path_factory.mktemp("lab-state")
    settings = state / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    port = _free_port()
    env = dict(
        os.environ,
        JUPYTER_RUNTIME_DIR=str(state / "runtime"),
        JUPYTER_CONFIG_DIR=str(state / "config"),
        JUPYTER_PLATFORM_DIRS="1",
        IPYTHONDIR=str(state / "ipython"),
        MPLCONFIGDIR=str(state / "mpl"),
        HF_HUB_OFFLINE="1",
        TFICON_TEST_THREADS=os.environ.get("TFICON_TEST_THREADS", "1"),
    )
    command = [
        sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
        "--ServerApp.port_retries=0", f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={root}",
        "--LabApp.expose_app_in_browser=True", f"--LabServerApp.user_settings_dir={state / 'settings'}",
        f"--LabServerApp.workspaces_dir={state / 'workspaces'}", "--LabApp.extension_manager=readonly",
        "--LabApp.news_url=None", "--ServerApp.disable_check_xsrf=True", "--allow-root",
    ]
    log_path = state / "server.log"
    log = open(log_path, "w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=root)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={TOKEN}", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"jupyter lab did not answer within 90 s:\n{log_path.read_text()}")
            time.sleep(0.25)
        yield {"base": base, "log": log_path, "started": time.monotonic()}
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture
def page(jupyter_server, chromium_path, playwright_api):
    blocked: list[str] = []
    errors: list[str] = []
    with playwright_api() as p:
        browser = p.chromium.launch(executable_path=chromium_path, headless=True, args=CHROMIUM_FLAGS)
        context = browser.new_context(viewport={"width": 1280, "height": 2400})
        context.set_default_timeout(60_000)

        def route(r):
            url = r.request.url
            if url.startswith(("http://127.0.0.1", "ws://127.0.0.1", "data:", "blob:", "file://")):
                r.continue_()
            else:
                blocked.append(url)
                r.abort()

        context.route("**/*", route)
        pg = context.new_page()
        pg.on("console", lambda m: errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
        pg.on("pageerror", lambda e: errors.append(f"pageerror: {e}"))
        pg.blocked, pg.errors = blocked, errors
        try:
            yield pg
        finally:
            ARTIFACTS.mkdir(exist_ok=True)
            try:  # the page as the test left it (on a failure: where it stopped)
                pg.screenshot(path=str(ARTIFACTS / "explorer-last-state.png"))
            except Exception as error:  # a crashed page must not hide the test's own error
                errors.append(f"no last-state screenshot: {error}")
            (ARTIFACTS / "browser-console.txt").write_text("\n".join(errors + [f"blocked: {u}" for u in blocked]) + "\n")
            context.close()
            browser.close()


IMAGE_DIGEST = """async (selector) => {
  const img = document.querySelector(selector);
  if (!img || !img.src) return null;
  const bytes = new Uint8Array(await (await fetch(img.src)).arrayBuffer());
  let h = 0;
  for (let i = 0; i < bytes.length; i++) h = (Math.imul(h, 31) + bytes[i]) | 0;
  return bytes.length + ":" + (h >>> 0).toString(16);
}"""


def _text(page, selector: str) -> str:
    return page.locator(selector).first.inner_text()


def _wait_text(page, selector: str, *needles: str, timeout: float = 120_000) -> None:
    page.wait_for_function(
        """([selector, needles]) => {
            const el = document.querySelector(selector);
            return !!el && needles.every((n) => el.textContent.includes(n));
        }""",
        arg=[selector, list(needles)],
        timeout=timeout,
    )


def _runs_done(page) -> int:
    """The number of the last finished run, from the status ("done · run N · ...", or "done, with a warning ·
    run N"); 0 before any."""
    match = re.search(r"done(?:, with [^\u00b7]*)? \u00b7 run (\d+)", _text(page, ".tficon-status"))
    return int(match.group(1)) if match else 0


def _wait_run_after(page, runs: int, timeout: float = 240_000) -> int:
    """Wait until a run later than run ``runs`` has finished (the status is set last, after every view)."""
    page.wait_for_function(
        """(runs) => {
            const m = /done(?:, with [^\u00b7]*)? \u00b7 run (\\d+)/.exec(document.querySelector('.tficon-status').textContent);
            return !!m && Number(m[1]) > runs;
        }""",
        arg=runs,
        timeout=timeout,
    )
    return _runs_done(page)


def _digest(page, selector: str) -> str:
    return page.evaluate(IMAGE_DIGEST, selector)


def test_explorer_in_jupyterlab(jupyter_server, page):
    t0 = jupyter_server["started"]
    timings: dict[str, float] = {}
    mark = lambda name: timings.__setitem__(name, round(time.monotonic() - t0, 1))  # noqa: E731
    toy = (ROOT / "tficon" / "toy" / "model" / "model_index.json").is_file()
    if not toy:
        print("\n" + "!" * 78 + "\n! toy model folder absent: the notebook FALLS BACK to the tiny random model\n" + "!" * 78)

    page.goto(f"{jupyter_server['base']}/lab/tree/explorer.ipynb?token={TOKEN}&reset")
    page.wait_for_function("() => !!window.jupyterapp", timeout=90_000)
    page.wait_for_function(
        """() => {
            const w = window.jupyterapp.shell.currentWidget;
            const kernel = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
            return !!kernel && kernel.status === 'idle';
        }""",
        timeout=90_000,
    )
    mark("lab loaded, kernel idle")
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    page.locator(".tficon-explorer").wait_for(timeout=120_000)
    mark("explorer rendered")
    runs = _wait_run_after(page, 0)
    mark("first run done")
    model_line = page.locator(".jp-OutputArea-output", has_text="MODEL:").first.inner_text()
    print(f"\nnotebook says: {model_line.strip()}")
    assert ("toy" in model_line) == toy and ("FALLBACK" in model_line) == (not toy)
    assert "tau_b=0.80" in _text(page, ".tficon-result-caption")
    first_result = _digest(page, "img.tficon-result")
    first_cut = _digest(page, ".tficon-cut-and-paste")
    assert first_result is not None and first_cut is not None
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "explorer-1-first-run.png"))

    # ---- a click on a step thumbnail: the step and attention panels move to step 1 (an injection step)
    page.locator(".tficon-step-strip .tficon-step-button").nth(1).click()
    _wait_text(page, ".tficon-explorer", "step 1's UNet call")
    page.wait_for_function("() => document.querySelectorAll('.tficon-sources img').length === 5")
    mark("thumbnail clicked, step 1's attention shown")

    # ---- click a query pixel on the attention picker
    picker = page.locator(".tficon-query-picker canvas").first
    picker.scroll_into_view_if_needed()
    heat_before = picker.get_attribute("data-src-hash")
    label_before = _text(page, ".tficon-query-label")
    area = picker.bounding_box()
    page.mouse.click(area["x"] + 0.15 * area["width"], area["y"] + 0.45 * area["height"])  # the scene square's left edge
    page.wait_for_function("([el, old]) => el.dataset.srcHash !== old", arg=[picker.element_handle(), heat_before])
    page.wait_for_function(
        "([sel, old]) => document.querySelector(sel).textContent !== old", arg=[".tficon-query-label", label_before]
    )
    mark("query clicked, heatmap changed")
    assert "cell" in _text(page, ".tficon-query-label")

    # ---- paint a stroke of the object mask, then erase the same stroke: back to the very same images
    painter = page.locator(".tficon-mask-painter canvas").first
    painter.scroll_into_view_if_needed()
    area = painter.bounding_box()
    # the top-left corner, outside the star (the demo foreground is cropped tightly: its lower corners hold the legs)
    stroke = [(area["x"] + 0.04 * area["width"], area["y"] + 0.08 * area["height"]),
              (area["x"] + 0.20 * area["width"], area["y"] + 0.08 * area["height"])]

    def draw_stroke() -> None:
        page.mouse.move(*stroke[0])
        page.mouse.down()
        page.mouse.move(*stroke[1], steps=6)
        page.mouse.up()

    draw_stroke()
    runs = _wait_run_after(page, runs)
    assert "foreground_mask" in _text(page, ".tficon-last-change") and "steps 0.." in _text(page, ".tficon-status")
    assert _digest(page, ".tficon-cut-and-paste") != first_cut, "the painted mask did not reach the cut-and-paste"
    page.locator(".tficon-erase").first.click()
    draw_stroke()
    runs = _wait_run_after(page, runs)
    page.locator(".tficon-erase").first.click()
    assert _digest(page, ".tficon-cut-and-paste") == first_cut, "erasing the stroke must restore the object mask"
    assert _digest(page, "img.tficon-result") == first_result, "the restored mask must give the very same result"
    mark("mask painted and erased")

    # ---- tau_b with the keyboard: 0.80 -> 0.60 in four presses, then back
    handle = page.locator(".tficon-tau-b .noUi-handle").first
    handle.scroll_into_view_if_needed()
    handle.focus()
    for _ in range(4):
        handle.press("ArrowLeft")
    _wait_text(page, ".tficon-tau-b .widget-readout", "0.60", timeout=30_000)
    _wait_text(page, ".tficon-result-caption", "tau_b=0.60")  # set by the run that saw the last press
    runs = _wait_run_after(page, runs)
    mark("tau_b moved, result recomputed")
    status = _text(page, ".tficon-status")
    assert "steps 0.." not in status, f"a tau_b change must not recompute from step 0: {status}"
    result_after_tau = _digest(page, "img.tficon-result")
    assert result_after_tau != first_result, "the result image did not change after moving tau_b"
    handle.focus()
    for _ in range(4):
        handle.press("ArrowRight")
    _wait_text(page, ".tficon-result-caption", "tau_b=0.80")
    runs = _wait_run_after(page, runs)
    assert _digest(page, "img.tficon-result") == first_result, "tau_b back at 0.80 must give the first result again"
    mark("tau_b moved back, first result again")

    # ---- draw a box on the background
    drawer = page.locator(".tficon-box-drawer canvas").first
    drawer.scroll_into_view_if_needed()
    area = drawer.bounding_box()
    fractions = (0.47, 0.47, 0.94, 0.94)  # left, top, right, bottom as fractions of the picture
    page.mouse.move(area["x"] + fractions[0] * area["width"], area["y"] + fractions[1] * area["height"])
    page.mouse.down()
    page.mouse.move(area["x"] + fractions[2] * area["width"], area["y"] + fractions[3] * area["height"], steps=8)
    page.mouse.up()
    runs = _wait_run_after(page, runs)
    assert "steps 0.." in _text(page, ".tficon-status")  # a new box recomputes everything
    side = 64 if toy else 128  # the working image size of the notebook's session
    left, top = math.floor(fractions[0] * side), math.floor(fractions[1] * side)
    expected = (left, top, math.ceil(fractions[2] * side) - left, math.ceil(fractions[3] * side) - top)
    label = _text(page, ".tficon-box-label")
    drawn = tuple(int(v) for v in label.split("=", 1)[1].split(")")[0].strip(" (").split(","))
    assert all(abs(a - b) <= 2 for a, b in zip(drawn, expected)), f"drew about {expected}, the Session got {drawn}"
    assert _digest(page, "img.tficon-result") != first_result, "the result did not change after drawing a box"
    mark("box drawn, result recomputed")

    # ---- a prompt outside the toy world: the warning reaches the page (toy model only)
    banner = page.locator(".tficon-banner").first
    assert not banner.is_visible(), "the banner must be hidden while there is nothing to say"
    prompt = page.locator(".tficon-prompt input").first
    original_prompt = prompt.input_value()
    if toy:
        prompt.scroll_into_view_if_needed()
        prompt.fill("a photo of a cat on a sofa")
        prompt.press("Enter")
        runs = _wait_run_after(page, runs)
        assert "done, with a warning" in _text(page, ".tficon-status")
        banner.wait_for(state="visible", timeout=30_000)
        assert "knows only its toy world" in banner.inner_text() and "'photo'" in banner.inner_text()
        page.screenshot(path=str(ARTIFACTS / "explorer-3-warning.png"))
        prompt.fill(original_prompt)
        prompt.press("Enter")
        runs = _wait_run_after(page, runs)
        assert "done \u00b7 run" in _text(page, ".tficon-status") and not banner.is_visible()
        mark("toy-world warning shown in the banner, then cleared")

    # ---- history: every finished run kept; A/B compare; split; restore run 1
    history_buttons = page.locator(".tficon-history .tficon-step-button")
    history_buttons.first.scroll_into_view_if_needed()
    assert history_buttons.count() == min(runs, 30), f"{history_buttons.count()} runs in the history, {runs} finished"
    page.locator(".tficon-compare-a select").first.select_option(index=0)  # A = run 1; B = the newest
    _wait_text(page, ".tficon-compare", "A \u00b7 run 1", f"B \u00b7 run {runs}", "difference")
    assert page.locator(".tficon-compare img").count() == 3
    split_before = _digest(page, "img.tficon-split-view")
    split = page.locator(".tficon-split .noUi-handle").first
    split.focus()
    for _ in range(5):
        split.press("ArrowLeft")
    deadline = time.monotonic() + 30
    while _digest(page, "img.tficon-split-view") == split_before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _digest(page, "img.tficon-split-view") != split_before, "the split slider did not move the split view"
    page.locator(".tficon-compare-b select").first.select_option(index=0)  # B = run 1
    _wait_text(page, ".tficon-compare", "B \u00b7 run 1")
    page.locator(".tficon-restore").first.click()
    runs = _wait_run_after(page, runs)
    assert _digest(page, "img.tficon-result") == first_result, "restoring run 1 must give its result bit for bit"
    mark("history compared, split moved, run 1 restored")

    # ---- export: the files are offered as downloads; the recipe is the Session's settings as JSON
    page.locator(".tficon-export-result").first.click()
    page.locator(".tficon-export-recipe").first.click()
    recipe_link = page.locator("a.tficon-download[data-kind='recipe']").first
    recipe_link.wait_for(timeout=60_000)
    assert page.locator("a.tficon-download[data-kind='result']").count() == 1
    with page.expect_download() as download:
        recipe_link.click()
    recipe = json.loads(Path(download.value.path()).read_text())
    assert recipe["format"] == "tficon-recipe" and recipe["prompt"] == original_prompt
    assert recipe["settings"]["tau_b"] == 0.8 and download.value.suggested_filename == "tficon-recipe.json"
    mark("result and recipe exported, the recipe downloaded")

    # ---- screenshots
    page.evaluate("window.jupyterapp.commands.execute('notebook:hide-all-cell-code')")
    page.evaluate("window.jupyterapp.commands.execute('application:toggle-left-area')")
    # the Explorer (with its history and export) is taller than the usual viewport: make room for all of it, since
    # the notebook scrolls inside its own panel and an element screenshot shows only what that panel shows
    height = int(page.locator(".tficon-explorer").first.bounding_box()["height"]) + 400
    page.set_viewport_size({"width": 1280, "height": max(2400, height)})
    page.locator(".tficon-explorer").scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "explorer-2-final-page.png"))
    page.locator(".tficon-explorer").screenshot(path=str(ARTIFACTS / "explorer.png"))
    if os.environ.get("TFICON_UPDATE_SCREENSHOT") == "1":
        (ROOT / "docs").mkdir(exist_ok=True)
        shutil.copy(ARTIFACTS / "explorer.png", ROOT / "docs" / "explorer.png")
    mark("screenshots saved")

    # ---- the SweepGrid: labels beside their images, inputs and legend shown, a click on an image opens the cell
    grid = page.locator(".tficon-sweep-grid").first
    grid.scroll_into_view_if_needed()
    page.locator(".tficon-sweep-cell canvas").first.wait_for(timeout=120_000)
    label = page.locator(".tficon-sweep-row-label").first.bounding_box()
    first_image = page.locator(".tficon-sweep-cell").first.bounding_box()
    assert 0 <= first_image["x"] - (label["x"] + label["width"]) < 40, f"label {label} is far from its image {first_image}"
    assert first_image["y"] <= label["y"] + label["height"] / 2 <= first_image["y"] + first_image["height"] + 60
    assert page.locator(".tficon-sweep-inputs img").count() == 3 and "bg dB" in _text(page, ".tficon-sweep-legend")
    grid.screenshot(path=str(ARTIFACTS / "sweep_grid.png"))
    if os.environ.get("TFICON_UPDATE_SCREENSHOT") == "1":
        shutil.copy(ARTIFACTS / "sweep_grid.png", ROOT / "docs" / "sweep_grid.png")
    cell_canvas = page.locator(".tficon-sweep-cell canvas").nth(1)
    area = cell_canvas.bounding_box()
    page.mouse.click(area["x"] + area["width"] / 2, area["y"] + area["height"] / 2)
    page.locator(".tficon-sweep-grid .tficon-explorer").first.wait_for(timeout=60_000)
    _wait_text(page, ".tficon-sweep-grid .tficon-explorer .tficon-status", "done \u00b7 run 1", timeout=240_000)
    assert "tau_b=1" in _text(page, ".tficon-sweep-grid .tficon-explorer .tficon-result-caption").replace("1.00", "1")
    mark("sweep grid checked, a cell opened by a click on its image")

    print("timings (s from server start): " + json.dumps(timings))
    (ARTIFACTS / "browser-timings.json").write_text(json.dumps({"model": "toy" if toy else "tiny", **timings}, indent=1))
    assert not page.blocked, f"external requests were attempted (must work offline): {page.blocked}"
    page_errors = [e for e in page.errors if e.startswith("pageerror")]
    assert not page_errors, f"uncaught errors in the page: {page_errors}"
