"""The config: composition from ``conf/`` and the schemas, validation, one-line refusals, run identity, ``--help``."""
