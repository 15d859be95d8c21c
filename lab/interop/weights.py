"""Reading a checkpoint file's weights: lab's own (model.pt / model.safetensors with their metadata)
or another library's PyTorch / safetensors state_dict (timm's). The lower layer that both
`lab.interop.timm` (pretrained starts) and `lab.train.checkpoint` (loading a lab model) read through.

A lab checkpoint's metadata is checked here, before anything is built from it (`check_meta`): every
loader (`lab probe`, `lab transfer`, `lab train --init` / `--distill-from`) reads through
`read_weights`, so a hostile or damaged file is one TrainError naming the file and the field.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from lab.cost import totals
from lab.errors import TrainError, first_line
from lab.grammar import Spec, parse

MAX_TEXT = 64 * 1024  # characters of grammar text: the catalog's largest points use well under 1 KB
# field -> (lowest, highest): sane ranges for what a checkpoint's model is built with
META_INTS = {"num_classes": (1, 100_000), "in_chans": (1, 1024), "res": (1, 8192)}
REQUIRED = ("text", "num_classes", "in_chans", "res")   # what load_checkpoint builds from
META_STRINGS = ("dataset", "recipe", "run_id", "lab_version")   # optional, informational


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """`model`'s state dict as contiguous CPU tensors, the form every weights file holds."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


def write_safetensors(path: str | Path, state: dict[str, torch.Tensor], meta: dict) -> None:
    """A safetensors file at `path` holding `state`, with `meta` as its metadata (each value JSON, the form
    `read_weights` reads back). Not atomic by itself: callers write through lab.files.atomic_write."""
    save_file(state, str(path), metadata={k: json.dumps(v) for k, v in meta.items()})


