"""What identifies a run: its choices (written into ``summary.json``) and the config keys that do not
change its result (left out of run-directory names and of run identity when tables are collected).

Single source for :mod:`sparse_exp.engine.build` (the summary's identity block) and :mod:`sparse_exp.analysis.collect`
(deduplicating requeued runs). The result-neutral keys are read from ``conf/config.yaml``
(``hydra.job.config.override_dirname.exclude_keys``), so the run-directory names and the analysis can
never disagree.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Dict, Tuple

from sparse_exp import CONF_DIR

#: config groups whose chosen option (``<group>.name``) identifies a run
IDENTITY_GROUPS: Tuple[str, ...] = ("model", "dataset", "sparsifier", "superposer", "distribution")
#: top-level numbers that identify a run
IDENTITY_VALUES: Tuple[str, ...] = ("sparsity", "seed", "epochs")
#: top-level choices that identify a run, written into ``summary.json`` only when not at their default
#: (:data:`IDENTITY_DEFAULTS`), so that the summaries of runs at the default read as before
IDENTITY_CHOICES: Tuple[str, ...] = ("report", "tweaks")
#: what a summary or config without the key means (runs from before the key existed)
IDENTITY_DEFAULTS: Dict[str, Any] = {"report": "last", "tweaks": "none"}
#: every identity key, in the order of ``summary.json``
IDENTITY: Tuple[str, ...] = IDENTITY_GROUPS + IDENTITY_VALUES + IDENTITY_CHOICES

#: config keys that moved, old path -> new path: configs written before name the old one
#: (:mod:`sparse_exp.analysis.collect` reads it as the new one, so old and new runs of a cell are one cell); typed on
#: the command line, the old one is refused with its new name (:mod:`sparse_exp.config.refusal`)
MOVED_KEYS: Dict[str, str] = {f"dataset.sup_{k}": f"superposer.dataset_defaults.{k}"
                              for k in ("cycle_epochs", "lr_low", "lr_high")}

#: keys that never reach run-directory names but are not config choices either
_NOT_CONFIG = ("hydra", "run_dir")
#: keys that name a run's directory but do not change its result: saving the cheap tickets and the offline
#: superposition variants computed from them (:mod:`sparse_exp.superposers.tickets`), and which splits each ticket is
#: evaluated on when it is taken (never changes the ultimate ticket)
_NAMED_BUT_NEUTRAL = ("superposer.save_tickets", "superposer.offline", "superposer.ticket_eval")


def identity(cfg: Any) -> Dict[str, Any]:
    """The run's identifying choices, as written into ``summary.json``.

    Args:
        cfg: a composed config (``conf/config.yaml``).

    Returns:
        ``{"model": name, "dataset": name, ..., "sparsity": float, "seed": int, "epochs": int}``, then
        ``"report": str`` unless it is ``last`` and ``"tweaks": "a+b"`` unless no tweak is chosen (the
        defaults: such summaries are unchanged).
    """
    out: Dict[str, Any] = {k: cfg[k].name for k in IDENTITY_GROUPS}
    out.update(sparsity=float(cfg.sparsity), seed=int(cfg.seed), epochs=int(cfg.epochs))
    for k in IDENTITY_CHOICES:
        value = tweaks_label(cfg) if k == "tweaks" else cfg.get(k, IDENTITY_DEFAULTS[k])
        if value != IDENTITY_DEFAULTS[k]:
            out[k] = value
    return out


def tweaks_label(cfg: Any) -> str:
    """The chosen training tweaks as one label, names sorted and joined by ``+`` (``"none"`` if none)."""
    names = sorted(cfg.get("tweaks") or {})
    return "+".join(names) if names else "none"


@lru_cache(maxsize=1)
def result_neutral_keys() -> Tuple[str, ...]:
    """Config keys (and their children) that do not change a run's result: ``conf/config.yaml``'s
    ``override_dirname.exclude_keys`` plus ``hydra``, ``run_dir`` and the ticket store's keys (which are in the
    directory name but change no result).

    Raises:
        FileNotFoundError: ``conf/config.yaml`` is missing (:data:`sparse_exp.CONF_DIR`).
    """
    import yaml

    cfg = yaml.safe_load((CONF_DIR / "config.yaml").read_text())
    keys = cfg["hydra"]["job"]["config"]["override_dirname"]["exclude_keys"]
    return tuple(keys) + _NOT_CONFIG + _NAMED_BUT_NEUTRAL
