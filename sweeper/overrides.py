"""Change a spec without copying it: `--set KEY=VALUE` and `--smoke`, applied to the spec's TOML table
before it is validated, so an override is checked exactly like the same key written in the file.

`--smoke` runs the same grid (every backbone, recipe, strategy, further axis and pretraining stage)
shrunk until it takes minutes on a laptop's CPU: 32 px, 2 folds (or the holdout), 2 trials per study,
2 epochs, 1 pretraining epoch, phantom data for every location not given (an external test set
without one: phantom films of other patients), a small batch and a checkpoint only at the end. `--set` is applied after it, so `--smoke --set train.epochs=3` works.
"""
from __future__ import annotations

import copy
import tomllib

from data_prep.settings import BuildSettings
from phantom.settings import PhantomSettings
from vocab.errors import CxrSweepError


def _fields(model, table: tuple[str, ...], **values) -> dict:
    """{(*table, field): value} for fields of `model` (a field renamed there fails here, at import, not in a
    smoke run that would stop on an unknown key)."""
    unknown = sorted(set(values) - set(model.model_fields))
    if unknown:
        raise AssertionError(f"SMOKE names {unknown}, not fields of {model.__name__}")
    return {(*table, field): value for field, value in values.items()}


SMOKE = {  # key path -> value; a spec's own [resources] are for the real cluster, not this machine
    **_fields(BuildSettings, ("data",), size=32, folds=2),
    ("search", "trials"): 2, ("train", "epochs"): 2,
    ("train", "batch_size"): 8, ("train", "checkpoint_every"): 2, ("asha", "grace_period"): 1,
    ("resources", "cpus_per_trial"): 1, ("resources", "gpus_per_trial"): 0, ("resources", "cpus_per_stage"): 1,
    ("resources", "gpus_per_stage"): 0,
    # at 60 patients the real shares leave labels without positives: 0.3 each
    **_fields(PhantomSettings, ("data", "phantom"), n_patients=60, source_patients=60, image_px=64, prevalence=0.3),
}
PHANTOM_KINDS = ("nih", "chexpert")  # the phantom sources data_prep can generate


class OverrideError(CxrSweepError, ValueError):
    """A --set that cannot be applied (not KEY=VALUE, or a key below a value that is not a table)."""


def parse_override(text: str) -> tuple[tuple[str, ...], object]:
    """'train.epochs=10' -> (("train", "epochs"), 10); the value is TOML (numbers, true, lists, quoted
    strings), or a bare string where it is not TOML (`data.target=phantom`)."""
    key, sep, value = text.partition("=")
    path = tuple(part.strip() for part in key.split("."))
    if not sep or not all(path):
        raise OverrideError(f"--set {text!r}: expected KEY=VALUE with a dotted key, e.g. --set train.epochs=10 or "
                            f"--set 'grid.backbone=[\"resnet50\"]'")
    try:
        return path, tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        return path, value.strip()


def _put(raw: dict, path: tuple[str, ...], value, shown: str) -> None:
    table = raw
    for depth, part in enumerate(path[:-1]):
        table = table.setdefault(part, {})
        if not isinstance(table, dict):
            raise OverrideError(f"--set {shown}: {'.'.join(path[:depth + 1])} is a value, not a table of keys")
    table[path[-1]] = value


def smoke(raw: dict, default_size: int) -> dict:
    """The spec's table shrunk for a smoke run (a new table; `raw` is left as it was); `default_size` is
    data.size where the spec leaves it out."""
    out = copy.deepcopy(raw)
    _shrink_input_sizes(out, SMOKE[("data", "size")] / out.get("data", {}).get("size", default_size))
    for path, value in SMOKE.items():
        if path[:2] == ("data", "folds") and out.get("data", {}).get("holdout"):
            continue  # a holdout is one fold already
        _put(out, path, value, "--smoke")
    out["name"] = f"{out.get('name', 'spec')}-smoke"
    out["smoke"] = True
    data = out.setdefault("data", {})
    if not data.get("target"):
        data["target"] = "phantom"
        data.pop("split", None)  # the phantom target has no official split of its own
    data["sources"] = {name: where or _phantom_for(name) for name, where in data.get("sources", {}).items()}
    for external in data.get("external", {}).values():
        if isinstance(external, dict) and not external.get("location"):  # films of other phantom patients, which
            external["location"] = "phantom:target"  # carry the target's own labels: no mapping
            external.pop("labels", None)
    for recipe in out.get("recipes", {}).values():
        if recipe.get("sources"):
            recipe["pretrain_epochs"] = 1
    if out.get("grid", {}).get("fold"):
        out["grid"]["fold"] = [f for f in out["grid"]["fold"] if f < 2] or [0]
    return out


def _shrink_input_sizes(raw: dict, ratio: float) -> None:
    """Scale every input_size (the [train] value, the grid axis and the exclude rules naming one) with the
    data: a 224 px input at data.size 256 becomes 28 px at the smoke run's 32."""
    scaled = (lambda side: max(16, round(side * ratio)) if isinstance(side, int) else side)
    if "input_size" in raw.get("train", {}):
        raw["train"]["input_size"] = scaled(raw["train"]["input_size"])
    grid = raw.get("grid", {})
    if isinstance(grid.get("input_size"), list):
        grid["input_size"] = [scaled(side) for side in grid["input_size"]]
    for rule in grid.get("exclude", []):
        if "input_size" in rule:
            rule["input_size"] = scaled(rule["input_size"])


def _phantom_for(source: str) -> str:
    """The phantom standing in for a source without a location: of its kind when it is named after one;
    else phantom NIH (a --data NAME=... given on the command line still wins)."""
    return f"phantom:{source if source in PHANTOM_KINDS else 'nih'}"


def apply(raw: dict, overrides: list[str], smoke_run: bool, default_size: int) -> dict:
    """`raw` after --smoke (if asked) and then each --set, in order."""
    out = smoke(raw, default_size) if smoke_run else raw
    for text in overrides:
        path, value = parse_override(text)
        _put(out, path, value, text)
    return out


def as_text(raw: dict) -> str:
    """The spec as it ran, for the DB: TOML again."""
    import tomli_w

    return tomli_w.dumps(raw)
