"""Checkpoints: weights plus what is needed to rebuild them, as `model.pt` and `model.safetensors`.

`model.pt` holds plain tensors, strings and numbers only, so `torch.load(path, weights_only=True)`
reads it; `model.safetensors` holds the same tensors with the metadata as strings. Both are written
to temporary names and renamed, so a checkpoint is either complete or absent.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from lab.errors import TrainError

META_KEYS = ("text", "num_classes", "in_chans", "res", "dataset", "mean", "std", "recipe", "run_id", "lab_version")


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_checkpoint(folder: str | Path, model: nn.Module, meta: dict) -> Path:
    """Write `folder/model.pt` and `folder/model.safetensors`; return the .pt path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta = {k: meta[k] for k in META_KEYS}
    pt = folder / "model.pt"
    _atomic(folder / "model.safetensors",
            lambda p: save_file(state, str(p), metadata={k: json.dumps(v) for k, v in meta.items()}))
    _atomic(pt, lambda p: torch.save({"state_dict": state, "meta": meta}, p))
    return pt


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """(state_dict, lab metadata or None) of a checkpoint file: a lab checkpoint (model.pt or
    model.safetensors, or their folder), or another PyTorch / safetensors state_dict (timm's; a
    'state_dict', 'model' or 'state_dict_ema' wrapper is unwrapped). TrainError if absent or unreadable."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise TrainError(f"checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as fh:
                raw = fh.metadata() or {}
                state = {k: fh.get_tensor(k) for k in fh.keys()}
            return state, ({k: json.loads(v) for k, v in raw.items()} if "text" in raw else None)
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a foreign or truncated file: say which, in one line
        raise TrainError(f"checkpoint {path} is not readable as a lab checkpoint or a state_dict "
                         f"({type(e).__name__}: {str(e)[:200]})") from None
    if isinstance(blob, dict) and isinstance(blob.get("meta"), dict) and "text" in blob["meta"]:
        return blob["state_dict"], blob["meta"]
    for wrapper in ("state_dict", "model", "state_dict_ema"):
        if isinstance(blob, dict) and isinstance(blob.get(wrapper), dict):
            blob = blob[wrapper]
            break
    if not isinstance(blob, dict) or not all(isinstance(v, torch.Tensor) for v in blob.values()):
        raise TrainError(f"checkpoint {path} holds no state_dict of tensors")
    return {k.removeprefix("module."): v for k, v in blob.items()}, None


def load_checkpoint(path: str | Path) -> tuple[nn.Module, dict]:
    """The model saved at `path` (a model.pt or model.safetensors, or their folder), in eval mode, and its metadata."""
    from lab.build import build
    from lab.grammar import parse

    state, meta = read_weights(path)
    if meta is None:
        raise TrainError(f"checkpoint {path} has no grammar text in its metadata: not a lab checkpoint")
    model = build(parse(meta["text"]), num_classes=meta["num_classes"], in_chans=meta["in_chans"])
    model.load_state_dict(state)
    return model.eval(), meta


def check_input(meta: dict, ds) -> int:
    """The frames per input of a checkpoint's model (1: images), after checking that dataset `ds`
    can feed it: the same input channels, and clips for a video model, images for an image one."""
    from lab.errors import DataError
    from lab.grammar import parse

    frames = parse(meta["text"]).frames
    if ds.in_chans != meta["in_chans"]:
        raise DataError(f"{ds.name} has {ds.in_chans} input channel(s); the checkpoint expects {meta['in_chans']}")
    if (frames > 1) != (ds.frames > 1):
        raise DataError(f"{ds.name} holds {'clips' if ds.frames > 1 else 'images'}, but the checkpoint is "
                        f"{'a video' if frames > 1 else 'an image'} model")
    return frames
