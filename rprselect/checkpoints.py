"""Models and weights for the command line: ``package.module:factory``, MONAI bundles, and
state dicts loaded with ``torch.load(..., weights_only=True)`` only, unwrapped from the
``module.``/``model.`` prefixes of DataParallel, DDP, ``torch.compile`` and Lightning.
"""

from __future__ import annotations

import importlib
import pickle
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = [
    "CheckpointError",
    "load_weights",
    "unwrap_state_dict",
    "load_model",
    "load_bundle",
]


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded safely (``torch.load(..., weights_only=True)``)."""


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``path`` with ``torch.load(..., weights_only=True)``, never unsafely.

    Accepts a bare state dict or a dict holding one under ``"state_dict"`` or ``"model"``.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: the file holds Python objects beyond tensors and containers (unsafe
            loading is not attempted), is corrupt, or holds no state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"cannot read checkpoint {path}: the file is empty (0 bytes)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        m = re.search(r"WeightsUnpickler error: (.*)", str(err))
        why = m.group(1) if m else _first_line(err)
        why = why.split(" was not an allowed")[0].split(". Please")[0]
        raise CheckpointError(
            f"cannot load {path} with torch.load(weights_only=True): it holds Python objects "
            f"beyond tensors ({why}); unsafe loading is not attempted. Re-save it with "
            "torch.save(model.state_dict(), path)"
        ) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {_first_line(err)}") from err
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"checkpoint {path} must hold a state dict (name -> tensor), got {type(obj).__name__}"
        )
    return obj


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def unwrap_state_dict(
    state: dict[str, torch.Tensor], expected: Sequence[str]
) -> tuple[dict[str, torch.Tensor], str]:
    """The entries of ``state`` that fit a model with the parameter names ``expected``.

    Checkpoints of wrapped models prefix every name: ``module.`` (``DataParallel``, DDP),
    ``_orig_mod.`` (``torch.compile``), or the attribute the network had in a Lightning module
    (``model.``, ``net.``, ..., next to entries of other submodules such as a loss). When the
    names do not match as they are, the entries under one prefix (or two nested ones) whose
    names, stripped, are exactly ``expected`` are taken.

    Returns:
        The state dict to load and the prefix stripped (``""`` when none was).
    """
    want = set(expected)

    def search(
        st: dict[str, torch.Tensor], prefix: str, depth: int
    ) -> tuple[dict[str, torch.Tensor], str] | None:
        if set(st) == want:
            return st, prefix
        if depth == 0:
            return None
        for head in sorted({k.split(".", 1)[0] + "." for k in st if "." in k}):
            sub = {k[len(head) :]: v for k, v in st.items() if k.startswith(head)}
            hit = search(sub, prefix + head, depth - 1)
            if hit is not None:
                return hit
        return None

    return search(state, "", 2) or (state, "")


def _apply_weights(model: nn.Module, path: str | Path) -> None:
    state, prefix = unwrap_state_dict(load_weights(path), list(model.state_dict()))
    if prefix:
        print(f"rprselect: weights: took the entries under {prefix!r} of {path}", file=sys.stderr)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:  # missing/unexpected keys, shape mismatch
        raise CheckpointError(
            f"weights {path} do not fit the model: {' '.join(str(err).split())[:500]}"
        ) from err


def load_model(spec: str, weights: str | Path | None = None) -> nn.Module:
    """Build a model from ``"package.module:factory"`` (called without arguments).

    Raises:
        ValueError: a malformed spec; ImportError: the module cannot be imported;
        TypeError: the factory does not return an ``nn.Module``; CheckpointError: bad weights.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--model must look like package.module:factory, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ImportError(f"--model {spec!r}: cannot import {module_name}: {err}") from err
    factory: Any = module
    for part in attr.split("."):
        if not hasattr(factory, part):
            raise ValueError(f"--model {spec!r}: module {module_name} has no attribute {attr!r}")
        factory = getattr(factory, part)
    model = factory() if callable(factory) and not isinstance(factory, nn.Module) else factory
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"--model {spec!r} must return a torch.nn.Module, got {type(model).__name__}"
        )
    if weights is not None:
        _apply_weights(model, weights)
    return model


def load_bundle(folder: str | Path) -> nn.Module:
    """The network of a MONAI bundle: ``configs/inference.json``'s ``network_def`` with the
    weights of ``models/model.pt`` (loaded with ``weights_only=True``).

    Raises:
        ImportError: MONAI is missing (``pip install 'rprselect[monai]'``).
        FileNotFoundError: the bundle lacks its config or its weights.
    """
    root = Path(folder)
    configs = [root / "configs" / f"inference.{ext}" for ext in ("json", "yaml", "yml")]
    config = next((c for c in configs if c.is_file()), None)
    if config is None:
        raise FileNotFoundError(f"bundle {root} has no configs/inference.json")
    weights = root / "models" / "model.pt"
    if not weights.is_file():
        raise FileNotFoundError(f"bundle {root} has no models/model.pt")
    try:
        from monai.bundle import ConfigParser
    except ImportError as err:
        raise ImportError("--bundle needs MONAI: pip install 'rprselect[monai]'") from err
    parser = ConfigParser()
    parser.read_config(str(config))
    if "bundle_root" not in parser.config:  # type: ignore[operator]
        parser["bundle_root"] = str(root)
    if "network_def" not in parser.config:  # type: ignore[operator]
        raise ValueError(f"bundle config {config} has no 'network_def'")
    model = parser.get_parsed_content("network_def")
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"network_def of {config} must build a torch.nn.Module, got {type(model).__name__}"
        )
    _apply_weights(model, weights)
    return model
