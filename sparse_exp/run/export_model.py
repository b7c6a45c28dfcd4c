"""Export a completed run's reported model for inference with its sparse weights (``python -m sparse_exp.export``).

Three targets (``--to``), all from :func:`sparse_exp.load` (the model ``summary.json`` reports, masks checked):

- ``dense``: the mask-baked dense network (masked-out weights are exact zeros), as a TorchScript file.
- ``csr``: every *masked* ``nn.Linear`` (some weight pruned) becomes :class:`CSRLinear` (weight a ``torch.sparse_csr``
  tensor, forward ``torch.sparse.mm``); convolutions and unpruned layers (e.g. a ViT's dense head) stay dense.
  TorchScript file.
- ``semi_structured``: every masked ``nn.Linear`` of a 2:4 run becomes :class:`SemiStructuredLinear`
  (``torch.sparse.to_sparse_semi_structured``, fp16, CUDA sm80+). The compressed layout is built on the GPU that runs
  it, so the file holds the fp16 mask-baked weights and the network's config; :func:`load_exported` rebuilds it.

TorchScript files load with ``torch.jit.load(path)`` alone (no sparse_exp, no timm). Rationale, tolerances and
measured speed: ``docs/export.md``.
"""

from __future__ import annotations

import copy
import os
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from sparse_exp.config.errors import ConfigError, UserError

KINDS = ("dense", "csr", "semi_structured")
SEMI_FORMAT = "sparse_exp.export.semi_structured/v1"
#: |exported - reported| allowed on the logits, per target (fp32 sparse kernels sum in another order; fp16 rounds)
TOLERANCE = {"dense": 1e-5, "csr": 1e-4, "semi_structured": 5e-2}
#: CUTLASS's minimum fp16 weight shape for 2:4 (rows, cols); cuSPARSELt's (16, 16) divides it. Weights are padded.
SEMI_PAD = (32, 64)


