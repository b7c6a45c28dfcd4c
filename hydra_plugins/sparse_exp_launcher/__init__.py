"""``hydra/launcher=slurm``: hydra-submitit-launcher's SLURM launcher plus ``runs_per_gpu``
(see :mod:`hydra_plugins.sparse_exp_launcher.sparse_exp_launcher`)."""
