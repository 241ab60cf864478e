"""The one place params.yaml is read and validated: `load_params()` turns it into frozen, typed dataclasses.

It rejects, with a one-line message naming the key and what is allowed: unknown keys, missing keys, wrong types,
values out of range, unknown names (sampler, network, schedule, trajectory, ...). The file itself must be UTF-8 YAML
whose document is a mapping, with no key given twice (the message names the line).

One idea per module:

- errors.py: ParamsError, and how a message shows a key and a value;
- reader.py: the strict YAML reader (params.yaml, claims.yaml and profiles);
- fields.py: the limits (MAX_*, INT64, NAME) and the checks of one field;
- sections.py, training.py, cells.py: the sections' frozen dataclasses, each checking its own fields;
- schema.py: `Params`, the whole file, and the cell lookup every sampling stage makes (`Params.cell`);
- convert.py: the parsed YAML into those dataclasses, key by key;
- checks.py: the rules between sections, each in one place;
- loader.py: `parse_params`, `load_params`; environment.py: what the params name outside the repository;
- validate.py (`python -m pipelines.params`): the DAG's `validate` stage, which also checks claims.yaml.

This package re-exports its public entry points only: `load_params`, `parse_params`, `Params` and `ParamsError`.
Everything else is imported from its module. Nothing here imports pipelines.stages.claims, pipelines.plumbing.restore or
pipelines.io, except validate.py, which no other module of the package imports.
"""

from pipelines.plumbing.errors import ParamsError
from pipelines.params.loader import load_params, parse_params
from pipelines.params.schema import Params

__all__ = ["Params", "ParamsError", "load_params", "parse_params"]
