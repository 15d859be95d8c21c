"""`lab dashboard --serve` serves the files the lab wrote in the page's folder and nothing else (no
listing, no symlink out, no traceback on odd requests), warns when it listens beyond loopback, and no
render overwrites a file the lab did not write."""

from __future__ import annotations

import http.client
import os
import re
import shutil
import socket
from pathlib import Path

import pytest

import lab.dashboard.serve as serve_mod
from lab.cli.main import main
from lab.dashboard import render
from lab.dashboard.page import plotly_js_name
from lab.dashboard.serve import exposure_warning, is_loopback, serve
from lab.dashboard.synthetic import write_synthetic_study

SECRET = b"the contents of a file outside the dashboards folder"


def request(port: int, method: str, path: str) -> tuple[int, bytes, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path)
        r = conn.getresponse()
        return r.status, r.read(), dict(r.getheaders())
    finally:
        conn.close()


def raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        return s.recv(400)


def serving(monkeypatch, capsys, check, **kw) -> None:
    """Run the real `serve` (main thread, its real server thread) and call check(port, folder) once it
    serves; then stop it as Ctrl-C would. The watch loop's second look at the stores is the hook."""
    calls: list[BaseException | None] = []
    signature = serve_mod.signature

    def hook(folders):
        if len(calls) == 1:   # rendered, bound, printed "serving URL from FOLDER"
            try:
                out = capsys.readouterr()
                m = re.search(r"serving http://\S+?:(\d+)/\S+ from (.+?); ", out.out)
                assert m, out
                check(int(m.group(1)), Path(m.group(2)), out.err)
                calls.append(None)
            except BaseException as e:   # serve() swallows the KeyboardInterrupt: keep the failure for after
                calls.append(e)
            raise KeyboardInterrupt
        calls.append(None)
        return signature(folders)

    monkeypatch.setattr(serve_mod, "signature", hook)
    assert serve(port=0, interval=0.01, **kw) == 0
    assert len(calls) == 2, "serve stopped before serving"
    if calls[1] is not None:
        raise calls[1]


@pytest.fixture
def site(tmp_path) -> Path:
    """tmp/site: where the page goes, holding what must never be served: the studies (optuna.db), a
    subfolder, a symlink to a secret outside, a foreign HTML file, hidden files."""
    root = tmp_path / "site" / "studies"
    write_synthetic_study(root / "demo", 3, named=False)
    (root / "demo" / "optuna.db").write_bytes(SECRET)
    (tmp_path / "secret").write_bytes(SECRET)
    site = tmp_path / "site"
    (site / "link").symlink_to(tmp_path / "secret")
    (site / "link.html").symlink_to(tmp_path / "secret")
    (site / "sub").mkdir()
    (site / "sub" / "x.html").write_bytes(SECRET)
    (site / "mine.html").write_bytes(b"<html>" + SECRET + b"</html>")
    (site / ".hidden.html").write_bytes(SECRET)
    return site


REFUSED = {
    404: ["/sub/", "/sub", "/sub/x.html", "/link", "/link.html", "/../secret", "/%2e%2e/secret", "/%2E%2E%2Fsecret",
          "/%00", "/x%00.html", "/..%2fsecret", "/..%5csecret", "//etc/passwd", "/studies/demo/optuna.db",
          "/studies%2fdemo%2foptuna.db", "/mine.html", "/.hidden.html", "/outside.html", "/nope.html", "/plotly.min.js",
          "/" + "a" * 5000, "/%" + "41" * 2000, "http://evil/x.html"],
    400: ["/%ff", "/%c3%28.html"],
}


