"""Dashboards: the figures hold the Parquet rows (Pareto sets against a naive computation), edge
studies give pages that say what is missing, CLI errors are one line, --serve re-renders and stops
on Ctrl-C, and a headless Chromium draws every plot without a JavaScript error."""

from __future__ import annotations

import html
import json
import math
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

import lab
from lab.cli.main import main
from lab.dashboard import load, render
from lab.dashboard.importance import importances
from lab.dashboard.synthetic import write_synthetic_study
from lab.study.store import StudyStore
from page_json import figures_of, table_of, traces, values

CHROMIUM = Path("/usr/bin/chromium")
NAMED = "resnet18@28px,w=0.25"


# --- helpers ---------------------------------------------------------------------------------

def naive_front(points: list[tuple[float, float]], senses: tuple[str, str]) -> set[tuple[float, float]]:
    """O(n^2): the points no other point dominates (at least as good in both, better in one)."""
    sign = [1 if s == "max" else -1 for s in senses]
    good = [(a * sign[0], b * sign[1]) for a, b in points]
    front = set()
    for i, p in enumerate(good):
        dominated = any(q[0] >= p[0] and q[1] >= p[1] and (q[0] > p[0] or q[1] > p[1])
                        for j, q in enumerate(good) if j != i)
        if not dominated:
            front.add(points[i])
    return front


def named_row(number: int) -> dict:
    """A complete trial of a named architecture's scaled point (the dashboard labels it)."""
    from lab.cost import cost
    from lab.study.space import describe

    spec = lab.resolve(NAMED)
    report = cost(spec, num_classes=10, in_chans=1)
    return {"number": number, "state": "complete", "arch_id": spec.arch_id, "text": spec.text, "family": "resnet",
            **describe(spec), "params": report.params, "macs": report.macs, "res": spec.res, "fraction": 1.0,
            "n_train": 4500, "epochs": 8, "epochs_done": 8, "val_top1": 0.9, "images_per_second": 800.0,
            "hparams": {"vars": {"width": 16}, "recipe": {"lr": 1e-3}}}


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[Path, Path]:
    """A synthetic study of 80 trials at three data fractions (fragments, as a running study writes
    them) plus a named point, rendered once: (studies root, page)."""
    root = tmp_path_factory.mktemp("dash") / "studies"
    store = write_synthetic_study(root / "demo", 80, fractions=[0.1, 0.3, 1.0], seed=3)
    store.write_trial(named_row(80))
    return root, render(["demo"], root=root)


# --- the figures hold the Parquet data -------------------------------------------------------

@pytest.mark.parametrize("fid, column, scale, sense", [
    ("pareto_macs", "macs", 1e-9, "min"), ("pareto_params", "params", 1e-6, "min"),
    ("pareto_throughput", "images_per_second", 1.0, "max")])
def test_front_figures_hold_the_rows_and_the_naive_pareto_set(study, fid, column, scale, sense):
    root, page = study
    rows = StudyStore(root / "demo").trials().to_pylist()
    trained = [r for r in rows if r["state"] in ("complete", "pruned") and r["val_top1"] is not None
               and r[column] is not None and r[column] > 0]
    fig = figures_of(page)[fid]
    xs = np.concatenate([values(t["x"]) for t in traces(fig, "points")])
    ys = np.concatenate([values(t["y"]) for t in traces(fig, "points")])
    assert len(xs) == len(trained) > 40
    assert sorted(zip(xs, ys)) == sorted((r[column] * scale, r["val_top1"]) for r in trained)   # the same floats

    complete = [(r["val_top1"], r[column] * scale) for r in trained if r["state"] == "complete"]
    (pareto,) = traces(fig, "pareto")
    highlighted = set(zip(values(pareto["y"]), values(pareto["x"])))
    expected = naive_front(complete, ("max", sense))
    assert highlighted == expected
    assert len(values(pareto["x"])) == len([p for p in complete if p in expected])   # ties: every one kept
    assert NAMED in [a["text"] for a in fig["layout"]["annotations"]]     # the named point is labelled


