"""Make sure every data set a spec needs exists as a prepared data set (through data_prep).

A data set's location comes from `--data NAME=LOCATION`, else the environment variable
CXR_SWEEP_DATA_<NAME>, else the spec; a spec that names real data leaves it empty (""), so
no path is ever hard-coded. A location is one of:
- a prepared data set's path (checked against the spec's size, uncertainty policy and, for the target, its
  folds or split and seed);
- `KIND:FOLDER` (KIND: any of data_prep.sources.KINDS): a raw source, built through data_prep with the
  spec's [data] and [data.prepare.NAME] settings into HOME/prepared; content-addressed, so an
  unchanged source is reused (its images are still hashed to know that);
- `phantom` / `phantom:KIND`: generated (once, cached under the sweep home) and built.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pandas as pd
from filelock import FileLock

from data_prep.build import build, locate_listed
from data_prep.locate import locate
from data_prep.dataset import PreparedDataset
from data_prep.errors import DataPrepError
from data_prep.settings import BuildSettings
from data_prep.sources import KINDS, SourceOptions, label_table
from phantom.generate import IMAGE_ROOTS, PHANTOM_SETS, PSEUDONYM_KEY, TABLES, make_phantom_set
from phantom.settings import PhantomSettings
from sweeper.spec import PHANTOM, Prepare, SpecError, SweepSpec


def _params(spec: SweepSpec, name: str, kind: str, is_target: bool) -> BuildSettings:
    """How data set `name` of kind `kind` is built: [data] and [data.prepare.NAME]."""
    how = spec.data.prepare.get(name, Prepare())
    return spec.data.settings(how, how.source(kind, spec.data, f"data.prepare.{name}"), is_target)


# A phantom set's folder under HOME/phantom is named by the settings it is generated with: these always (as every
# folder was named before the other settings existed), any other setting where it is not its default. A setting
# added to PhantomSettings is in the name as soon as a spec changes it, so a set generated otherwise is never reused.
NAMED = {"n_patients": "n", "image_px": "px", "prevalence": "p", "seed": "seed"}
SHORT = {"label_noise": "noise"}  # the other settings go by their field names


def phantom_folder(kind: str, settings: PhantomSettings) -> str:
    """`settings` of one set (PhantomSettings.of_set) as its cache folder's name, e.g. target-n120-px128-p0.3-seed0."""
    values, defaults = settings.model_dump(), PhantomSettings().model_dump()
    shown = lambda value: "-".join(map(str, value)) if isinstance(value, tuple) else str(value)  # noqa: E731
    named = [f"{short}{shown(values[field])}" for field, short in NAMED.items()]
    named += [f"{SHORT.get(field, field)}{shown(value)}" for field, value in values.items()
              if field not in NAMED and value != defaults[field]]
    return "-".join([kind, *named])


def _phantom(kind: str, name: str, spec: SweepSpec, home: Path, seed_offset: int, log, is_target: bool) -> Path:
    if kind not in PHANTOM_SETS:
        raise SpecError(f"phantom set {kind!r} does not exist; expected one of {sorted(PHANTOM_SETS)}")
    settings = spec.data.phantom.of_set(kind, seed_offset)
    raw = home / "phantom" / phantom_folder(kind, settings)
    with FileLock(raw.with_name(f".{raw.name}.lock")):  # two drivers sharing a home: one generates, the other waits
        if not (raw / TABLES[kind]).is_file():
            log(f"[sweeper] generating phantom {kind} set ({settings.n_patients} patients) in {raw}")
            work = raw.with_name(f".{raw.name}.partial")
            for stale in (work, raw):  # left by a generation that was killed
                shutil.rmtree(stale, ignore_errors=True)
            make_phantom_set(work, kind, settings)
            os.replace(work, raw)  # atomic: a half-written set is never seen (its table paths are relative)
    return build(raw / IMAGE_ROOTS[kind], raw / TABLES[kind], home / "prepared", _params(spec, name, kind, is_target),
                 name=f"phantom_{kind}", key=PSEUDONYM_KEY, log=log)


TARGET_TABLE = "labels.csv"  # a raw target folder's table (a phantom target's too); public sources: data_prep's


def raw_table(kind: str, location: str, key: str, source: SourceOptions) -> Path:
    """The label table of a raw source, as data_prep resolves the file or downloaded folder given
    (data_prep.sources.label_table); a target folder's is its labels.csv."""
    path = Path(location).expanduser()
    if not path.exists():
        raise SpecError(f"{key} = '{kind}:{location}': {path} does not exist")
    if kind == "target" and path.is_dir():
        path = path / TARGET_TABLE
        if not path.is_file():
            raise SpecError(f"{key} = '{kind}:{location}': no {TARGET_TABLE} in {path.parent}; put the target's "
                            f"label table there, or give the table itself as {kind}:PATH/TO/TABLE.csv")
    try:
        return label_table(path, source)
    except DataPrepError as exc:
        raise SpecError(f"{key} = '{kind}:{location}': {exc}") from None


