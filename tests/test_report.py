"""Reports: per-run and cross-run pages, what they plot and where, and a real browser's verdict on them.

The run folders here are written with the harness's own :class:`RunStore` and columns, holding the
three kinds of rows a lab's results folder mixes: native (x86), emulated (an aarch64 board under
QEMU) and not run (a CUDA target on a machine without a GPU) — plus an older duplicate measurement.
A real run on this machine is exercised end to end by ``test_cli`` and ``test_resume_kill``.

The HTML check uses Debian's Chromium, headless, driven over the DevTools protocol on a pipe
(``--remote-debugging-pipe``: no port, no network): the page must load, every image must decode
(``naturalWidth > 0``), nothing may be logged as an error, and nothing may be fetched but the page
itself and ``data:`` URLs. A deliberately broken page proves the check can fail.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import select
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from click.testing import CliRunner

from harness import plots
from harness.bench import COLUMNS, LAYER_COLUMNS
from harness.cli import main
from harness.report import collect, latest_rows, write_comparison, write_run_report
from harness.results import ResultsError, RunStore

REPO = Path(__file__).resolve().parent.parent
NOT_RUN = "not run: no CUDA device on this machine"
# the device text of a real not-run CUDA row (results/reference): a cell this long pushed every figure off-screen
CUDA_DEVICE = ("no CUDA device here (libcuda.so.1 not found: the NVIDIA driver is not installed or not on the loader "
               "path) | compiled, exported, verified: b1: sm_89 library for x86_64 host: SASS sm_89 + PTX compute_89, "
               "6 kernels verified; b64: sm_89 library for x86_64 host: SASS sm_89 + PTX compute_89, "
               "6 kernels verified")
# Figures only a device can produce: empty in every table row not run (sizes and the energy proxy stay).
MEASURED = ["lat_small_median_ms", "lat_small_p90_ms", "lat_large_median_ms", "thr_large_ips", "clean_acc",
            "robust_acc", "agreement", "bitexact", "energy_measured_uj"]

# Per variant: (avg bits, b1 median ms, b1 p90 ms, throughput, energy proxy µJ, packed bytes, clean, pgd)
BASE = {"fp32": (32, 0.0065, 0.0068, 696682.1, 0.6743, 4136.0, 0.905, 0.645),
        "int8": (8.0, 0.0117, 0.0133, 711575.0, 0.1848, 1148.0, 0.905, 0.645),
        "int4": (4.0, 0.0075, 0.0081, 942932.9, 0.1049, 650.0, 0.885, 0.65)}
LAYERS = [("conv1", "conv", "4x1x3x3", 576, 2.1), ("conv2", "conv", "8x4x3x3", 1152, 3.4),
          ("fc1", "dense", "16x32", 512, 1.7), ("fc2", "dense", "10x16", 160, 1.2)]


def _row(target: str, measured_as: str, device: str, variant: str, slow: float = 1.0, ts: str = "") -> dict[str, Any]:
    bits, lat, p90, thr, energy, wbytes, clean, pgd = BASE[variant]
    return {"target": target, "measured_as": measured_as, "device": device, "variant": variant,
            "kind": "float" if variant == "fp32" else "int", "plan": variant, "avg_weight_bits": bits,
            "act_bits": 32 if variant == "fp32" else 8, "batch_small": 1, "batch_large": 16,
            "lat_small_median_ms": round(lat * slow, 4), "lat_small_p90_ms": round(p90 * slow, 4),
            "thr_large_ips": round(thr / slow, 1), "clean_acc": clean, "robust_acc": pgd, "agreement": 1.0,
            "bitexact": 1.0, "n_eval": 200, "energy_proxy_uj": energy, "weight_bytes": wbytes,
            "artefact_bytes": 150000, "timestamp": ts or "2026-01-01T00:00:00+00:00"}


def _layers(target: str, variant: str, lipschitz: bool) -> list[dict[str, Any]]:
    bits = BASE[variant][0]
    return [{"target": target, "variant": variant, "layer": n, "kind": k, "shape": s, "macs": m, "weight_bits": bits,
             "weight_bytes": m, **({"lipschitz": lip * (1 + 0.01 * (32 - bits))} if lipschitz else {})}
            for n, k, s, m, lip in LAYERS]


def _run_folder(root: Path, name: str, target: str, description: str, rows: list[dict[str, Any]],
                lipschitz: bool) -> Path:
    folder = root / name
    store = RunStore(folder, COLUMNS, LAYER_COLUMNS + (["lipschitz"] if lipschitz else []))
    store.write_json("run.json", {
        "config": {"dataset": "digits", "train": {"arch": "tinycnn"}, "attack": {"eps": 0.1}, "batch_large": 16,
                   "eval_samples": 200},
        "target": {"name": target, "description": description, "threads": 2},
        "environment": {"host_cpu": "test CPU", "host_cores": 2, "python": "3.11", "torch": "2", "tvm": "0.27"},
        "latency_protocol": "1 warm-up calls, 3 repeats x 3 calls, median/p90 over repeats",
        "energy_source": "Horowitz ISSCC 2014 (45 nm) op/byte energies; proxy model, not measured"})
    for r in rows:
        store.add(r, [] if plots.measured_kind(r["measured_as"]) == "not run" else
                  _layers(target, r["variant"], lipschitz))
    return folder


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results folder as a lab would have it, reported with the real `laaq-bench report` command."""
    root = tmp_path_factory.mktemp("results")
    _run_folder(root, "a-x86-old", "x86", "x86-64 CPU", [
        _row("x86", "native", "local x86_64", "int8", slow=3.0, ts="2025-12-01T00:00:00+00:00")], lipschitz=False)
    _run_folder(root, "b-x86", "x86", "x86-64 CPU",
                [_row("x86", "native", "local x86_64", v) for v in ("fp32", "int8", "int4")], lipschitz=True)
    _run_folder(root, "c-rpi4-old", "rpi4", "Raspberry Pi 4 (emulated)",  # the emulator's port changes per run
                [_row("rpi4", "emulated", "RPC server 127.0.0.1:40417", "int8", slow=250.0, ts="2025-12-02T00:00:00")],
                lipschitz=False)
    _run_folder(root, "c-rpi4", "rpi4", "Raspberry Pi 4 (emulated)",
                [_row("rpi4", "emulated", "RPC server 127.0.0.1:9091", v, slow=300.0) for v in ("int8", "int4")],
                lipschitz=False)
    stale = {**_row("cuda", NOT_RUN, CUDA_DEVICE, "fp32"), "lat_small_median_ms": 99.0, "clean_acc": 0.999}
    _run_folder(root, "d-cuda", "cuda", "NVIDIA GPU", [stale, {**_row("cuda", NOT_RUN, CUDA_DEVICE, "int8")}],
                lipschitz=False)
    r = CliRunner().invoke(main, ["report", str(root)])
    assert r.exit_code == 0, r.output
    assert "5 run(s)" in r.output
    return root


