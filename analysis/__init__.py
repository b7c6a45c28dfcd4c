"""Rebuild the Sup-tickets paper's Tables 1-7 and Figures 2-5 from logged runs.

    python -m sparse_exp.analysis --runs runs --out results [--compare-paper]
    python -m sparse_exp.analysis --source wandb --project ENTITY/PROJECT --out results
    make tables RUNS=runs OUT=results

* :mod:`sparse_exp.analysis.collect` -- runs (local run directories or a W&B project) -> one DataFrame;
  only completed runs count, one per run identity (the latest completed copy).
* :mod:`sparse_exp.analysis.tables` -- Tables 1-7 in the paper's layout (mean ± std over seeds), Markdown
  and LaTeX; the module docstring documents how runs map to rows and columns. Its parts:
  :mod:`sparse_exp.analysis.selection` (run filters, the mean ± std cell statistic), :mod:`sparse_exp.analysis.table_model`
  (table and cell dataclasses), :mod:`sparse_exp.analysis.layouts` (the seven layouts, ``BUILDERS``),
  :mod:`sparse_exp.analysis.render` (Markdown, LaTeX, bold), :mod:`sparse_exp.analysis.status_report` (``status.md``),
  :mod:`sparse_exp.analysis.labels` (the paper's names and number formats).
* :mod:`sparse_exp.analysis.anymask` -- the any-mask tables (Jaiswal et al., ICML 2022): ``anymask`` (static
  masks × tweaks) and ``anymask_dst`` (RigL / GraNet / SET ± Sup-tickets ± the tweaks), written only
  where such runs exist; the Sup-tickets tables never count a tweaked or ``report=best_val`` run.
* :mod:`sparse_exp.analysis.paper_numbers` -- the published numbers (``paper_numbers.csv``) next to ours.
* :mod:`sparse_exp.analysis.figures` -- Figures 2-5 as PNG and PDF, reproducible byte for byte.

This folder is the package ``sparse_exp.analysis``: in a checkout through the link ``sparse_exp/analysis``,
in a wheel as a copy (docs/install.md). Its modules import each other relatively, so the checkout's old
``python -m analysis`` still runs the same code.
"""

from .collect import Collection, collect, collect_local, collect_wandb

__all__ = ["Collection", "collect", "collect_local", "collect_wandb"]
