"""`python -m sweeper.run --dry-run [--json]`: what a sweep would run, without Ray or data.

Cells, folds, trials, the unique pretraining jobs (a regular chain's prefixes are jobs of
their own, shared by every chain that starts the same way) and an upper-bound GPU estimate
(sweeper.estimate). Image counts come from the data sets' manifests or raw label tables when
their locations are given, from the phantom settings for phantom data, else from the spec's
`data.expected_images`; nothing is built, generated or trained.
"""
from __future__ import annotations

import json
from pathlib import Path

from data_prep.dataset import read_manifest
from data_prep.sources import KINDS
from data_prep.locate import MISSING_TOLERANCE
from sweeper import estimate
from sweeper.datasets import located, raw_images
from sweeper.plan import study_plans
from sweeper.spec import PHANTOM, SweepSpec
from sweeper.weights import cache_status
from trainables.pretrain import Stage, chain_prefix, trained_sources
from trainables.config import fit_config
from trainables.weights import cache_dir
from vocab.names import cell_of_study


def image_count(spec: SweepSpec, name: str, location: str) -> tuple[int | None, str]:
    """(images, where the number comes from) for one data set, reading at most a label table and the names of
    the files under a raw source's folder."""
    scheme, colon, rest = location.partition(":")
    if location == PHANTOM or scheme == PHANTOM:
        phantom = spec.data.phantom  # as sweeper.datasets generates it
        return round(phantom.patients(rest or "target") * phantom.films_per_patient), "phantom settings (expected)"
    if colon and scheme in KINDS:
        found, listed, table = raw_images(spec, name, scheme, rest)
        stops = listed - found > MISSING_TOLERANCE * listed
        return found, (f"found of {listed} listed in {table}"
                       + ("; a real run stops: more than 1% missing (allow_missing builds anyway)" if stops else ""))
    if location:
        return int(read_manifest(Path(location).expanduser())["counts"]["images"]), "prepared manifest"
    if name in spec.data.expected_images:
        return spec.data.expected_images[name], "spec data.expected_images"
    return None, "unknown: give its location or data.expected_images"


def pretraining_jobs(stages: set[Stage]) -> list[Stage]:
    """Every stage trained once on a cold cache: the stages themselves and their regular-chain prefixes."""
    jobs = set()
    for stage in stages:
        while stage is not None:
            jobs.add(stage)
            stage = chain_prefix(stage)
    return sorted(jobs, key=lambda s: (s.backbone, s.init, s.strategy, s.sources, s.epochs))


def _stage_flops(stage: Stage, size: int, counts: dict, val_fraction: float) -> float | None:
    trained_on = trained_sources(stage)
    if any(counts[s] is None for s in trained_on):
        return None
    n = sum(counts[s] for s in trained_on)
    parts = estimate.Parts(train=n * (1 - val_fraction), val=n * val_fraction, test=0)
    return estimate.fit_flops(estimate.forward_flops(stage.backbone, size), parts, stage.epochs,
                              final_evaluation=False)