def md_tables(text: str) -> list[pd.DataFrame]:
    """Every Markdown table of a report, cells as text (blank stays blank)."""
    tables, cur = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            cur.append([c.strip() for c in line.strip().strip("|").split(" | ")])
        elif cur:
            tables.append(pd.DataFrame(cur[2:], columns=cur[0]))
            cur = []
    return tables


# --- plots -----------------------------------------------------------------------------------------------


def test_pareto_front() -> None:
    import numpy as np

    lat, acc = np.array([4.0, 1.0, 2.0, 3.0, 2.0]), np.array([0.8, 0.5, 0.7, 0.6, 0.4])
    assert plots.pareto_front(lat, acc).tolist() == [1, 2, 0]  # (1, .5) -> (2, .7) -> (4, .8); (3, .6) dominated
    assert plots.pareto_front(np.array([1.0, 1.0]), np.array([0.5, 0.6])).tolist() == [1]


def test_plots_keep_native_emulated_and_not_run_apart(results: Path) -> None:
    df, _ = latest_rows(collect(results))
    lat = plots.latency_vs_robust(df, "ctx")
    assert lat is not None and lat.png.startswith(b"\x89PNG")
    panels = {(p, t) for p, t, _, _ in lat.plotted}
    assert panels == {("native", "x86"), ("emulated", "rpi4")}, "emulated latency must have its own panel"
    assert not [p for p in lat.plotted if p[1] == "cuda"], "rows not run are never plotted"
    assert "Emulated points are in their own panel" in lat.caption
    energy = plots.energy_vs_robust(df, "ctx")
    assert energy is not None and {p[0] for p in energy.plotted} == {"proxy"}  # no sensor: no measured panel
    assert not [p for p in energy.plotted if p[1] == "cuda"]
    assert "not a measurement" in energy.caption or "never a measurement" in energy.caption
    only_not_run = df[df["target"] == "cuda"]
    assert plots.latency_vs_robust(only_not_run, "ctx") is None and plots.energy_vs_robust(only_not_run, "ctx") is None


