"""Stage `train_classifier`: the noise-aware classifier p_phi(y | x_t, t) of classifier guidance (ADM §4.1).

    python -m pipelines.stages.train_classifier <train.npz> <reference.npz> <classifier.pt> <loss.csv> <loss.png> \
        <accuracy.csv> <accuracy.png>

Cross-entropy on x_t = q_sample(x0, t), t ~ U{0..T-1}, on params `diffusion`'s schedule (the one
train_ddpm uses; sample_guided checks that the two checkpoints agree), with AdamW, LR schedule,
EMA and resume checkpoints as in the other trainers. At the end the EMA classifier's accuracy on
the held-out reference split is measured in `accuracy_buckets` equal t-ranges: near 1 at small
t, falling to chance (1/K) near T. For a Gaussian mixture the Bayes-optimal classifier, the
exact p(y | x_t), is scored the same way: the ceiling for each range. Several torchrun ranks (params
runtime.processes) train as in train_ddpm; rank 0 alone measures and writes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from components.data.datasets import DATASETS
from components.data.gaussian_mixture import mixture_classifier
from components.networks.mlp import make_classifier
from components.math.schedules import make_schedule
from components.training.state import TrainState
from components.training.steps import accuracy_by_t, classifier_train_step
from pipelines.plumbing.atomic import atomic_save_figure, atomic_write_text
from pipelines.plumbing.distributed import stage_replicas
from pipelines.plumbing.entry import entry_point, stage_args
from pipelines.plumbing.loading import load_dataset
from pipelines.params import load_params
from pipelines.plots.training import accuracy_by_t_figure
from pipelines.plumbing.runtime import stage_runtime
from pipelines.plumbing.tracking_spool import StageRun, log_stage_run
from pipelines.stages.trainer import TrainRun, scratch_config, write_history


def main(argv: list[str]) -> None:
    train_path, ref_path, ckpt_path, csv_path, png_path, acc_csv, acc_png = stage_args(
        argv, ("train.npz", "reference.npz", "classifier.pt", "loss.csv", "loss.png", "accuracy.csv", "accuracy.png"))
    params = load_params()
    p, diff = params.train_classifier, params.diffusion
    ds, ref = load_dataset(train_path, params.data.name), load_dataset(ref_path, params.data.name)
    rt = stage_runtime(params)
    data, labels = torch.from_numpy(ds.to_model(ds.x)).to(rt.device), torch.from_numpy(ds.y).to(rt.device)
    config = scratch_config(p, dataclasses.asdict(diff), ds, n_classes=ds.n_classes, device=rt.device.type)
    sched = make_schedule(diff.schedule, diff.T)
    torch.manual_seed(p.seed)  # network initialisation
    net = make_classifier(p.network.name, tuple(data.shape[1:]), ds.n_classes, **p.network.kwargs)
    state = TrainState.create(net, p.lr, p.seed, weight_decay=p.weight_decay, rt=rt, replicas=stage_replicas())
    run = TrainRun("train_classifier", state, config, ckpt_path, logged=("loss", "accuracy"))
    history = run.history
    train_s, steps_per_s = run.train(
        p, lambda lr: classifier_train_step(state, sched, data, labels, batch_size=p.batch_size, lr=lr,
                                            grad_clip=p.grad_clip, ema_decay=p.ema_decay))
    if not run.leader:
        return  # rank 0 measures and writes the outputs

    # Held-out accuracy by t-range, the EMA classifier against the Bayes-optimal one (same x0, t and noise).
    x_ref, y_ref = torch.from_numpy(ref.to_model(ref.x)).to(rt.device), torch.from_numpy(ref.y).to(rt.device)
    edges, acc = accuracy_by_t(state.ema, sched, x_ref, y_ref, p.accuracy_buckets,
                               torch.Generator(rt.device).manual_seed(p.seed))
    curves = {"accuracy": acc, "chance": np.full(len(acc), 1 / ds.n_classes)}
    if DATASETS[params.data.name].mixture:
        exact = mixture_classifier(sched, ref.to_model(ref.modes), ref.mode_std * ref.scale)
        curves["bayes_accuracy"] = accuracy_by_t(exact, sched, x_ref, y_ref, p.accuracy_buckets,
                                                 torch.Generator(rt.device).manual_seed(p.seed))[1]
    mid = (edges[:-1] + edges[1:] - 1) / 2

    run.save(ckpt_path)
    write_history(csv_path, png_path, history, "train_classifier: cross-entropy and accuracy over t ~ U[0, T), "
                                               "mean per log_every steps")
    rows = [f"{lo},{hi},{m:g}," + ",".join(f"{c[i]:.6f}" for c in curves.values())
            for i, (lo, hi, m) in enumerate(zip(edges[:-1], edges[1:], mid))]
    atomic_write_text(acc_csv, "t_lo,t_hi,t_mid," + ",".join(curves) + "\n" + "\n".join(rows) + "\n")
    atomic_save_figure(acc_png, accuracy_by_t_figure(edges, curves, diff.T))
    n_params = sum(x.numel() for x in net.parameters())
    print("train_classifier: held-out accuracy by t-range: " + ", ".join(
        f"[{lo}, {hi}): {a:.3f}" + (f" (Bayes {curves['bayes_accuracy'][i]:.3f})" if "bayes_accuracy" in curves else "")
        for i, (lo, hi, a) in enumerate(zip(edges[:-1], edges[1:], acc))))
    print(f"train_classifier: {p.steps} steps, final loss {history['loss'][-1]:.4f}, {n_params} parameters, "
          f"{train_s:.1f} s in this run ({steps_per_s:.1f} steps/s)")
    log_stage_run(StageRun(
        "train_classifier", params={"diffusion": dataclasses.asdict(diff), "train_classifier": dataclasses.asdict(p)},
        metrics={"final_loss": history["loss"][-1], "n_params": n_params, "train_s": train_s,
                 "steps_per_s": steps_per_s, "accuracy_first_bucket": float(acc[0]), "accuracy_last_bucket": float(acc[-1])},
        series={**{k: list(zip(history["step"], history[k])) for k in ("loss", "accuracy", "lr")},
                **{f"{k}_by_t": list(zip(mid.astype(int).tolist(), v.tolist())) for k, v in curves.items()}},
        artifacts=[Path(csv_path), Path(png_path), Path(acc_csv), Path(acc_png)],
    ))
    run.finish()


if __name__ == "__main__":
    entry_point(main, checkpoint=lambda argv: argv[2])