def test_curves_edf_choices_importance_scaling_and_table_hold_the_rows(study):
    root, page = study
    store = StudyStore(root / "demo")
    trials, epochs = store.trials().to_pylist(), store.epochs().to_pylist()
    state = {r["number"]: r["state"] for r in trials}
    figs = figures_of(page)
    assert set(figs) == {"pareto_macs", "pareto_params", "pareto_throughput", "curves", "edf", "choices",
                         "importance", "scaling"}

    curves = [t for t in traces(figs["curves"], "curves") if t["xaxis"] == "x"]   # the accuracy panel
    assert sum(np.isfinite(values(t["y"])).sum() for t in curves) == len(epochs)
    for t in curves:
        assert t["meta"]["trials"] == len({e["number"] for e in epochs if state.get(e["number"]) == t["meta"]["state"]})
    stopped = [t for t in traces(figs["curves"], "stopped") if t["xaxis"] == "x"]
    pruned = {e["number"] for e in epochs if state[e["number"]] == "pruned"}
    assert pruned and sum(len(values(t["x"])) for t in stopped) == len(pruned)

    complete = [r for r in trials if r["state"] == "complete"]
    edf = {(t["meta"]["group"], t["meta"]["name"]): t["meta"]["n"] for t in traces(figs["edf"], "edf")}
    for kind in {k for r in complete for k in r["kinds"]}:
        assert edf[("kind", kind)] == sum(kind in r["kinds"] for r in complete)
    assert sum(n for (g, _), n in edf.items() if g == "layout") == len(complete)
    assert max(values(t["y"]).max() for t in traces(figs["edf"], "edf")) == 1.0

    widths = next(t for t in traces(figs["choices"], "choice") if t["meta"]["choice"] == "width")
    assert widths["meta"]["n"] == sum(json.loads(r["hparams"])["vars"].get("width") is not None for r in complete)

    bars = figs["importance"]["data"][0]
    assert math.isclose(values(bars["x"]).sum(), 1.0, abs_tol=1e-6) and "mixer_0" in bars["y"]

    scaling = figs["scaling"]
    assert scaling["layout"]["xaxis"]["type"] == scaling["layout"]["yaxis"]["type"] == "log"
    sizes = np.concatenate([values(t["x"]) for t in traces(scaling, "points")])
    assert len(sizes) == len(complete) and set(sizes) == {450.0, 1350.0, 4500.0}

    table = table_of(page)
    assert len(table["rows"]) == len(trials)
    number = [c[0] for c in table["columns"]].index("number")
    assert sorted(r[number] for r in table["rows"]) == [r["number"] for r in trials]
    text = page.read_text()
    assert "study.yaml" in text and "objectives: val_acc:max,macs:min" in text    # the recipe


def test_importance_ranks_the_choice_that_decides_accuracy(tmp_path):
    rng = np.random.default_rng(0)
    store = StudyStore(tmp_path / "imp")
    store.save_config({"name": "imp", "objectives": "val_acc:max,macs:min"})
    for n in range(40):
        mixer = str(rng.choice(["conv", "attn"]))
        choices = {"mixer": mixer, "width": int(rng.choice([16, 32, 64]))}
        if mixer == "conv":
            choices["e"] = int(rng.choice([1, 4]))    # conditional: absent from the attention trials
        store.write_trial({"number": n, "state": "complete", "macs": 10**6, "kinds": ["basic"],
                           "val_top1": (0.9 if mixer == "conv" else 0.6) + rng.normal(0, 0.005),
                           "hparams": {"vars": choices, "recipe": {"lr": float(rng.uniform(1e-4, 1e-3))}}})
    imp, note = importances(load([tmp_path / "imp"]))
    assert note == "" and set(imp) == {"mixer", "width", "e", "lr"}
    assert max(imp, key=imp.get) in ("mixer", "e") and imp["mixer"] + imp["e"] > 0.8   # e's absence = attention
    assert math.isclose(sum(imp.values()), 1.0, abs_tol=1e-6)


def test_one_fraction_has_no_scaling_view_and_many_points_switch_to_webgl(tmp_path):
    write_synthetic_study(tmp_path / "studies" / "one", 30, seed=1)
    page = render(["one"], root=tmp_path / "studies", gl_threshold=10)
    figs = figures_of(page)
    assert "scaling" not in figs and "One training-set size only" in page.read_text()
    assert {t["type"] for t in traces(figs["pareto_macs"], "points")} == {"scattergl"}



# --- the views table: a view is declared once ------------------------------------------------

def sections_of(text: str) -> list[tuple[str, str]]:
    """(id, title) of each section of a page, in order."""
    return re.findall(r"<section id='([^']+)'><h2>([^<]*)</h2>", text)


