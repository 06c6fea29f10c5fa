"""Helpers of bench/gpu_check.sh, standard library only (they run even where the venv is broken).

    python bench/gpu_check_summary.py cuda-tests [REPO]   # pytest node ids of every CUDA-only test
    python bench/gpu_check_summary.py summarize OUT       # OUT/gpu_check.json from the steps' logs and files

`cuda-tests` reads tests/**/test_*.py (ast, nothing imported): a module whose `pytestmark` is a skip marker
naming cuda is taken whole; otherwise each test function or class with such a decorator.

`summarize` reads OUT/steps.jsonl (one line per step: name, status, rc, wall_s, timeout_s, log, written by
gpu_check.sh), OUT/env.json (torch, CUDA, the GPU), the CUDA tests' junit XML, train_speed's JSON lines,
the smoke sweep's SQLite DB and nvidia-smi samples, and the predictions CSVs of both devices, and writes
every figure into OUT/gpu_check.json; it prints a short table and where the JSON is.
"""
from __future__ import annotations

import ast
import csv
import json
import math
import sqlite3
import sys
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path


# -- cuda-tests ------------------------------------------------------------------------------------

def _names_cuda_skip(node: ast.AST) -> bool:
    """A skip marker whose condition or reason mentions cuda (pytest.mark.skipif(not torch.cuda...))."""
    text = ast.unparse(node)
    return "skip" in text and "cuda" in text.lower()


def cuda_tests(repo: Path) -> list[str]:
    found = []
    for path in sorted((repo / "tests").rglob("test_*.py")):
        tree = ast.parse(path.read_text(), str(path))
        rel = path.relative_to(repo).as_posix()
        whole = any(isinstance(n, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "pytestmark" for t in n.targets)
                    and _names_cuda_skip(n.value) for n in tree.body)
        if whole:
            found.append(rel)
            continue
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name.startswith(
                    ("test", "Test")) and any(_names_cuda_skip(d) for d in node.decorator_list):
                found.append(f"{rel}::{node.name}")
            elif isinstance(node, ast.ClassDef):
                found += [f"{rel}::{node.name}::{m.name}" for m in node.body
                          if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef)) and m.name.startswith("test")
                          and any(_names_cuda_skip(d) for d in m.decorator_list)]
    return found


# -- summarize -------------------------------------------------------------------------------------

def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _json_lines(path: Path) -> list[dict]:
    rows = []
    try:
        for line in path.read_text(errors="replace").splitlines():
            line = line.strip()
            if line.startswith("{") and line.endswith("}"):
                try:
                    rows.append(json.loads(line))
                except ValueError:
                    pass
    except OSError:
        pass
    return rows