def raw_image_root(kind: str, location: str, table: Path, key: str) -> Path:
    """The folder the listed images are found under: for a public source the folder the user downloaded
    (data_prep.locate finds each image in any of its published layouts); for a target, the folder its
    paths are relative to: the table's own, its `images/`, or its parent's."""
    given = Path(location).expanduser()
    try:
        header = pd.read_csv(table, nrows=1, dtype=str)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SpecError(f"{key}: {table} cannot be read as a CSV ({exc})") from None
    if kind != "target" or "file" not in header.columns:  # or images named by UID: found by their headers
        return given if given.is_dir() else table.parent
    files = pd.read_csv(table, usecols=["file"], dtype=str, keep_default_na=False, nrows=100)["file"].tolist()
    candidates = [root for root in (table.parent, table.parent / "images", table.parent.parent) if root.is_dir()]
    found = [len(files) - len(locate("target", root, files).missing) for root in candidates]
    if max(found, default=0) > 0:  # the folder that holds most of the first rows' images (as data_prep finds them)
        return candidates[found.index(max(found))]
    # named by row and column, not by its file name, which can carry a patient identifier (docs/design.md §3.5)
    raise SpecError(f"{key}: none of the first {len(files)} images of {table} (column 'file') is in "
                    f"{', '.join(str(c) for c in candidates)}; put the images beside the table or in images/")


def raw_source(kind: str, location: str, key: str, source: SourceOptions) -> tuple[Path, Path]:
    """(label table, image folder) of a raw `KIND:FOLDER` location."""
    table = raw_table(kind, location, key, source)
    return table, raw_image_root(kind, location, table, key)


def _raw(kind: str, location: str, name: str, key: str, spec: SweepSpec, home: Path, log) -> Path:
    params = _params(spec, name, kind, key == "data.target")
    table, root = raw_source(kind, location, key, params.source)
    log(f"[sweeper] preparing {key} from raw {kind} source {table} (reused when inputs and settings are unchanged)")
    return build(root, table, home / "prepared", params, name=name, log=log)


def raw_images(spec: SweepSpec, name: str, kind: str, location: str,
               check: bool = False) -> tuple[int, int, Path]:
    """(images found, images listed, label table) of a raw `KIND:FOLDER` location, read as its build will read
    it; with `check`, DataPrepError where its build would stop (more than 1% missing, allow_missing off)."""
    key = data_key(name)
    params = _params(spec, name, kind, key == "data.target")
    table, root = raw_source(kind, location, key, params.source)
    _, located = locate_listed(root, table, params.source, allow_missing=params.allow_missing or not check,
                               split=params.split)
    return len(located.paths) - len(located.missing), len(located.paths), table


def _check_built_as_specified(prepared: PreparedDataset, where: str, is_target: bool, spec: SweepSpec) -> None:
    """A prepared set must have the spec's size, uncertainty policy and (target) folds or holdout split and the
    seed they were drawn with."""
    params = prepared.manifest["params"]
    if prepared.manifest["size"] != spec.data.size:
        raise SpecError(f"{where}: images are {prepared.manifest['size']} px but data.size is {spec.data.size}")
    source = params.get("source", {})  # its kind's options as built: a policy there iff the kind has one
    if "policy" in source and source["policy"] != spec.data.chexpert_policy:
        raise SpecError(f"{where}: {source['kind']} set built with uncertainty policy {source['policy']!r} but "
                        f"data.chexpert_policy is {spec.data.chexpert_policy!r}; rebuild it with python -m "
                        f"data_prep.build {source['kind']} ... --policy {spec.data.chexpert_policy}, or change the "
                        "spec")
    if not is_target:
        return
    if prepared.split_name == "official" or spec.data.split == "official":
        if prepared.split_name != spec.data.split:
            raise SpecError(f"{where}: built with the {prepared.split_name} split but data.split is "
                            f"{spec.data.split!r}; build it with python -m data_prep.build ... --split {spec.data.split}")
        return
    if spec.data.holdout:
        if params.get("holdout") != list(spec.data.settings().holdout_fractions):
            built = f"holdout {params['holdout']}" if params.get("holdout") else f"{prepared.num_folds} folds"
            wanted = "/".join(f"{v:g}" for v in spec.data.holdout)
            raise SpecError(f"{where}: built with {built} but data.holdout is {wanted}; build it with "
                            f"python -m data_prep.build ... --holdout {wanted}")
    elif prepared.num_folds != spec.data.folds or prepared.is_holdout:
        raise SpecError(f"{where}: built with {prepared.num_folds} folds but data.folds is {spec.data.folds}")
    if params.get("seed") != spec.data.seed:  # the same folds, or the same holdout split, need the same seed
        raise SpecError(f"{where}: its {'holdout split' if spec.data.holdout else 'folds'} were drawn with seed "
                        f"{params.get('seed')} but data.seed is {spec.data.seed}; set data.seed = {params.get('seed')}, "
                        f"or build it with python -m data_prep.build ... --seed {spec.data.seed}")


