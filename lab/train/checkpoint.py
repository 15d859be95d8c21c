"""Checkpoints: weights plus what is needed to rebuild them, as `model.pt` and `model.safetensors`.

`model.pt` holds plain tensors, strings and numbers only, so `torch.load(path, weights_only=True)`
reads it; `model.safetensors` holds the same tensors with the metadata as strings. Both are written
to temporary names and renamed (lab.files.atomic_write), so a checkpoint is either complete or absent.
Reading a checkpoint file's weights is `lab.interop.weights.read_weights` (re-exported here).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import save_file
from torch import nn

from lab.build import build
from lab.errors import DataError, TrainError
from lab.files import atomic_write
from lab.grammar import parse
from lab.interop.weights import read_weights

if TYPE_CHECKING:
    from lab.data import Dataset

__all__ = ["META_KEYS", "check_input", "load_checkpoint", "read_weights", "save_checkpoint"]

META_KEYS = ("text", "num_classes", "in_chans", "res", "dataset", "mean", "std", "recipe", "run_id", "lab_version")


def save_checkpoint(folder: str | Path, model: nn.Module, meta: dict) -> Path:
    """Write `folder/model.pt` and `folder/model.safetensors`; return the .pt path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {k: meta[k] for k in META_KEYS}
    pt = folder / "model.pt"
    atomic_write(folder / "model.safetensors",
                 lambda p: save_file(state, p, metadata={k: json.dumps(v) for k, v in meta.items()}))
    atomic_write(pt, lambda p: torch.save({"state_dict": state, "meta": meta}, p))
    return pt


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict]:
    """The model saved at `path` (a model.pt or model.safetensors, or their folder), in eval mode, and its metadata."""
    state, meta = read_weights(path)
    if meta is None:
        raise TrainError(f"checkpoint {path} has no grammar text in its metadata: not a lab checkpoint")
    model = build(parse(meta["text"]), num_classes=meta["num_classes"], in_chans=meta["in_chans"])
    model.load_state_dict(state)
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