def test_measured_energy_gets_its_own_panel() -> None:
    rows = pd.DataFrame([{**_row("x86", "native", "local", "int8"), "energy_measured_uj": 3.5},
                         _row("x86", "native", "local", "fp32")]).astype(str)
    p = plots.energy_vs_robust(rows, "ctx")
    assert p is not None and sorted(x[0] for x in p.plotted) == ["measured", "proxy", "proxy"]


def test_layer_bits_with_and_without_lipschitz(results: Path) -> None:
    with_lip = pd.read_csv(results / "b-x86" / "layers.csv", dtype=str, keep_default_na=False)
    p = plots.layer_bits(with_lip, "ctx")
    assert p is not None and "Lipschitz" in p.title
    assert {x[3] for x in p.plotted if x[0] == "lipschitz"} == {"int8", "int4"}
    assert "fp32" in p.caption, "left-out float variants are named"
    without = pd.read_csv(results / "c-rpi4" / "layers.csv", dtype=str, keep_default_na=False)
    assert "lipschitz" not in without.columns
    q = plots.layer_bits(without, "ctx")
    assert q is not None and "Lipschitz" not in q.title and "No Lipschitz" in q.caption
    assert not [x for x in q.plotted if x[0] == "lipschitz"]
    blank = with_lip.assign(lipschitz="")
    assert not [x for x in plots.layer_bits(blank, "ctx").plotted if x[0] == "lipschitz"]


def test_layer_latency_plot_only_when_measured(results: Path) -> None:
    lay = pd.read_csv(results / "b-x86" / "layers.csv", dtype=str, keep_default_na=False)
    assert plots.layer_latency(lay, "ctx") is None  # no latency_ms column: no figure, no invented bars
    assert plots.layer_latency(lay.assign(latency_ms=""), "ctx") is None
    timed = lay.assign(latency_ms=[str(0.01 * (i + 1)) for i in range(len(lay))])
    p = plots.layer_latency(timed, "ctx", "native")
    assert p is not None and {x[3] for x in p.plotted} == set(lay["variant"]) and "native" in p.caption


def test_per_target_plans_side_by_side(tmp_path: Path) -> None:
    """Each target's laaq widths (and measured layer latency, where there is a table) in one table."""
    from harness.report import per_target_plans

    BASE["laaq"] = (4.0, 0.006, 0.007, 900000.0, 0.1, 600.0, 0.88, 0.6)
    try:
        for name, target, kind, bits, ms in (("p-x86", "x86", "native", 3, "0.01"),
                                             ("p-rpi5", "rpi5", "emulated", 5, "")):
            folder = _run_folder(tmp_path, name, target, target, [_row(target, kind, "dev", "laaq")], lipschitz=False)
            lay = pd.read_csv(folder / "layers.csv", dtype=str, keep_default_na=False)
            lay = lay.assign(weight_bits=str(bits), latency_ms=ms)
            lay.to_csv(folder / "layers.csv", index=False)
        rows, _ = latest_rows(collect(tmp_path))
        t = per_target_plans(tmp_path, rows)
        assert t.columns[0] == "layer"
        assert set(t.columns[1:]) == {"x86 (native) bits", "x86 (native) ms", "rpi5 (emulated) bits"}
        assert list(t["layer"]) == [n for n, *_ in LAYERS]
        assert set(t["x86 (native) bits"]) == {"3"} and set(t["rpi5 (emulated) bits"]) == {"5"}
        assert per_target_plans(tmp_path, rows, variant="int8").empty
        write_comparison(tmp_path)
        assert "LAAQ's plan on each target" in (tmp_path / "comparison.md").read_text()
    finally:
        del BASE["laaq"]