class CSRLinear(nn.Module):
    """``y = x W^T + b`` with ``W`` a CSR tensor ``(out, in)``; ``x`` is ``(..., in)``, ``y`` is ``(..., out)``."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
        super().__init__()
        self.in_features, self.out_features = int(weight.shape[1]), int(weight.shape[0])
        self.register_buffer("weight", weight.detach().to_sparse_csr())
        self.register_buffer("bias", (bias.detach().clone() if bias is not None
                                      else torch.zeros(self.out_features, dtype=weight.dtype)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        y = torch.sparse.mm(self.weight, flat.t()).t() + self.bias
        return y.reshape(x.shape[:-1] + (self.out_features,))


class SemiStructuredLinear(nn.Module):
    """``y = x W^T + b`` with ``W`` ``(out, in)`` 2:4 along ``in``, as ``to_sparse_semi_structured`` (fp16/bf16, CUDA
    sm80+). ``W`` is zero-padded to multiples of :data:`SEMI_PAD` (zeros keep 2:4); ``x`` is padded and ``y`` sliced."""

    def __init__(self, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> None:
        super().__init__()
        from torch.sparse import to_sparse_semi_structured

        out_f, in_f = weight.shape
        self.in_features, self.out_features = int(in_f), int(out_f)
        self.pad_in = (-in_f) % SEMI_PAD[1]
        padded = F.pad(weight.detach(), (0, self.pad_in, 0, (-out_f) % SEMI_PAD[0]))
        self.weight = nn.Parameter(to_sparse_semi_structured(padded), requires_grad=False)
        b = bias.detach() if bias is not None else torch.zeros(out_f, dtype=weight.dtype, device=weight.device)
        self.bias = nn.Parameter(F.pad(b, (0, padded.shape[0] - out_f)), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad_in:
            x = F.pad(x, (0, self.pad_in))
        return F.linear(x, self.weight, self.bias)[..., :self.out_features]


# ----------------------------------------------------------------------------- checks
def masked_linears(model: nn.Module, masks: Dict[str, torch.Tensor]) -> List[str]:
    """Names of the ``nn.Linear`` modules whose weight has a mask with some weight pruned (the sparse ones), in module
    order; a layer kept dense (no mask, or an all-True mask: a ViT's head) is not one."""
    return [n for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and f"{n}.weight" in masks and not bool(masks[f"{n}.weight"].all())]


def not_2_4(masks: Dict[str, torch.Tensor], names: List[str]) -> List[str]:
    """The masked Linear weights (of ``names``) that are not 2:4 along ``in_features``: some group of 4 consecutive
    weights in a row keeps more than 2 (a row length not divisible by 4 counts as not 2:4)."""
    bad = []
    for name in names:
        mask = masks[f"{name}.weight"]
        if mask.shape[1] % 4 or int(mask.reshape(mask.shape[0], -1, 4).sum(-1).max()) > 2:
            bad.append(name)
    return bad


def semi_structured_missing() -> Optional[str]:
    """Why 2:4 kernels cannot run here (one line), or None on a CUDA GPU of compute capability >= 8.0."""
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        return f"the GPU {torch.cuda.get_device_name()} has compute capability {major}.{minor}"
    return None


def default_out(run_dir: Path, to: str) -> Path:
    """``RUN_DIR/model.dense.ts``, ``RUN_DIR/model.csr.ts``, ``RUN_DIR/model.semi_structured.pt``."""
    return Path(run_dir) / (f"model.{to}.pt" if to == "semi_structured" else f"model.{to}.ts")


# ----------------------------------------------------------------------------- building
def swap_linears(model: nn.Module, names: List[str], make: Any) -> nn.Module:
    """``model`` with each named ``nn.Linear`` replaced by ``make(weight, bias)`` (in place; returns ``model``)."""
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        lin = parent.get_submodule(child)
        setattr(parent, child, make(lin.weight, lin.bias))
    return model


def example_input(meta_input: Dict[str, int], batch: int, seed: int = 0) -> torch.Tensor:
    """A reproducible random input ``(batch, C, H, H)`` for tracing and checking."""
    gen = torch.Generator().manual_seed(seed)
    c, h = meta_input["in_channels"], meta_input["image_size"]
    return torch.randn(batch, c, h, h, generator=gen)


def _trace(model: nn.Module, x: torch.Tensor) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():  # TracerWarnings on timm's shape asserts; the outputs are checked afterwards
        warnings.simplefilter("ignore")
        return torch.jit.trace(model, (x,), check_trace=False)


def max_diff(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    """``max |a(x) - b(x)|`` over the logits (fp32, on ``x``'s device)."""
    with torch.no_grad():
        return float((a(x).float() - b(x).float()).abs().max())


def _run_input(run_dir: Path, cfg: Dict[str, Any]) -> Dict[str, int]:
    from sparse_exp.run.artifact import INPUT_KEYS, _read_model_file
    from sparse_exp.run.run_dir import RunDir

    rd = RunDir(run_dir)
    payload = _read_model_file(rd.model_path) if rd.model_path.exists() else {}
    if "input" in payload:
        return dict(payload["input"])
    from omegaconf import OmegaConf

    from sparse_exp.data import dataset_spec
    spec = dataset_spec(OmegaConf.create(cfg).dataset)
    return {k: int(getattr(spec, k)) for k in INPUT_KEYS}


def export(run_dir: str | os.PathLike, to: str, out: Optional[str | os.PathLike] = None,
           force: bool = False) -> Tuple[Path, Dict[str, Any]]:
    """Write the run's reported model for inference with its sparse weights (module doc) and check it.

    Args:
        run_dir: a completed run (``model.pt``, or an older run's final ``checkpoint.pt``).
        to: ``"dense"``, ``"csr"`` or ``"semi_structured"``.
        out: the file to write (default :func:`default_out`); an existing file is refused unless ``force``.

    Returns:
        ``(path, info)``: ``info`` = ``{"to", "which", "sparse_layers" (names converted), "dense_layers" (Linear
        layers kept dense), "max_abs_diff" (logits vs the reported model, batch 3), "tolerance"}``.

    Raises:
        UserError: unknown ``to``, existing ``out`` without ``force``, no completed run (from ``load``), no CUDA
            sm80+ GPU or masks that are not 2:4 (``semi_structured``), or outputs beyond :data:`TOLERANCE`.
    """
    import sparse_exp

    if to not in KINDS:
        raise ConfigError("--to", to, f"must be one of {', '.join(KINDS)}")
    path = Path(out) if out is not None else default_out(Path(run_dir), to)
    if path.exists() and not force:
        raise UserError(f"{path} exists: pass --force to overwrite it, or --out another file")
    if to == "semi_structured" and (why := semi_structured_missing()):
        raise UserError(f"--to semi_structured needs a CUDA GPU of compute capability >= 8.0 (Ampere or newer) for "
                        f"torch.sparse.to_sparse_semi_structured, and {why}; export --to csr or dense here")
    model, meta = sparse_exp.load(run_dir)
    masks, names = meta["masks"], masked_linears(model, meta["masks"])
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    info: Dict[str, Any] = {"to": to, "which": meta["which"], "tolerance": TOLERANCE[to],
                            "sparse_layers": names if to != "dense" else [],
                            "dense_layers": [n for n in linears if to == "dense" or n not in names]}
    inp = _run_input(Path(run_dir), meta["config"])
    if to == "semi_structured":
        if not names or (bad := not_2_4(masks, names)):
            raise UserError(f"{run_dir}: --to semi_structured needs 2:4 masks (at most 2 of every 4 consecutive "
                            f"weights along in_features) on its masked Linear layers; "
                            + (f"{', '.join(bad)} are not 2:4" if names else "the run has no masked Linear layer"))
        payload = {"format": SEMI_FORMAT, "which": meta["which"], "config": meta["config"], "input": inp,
                   "layers": names, "state": {k: v.half() if v.is_floating_point() else v
                                               for k, v in model.state_dict().items()}}
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(payload, path)
        exported = load_exported(path, device="cuda")
        x = example_input(inp, 3).cuda()
        info["max_abs_diff"] = max_diff(exported, model.cuda(), x)
    else:
        exported_eager = copy.deepcopy(model)
        if to == "csr":
            swap_linears(exported_eager, names, CSRLinear)
        scripted = _trace(exported_eager.eval(), example_input(inp, 2))
        x = example_input(inp, 3, seed=1)  # another batch size than the trace's: the file is batch-independent
        info["max_abs_diff"] = max_diff(scripted, model, x)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.jit.save(scripted, str(tmp))
        os.replace(tmp, path)
    if not info["max_abs_diff"] <= TOLERANCE[to]:
        raise UserError(f"{path}: the exported model's logits differ from the reported model's by "
                        f"{info['max_abs_diff']:.3g} > {TOLERANCE[to]:g}; the file is written but should not be used")
    return path, info


def load_exported(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """An exported model, in eval mode on ``device``: ``torch.jit.load`` for ``dense`` / ``csr`` files; a
    ``semi_structured`` file's network rebuilt from its config (sparse_exp, and timm for a ViT) with its masked
    Linear layers as :class:`SemiStructuredLinear` (fp16, ``device`` a CUDA sm80+ GPU).

    Raises:
        UserError: not an exported file, or a ``semi_structured`` file without such a GPU.
    """
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        try:
            return torch.jit.load(str(path), map_location=device).eval()
        except Exception as exc:
            raise UserError(f"{path} is not an exported model ({type(exc).__name__}: "
                            f"{(str(exc).splitlines() or [''])[0][:160]})") from None
    if not isinstance(payload, dict) or payload.get("format") != SEMI_FORMAT:
        raise UserError(f"{path} is not an exported model (expected TorchScript or {SEMI_FORMAT!r})")
    if (why := semi_structured_missing()) or torch.device(device).type != "cuda":
        raise UserError(f"{path} is a 2:4 semi-structured model: it runs on a CUDA GPU of compute capability >= 8.0 "
                        f"(device={device!s}{'; ' + why if why else ''})")
    from omegaconf import OmegaConf

    from sparse_exp.models import build_configured
    model = build_configured(OmegaConf.create(payload["config"]).model, SimpleNamespace(**payload["input"]))
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in payload["state"].items()})
    model = model.half().to(device).eval()
    swap_linears(model, payload["layers"], SemiStructuredLinear)
    return _Half(model).eval()


class _Half(nn.Module):
    """Runs an fp16 network on fp32 (or fp16) input; returns fp32 logits."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.half()).float()
