"""`lab export RUN|STUDY:TRIAL|CHECKPOINT --format F`: a trained model as a standalone file."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from lab.cli.args import ROOT_HELP
from lab.errors import LabError

FORMAT_NAMES = ("safetensors", "torchscript", "export", "onnx")   # lab.interop.export.FORMATS, without importing torch
EXTENSIONS = (".safetensors", ".pt", ".pt2", ".onnx")
_TRIAL = re.compile(r"^(?P<study>.+):(?P<number>\d+)$")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="write a trained model (a run, a study trial's kept weights) as a standalone "
                                      "file: safetensors, torchscript, torch.export (.pt2) or onnx")
    p.add_argument("source", metavar="RUN|STUDY:TRIAL|CHECKPOINT",
                   help="a `lab train` run id (RUNS/RUN_ID), a study trial whose weights the study kept (NAME:NUMBER), "
                        "or a checkpoint file (model.pt, model.safetensors, a study's weights/trial-N.safetensors)")
    p.add_argument("--format", required=True, choices=FORMAT_NAMES,
                   help="safetensors (weights + metadata), torchscript (torch.jit.trace), export (torch.export, .pt2) "
                        "or onnx (dynamo; needs lab[onnx])")
    p.add_argument("--out", metavar="PATH", help="the file to write, or a folder for it (default exports/NAME.EXT)")
    p.add_argument("--root", help=ROOT_HELP)
    p.add_argument("--runs", metavar="RUNS_DIR", default="runs", help="where `lab train` runs are (default runs)")
    p.set_defaults(run=run_export)


def resolve_source(source: str, runs: str | Path = "runs", root: str | Path | None = None) -> tuple[Path, str]:
    """(checkpoint file, a name for the export) of a run id, STUDY:TRIAL or checkpoint path; LabError saying why not."""
    from lab.study.config import find_study  # lazy: start-up time
    from lab.study.store import StudyStore  # lazy: start-up time
    from lab.study.weights import trial_weights  # lazy: start-up time

    path = Path(source).expanduser()
    if path.is_file() or (path.is_dir() and (path / "model.pt").is_file()):
        name = path.parent.name if path.name.startswith("model.") or path.is_dir() else path.stem
        return path, (path.name if path.is_dir() else name)
    run = Path(runs) / source
    if source and "/" not in source and (run / "model.pt").is_file():
        return run / "model.pt", source
    m = _TRIAL.match(source)
    if m:
        folder = find_study(m["study"], root)
        store = StudyStore(folder)
        number = int(m["number"])
        weights = trial_weights(folder, number, store.load_config(), store.trials().to_pylist())
        return weights, f"{folder.name}-trial-{number}"
    raise LabError(f"{source!r}: no run {source} in {runs}/ (--runs), no checkpoint file of that path, and not "
                   f"STUDY:TRIAL (a study's name and a trial number, e.g. demo:12)")


def output_path(out: str | None, name: str, format: str) -> Path:
    ext = EXTENSIONS[FORMAT_NAMES.index(format)]
    if out is None:
        return Path("exports") / f"{name}{ext}"
    path = Path(out).expanduser()
    return path / f"{name}{ext}" if path.is_dir() or out.endswith("/") else path


def run_export(args: argparse.Namespace) -> int:
    from lab.interop.export import export_model  # lazy: start-up time
    from lab.memory import format_size  # lazy: start-up time
    from lab.train.checkpoint import load_checkpoint  # lazy: start-up time

    checkpoint, name = resolve_source(args.source, args.runs, args.root)
    model, meta = load_checkpoint(checkpoint)
    done = export_model(model, meta, args.format, output_path(args.out, name, args.format), source=str(checkpoint))
    info = done.info
    frames = f"{info['frames']}, " if info["frames"] > 1 else ""
    shape = f"(N, {info['in_chans']}, {frames}{info['res']}, {info['res']})"
    check = (f"logits match the model within {done.max_diff:.1e} ({done.checked_with})" if done.max_diff is not None
             else done.checked_with)
    where = "normalization in its metadata" if args.format == "safetensors" else "normalization inside"
    print(f"wrote {done.path} ({args.format}, {format_size(done.bytes)}): [0, 1] images {shape} -> "
          f"{meta['num_classes']} logits, {where}; {check}")
    return 0
