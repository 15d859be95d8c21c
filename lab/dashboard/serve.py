"""`lab dashboard --serve`: the dashboards folder served over HTTP (127.0.0.1 by default), the page
re-rendered whenever the study's files change, and the page reloading itself on a new render.

The main thread watches the stores (modification times of study.yaml, the compacted tables and the
fragment folders: a fragment written or replaced renames a file in its folder) and re-renders; the
HTTP server runs in a daemon thread and answers GET /__lab/stamp with the current render's stamp,
which the page polls. Ctrl-C (or SIGTERM) shuts the server down and returns 0.
"""

from __future__ import annotations

import functools
import hashlib
import signal
import sys
import threading
import time
import webbrowser
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from lab.dashboard.page import render
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


class _Handler(SimpleHTTPRequestHandler):
    """Files of the dashboards folder, the current stamp, and / -> the page."""

    def __init__(self, *args, state: dict, **kw):
        self.state = state
        super().__init__(*args, **kw)

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/__lab/stamp":
            body = self.state["stamp"].encode()
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)
            return
        if path == "/":
            self.send_response(HTTPStatus.FOUND)
            self.send_header("Location", "/" + self.state["page"])
            self.end_headers()
            return
        super().do_GET()

    def end_headers(self) -> None:
        if self.path.split("?", 1)[0].endswith(".html"):   # a reload must fetch the new render
            self.send_header("Cache-Control", "no-store")
        super().end_headers()

    def log_message(self, format: str, *args) -> None:  # quiet: one line per request would drown the console
        pass


def serve(studies: list[str], root: str | Path | None = None, out: str | Path | None = None, host: str = "127.0.0.1",
          port: int = 8765, inline: bool = False, open_browser: bool = False, interval: float = 1.0) -> int:
    """Render, serve and re-render until Ctrl-C; returns 0."""
    folders = [find_study(s, root) for s in studies]
    last = signature(folders)
    count = 0

    def stamp() -> str:
        return f"{count}-{hashlib.blake2b(repr(last).encode(), digest_size=6).hexdigest()}"

    page = render(folders, out=out, root=root, inline=inline, stamp=stamp(), serve=True)
    state = {"stamp": stamp(), "page": page.name}
    handler = functools.partial(_Handler, directory=str(page.parent), state=state)
    try:
        server = ThreadingHTTPServer((host, port), handler)
    except OSError as e:
        raise LabError(f"--port {port}: cannot serve on {host}:{port} ({e.strerror or e})") from None
    server.daemon_threads = True
    url = f"http://{host}:{server.server_address[1]}/{page.name}"
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
