"""Rebuild the Sup-tickets paper's Tables 1-7 and Figures 2-5 from logged runs.

    python -m analysis --runs runs --out results [--compare-paper]
    python -m analysis --source wandb --project ENTITY/PROJECT --out results
    make tables RUNS=runs OUT=results

* :mod:`analysis.collect` -- runs (local run directories or a W&B project) -> one DataFrame;
  only completed runs count, one per run identity (the latest completed copy).
* :mod:`analysis.tables` -- Tables 1-7 in the paper's layout (mean ± std over seeds), Markdown
  and LaTeX; the module docstring documents how runs map to rows and columns. Its parts:
  :mod:`analysis.selection` (run filters, the mean ± std cell statistic), :mod:`analysis.table_model`
  (table and cell dataclasses), :mod:`analysis.layouts` (the seven layouts, ``BUILDERS``),
  :mod:`analysis.render` (Markdown, LaTeX, bold), :mod:`analysis.report` (``status.md``),
  :mod:`analysis.labels` (the paper's names and number formats).
* :mod:`analysis.anymask` -- the any-mask tables (Jaiswal et al., ICML 2022): ``anymask`` (static
  masks × tweaks) and ``anymask_dst`` (RigL / GraNet / SET ± Sup-tickets ± the tweaks), written only
  where such runs exist; the Sup-tickets tables never count a tweaked or ``report=best_val`` run.
* :mod:`analysis.paper_numbers` -- the published numbers (``paper_numbers.csv``) next to ours.
* :mod:`analysis.figures` -- Figures 2-5 as PNG and PDF, reproducible byte for byte.
"""

from analysis.collect import Collection, collect, collect_local, collect_wandb

__all__ = ["Collection", "collect", "collect_local", "collect_wandb"]
