"""Data sets made by a callable: ``dataset=external`` (the user's ``dataset.target``) and plugin data sets.

    python -m sparse_exp.train dataset=external dataset.target=mypkg.data.make 'dataset.kwargs={n:1000}'

Contract (docs/plugins.md): the callable returns an :class:`ExternalData` (or a mapping with its keys): ``train`` and
``test``, map-style ``torch.utils.data.Dataset`` s whose item ``i`` is ``(x, y)``, ``x`` a float tensor of shape
``input_shape = (C, H, W)`` (``H == W``, already normalised), ``y`` an int label in ``[0, num_classes)``; optionally
``train_eval``, the training pool as validation should see it (without augmentation; default ``train``). It is
called once per process and configuration (pre-flight and build share the result). ``dataset.val_size`` images are
held out of ``train`` for validation, ``subset_*`` apply, and batches come from
:class:`~sparse_exp.data.loaders.TorchLoader` (the same seeding, sharding and resume as the torchvision data sets;
random transforms inside the data set draw from the global torch RNG, seeded per sample there).
"""

from __future__ import annotations

import json
import numbers
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch
from torch.utils.data import Dataset

from sparse_exp.config.errors import ConfigError
from sparse_exp.config.schema import DatasetConfig
from sparse_exp.config.targets import call_target, check_kwargs, resolve_target
from sparse_exp.data.loaders import TorchLoader
from sparse_exp.data.spec import DatasetSpec, DataSource, Loader
from sparse_exp.registry import DATASETS

EXAMPLE = "mypkg.data.make"


@dataclass
class ExternalData:
    """What a data set callable returns (module doc).

    Attributes:
        train: the training pool (``dataset.val_size`` of it are held out for validation), items ``(x, y)``.
        test: the test split, items ``(x, y)``.
        num_classes: labels are in ``[0, num_classes)``.
        input_shape: ``(C, H, W)`` of every ``x``, ``H == W``.
        train_eval: the training pool with evaluation transforms (same length and order as ``train``), for the
            validation images; None: ``train`` itself.
    """

    train: Dataset
    test: Dataset
    num_classes: int
    input_shape: Tuple[int, int, int]
    train_eval: Optional[Dataset] = None


def _sized(value: Any) -> bool:
    return isinstance(value, Dataset) and hasattr(value, "__len__") and hasattr(value, "__getitem__")


def as_external_data(result: Any, key: str, value: Any) -> ExternalData:
    """Check a data set callable's ``result`` against the contract (module doc), reading one sample of ``train``.

    Raises:
        ConfigError: ``key=value`` (the configured callable) and what its result lacks.
    """
    expected = "expected sparse_exp.data.ExternalData(train, test, num_classes, input_shape=(C, H, W))"
    if isinstance(result, Mapping):
        names = {f.name for f in fields(ExternalData)}
        unknown = sorted(set(result) - names)
        if unknown:
            raise ConfigError(key, value, f"returned a mapping with unknown keys {unknown}; {expected}")
        try:
            result = ExternalData(**result)
        except TypeError as exc:
            raise ConfigError(key, value, f"returned a mapping that lacks keys ({exc}); {expected}") from None
    if not isinstance(result, ExternalData):
        raise ConfigError(key, value, f"returned a {type(result).__name__}; {expected}")
    for part in ("train", "test") + (("train_eval",) if result.train_eval is not None else ()):
        ds = getattr(result, part)
        if not _sized(ds):
            raise ConfigError(key, value, f"returned {part}={type(ds).__name__}; expected a map-style "
                              "torch.utils.data.Dataset with __len__ and __getitem__")
    n = result.num_classes
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 2:
        raise ConfigError(key, value, f"returned num_classes={n!r}; expected an integer >= 2")
    shape = tuple(result.input_shape) if isinstance(result.input_shape, (tuple, list, torch.Size)) else None
    if (shape is None or len(shape) != 3 or any(isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 1
                                                for d in shape) or shape[1] != shape[2]):
        raise ConfigError(key, value, f"returned input_shape={result.input_shape!r}; expected (C, H, W) of positive "
                          "integers with H == W (the models take one image_size)")
    if len(result.train) < 1 or len(result.test) < 1:
        raise ConfigError(key, value, f"returned {len(result.train)} training and {len(result.test)} test items; "
                          "each split needs at least one")
    if result.train_eval is not None and len(result.train_eval) != len(result.train):
        raise ConfigError(key, value, f"returned train_eval of {len(result.train_eval)} items for a train of "
                          f"{len(result.train)}; expected the same pool")
    try:
        x, y = result.train[0]
        y = int(y)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ConfigError(key, value, f"returned a train set whose item 0 is not an (x, y) pair with an int label "
                          f"({type(exc).__name__}: {' '.join(str(exc).split())})") from None
    if not isinstance(x, torch.Tensor) or tuple(x.shape) != shape or not x.is_floating_point():
        got = f"{x.dtype} of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ConfigError(key, value, f"returned a train set whose item 0 holds x = {got}; expected a float tensor "
                          f"of input_shape {shape}")
    if not 0 <= y < n:
        raise ConfigError(key, value, f"returned a train set whose item 0 has label {y}; expected one in [0, {n})")
    result.input_shape = (int(shape[0]), int(shape[1]), int(shape[2]))
    result.num_classes = int(n)
    return result