def nav_of(text: str) -> list[tuple[str, str]]:
    """(anchor, text) of each link of a page's navigation, in order."""
    return re.findall(r"<a href='#([^']+)'>([^<]*)</a>", re.search(r"<nav>(.*?)</nav>", text).group(1))


def test_the_page_has_a_section_and_a_link_per_view_in_the_tables_order(study):
    from lab.dashboard.views import VIEWS

    text = study[1].read_text()
    assert sections_of(text) == [
        ("fronts", "Pareto fronts"), ("curves", "Learning curves"), ("space", "Design space"),
        ("importance", "Importance of the sampled choices"), ("scaling", "Scaling with the training-set size"),
        ("trials", "Trials"), ("recipe", "Recipe")]     # no claims, prediction at N or extrapolation check
    absent = ("claims", "target", "calibration")     # (the study lists no claims; it is no --target-size or scaling study)
    assert nav_of(text) == [(v.id, v.nav) for v in VIEWS if v.id not in absent]
    assert list(figures_of(study[1])) == [p.id for v in VIEWS if v.id not in absent for p in v.plots]


def test_a_new_view_is_one_entry_of_the_views_table(study, tmp_path):
    import plotly.graph_objects as go

    from lab.dashboard.views import VIEWS, Plot, View

    extra = View("throwaway", "A throwaway view", "throwaway", help="Help for <i>the throwaway</i> view.",
                 plots=(Plot("throwaway_bars", lambda ctx: go.Figure(go.Bar(x=["a", "b"], y=[len(ctx.data.rows), 1]))),
                        Plot("throwaway_none", lambda ctx: None, empty="Nothing to draw here.")))
    hidden = View("hidden", "Never shown", "hidden", plots=(Plot("hidden_fig", lambda ctx: go.Figure()),),
                  when=lambda ctx: False)
    page = render(["demo"], root=study[0], out=tmp_path / "extra.html", index=False, views=VIEWS + (extra, hidden))
    text = page.read_text()
    assert sections_of(text)[-1] == ("throwaway", "A throwaway view") and "hidden" not in dict(sections_of(text))
    assert nav_of(text)[-1] == ("throwaway", "throwaway") and "hidden" not in dict(nav_of(text))
    section = re.search(r"<section id='throwaway'>(.*?)</section>", text).group(1)
    assert "<p class='help'>Help for <i>the throwaway</i> view.</p>" in section
    assert "<div class='plot' id='fig-throwaway_bars'></div>" in section
    assert "<p class='empty'>Nothing to draw here.</p>" in section and "fig-throwaway_none" not in text
    figs = figures_of(page)
    assert list(figs)[-1] == "throwaway_bars" and "hidden_fig" not in figs
    assert figs["throwaway_bars"]["data"][0]["y"][0] == len(StudyStore(study[0] / "demo").trials())
    # every other view is as on the default page; the page's metadata lists the new figure
    assert sections_of(text)[:-1] == sections_of(study[1].read_text())
    assert json.loads(html.unescape(re.search(r"<meta name='lab-dashboard' content='([^']*)'>", text).group(1)))[
        "figures"] == list(figs)

    with pytest.raises(ValueError, match="taken twice: curves"):   # figure ids are the page's div ids: unique
        render(["demo"], root=study[0], out=tmp_path / "dup.html", index=False,
               views=VIEWS + (View("again", "Again", "again", plots=(Plot("curves", lambda ctx: None),)),))

# --- edge studies: a page that says so -------------------------------------------------------

@pytest.mark.parametrize("kind, says", [
    ("empty", "no trials yet"),
    ("failed", "No trial has trained successfully"),
    ("single", "single-objective study (val_top1, max)"),
])
def test_edge_studies_give_a_page_that_says_so(tmp_path, kind, says):
    root = tmp_path / "studies"
    if kind == "empty":
        write_synthetic_study(root / kind, 0)
    elif kind == "failed":
        write_synthetic_study(root / kind, 12, states=(0, 0, 0.5, 0.5), named=False)
    else:
        write_synthetic_study(root / kind, 12, objectives="val_acc:max", named=False)
    page = render([kind], root=root)
    text = page.read_text()
    assert says in text
    figs = figures_of(page)
    if kind == "single":
        assert "pareto_macs" in figs and "Its best trial is #" in text
    else:
        assert not {"pareto_macs", "edf", "importance"} & set(figs)
        assert "No trained trials: no fronts." in text
    if kind == "failed":
        assert "loss stopped being finite" in text     # the first errors are shown


