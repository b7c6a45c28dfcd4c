"""The sparse-training core: masks, layer-wise distributions, sparsifiers (and later superposers)."""
