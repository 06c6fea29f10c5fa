"""Make sure every data set a spec needs exists as a prepared data set (through data_prep).

'phantom' / 'phantom:KIND' entries are generated (once, cached under the sweep home) and
built; anything else must be the path of a prepared data set.
"""
from __future__ import annotations

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


def _phantom(kind: str, spec: SweepSpec, home: Path, seed_offset: int, log) -> Path:
    if kind not in PHANTOM_SETS:
        raise SpecError(f"phantom set {kind!r} does not exist; expected one of {sorted(PHANTOM_SETS)}")
    p = spec.data.phantom
    raw = home / "phantom" / f"{kind}-n{p.n_patients}-px{p.image_px}-p{p.prevalence}-seed{p.seed + seed_offset}"
    table = raw / TABLES[kind]
    if not table.is_file():
        log(f"[sweeper] generating phantom {kind} set ({p.n_patients} patients) in {raw}")
        make_phantom_set(raw, kind=kind, n_patients=p.n_patients, size=p.image_px, seed=p.seed + seed_offset,
                         prevalence=None if p.prevalence == "real" else p.prevalence)
    params = BuildParams(size=spec.data.size, folds=spec.data.folds, seed=spec.train.seed,
                         source=PHANTOM_SOURCE_OPTIONS[kind])
    return build(raw / IMAGE_ROOTS[kind], table, home / "prepared", params, name=f"phantom_{kind}", log=log)


def _resolve(location: str, key: str, spec: SweepSpec, home: Path, seed_offset: int, log) -> Path:
    if location == PHANTOM or location.startswith(PHANTOM + ":"):
        return _phantom(location.partition(":")[2] or "target", spec, home, seed_offset, log)
    path = Path(location).expanduser()
    if not (path / "manifest.json").is_file():
        raise SpecError(f"{key} = {location!r}: not a prepared data set (no manifest.json); "
                        f"build one with python -m data_prep.build, or use 'phantom'")
    prepared = PreparedDataset(path)
    if prepared.manifest["size"] != spec.data.size:
        raise SpecError(f"{key} = {location!r}: images are {prepared.manifest['size']} px but data.size is "
                        f"{spec.data.size}")
    if key == "data.target" and prepared.num_folds != spec.data.folds:
        raise SpecError(f"{key} = {location!r}: built with {prepared.num_folds} folds but data.folds is "
                        f"{spec.data.folds}")
    return path


def ensure_datasets(spec: SweepSpec, home: Path, log=print) -> dict[str, Path]:
    """{"target": path, <source name>: path, ...} for the sources the grid's recipes use."""
    paths = {"target": _resolve(spec.data.target, "data.target", spec, home, 0, log)}
    used = {s for r in spec.grid.recipe for s in spec.recipes[r].sources}
    for offset, name in enumerate(sorted(used), start=1):
        paths[name] = _resolve(spec.data.sources[name], f"data.sources.{name}", spec, home, offset, log)
    return paths