# --- the command line ------------------------------------------------------------------------

def test_cli_renders_beside_the_studies_folder_and_indexes_every_page(tmp_path, capsys, monkeypatch):
    write_synthetic_study(tmp_path / "studies" / "a", 10, named=False)
    write_synthetic_study(tmp_path / "studies" / "b", 10, named=False, fractions=[0.5])
    monkeypatch.setenv("LAB_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert main(["dashboard", "a"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "dashboards" / "a.html")
    assert main(["dashboard", "a", "b", "--root", str(tmp_path / "studies")]) == 0
    both = Path(capsys.readouterr().out.strip())
    assert both == tmp_path / "dashboards" / "a+b.html" and "study b" in both.read_text()
    assert main(["dashboard", "b", "--out", str(tmp_path / "elsewhere" / "x.html"), "--inline"]) == 0
    inline = tmp_path / "elsewhere" / "x.html"
    assert inline.stat().st_size > 3_000_000 and not list(inline.parent.glob("plotly-*.js"))
    index = (tmp_path / "dashboards" / "index.html").read_text()
    assert "href='a.html'" in index and "href='a+b.html'" in index
    assert len(list((tmp_path / "dashboards").glob("plotly-*.min.js"))) == 1


@pytest.mark.parametrize("argv, message", [
    (["dashboard", "nope"], "no study 'nope' in"),
    (["dashboard", "a", "--serve", "--port", "70000"], "--port: '70000': expected a port number"),
    (["dashboard", "a", "--port", "8000"], "--port needs --serve"),
    (["dashboard", "a", "--out", "/proc/nope/x.html"], "cannot write the dashboard to /proc/nope/x.html"),
])
def test_cli_errors_are_one_line_and_exit_2(tmp_path, capsys, argv, message):
    write_synthetic_study(tmp_path / "studies" / "a", 3, named=False)
    try:
        rc = main(argv + ["--root", str(tmp_path / "studies")])
    except SystemExit as e:    # argparse's errors (a bad --port) exit from the parser
        rc = e.code
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and message in err, err


def test_serve_rerenders_as_trials_arrive_and_stops_on_ctrl_c(tmp_path):
    root = tmp_path / "studies"
    store = write_synthetic_study(root / "live", 6, named=False)
    proc = subprocess.Popen([sys.executable, "-m", "lab.cli.main", "dashboard", "live", "--root", str(root), "--serve",
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        while not (url := re.search(r"http://127\.0\.0\.1:\d+/live\.html", lines[-1] if lines else "")):
            lines.append(proc.stdout.readline())    # "serving URL ..." once imported and rendered
            assert lines[-1] and len(lines) < 50, "".join(lines)
        url = url.group(0)
        get = lambda u: urllib.request.urlopen(u, timeout=10).read().decode()  # noqa: E731
        assert "ffff00ffff" not in get(url)
        stamp = get(url.rsplit("/", 1)[0] + "/__lab/stamp")
        store.write_trial({"number": 6, "state": "complete", "arch_id": "ffff00ffff", "val_top1": 0.5,
                           "macs": 2 * 10**6, "params": 10**5, "kinds": ["mhsa"], "layout": "isotropic"})
        deadline = time.monotonic() + 30
        while "ffff00ffff" not in get(url):
            assert time.monotonic() < deadline, "the page was not re-rendered"
            time.sleep(0.3)
        assert get(url.rsplit("/", 1)[0] + "/__lab/stamp") != stamp    # what the page polls to reload
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
        assert "stopped" in proc.stdout.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- a real browser --------------------------------------------------------------------------

class _Points(HTMLParser):
    """Per plot div (id fig-*): its point marks (SVG), canvases (WebGL) and whether it rendered."""

    def __init__(self):
        super().__init__()
        self.stack: list[str | None] = []
        self.plots: dict[str, dict] = {}
        self.body: dict = {}
        self.html: dict = {}

    VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source", "track", "wbr"}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "html":
            self.html = a
        if tag == "body":
            self.body = a
        fid = a.get("id", "") if tag == "div" and (a.get("id") or "").startswith("fig-") else None
        if fid:
            self.plots[fid[4:]] = {"points": 0, "canvas": 0, "rendered": a.get("data-rendered") == "1"}
        current = fid[4:] if fid else next((s for s in reversed(self.stack) if s), None)
        if current:
            classes = (a.get("class") or "").split()
            self.plots[current]["points"] += tag == "path" and "point" in classes
            self.plots[current]["canvas"] += tag == "canvas"
        if tag not in self.VOID:
            self.stack.append(fid[4:] if fid else None)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in self.VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        if tag not in self.VOID and self.stack:
            self.stack.pop()


def chromium(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    profile = tempfile.mkdtemp(prefix="lab-chromium-")
    try:
        return subprocess.run([str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                               "--no-first-run", "--disable-background-networking", "--disable-component-update",
                               "--disable-sync", "--enable-unsafe-swiftshader", "--hide-scrollbars",
                               f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=timeout)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def rendered_dom(page: Path) -> _Points:
    out = chromium("--window-size=1400,1000", "--virtual-time-budget=30000", "--dump-dom", page.as_uri())
    parsed = _Points()
    parsed.feed(out.stdout)
    assert parsed.body, f"no DOM from chromium: {out.stderr[-2000:]}"
    return parsed


@pytest.mark.skipif(not CHROMIUM.exists(), reason="headless Chromium (/usr/bin/chromium, Debian's `chromium` "
                                                   "package, installed by .ci/run) is not installed")
def test_a_real_browser_draws_every_plot_without_errors(study, tmp_path):
    from PIL import Image, ImageStat

    root, page = study
    figs = figures_of(page)
    dom = rendered_dom(page)
    assert dom.html.get("data-js-errors") is None, dom.html.get("data-js-errors")
    assert dom.body.get("data-rendered") == str(len(figs))
    assert set(dom.plots) == set(figs) and all(p["rendered"] for p in dom.plots.values())
    for fid in ("pareto_macs", "pareto_params", "pareto_throughput"):   # SVG: one mark per point
        expected = sum(len(values(t["x"])) for t in traces(figs[fid], "points") + traces(figs[fid], "pareto"))
        assert dom.plots[fid]["points"] == expected, fid
    stopped = sum(len(values(t["x"])) for t in traces(figs["curves"], "stopped"))
    assert dom.plots["curves"]["points"] == stopped

    shot = tmp_path / "shot.png"
    chromium("--window-size=1400,2400", "--virtual-time-budget=30000", f"--screenshot={shot}", page.as_uri())
    image = Image.open(shot).convert("RGB")
    assert max(ImageStat.Stat(image).stddev) > 10 and len(image.getcolors(1 << 20) or []) > 50   # not blank

    # WebGL (scattergl, what large studies get): the canvases are there and no error was raised
    gl = render(["demo"], root=root, out=tmp_path / "gl.html", gl_threshold=10)
    dom = rendered_dom(gl)
    assert dom.html.get("data-js-errors") is None, dom.html.get("data-js-errors")
    assert dom.body.get("data-rendered") == str(len(figures_of(gl)))
    assert all(dom.plots[f]["canvas"] > 0 for f in ("pareto_macs", "pareto_params", "curves"))


def test_study_create_and_resume_render_the_dashboard_at_the_end(tmp_path, capsys, monkeypatch):
    import lab.dashboard
    import lab.study.runner

    root = tmp_path / "studies"
    folder = write_synthetic_study(root / "run", 8, named=False).folder
    monkeypatch.setattr(lab.study.runner, "create", lambda config, root=None, **kwargs: folder)   # no training here
    monkeypatch.setattr(lab.study.runner, "resume", lambda name, root=None, **kwargs: folder)
    create = ["study", "create", "--name", "run", "--root", str(root), "--quiet"]
    assert main(create) == 0
    out = capsys.readouterr().out
    assert "Pareto set" in out and f"dashboard: {tmp_path / 'dashboards' / 'run.html'}" in out
    assert main(["study", "resume", "run", "--root", str(root), "--quiet", "--no-dashboard"]) == 0
    assert "dashboard:" not in capsys.readouterr().out

    def broken(*args, **kwargs):
        raise RuntimeError("no plotly here")

    monkeypatch.setattr(lab.dashboard, "render", broken)   # a failed render warns; the study stays a success
    assert main(create) == 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "warning: dashboard not rendered (RuntimeError: no plotly here)" in err
