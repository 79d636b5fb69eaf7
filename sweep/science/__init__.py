"""The job's science: tokens and batches, the tokenizer, the model, weight sparsity, training, collapse instruments, checkpoints.

Imports only the top-level contract modules of `sweep` (names, errors, paths, points, corpus, lifecycle)."""