def read_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """(state_dict, lab metadata or None) of a checkpoint file: a lab checkpoint (model.pt or
    model.safetensors, or their folder), or another PyTorch / safetensors state_dict (timm's; a
    'state_dict', 'model' or 'state_dict_ema' wrapper is unwrapped). A lab checkpoint's metadata is
    checked (check_meta). TrainError if absent, unreadable, refused or inconsistent."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise TrainError(f"checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        state, meta = _read_safetensors(path)
    else:
        state, meta = _read_torch(path)
    if meta is not None:
        check_meta(path, meta, state)
    return state, meta


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = fh.metadata() or {}
            state = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as e:  # a foreign or truncated file: say which, in one line
        raise _unreadable(path, e) from None
    if "text" not in raw:
        return state, None
    meta = {}
    for key, value in raw.items():
        if len(value) > 4 * MAX_TEXT:   # before decoding: a huge string is refused, not parsed
            raise TrainError(f"checkpoint {path}: metadata field {key!r} is {len(value)} characters long "
                             f"(at most {MAX_TEXT})")
        try:
            meta[key] = json.loads(value)
        except ValueError:
            raise TrainError(f"checkpoint {path}: metadata field {key!r} is not JSON") from None
    return state, meta


def _read_torch(path: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:   # the weights-only unpickler refused something
        raise _refused(path, e) from None
    except Exception as e:  # a foreign or truncated file: say which, in one line
        raise _unreadable(path, e) from None
    if isinstance(blob, dict) and isinstance(blob.get("meta"), dict) and "text" in blob["meta"]:
        state = blob.get("state_dict")
        if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                  for k, v in state.items()):
            raise TrainError(f"checkpoint {path}: field 'state_dict' is not a mapping of names to tensors")
        return state, blob["meta"]
    for wrapper in ("state_dict", "model", "state_dict_ema"):
        if isinstance(blob, dict) and isinstance(blob.get(wrapper), dict):
            blob = blob[wrapper]
            break
    if not isinstance(blob, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                             for k, v in blob.items()):
        raise TrainError(f"checkpoint {path} holds no state_dict of tensors")
    return {k.removeprefix("module."): v for k, v in blob.items()}, None


_CODE_OPCODES = {ord("i"), ord("o")}   # INST, OBJ: build an object of a named class


def _refused(path: Path, e: Exception) -> TrainError:
    """The weights-only unpickler's refusal, in the lab's words. A pickle that names a function or
    class (code) is refused as such; anything else it cannot read is unreadable. torch's own
    advice, to load with weights_only=False, would run whatever code the file carries: it is never
    passed on."""
    text = str(e)
    named = re.search(r"GLOBAL ([\w.]+)", text)
    opcode = re.search(r"Unsupported operand (\d+)", text)
    if named or (opcode and int(opcode.group(1)) in _CODE_OPCODES):
        what = f"it names {named.group(1)}" if named else "it builds objects of named classes"
        return TrainError(f"checkpoint {path} is refused: a pickle with code or objects other than tensors, "
                          f"numbers and strings ({what}); the lab loads only its own checkpoints and plain "
                          "state_dicts or .safetensors files")
    why = f"unsupported pickle opcode {opcode.group(1)}" if opcode else "not a pickle of tensors"
    return TrainError(f"checkpoint {path} is not readable as a lab checkpoint or a state_dict (UnpicklingError: {why})")


def _unreadable(path: Path, e: Exception) -> TrainError:
    first = first_line(e)
    if "weights_only" in first:  # never pass on torch's advice to load unsafely
        first = "not a weights-only checkpoint"
    return TrainError(f"checkpoint {path} is not readable as a lab checkpoint or a state_dict "
                      f"({type(e).__name__}: {first[:200]})")


def check_meta(path: str | Path, meta: dict, state: dict[str, torch.Tensor]) -> Spec:
    """The Spec of a lab checkpoint's metadata, after checking, before anything is built: the
    required fields are present, the text is bounded and parses, the integers are in range, the
    resolution is the text's, and the model the text describes has no more parameters than the
    file holds tensor elements (the cost model counts them without building it: a hostile text
    cannot allocate a huge model). TrainError naming the file and the field otherwise. That the
    keys and shapes match the built model is `lab.train.checkpoint.load_checkpoint`'s check."""
    where = f"checkpoint {path}: metadata"
    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise TrainError(f"{where} lacks field {missing[0]!r} (a lab checkpoint has {', '.join(REQUIRED)})")
    text = meta["text"]
    if not isinstance(text, str):
        raise TrainError(f"{where} field 'text' is a {type(text).__name__}, not grammar text")
    if len(text) > MAX_TEXT:
        raise TrainError(f"{where} field 'text' is {len(text)} characters long (at most {MAX_TEXT})")
    for key, (lo, hi) in META_INTS.items():
        value = meta[key]
        if type(value) is not int or not lo <= value <= hi:
            raise TrainError(f"{where} field {key!r} is {_short(value)}: expected an integer in [{lo}, {hi}]")
    for key in META_STRINGS:
        if meta.get(key) is not None and not isinstance(meta[key], str):
            raise TrainError(f"{where} field {key!r} is a {type(meta[key]).__name__}, not a string")
    for key in ("mean", "std"):
        value = meta.get(key)
        if value is not None and not (isinstance(value, list) and len(value) <= META_INTS["in_chans"][1]
                                      and all(type(v) in (int, float) for v in value)):
            raise TrainError(f"{where} field {key!r} is not a list of numbers")
    try:
        spec = parse(text)
    except Exception as e:  # SpecError, or anything a hostile text provokes: one line
        raise TrainError(f"{where} field 'text' is not valid grammar text ({_short(str(e))})") from None
    if spec.res != meta["res"]:
        raise TrainError(f"{where} field 'res' is {meta['res']}, but its text is at @{spec.res}")
    try:
        params = totals(spec, meta["num_classes"], meta["in_chans"]).params
    except Exception as e:
        raise TrainError(f"{where} field 'text' describes no model the lab can build ({_short(str(e))})") from None
    held = sum(t.numel() for t in state.values())   # parameters and buffers
    if params > held:
        raise TrainError(f"{where} fields 'text', 'num_classes', 'in_chans' describe a model of {params:,} "
                         f"parameters, but the file holds {held:,} tensor elements")
    return spec


def _short(value: object, limit: int = 80) -> str:
    text = repr(value) if not isinstance(value, str) else value
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."
