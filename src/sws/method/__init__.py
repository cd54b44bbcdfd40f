"""The method: one training loop (with or without the prior), post-processing, evaluation,
the composable surface for other loops, ``compress`` and the file writer."""
