"""The trilemma table's columns: a row's settings (what was sampled) and its metrics (what was measured).

Kept apart from pipelines/stages/table.py so that checking claims.yaml against them imports no pandas or matplotlib.
"""

# n: samples scored; extractor: the features FID, KID and precision/recall compare (its name and a short hash of its
# weights)
SETTINGS = ("cell", "data", "model", "sampler", "steps", "trajectory", "eta", "variance", "scale", "condition", "n",
            "extractor")
METRICS = ("nfe", "wall_s_per_1k", "wall_s_per_1k_iqr", "hq_fraction", "modes", "kl_uniform", "label_modes",
           "label_kl", "arc_coverage", "fid",
           "kid", "kid_std", "precision", "recall", "classifier_score", "target_hit", "cond_hq", "cond_tv",
           "inpaint_accuracy", "inpaint_mse", "nll", "nll_se", "k_bits", "k_minus_null_bits")
