"""CIFAR-10/100 and ImageFolder data sets (Tiny-ImageNet, ImageNet) through torchvision.

Layouts under the data root: ``cifar-10-batches-py/`` and ``cifar-100-python/`` (the extracted torchvision archives;
its md5 checks apply); ``train/<class>/...`` and ``val/<class>/...`` for Tiny-ImageNet / ImageNet (the official
validation images, in class folders, are the test set). Training transforms, then ``Normalize`` with the data set's
mean / std: CIFAR ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip``; Tiny-ImageNet ``RandomCrop(64,
padding=8)`` + flip; ImageNet ``RandomResizedCrop(224)`` + flip. Eval: ImageNet ``Resize(256)`` + ``CenterCrop(224)``,
the others none; validation images (from the training files) always get it. Sources in
:data:`sparse_exp.registry.DATASETS`: :class:`CifarSource` (:class:`~sparse_exp.data.device_loader.DeviceImageLoader`
unless ``dataset.loader=torchvision``), :class:`ImageFolderSource` (:class:`~sparse_exp.data.loaders.TorchLoader`).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

import torch

from sparse_exp.data.device_loader import DeviceImageLoader
from sparse_exp.data.loaders import TorchLoader
from sparse_exp.data.spec import ENV_VAR, DataError, DataSource, DatasetSpec, Loader
from sparse_exp.registry import DATASETS

CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

Stats = Tuple[Tuple[float, ...], Tuple[float, ...]]


def with_transform(dataset: Any, transform: Any) -> Any:
    """A shallow copy of a torchvision data set that applies ``transform`` (shares the samples / arrays)."""
    other = copy.copy(dataset)
    other.transform = transform
    if hasattr(other, "transforms"):
        from torchvision.datasets.vision import StandardTransform

        other.transforms = StandardTransform(transform, getattr(other, "target_transform", None))
    return other


def _class_dirs(d: Path) -> List[Path]:
    try:
        return sorted(p for p in d.iterdir() if p.is_dir())
    except OSError:
        return []


class VisionSource(DataSource):
    """A data set read through torchvision, PIL images -> normalized float32 ``(C, H, W)``.

    Args:
        spec: the static facts.
        aliases: subfolders of a data root that may hold the data (besides the root itself).
        stats: per-channel ``(mean, std)`` of the ``Normalize`` transform.
        crop_padding: training crop ``RandomCrop(image_size, padding=crop_padding)``; None:
            ``RandomResizedCrop(image_size)`` and, for evaluation, ``Resize(image_size * 256 / 224)`` +
            ``CenterCrop(image_size)`` (ImageNet).
    """

    def __init__(self, spec: DatasetSpec, aliases: Sequence[str], stats: Stats,
                 crop_padding: Optional[int]) -> None:
        super().__init__(spec)
        self.aliases = tuple(aliases)
        self.stats = stats
        self.crop_padding = crop_padding

    def candidates(self, base: Path) -> Tuple[Path, ...]:
        return (base, *(base / a for a in self.aliases))

    def transforms(self, augment: bool) -> Tuple[Any, Any]:
        """``(train_transform, eval_transform)``: PIL image -> normalized float32 ``(C, H, W)`` tensor."""
        from torchvision import transforms as T

        size = self.spec.image_size
        if self.crop_padding is not None:
            train_aug = [T.RandomCrop(size, padding=self.crop_padding), T.RandomHorizontalFlip()]
            eval_pre: List[Any] = []
        else:
            eval_pre = [T.Resize(int(size * 256 / 224)), T.CenterCrop(size)]
            train_aug = [T.RandomResizedCrop(size), T.RandomHorizontalFlip()]
        post = [T.ToTensor(), T.Normalize(*self.stats)]
        eval_tf = T.Compose(eval_pre + post)
        train_tf = T.Compose(train_aug + post) if augment else eval_tf
        return train_tf, eval_tf

    def datasets(self, cfg: Any, root: Path, train_tf: Any, eval_tf: Any) -> Tuple[Any, Any, Any]:
        """``(train set with train_tf, train set with eval_tf, test set with eval_tf)``."""
        raise NotImplementedError

    def loaders(self, cfg: Any, sets: Tuple[Any, Any, Any], idx: Tuple[torch.Tensor, ...], seed: int,
                batch_size: int, eval_batch_size: int, device: torch.device) -> Tuple[Loader, Loader, Loader]:
        """Per-sample torchvision loaders (``dataset.num_workers`` worker processes)."""
        (train_ds, val_ds, test_ds), (train_idx, val_idx, test_idx) = sets, idx
        workers = int(cfg.num_workers)
        train = TorchLoader(train_ds, train_idx, batch_size, True, seed, workers, device)
        val = TorchLoader(val_ds, val_idx, eval_batch_size, False, seed, workers, device)
        test = TorchLoader(test_ds, test_idx, eval_batch_size, False, seed, workers, device)
        return train, val, test

    def build(self, cfg: Any, root: Path, seed: int, batch_size: int, eval_batch_size: int,
              device: Any) -> Tuple[Loader, Loader, Loader]:
        train_tf, eval_tf = self.transforms(bool(cfg.augment))
        sets = self.datasets(cfg, root, train_tf, eval_tf)
        idx = self.split(cfg, len(sets[0]), len(sets[2]))
        return self.loaders(cfg, sets, idx, seed, batch_size, eval_batch_size, device)


# -- CIFAR: torchvision's pickle layout (md5-checked), device-resident by default -------------------------

class CifarSource(VisionSource):
    """CIFAR-10 / CIFAR-100 through torchvision's ``CIFAR10`` / ``CIFAR100`` (``tv_class``)."""

    downloadable = True
    device_loader = True

    def __init__(self, spec: DatasetSpec, tv_class: str, aliases: Sequence[str]) -> None:
        super().__init__(spec, aliases, CIFAR_STATS[spec.name], crop_padding=4)
        self.tv_class = tv_class

    def cifar_class(self) -> Any:
        """torchvision's class (its ``base_folder``, ``url``, file lists).

        torchvision is imported here, not at module import: it pulls in ``torch._dynamo`` and costs
        about 2 s of start-up, which every command (``--help``, a refused config) would otherwise pay.
        """
        from torchvision import datasets

        return getattr(datasets, self.tv_class)

    def required_files(self) -> List[str]:
        """Paths, relative to the root, that torchvision's CIFAR class reads (cheap: names only, no md5)."""
        cls = self.cifar_class()
        files = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
        return [f"{cls.base_folder}/{f}" for f in files]

    def missing(self, root: Path) -> List[str]:
        return [f for f in self.required_files() if not (root / f).is_file()]

    def find(self, base: Path) -> Optional[Path]:
        return next((d for d in self.candidates(base) if not self.missing(d)), None)

    def missing_message(self, bases: List[Path], origin: str, download: bool = False) -> str:
        where = " or ".join(str(b) for b in bases) + ("" if origin == "default" else f" (from {origin})")
        cls = self.cifar_class()
        folder = cls.base_folder
        files = ", ".join(f.split("/", 1)[1] for f in self.required_files())
        return (f"{self.name} data not found in {where}: expected torchvision's layout <root>/{folder}/ ({files}) "
                f"as extracted from {cls.url}; set dataset.root or {ENV_VAR} to the directory "
                f"that contains {folder}, or pass dataset.download=true")

    def datasets(self, cfg: Any, root: Path, train_tf: Any, eval_tf: Any) -> Tuple[Any, Any, Any]:
        """Raises DataError: files missing or failing torchvision's md5 check, or the download failed."""
        cls = self.cifar_class()
        try:
            train = cls(str(root), train=True, transform=train_tf, download=bool(cfg.download))
            test = cls(str(root), train=False, transform=eval_tf, download=False)
        except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted..." (md5 mismatch)
            raise DataError(f"{self.name} data in {root / cls.base_folder} is incomplete or corrupted ({exc}); "
                            f"delete it and pass dataset.download=true, or extract {cls.url} into {root}") from exc
        except OSError as exc:  # network errors of the downloader (URLError is an OSError)
            raise DataError(f"could not download {self.name} into {root}: {exc}; download {cls.url} by hand and "
                            f"extract it into {root}") from exc
        return train, with_transform(train, eval_tf), test

    def loaders(self, cfg: Any, sets: Tuple[Any, Any, Any], idx: Tuple[torch.Tensor, ...], seed: int,
                batch_size: int, eval_batch_size: int, device: torch.device) -> Tuple[Loader, Loader, Loader]:
        """The splits as uint8 on ``device`` (:class:`DeviceImageLoader`) unless ``dataset.loader=torchvision``."""
        if cfg.loader == "torchvision":
            return super().loaders(cfg, sets, idx, seed, batch_size, eval_batch_size, device)
        (train_ds, _, test_ds), (train_idx, val_idx, test_idx) = sets, idx
        mean, std = self.stats
        augment = bool(cfg.augment)
        pad = self.crop_padding if augment else 0

        def on_device(ds: Any, idx: torch.Tensor, bs: int, shuffle: bool) -> DeviceImageLoader:
            x = torch.from_numpy(ds.data[idx.numpy()]).permute(0, 3, 1, 2).contiguous().to(device)
            y = torch.as_tensor(ds.targets, dtype=torch.long)[idx].to(device)
            return DeviceImageLoader(x, y, idx, bs, shuffle, seed, mean, std, pad=pad, flip=augment)

        return (on_device(train_ds, train_idx, batch_size, True), on_device(train_ds, val_idx, eval_batch_size, False),
                on_device(test_ds, test_idx, eval_batch_size, False))


