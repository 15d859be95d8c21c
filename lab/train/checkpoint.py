"""Checkpoints: weights plus what is needed to rebuild them, as `model.pt` and `model.safetensors`.

`model.pt` holds plain tensors, strings and numbers only, so `torch.load(path, weights_only=True)`
reads it; `model.safetensors` holds the same tensors with the metadata as strings. Both are written
to temporary names and renamed (lab.files.atomic_write), so a checkpoint is either complete or absent;
a run's checkpoint folder and its row are written all or nothing (`save_run`). Reading a checkpoint
file's weights, its metadata checked, is `lab.interop.weights.read_weights` (re-exported here).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import torch
from safetensors import SafetensorError
from torch import nn

from lab.build import build
from lab.errors import DataError, TrainError, first_line
from lab.files import atomic_write, is_no_space
from lab.grammar import parse
from lab.interop.weights import cpu_state, read_weights, write_safetensors
from lab.train.record import append_record

if TYPE_CHECKING:
    from lab.data import Dataset

__all__ = ["META_KEYS", "check_input", "load_checkpoint", "read_weights", "save_checkpoint", "save_run"]

META_KEYS = ("text", "num_classes", "in_chans", "res", "dataset", "mean", "std", "recipe", "run_id", "lab_version")


def save_checkpoint(folder: str | Path, model: nn.Module, meta: dict) -> Path:
    """Write `folder/model.pt` and `folder/model.safetensors`; return the .pt path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = cpu_state(model)
    meta = {k: meta[k] for k in META_KEYS}
    pt = folder / "model.pt"
    atomic_write(folder / "model.safetensors", lambda p: write_safetensors(p, state, meta))
    atomic_write(pt, lambda p: torch.save({"state_dict": state, "meta": meta}, p))
    return pt


_WRITE_ERRORS = (OSError, RuntimeError, SafetensorError, pa.ArrowException)  # torch.save raises RuntimeError


def save_run(out: str | Path, row: dict, table: str, weights: tuple[nn.Module, dict] | None = None) -> Path | None:
    """Write a run down in `out`, all or nothing: its checkpoint (when `weights`, a model and its
    metadata, are given) in `out/RUN_ID/` and its row (`row["checkpoint"]` set to the .pt path)
    appended to `out/table`. Returns the .pt path, or None without weights.

    The order makes every failure (a full disk above all) leave `out` as it was:
    1. the checkpoint's files are written into a hidden folder `out/.RUN_ID.partial`;
    2. that folder is renamed to `out/RUN_ID` (a rename writes no data);
    3. the row is appended to the table (atomic itself: a temporary file renamed over the table).
    A failure at any step removes what the earlier ones made (removing frees space, needs none):
    a run folder never stays without its row, a row is never added without its checkpoint, and an
    `out` this call created is removed again when empty. Only a crash between steps 2 and 3 can
    leave a complete checkpoint folder without its row (never the reverse). Writing errors are one
    TrainError naming the folder, saying "no space left" when that is the cause."""
    out = Path(out)
    run_id = row["run_id"]
    created = not out.exists()
    partial, final = out / f".{run_id}.partial", out / run_id
    need = 64 << 10   # slack (file system blocks, the row); the table's rewrite and the checkpoint are added
    try:
        out.mkdir(parents=True, exist_ok=True)
        if (out / table).is_file():
            need += (out / table).stat().st_size
        checkpoint = None
        if weights is not None:
            model, meta = weights
            need += 2 * sum(t.numel() * t.element_size() for t in model.state_dict().values())
            partial.mkdir()
            save_checkpoint(partial, model, meta)
            os.replace(partial, final)
            checkpoint = final / "model.pt"
            row["checkpoint"] = str(checkpoint)
        append_record(out / table, row)
        return checkpoint
    except BaseException as e:
        row["checkpoint"] = None
        for folder in (partial, final):
            shutil.rmtree(folder, ignore_errors=True)
        if created:   # this call made `out`: remove it unless another writer's files are in it
            with contextlib.suppress(OSError):
                lock = out / f".{table}.lock"   # append_record's lock file
                if [p.name for p in out.iterdir()] == [lock.name]:
                    lock.unlink()
                out.rmdir()
        if isinstance(e, _WRITE_ERRORS):
            raise TrainError(f"cannot save run {run_id} in {out}: {_write_failure(e, out, need)}; "
                             "nothing of it was kept") from None
        raise


def _write_failure(e: BaseException, out: Path, need: int) -> str:
    """Why a write failed, in a few words: "no space left on device" when an errno or the error's
    text says so, or when the folder's free space is below what the run needs (torch.save's
    "unexpected pos" names no cause); else the error's type and first line."""
    if is_no_space(e):
        return "no space left on device"
    free = _free_bytes(out)
    if free is not None and free < need:
        return f"no space left on device ({_size(free)} free, the run needs about {_size(need)})"
    first = first_line(e)
    return f"{type(e).__name__}: {first[:200]}"


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def _free_bytes(folder: Path) -> int | None:
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            try:
                return shutil.disk_usage(candidate).free
            except OSError:
                return None
    return None


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict]:
    """The model saved at `path` (a model.pt or model.safetensors, or their folder), in eval mode, and its metadata.

    read_weights checks the metadata before anything is built (bounded text that parses, sane
    integers, no more parameters than the file holds); the built model's keys and shapes are then
    compared with the file's and the weights loaded strictly. Each failure is one TrainError."""
    state, meta = read_weights(path)
    if meta is None:
        raise TrainError(f"checkpoint {path} has no grammar text in its metadata: not a lab checkpoint")
    model = build(parse(meta["text"]), num_classes=meta["num_classes"], in_chans=meta["in_chans"])
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    extra = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
             if k in state and state[k].shape != v.shape]
    for label, items in (("lacks tensor", missing), ("holds unexpected tensor", extra),
                         ("holds a tensor of the wrong shape (file vs text)", wrong)):
        if items:
            more = f" (and {len(items) - 1} more)" if len(items) > 1 else ""
            raise TrainError(f"checkpoint {path}: field 'state_dict' {label} {items[0]}{more}: "
                             "its weights are not those of the model its metadata's text describes")
    try:
        model.load_state_dict(state, strict=True)
    except Exception as e:  # a dtype that cannot be copied, a sparse tensor, ...
        first = first_line(e, type(e).__name__)
        raise TrainError(f"checkpoint {path}: field 'state_dict' does not load into its model ({first[:200]})") from None
    return model.eval(), meta


def check_input(meta: dict, ds: Dataset) -> int:
    """The frames per input of a checkpoint's model (1: images), after checking that dataset `ds`
    can feed it: the same input channels, and clips for a video model, images for an image one."""
    frames = parse(meta["text"]).frames
    if ds.in_chans != meta["in_chans"]:
        raise DataError(f"{ds.name} has {ds.in_chans} input channel(s); the checkpoint expects {meta['in_chans']}")
    if (frames > 1) != (ds.frames > 1):
        raise DataError(f"{ds.name} holds {'clips' if ds.frames > 1 else 'images'}, but the checkpoint is "
                        f"{'a video' if frames > 1 else 'an image'} model")
    return frames