def test_serve_answers_the_page_its_assets_and_stamp_and_refuses_everything_else(site, tmp_path, monkeypatch, capsys):
    def check(port: int, folder: Path, err: str) -> None:
        assert folder == site.resolve() and err == ""
        page = site / "demo.html"
        # a lab page of another folder, symlinked in: it resolves outside, so it is not served
        shutil.copy(page, tmp_path / "outside.html")
        (site / "outside.html").symlink_to(tmp_path / "outside.html")
        # the redirect is not a listing: / -> the page, with no body
        status, body, headers = request(port, "GET", "/")
        assert status == 302 and headers["Location"] == "/demo.html" and body == b""
        for path, name in [("/demo.html", "demo.html"), ("/demo.html?x=1", "demo.html"), ("/%64emo.html", "demo.html"),
                           ("/index.html", "index.html"), (f"/{plotly_js_name()}", plotly_js_name())]:
            status, body, headers = request(port, "GET", path)
            assert status == 200 and body == (site / name).read_bytes(), path
        assert request(port, "GET", "/demo.html")[2]["Cache-Control"] == "no-store"
        status, body, _ = request(port, "GET", "/__lab/stamp")
        assert status == 200 and re.fullmatch(rb"0-[0-9a-f]{12}", body)
        status, body, headers = request(port, "HEAD", "/demo.html")
        assert status == 200 and body == b"" and int(headers["Content-Length"]) == page.stat().st_size
        for want, paths in REFUSED.items():
            for path in paths:
                for method in ("GET", "HEAD"):
                    status, body, _ = request(port, method, path)
                    assert status == want and SECRET not in body, (method, path, status)
        for method in ("POST", "PUT", "DELETE", "OPTIONS", "BREW"):
            status, body, headers = request(port, method, "/demo.html")
            assert status == 405 and headers["Allow"] == "GET, HEAD" and body == b"", method
        for line in (b"GARBAGE", b"GET / HTTP/1.1 extra", b"GET / HTTPX/1.1"):   # malformed request lines
            assert b"400" in raw(port, line + b"\r\n\r\n"), line
        assert raw(port, b"GET /\xff HTTP/1.1\r\n\r\n").split(b" ")[1] in (b"302", b"400", b"404")
        # a symlink inside the folder to a page in it resolves inside: served
        (site / "alias.html").symlink_to("demo.html")
        assert request(port, "GET", "/alias.html")[:2] == (200, page.read_bytes())
        assert capsys.readouterr().err == ""   # no traceback, no line per request

    serving(monkeypatch, capsys, check, studies=["demo"], root=site / "studies", out=site / "demo.html")
    assert "stopped" in capsys.readouterr().out


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("", False), ("192.168.1.20", False), ("10.0.0.1", False), ("fe80::1", False)])
def test_only_loopback_hosts_go_without_a_warning(host, loopback):
    assert is_loopback(host) is loopback
    warning = exposure_warning(host, 8765, Path("/x/dashboards"))
    if loopback:
        assert warning is None
    else:
        assert warning is not None and len(warning.splitlines()) == 1 and warning.startswith("lab: warning: --host")
        assert "/x/dashboards" in warning and "readable by anyone who can reach this machine" in warning


def test_serving_on_all_interfaces_warns_once_on_stderr(site, monkeypatch, capsys):
    def check(port: int, folder: Path, err: str) -> None:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "--host 0.0.0.0 is not a loopback address" in lines[0], err
        assert f"on port {port}" in lines[0] and str(site.resolve()) in lines[0]
        assert request(port, "GET", "/demo.html")[0] == 200

    serving(monkeypatch, capsys, check, studies=["demo"], root=site / "studies", out=site / "demo.html", host="0.0.0.0")


# --- no render overwrites a file the lab did not write ----------------------------------------

FOREIGN = b"<!DOCTYPE html><html><head><title>my own page</title></head><body>mine</body></html>\n"


@pytest.mark.parametrize("foreign, out, serve_flag", [
    ("index.html", "report.html", False),            # the folder's index, beside --out
    ("index.html", "report.html", True),
    ("report.html", "report.html", False),           # the page itself
    ("demo.html", ".", False),                       # --out FOLDER: FOLDER/NAME.html
    ("PLOTLY", "report.html", False),                # plotly.js beside the page
    ("link.html", "link.html", False),               # a symlink to someone's file
])
def test_out_refuses_to_overwrite_a_file_the_lab_did_not_write(tmp_path, capsys, foreign, out, serve_flag):
    write_synthetic_study(tmp_path / "studies" / "demo", 3, named=False)
    folder = tmp_path / "www"
    folder.mkdir()
    name = plotly_js_name() if foreign == "PLOTLY" else foreign
    target = folder / name
    if name == "link.html":
        (tmp_path / "theirs.html").write_bytes(FOREIGN)
        target.symlink_to(tmp_path / "theirs.html")
    else:
        target.write_bytes(FOREIGN)
    before = sorted(os.listdir(folder))
    argv = ["dashboard", "demo", "--root", str(tmp_path / "studies"), "--out", str(folder / out)]
    rc = main(argv + (["--serve", "--port", "0"] if serve_flag else []))
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("lab: error: not overwriting "), err
    assert str(target.resolve()) in err
    assert target.read_bytes() == FOREIGN and sorted(os.listdir(folder)) == before   # nothing written at all


def test_out_index_html_is_refused_as_a_page_name(tmp_path, capsys):
    write_synthetic_study(tmp_path / "studies" / "demo", 3, named=False)
    rc = main(["dashboard", "demo", "--root", str(tmp_path / "studies"), "--out", str(tmp_path / "www" / "index.html")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "index.html is the folder's index" in err, err
    assert not (tmp_path / "www" / "index.html").exists()


def test_the_labs_own_files_are_rewritten_including_an_index_from_before_the_marker(tmp_path):
    write_synthetic_study(tmp_path / "studies" / "demo", 3, named=False)
    folder = tmp_path / "www"
    folder.mkdir()
    # how index.html began before it carried a marker (lab 0.x): still the lab's, still refreshed
    (folder / "index.html").write_text("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>lab "
                                       "dashboards</title><style>body{}</style></head><body>old</body></html>")
    page = render(["demo"], root=tmp_path / "studies", out=folder / "report.html")
    first = page.stat().st_ino
    render(["demo"], root=tmp_path / "studies", out=folder / "report.html")   # its own page: replaced
    assert page.stat().st_ino != first
    index = (folder / "index.html").read_text()
    assert "old" not in index and "href='report.html'" in index
    assert (folder / plotly_js_name()).stat().st_size > 1_000_000
