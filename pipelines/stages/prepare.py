"""Stage `prepare`: write the train and held-out reference splits of the data set.

    python -m pipelines.stages.prepare <train.npz> <reference.npz>
"""

from __future__ import annotations

import dataclasses

from components.data.datasets import DATASETS, split_problem
from components.data.dataset import DataFileError
from pipelines.plumbing.entry import entry_point, stage_args
from pipelines.plumbing.errors import InputError
from pipelines.plumbing.loading import save_dataset
from pipelines.params import ParamsError, load_params
from pipelines.plumbing.tracking_spool import StageRun, log_stage_run


def main(argv: list[str]) -> None:
    train_path, reference_path = stage_args(argv, ("train.npz", "reference.npz"))
    p = load_params().data
    spec = DATASETS[p.name]
    try:
        splits = spec.build(p.n_train, p.n_reference, p.seed, **p.options())
    except DataFileError as e:  # a missing, truncated or malformed file: its message names it
        raise InputError(str(e)) from None
    except ValueError as e:  # sizes the data set cannot give (mnist holds 5,000 digits)
        raise ParamsError(f"params.yaml: data: {e}") from None
    for split, ds in splits.items():  # what every stage's loader will check, before anything is written
        problem = split_problem(ds, spec)
        if problem:
            raise ParamsError(f"params.yaml: data: its {split} split of {p.name} is unusable: {problem}")
    save_dataset(train_path, splits["train"])
    save_dataset(reference_path, splits["reference"])
    train = splits["train"]
    print(f"prepare: {p.name} train {train.x.shape} reference {splits['reference'].x.shape}, model scale "
          f"{train.scale:.6f}")
    log_stage_run(StageRun(
        "prepare", params={"data": dataclasses.asdict(p)},
        metrics={"n_train": len(train.x), "n_reference": len(splits["reference"].x), "model_scale": train.scale},
    ))


if __name__ == "__main__":
    entry_point(main)
