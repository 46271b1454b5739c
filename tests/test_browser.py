"""The notebooks as a workshop attendee sees them: JupyterLab in headless Chromium (Playwright).

papermill proves the notebooks run; only a real browser proves the plots render and the widgets
answer (the kernel-browser round trip of an ipywidgets slider never happens headless). Each test
opens a copy of a notebook with small parameters in a private JupyterLab, runs all cells from the
Run menu, and checks what is on screen. Screenshots go to ``test-artifacts/browser/``.

Skips (with the reason) where Debian's Chromium or Playwright is missing; ``make test`` installs
both (``tools/install_browser.sh``). ``MLCWB_BROWSER_NEGATIVE=1`` also runs a variant whose layer
slider callback raises on purpose: it must FAIL, proving a broken widget cannot pass unnoticed.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mlcwb.paths import repo_root
from tests.browser_support import (LabServer, chromium_context, inject_parameters, jupyter_lab,
                                   missing_requirement)
from tests.notebook_params import SMOKE

pytestmark = [pytest.mark.browser, pytest.mark.slow]

NOTEBOOKS = repo_root() / "notebooks"
QUICKSTART, GEOMETRY = "00_quickstart", "03_geometry_umap"
# On top of the papermill smoke parameters (tests/notebook_params.py): the browser checks
# rendering and interaction, not the science, so fewer languages where that saves time.
BROWSER_PARAMS: dict[str, dict] = {QUICKSTART: {"languages": ["en", "zh", "ar"]}, GEOMETRY: {}}
RUN_ALL_TIMEOUT_S = 420       # 00 loads SmolLM2 and generates: 1-3 min on 2 shared cores
PLOT_TIMEOUT_S = 60
SLIDER_TIMEOUT_S = 90         # a first look at a layer projects it (UMAP can take seconds)

# Replaces mlcwb.viz.explorer for the negative test: the slider gets one more observer, which
# raises after the explorer's own redraw, so the plot still changes and only the error report
# (JupyterLab's Log Console) gives the failure away: the hardest case to catch.
BREAK_SLIDER = '''
import mlcwb.viz as _viz

_real_explorer = _viz.explorer


def _explorer_with_broken_slider(*args, **kwargs):
    box = _real_explorer(*args, **kwargs)

    def _raise(change):
        raise RuntimeError("injected failure: the layer slider callback raised")

    box.slider.observe(_raise, names="value")
    return box


_viz.explorer = _explorer_with_broken_slider
'''

# Everything is looked up inside the notebook tab on show: JupyterLab keeps other tabs (hidden)
# in the DOM.
PANEL = ".jp-NotebookPanel:not(.lm-mod-hidden)"
_JS_PROMPTS = f"""() => [...document.querySelectorAll(
        '{PANEL} .jp-CodeCell .jp-InputArea-prompt')].map(e => e.textContent.trim())"""
_JS_ERRORS = f"""() => [...document.querySelectorAll(
        '{PANEL} .jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]
    .map(e => e.innerText)"""
_JS_LOG_CONSOLE = """() => [...document.querySelectorAll('.jp-LogConsolePanel .jp-OutputArea-output')]
    .map(e => e.innerText)"""
_POINTS = ".scatterlayer .point, .bars .point"
_JS_POINTS = f"""plot => [...plot.querySelectorAll('{_POINTS}')]
    .map(p => (p.getAttribute('transform') || '') + (p.getAttribute('d') || ''))"""
# Heatmaps draw one <image>; line-only traces a path: both count as "drew something".
_JS_MARKS_PER_PLOT = f"""() => [...document.querySelectorAll('{PANEL} .js-plotly-plot')]
    .map(plot => plot.querySelectorAll(
        '{_POINTS}, .heatmaplayer image, .scatterlayer .js-line').length)"""
_ERROR_TEXT = re.compile(r"Traceback \(most recent call last\)|^\w*(Error|Exception)\b[^\n]*:",
                         re.MULTILINE)


def _excerpt(traceback: str, head: int = 400, tail: int = 1600) -> str:
    """The start (where it was raised from) and the end (the error itself) of a traceback."""
    if len(traceback) <= head + tail:
        return traceback
    return f"{traceback[:head]}\n[...]\n{traceback[-tail:]}"


@dataclass
class Lab:
    """The module's JupyterLab server and browser context, and where runs and shots go."""

    server: LabServer
    context: Any
    run_dir: Path
    shots: Path


@dataclass
class Tab:
    """One notebook opened in one browser page, with the failure reporting the tests share."""

    lab: Lab
    page: Any
    name: str
    js_errors: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return Path(self.name).stem

    def fail(self, message: str) -> None:
        shot = self.lab.shots / f"{self.label}-failure.png"
        self.page.screenshot(path=str(shot))
        pytest.fail(f"{self.name}: {message}\n(screenshot: {shot})", pytrace=False)

    def shoot(self, suffix: str = "") -> Path:
        shot = self.lab.shots / f"{self.label}{suffix}.png"
        self.page.screenshot(path=str(shot))
        return shot

    def cell_errors(self) -> list[str]:
        return [text for text in self.page.evaluate(_JS_ERRORS) if _ERROR_TEXT.search(text)]

    def check_no_cell_errors(self, when: str) -> None:
        errors = self.cell_errors()
        if errors:
            self.fail(f"an error output appeared {when}:\n{_excerpt(errors[0])}")

    def check_no_dialog(self, when: str) -> None:
        dialog = self.page.locator(".jp-Dialog")
        if dialog.count():
            self.fail(f"a dialog blocks the notebook {when}: {dialog.first.inner_text()!r}")

    def wait_for_idle_kernel(self, timeout: float = 120) -> None:
        """JupyterLab has started the notebook's kernel and it is idle (server's view)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_no_dialog("while its kernel starts")
            states = [s["kernel"]["execution_state"] for s in self.lab.server.api("/api/sessions")
                      if s.get("path") == self.name and s.get("kernel")]
            if states == ["idle"]:
                return
            time.sleep(0.5)
        self.fail(f"no idle kernel after {timeout:.0f} s")

    def open_and_run_all(self) -> None:
        """Open the notebook, Run → Run All Cells, wait until every code cell has run."""
        server = self.lab.server
        # ?reset: a fresh workspace, so tabs of earlier tests do not come back
        self.page.goto(f"{server.url}/lab/tree/{self.name}?reset&token={server.token}")
        self.page.wait_for_selector(f"{PANEL} .jp-Notebook", timeout=120_000)
        self.wait_for_idle_kernel()
        self.page.click(".lm-MenuBar-itemLabel:text-is('Run')")
        self.page.click(".lm-Menu-itemLabel:text-is('Run All Cells')")
        deadline = time.monotonic() + RUN_ALL_TIMEOUT_S
        prompts: list[str] = []
        while time.monotonic() < deadline:
            self.check_no_dialog("while it runs")
            self.check_no_cell_errors("while Run All Cells ran")
            prompts = self.page.evaluate(_JS_PROMPTS)
            idle = self.page.locator(
                f'{PANEL} .jp-Notebook-ExecutionIndicator[data-status="idle"]').count() == 1
            if prompts and idle and all(re.fullmatch(r"\[\d+\]:", p) for p in prompts):
                break
            time.sleep(1)
        else:
            self.fail(f"Run All Cells did not finish within {RUN_ALL_TIMEOUT_S} s; "
                      f"cell prompts: {prompts}")
        self.check_no_cell_errors("after Run All Cells")

    def wait_for_all_plots(self) -> list[int]:
        """Marks drawn per plotly figure in the notebook, once every figure has drawn some."""
        deadline = time.monotonic() + PLOT_TIMEOUT_S
        counts: list[int] = []
        while time.monotonic() < deadline:
            counts = self.page.evaluate(_JS_MARKS_PER_PLOT)
            if counts and all(counts):
                return counts
            time.sleep(0.5)
        self.fail(f"plotly figures did not all render: marks per figure {counts} "
                  "(empty: no figure at all)")
        return counts

    def log_console_errors(self) -> list[str]:
        """Errors in JupyterLab's Log Console (View → Show Log Console), opened if needed."""
        if not self.page.locator(".jp-LogConsolePanel").count():
            self.page.click(".lm-MenuBar-itemLabel:text-is('View')")
            self.page.click(".lm-Menu-itemLabel:text-is('Show Log Console')")
            self.page.wait_for_selector(".jp-LogConsolePanel", timeout=10_000)
            time.sleep(1)
        return [text for text in self.page.evaluate(_JS_LOG_CONSOLE) if _ERROR_TEXT.search(text)]

    def check_no_kernel_errors(self, log_offset: int, when: str) -> None:
        """A widget callback runs outside any cell, so its exception never shows in a cell:
        ipywidgets sends it as an error message that JupyterLab puts in the Log Console (the
        status bar's log counter flashes); errors ipywidgets does not catch reach the kernel's
        stderr (the server log). All three places are checked."""
        errors = self.log_console_errors()
        if errors:
            self.fail(f"the Log Console shows an error {when}:\n{_excerpt(errors[0])}")
        tracebacks = self.lab.server.kernel_tracebacks(log_offset)
        if tracebacks:
            self.fail(f"the kernel raised {when}:\n{tracebacks[0]}")
        self.check_no_cell_errors(when)

    def check_no_js_errors(self) -> None:
        assert not self.js_errors, f"JavaScript errors in the page: {self.js_errors[:3]}"


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def lab(tmp_path_factory, artifacts_dir):
    """One JupyterLab + one Chromium for the module (starting them costs ~20 s on 2 cores)."""
    reason = missing_requirement()
    if reason:
        pytest.skip(reason)
    scratch = tmp_path_factory.mktemp("browser")
    root = scratch / "lab"
    root.mkdir()
    shots = artifacts_dir / "browser"
    shots.mkdir(parents=True, exist_ok=True)
    with jupyter_lab(root) as server, chromium_context(scratch / "chromium-profile") as context:
        yield Lab(server, context, scratch / "run", shots)


@pytest.fixture
def open_tab(lab):
    """Factory: copy a notebook with browser parameters into the lab and open it in a page."""
    pages = []

    def _open(stem: str, name: str | None = None, extra_code: str = "") -> Tab:
        source = NOTEBOOKS / f"{stem}.ipynb"
        params = {"run_dir": str(lab.run_dir), **SMOKE.get(stem, {}),
                  **BROWSER_PARAMS.get(stem, {})}
        name = name or f"{stem}.ipynb"
        inject_parameters(source, lab.server.root / name, params, extra_code)
        page = lab.context.new_page()
        page.set_default_timeout(30_000)
        pages.append(page)
        tab = Tab(lab, page, name)
        page.on("pageerror", lambda exc: tab.js_errors.append(str(exc)))
        return tab

    yield _open
    for page in pages:
        page.close()
    lab.server.shutdown_kernels()  # each test's kernel holds a model; free it for the next test


# --------------------------------------------------------------------------- tests

def test_quickstart_renders_table_and_figure(open_tab):
    tab = open_tab(QUICKSTART)
    tab.open_and_run_all()
    page = tab.page
    languages = {**SMOKE.get(QUICKSTART, {}), **BROWSER_PARAMS[QUICKSTART]}.get(
        "languages", ["en", "zh", "ru", "ar", "fr"])

    tables = page.locator(f"{PANEL} .jp-OutputArea-output table.dataframe")
    answers = [tables.nth(i) for i in range(tables.count())
               if "answer" in tables.nth(i).locator("thead th").all_inner_texts()]
    if not answers:
        tab.fail("no answer table (a DataFrame with an 'answer' column) rendered")
    rows = answers[0].locator("tbody tr").count()
    assert rows == 2 * len(languages), f"answer table has {rows} rows"
    assert "Paris" in answers[0].inner_text(), "the English benign answer does not name Paris"

    marks = tab.wait_for_all_plots()
    assert marks == [2 * len(languages)], f"expected one bar figure with a bar per (kind, " \
                                          f"language); bars per figure: {marks}"
    page.locator(f"{PANEL} .js-plotly-plot").first.scroll_into_view_if_needed()
    tab.shoot()
    tab.check_no_js_errors()


def _check_explorer(tab: Tab) -> None:
    """Run the geometry notebook, then move the explorer's layer slider and watch the plot."""
    tab.open_and_run_all()
    tab.wait_for_all_plots()
    page = tab.page
    explorer = page.locator(f"{PANEL} .mlcwb-explorer")
    slider = explorer.locator(".mlcwb-layer-slider")
    if explorer.count() != 1 or slider.count() != 1:
        tab.fail(f"expected one explorer (ipywidgets VBox, class mlcwb-explorer) with a layer "
                 f"slider (class mlcwb-layer-slider); found {explorer.count()} explorer(s), "
                 f"{slider.count()} slider(s). Without the anywidget package plotly has no "
                 "FigureWidget and the explorer falls back to a static figure.")
    assert slider.locator(".widget-label").inner_text() == "layer"
    figure = explorer.locator(".js-plotly-plot")
    explorer.scroll_into_view_if_needed()
    before = figure.evaluate(_JS_POINTS)
    readout = slider.locator(".widget-readout")
    layer_before = readout.inner_text()

    handle = slider.locator(".noUi-handle")
    at_max = float(handle.get_attribute("aria-valuenow")) >= float(
        handle.get_attribute("aria-valuemax"))
    log_offset = len(tab.lab.server.log())
    handle.focus()
    handle.press("ArrowLeft" if at_max else "ArrowRight")  # the explorer opens on the last layer
    deadline = time.monotonic() + SLIDER_TIMEOUT_S
    after = before
    while time.monotonic() < deadline and (not after or after == before):
        time.sleep(0.5)
        after = figure.evaluate(_JS_POINTS)
    # the kernel has handled the slider event (and written any traceback) once it is idle again
    tab.wait_for_idle_kernel(timeout=60)
    time.sleep(1)
    tab.shoot()
    explorer.screenshot(path=str(tab.lab.shots / f"{tab.label}-explorer.png"))
    tab.check_no_kernel_errors(log_offset, "while handling the layer slider")
    layer_after = readout.inner_text()
    if layer_after == layer_before:
        tab.fail(f"the layer slider did not move (still at layer {layer_before})")
    if after == before:
        tab.fail(f"moving the layer slider from {layer_before} to {layer_after} did not change "
                 "the plotted points")
    title = figure.locator(".gtitle").evaluate("e => e.textContent")
    assert title.endswith(f"layer {layer_after}"), f"figure title {title!r} after the move"
    status = explorer.locator(".mlcwb-explorer-status").inner_text()
    assert status.startswith(f"layer {layer_after}"), f"status line {status!r} after the move"
    tab.check_no_js_errors()


def test_geometry_explorer_slider_changes_the_plot(open_tab):
    _check_explorer(open_tab(GEOMETRY))


@pytest.mark.skipif(os.environ.get("MLCWB_BROWSER_NEGATIVE") != "1",
                    reason="negative check; run with MLCWB_BROWSER_NEGATIVE=1, it must FAIL")
def test_negative_broken_slider_callback_is_caught(open_tab):
    """Expected to FAIL: the slider callback raises, and the checks above must notice."""
    _check_explorer(open_tab(GEOMETRY, f"{GEOMETRY}-broken.ipynb", extra_code=BREAK_SLIDER))
