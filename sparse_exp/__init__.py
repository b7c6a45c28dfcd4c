"""sparse_exp: a research framework for sparse neural network training.

Entry point: ``python -m sparse_exp.train`` (see README.md).
"""

__version__ = "0.1.0"
