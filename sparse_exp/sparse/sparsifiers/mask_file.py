"""``mask_file``: train from a mask saved by an earlier run or another framework ("any mask").

Accepted (``torch.load``-able): ``masks.pt`` of any run (:mod:`sparse_exp.run.run_dir`; e.g. a pruning-at-init
mask, an IMP ticket, the ultimate ticket of a Sup-tickets run); a plain ``{name: tensor}`` dict, or a checkpoint
holding one under ``"masks"`` or ``"state_dict"``, names optionally with a ``module.`` prefix (DataParallel) and
a ``_mask`` suffix (``torch.nn.utils.prune``); non-zero entries are kept. The mask is static and its sparsity
must match ``sparsity`` within 1e-3, so that results are filed under the right sparsity.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Tuple

import torch
from omegaconf import MISSING

from sparse_exp.config.errors import ConfigError
from sparse_exp.config.schema import SparsifierConfig
from sparse_exp.registry import SPARSIFIERS
from sparse_exp.run.run_dir import MASKS_FORMAT
from sparse_exp.sparse.flop_counts import Allocation
from sparse_exp.sparse.sparsifiers.sparsifier import Sparsifier, check_sparse_target


@dataclass
class MaskFileSparsifierConfig(SparsifierConfig):
    """``sparsifier=mask_file sparsifier.path=runs/<run>/masks.pt``: train a given mask."""

    name: str = "mask_file"
    path: str = MISSING


def _normalise(name: str) -> str:
    name = name[len("module."):] if name.startswith("module.") else name
    return name[: -len("_mask")] if name.endswith("_mask") else name


def load_mask_file(path: str | Path) -> Dict[str, torch.Tensor]:
    """Read masks as ``{parameter name: bool tensor}`` from any accepted format (see module doc).

    Raises:
        ConfigError: the file does not exist, is not a torch file, has another ``format`` than
            ``sparse_exp.masks/v1``, or holds no tensors.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError("sparsifier.path", str(path), "must be an existing mask file (e.g. runs/<run>/masks.pt)")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many kinds (EOFError, UnpicklingError, RuntimeError, ...)
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise ConfigError("sparsifier.path", str(path), f"is not a readable torch file ({type(exc).__name__}: "
                          f"{first})") from None
    if isinstance(obj, dict) and "format" in obj and obj["format"] != MASKS_FORMAT:
        raise ConfigError("sparsifier.path", str(path), f"has format {obj['format']!r}; this version reads "
                          f"{MASKS_FORMAT!r}")
    if isinstance(obj, dict) and "masks" in obj:
        obj = obj["masks"]
    elif isinstance(obj, dict) and "state_dict" in obj:
        obj = {k: v for k, v in obj["state_dict"].items() if k.endswith("_mask")}
    masks = {_normalise(k): v.bool() for k, v in obj.items() if torch.is_tensor(v)} if isinstance(obj, dict) else {}
    if not masks:
        raise ConfigError("sparsifier.path", str(path), "holds no mask tensors")
    return masks


def check_masks_fit(masks: Dict[str, torch.Tensor], shapes: Dict[str, Tuple[int, ...]], sparsity: float,
                    path: str) -> Dict[str, int]:
    """Refuse masks that do not fit a model: a layer missing, a shape differing, or another sparsity.

    Args:
        masks: from :func:`load_mask_file`; shapes: the model's prunable weight shapes;
        sparsity: the run's target (the file's must match within 1e-3); path: named in the errors.

    Returns:
        ones per layer of ``shapes``.

    Raises:
        ConfigError: naming ``sparsifier.path`` (or ``sparsity``) and what differs.
    """
    missing = [n for n in shapes if n not in masks]
    if missing:
        raise ConfigError("sparsifier.path", path, f"has no mask for {missing[:3]}{'...' if len(missing) > 3 else ''}"
                          " of this model (a mask of another model?)")
    for n, shape in shapes.items():
        if tuple(masks[n].shape) != tuple(shape):
            raise ConfigError("sparsifier.path", path,
                              f"mask {n} has shape {tuple(masks[n].shape)}, the model has {tuple(shape)}")
    counts = {n: int(masks[n].count_nonzero()) for n in shapes}
    found = 1 - sum(counts.values()) / sum(math.prod(s) for s in shapes.values())
    if abs(found - sparsity) > 1e-3:
        raise ConfigError("sparsity", sparsity, f"must match the mask file's sparsity {found:.4f} ({path})")
    return counts


def preflight_mask_file(plan: Any) -> None:
    """The file loads, has the documented format and fits the run's model and sparsity."""
    path = str(plan.cfg.sparsifier.path)
    check_masks_fit(load_mask_file(path), plan.shapes, float(plan.cfg.sparsity), path)


@SPARSIFIERS.register("mask_file", schema=MaskFileSparsifierConfig, checks=(check_sparse_target,),
                      preflight=(preflight_mask_file,))
class MaskFileSparsifier(Sparsifier):
    """Static training from a mask file (``cfg.path``)."""

    name = "mask_file"
    nm_refusal = "the file's mask is trained as it is; its layout is the file's, not the distribution's"

    @classmethod
    def flop_allocation(cls, cfg: Any, distribution: str, shapes: Dict[str, Tuple[int, ...]]) -> Allocation:
        """The layer densities of the mask file (``cfg.path``), for every layer of ``shapes``.

        Raises:
            ConfigError: the file is not readable or has no mask for some layer.
        """
        masks = load_mask_file(cfg.path)
        missing = [n for n in shapes if n not in masks]
        if missing:
            raise ConfigError("sparsifier.path", str(cfg.path), f"has no mask for layers {missing[:5]}")
        return Allocation(distribution, layers={n: float(masks[n].float().mean()) for n in shapes})

    def init_masks(self) -> None:
        m = self.ctx.masking
        masks = load_mask_file(self.cfg.path)
        counts = check_masks_fit(masks, {n: tuple(m.shapes[n]) for n in m.names}, self.ctx.sparsity, str(self.cfg.path))
        m.set_masks_({n: masks[n] for n in m.names})
        m.target_counts = counts
        m.apply_(self.ctx.optimizer)