def _tail(path: Path, lines: int = 15) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def junit(path: Path) -> dict:
    """Counts and each test's outcome from pytest's junit XML."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as exc:
        return {"error": f"no junit XML ({exc})"}
    tests, counts = [], {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
    for case in root.iter("testcase"):
        outcome, message = "passed", ""
        for kind in ("failure", "error", "skipped"):
            child = case.find(kind)
            if child is not None:
                outcome = {"failure": "failed"}.get(kind, kind)
                message = (child.get("message") or "")[:300]
                break
        counts[outcome] += 1
        tests.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                      "seconds": float(case.get("time") or 0), **({"message": message} if message else {})})
    return {**counts, "total": len(tests), "tests": tests}


def gpu_samples(path: Path) -> dict | None:
    """nvidia-smi CSV samples (utilization.gpu, memory.used MiB) taken while a step ran."""
    util, memory = [], []
    try:
        for row in csv.reader(path.read_text().splitlines()):
            try:
                util.append(float(row[-2]))
                memory.append(float(row[-1]))
            except (ValueError, IndexError):
                continue
    except OSError:
        return None
    if not util:
        return None
    return {"samples": len(util), "gpu_util_mean_percent": sum(util) / len(util), "gpu_util_max_percent": max(util),
            "gpu_memory_used_max_gib": max(memory) / 1024}


def sweep_db(db: Path, name: str) -> dict:
    """Trials by status, cells, pretraining artefacts and epoch times of sweep `name` in its SQLite DB."""
    if not db.exists():
        return {"error": "no results DB"}
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        row = con.execute("SELECT id, status, started_at, finished_at FROM sweeps WHERE name = ?", (name,)).fetchone()
        if not row:
            return {"error": f"no sweep {name!r} in the DB"}
        sweep_id, status, started, finished = row
        trials = dict(con.execute("SELECT status, COUNT(*) FROM sweep_trials WHERE sweep_id = ? GROUP BY status",
                                  (sweep_id,)).fetchall())
        cells = con.execute("SELECT COUNT(*) FROM cells WHERE sweep_id = ?", (sweep_id,)).fetchone()[0]
        artefacts = dict(con.execute("SELECT status, COUNT(*) FROM pretrain_artefacts WHERE sweep_id = ? GROUP BY status",
                                     (sweep_id,)).fetchall())
        epochs = con.execute("SELECT COUNT(*), AVG(c.seconds), MAX(c.seconds) FROM learning_curves c JOIN sweep_trials t "
                             "ON t.id = c.trial_id WHERE t.sweep_id = ?", (sweep_id,)).fetchone()
        errors = [e[:300] for (e,) in con.execute("SELECT error FROM sweep_trials WHERE sweep_id = ? AND error IS NOT "
                                                   "NULL LIMIT 3", (sweep_id,)).fetchall()]
        auc = con.execute("SELECT AVG(m.value), MAX(m.value) FROM trial_metrics m JOIN sweep_trials t ON t.id = "
                          "m.trial_id WHERE t.sweep_id = ? AND m.split = 'test' AND m.metric = 'auc' AND "
                          "m.class_name = '__macro__'", (sweep_id,)).fetchone()
        con.close()
    except sqlite3.Error as exc:
        return {"error": f"cannot read the DB: {exc}"}
    return {"status": status, "started_at": started, "finished_at": finished, "trials": trials,
            "trials_total": sum(trials.values()), "cells": cells, "pretrain_artefacts": artefacts,
            "epochs_recorded": epochs[0], "epoch_seconds_mean": epochs[1], "epoch_seconds_max": epochs[2],
            "test_macro_auc_mean": auc[0], "test_macro_auc_max": auc[1], **({"trial_errors": errors} if errors else {})}


def read_probs(path: Path) -> tuple[dict, list[str]]:
    """file -> probabilities (label order of the CSV) of the predicted (not rejected) files; the labels."""
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        labels = [c for c in reader.fieldnames or [] if c not in ("file", "rejected", "predicted")]
        rows = {r["file"]: [float(r[c]) for c in labels] for r in reader if not r["rejected"]}
    return rows, labels


def predict_runs(out: Path, steps: dict) -> dict:
    result, probs = {"runs": {}}, {}
    for device in ("cuda", "cpu"):
        step = steps.get(f"predict_{device}")
        if not step:
            continue
        folder = out / "predict" / device
        run = {"status": step["status"], "wall_s": step.get("wall_s")}
        model = [line for line in _tail(out / step.get("log", ""), 400) if line.startswith("[predict] model:")]
        if model:
            run["model"] = model[-1]
        csv_path = folder / "probabilities.csv"
        if csv_path.exists():
            rows, labels = read_probs(csv_path)
            probs[device] = (rows, labels)
            run.update(images=len(rows), csv=str(csv_path.relative_to(out)))
        pictures = sorted((folder / "gradcam").glob("*.png")) if (folder / "gradcam").is_dir() else []
        run["gradcam_pngs"] = len(pictures)
        result["runs"][device] = run
    if "cuda" in probs and "cpu" in probs:
        (gpu, labels), (cpu, cpu_labels) = probs["cuda"], probs["cpu"]
        common = sorted(set(gpu) & set(cpu))
        if labels != cpu_labels or not common:
            result["comparison_error"] = "the two runs' labels or files differ"
        else:
            diffs = [abs(a - b) for f in common for a, b in zip(gpu[f], cpu[f])]
            result.update(images_compared=len(common), labels=len(labels), max_abs_diff=max(diffs),
                          mean_abs_diff=sum(diffs) / len(diffs),
                          within_2e_2=max(diffs) <= 2e-2)  # tests/trainables/test_predict.py's bound (bf16 autocast on the GPU)
    return result


def summarize(out: Path) -> dict:
    steps = {}
    for line in _json_lines(out / "steps.jsonl"):
        steps[line["name"]] = line
    env = _read_json(out / "env.json") or {}
    report = {"written_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "meta": _read_json(out / "meta.json") or {}, "environment": env, "steps": steps}
    for step in steps.values():
        if step["status"] not in ("ok",) and not step["status"].startswith("skipped") and step.get("log"):
            step["log_tail"] = _tail(out / step["log"])
    if "cuda_tests" in steps and (out / "cuda_tests.xml").exists():
        report["cuda_tests"] = junit(out / "cuda_tests.xml")
    speed = {}
    for name, step in steps.items():
        if name.startswith("train_speed_"):
            runs = [r for r in _json_lines(out / step["log"]) if "images_per_second" in r]
            speed[name.removeprefix("train_speed_")] = {"status": step["status"], "runs": runs}
    if speed:
        header = _read_json(out / "train_speed" / f"{next(iter(speed))}.json")
        report["train_speed"] = {"backbones": speed, **({k: header[k] for k in ("torch", "device", "size", "images")
                                                         if k in header} if header else {})}
    if "smoke_sweep" in steps:
        sweep = {"status": steps["smoke_sweep"]["status"], "wall_s": steps["smoke_sweep"].get("wall_s"),
                 **(_read_json(out / "sweep" / "sweep.json") or {})}
        if (out / "sweep" / "results.db").exists():
            sweep["db"] = "sweep/results.db"
            sweep.update(sweep_db(out / "sweep" / "results.db", sweep.get("name", "")))
        if (out / "sweep" / "report").is_dir():
            sweep["report"] = "sweep/report"
            sweep["report_files"] = sum(1 for p in (out / "sweep" / "report").rglob("*") if p.is_file())
        samples = gpu_samples(out / "sweep" / "nvidia_smi.csv")
        if samples:
            sweep["gpu"] = samples
        report["smoke_sweep"] = sweep
    if any(n.startswith("predict_") for n in steps):
        report["predict"] = predict_runs(out, steps)
    failed = [n for n, s in steps.items() if s["status"] != "ok" and not s["status"].startswith("skipped")]
    report["failed_steps"] = failed
    report["ok"] = not failed
    (out / "gpu_check.json").write_text(json.dumps(_finite(report), indent=1, default=str, allow_nan=False) + "\n")
    _print_table(report, out)
    return report


def _finite(obj):
    """`obj` with NaN and infinities as null (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _print_table(report: dict, out: Path) -> None:
    print("\n== gpu_check summary ==")
    for name, step in report["steps"].items():
        wall = step.get("wall_s")
        print(f"  {name:<24} {step['status']:<34} {'' if wall is None else f'{wall:7.1f} s'}")
    tests = report.get("cuda_tests")
    if tests and "total" in tests:
        print(f"  CUDA tests: {tests['passed']} passed, {tests['failed']} failed, {tests['error']} errors, "
              f"{tests['skipped']} skipped of {tests['total']}")
    for backbone, part in report.get("train_speed", {}).get("backbones", {}).items():
        for run in part["runs"]:
            extra = "".join(f", {k} {run[k]:.1f}" for k in ("gpu_util_percent", "peak_memory_gib") if k in run)
            print(f"  train_speed {backbone} batch {run['batch']}: {run['images_per_second']:.1f} images/s, "
                  f"data wait {100 * run['data_wait_fraction']:.1f}%{extra}")
    sweep = report.get("smoke_sweep")
    if sweep and "trials" in sweep:
        print(f"  smoke sweep: {sweep['trials_total']} trials {sweep['trials']}, {sweep.get('wall_s')} s")
    prediction = report.get("predict", {})
    if "max_abs_diff" in prediction:
        print(f"  predict cuda vs cpu: max |diff| {prediction['max_abs_diff']:.2e} over "
              f"{prediction['images_compared']} images x {prediction['labels']} labels")
    if report["failed_steps"]:
        print(f"  FAILED: {', '.join(report['failed_steps'])} (logs in {out})")


def main(argv: list[str]) -> int:
    if argv[:1] == ["cuda-tests"]:
        repo = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[1]
        print("\n".join(cuda_tests(repo)))
        return 0
    if argv[:1] == ["summarize"] and len(argv) == 2:
        summarize(Path(argv[1]))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
