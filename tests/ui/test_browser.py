"""The dashboard in a real browser: JupyterLab and the Voilà page (`nbjobs dashboard`), driven by
Debian's Chromium through Playwright. Screenshots go to test-artifacts/ (look at them).

Follows shared/recipes/widget-browser-test.md: isolated Jupyter folders, --allow-root, wait for the
kernel status "(ipykernel) | Idle" before running the cell, stop servers by process group.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

import nbjobs
from nbjobs.model import JobState, Outcome, OutcomeKind
from nbjobs.storage import SqlStore

CHROMIUM = next((p for p in (os.environ.get("CHROMIUM"), "/usr/lib/chromium/chromium", "/usr/bin/chromium")
                 if p and os.path.exists(p)), None)
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
SECRET = "browser-test-secret"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install -y chromium)"),
    pytest.mark.timeout(300),
]

JOBS_MODULE = '''
def login(user, password, retries=1):
    raise PermissionError("bad credentials for " + user)
'''

CELL = """import nbjobs
from e2e_jobs import login
nb = nbjobs.connect()  # NBJOBS_URL from the kernel's environment
job = nb.options(retries=0, name="nightly-login").enqueue(login, "bob", "hunter2")
nb.start_server(workers=1)
job.wait(60)
nb.stop_server()  # so a requeued job stays Enqueued where the test can see it
dash = nb.dashboard(refresh=1.0)
dash"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except urllib.error.HTTPError:
            return  # the server answers (e.g. 403/302): it is up
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{log.read_text()[-3000:]}") from None
            time.sleep(0.25)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """JupyterLab on 127.0.0.1 with a token; its kernels use a temp database through NBJOBS_URL."""
    root = Path(tempfile.mkdtemp(prefix="nbjobs-e2e-", dir=tmp_path))
    db_url = f"sqlite:///{root / 'jobs.db'}"
    (root / "e2e_jobs.py").write_text(JOBS_MODULE)
    nb = {"cells": [{"cell_type": "code", "execution_count": None, "id": "c1", "metadata": {},
                     "outputs": [], "source": CELL}],
          "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
          "nbformat": 4, "nbformat_minor": 5}
    (root / "dash.ipynb").write_text(json.dumps(nb))
    settings = root / ".lab-settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    no_news = '{"fetchNews": "false", "checkForUpdates": false}'
    (settings / "notification.jupyterlab-settings").write_text(no_news)
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(root / ".cfg"), JUPYTER_RUNTIME_DIR=str(root / ".rt"),
               JUPYTER_DATA_DIR=str(root / ".data"), IPYTHONDIR=str(root / ".ipython"),
               JUPYTERLAB_SETTINGS_DIR=str(root / ".lab-settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(root / ".lab-ws"), NBJOBS_URL=db_url, NBJOBS_SECRET=SECRET)
    log_path = root / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
             f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
             f"--ServerApp.root_dir={root}", "--LabApp.news_url=None",
             "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
            cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        base = f"http://127.0.0.1:{port}"
        try:
            _wait_http(f"{base}/api/status?token={token}", proc, log_path)
            yield base, token, db_url
        finally:
            try:
                req = urllib.request.Request(f"{base}/api/shutdown?token={token}", method="POST")
                urllib.request.urlopen(req, timeout=5)
                proc.wait(timeout=15)
            except Exception:
                _stop(proc)


def test_requeue_a_failed_job_in_jupyterlab(lab: tuple[str, str, str], browser: Any) -> None:
    from playwright.sync_api import expect

    base, token, db_url = lab
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    try:
        page.goto(f"{base}/lab/tree/dash.ipynb?token={token}")
        expect(page.get_by_text(re.compile(r"\(ipykernel\) \| Idle$"))).to_be_visible(timeout=90_000)
        page.locator(".jp-Cell .jp-InputArea-editor").first.click()
        page.keyboard.press("Shift+Enter")
        out = page.locator(".jp-OutputArea-output")
        expect(out.locator(".lm-TabBar-tab")).to_have_text(
            ["Overview", "Jobs", "Job", "Recurring", "Servers", "Retries"], timeout=90_000)
        expect(out.locator(".nbjobs-tile").filter(has_text="Failed")).to_contain_text("1")
        page.screenshot(path=str(ARTIFACTS / "lab-overview.png"))

        out.locator(".lm-TabBar-tab", has_text="Jobs").click()
        out.get_by_role("button", name=re.compile(r"^Failed \(1\)$")).click()
        row = out.locator("table.nbjobs-row")
        expect(row).to_contain_text("nightly-login")
        expect(row).to_contain_text("PermissionError")
        page.screenshot(path=str(ARTIFACTS / "lab-failed-list.png"))

        out.get_by_role("button", name="#1").click()
        detail = out.locator(".nbjobs-dash", has_text="Job #1")
        expect(detail).to_contain_text("bad credentials for bob")
        expect(detail.locator("table.nbjobs-args")).to_contain_text("***")
        expect(detail.locator("table.nbjobs-args")).not_to_contain_text("hunter2")
        detail.screenshot(path=str(ARTIFACTS / "lab-job-detail.png"))

        out.get_by_role("button", name="Requeue", exact=True).click()
        expect(out.locator(".nbjobs-status")).to_have_text("requeued job 1", timeout=30_000)
        expect(detail.locator(".nbjobs-badge").first).to_have_text("enqueued")
        expect(out.locator(".nbjobs-history")).to_contain_text("from dashboard")
        page.screenshot(path=str(ARTIFACTS / "lab-after-requeue.png"), full_page=True)

        # The same pages in the dark theme (colours come from --jp-* variables).
        page.locator(".lm-MenuBar-item", has_text="Settings").click()
        page.locator(".lm-Menu-item", has_text=re.compile(r"^Theme$")).hover()
        page.locator(".lm-Menu-item", has_text=re.compile(r"^JupyterLab Dark$")).click()
        expect(page.locator("body[data-jp-theme-name='JupyterLab Dark']")).to_be_attached(timeout=30_000)
        out.locator(".lm-TabBar-tab", has_text="Overview").click()
        expect(out.locator(".nbjobs-tile").filter(has_text="Enqueued")).to_contain_text("1")
        page.screenshot(path=str(ARTIFACTS / "lab-dark-overview.png"))
        out.locator(".lm-TabBar-tab", has_text="Jobs").click()
        out.get_by_role("button", name=re.compile(r"^Enqueued \(1\)$")).click()
        expect(out.locator("table.nbjobs-row")).to_contain_text("nightly-login")
        page.screenshot(path=str(ARTIFACTS / "lab-dark-jobs.png"))
    finally:
        page.close()

    store = SqlStore(db_url)
    try:
        assert store.states_of([1]) == {1: JobState.ENQUEUED}
        assert store.history(1)[-1].reason == "from dashboard"
    finally:
        store.close()


def login(user: str, password: str) -> None:
    raise PermissionError(f"bad credentials for {user}")


def _failed_job(db_url: str) -> int:
    engine = nbjobs.connect(db_url, secret=SECRET)
    try:
        client = engine.client
        job = client.submit([client.new_job(login, ("carol", "s3cret-pw"), {}, options={"retries": 0})])[0]
        now = engine.clock.now()
        engine.store.acquire("e2e", ["*"], 1, now + timedelta(seconds=60), now)
        engine.store.finish("e2e", [Outcome(job_id=job.id, kind=OutcomeKind.FAILED, finished_at=now,
                                            error_type="PermissionError",
                                            error_message="bad credentials for carol")], now)
        return job.id
    finally:
        engine.close()


def test_voila_page_served_by_nbjobs_dashboard(tmp_path: Path, browser: Any) -> None:
    from playwright.sync_api import expect

    db_url = f"sqlite:///{tmp_path / 'jobs.db'}"
    job_id = _failed_job(db_url)
    port, token = _free_port(), secrets.token_hex(16)
    log_path = tmp_path / "voila.log"
    env = dict(os.environ, NBJOBS_SECRET=SECRET, NBJOBS_DASHBOARD_TOKEN=token)
    nbjobs_cli = shutil.which("nbjobs") or "nbjobs"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [nbjobs_cli, "dashboard", "--url", db_url, "--port", str(port), "--allow-actions",
             "--refresh", "1"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_http(f"http://127.0.0.1:{port}/login", proc, log_path)
        with pytest.raises(urllib.error.HTTPError):  # no token: sent to the login page, no dashboard
            opener = urllib.request.build_opener(_NoRedirect)
            opener.open(f"http://127.0.0.1:{port}/", timeout=30)
        page = browser.new_page(viewport={"width": 1400, "height": 800})
        try:
            page.goto(f"http://127.0.0.1:{port}/?token={token}")
            expect(page.locator(".lm-TabBar-tab", has_text="Jobs")).to_be_visible(timeout=120_000)
            page.screenshot(path=str(ARTIFACTS / "voila-overview.png"), full_page=True)
            page.locator(".lm-TabBar-tab", has_text="Jobs").click()
            page.get_by_role("button", name=re.compile(r"^Failed \(1\)$")).click()
            expect(page.locator("table.nbjobs-row")).to_contain_text("PermissionError")
            page.get_by_role("button", name=f"#{job_id}").click()
            expect(page.locator("table.nbjobs-args")).to_contain_text("***")
            expect(page.locator("table.nbjobs-args")).not_to_contain_text("s3cret-pw")
            page.get_by_role("button", name="Requeue", exact=True).click()
            expect(page.locator(".nbjobs-status")).to_have_text(f"requeued job {job_id}", timeout=30_000)
            page.screenshot(path=str(ARTIFACTS / "voila-after-requeue.png"), full_page=True)
        finally:
            page.close()
    finally:
        _stop(proc)
    store = SqlStore(db_url)
    try:
        assert store.states_of([job_id]) == {job_id: JobState.ENQUEUED}
        assert store.history(job_id)[-1].reason == "from dashboard"
    finally:
        store.close()


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None
