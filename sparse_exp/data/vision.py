"""CIFAR-10/100 and ImageFolder data sets (Tiny-ImageNet, ImageNet) through torchvision.

Layouts (``root`` = the resolved data directory):

* ``cifar10``: ``root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``, i.e. the
  extracted ``cifar-10-python.tar.gz`` (torchvision's ``CIFAR10`` layout; its md5 checks apply).
* ``cifar100``: ``root/cifar-100-python/{train, test, meta}`` (torchvision's ``CIFAR100``).
* ``tiny_imagenet`` / ``imagenet``: ``root/train/<class>/...`` and ``root/val/<class>/...``; the
  official validation images, sorted into class subfolders, are the test set.

Transforms (per-channel ``Normalize`` with the data set's mean / std last):

* CIFAR train (``augment``): ``RandomCrop(32, padding=4)`` + ``RandomHorizontalFlip``; eval: none.
* Tiny-ImageNet train: ``RandomCrop(64, padding=8)`` + flip; eval: none.
* ImageNet train: ``RandomResizedCrop(224)`` + flip; eval: ``Resize(256)`` + ``CenterCrop(224)``.

Validation images come from the training files but always get the EVAL transform: they are read
through a shallow copy of the training data set object whose transform is replaced.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, List, Optional, Tuple

from sparse_exp.data.spec import DataError

CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}
IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

#: the CIFAR data sets, by config name (``dataset.name``)
CIFAR_NAMES = ("cifar10", "cifar100")


def cifar_class(name: str) -> Any:
    """torchvision's class for CIFAR data set ``name`` (its ``base_folder``, ``url``, file lists).

    torchvision is imported here, not at module import: it pulls in ``torch._dynamo`` and costs
    about 2 s of start-up, which every command (``--help``, a refused config) would otherwise pay.

    Raises:
        KeyError: ``name`` is not in :data:`CIFAR_NAMES`.
    """
    from torchvision import datasets

    return {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}[name]


# -- layout checks (cheap: names only, no md5, no decoding) -----------------------------------------

def cifar_required_files(name: str) -> List[str]:
    """Paths, relative to the root, that torchvision's CIFAR class reads."""
    cls = cifar_class(name)
    files = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
    return [f"{cls.base_folder}/{f}" for f in files]


def cifar_missing(name: str, root: Path) -> List[str]:
    return [f for f in cifar_required_files(name) if not (root / f).is_file()]


def _class_dirs(d: Path) -> List[Path]:
    try:
        return sorted(p for p in d.iterdir() if p.is_dir())
    except OSError:
        return []


def imagefolder_problem(name: str, root: Path) -> Optional[str]:
    """Why ``root`` is not a usable ImageFolder root for ``name`` (None when it looks fine)."""
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


def imagefolder_instructions(name: str, root: Path) -> str:
    """The how-to-fix tail of an ImageFolder error message (one line)."""
    ext = "*.JPEG" if name == "imagenet" else "*"
    text = (f"expected <root>/train/<class>/{ext} and <root>/val/<class>/{ext} (the official validation set, "
            "used as the test set)")
    if name == "tiny_imagenet":
        text += ("; the val folder must be in class-subfolder layout: for the official tiny-imagenet-200 download run "
                 f"`cd {root}/val && while read f c _; do mkdir -p $c && mv images/$f $c/; done < val_annotations.txt "
                 "&& rmdir images && rm val_annotations.txt`")
    return (f"{text}; set dataset.root or SPARSE_EXP_DATA to that directory (torchvision cannot download {name}, "
            "dataset.download=true does not help)")


# -- transforms --------------------------------------------------------------------------------------

def transforms_for(name: str, augment: bool, image_size: int) -> Tuple[Any, Any]:
    """``(train_transform, eval_transform)``: PIL image -> normalized float32 ``(C, H, W)`` tensor."""
    from torchvision import transforms as T

    if name in CIFAR_STATS:
        mean, std = CIFAR_STATS[name]
        train_aug = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()]
        eval_pre: List[Any] = []
    elif name == "tiny_imagenet":
        mean, std = IMAGENET_STATS
        train_aug = [T.RandomCrop(image_size, padding=8), T.RandomHorizontalFlip()]
        eval_pre = []
    elif name == "imagenet":
        mean, std = IMAGENET_STATS
        eval_pre = [T.Resize(int(image_size * 256 / 224)), T.CenterCrop(image_size)]
        train_aug = [T.RandomResizedCrop(image_size), T.RandomHorizontalFlip()]
    else:
        raise KeyError(name)
    post = [T.ToTensor(), T.Normalize(mean, std)]
    eval_tf = T.Compose(eval_pre + post)
    train_tf = T.Compose(train_aug + post) if augment else eval_tf
    return train_tf, eval_tf


def with_transform(dataset: Any, transform: Any) -> Any:
    """A shallow copy of a torchvision data set that applies ``transform`` (shares the samples / arrays)."""
    other = copy.copy(dataset)
    other.transform = transform
    if hasattr(other, "transforms"):
        from torchvision.datasets.vision import StandardTransform

        other.transforms = StandardTransform(transform, getattr(other, "target_transform", None))
    return other


# -- construction ------------------------------------------------------------------------------------

def build_cifar(name: str, root: Path, download: bool, train_tf: Any, eval_tf: Any) -> Tuple[Any, Any, Any]:
    """``(train set with train_tf, train set with eval_tf, test set with eval_tf)``.

    Raises:
        DataError: files missing or failing torchvision's md5 check, or the download failed.
    """
    cls = cifar_class(name)
    try:
        train = cls(str(root), train=True, transform=train_tf, download=download)
        test = cls(str(root), train=False, transform=eval_tf, download=False)
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted..." (md5 mismatch)
        raise DataError(f"{name} data in {root / cls.base_folder} is incomplete or corrupted ({exc}); delete it and "
                        f"pass dataset.download=true, or extract {cls.url} into {root}") from exc
    except OSError as exc:  # network errors of the downloader (URLError is an OSError)
        raise DataError(f"could not download {name} into {root}: {exc}; download {cls.url} by hand and "
                        f"extract it into {root}") from exc
    return train, with_transform(train, eval_tf), test


def build_imagefolder(name: str, root: Path, num_classes: int, train_tf: Any,
                      eval_tf: Any) -> Tuple[Any, Any, Any]:
    """``(train/ with train_tf, train/ with eval_tf, val/ with eval_tf)`` as ImageFolders.

    The test set's labels use the training folder's class indices (sorted class folder names);
    ``val/`` may hold a subset of the training classes but no other class.

    Raises:
        DataError: bad layout, a class folder without images, more classes than the data set has,
            or validation classes absent from train/.
    """
    problem = imagefolder_problem(name, root)
    if problem:
        raise DataError(f"{name} data in {root} is not usable: {problem}; {imagefolder_instructions(name, root)}")
    from torchvision import datasets

    try:
        train = datasets.ImageFolder(str(root / "train"), transform=train_tf)
        test = datasets.ImageFolder(str(root / "val"), transform=eval_tf)
    except (FileNotFoundError, ValueError) as exc:
        raise DataError(f"{name} data in {root} is not usable: {exc}; {imagefolder_instructions(name, root)}") from exc
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