def data_key(name: str, spec: SweepSpec | None = None) -> str:
    """Where data set `name`'s location lives in a spec, for messages."""
    if spec is not None and name in spec.data.external:
        return f"data.external.{name}.location"
    return "data.target" if name == "target" else f"data.sources.{name}"


def _resolve(location: str, name: str, spec: SweepSpec, home: Path, seed_offset: int, log) -> Path:
    key = data_key(name, spec)
    scheme, colon, rest = location.partition(":")
    if location == PHANTOM or scheme == PHANTOM:
        return _phantom(rest or "target", name, spec, home, seed_offset, log, key == "data.target")
    if colon and scheme in KINDS:
        return _raw(scheme, rest, name, key, spec, home, log)
    path = Path(location).expanduser()
    if not (path / "manifest.json").is_file():
        raise SpecError(f"{key} = {location!r}: not a prepared data set (no manifest.json); expected a prepared "
                        f"data set's path, KIND:FOLDER of a raw source to build (KIND: {', '.join(KINDS)}), "
                        f"or phantom[:KIND]")
    _check_built_as_specified(PreparedDataset(path), f"{key} = {location!r}", key == "data.target", spec)
    return path


ENV_PREFIX = "CXR_SWEEP_DATA_"


def env_name(name: str) -> str:
    return ENV_PREFIX + "".join(c if c.isalnum() else "_" for c in name.upper())


def located(spec: SweepSpec, given: dict[str, str] | None = None, environ=None) -> dict[str, str]:
    """{"target": location, <source>: location} for what the grid uses; "" where none is given."""
    environ = os.environ if environ is None else environ
    given = dict(given or {})
    used = sorted({s for r in spec.grid.recipe for s in spec.recipes[r].sources})
    known = {"target": spec.data.target, **{name: spec.data.sources[name] for name in used},
             **{name: external.location for name, external in spec.data.external.items()}}
    unknown = sorted(set(given) - {"target", *spec.data.sources, *spec.data.external})
    if unknown:
        raise SpecError(f"--data {unknown[0]}=...: {spec.name!r} has no data set {unknown[0]!r}; "
                        f"its data sets: {['target', *sorted(spec.data.sources), *sorted(spec.data.external)]}")
    return {name: given.get(name) or environ.get(env_name(name)) or location for name, location in known.items()}


def locations(spec: SweepSpec, given: dict[str, str] | None = None, environ=None) -> dict[str, str]:
    """`located`, with every missing location reported at once."""
    found = located(spec, given, environ)
    missing = [name for name, location in found.items() if not location]
    if missing:
        raise SpecError("no location for " + "; ".join(
            f"data set {name!r}: pass --data {name}=PATH (a prepared data set, see data_prep.build; or KIND:FOLDER "
            f"of a raw source to build, KIND one of {', '.join(KINDS)}) or set "
            f"{env_name(name)}" for name in missing)
            + f" (or --data NAME=phantom:KIND to try {spec.name!r} on phantom data)")
    return found


EXTERNAL_SEEDS = 100  # a phantom external set's seed offset: other patients than the target's and sources'


def ensure_datasets(spec: SweepSpec, home: Path, log=print, given: dict[str, str] | None = None) -> dict[str, Path]:
    """{"target": path, <source name>: path, ...} for the sources the grid's recipes use."""
    found = locations(spec, given)
    paths = {"target": _resolve(found["target"], "target", spec, home, 0, log)}
    for offset, name in enumerate(sorted(set(found) - {"target", *spec.data.external}), start=1):
        paths[name] = _resolve(found[name], name, spec, home, offset, log)
    return paths


def ensure_external(spec: SweepSpec, home: Path, log=print, given: dict[str, str] | None = None) -> dict[str, Path]:
    """{<external set>: path}: the spec's external test sets, built like the sources (a phantom one from other
    patients than every set the trials see)."""
    found = locations(spec, given)
    return {name: _resolve(found[name], name, spec, home, EXTERNAL_SEEDS + offset, log)
            for offset, name in enumerate(sorted(spec.data.external))}
