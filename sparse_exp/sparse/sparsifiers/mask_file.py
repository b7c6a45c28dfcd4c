"""``mask_file``: train from a mask saved by an earlier run or another framework ("any mask").

Accepted files (``torch.load``-able):

* ours -- ``masks.pt`` of any run: ``{"format": "sparse_exp.masks/v1", "masks": {name: bool tensor}}``
  (see :mod:`sparse_exp.rundir`), e.g. from ``sparsifier=snip`` / ``grasp`` / ``synflow`` /
  ``random`` / ``lth`` or the ultimate ticket of a Sup-tickets run;
* a plain ``{name: tensor}`` dict, or a checkpoint holding one under ``"masks"`` or
  ``"state_dict"`` -- names may carry a ``module.`` prefix (DataParallel) and ``_mask`` suffix
  (``torch.nn.utils.prune`` buffers, ``conv1.weight_mask``); non-zero entries are kept.

The mask fixes the topology (static training). Its sparsity must match ``sparsity`` (within
1e-3), so that results are filed under the right sparsity.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Tuple

import torch
from omegaconf import MISSING

from sparse_exp.config import SparsifierConfig
from sparse_exp.errors import ConfigError
from sparse_exp.registries import SPARSIFIERS
from sparse_exp.sparse.flops import Allocation
from sparse_exp.sparse.sparsifiers.base import Sparsifier, check_sparse_target


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
        ConfigError: the file does not exist or holds no tensors.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError("sparsifier.path", str(path), "must be an existing mask file (e.g. runs/<run>/masks.pt)")
    obj = torch.load(p, map_location="cpu", weights_only=False)
    if isinstance(obj, dict) and "masks" in obj:
        obj = obj["masks"]
    elif isinstance(obj, dict) and "state_dict" in obj:
        obj = {k: v for k, v in obj["state_dict"].items() if k.endswith("_mask")}
    masks = {_normalise(k): v.bool() for k, v in obj.items() if torch.is_tensor(v)} if isinstance(obj, dict) else {}
    if not masks:
        raise ConfigError("sparsifier.path", str(path), "holds no mask tensors")
    return masks


@SPARSIFIERS.register("mask_file", schema=MaskFileSparsifierConfig, checks=(check_sparse_target,))
class MaskFileSparsifier(Sparsifier):
    """Static training from a mask file (``cfg.path``)."""

    name = "mask_file"

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
        missing = [n for n in m.names if n not in masks]
        if missing:
            raise ConfigError("sparsifier.path", self.cfg.path,
                              f"has no mask for {missing[:3]}{'...' if len(missing) > 3 else ''} of this model")
        for n in m.names:
            if tuple(masks[n].shape) != tuple(m.shapes[n]):
                raise ConfigError("sparsifier.path", self.cfg.path,
                                  f"mask {n} has shape {tuple(masks[n].shape)}, the model has {tuple(m.shapes[n])}")
        counts = {n: int(masks[n].count_nonzero()) for n in m.names}
        sparsity = 1 - sum(counts.values()) / m.total
        if abs(sparsity - self.ctx.sparsity) > 1e-3:
            raise ConfigError("sparsity", self.ctx.sparsity, f"must match the mask file's sparsity {sparsity:.4f}")
        m.set_masks_({n: masks[n] for n in m.names})
        m.target_counts = counts
        m.apply_(self.ctx.optimizer)
