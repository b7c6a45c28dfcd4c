"""The loop's callback protocol (:mod:`.protocol`) and the engine's own callbacks: the FLOP meter (every run) and
``report=best_val``."""
