"""Analysis of a sweep: MLflow runs -> tidy tables -> Pareto frontier, collapse labels, paper figures.

Reads only MLflow (or the CSV tables it wrote); never imports training code. Stages, one module
each: `load` (MLflow -> runs/tasks tables), `frontier` (seed aggregation, Pareto sets,
hypervolume), `collapse` (the normal/collapse rule), `figures`, `latex`, and `report` (the
`frontier` command that ties them together).
"""
