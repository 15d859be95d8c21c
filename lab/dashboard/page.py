"""The dashboard page: one HTML file per study (or set of studies) that works offline, and the
index of a dashboards folder. What the page shows is the table of views (lab.dashboard.views.VIEWS):
a section, a navigation link and figures per view, in the table's order.

plotly.js is written once beside the pages (`plotly-VERSION.min.js`; keep it with them) or, with
`inline=True`, inside the page. The figures travel as one JSON object in a <script> tag that a few
lines of JavaScript hand to Plotly; the page records any JavaScript error on <html data-js-errors>
and marks <body data-rendered> when every plot is drawn (what the browser test reads).
"""

from __future__ import annotations

import datetime as dt
import html
import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from lab.dashboard import figures as F
from lab.dashboard.data import DashboardData, load
from lab.dashboard.views import VIEWS, Context, View
from lab.errors import LabError
from lab.files import atomic_write
from lab.study.config import find_study, studies_root

INDEX = "index.html"
INDEX_MARKER = "<meta name='lab-dashboard-index' content='1'>"   # what marks an index.html as the lab's
PLOTLY_JS = re.compile(r"plotly-[0-9][0-9A-Za-z.+-]*\.min\.js")   # the name plotly.js is written under


def default_out(name: str, root: str | Path | None = None) -> Path:
    """dashboards/NAME.html beside the studies folder: ./dashboards for ./studies (the repository
    root), $LAB_HOME/dashboards for $LAB_HOME/studies, ROOT/../dashboards for --root ROOT."""
    return studies_root(root).parent / "dashboards" / f"{name}.html"


def _script_json(obj_json: str) -> str:
    """JSON text safe inside <script>: '<' only occurs in strings, where \\u003c means the same."""
    return obj_json.replace("<", "\\u003c")


def plotly_js_name() -> str:
    from plotly.offline import get_plotlyjs_version

    return f"plotly-{get_plotlyjs_version()}.min.js"


def _write_plotly_js(folder: Path) -> str:
    """Write plotly.js beside the pages once; returns its file name."""
    from plotly.offline import get_plotlyjs

    name = plotly_js_name()
    path = folder / name
    if not path.is_file() or path.stat().st_size < 1000:   # (lab_wrote has vouched for a file there)
        atomic_write(path, lambda tmp: Path(tmp).write_text(get_plotlyjs(), encoding="utf-8"))
    return name


# --- text of the page ----------------------------------------------------------------------

def _pct(v) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.2f}%"


def notes(data: DashboardData) -> list[str]:
    """What the page must say before any plot: an empty study, no trained trial, one objective."""
    out = []
    rows, several = data.rows, len(data.studies) > 1
    trained = set(data.trained["study"])
    for s in data.studies:   # per study: nothing yet, or nothing trained
        r = rows[rows["study"] == s.name]
        what = f"Study {html.escape(s.name)}" if several else "This study"
        if r.empty:
            out.append(f"{what} has no trials yet" + ("." if several else ": nothing to plot (a running study fills "
                                                                         "in as trials finish)."))
        elif s.name not in trained:
            counts = ", ".join(f"{n} {st}" for st, n in r["state"].value_counts().items())
            errors = list(dict.fromkeys(e for e in r["error"].dropna().astype(str)))[:3]
            why = "; ".join(html.escape(e[:160]) for e in errors)
            lead = f"{what}: no trial" if several else "No trial"
            out.append(f"{lead} has trained successfully ({counts})" + ("." if several else ": nothing to plot.")
                       + (f" First errors: {why}." if why else ""))
    for s in data.studies:
        if len(s.objectives) == 1:
            col, sense = s.objectives[0]
            r = rows[(rows["study"] == s.name) & (rows["state"] == "complete")]
            vals = pd.to_numeric(r[col], errors="coerce")
            best = ""
            if vals.notna().any():
                i = vals.idxmax() if sense == "max" else vals.idxmin()
                v = vals[i]
                best = f" Its best trial is #{r.loc[i, 'number']} ({col} {_pct(v) if 'top' in col else f'{v:.4g}'})."
            out.append(f"Study {html.escape(s.name)} is a single-objective study ({col}, {sense}): it has no "
                       f"Pareto set of its own.{best} The fronts below show accuracy against cost among its trials.")
    return out


