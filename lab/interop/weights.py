"""Reading a checkpoint file's weights: lab's own (model.pt / model.safetensors with their metadata)
or another library's PyTorch / safetensors state_dict (timm's). The lower layer that both
`lab.interop.timm` (pretrained starts) and `lab.train.checkpoint` (loading a lab model) read through."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open

from lab.errors import TrainError


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