class FactorySource(DataSource):
    """A data set made by a callable: ``factory(**own)`` -> :class:`ExternalData`, ``own`` being the ``dataset``
    node's keys beyond :class:`~sparse_exp.config.schema.DatasetConfig`'s (those of the schema the source is
    registered with). A plugin registers one: ``DATASETS.add("blobs", FactorySource("blobs", make_blobs),
    schema=BlobsConfig)``. Its :attr:`spec` is a placeholder (sizes 0): the facts come from :meth:`spec_for`.
    Nothing is read from disk (``dataset.root`` is unused); ``dataset.augment`` is the callable's business.
    """

    def __init__(self, name: str, factory: Callable[..., Any]) -> None:
        super().__init__(DatasetSpec(name, in_channels=0, num_classes=0, image_size=0, default_val_size=0))
        self.factory = factory
        self._made: Dict[str, ExternalData] = {}

    def own_keys(self, cfg: Any) -> Dict[str, Any]:
        """The node's keys beyond ``DatasetConfig``'s, as plain data."""
        from omegaconf import OmegaConf

        base = {f.name for f in fields(DatasetConfig)}
        plain = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)
        return {k: v for k, v in plain.items() if k not in base}

    def origin(self, cfg: Any) -> Tuple[str, Any]:
        """``(key, value)`` a refusal names: the data set itself."""
        return "dataset", self.name

    def make(self, cfg: Any) -> ExternalData:
        """The checked result of the callable for ``cfg`` (made once per process and configuration)."""
        own = self.own_keys(cfg)
        key = json.dumps(own, sort_keys=True, default=repr)
        if key not in self._made:
            self._made[key] = as_external_data(self.call(own), *self.origin(cfg))
        return self._made[key]

    def call(self, own: Dict[str, Any]) -> Any:
        """``factory(**own)``; a failure is a ConfigError naming the data set."""
        try:
            return self.factory(**own)
        except ConfigError:
            raise
        except Exception as exc:  # noqa: BLE001 -- whatever the plugin raises is one line naming the data set
            raise ConfigError("dataset", self.name, f"its data set callable failed ({type(exc).__name__}: "
                              f"{' '.join(str(exc).split())})") from None

    def spec_for(self, cfg: Any) -> DatasetSpec:
        data = self.make(cfg)
        c, h, _ = data.input_shape
        return DatasetSpec(self.name, in_channels=c, num_classes=data.num_classes, image_size=h,
                           default_val_size=int(cfg.val_size), train_size=len(data.train), test_size=len(data.test))

    def find(self, base: Path) -> Optional[Path]:
        return base  # nothing on disk: the callable makes the data

    def missing_message(self, bases: List[Path], origin: str, download: bool = False) -> str:
        return f"{self.name} is made by a callable and needs no files"

    def build(self, cfg: Any, root: Path, seed: int, batch_size: int, eval_batch_size: int,
              device: Any) -> Tuple[Loader, Loader, Loader]:
        data = self.make(cfg)
        train_idx, val_idx, test_idx = self.split(cfg, len(data.train), len(data.test))
        workers, device = int(cfg.num_workers), torch.device(device)
        pool_eval = data.train_eval if data.train_eval is not None else data.train
        return (TorchLoader(data.train, train_idx, batch_size, True, seed, workers, device),
                TorchLoader(pool_eval, val_idx, eval_batch_size, False, seed, workers, device),
                TorchLoader(data.test, test_idx, eval_batch_size, False, seed, workers, device))


@dataclass
class ExternalDatasetConfig(DatasetConfig):
    """``dataset=external``: ``target``, the dotted path of a callable returning :class:`ExternalData`; ``kwargs``,
    its keyword arguments, a mapping or null (typed ``Any``: ``dataset.kwargs={...}`` replaces it)."""

    name: str = "external"
    target: Optional[str] = None
    kwargs: Any = None


class ExternalSource(FactorySource):
    """``dataset=external``: the callable is ``dataset.target``, called with ``dataset.kwargs``."""

    def __init__(self) -> None:
        super().__init__("external", self._call_target)

    @staticmethod
    def _call_target(target: Optional[str] = None, kwargs: Optional[Dict[str, Any]] = None) -> Any:
        resolve_target("dataset.target", target, EXAMPLE)
        return call_target("dataset.target", str(target), dict(kwargs or {}), "dataset.kwargs")

    def origin(self, cfg: Any) -> Tuple[str, Any]:
        return "dataset.target", cfg.target


def check_external_dataset(cfg: Any) -> None:
    """``dataset.target`` is set, importable and callable (the pre-flight checks what it returns); ``dataset.kwargs``
    is a mapping."""
    resolve_target("dataset.target", cfg.dataset.target, EXAMPLE)
    check_kwargs("dataset.kwargs", cfg.dataset.kwargs, "{n:1000}")


DATASETS.add("external", ExternalSource(), schema=ExternalDatasetConfig, checks=(check_external_dataset,))
