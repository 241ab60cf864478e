"""Stage `evaluator`: the feature extractor every row is scored with, once per data set.

    python -m pipelines.stages.evaluator <train.npz> <reference.npz> <evaluator.pt> <evaluator.json>

By params `evaluate.features`:
- `identity` (points): nothing to train; the file says so.
- `lenet` (digits): a LeNet-like classifier (components/scoring/evaluator.py) trained on the train split's digits, one
  channel at a time (a StackedMNIST stack is three digits), with the shared loop, EMA and resume checkpoints;
  its held-out accuracy on the reference split's digits goes to `evaluator.json`. Its penultimate features drive
  FID, KID and precision/recall, its logits the classifier score.
- `inception` (CIFAR-10): torch-fidelity's Inception weights, read from the local file `evaluate.weights`
  (torch.load with weights_only=True; a missing or unreadable file stops here in one line).

`evaluator.pt` holds the extractor's kind, weights and config; stage `reference` saves them with the reference
split's statistics, so every sample stage scores with exactly these weights. The digit classifier trains as params
runtime.processes torchrun ranks where that is more than one (rank 0 alone measures and writes); the other
extractors train nothing and run in one process.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from components.data.dataset import Dataset
from components.data.digits import decode_stacked_label
from components.training.state import TrainState
from pipelines.plumbing.atomic import atomic_torch_save, atomic_write_json
from pipelines.plumbing.distributed import stage_replicas
from pipelines.plumbing.entry import entry_point, stage_args
from pipelines.plumbing.errors import InputError
from pipelines.plumbing.loading import load_dataset
from pipelines.params import load_params
from pipelines.params.sections import EvaluateParams
from pipelines.plumbing.runtime import stage_runtime
from pipelines.plumbing.tracking_spool import StageRun, log_stage_run
from pipelines.stages.trainer import TrainRun


def digit_rows(ds: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Every channel of the split as a digit of its own: x (N C, 1, H, W) in model space and its label (N C,)."""
    x = torch.from_numpy(ds.to_model(ds.x))  # (N, C, H, W)
    c = x.shape[1]
    digits = np.stack(decode_stacked_label(ds.y), axis=1) if c == 3 else ds.y[:, None]  # (N, C)
    return x.reshape(-1, 1, *x.shape[2:]), torch.from_numpy(digits.reshape(-1))


def train_lenet(e: EvaluateParams, train: Dataset, ref: Dataset, ckpt_path: str) -> tuple[dict, dict] | None:
    """Train the digit classifier; (its weights and config, metrics: held-out accuracy, size, time), or None on a
    torchrun rank other than 0, which writes nothing."""
    # lazily: components.scoring.evaluator imports torch-fidelity (about a second, more on a loaded machine), which the toy
    # data's `identity` extractor never needs
    from components.scoring.evaluator import LeNet, accuracy, evaluator_train_step

    p = e.train
    rt = stage_runtime()
    x, y = (t.to(rt.device) for t in digit_rows(train))
    x_ref, y_ref = (t.to(rt.device) for t in digit_rows(ref))
    config = {"in_channels": 1, "n_classes": 10, "features": p.features}
    run_config = {"net": config, "train": dataclasses.asdict(p), "data": {"n": len(x)}}
    torch.manual_seed(p.seed)  # network initialisation
    net = LeNet(**config).to(rt.device)
    state = TrainState.create(net, p.lr, p.seed, rt=rt, replicas=stage_replicas())
    run = TrainRun("evaluator", state, run_config, ckpt_path, logged=("loss", "accuracy"))
    train_s, steps_per_s = run.train(
        p, lambda lr: evaluator_train_step(state, x, y, batch_size=p.batch_size, lr=lr, grad_clip=p.grad_clip,
                                           ema_decay=p.ema_decay, augment=p.augment))
    if not run.leader:
        return None
    weights = {k: v.detach().cpu() for k, v in state.ema.state_dict().items()}
    metrics = {"accuracy": accuracy(state.ema, x_ref, y_ref), "train_accuracy": accuracy(state.ema, x, y),
               "n_params": sum(t.numel() for t in net.parameters()), "train_s": train_s, "steps_per_s": steps_per_s,
               "final_loss": run.history["loss"][-1]}
    run.finish()
    return {"weights": weights, "config": config}, metrics


def main(argv: list[str]) -> None:
    train_path, ref_path, ckpt_path, json_path = stage_args(
        argv, ("train.npz", "reference.npz", "evaluator.pt", "evaluator.json"))
    params = load_params()
    e = params.evaluate
    metrics: dict = {}
    train, ref = load_dataset(train_path, params.data.name), load_dataset(ref_path, params.data.name)  # checked always
    if e.features != "lenet" and not stage_replicas().leader:
        return  # under a user's own torchrun: nothing trains, rank 0 writes
    if e.features == "identity":
        out = {"weights": {}, "config": {}}
    elif e.features == "inception":
        from components.scoring.evaluator import inception_from_state, load_weights, weights_digest  # lazily: torch-fidelity

        try:
            weights = load_weights(e.weights)
            inception_from_state(weights)  # the weights fit torch-fidelity's InceptionV3
        except (OSError, ValueError) as err:
            raise InputError(f"evaluate.weights: {err}") from None
        out = {"weights": weights, "config": {}}
        metrics["weights_sha256"] = weights_digest(weights)[:8]
    else:
        trained = train_lenet(e, train, ref, ckpt_path)
        if trained is None:
            return  # a torchrun rank other than 0: rank 0 writes the outputs
        out, metrics = trained
    atomic_torch_save(ckpt_path, {"kind": e.features, **out})
    atomic_write_json(json_path, metrics)  # a DVC metric: numbers only (the kind is in evaluator.pt and params)
    print(f"evaluator: {e.features}" + "".join(f", {k} {v:.4g}" if isinstance(v, float) else f", {k} {v}"
                                               for k, v in metrics.items()))
    log_stage_run(StageRun("evaluator", params={"evaluate": dataclasses.asdict(e)},
                           metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                           tags={"extractor": e.features}))


def trained_checkpoint(argv: list[str]) -> str | None:
    """The digit classifier's checkpoint (its resume checkpoint beside it), or None where the extractor trains
    nothing (identity, inception): the stage then runs in one process."""
    return argv[2] if len(argv) > 2 and load_params().evaluate.features == "lenet" else None


if __name__ == "__main__":
    entry_point(main, checkpoint=trained_checkpoint)