# --- per-run report ----------------------------------------------------------------------------------------


def test_run_report_md_and_html(results: Path) -> None:
    folder = results / "b-x86"
    md = (folder / "report.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\((plots/[^)]+\.png)\)", md)
    assert len(images) == 3, md
    for rel in images:
        assert (folder / rel).read_bytes().startswith(b"\x89PNG")
    assert "How this was measured" in md and "native" in md
    (variants,) = [t for t in md_tables(md) if "clean_acc" in t.columns]
    assert variants["variant"].tolist() == ["fp32", "int8", "int4"]
    page = (folder / "report.html").read_text()
    assert page.count('<img src="data:image/png;base64,') == 3 and "Lipschitz" in page
    assert "<figcaption>" in page and "time_evaluator" in page


def test_not_run_rows_listed_with_empty_figures(results: Path) -> None:
    md = (results / "d-cuda" / "report.md").read_text()
    (t,) = [t for t in md_tables(md) if "clean_acc" in t.columns]
    assert (t["measured_as"] == NOT_RUN).all() and len(t) == 2
    assert (t[[c for c in MEASURED if c in t.columns]] == "").all().all(), "a stale figure leaked into the table"
    assert t["energy_proxy_uj"].tolist() == ["0.6743", "0.1848"] and t["weight_bytes"].tolist() == ["4136.0", "1148.0"]
    assert "![" not in md and "no measured rows: nothing to plot" in md
    assert "<img" not in (results / "d-cuda" / "report.html").read_text()
    assert not list((results / "d-cuda").glob("plots/*.png"))


def test_rebuilding_a_report_is_stable_and_drops_stale_plots(tmp_path: Path) -> None:
    folder = _run_folder(tmp_path, "r", "x86", "x86", [_row("x86", "native", "local", "int8")], lipschitz=False)
    write_run_report(folder)
    first = {p.name: p.read_bytes() for p in (folder / "plots").glob("*.png")}
    (folder / "plots" / "old_variant_plot.png").write_bytes(b"stale")
    write_run_report(folder)
    second = {p.name: p.read_bytes() for p in (folder / "plots").glob("*.png")}
    assert second == first, "same data, same PNG bytes; stale figures removed"


# --- comparison ---------------------------------------------------------------------------------------------


