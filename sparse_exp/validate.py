"""Whole-config validation, run before any data is loaded or any file is written.

Types and unknown keys are already checked by the structured schemas
(:mod:`sparse_exp.config`); this module checks ranges and cross-key constraints and raises
:class:`sparse_exp.errors.ConfigError` naming the key, the value and what is allowed.
Sparsifiers and superposers add their own checks through :data:`EXTRA_CHECKS`.
"""

from __future__ import annotations

from typing import Any, Callable, List

from sparse_exp.errors import ConfigError

#: functions ``check(cfg)`` registered by sparsifier / superposer modules.
EXTRA_CHECKS: List[Callable[[Any], None]] = []


def require(cond: bool, key: str, value: Any, allowed: str) -> None:
    """Raise :class:`ConfigError` for ``key=value`` unless ``cond``."""
    if not cond:
        raise ConfigError(key, value, allowed)


def one_of(key: str, value: Any, allowed) -> None:
    """Raise unless ``value`` is in ``allowed`` (the message lists them)."""
    require(value in allowed, key, value, f"must be one of {sorted(allowed)}")


def validate(cfg: Any) -> None:
    """Check every value of a composed config; raise :class:`ConfigError` on the first bad one."""
    from sparse_exp.data import DATASETS
    from sparse_exp.models import INITS, MODELS
    from sparse_exp.schedules import SCHEDULES
    from sparse_exp.sparse.distributions import DISTRIBUTIONS
    from sparse_exp.sparse.sparsifiers import SPARSIFIERS
    from sparse_exp.sparse.sparsifiers.pai import check_config as check_pai_config

    require(isinstance(cfg.sparsity, (int, float)) and 0.0 <= cfg.sparsity < 1.0, "sparsity", cfg.sparsity,
            "must be in [0, 1) (fraction of zeros among prunable weights)")
    require(cfg.epochs >= 1, "epochs", cfg.epochs, "must be an integer >= 1")
    require(cfg.batch_size >= 1, "batch_size", cfg.batch_size, "must be an integer >= 1")
    require(cfg.eval_batch_size >= 1, "eval_batch_size", cfg.eval_batch_size, "must be an integer >= 1")
    require(cfg.seed >= 0, "seed", cfg.seed, "must be an integer >= 0")
    require(cfg.log_every >= 1, "log_every", cfg.log_every, "must be an integer >= 1")
    if cfg.stop_after_epochs is not None:
        require(cfg.stop_after_epochs >= 1, "stop_after_epochs", cfg.stop_after_epochs, "must be >= 1 or null")
    one_of("device", cfg.device.split(":")[0], {"auto", "cpu", "cuda", "mps"})

    one_of("model.name", cfg.model.name, set(MODELS))
    one_of("model.init", cfg.model.init, set(INITS))
    one_of("dataset.name", cfg.dataset.name, set(DATASETS))
    require(cfg.dataset.val_size >= 0, "dataset.val_size", cfg.dataset.val_size, "must be >= 0")
    for key in ("subset_train", "subset_test"):
        value = cfg.dataset[key]
        require(value is None or value >= 1, f"dataset.{key}", value, "must be >= 1 or null")
    require(cfg.dataset.num_workers >= 0, "dataset.num_workers", cfg.dataset.num_workers, "must be >= 0")

    one_of("distribution.name", cfg.distribution.name, set(DISTRIBUTIONS))
    require(cfg.distribution.erk_power_scale > 0, "distribution.erk_power_scale", cfg.distribution.erk_power_scale,
            "must be > 0")

    opt = cfg.optimizer
    one_of("optimizer.name", opt.name, {"sgd", "adam"})
    require(opt.lr > 0, "optimizer.lr", opt.lr, "must be > 0")
    require(0 <= opt.momentum < 1, "optimizer.momentum", opt.momentum, "must be in [0, 1)")
    require(opt.weight_decay >= 0, "optimizer.weight_decay", opt.weight_decay, "must be >= 0")

    sch = cfg.schedule
    one_of("schedule.name", sch.name, set(SCHEDULES))
    require(all(0 < m < 1 for m in sch.milestones) and list(sch.milestones) == sorted(sch.milestones),
            "schedule.milestones", list(sch.milestones), "must be increasing fractions of training in (0, 1)")
    require(0 < sch.gamma <= 1, "schedule.gamma", sch.gamma, "must be in (0, 1]")
    require(0 <= sch.min_factor <= 1, "schedule.min_factor", sch.min_factor, "must be in [0, 1]")
    # warm-up may span the whole run (an epochs=1 check of the Fashion-MNIST recipe, which warms up 1 epoch)
    require(0 <= sch.warmup_epochs <= cfg.epochs, "schedule.warmup_epochs", sch.warmup_epochs,
            f"must be in [0, epochs={cfg.epochs}]")

    one_of("logger.name", cfg.logger.name, {"wandb", "none"})
    one_of("logger.mode", cfg.logger.mode, {"online", "offline", "disabled"})

    one_of("sparsifier.name", cfg.sparsifier.name, set(SPARSIFIERS))
    if cfg.sparsifier.name == "dense":
        require(cfg.sparsity == 0, "sparsity", cfg.sparsity, "must be 0 with sparsifier=dense")
    elif cfg.sparsifier.name != "gmp":
        require(cfg.sparsity > 0, "sparsity", cfg.sparsity,
                "must be > 0 for a sparse method (use sparsifier=dense for dense training)")
    validate_sparsifier(cfg)
    check_pai_config(cfg)
    validate_superposer(cfg)
    for check in EXTRA_CHECKS:
        check(cfg)


