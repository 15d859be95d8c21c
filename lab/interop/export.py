"""A lab model written out as a standalone file: `export_model(model, meta, format, path)`.

Every format takes the same input and carries the same description:
- input: images with values in [0, 1], float32, (N, C, res, res) (a video model: clips (N, C, F, res, res));
  the batch size N is free. Resizing to `res` is the caller's (the lab's evaluation resizes bilinearly).
- normalization: torchscript, export (.pt2) and onnx files hold the model behind `Normalized`, which
  applies the training data's per-channel (x - mean) / std itself; a safetensors file holds weights, not
  a graph, so it holds the bare model's weights (loadable by every lab loader: `lab train --init`,
  `lab probe`, lab.train.checkpoint.load_checkpoint) and mean/std in its metadata, which `load_exported`
  applies: loaded through it, every format is the same [0, 1]-in, logits-out module.
- metadata (`describe`): the grammar text, num_classes, in_chans, res, frames, mean, std, dataset, recipe,
  source, the input convention: safetensors metadata (each value JSON), `lab.json` in a torchscript or
  .pt2 archive's extra files, the ONNX model's metadata_props (each value JSON, keys prefixed "lab.").

Each written file is read back and run on random inputs of another batch size than the one it was traced
with; its logits must equal the model's (within 1e-4; ONNX through onnxruntime when it is installed) or
the file is removed and ExportError says by how much. What a format cannot take is one ExportError.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from lab.build import build
from lab.errors import LabError, first_line
from lab.files import atomic_write
from lab.grammar import parse
from lab.interop.weights import cpu_state, read_weights, write_safetensors

FORMATS = {"safetensors": ".safetensors", "torchscript": ".pt", "export": ".pt2", "onnx": ".onnx"}
ATOL, RTOL = 1e-4, 1e-4   # how close an exported file's logits must be to the model's
EXTRA = "lab.json"        # the metadata's name among a torchscript / .pt2 archive's extra files
INPUT = "float32 images in [0, 1], (N, C, res, res); video (N, C, frames, res, res)"
TRACE_BATCH, CHECK_BATCH = 2, 3
ONNX_EXTRA = "pip install 'lab[onnx]'"


class ExportError(LabError):
    """A model that cannot be written in the format asked for (or whose file does not reproduce it)."""


class Normalized(nn.Module):
    """`model` behind the training data's normalization: takes [0, 1] images, returns the model's logits."""

    def __init__(self, model: nn.Module, mean: list[float] | None, std: list[float] | None, frames: int = 1):
        super().__init__()
        self.model = model
        channels = len(mean) if mean else 1
        shape = (1, channels, 1, 1, 1) if frames > 1 else (1, channels, 1, 1)
        self.register_buffer("mean", torch.tensor(mean or [0.0], dtype=torch.float32).reshape(shape))
        self.register_buffer("std", torch.tensor(std or [1.0], dtype=torch.float32).reshape(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model((x - self.mean) / self.std)


def describe(meta: dict, format: str, source: str | None = None) -> dict:
    """The metadata every exported file carries (JSON-able)."""
    spec = parse(meta["text"])
    return {"format": format, "text": meta["text"], "num_classes": meta["num_classes"], "in_chans": meta["in_chans"],
            "res": meta["res"], "frames": spec.frames, "mean": meta.get("mean"), "std": meta.get("std"),
            "dataset": meta.get("dataset"), "recipe": meta.get("recipe"), "run_id": meta.get("run_id"),
            "lab_version": meta.get("lab_version"), "source": source, "input": INPUT,
            "normalization": "in the metadata (load_exported applies it)" if format == "safetensors"
            else "inside the model: (x - mean) / std"}


def example_input(info: dict, batch: int, seed: int = 0) -> torch.Tensor:
    """Random [0, 1] images (or clips) of the shape a model described by `info` takes."""
    res, chans, frames = info["res"], info["in_chans"], info.get("frames", 1)
    shape = (batch, chans, frames, res, res) if frames > 1 else (batch, chans, res, res)
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


@dataclass
class Exported:
    path: Path
    format: str
    bytes: int
    max_diff: float | None   # the largest |logit difference| from the model on the check input (None: not checked)
    checked_with: str        # what ran the file for the check ("torch", "onnxruntime", or why it was not checked)
    info: dict               # the metadata it carries (`describe`)


def export_model(model: nn.Module, meta: dict, format: str, path: str | Path, source: str | None = None) -> Exported:
    """Write `model` (built from `meta`'s text; lab checkpoint metadata) as `format` to `path`, atomically,
    and check the file reproduces the model's logits (see the module docstring)."""
    if format not in FORMATS:
        raise ExportError(f"--format {format!r}: expected one of {', '.join(FORMATS)}")
    path = Path(path)
    info = describe(meta, format, source)
    wrapped = Normalized(model.eval(), info["mean"], info["std"], info["frames"]).eval()
    example, check = example_input(info, TRACE_BATCH, 0), example_input(info, CHECK_BATCH, 1)
    with torch.no_grad():
        expected = wrapped(check)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ExportError(f"--out {path}: cannot make its folder ({e.strerror or e})") from None
    writers = {"safetensors": _safetensors, "torchscript": _torchscript, "export": _export, "onnx": _onnx}
    try:
        atomic_write(path, lambda tmp: writers[format](wrapped, model, example, info, tmp))
    except LabError:
        raise
    except OSError as e:   # the file system's, not the format's: a full disk, a folder it may not write
        raise ExportError(f"--out {path}: cannot write it ({e.strerror or first_line(e)})") from None
    except Exception as e:
        raise ExportError(_cannot(format, info, e)) from None
    try:
        run, how = load_runner(path, format)
        got = None if run is None else run(check)
    except Exception as e:
        path.unlink(missing_ok=True)
        raise ExportError(f"--format {format}: the written file does not run ({type(e).__name__}: "
                          f"{first_line(e)[:200]}); nothing was kept") from None
    diff = None if got is None else float((got - expected).abs().max())
    if got is not None and (got.shape != expected.shape or not torch.allclose(got, expected, atol=ATOL, rtol=RTOL)):
        path.unlink(missing_ok=True)
        what = f"shape {tuple(got.shape)} vs {tuple(expected.shape)}" if got.shape != expected.shape else f"by {diff:.2e}"
        raise ExportError(f"--format {format}: the written file's logits differ from the model's ({what}, tolerance "
                          f"{ATOL:g}); nothing was kept")
    return Exported(path, format, path.stat().st_size, diff, how, info)


def _cannot(format: str, info: dict, e: Exception) -> str:
    kind = "video model" if info["frames"] > 1 else "model"
    return (f"--format {format} cannot take this {kind} ({info['text'][:60]}...): {type(e).__name__}: "
            f"{first_line(e)[:240]}")


@contextlib.contextmanager
def _hushed():
    """The exporters' own progress lines and warnings (torch.onnx prints its steps) kept off the terminal."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _safetensors(wrapped: Normalized, model: nn.Module, example: torch.Tensor, info: dict, tmp: str) -> None:
    write_safetensors(tmp, cpu_state(model), info)


def _torchscript(wrapped: Normalized, model: nn.Module, example: torch.Tensor, info: dict, tmp: str) -> None:
    # torch.jit.script cannot compile the lab's modules (Python-side shape logic); a trace records the
    # tensors' path for the example's shapes, which the check then runs at another batch size
    with _hushed(), torch.no_grad():
        traced = torch.jit.trace(wrapped, (example,), check_trace=False)
        torch.jit.save(traced, tmp, _extra_files={EXTRA: json.dumps(info)})


def _exported_program(wrapped: Normalized, example: torch.Tensor) -> torch.export.ExportedProgram:
    with _hushed():
        return torch.export.export(wrapped, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))


def _export(wrapped: Normalized, model: nn.Module, example: torch.Tensor, info: dict, tmp: str) -> None:
    buffer = io.BytesIO()   # torch.export.save warns of a file not named .pt2 (the temporary one)
    torch.export.save(_exported_program(wrapped, example), buffer, extra_files={EXTRA: json.dumps(info)})
    Path(tmp).write_bytes(buffer.getvalue())


def _onnx(wrapped: Normalized, model: nn.Module, example: torch.Tensor, info: dict, tmp: str) -> None:
    try:
        import onnx  # noqa: F401  # lazy: start-up time
        import onnxscript  # noqa: F401  # lazy: start-up time
    except ImportError as e:
        raise ExportError(f"--format onnx needs the onnx and onnxscript packages (no module {e.name}): "
                          f"{ONNX_EXTRA}") from None
    with _hushed():
        program = torch.onnx.export(wrapped, (example,), dynamo=True, input_names=["images"], output_names=["logits"],
                                    dynamic_shapes=({0: torch.export.Dim("batch")},))
    assert program is not None  # dynamo=True returns the program
    for key, value in info.items():
        program.model.metadata_props[f"lab.{key}"] = json.dumps(value)
    with _hushed():
        program.save(tmp)


# --- reading an exported file back ----------------------------------------------------------

def read_info(path: str | Path) -> dict:
    """The metadata an exported file carries (see `describe`)."""
    path = Path(path)
    format = next((f for f, ext in FORMATS.items() if path.suffix == ext), None)
    try:
        if format == "safetensors":
            with safe_open(str(path), framework="pt") as fh:
                return {k: json.loads(v) for k, v in (fh.metadata() or {}).items()}
        if format == "torchscript":
            files = {EXTRA: ""}
            with _hushed():
                torch.jit.load(str(path), _extra_files=files)
            return json.loads(files[EXTRA])
        if format == "export":
            files = {EXTRA: ""}
            torch.export.load(str(path), extra_files=files)
            return json.loads(files[EXTRA])
        if format == "onnx":
            import onnx  # lazy: start-up time

            props = onnx.load(str(path), load_external_data=False).metadata_props
            return {p.key.removeprefix("lab."): json.loads(p.value) for p in props if p.key.startswith("lab.")}
    except LabError:
        raise
    except Exception as e:
        raise ExportError(f"{path}: not a readable lab export ({type(e).__name__}: {first_line(e)[:200]})") from None
    raise ExportError(f"{path}: not a lab export (expected a file ending {', '.join(FORMATS.values())})")


def load_exported(path: str | Path) -> tuple[nn.Module, dict]:
    """A safetensors export as the module its graph exports are: [0, 1] images in, logits out (eval mode),
    with its metadata. (Graph formats load with their own tools: torch.jit.load, torch.export.load,
    onnxruntime; `load_runner` runs any of them.)"""
    state, meta = read_weights(path)
    if meta is None:
        raise ExportError(f"{path}: a safetensors file without lab metadata (no grammar text)")
    model = build(parse(meta["text"]), num_classes=meta["num_classes"], in_chans=meta["in_chans"])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ExportError(f"{path}: its weights do not load into the model its text describes "
                          f"({first_line(e)[:200]})") from None
    return Normalized(model, meta.get("mean"), meta.get("std"), parse(meta["text"]).frames).eval(), meta


def load_runner(path: str | Path, format: str) -> tuple[Callable[[torch.Tensor], torch.Tensor] | None, str]:
    """A function running the exported file at `path` on a batch (None when nothing here can run it), and
    what runs it."""
    path = Path(path)
    if format == "safetensors":
        module, _ = load_exported(path)
        return _no_grad(module), "lab.interop.export.load_exported"
    if format == "torchscript":
        with _hushed():
            return _no_grad(torch.jit.load(str(path))), "torch.jit.load"
    if format == "export":
        return _no_grad(torch.export.load(str(path)).module()), "torch.export.load"
    try:
        import onnxruntime  # lazy: start-up time
    except ImportError:
        return None, f"not checked: onnxruntime is not installed ({ONNX_EXTRA})"
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {name: x.numpy()})[0])

    return run, "onnxruntime"


def _no_grad(module: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(x)

    return run
