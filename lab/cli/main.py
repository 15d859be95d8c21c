"""Entry point of the `lab` command. User errors print one line and exit with code 2."""

from __future__ import annotations

import argparse
import os
import sys

import lab
from lab.errors import LabError


class ArgParser(argparse.ArgumentParser):
    """argparse with one-line errors (`lab: error: ...`) and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def make_parser() -> ArgParser:
    from lab.cli import (  # lazy: start-up time
        arch,
        bench,
        dashboard,
        export,
        probe,
        recommend,
        scale,
        study,
        train,
        transfer,
    )

    parser = ArgParser(prog="lab", description="A neural-architecture search and scaling lab for vision models.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {lab.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgParser)
    sub.required = True
    arch.add_parser(sub)
    train.add_parser(sub)
    probe.add_parser(sub)
    transfer.add_parser(sub)
    study.add_parser(sub)
    export.add_parser(sub)
    dashboard.add_parser(sub)
    scale.add_parser(sub)
    recommend.add_parser(sub)
    bench.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        code = args.run(args) or 0
        sys.stdout.flush()   # a reader that went away shows here, not as a traceback at exit
        return code
    except BrokenPipeError:   # `lab arch list | head`: the reader stopped early; not an error of lab's
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141   # 128 + SIGPIPE, what a shell reports for a tool stopped by a closed pipe
    except LabError as e:
        print(f"lab: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("lab: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