def validate_sparsifier(cfg: Any) -> None:
    """Range checks of the sparsifier-specific keys (only those the chosen method has)."""
    from omegaconf import OmegaConf

    sp = cfg.sparsifier
    keys = set(sp.keys())
    for key in keys:
        require(not OmegaConf.is_missing(sp, key), f"sparsifier.{key}", "???",
                f"is required for sparsifier={sp.name}")
    if "delta_t" in keys:
        require(sp.delta_t >= 1, "sparsifier.delta_t", sp.delta_t, "must be an integer >= 1 (optimizer steps)")
    if "drop_fraction" in keys:
        require(0 <= sp.drop_fraction <= 1, "sparsifier.drop_fraction", sp.drop_fraction, "must be in [0, 1]")
    if "drop_decay" in keys:
        one_of("sparsifier.drop_decay", sp.drop_decay, {"cosine", "constant"})
    if "stop_fraction" in keys:
        require(0 < sp.stop_fraction <= 1, "sparsifier.stop_fraction", sp.stop_fraction, "must be in (0, 1]")
    if "init_density" in keys:
        require(0 < sp.init_density <= 1, "sparsifier.init_density", sp.init_density, "must be in (0, 1]")
    if "prune_start_fraction" in keys:
        require(0 <= sp.prune_start_fraction < sp.prune_end_fraction <= 1, "sparsifier.prune_end_fraction",
                sp.prune_end_fraction,
                f"must satisfy 0 <= prune_start_fraction ({sp.prune_start_fraction}) < prune_end_fraction <= 1")
    if sp.name == "lth":
        require(sp.rounds >= 1, "sparsifier.rounds", sp.rounds, "must be an integer >= 1")
        require(sp.round_epochs >= 1, "sparsifier.round_epochs", sp.round_epochs, "must be an integer >= 1")
        require(0 <= sp.rewind_epoch < sp.round_epochs, "sparsifier.rewind_epoch", sp.rewind_epoch,
                f"must be in [0, round_epochs={sp.round_epochs})")
    if "prune_rate" in keys:
        require(0 <= sp.prune_rate <= 1, "sparsifier.prune_rate", sp.prune_rate, "must be in [0, 1]")
        require(0 <= sp.prune_rate_min <= sp.prune_rate, "sparsifier.prune_rate_min", sp.prune_rate_min,
                f"must be in [0, prune_rate={sp.prune_rate}]")
        one_of("sparsifier.prune_rate_decay", sp.prune_rate_decay, {"cosine", "constant"})


def validate_superposer(cfg: Any) -> None:
    """Range checks and the cyclic budget of ``superposer=sup_tickets`` (in epochs, before any data)."""
    from sparse_exp.superpose import SUPERPOSERS
    from sparse_exp.superpose.averaging import AVERAGING, REPRUNE
    from sparse_exp.superpose.cyclic_lr import LR_SCHEDULES

    sp = cfg.superposer
    one_of("superposer.name", sp.name, set(SUPERPOSERS))
    if sp.name != "sup_tickets":
        return
    require(0 < sp.phase_fraction < 1, "superposer.phase_fraction", sp.phase_fraction, "must be in (0, 1)")
    require(sp.cycle_epochs > 0, "superposer.cycle_epochs", sp.cycle_epochs, "must be > 0 (epochs per cycle)")
    if sp.num_tickets is not None:
        require(sp.num_tickets >= 1, "superposer.num_tickets", sp.num_tickets, "must be >= 1 or null")
        require(sp.num_tickets * sp.cycle_epochs < cfg.epochs, "superposer.num_tickets", sp.num_tickets,
                f"num_tickets x cycle_epochs ({sp.num_tickets} x {sp.cycle_epochs}) must be shorter than "
                f"epochs={cfg.epochs}")
    else:
        phase = sp.phase_fraction * cfg.epochs
        require(sp.cycle_epochs <= phase + 1e-9, "superposer.cycle_epochs", sp.cycle_epochs,
                f"must fit in the cyclic phase: phase_fraction x epochs = {phase:g} epochs holds no ticket")
    require(0 < sp.lr_low <= sp.lr_high, "superposer.lr_low", sp.lr_low,
            f"must satisfy 0 < lr_low <= lr_high ({sp.lr_high})")
    one_of("superposer.lr_schedule", sp.lr_schedule, set(LR_SCHEDULES))
    require(0 < sp.explore_fraction <= 1, "superposer.explore_fraction", sp.explore_fraction, "must be in (0, 1]")
    one_of("superposer.explore_growth", sp.explore_growth, {"auto", "random", "gradient"})
    one_of("superposer.averaging", sp.averaging, set(AVERAGING))
    require(0 <= sp.beta < 1, "superposer.beta", sp.beta, "must be in [0, 1)")
    one_of("superposer.reprune", sp.reprune, set(REPRUNE))
    one_of("superposer.bn", sp.bn, {"average", "recompute"})
    require(cfg.sparsity > 0, "sparsity", cfg.sparsity, "must be > 0 with superposer=sup_tickets")
