"""Orchestration: the command line, the Hydra callback, sweepers and launchers, one job's pipeline, validation, re-prune and task losses.

Imports everything else; nothing imports it but the entry points."""
