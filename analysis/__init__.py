"""Rebuild the Sup-tickets paper's Tables 1-7 and Figures 2-5 (Yin et al., UAI 2022) from logged runs.

    python -m sparse_exp.analysis --runs runs --out results [--compare-paper]
    python -m sparse_exp.analysis --source wandb --project ENTITY/PROJECT --out results
    make tables RUNS=runs OUT=results

Runs -> :mod:`.collect` (one DataFrame; completed runs only, one per run identity) -> :mod:`.tables`
(Tables 1-7, with :mod:`.selection`, :mod:`.table_model`, :mod:`.layouts`, :mod:`.render`,
:mod:`.status_report`, :mod:`.labels`), :mod:`.anymask` (the any-mask tables), :mod:`.regime` (table ``st_regime``),
:mod:`.paper_numbers` (the published numbers next to ours) and :mod:`.figures`.
This folder is the package ``sparse_exp.analysis`` (the link ``sparse_exp/analysis`` in a checkout, a copy in
a wheel); its modules import each other relatively, so ``python -m analysis`` in a checkout runs the same code.
"""

from .collect import Collection, collect, collect_local, collect_wandb

__all__ = ["Collection", "collect", "collect_local", "collect_wandb"]
