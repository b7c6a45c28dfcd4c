"""The paper's names for data sets, models, methods and metrics, and the number formats of the
tables and figures (``95%``, ``0.5``)."""

from __future__ import annotations

DATASET_LABELS = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "imagenet": "ImageNet",
                  "fashion_mnist": "Fashion-MNIST", "tiny_imagenet": "Tiny-ImageNet"}
MODEL_LABELS = {"vgg16": "VGG-16", "resnet50": "ResNet-50", "resnet50_imagenet": "ResNet-50",
                "wrn28_10": "WRN28-10", "lenet5": "LeNet-5", "lenet_300_100": "LeNet-300-100",
                "resnet18": "ResNet-18", "resnet32": "ResNet-32", "mobilenet_v2": "MobileNetV2"}
BASE_LABELS = {"dense": "Dense", "erk": "ERK [Evci et al., 2020]", "snip": "SNIP [Lee et al., 2018]",
               "set": "SET [Mocanu et al., 2018]", "rigl": "RigL [Evci et al., 2020]",
               "granet": "GraNet [Liu et al., 2021b]", "small_dense": "Small-Dense",
               "dsr": "DSR [Mostafa and Wang, 2019]", "snfs": "SNFS [Dettmers and Zettlemoyer, 2019]",
               "treenet": "TreeNet [Lee et al., 2015]", "batchensemble": "BatchEnsemble [Wen et al., 2020]",
               "dense_ensemble": "Traditional Dense Ensemble"}
SHORT = {"erk": "ERK", "snip": "SNIP", "set": "SET", "rigl": "RigL", "granet": "GraNet"}
#: rows of the paper's tables that sparse_exp does not implement (shown marked †, never missing)
NOT_IMPLEMENTED = ("small_dense", "dsr", "snfs", "treenet", "batchensemble", "dense_ensemble")
METRIC_LABELS = {"test/acc": "Top-1", "flops/train": "FLOPs (Train)", "flops/test": "FLOPs (Test)",
                 "diversity/disagreement": "d_dis", "diversity/kl": "d_KL"}


def ds_label(ds: str) -> str:
    return DATASET_LABELS.get(ds, ds)


def model_label(m: str) -> str:
    return MODEL_LABELS.get(m, m)


def pct(s: float) -> str:
    return f"{100 * s:g}%"


def fmt_num(x: float) -> str:
    return f"{x:g}"


def method_label(method: str) -> str:
    """Row label of a method key (``rigl`` -> ``RigL [Evci et al., 2020]``,
    ``rigl+sup`` -> ``RigL+Sup-tickets (ours)``)."""
    base, _, variant = method.partition("/")
    if base.endswith("+sup"):
        return f"{SHORT[base[:-4]]}+Sup-tickets (ours)"
    label = BASE_LABELS[base]
    return label + (" †" if base in NOT_IMPLEMENTED else "")
