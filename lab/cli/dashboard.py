"""`lab dashboard STUDY [STUDY ...]`: a study's Pareto fronts, learning curves, design space,
importance, scaling, trials and recipe as one HTML page (see lab.dashboard)."""

from __future__ import annotations

import argparse
import webbrowser

from lab.cli.args import ROOT_HELP, bounded
from lab.errors import LabError

DEFAULT_PORT = 8765


_port = bounded(int, lambda p: 0 <= p <= 65535, "a port number in 0..65535 (0: any free port)")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dashboard", help="a study's Pareto fronts, curves, design space and scaling as HTML (Plotly)")
    p.add_argument("studies", nargs="+", metavar="STUDY",
                   help="study name (under --root), or a study folder; several studies make one page")
    p.add_argument("--out", help="the page, or a folder for it (default: dashboards/NAME.html beside the studies "
                                 "folder: ./dashboards, $LAB_HOME/dashboards or ROOT/../dashboards)")
    p.add_argument("--root", help=ROOT_HELP)
    p.add_argument("--inline", action="store_true",
                   help="put plotly.js inside the page (+4.8 MB) instead of writing it once beside the pages")
    p.add_argument("--open", action="store_true", help="open the page in a web browser")
    p.add_argument("--serve", action="store_true",
                   help="serve the page over HTTP and re-render it as the study adds trials (Ctrl-C stops)")
    p.add_argument("--host", default=None, help="with --serve: the address to listen on (default 127.0.0.1; another "
                                                "than loopback makes the dashboards readable from the network)")
    p.add_argument("--port", type=_port, default=None, help=f"with --serve: the port (default {DEFAULT_PORT}; 0: any)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if not args.serve and (args.port is not None or args.host is not None):
        raise LabError(f"{'--port' if args.port is not None else '--host'} needs --serve")
    try:
        if args.serve:
            from lab.dashboard.serve import serve  # lazy: start-up time

            return serve(args.studies, root=args.root, out=args.out, host=args.host or "127.0.0.1",
                         port=DEFAULT_PORT if args.port is None else args.port, inline=args.inline,
                         open_browser=args.open)
        from lab.dashboard import render  # lazy: start-up time

        path = render(args.studies, out=args.out, root=args.root, inline=args.inline)
    except OSError as e:   # an unwritable --out, a full disk: the user's to fix, one line
        where = f" to {args.out}" if args.out else ""
        raise LabError(f"cannot write the dashboard{where}: {e.strerror or e}") from None
    print(path)
    if args.open:

        webbrowser.open(path.as_uri())
    return 0
