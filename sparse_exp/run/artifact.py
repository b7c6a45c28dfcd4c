"""``model.pt``, the reported model of a completed run, and :func:`load`, which rebuilds it.

Every completed run writes ``<run>/model.pt`` (rank 0 only, atomically) next to ``masks.pt``: the model the run
reports in ``summary.json`` (a callback's ``reported_model``, else the final model). It holds only plain containers,
strings, numbers, booleans and CPU tensors, so ``torch.load(path, weights_only=True)`` reads it::

    {"format": "sparse_exp.model/v1", "state": state_dict, "masks": {param name: bool tensor},
     "which": label of the model ("final", or the reporting callback's), "config": the resolved config,
     "network": {"as_built": bool, "transformed_by": [callback names]},
     "input": {"in_channels": C, "num_classes": K, "image_size": H}}

``network.as_built``: the model's module tree is exactly what ``build_configured(config.model, spec)`` builds, so
:func:`load` can rebuild it without data; otherwise ``transformed_by`` names the callbacks that change the network
(``transform_model``) and :func:`load` refuses. ``input``: the data set's spec the network was built for (so no data
set registry is needed to rebuild it). Format and use: ``docs/artifacts.md``.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Tuple

import torch
from omegaconf import OmegaConf
from torch import nn

from sparse_exp.config.errors import UserError
from sparse_exp.models import build_configured
from sparse_exp.run.run_dir import RunDir, read_summary

MODEL_FORMAT = "sparse_exp.model/v1"
Masks = Dict[str, torch.Tensor]
#: the data set spec's fields a network is built from (``build_configured``)
INPUT_KEYS = ("in_channels", "num_classes", "image_size")


def module_tree(model: nn.Module) -> List[Tuple[str, str]]:
    """``(name, kind)`` of every module, in order; batch-norm classes (SyncBatchNorm under DDP) count as one kind."""
    return [(n, "BatchNorm" if isinstance(m, nn.modules.batchnorm._BatchNorm) else type(m).__name__)
            for n, m in model.named_modules()]


def as_built(model: nn.Module, model_node: Any, spec: Any) -> bool:
    """Whether ``model`` has the module tree ``build_configured(model_node, spec)`` builds (built on ``meta``)."""
    with torch.device("meta"):
        plain = build_configured(model_node, spec)
    return module_tree(plain) == module_tree(model)


def model_payload(which: str, model: nn.Module, masks: Masks, cfg: Any, spec: Any,
                  transformers: List[str]) -> Dict[str, Any]:
    """The ``model.pt`` body (module doc) for ``model`` (any device; copied to the CPU).

    Args:
        which: its label (``"final"`` or the reporting callback's).
        masks: its masks ``{param name: bool tensor}``.
        cfg: the run's config (stored resolved, as plain data).
        spec: the data set's spec (``in_channels``, ``num_classes``, ``image_size``).
        transformers: names of the run's callbacks that override ``transform_model``.
    """
    built = as_built(model, cfg.model, spec)
    return {"format": MODEL_FORMAT,
            "state": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
            "masks": {k: v.detach().to("cpu", torch.bool, copy=True) for k, v in masks.items()},
            "which": str(which),
            "config": OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg),
            "network": {"as_built": built, "transformed_by": [] if built else list(transformers)},
            "input": {k: int(getattr(spec, k)) for k in INPUT_KEYS}}


# ----------------------------------------------------------------------------- loading
def _read_model_file(path: Path) -> Dict[str, Any]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a torch file, or objects weights_only refuses
        raise UserError(f"{path} is unreadable ({type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:160]}); "
                        "re-run the run to write it again") from None
    found = payload.get("format") if isinstance(payload, dict) else None
    if found != MODEL_FORMAT:
        raise UserError(f"{path} is not a sparse_exp model file (format {found!r}; this code reads {MODEL_FORMAT!r})")
    return payload


def _from_checkpoint(rd: RunDir) -> Dict[str, Any]:
    """The ``model.pt`` body of a run made before ``model.pt`` existed, from its ``checkpoint.pt``, when that is
    the end of the run and holds the reported model (no callback reports another model or changes the network)."""
    from sparse_exp.callbacks.protocol import BaseCallback
    from sparse_exp.engine.build import build_callbacks

    path = rd.path
    has = sorted(p.name for p in path.iterdir() if not p.name.startswith("."))
    summary = read_summary(rd.summary_path)
    if summary is None or summary.get("status") != "completed" or not rd.has_checkpoint():
        status = "no summary.json" if summary is None else f"status {summary.get('status')!r}"
        raise UserError(f"{path} has no model.pt and is not a completed run ({status}; it has {', '.join(has)}): "
                        "finish it (re-run its command to resume), then load it")
    try:
        cfg = OmegaConf.load(rd.config_path)
        callbacks = build_callbacks(cfg)
    except Exception as exc:
        raise UserError(f"{path} has no model.pt and its config.yaml cannot be rebuilt by this version "
                        f"({type(exc).__name__}: {str(exc)[:160]}); re-run it to write model.pt") from None
    others = [cb.name for cb in callbacks if type(cb).reported_model is not BaseCallback.reported_model]
    changes = [cb.name for cb in callbacks if type(cb).transform_model is not BaseCallback.transform_model]
    why = (f"its reported model comes from {', '.join(others)}, which checkpoint.pt does not hold" if others else
           f"{', '.join(changes)} changes the network, which cannot be rebuilt from checkpoint.pt" if changes else "")
    state = rd.load_checkpoint()
    if not why and (state["step"] != summary.get("steps") or state["batch_in_epoch"]):
        why = f"its checkpoint.pt is from step {state['step']}, not the end of the run (step {summary.get('steps')})"
    if why:
        raise UserError(f"{path} was made before runs wrote model.pt (it has {', '.join(has)}) and {why}: re-run it "
                        "with this version (a new run directory) to get model.pt")
    payload = {"format": MODEL_FORMAT, "state": state["model"], "masks": dict(state["masking"]["masks"]),
               "which": "final", "config": OmegaConf.to_container(cfg, resolve=True),
               "network": {"as_built": True, "transformed_by": []}}
    return payload


def _check_masks(state: Dict[str, torch.Tensor], masks: Masks, path: Path) -> None:
    """Raise unless every masked-out weight is zero (and every mask fits its weight)."""
    for name, mask in masks.items():
        weight = state.get(name)
        if weight is None or weight.shape != mask.shape:
            got = "no such weight" if weight is None else f"weight shape {tuple(weight.shape)}"
            raise UserError(f"{path}: the mask of {name!r} (shape {tuple(mask.shape)}) does not fit the model "
                            f"({got}); the file is damaged, re-run the run to write it again")
        stray = int(weight[~mask.bool()].count_nonzero())
        if stray:
            raise UserError(f"{path}: {name!r} has {stray} non-zero weights where its mask is False (the masks do "
                            "not hold; the file was altered or damaged), re-run the run to write it again")


def load(run_dir: str | os.PathLike, which: Optional[str] = None,
         device: str | torch.device = "cpu") -> Tuple[nn.Module, Dict[str, Any]]:
    """The reported model of the completed run in ``run_dir``, rebuilt from its config, in eval mode on ``device``.

    Reads ``model.pt`` (``torch.load(weights_only=True)``); a run made before ``model.pt`` existed is read from its
    ``checkpoint.pt`` where that is the end of the run and holds the reported model (``meta["source"]``).

    Args:
        run_dir: a run directory (``summary.json``, ``config.yaml``, ``model.pt``, ...).
        which: the model expected (``"final"``, ``"best_val"``, or a superposer's label); None: whatever the run
            reports. ``"best_val"`` also accepts a ``report=best_val`` run whose best-validation model is the final
            model.
        device: where the model goes.

    Returns:
        ``(model, meta)``: ``meta`` = ``{"which", "config" (plain data), "masks" ({param: bool tensor}, CPU),
        "path" (the file read), "source" ("model.pt" or "checkpoint.pt")}``.

    Raises:
        UserError: one line saying what the directory has and what to do: no run there, no ``model.pt`` and no
            usable checkpoint, ``which`` not what the run reports, a network a tweak changed (not rebuildable
            without data), a state that does not fit the rebuilt network, or masks that do not hold.
    """
    from sparse_exp.data import dataset_spec

    rd = RunDir(run_dir)
    if not rd.path.is_dir():
        raise UserError(f"{rd.path} is not a run directory (no such directory)")
    if rd.model_path.exists():
        path, payload = rd.model_path, _read_model_file(rd.model_path)
    else:
        path, payload = rd.checkpoint_path, _from_checkpoint(rd)
    cfg = OmegaConf.create(payload["config"])
    held = payload["which"]
    chose = held == "best_val" or str(cfg.get("report", "last")) == "best_val"
    if which is not None and which != held and not (which == "best_val" and chose):
        raise UserError(f"{rd.path} reports the {held!r} model (report={cfg.get('report', 'last')}, superposer="
                        f"{OmegaConf.select(cfg, 'superposer.name', default='none')}), not {which!r}: pass "
                        f"which={held!r} or which=None")
    network = payload["network"]
    if not network["as_built"]:
        changers = ", ".join(network["transformed_by"]) or "a callback"
        raise UserError(f"{rd.path}: the reported network was changed by {changers} (transform_model) and cannot "
                        "be rebuilt from the config without data; read the "
                        f"state from {path} with torch.load(weights_only=True) into the network you build")
    spec = SimpleNamespace(**payload["input"]) if "input" in payload else dataset_spec(cfg.dataset)
    model = build_configured(cfg.model, spec)
    try:
        model.load_state_dict(payload["state"])
    except RuntimeError as exc:
        raise UserError(f"{path} does not fit the network its config builds ({str(exc).splitlines()[0][:200]}); "
                        "load it with the sparse_exp version that wrote it") from None
    _check_masks(payload["state"], payload["masks"], path)
    meta = {"which": held, "config": payload["config"], "masks": payload["masks"], "path": path,
            "source": path.name}
    return model.to(device).eval(), meta
