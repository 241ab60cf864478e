"""The trilemma table's columns: a row's settings (what was sampled) and its metrics (what was measured).

Kept apart from pipelines/table.py so that checking claims.yaml against them imports no pandas or matplotlib.
"""

SETTINGS = ("cell", "model", "sampler", "steps", "eta", "variance", "scale")
METRICS = ("nfe", "wall_s_per_1k", "wall_s_per_1k_iqr", "hq_fraction", "modes", "kl_uniform", "fid", "precision",
           "recall", "target_hit", "nll", "nll_se")