def test_comparison_one_row_per_target_device_variant(results: Path) -> None:
    md = (results / "comparison.md").read_text()
    (t,) = [t for t in md_tables(md) if "robust_acc" in t.columns]
    for c in ("target", "measured_as", "device", "variant", "lat_small_median_ms", "lat_small_p90_ms", "thr_large_ips",
              "energy_proxy_uj", "energy_measured_uj", "weight_bytes", "clean_acc", "robust_acc", "agreement", "run"):
        assert c in t.columns, c
    assert not t.duplicated(["target", "device", "variant"]).any()
    assert len(t) == 3 + 2 + 2
    x86_int8 = t[(t.target == "x86") & (t.variant == "int8")].iloc[0]
    assert x86_int8["run"] == "b-x86" and x86_int8["lat_small_median_ms"] == "0.0117", "the latest measurement wins"
    assert "2 older or not-run duplicate row(s)" in md
    assert t[(t.target == "rpi4") & (t.variant == "int8")].iloc[0]["run"] == "c-rpi4"
    assert set(t[t.target == "rpi4"]["measured_as"]) == {"emulated"}
    cuda = t[t.target == "cuda"]
    assert (cuda[[c for c in MEASURED if c in cuda.columns]] == "").all().all()
    assert (cuda["energy_proxy_uj"] != "").all(), "figures that need no device are kept"
    assert "`cuda` on no CUDA device here: **not run: no CUDA device on this machine**" in md
    assert set(cuda["device"]) == {"no CUDA device here"} and set(cuda["measured_as"]) == {"not run: no CUDA device…"}
    assert max(len(str(v)) for v in t["device"]) <= 32, "table cells stay short"
    below = md[md.index("| run |"):]
    assert f"`cuda` (fp32, int8) — **{NOT_RUN}** — on {CUDA_DEVICE}" in below, "the provenance moved under the table"
    for rel in re.findall(r"\]\((comparison-plots/[^)]+\.png)\)", md):
        assert (results / rel).read_bytes().startswith(b"\x89PNG")
    page = (results / "comparison.html").read_text()
    assert page.count("<img ") == 2 and 'class="notrun"' in page and 'class="emulated"' in page


def test_html_is_self_contained(results: Path) -> None:
    for page in [results / "comparison.html", *results.glob("*/report.html")]:
        text = page.read_text()
        refs = re.findall(r'(?:src|href)="([^"]*)"', text)
        assert refs and all(r.startswith("data:") for r in refs), (page, [r[:40] for r in refs])
        assert "<script" not in text and "url(" not in text and "@import" not in text


