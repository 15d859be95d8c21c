"""`lab dashboard --serve`: the dashboards folder served over HTTP (127.0.0.1 by default), the page
re-rendered whenever the study's files change, and the page reloading itself on a new render.

The main thread watches the stores (modification times of study.yaml, the compacted tables and the
fragment folders: a fragment written or replaced renames a file in its folder) and re-renders; the
HTTP server runs in a daemon thread and answers GET /__lab/stamp with the current render's stamp,
which the page polls. Ctrl-C (or SIGTERM) shuts the server down and returns 0.

What it serves is an allow-list, not a view of the filesystem: a plain file name in the page's folder
(no subfolder, no listing) that resolves inside that folder and that the lab wrote (`lab_wrote`: a
dashboard page, the folder's index.html, plotly.js). Anything else is 404, a non-UTF-8 escape 400, a
method other than GET and HEAD 405; nothing is logged per request.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import os
import shutil
import signal
import socket
import socketserver
import sys
import threading
import time
import urllib.parse
import webbrowser
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from lab.dashboard.page import lab_wrote, render
from lab.errors import LabError
from lab.study.config import find_study

WATCHED = ("study.yaml", "trials.parquet", "epochs.parquet", "trials", "epochs")


def signature(folders: list[Path]) -> tuple:
    """What changes when a study gains or rewrites a trial: its files' and folders' mtimes and sizes."""
    out = []
    for folder in folders:
        for name in WATCHED:
            try:
                st = (folder / name).stat()
                out.append((st.st_mtime_ns, st.st_size))
            except OSError:
                out.append((0, 0))
    return tuple(out)


MAX_PATH = 1024   # longer request paths are 404 (no file the lab writes has such a name)
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8"}


def served_file(folder: Path, target: str) -> Path | HTTPStatus:
    """The file a request path names in `folder` (resolved), or the status that refuses it: 404 for
    anything but one plain file name the lab wrote inside the folder, 400 for an escape that is not UTF-8."""
    path = target.split("?", 1)[0].split("#", 1)[0]
    if len(path) > MAX_PATH or not path.startswith("/"):
        return HTTPStatus.NOT_FOUND
    try:
        name = urllib.parse.unquote(path[1:], errors="strict")
    except UnicodeDecodeError:
        return HTTPStatus.BAD_REQUEST
    if not name or name.startswith(".") or any(c in name for c in "/\\\0") or not name.isprintable():
        return HTTPStatus.NOT_FOUND
    try:
        file = (folder / name).resolve(strict=True)
    except (OSError, RuntimeError, ValueError):   # absent, a symlink loop, a name too long
        return HTTPStatus.NOT_FOUND
    if file.parent != folder or not lab_wrote(file):   # a symlink leading out, a file the lab did not write
        return HTTPStatus.NOT_FOUND
    return file


class _Handler(BaseHTTPRequestHandler):
    """GET/HEAD of the files `served_file` allows, the current stamp, and / -> the page."""

    server_version = "lab-dashboard"
    sys_version = ""

    def __init__(self, *args, state: dict, **kw):
        self.state = state
        super().__init__(*args, **kw)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/__lab/stamp":
            self._send(HTTPStatus.OK, self.state["stamp"].encode(), "text/plain; charset=utf-8")
            return
        if path == "/":   # not a listing: the page itself
            self.send_response(HTTPStatus.FOUND)
            self.send_header("Location", "/" + urllib.parse.quote(self.state["page"]))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        file = served_file(self.state["folder"], self.path)
        if isinstance(file, HTTPStatus):
            self.send_error(file)
            return
        try:
            f = open(file, "rb")
        except OSError:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        with f:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", TYPES.get(file.suffix.lower(), "application/octet-stream"))
            self.send_header("Content-Length", str(os.fstat(f.fileno()).st_size))
            if file.suffix.lower() == ".html":   # a reload must fetch the new render
                self.send_header("Cache-Control", "no-store")
            self.end_headers()
            if self.command != "HEAD":
                shutil.copyfileobj(f, self.wfile)

    do_HEAD = do_GET

    def _send(self, status: HTTPStatus, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _not_allowed(self) -> None:
        self.send_response(HTTPStatus.METHOD_NOT_ALLOWED)
        self.send_header("Allow", "GET, HEAD")
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.close_connection = True   # a request body may follow, unread
        self.end_headers()

    def __getattr__(self, name: str):
        """do_POST, do_PUT, do_WHATEVER: 405 (the base class would answer 501)."""
        if name.startswith("do_"):
            return self._not_allowed
        raise AttributeError(name)

    def log_message(self, format: str, *args) -> None:  # quiet: one line per request would drown the console
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str, port: int, handler):
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), handler)

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)   # HTTPServer's would look the host's name up (DNS)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])

    def handle_error(self, request, client_address) -> None:
        """One line, never a traceback; a client that hung up says nothing."""
        e = sys.exc_info()[1]
        if not isinstance(e, ConnectionError | TimeoutError):
            print(f"lab: warning: request from {client_address[0]} failed ({type(e).__name__}: {e})",
                  file=sys.stderr, flush=True)


def is_loopback(host: str) -> bool:
    """Whether every address `host` names is a loopback one (127.0.0.0/8, ::1; localhost)."""
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except (OSError, UnicodeError):
        return False
    return bool(infos) and all(ipaddress.ip_address(str(i[4][0]).split("%", 1)[0]).is_loopback for i in infos)


def exposure_warning(host: str, port: int, folder: Path) -> str | None:
    """The one line to print when the server listens beyond this machine; None on loopback."""
    if is_loopback(host):
        return None
    return (f"lab: warning: --host {host or repr(host)} is not a loopback address: the dashboards in {folder} are "
            f"readable by anyone who can reach this machine on port {port}")


def serve(studies: list[str], root: str | Path | None = None, out: str | Path | None = None, host: str = "127.0.0.1",
          port: int = 8765, inline: bool = False, open_browser: bool = False, interval: float = 1.0) -> int:
    """Render, serve and re-render until Ctrl-C; returns 0."""
    folders = [find_study(s, root) for s in studies]
    last = signature(folders)
    count = 0

    def stamp() -> str:
        return f"{count}-{hashlib.blake2b(repr(last).encode(), digest_size=6).hexdigest()}"

    page = render(folders, out=out, root=root, inline=inline, stamp=stamp(), serve=True)
    state = {"stamp": stamp(), "page": page.name, "folder": page.parent}   # render resolved the page
    handler = functools.partial(_Handler, state=state)
    try:
        server = _Server(host, port, handler)
    except (OSError, OverflowError, UnicodeError) as e:
        raise LabError(f"--port {port}: cannot serve on {host}:{port} ({getattr(e, 'strerror', None) or e})") from None
    bound = server.server_address[1]
    if warning := exposure_warning(host, bound, page.parent):
        print(warning, file=sys.stderr, flush=True)
    url = f"http://{f'[{host}]' if ':' in host else host}:{bound}/{urllib.parse.quote(page.name)}"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True)
    thread.start()
    print(f"serving {url} from {page.parent}; it re-renders as the study changes (Ctrl-C stops)", flush=True)
    if open_browser:
        webbrowser.open(url)

    def on_term(signum, frame):  # SIGTERM stops as cleanly as Ctrl-C
        raise KeyboardInterrupt

    # Ctrl-C raises KeyboardInterrupt even where SIGINT was inherited ignored (a shell's background job);
    # handlers can only be set from the main thread (a notebook may call this from another)
    main = threading.current_thread() is threading.main_thread()
    previous = (signal.signal(signal.SIGTERM, on_term), signal.signal(signal.SIGINT, signal.default_int_handler)) \
        if main else None
    try:
        while True:
            time.sleep(interval)
            now = signature(folders)
            if now == last:
                continue
            last, count = now, count + 1
            try:
                render(folders, out=page, root=root, inline=inline, stamp=stamp(), serve=True)
            except Exception as e:
                print(f"lab: warning: not re-rendered ({type(e).__name__}: {e}); the next change retries",
                      file=sys.stderr, flush=True)
                continue
            state["stamp"] = stamp()
            print(f"re-rendered {page.name} ({time.strftime('%H:%M:%S')})", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        if previous:
            signal.signal(signal.SIGTERM, previous[0])
            signal.signal(signal.SIGINT, previous[1])
        server.shutdown()
        server.server_close()
    print("stopped", flush=True)
    return 0