def dry_run(spec: SweepSpec, given: dict[str, str] | None = None, tflops: float = estimate.DEFAULT_TFLOPS,
            max_concurrent: int | None = None, spec_arg: str | None = None) -> dict:
    locations = located(spec, given)
    counts, data = {}, {}
    for name, location in locations.items():
        counts[name], origin = image_count(spec, name, location)
        data[name] = {"location": location or None, "images": counts[name], "images_from": origin}
    plans = study_plans(spec, {name: Path(name) for name in locations}, pretrain_cache=Path("pretrained"))
    cells, stages = {}, {}
    parts = None if counts["target"] is None else estimate.Parts.of(
        counts["target"], spec.data.folds, spec.data.settings().holdout_fractions, spec.train.val_fraction)
    fine_tune_flops = None if parts is None else 0.0
    for plan in plans:
        config = fit_config(plan.config)
        name = cell_of_study(plan.key)
        cells.setdefault(name, {"cell": name, "backbone": config.backbone, "recipe": plan.config["recipe"],
                                "strategy": config.strategy, "init": config.init,
                                "sources": list(config.pretrain_dirs), "variant": plan.config["variant"]})
        stage = config.stage()
        if stage is not None:
            stages.setdefault(stage, set()).add(name)
        if parts is not None:
            forward = estimate.forward_flops(config.backbone, config.input_size or spec.data.size,
                                             2 if config.strategy == "mixed" else 1)
            fine_tune_flops += plan.n_trials * estimate.fit_flops(forward, parts, config.epochs)
    jobs = pretraining_jobs(set(stages))
    stage_flops = [_stage_flops(job, spec.data.size, counts, spec.train.val_fraction) for job in jobs]
    pretrain_flops = None if None in stage_flops else sum(stage_flops)
    total = None if fine_tune_flops is None or pretrain_flops is None else fine_tune_flops + pretrain_flops
    hours = (lambda flops: None if flops is None else float(f"{estimate.gpu_hours(flops, tflops):.4g}"))
    return {
        "sweep": spec.name,
        "cells": list(cells.values()),
        "folds": spec.folds,
        "studies": len(plans),
        "trials": sum(p.n_trials for p in plans),
        "epochs_per_trial": spec.train.epochs,
        "pretrain": [{"backbone": j.backbone, "init": j.init, "strategy": j.strategy, "sources": list(j.sources),
                      "epochs": j.epochs, "lr": j.lr, "batch_size": j.batch_size,
                      "cells": sorted(stages.get(j, ())) or ["(prefix of a longer chain)"]} for j in jobs],
        "data": data,
        "imagenet_weights": {"cache": str(cache_dir()), "files": cache_status(spec),
                             "fetch": f"python -m sweeper.weights --spec {spec_arg or spec.name}"},
        "resources": {**spec.resources.model_dump(),
                      "max_concurrent": max_concurrent or spec.resources.max_concurrent},
        "estimate": {"gpu_hours": hours(total), "pretrain_gpu_hours": hours(pretrain_flops),
                     "fine_tune_gpu_hours": hours(fine_tune_flops), "assumed_tflops": tflops,
                     "image_size": spec.data.size,
                     "note": "upper bound: every trial for all its epochs (ASHA stops many early); "
                             "FLOPs counted per backbone at the spec's image size, a training step as 3 forwards"},
    }


def render(plan: dict) -> str:
    """The plan for a person: one line per cell and per pretraining job, then the estimate."""
    e = plan["estimate"]
    lines = [f"sweep {plan['sweep']}: {len(plan['cells'])} cells x {len(plan['folds'])} fold(s) = "
             f"{plan['studies']} studies, {plan['trials']} fine-tuning trials of up to {plan['epochs_per_trial']} "
             f"epochs, {len(plan['pretrain'])} pretraining job(s)", "cells:"]
    lines += [f"  {c['cell']}: {c['strategy']} from {c['init']}"
              + (f" via {' + '.join(c['sources'])}" if c["sources"] else "") for c in plan["cells"]]
    lines.append("pretraining jobs (each run once, cached by content hash):")
    lines += [f"  {j['backbone']} ({j['init']}) {j['strategy']} on {' + '.join(j['sources'])}, {j['epochs']} "
              f"epoch(s); for {', '.join(j['cells'])}" for j in plan["pretrain"]] or ["  none"]
    lines.append("data:")
    lines += [f"  {name}: {d['location'] or '(no location)'}; {d['images'] if d['images'] is not None else '?'} "
              f"images ({d['images_from']})" for name, d in plan["data"].items()]
    lines += _weights_lines(plan["imagenet_weights"])
    fmt = (lambda h: "unknown" if h is None else f"{h:,.3g}")
    lines.append(f"estimate: {fmt(e['gpu_hours'])} GPU hours at {e['assumed_tflops']:g} TFLOP/s "
                 f"(pretraining {fmt(e['pretrain_gpu_hours'])}, fine-tuning {fmt(e['fine_tune_gpu_hours'])}); "
                 f"{e['note']}")
    return "\n".join(lines)


def _weights_lines(weights: dict) -> list[str]:
    if not weights["files"]:
        return ["ImageNet weights: none needed"]
    lines = [f"ImageNet weights (cache {weights['cache']}):"]
    lines += [f"  {w['file']} ({w['backbone']}): {'present' if w['present'] else 'missing'}" for w in weights["files"]]
    if not all(w["present"] for w in weights["files"]):
        lines.append(f"  a real run downloads the missing ones first, or stops before Ray when it cannot; on a "
                     f"machine with internet: `{weights['fetch']}`")
    return lines


def to_json(plan: dict) -> str:
    return json.dumps(plan, indent=2)