def test_report_of_an_empty_folder_is_a_clear_error(tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert r.exit_code == 1 and "no runs under" in r.output


def test_unreadable_run_json_names_the_file(tmp_path: Path) -> None:
    folder = _run_folder(tmp_path, "r", "x86", "x86", [_row("x86", "native", "local", "int8")], lipschitz=False)
    (folder / "run.json").write_text("{truncated")
    with pytest.raises(ResultsError, match=r"r/run\.json is missing or unreadable.*re-run"):
        write_run_report(folder)


# --- a real browser -----------------------------------------------------------------------------------------

BROWSERS = ("chromium", "chromium-browser", "google-chrome-stable", "google-chrome")


def _find_browser() -> str | None:
    env = os.environ.get("LAAQ_CHROMIUM")
    if env and os.access(env, os.X_OK):
        return env
    return next((p for p in map(shutil.which, BROWSERS) if p), None)


@pytest.fixture(scope="module")
def browser() -> str:
    """Chromium's path; installed by scripts/install_browser.sh when missing and we are root, else skip."""
    path = _find_browser()
    if path is None:
        r = subprocess.run(["bash", str(REPO / "scripts" / "install_browser.sh")], capture_output=True, text=True,
                           timeout=900)
        path = _find_browser()
        if path is None:
            pytest.skip("no headless browser and it could not be installed: "
                        + (r.stderr.strip().splitlines() or ["scripts/install_browser.sh failed"])[-1])
    return path


@dataclass
class PageCheck:
    """What the browser saw: images as (complete, naturalWidth, shown width), problems, fetched URLs."""

    images: list[list[Any]]
    text: str
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    value: Any = None  # what ``check(..., evaluate=JS)`` returned


class DevTools:
    """Headless Chromium driven over ``--remote-debugging-pipe`` (fd 3 in, fd 4 out, NUL-framed JSON)."""

    def __init__(self, browser: str) -> None:
        self.profile = tempfile.mkdtemp(prefix="laaq-chromium-")
        to_chrome_r, self._w = os.pipe()
        self._r, from_chrome_w = os.pipe()
        # Chromium insists on fds 3 and 4; bash moves the pipe ends there (no preexec_fn in a threaded process).
        a = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD_CLOEXEC, 10)
        b = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD_CLOEXEC, 10)
        for fd in (to_chrome_r, from_chrome_w):
            os.close(fd)
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--disable-dev-shm-usage", f"--user-data-dir={self.profile}", "--remote-debugging-pipe", "about:blank"]
        self.log = Path(self.profile) / "chromium.log"  # a file, not a pipe: a full pipe would stall the browser
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(["bash", "-c", f'exec 3<&{a} 4>&{b} {a}<&- {b}>&-; exec "$@"', "bash", *cmd],
                                         pass_fds=(a, b), stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)  # own group: renderers go with it if killed
        os.close(a)
        os.close(b)
        self._buf = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []

    def _recv(self, timeout: float) -> dict[str, Any]:
        end = time.monotonic() + timeout
        while b"\0" not in self._buf:
            ready, _, _ = select.select([self._r], [], [], max(0.0, end - time.monotonic()))
            if not ready:
                raise TimeoutError("no answer from Chromium")
            chunk = os.read(self._r, 1 << 16)
            if not chunk:
                raise RuntimeError(f"Chromium closed the DevTools pipe: {self.log.read_text(errors='replace')[-2000:]}")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout: float = 60) -> dict[str, Any]:
        self._id += 1
        msg: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._w, json.dumps(msg).encode() + b"\0")
        while True:
            m = self._recv(timeout)
            if m.get("id") == self._id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m.get("result", {})
            self.events.append(m)

    def check(self, url: str, timeout: float = 60, width: int = 0, evaluate: str = "") -> PageCheck:
        """Open ``url`` in a fresh tab, wait for the load event, and report images and every error seen;
        ``width``: the window's width in CSS pixels; ``evaluate``: a JS expression whose JSON value is kept."""
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        sid = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable", session=sid)
        if width:
            self.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": 900, "deviceScaleFactor": 1,
                                                             "mobile": False}, session=sid)
        self.events.clear()
        self.call("Page.navigate", {"url": url}, session=sid)
        while not any(e.get("method") == "Page.loadEventFired" and e.get("sessionId") == sid for e in self.events):
            self.events.append(self._recv(timeout))
        probe = ("JSON.stringify({images: Array.from(document.images).map(i => [i.complete, i.naturalWidth, "
                 "i.getBoundingClientRect().width]), text: document.body.innerText})")
        got = json.loads(self.call("Runtime.evaluate", {"expression": probe, "returnByValue": True},
                                   session=sid)["result"]["value"])
        out = PageCheck(got["images"], got["text"])
        if evaluate:
            res = self.call("Runtime.evaluate", {"expression": f"JSON.stringify({evaluate})", "returnByValue": True},
                            session=sid)
            out.value = json.loads(res["result"]["value"])
        for e in self.events:
            p, m = e.get("params", {}), e.get("method")
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.errors.append(f"console.{p['type']}: {[a.get('value') for a in p.get('args', [])]}")
            elif m == "Runtime.exceptionThrown":
                out.errors.append(f"exception: {p['exceptionDetails'].get('text')}")
            elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
                out.errors.append(f"log: {p['entry'].get('text')} {p['entry'].get('url', '')}")
            elif m == "Network.requestWillBeSent":
                out.requests.append(p["request"]["url"])
        self.call("Target.closeTarget", {"targetId": target})
        return out

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
            self.proc.wait(timeout=20)
        except Exception:  # a browser that will not close politely is killed, with its renderers (all ours)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        finally:
            for fd in (self._r, self._w):
                os.close(fd)
            shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def devtools(browser: str):
    d = DevTools(browser)
    yield d
    d.close()


@pytest.mark.parametrize("page, images, phrase", [
    ("comparison.html", 2, "per-hardware comparison"),
    ("b-x86/report.html", 3, "How this was measured"),
    ("c-rpi4/report.html", 3, "emulated timings are smoke tests"),
    ("d-cuda/report.html", 0, NOT_RUN),
])
def test_html_renders_in_chromium(results: Path, devtools: DevTools, page: str, images: int, phrase: str) -> None:
    path = results / page
    seen = devtools.check(path.as_uri())
    assert seen.errors == [], seen.errors
    assert len(seen.images) == images
    for complete, natural_width, shown_width in seen.images:
        assert complete and natural_width > 0 and shown_width > 0, seen.images
    assert phrase in seen.text
    assert all(u == path.as_uri() or u.startswith("data:") for u in seen.requests), seen.requests