def _summary(data: DashboardData) -> str:
    items = []
    for s in data.studies:
        c = s.config
        states = ", ".join(f"{n} {st}" for st, n in sorted(s.states.items())) or "no trials"
        r = data.rows[(data.rows["study"] == s.name)]
        front = int(r["on_front"].sum()) if len(s.objectives) > 1 else 0
        best = r.loc[r["state"] == "complete", "acc"]
        if c.get("kind") == "scaling":
            grid = (f"scaling grid of {len(c.get('archs') or [])} archs x fractions "
                    f"{', '.join(f'{f:g}' for f in c.get('fractions') or [])} x {c.get('seeds')} seeds, "
                    f"{c.get('epochs', '?')} epochs at the largest ({html.escape(str(c.get('epochs_policy')))}), ")
        else:
            grid = (f"space {html.escape(str(c.get('space')))}, fraction {c.get('fraction', 1)}, "
                    f"{c.get('epochs', '?')} epochs, ")
        items.append(
            f"<li><b>{html.escape(s.name)}</b>: {grid}dataset {html.escape(str(c.get('dataset')))}, "
            f"objectives {html.escape(', '.join(f'{m} {x}' for m, x in s.objectives))}; {states}; budget "
            f"{c.get('trials', '?')} trials"
            + (f"; best {F.accuracy_title(data.accuracy)} {_pct(best.max())}" if best.notna().any() else "")
            + (f"; its Pareto set: {front} trial(s), ★ in the table" if front else "") + "</li>")
    return "<ul class='summary'>" + "".join(items) + "</ul>"


TABLE_COLUMNS = [  # column, title, format
    ("study", "study", "str"), ("number", "#", "int"), ("state", "state", "str"), ("on_front", "front", "star"),
    ("val_top1", "val top-1", "pct"), ("val_top5", "val top-5", "pct"), ("test_top1", "test top-1", "pct"),
    ("macs", "MMACs", "mega"), ("params", "params (M)", "mega"), ("images_per_second", "images/s", "num"),
    ("fraction", "fraction", "num"), ("n_train", "train images", "int"), ("epochs_done", "epochs", "int"),
    ("train_seconds", "train s", "num"), ("family", "family", "str"), ("mixer", "mixer", "str"),
    ("layout", "layout", "str"), ("label", "name", "str"), ("arch_id", "arch_id", "str"), ("text", "text", "str"),
    ("choices", "sampled choices", "str"), ("error", "error", "str"),
]


def _cell(v):
    if v is None:
        return None
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return None if math.isnan(v) else float(v)
    return str(v)


def table_json(data: DashboardData) -> str:
    """The complete trial table as {"columns": [[name, title, format]], "rows": [[...]]}."""
    columns = [c for c in TABLE_COLUMNS if c[0] != "study" or len(data.studies) > 1]
    frame = data.rows.assign(choices=[" ".join(f"{k}={v}" for k, v in c.items()) for c in data.rows["choices"]])
    rows = [[_cell(v) for v in values] for values in zip(*(frame[c].tolist() for c, _, _ in columns))] \
        if len(frame) else []
    return json.dumps({"columns": columns, "rows": rows}, separators=(",", ":"))


CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#222;background:#fafafa}
header{background:#fff;border-bottom:1px solid #ddd;padding:14px 24px}
h1{font-size:22px;margin:0 0 6px} h2{font-size:18px;margin:26px 0 6px}
main{padding:0 24px 40px;max-width:1600px} nav a{margin-right:14px}
.summary{margin:6px 0;padding-left:20px} .help{color:#555;max-width:1100px;margin:4px 0 10px}
.note{background:#fff4d6;border:1px solid #e8c96a;padding:8px 12px;border-radius:4px;margin:12px 0}
.empty{color:#777;font-style:italic}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(620px,1fr));gap:14px}
.plot{background:#fff;border:1px solid #e3e3e3;border-radius:4px;min-height:200px}
table{border-collapse:collapse;background:#fff;font-size:12.5px}
th,td{border:1px solid #e3e3e3;padding:3px 6px;text-align:left;vertical-align:top;white-space:nowrap}
td.t{white-space:normal;min-width:380px;max-width:560px;font-family:ui-monospace,monospace;font-size:11.5px}
th{background:#f0f0f0;cursor:pointer;position:sticky;top:0} td.n{text-align:right}
.tablebar{margin:6px 0} .scroll{overflow:auto;max-height:80vh} .tablebar input{width:320px;padding:3px}
pre{background:#fff;border:1px solid #e3e3e3;padding:10px;overflow:auto;max-height:480px}
"""

# Errors land on <html data-js-errors> (read by the browser test); runs before anything else.
JS_ERRORS = """
(function(){var r=function(m){var e=document.documentElement;
e.setAttribute('data-js-errors',(e.getAttribute('data-js-errors')||'')+m+'\\n');};
window.addEventListener('error',function(e){r('error: '+e.message+' @'+(e.filename||'')+':'+(e.lineno||''));});
window.addEventListener('unhandledrejection',function(e){r('rejection: '+(e.reason&&e.reason.message||e.reason));});
window.labError=r;})();
"""

JS_RENDER = """
(async function(){
  var figs=JSON.parse(document.getElementById('lab-figures').textContent), n=0;
  var hover=JSON.parse(document.getElementById('lab-hover').textContent);
  var typed={i1:Int8Array,u1:Uint8Array,i2:Int16Array,u2:Uint16Array,i4:Int32Array,u4:Uint32Array};
  function ints(a){ if(Array.isArray(a)) return a; if(!a||!a.bdata||!typed[a.dtype]) return [];
    var b=atob(a.bdata), u=new Uint8Array(b.length); for(var i=0;i<b.length;i++) u[i]=b.charCodeAt(i);
    return Array.from(new typed[a.dtype](u.buffer)); }
  for (var k in figs) figs[k].data.forEach(function(t){
    if (t.meta && t.meta.hover==='rows') t.text=ints(t.customdata).map(function(i){ return hover[i]; }); });
  var cfg={responsive:true,displaylogo:false,scrollZoom:false,
    modeBarButtonsToRemove:['select2d','lasso2d','zoomIn2d','zoomOut2d','autoScale2d']};
  for (var id in figs){
    try{ var div=document.getElementById('fig-'+id);
      await Plotly.newPlot(div, figs[id].data, figs[id].layout, cfg);
      div.setAttribute('data-rendered','1'); n++; }
    catch(e){ window.labError('plot '+id+': '+(e&&e.message||e)); }
  }
  document.body.setAttribute('data-rendered', String(n));
})();
(function(){
  var T=JSON.parse(document.getElementById('lab-table').textContent), cols=T.columns, rows=T.rows;
  var box=document.getElementById('trial-table'), filt=document.getElementById('table-filter');
  var info=document.getElementById('table-info'), more=document.getElementById('table-more');
  var key=cols.findIndex(function(c){ return c[0]==='number'; }), dir=1, shown=200, view=rows;
  function fmt(v,f){ if(v===null||v===undefined) return '';
    if(f==='pct') return (100*v).toFixed(2)+'%'; if(f==='mega') return num(v/1e6);
    if(f==='num') return Math.abs(v)>=1000 ? String(Math.round(v)) : num(v); if(f==='star') return v?'\\u2605':'';
    return String(v); }
  function num(v){ var t=(+v).toPrecision(4);
    return t.indexOf('e')<0&&t.indexOf('.')>=0 ? t.replace(/\\.?0+$/,'') : t; }
  function esc(s){ return s.replace(/&/g,'&amp;').replace(/</g,'&lt;'); }
  function draw(){
    var q=filt.value.toLowerCase();
    view=rows.filter(function(r){ return !q || r.join(' ').toLowerCase().indexOf(q)>=0; });
    view.sort(function(a,b){ var x=a[key], y=b[key]; if(x===y) return 0; if(x===null) return 1; if(y===null) return -1;
      return (x<y?-1:1)*dir; });
    var h='<table><thead><tr>'+cols.map(function(c,i){
      return '<th data-i="'+i+'">'+c[1]+(i===key?(dir>0?' \\u25B2':' \\u25BC'):'')+'</th>'; }).join('')
      +'</tr></thead><tbody>';
    view.slice(0,shown).forEach(function(r){ h+='<tr>'+r.map(function(v,i){ var f=cols[i][2];
      var long=['text','choices','error'].indexOf(cols[i][0])>=0;
      var cl=long?' class="t"':(f!=='str'?' class="n"':'');
      return '<td'+cl+'>'+esc(fmt(v,f))+'</td>'; }).join('')+'</tr>'; });
    box.innerHTML=h+'</tbody></table>';
    info.textContent=view.length+' of '+rows.length+' trials'+(view.length>shown?' (first '+shown+' shown)':'');
    more.style.display=view.length>shown?'':'none';
    box.querySelectorAll('th').forEach(function(th){ th.onclick=function(){ var i=+th.getAttribute('data-i');
      if(i===key) dir=-dir; else {key=i; dir=1;} draw(); }; });
  }
  filt.oninput=function(){ shown=200; draw(); }; more.onclick=function(){ shown+=1000; draw(); };
  draw();
})();
"""

# In --serve mode the page asks the server which render it is showing, and reloads on a new one.
JS_SERVE = """
(function(){if(!/^https?:$/.test(location.protocol)) return; var stamp=document.body.getAttribute('data-stamp');
setInterval(function(){fetch('/__lab/stamp',{cache:'no-store'}).then(function(r){return r.text();})
.then(function(s){if(s&&s!==stamp) location.reload();}).catch(function(){});},2000);})();
"""


def check_ids(views: Sequence[View]) -> None:
    """View ids and figure ids are the page's element ids (#fronts, #fig-curves): unique in the table."""
    for kind, ids in (("view", [v.id for v in views]), ("figure", [p.id for v in views for p in v.plots])):
        taken = sorted({i for i in ids if ids.count(i) > 1})
        if taken:
            raise ValueError(f"{kind} ids must be unique across the views; taken twice: {', '.join(taken)}")


def shown(views: Sequence[View], ctx: Context) -> list[View]:
    """The views this page has (their `when` holds), in the table's order."""
    check_ids(views)
    return [v for v in views if v.when(ctx)]


def draw(views: Sequence[View], ctx: Context) -> dict[str, go.Figure]:
    """Draw the views' figures in order into `ctx.figures` (one with nothing to draw is left out)."""
    for plot in (p for v in views for p in v.plots):
        fig = plot.draw(ctx)
        if fig is not None:
            ctx.figures[plot.id] = fig
    return ctx.figures


def build_figures(data: DashboardData, gl_threshold: int = F.GL_THRESHOLD,
                  views: Sequence[View] = VIEWS) -> tuple[dict[str, go.Figure], dict[str, float], str]:
    """Every view's figure (id -> Figure; a view with nothing to draw is left out), the importances
    and the note on them."""
    ctx = Context(data, gl_threshold)
    figs = draw(shown(views, ctx), ctx)
    imp, imp_note = ctx.importance
    return figs, imp, imp_note


def _figures_json(figs: dict[str, go.Figure]) -> str:
    import plotly.io as pio

    for fig in figs.values():   # each row's hover text travels once, in lab-hover; the page fills traces in
        for trace in fig.data:
            if isinstance(trace.meta, dict) and trace.meta.get("hover") == "rows":
                trace.text = None
    return "{" + ",".join(f'"{k}":{pio.to_json(v, validate=False)}' for k, v in figs.items()) + "}"


def build_page(data: DashboardData, inline: bool = False, plotly_src: str | None = None, stamp: str = "",
               serve: bool = False, gl_threshold: int = F.GL_THRESHOLD, views: Sequence[View] = VIEWS) -> str:
    """The page's HTML: a section per view of `views` (in order) that the page has. plotly.js is
    inlined, or loaded from `plotly_src` (a file beside the page)."""
    from plotly.offline import get_plotlyjs

    ctx = Context(data, gl_threshold)
    views = shown(views, ctx)
    figs = draw(views, ctx)
    sections = [v.html(ctx) for v in views]
    fig_json = _figures_json(figs)
    hover_json = json.dumps(data.rows["hover"].tolist(), separators=(",", ":"))
    counts = data.rows["state"].value_counts().to_dict()
    meta = {"studies": [s.name for s in data.studies], "trials": len(data.rows),
            "states": {k: int(v) for k, v in counts.items()},
            "best": None if data.complete.empty else float(data.complete["acc"].max()), "accuracy": data.accuracy,
            "rendered": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), "figures": list(figs)}
    plotly_tag = (f"<script charset='utf-8'>{get_plotlyjs()}</script>" if inline or not plotly_src
                  else f"<script src='{html.escape(plotly_src)}' charset='utf-8'></script>")
    title = f"lab dashboard: {data.name}"
    nav = " ".join(f"<a href='#{v.id}'>{v.nav}</a>" for v in views)
    note_html = "".join(f"<div class='note'>{n}</div>" for n in notes(data))
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        f"<meta name='lab-dashboard' content='{html.escape(json.dumps(meta), quote=True)}'>"
        f"<title>{html.escape(title)}</title><script>{JS_ERRORS}</script><style>{CSS}</style>{plotly_tag}</head>"
        f"<body data-stamp='{html.escape(stamp)}'{' data-serve=1' if serve else ''}>"
        f"<header><h1>{html.escape(title)}</h1>{_summary(data)}<nav>{nav} <a href='{INDEX}'>all dashboards</a></nav>"
        f"<div class='help'>Rendered {meta['rendered']} from the studies' Parquet tables.</div></header>"
        f"<main>{note_html}{''.join(sections)}</main>"
        f"<script type='application/json' id='lab-figures'>{_script_json(fig_json)}</script>"
        f"<script type='application/json' id='lab-hover'>{_script_json(hover_json)}</script>"
        f"<script type='application/json' id='lab-table'>{_script_json(table_json(data))}</script>"
        f"<script>{JS_RENDER}</script>" + (f"<script>{JS_SERVE}</script>" if serve else "") + "</body></html>")


def render(studies: Sequence[str | Path], out: str | Path | None = None, root: str | Path | None = None,
           inline: bool = False, stamp: str = "", serve: bool = False, index: bool = True,
           gl_threshold: int = F.GL_THRESHOLD, views: Sequence[View] = VIEWS) -> Path:
    """Render the dashboard of `studies` (names under `root`, or study folders) with `views` to `out`
    (default `default_out`; a folder means FOLDER/NAME.html), refresh that folder's index; return
    the page."""
    data = load([find_study(str(s), root) for s in studies])
    path = Path(out).expanduser() if out is not None else default_out(data.name, root)
    if out is not None and (path.is_dir() or str(out).endswith(("/", os.sep)) or path.suffix.lower() != ".html"):
        path = path / f"{data.name}.html"
    path = path.resolve()
    if path.name.lower() == INDEX:
        raise LabError(f"cannot write the dashboard to {path}: {INDEX} is the folder's index of dashboards; "
                       f"name the page otherwise")
    # every file this render writes is checked before any is written: a refusal leaves the folder as it was
    for target in [path] + ([] if inline else [path.parent / plotly_js_name()]) + ([path.parent / INDEX] if index else []):
        check_ours(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    src = None if inline else _write_plotly_js(path.parent)
    page = build_page(data, inline=inline, plotly_src=src, stamp=stamp, serve=serve, gl_threshold=gl_threshold,
                      views=views)
    atomic_write(path, lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    if index:
        write_index(path.parent)
    return path


_META = re.compile(r"<meta name='lab-dashboard' content='([^']*)'>")


_PLOTLY_BANNER = "/**\n* plotly.js v"   # how plotly.js begins
_OLD_INDEX = "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>lab dashboards</title><style>"


def _head(path: Path, size: int = 8192) -> str | None:
    """The first `size` characters of a regular file (never opens a FIFO or a device); None if none."""
    try:
        if not path.is_file():
            return None
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read(size)
    except (OSError, ValueError):
        return None


def lab_wrote(path: Path) -> bool:
    """Whether `path` is a regular file that the dashboard writes, as its content says: a page (its
    lab-dashboard meta tag), a folder's index.html (its marker, or the exact opening of an index
    written before the marker) or plotly.js under its versioned name (plotly's banner)."""
    head = _head(path)
    if head is None:
        return False
    if PLOTLY_JS.fullmatch(path.name):
        return head.startswith(_PLOTLY_BANNER)
    if path.name.lower() == INDEX:
        return INDEX_MARKER in head or head.startswith(_OLD_INDEX)
    return path.suffix.lower() == ".html" and _meta(head) is not None


def check_ours(path: Path) -> None:
    """LabError, naming `path`, unless it is absent or a file the lab wrote (which a render may replace)."""
    if os.path.lexists(path) and not lab_wrote(path):
        raise LabError(f"not overwriting {path}: it exists and lab did not write it "
                       f"(move it away, or render elsewhere with --out)")


def page_info(path: Path) -> dict | None:
    """The metadata a dashboard page carries in its head; None for another HTML file."""
    head = _head(path)
    return None if head is None else _meta(head)


def _meta(head: str) -> dict | None:
    m = _META.search(head)
    if not m:
        return None
    try:
        return json.loads(html.unescape(m.group(1)))
    except ValueError:
        return None


def write_index(folder: str | Path) -> Path:
    """FOLDER/index.html: a link to every dashboard page in the folder (LabError if an index.html
    there is not the lab's)."""
    folder = Path(folder)
    check_ours(folder / INDEX)
    rows = []
    for page in sorted(folder.glob("*.html")):
        if page.name == INDEX:
            continue
        info = page_info(page)
        if info is None:
            continue
        states = ", ".join(f"{n} {s}" for s, n in sorted(info.get("states", {}).items())) or "no trials"
        best = _pct(info["best"]) if info.get("best") is not None else "–"
        rows.append(f"<tr><td><a href='{html.escape(page.name)}'>{html.escape(page.stem)}</a></td>"
                    f"<td>{html.escape(', '.join(info.get('studies', [])))}</td>"
                    f"<td class='n'>{info.get('trials', 0)}</td>"
                    f"<td>{html.escape(states)}</td><td class='n'>{best}</td>"
                    f"<td>{html.escape(str(info.get('rendered', '')))}</td></tr>")
    body = ("<table><thead><tr><th>dashboard</th><th>studies</th><th>trials</th><th>by state</th>"
            "<th>best accuracy</th><th>rendered (UTC)</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
            if rows else "<p class='empty'>No dashboards rendered yet: <code>lab dashboard STUDY</code>.</p>")
    text = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>{INDEX_MARKER}<title>lab dashboards</title>"
            f"<style>{CSS}</style></head><body><header><h1>lab dashboards</h1>"
            f"<div class='help'>Every rendered study in {html.escape(str(folder.resolve()))}.</div></header>"
            f"<main>{body}</main></body></html>")
    path = folder / INDEX
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return path
