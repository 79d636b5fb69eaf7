"""The MLflow UI of a small real sweep, in a real browser (`make test-ui`).

One real 3-point multirun (two jobs and an invalid point) on a private store, `make ui` serving that store,
and headless Chromium (Debian's `chromium`, driven by Playwright from PyPI through `executable_path`: no
browser download) opening what a researcher opens: the experiment link the sweep prints, a job run's
overview and circuit drawing, the parent run's summary table. Each check saves its screenshot, passed or
not, to test-artifacts/ui/ (what the page looked like when it failed, if it did).
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import struct
from contextlib import contextmanager
from pathlib import Path

import pytest

from conftest import PROJECT_ROOT, Sweep
from slurm_cluster import free_port
from tracking_server import ServerProcess
from sweep import names
from sweep.circuits.drawing import DETAIL_MAX_EDGES

pytestmark = pytest.mark.ui
SHOTS = PROJECT_ROOT / "test-artifacts" / "ui"
TASK = "single_double_quote"
# Two jobs and an invalid point (density 0.05 is too sparse for the tiny model: a row of the summary table).
# 400 steps and a target between the dense job's full-model loss (about 1.10) and its loss with every node
# ablated (about 1.20): it solves the task with a circuit of some nodes to draw, and the sparse job solves
# it with an empty one; either way a job has finite circuit metrics and a description naming what it solved.
SWEEP = ("sparsity.density=1,0.5,0.05", f"tasks.names=[{TASK}]", "train.steps=400", "prune.target_loss=1.15")
TIMEOUT_MS = 30_000  # per element: the first load of the React app takes seconds on a loaded 2-core machine
SERVER_START_S = 180
# Closed MLflow Assistant panel, as if dismissed on an earlier visit: it would cover a third of each screenshot.
NO_ASSISTANT = ("localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
                "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');")


def playwright_api():
    """Imported on use: `make install` leaves Playwright out (`make test-ui` installs it); `make test` collects this file."""
    import playwright.sync_api
    return playwright.sync_api


class UiServer(ServerProcess):
    """`make ui` on another store and port, as a researcher starts it."""

    def __init__(self, store_uri: str, log: Path):
        port = free_port()
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}  # CI reaches apt and PyPI only
        super().__init__("make ui", ["make", "--no-print-directory", "ui", f"STORE={store_uri}", f"PORT={port}"],
                         env, PROJECT_ROOT, log, port)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """The sweep's store, its printed experiment link, the experiment, the parent run and the job runs."""
    sweep = Sweep(tmp_path_factory.mktemp("ui-sweep"))
    result = sweep.run(*SWEEP, multirun=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    link = re.search(r"^open the runs: make ui, then (http://\S+)$", result.stdout, re.MULTILINE)
    assert link, f"the sweep prints no link to its runs:\n{result.stdout[-2000:]}"
    experiment = sweep.client.get_experiment_by_name("frontier")
    runs = sweep.runs()
    parents = [r for r in runs if r.data.tags.get(names.TAG_KIND) == names.KIND_PARENT]
    jobs = sorted((r for r in runs if r.data.tags.get(names.TAG_KIND) == names.KIND_JOB), key=lambda r: r.info.run_name)
    assert len(parents) == 1 and len(jobs) == 2, [r.info.run_name for r in runs]
    return {"sweep": sweep, "link": link.group(1), "experiment": experiment, "parent": parents[0], "jobs": jobs,
            "runs": runs}


@pytest.fixture(scope="module")
def server(swept):
    ui = UiServer(swept["sweep"].uri, swept["sweep"].tmp / "make-ui.log")
    try:
        ui.start(SERVER_START_S)
        yield ui
    finally:
        ui.stop()


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium")
    assert chromium, "no chromium on PATH: `make test-ui` apt-installs Debian's chromium"
    SHOTS.mkdir(parents=True, exist_ok=True)
    for old in SHOTS.glob("*.png"):
        old.unlink()
    api = playwright_api()
    api.expect.set_options(timeout=TIMEOUT_MS)
    with api.sync_playwright() as playwright:
        # --disable-dev-shm-usage: a container's /dev/shm (64 MB in Docker) is too small for Chromium's renderers
        browser = playwright.chromium.launch(executable_path=chromium, args=["--disable-dev-shm-usage"])
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def context(browser):
    """A fresh profile per test, as a first visit (no workflow type remembered from an earlier page)."""
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    context.set_default_timeout(TIMEOUT_MS)
    context.add_init_script(NO_ASSISTANT)
    yield context
    context.close()


def open_tab(context, url: str):
    """A new tab on `url`: a tab that only changes its URL's fragment may keep the previous run's artifacts."""
    page = context.new_page()
    page.goto(url)
    return page


@contextmanager
def screenshot(page, name: str):
    """Save the page as test-artifacts/ui/<name>.png after the checks in the block, whether they pass or not."""
    try:
        yield
    finally:
        page.screenshot(path=SHOTS / f"{name}.png", full_page=True)


def on_server(link: str, server: UiServer) -> str:
    """The sweep's printed link (the default port of `make ui`) on the test's server."""
    return re.sub(r"^http://127\.0\.0\.1:\d+", server.url, link)


def run_url(server: UiServer, run, tab: str = "") -> str:
    """A run's page (or its `tab`), in model-training mode as the links the sweep writes open it."""
    path, _, query = names.ui_runs_path(run.info.experiment_id, run.info.run_id).partition("?")
    return f"{server.url}/{path}{tab}?{query}"


def run_link(page, run):
    """The link to a run as the runs table draws it (its text is the run's name)."""
    return page.locator(f'a[href$="/runs/{run.info.run_id}"]')


def rendered(markdown: str) -> str:
    """The text of a description once the UI has rendered its markdown (inline code and bold)."""
    return " ".join(markdown.replace("`", "").replace("**", "").split())


def expect_metric(page, key: str, value: float) -> None:
    """The overview's metrics table has a row `key` whose value parses back to the logged float."""
    expect = playwright_api().expect
    row = page.get_by_role("row").filter(has=page.get_by_role("link", name=key, exact=True))
    expect(row).to_have_count(1)
    shown = row.get_by_role("cell").nth(1)
    expect(shown).not_to_be_empty()
    assert float(shown.inner_text()) == value, (key, shown.inner_text(), value)


def edges(job) -> float:
    return job.data.metrics.get(names.EDGES_GEOMEAN, math.nan)


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    return struct.unpack(">II", path.read_bytes()[16:24])


def test_the_printed_link_opens_the_runs_table_in_model_training_mode(swept, server, context):
    expect = playwright_api().expect
    page = open_tab(context, on_server(swept["link"], server))
    with screenshot(page, "1-experiment-runs"):
        description = swept["experiment"].tags[names.TAG_DESCRIPTION]
        assert description.startswith("Sparsity x width sweep"), description[:200]
        expect(page.get_by_text(rendered(description.split(". ")[0]))).to_be_visible()
        expect(page.get_by_text(f"{len(swept['runs'])} matching runs")).to_be_visible()
        parent = run_link(page, swept["parent"])
        expect(parent).to_have_text(swept["parent"].info.run_name)
        page.get_by_role("gridcell").filter(has=parent).get_by_role("button").click()  # the parent's jobs
        for job in swept["jobs"]:
            expect(run_link(page, job)).to_have_text(job.info.run_name)
        # model training mode titles the table "Runs" (GenAI mode: "Training runs") and has no GenAI pages
        genai = ("in GenAI mode: MLflow 3.17's UI takes the mode from the link's ?workflowType=machine_learning "
                 "(else the browser's last choice, by default GenAI), not from the experiment's mlflow.experimentKind")
        expect(page.get_by_role("heading", name="Runs", exact=True), genai).to_be_visible()
        for genai_page in ("Judges", "Sessions", "Prompts"):
            expect(page.get_by_role("link", name=genai_page, exact=True), genai).to_have_count(0)


def test_a_job_page_shows_its_description_and_metrics(swept, server, context):
    expect = playwright_api().expect
    solved = [j for j in swept["jobs"] if math.isfinite(edges(j))]
    assert solved, "no job solved its task: the tiny model's empty-circuit loss is above prune.target_loss"
    job = solved[0]
    label = job.info.run_name.split()[0]
    description = job.data.tags.get(names.TAG_DESCRIPTION, "")
    assert description.startswith(label) and f"solved 1/1 tasks: {TASK}" in description, description
    page = open_tab(context, run_url(server, job))
    with screenshot(page, "2-job-overview"):
        expect(page.get_by_test_id("note-editor-preview-content")).to_have_text(rendered(description))
        finite = {k: v for k, v in job.data.metrics.items() if math.isfinite(v)}  # the UI leaves NaN metrics out
        expect(page.get_by_role("heading", name=f"Metrics ({len(finite)})", exact=True)).to_be_visible()
        for key in (names.CAPABILITY_VAL_LOSS, names.EDGES_GEOMEAN, names.LOG10_EDGES_GEOMEAN,
                    names.TRAIN_LOSS, names.VAL_LOSS):
            expect_metric(page, key, job.data.metrics[key])


def test_a_job_page_draws_its_circuit(swept, server, context, tmp_path):
    expect = playwright_api().expect
    job = max(swept["jobs"], key=lambda j: edges(j) if math.isfinite(edges(j)) else -1)  # the largest circuit
    drawing = names.circuit_artifact(TASK, "png")
    stored = Path(swept["sweep"].client.download_artifacts(job.info.run_id, drawing, str(tmp_path)))
    page = open_tab(context, run_url(server, job, "/artifacts"))
    with screenshot(page, "3-job-circuit"):
        page.get_by_text(drawing.split("/")[0], exact=True).click()  # the circuits/ folder
        page.get_by_text(drawing.split("/")[1], exact=True).click()
        image = page.get_by_role("img", name=drawing, exact=True)
        expect(image).to_be_visible()
        # the stored PNG itself, decoded: the served file reached the browser whole
        expect(image).to_have_js_property("complete", True)
        shown = image.evaluate("img => [img.naturalWidth, img.naturalHeight]")
        assert tuple(shown) == png_size(stored), (shown, png_size(stored))
    # the same drawing as a page: the UI previews it in a frame whose SVG has a hover title per node and edge
    record = json.loads(Path(swept["sweep"].client.download_artifacts(
        job.info.run_id, names.circuit_artifact(TASK, "json"), str(tmp_path))).read_text())
    page.get_by_text(Path(drawing).with_suffix(".html").name, exact=True).click()
    frame = page.frame_locator("iframe").first
    expect(frame.locator("svg")).to_be_visible()
    titles = frame.locator("svg title").all_text_contents()
    if record["n_edges"] <= DETAIL_MAX_EDGES:  # drawn node by node (a larger circuit: by node location)
        assert len(titles) >= record["n_nodes"] + record["n_edges"], (len(titles), record["n_nodes"], record["n_edges"])
        assert any(title.startswith(record["nodes"][0]) for title in titles), (record["nodes"][0], titles[:5])
    assert titles, "no hover titles in the drawing's page"


def test_the_parent_page_shows_the_summary_table(swept, server, context, tmp_path):
    expect = playwright_api().expect
    parent = swept["parent"]
    path = swept["sweep"].client.download_artifacts(parent.info.run_id, names.ARTIFACT_SUMMARY_TABLE, str(tmp_path))
    table = json.loads(Path(path).read_text())  # log_table's format: {"columns": [...], "data": [[...], ...]}
    columns = ["label", "status", "val_loss", "edges_geomean", "run_id", "reason", "point"]
    assert table["columns"] == columns, table["columns"]
    rows = [dict(zip(columns, row)) for row in table["data"]]
    assert sorted(r["status"] for r in rows) == ["finished", "finished", "invalid"], rows
    assert sorted(r["label"].split()[0] for r in rows) == ["w1-d0.05-s0", "w1-d0.5-s0", "w1-d1-s0"], rows  # as runs are named
    page = open_tab(context, run_url(server, parent, "/artifacts"))
    with screenshot(page, "4-parent-summary"):
        page.get_by_text(names.ARTIFACT_SUMMARY_TABLE, exact=True).click()
        expect(page.get_by_role("checkbox", name="View as table")).to_be_checked()  # a logged table, not JSON text
        expect(page.get_by_role("columnheader")).to_have_text(columns)
        for row in rows:
            shown = page.get_by_role("row").filter(has=page.get_by_role("cell", name=row["label"], exact=True))
            expect(shown).to_have_count(1)
            expect(shown.get_by_role("cell").nth(1)).to_have_text(row["status"])
            expect(shown.get_by_role("cell").nth(4)).to_have_text(row["run_id"] or "null")  # how the UI shows None