# Where each named header cell of the first table holding them lies, against what the reader sees without
# scrolling: the window's width and the table's own scroll box (.tablewrap clips what overflows it).
HEADER_BOXES = """(() => {
  const table = Array.from(document.querySelectorAll('table')).find(t => t.textContent.includes('robust_acc'));
  const wrap = table.closest('.tablewrap').getBoundingClientRect();
  const out = {inner: window.innerWidth, page: document.documentElement.scrollWidth, headers: {}};
  for (const th of table.querySelectorAll('th')) {
    const r = th.getBoundingClientRect();
    out.headers[th.textContent] = [r.left, r.right, Math.min(window.innerWidth, wrap.right)];
  }
  return out;
})()"""


def test_comparison_figures_visible_without_scrolling(results: Path, devtools: DevTools) -> None:
    """In a 1,400-pixel-wide window the comparison shows latency and accuracy headers without horizontal
    scrolling — although a not-run CUDA row's device text is 300 characters long (it sits under the table)."""
    seen = devtools.check((results / "comparison.html").as_uri(), width=1400, evaluate=HEADER_BOXES)
    assert seen.errors == [], seen.errors
    boxes = seen.value
    assert boxes["inner"] == 1400 and boxes["page"] <= 1400, boxes
    for col in ("variant", "lat_small_median_ms", "lat_small_p90_ms", "lat_large_median_ms", "thr_large_ips",
                "clean_acc", "robust_acc", "robust_ci_lo", "robust_ci_hi"):
        left, right, limit = boxes["headers"][col]
        assert 0 <= left and right <= limit, (col, boxes["headers"])
    assert CUDA_DEVICE in seen.text, "the full device description is still on the page"


def test_committed_reference_pages_render(devtools: DevTools) -> None:
    """The reference comparison under results/reference/ is what a reader opens first: it must render too."""
    ref = REPO / "results" / "reference"
    pages = [ref / "comparison.html", *ref.glob("*/report.html")]
    if not pages[0].exists():
        pytest.skip("no results/reference/comparison.html in this checkout")
    for page in pages:
        seen = devtools.check(page.as_uri())
        assert seen.errors == [] and seen.images, (page, seen.errors)
        assert all(c and w > 0 for c, w, _ in seen.images), (page, seen.images)


