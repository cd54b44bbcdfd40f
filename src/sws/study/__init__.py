"""Studies: hyper-parameter search, the baselines and Table 1."""
