"""A small Vision Transformer for 28x28 / 32x32 inputs (``model=vit``), built from timm's ``VisionTransformer``.

Architecture (Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021): non-overlapping ``patch_size`` patches
-> linear patch embedding (a strided ``Conv2d``) + class token + learned position embedding -> ``depth`` pre-norm
blocks (LayerNorm -> multi-head self-attention with one ``qkv`` and one ``proj`` ``nn.Linear`` -> LayerNorm -> MLP
``fc1`` -> GELU -> ``fc2``) -> LayerNorm -> class token -> ``head`` ``nn.Linear``. Implementation: timm
(``timm.models.vision_transformer.VisionTransformer``, public constructor; pinned in constraints.txt), imported only
when a ViT is built. Initialisation: timm's (truncated normal, std 0.02, for every linear layer and the position
embedding), drawn from the global RNG the run has seeded; no pretrained weights, nothing downloaded.

Sparsity: every attention / MLP ``nn.Linear`` is prunable; the patch embedding and the head are kept dense
(``sparse_keep_dense``, :func:`sparse_exp.sparse.masking.declared_dense`) unless ``model.dense_embed_head=false``.
Rationale and measurements: docs/vit.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from sparse_exp.config.errors import ConfigError, require
from sparse_exp.config.schema import ModelConfig
from sparse_exp.registry import MODELS


@dataclass
class ViTConfig(ModelConfig):
    """``model=vit``: ``width`` (embedding dimension D), ``depth`` (blocks), ``heads`` (attention heads, dividing
    ``width``), ``mlp_ratio`` (MLP hidden size / D), ``patch_size`` (pixels, dividing the image size),
    ``dense_embed_head`` (keep the patch embedding and the head dense; ``false`` prunes them too)."""

    width: int = 192
    depth: int = 6
    heads: int = 3
    mlp_ratio: float = 4.0
    patch_size: int = 4
    dense_embed_head: bool = True


def check_vit(cfg: Any) -> None:
    """Sizes are positive, ``heads`` divides ``width``, and ``patch_size`` divides the data set's image size."""
    node = cfg.model
    for key in ("width", "depth", "heads", "patch_size"):
        require(int(node[key]) >= 1, f"model.{key}", node[key], "must be an integer >= 1")
    require(float(node.mlp_ratio) > 0, "model.mlp_ratio", node.mlp_ratio, "must be > 0")
    if int(node.width) % int(node.heads):
        raise ConfigError("model.heads", node.heads, f"must divide model.width={node.width} (each head has "
                          "width / heads dimensions)")
    from sparse_exp.data import dataset_spec  # the data set's static facts (built-in, external and plugin sets)

    size, patch = int(dataset_spec(cfg.dataset).image_size), int(node.patch_size)
    if size % patch:
        raise ConfigError("model.patch_size", patch, f"must divide the {size}x{size} images of "
                          f"dataset={cfg.dataset.name} (non-overlapping patches); e.g. 4")


def _positive(**values: Any) -> None:
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key}={value!r} must be an integer >= 1")


@MODELS.register("vit", schema=ViTConfig, checks=(check_vit,))
def vit(in_channels: int, num_classes: int, image_size: int, width: int = 192, depth: int = 6, heads: int = 3,
        mlp_ratio: float = 4.0, patch_size: int = 4, dense_embed_head: bool = True) -> nn.Module:
    """A small ViT (ViT-Tiny's width 192 and 3 heads, 6 blocks, 4x4 patches: 2.7 M weights for 28x28 inputs).

    Args:
        in_channels: ``C`` of the input ``(N, C, H, W)``, ``H = W = image_size``.
        num_classes: number of output logits.
        image_size: input height / width; ``patch_size`` must divide it (``(image_size / patch_size)**2`` tokens
            plus the class token).
        width, depth, heads, mlp_ratio, patch_size: see :class:`ViTConfig`.
        dense_embed_head: mark the patch embedding and the head ``sparse_keep_dense`` (density 1, counted in the
            budget, never pruned or regrown).

    Returns:
        timm's ``VisionTransformer`` mapping ``(N, C, H, W)`` to logits ``(N, num_classes)``.

    Raises:
        ValueError: a size is not a positive integer, ``heads`` does not divide ``width`` or ``patch_size`` does
            not divide ``image_size``.
    """
    from timm.models.vision_transformer import VisionTransformer

    _positive(in_channels=in_channels, num_classes=num_classes, image_size=image_size, width=width, depth=depth,
              heads=heads, patch_size=patch_size)
    if width % heads or image_size % patch_size:
        raise ValueError(f"vit: heads={heads} must divide width={width} and patch_size={patch_size} must divide "
                         f"image_size={image_size}")
    model = VisionTransformer(img_size=image_size, patch_size=patch_size, in_chans=in_channels,
                              num_classes=num_classes, embed_dim=width, depth=depth, num_heads=heads,
                              mlp_ratio=float(mlp_ratio), qkv_bias=True, class_token=True, global_pool="token")
    if dense_embed_head:
        model.patch_embed.proj.sparse_keep_dense = True
        model.head.sparse_keep_dense = True
    return model
