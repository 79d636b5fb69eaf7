"""Circuits: the task suite, circuit discovery (the methods and the shared discretisation), edges, drawings, the pruning stage.

Imports `sweep.science` and the top-level contract modules."""