# -- ImageFolder: <root>/train/<class>/..., <root>/val/<class>/... (cannot be downloaded) ------------------

class ImageFolderSource(VisionSource):
    """An ImageFolder data set (Tiny-ImageNet, ImageNet); ``pattern`` names its image files in messages and
    ``flat_val_hint`` adds the command that sorts the official flat ``val/`` into class subfolders."""

    def __init__(self, spec: DatasetSpec, aliases: Sequence[str], crop_padding: Optional[int], pattern: str,
                 flat_val_hint: bool = False) -> None:
        super().__init__(spec, aliases, IMAGENET_STATS, crop_padding)
        self.pattern = pattern
        self.flat_val_hint = flat_val_hint

    def find(self, base: Path) -> Optional[Path]:
        return next((d for d in self.candidates(base) if (d / "train").is_dir()), None)

    def layout_problem(self, root: Path) -> Optional[str]:
        """Why ``root`` is not a usable ImageFolder root (None when it looks fine)."""
        if not (root / "train").is_dir():
            return "no train/ folder"
        if not _class_dirs(root / "train"):
            return "train/ has no class subfolders"
        val = root / "val"
        if not val.is_dir():
            return "no val/ folder"
        if (val / "val_annotations.txt").exists() or (val / "images").is_dir():
            return "val/ is in the official flat layout (val/images + val_annotations.txt), not in class subfolders"
        if not _class_dirs(val):
            return "val/ has no class subfolders"
        return None

    def instructions(self, root: Path) -> str:
        """The how-to-fix tail of an error message (one line)."""
        ext = self.pattern
        text = (f"expected <root>/train/<class>/{ext} and <root>/val/<class>/{ext} (the official validation set, "
                "used as the test set)")
        if self.flat_val_hint:
            text += ("; the val folder must be in class-subfolder layout: for the official tiny-imagenet-200 download "
                     f"run `cd {root}/val && while read f c _; do mkdir -p $c && mv images/$f $c/; done < "
                     "val_annotations.txt && rmdir images && rm val_annotations.txt`")
        return (f"{text}; set dataset.root or SPARSE_EXP_DATA to that directory (torchvision cannot download "
                f"{self.name}, dataset.download=true does not help)")

    def missing_message(self, bases: List[Path], origin: str, download: bool = False) -> str:
        if download:
            return (f"{self.name} data not found in {' or '.join(map(str, bases))} and dataset.download=true "
                    f"cannot fetch it: {self.instructions(bases[0])}")
        where = " or ".join(str(b) for b in bases) + ("" if origin == "default" else f" (from {origin})")
        return f"{self.name} data not found in {where}: {self.instructions(bases[0])}"

    def problem(self, root: Path) -> Optional[str]:
        if self.find(root) is None:
            return None
        problem = self.layout_problem(root)
        return f"{self.name} data in {root} is not usable: {problem}; {self.instructions(root)}" if problem else None

    def datasets(self, cfg: Any, root: Path, train_tf: Any, eval_tf: Any) -> Tuple[Any, Any, Any]:
        """``(train/ with train_tf, train/ with eval_tf, val/ with eval_tf)`` as ImageFolders.

        The test set's labels use the training folder's class indices (sorted class folder names);
        ``val/`` may hold a subset of the training classes but no other class.

        Raises:
            DataError: bad layout, a class folder without images, more classes than the data set has,
                or validation classes absent from train/.
        """
        name, num_classes = self.name, self.spec.num_classes
        problem = self.layout_problem(root)
        if problem:
            raise DataError(f"{name} data in {root} is not usable: {problem}; {self.instructions(root)}")
        from torchvision import datasets

        try:
            train = datasets.ImageFolder(str(root / "train"), transform=train_tf)
            test = datasets.ImageFolder(str(root / "val"), transform=eval_tf)
        except (FileNotFoundError, ValueError) as exc:
            raise DataError(f"{name} data in {root} is not usable: {exc}; {self.instructions(root)}") from exc
        if len(train.classes) > num_classes:
            raise DataError(f"{name} data in {root / 'train'} has {len(train.classes)} class folders, more than the "
                            f"{num_classes} classes of {name}")
        unknown = sorted(set(test.classes) - set(train.classes))
        if unknown:
            raise DataError(f"{name} data in {root / 'val'} has class folders missing from train/: "
                            f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}")
        if test.class_to_idx != {c: train.class_to_idx[c] for c in test.classes}:
            remap = {test.class_to_idx[c]: train.class_to_idx[c] for c in test.classes}
            test.samples = [(p, remap[t]) for p, t in test.samples]
            test.imgs = test.samples
            test.targets = [t for _, t in test.samples]
            test.class_to_idx = {c: train.class_to_idx[c] for c in test.classes}
        return train, with_transform(train, eval_tf), test


for _source in (
    CifarSource(DatasetSpec("cifar10", in_channels=3, num_classes=10, image_size=32, default_val_size=5000,
                            train_size=50000, test_size=10000), "CIFAR10", ("cifar10", "cifar-10")),
    CifarSource(DatasetSpec("cifar100", in_channels=3, num_classes=100, image_size=32, default_val_size=5000,
                            train_size=50000, test_size=10000), "CIFAR100", ("cifar100", "cifar-100")),
    ImageFolderSource(DatasetSpec("tiny_imagenet", in_channels=3, num_classes=200, image_size=64,
                                  default_val_size=10000, train_size=100000, test_size=10000),
                      ("tiny_imagenet", "tiny-imagenet-200", "tiny-imagenet"), crop_padding=8, pattern="*",
                      flat_val_hint=True),
    ImageFolderSource(DatasetSpec("imagenet", in_channels=3, num_classes=1000, image_size=224, default_val_size=10000,
                                  train_size=1281167, test_size=50000), ("imagenet",), crop_padding=None,
                      pattern="*.JPEG"),
):
    DATASETS.add(_source.name, _source)
