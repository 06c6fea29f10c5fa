"""Make sure every data set a spec needs exists as a prepared data set (through data_prep).

A data set's location comes from `--data NAME=LOCATION`, else the environment variable
CXR_SWEEP_DATA_<NAME>, else the spec; a spec that names real data leaves it empty (""), so
no path is ever hard-coded. 'phantom' / 'phantom:KIND' locations are generated (once,
cached under the sweep home) and built; anything else must be a prepared data set's path.
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from data_prep.build import BuildParams, build
from data_prep.dataset import PreparedDataset
from data_prep.labels import SourceOptions
from data_prep.phantom import IMAGE_ROOTS, PHANTOM_SETS, TABLES, make_phantom_set
from sweeper.spec import PHANTOM, SpecError, SweepSpec


PHANTOM_SOURCE_OPTIONS = {
    "target": SourceOptions(kind="target"),
    "nih": SourceOptions(kind="nih", nih_preset="none"),  # a small set: no undersampling
    "chexpert": SourceOptions(kind="chexpert", policy="u_ones"),
}


def _phantom(kind: str, spec: SweepSpec, home: Path, seed_offset: int, log, is_target: bool) -> Path:
    if kind not in PHANTOM_SETS:
        raise SpecError(f"phantom set {kind!r} does not exist; expected one of {sorted(PHANTOM_SETS)}")
    p = spec.data.phantom
    raw = home / "phantom" / f"{kind}-n{p.n_patients}-px{p.image_px}-p{p.prevalence}-seed{p.seed + seed_offset}"
    table = raw / TABLES[kind]
    if not table.is_file():
        log(f"[sweeper] generating phantom {kind} set ({p.n_patients} patients) in {raw}")
        make_phantom_set(raw, kind=kind, n_patients=p.n_patients, size=p.image_px, seed=p.seed + seed_offset,
                         prevalence=None if p.prevalence == "real" else p.prevalence)
    source = PHANTOM_SOURCE_OPTIONS[kind]
    if kind == "chexpert":
        source = replace(source, policy=spec.data.chexpert_policy)
    params = BuildParams(size=spec.data.size, folds=spec.data.folds, seed=spec.train.seed, source=source,
                         holdout=spec.data.holdout_fractions if is_target else None)
    return build(raw / IMAGE_ROOTS[kind], table, home / "prepared", params, name=f"phantom_{kind}", log=log)


def _check_built_as_specified(prepared: PreparedDataset, where: str, is_target: bool, spec: SweepSpec) -> None:
    """A prepared set must have the spec's size, CheXpert policy and (target) folds or holdout split."""
    params = prepared.manifest["params"]
    if prepared.manifest["size"] != spec.data.size:
        raise SpecError(f"{where}: images are {prepared.manifest['size']} px but data.size is {spec.data.size}")
    policy = params.get("source", {}).get("policy")
    if params.get("source", {}).get("kind") == "chexpert" and policy != spec.data.chexpert_policy:
        raise SpecError(f"{where}: CheXpert built with uncertainty policy {policy!r} but data.chexpert_policy is "
                        f"{spec.data.chexpert_policy!r}; rebuild it with python -m data_prep.build ... "
                        f"--policy {spec.data.chexpert_policy}, or change the spec")
    if not is_target:
        return
    if spec.data.holdout:
        if params.get("holdout") != list(spec.data.holdout_fractions):
            built = f"holdout {params['holdout']}" if params.get("holdout") else f"{prepared.num_folds} folds"
            wanted = "/".join(f"{v:g}" for v in spec.data.holdout)
            raise SpecError(f"{where}: built with {built} but data.holdout is {spec.data.holdout}; build it with "
                            f"python -m data_prep.build ... --holdout {wanted}")
    elif prepared.num_folds != spec.data.folds or prepared.is_holdout:
        raise SpecError(f"{where}: built with {prepared.num_folds} folds but data.folds is {spec.data.folds}")


def _resolve(location: str, key: str, spec: SweepSpec, home: Path, seed_offset: int, log) -> Path:
    if location == PHANTOM or location.startswith(PHANTOM + ":"):
        return _phantom(location.partition(":")[2] or "target", spec, home, seed_offset, log, key == "data.target")
    path = Path(location).expanduser()
    if not (path / "manifest.json").is_file():
        raise SpecError(f"{key} = {location!r}: not a prepared data set (no manifest.json); "
                        f"build one with python -m data_prep.build, or use 'phantom'")
    _check_built_as_specified(PreparedDataset(path), f"{key} = {location!r}", key == "data.target", spec)
    return path


ENV_PREFIX = "CXR_SWEEP_DATA_"


def env_name(name: str) -> str:
    return ENV_PREFIX + "".join(c if c.isalnum() else "_" for c in name.upper())


def locations(spec: SweepSpec, given: dict[str, str] | None = None, environ=None) -> dict[str, str]:
    """{"target": location, <source>: location} for what the grid uses; every missing one is reported."""
    environ = os.environ if environ is None else environ
    given = dict(given or {})
    used = sorted({s for r in spec.grid.recipe for s in spec.recipes[r].sources})
    known = {"target": spec.data.target, **{name: spec.data.sources[name] for name in used}}
    unknown = sorted(set(given) - {"target", *spec.data.sources})
    if unknown:
        raise SpecError(f"--data {unknown[0]}=...: {spec.name!r} has no data set {unknown[0]!r}; "
                        f"its data sets: {['target', *sorted(spec.data.sources)]}")
    found = {name: given.get(name) or environ.get(env_name(name)) or location for name, location in known.items()}
    missing = [name for name, location in found.items() if not location]
    if missing:
        raise SpecError("no location for " + "; ".join(
            f"data set {name!r}: pass --data {name}=PATH (a prepared data set, see data_prep.build) or set "
            f"{env_name(name)}" for name in missing)
            + f" (or --data NAME=phantom:KIND to try {spec.name!r} on phantom data)")
    return found


def ensure_datasets(spec: SweepSpec, home: Path, log=print, given: dict[str, str] | None = None) -> dict[str, Path]:
    """{"target": path, <source name>: path, ...} for the sources the grid's recipes use."""
    found = locations(spec, given)
    paths = {"target": _resolve(found["target"], "data.target", spec, home, 0, log)}
    for offset, name in enumerate(sorted(set(found) - {"target"}), start=1):
        paths[name] = _resolve(found[name], f"data.sources.{name}", spec, home, offset, log)
    return paths