def test_browser_check_catches_a_broken_page(tmp_path: Path, devtools: DevTools) -> None:
    """The check above is only worth something if it fails on a bad page."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><head><meta charset="utf-8"><title>bad</title></head><body>'
                   '<img src="data:image/png;base64,AAAA"><img src="missing.png">'
                   "<script>console.error('boom')</script></body></html>")
    seen = devtools.check(bad.as_uri())
    assert [w for _, w, _ in seen.images] == [0, 0]
    assert any("boom" in e for e in seen.errors) and any("missing.png" in e for e in seen.errors)
    assert any(u.endswith("missing.png") for u in seen.requests)


def test_results_readme_documents_every_column() -> None:
    """results/README.md must name every column the harness writes (the table reader's only guide)."""
    text = (REPO / "results" / "README.md").read_text()
    missing = [c for c in [*COLUMNS, *LAYER_COLUMNS, "lipschitz"] if f"`{c}`" not in text]
    assert missing == [], f"undocumented columns: {missing}"


def test_comparison_includes_peer_timings(tmp_path) -> None:
    """`make perf` output for a target lands in the cross-run comparison, table and all."""
    perf = tmp_path / "perf-x86"
    perf.mkdir()
    (perf / "perf.csv").write_text(
        "model,batch,peer,median_ms,p90_ms,ratio_to_fastest,gmac_s,frac_int8_peak,threads,note\n"
        "smallcnn,1,ort-int8-qdq,0.04,0.05,1.0,10.3,0.027,2,\n"
        "smallcnn,1,tvm-int8,0.24,0.25,6.0,1.7,0.004,2,untuned; bit-exact\n")
    write_comparison(tmp_path)
    md = (tmp_path / "comparison.md").read_text()
    assert "Peers timed side by side: x86" in md and "| smallcnn | 1 | tvm-int8 | 0.24 |" in md
    assert "tvm-int8" in (tmp_path / "comparison.html").read_text()


def test_legacy_pgd_rows_are_never_shown_as_robust_accuracy(tmp_path: Path) -> None:
    """A run from before the attack ensemble (a `pgd_acc` column, PGD-20 only) next to a new one: its figure is
    kept apart as `legacy_pgd20_acc`, its robust accuracy left empty and it is not plotted."""
    new = _run_folder(tmp_path, "new", "x86", "x86-64 CPU", [_row("x86", "native", "local x86_64", "int8")], False)
    old = _run_folder(tmp_path, "old", "arm", "Pi 4", [_row("arm", "emulated", "RPC", "int8")], False)
    m = pd.read_csv(old / "metrics.csv").rename(columns={"robust_acc": "pgd_acc"})
    m.to_csv(old / "metrics.csv", index=False)
    rows = collect(tmp_path).set_index("run")
    assert rows.loc["old", "robust_acc"] == "" and rows.loc["old", "legacy_pgd20_acc"] == "0.645"
    assert rows.loc["old", "attack_preset"].startswith("legacy PGD-20")
    assert rows.loc["new", "robust_acc"] == "0.645" and rows.loc["new", "legacy_pgd20_acc"] == ""
    p = plots.latency_vs_robust(rows.reset_index(), "ctx")
    assert [pt[1] for pt in p.plotted] == ["x86"]
    assert new.exists()


def test_unstable_figures_are_flagged(tmp_path: Path) -> None:
    """A native row timed with a wide spread, on a heating and throttling board, is flagged in the run report
    and the comparison; a steady row, a row whose sensors are absent (empty cells) and an emulated row are not."""
    from harness.notes import row_warnings

    hot = {**_row("rpi4", "native", "tracker 10.0.0.2:9190 key rasp4", "int8"), "lat_small_median_ms": 10.0,
           "lat_small_p90_ms": 13.0, "lat_large_median_ms": 100.0, "lat_large_p90_ms": 104.0, "temp_c_before": 61.2,
           "temp_c_after": 71.9, "freq_mhz_before": 1800.0, "freq_mhz_after": 1500.0, "throttled_before": "0x0",
           "throttled_after": "0x20002"}
    steady = {**_row("rpi4", "native", "tracker 10.0.0.2:9190 key rasp4", "fp32"), "temp_c_before": 50.0,
              "temp_c_after": 51.0, "throttled_before": "0x50000", "throttled_after": "0x50000"}  # old, not now
    warned = row_warnings(hot)
    assert len(warned) == 4 and "batch 1: p90 13 ms is 30% above the median 10 ms" in warned[0]
    assert "rose 10.7 °C" in warned[1] and "1800 to 1500 MHz" in warned[2] and "0x20002" in warned[3]
    assert row_warnings(steady) == [] and row_warnings(_row("x86", "native", "local", "int4")) == []
    assert all(row_warnings({**hot, "measured_as": m}) == [] for m in ("emulated", NOT_RUN))
    folder = _run_folder(tmp_path, "pi", "rpi4", "Raspberry Pi 4", [hot, steady], lipschitz=False)
    write_run_report(folder)
    write_comparison(tmp_path)
    for page in (folder / "report.md", tmp_path / "comparison.md"):
        text = page.read_text()
        assert "Figures that may not be steady" in text and "`rpi4` / `int8`: batch 1: p90" in text, page
        assert "`rpi4` / `fp32`" not in text, page
