"""Decode + resize throughput of full-size 12-bit DICOM radiographs, native and compressed
(issue 3: at least 100 images/s per core for uncompressed input, scaling with cores; issue 16:
the compressed transfer syntaxes beside dcmtk, two workers at least 1.8x one).

    python bench/decode_bench.py [--n 200] [--rows 2500] [--cols 2000] [--size 512] [--workers 1 2]
                                 [--syntaxes all | native rle ...] [--seconds 6]

Per transfer syntax: `decode_and_resize` images/s in a pool of one worker pinned to one core and
in `decoded()`'s pool of two workers pinned to two cores (steady state: the first round of
chunks, which holds the workers' start-up, is left out), with the workers' CPU time and page
faults per image over the same stretch; for the native files also `decoded(workers=1)`, which
decodes in the calling process. Beside it the reference C decoder on the same files, one process
per file pinned to one core: dcmtk's `dcmj2pnm` / `dcml2pnm` (first VOI window, 8-bit PGM to
/dev/null, no resize), or `opj_decompress` on the bare codestream (PGM to tmpfs) for JPEG 2000,
which Debian's dcmtk cannot decode. Compressed copies come from dcmtk's encoders (`apt-get
install dcmtk libopenjp2-tools`) and, for JPEG 2000, pydicom's encoder with pylibjpeg-openjpeg;
a syntax whose tools are missing is skipped and says why. A file our decoder rejects is reported
with its reason, never counted as throughput.

The development VM is shared: every measurement prints how much CPU other processes took while it
ran (all CPUs' busy time from /proc/stat less this process's and its children's), and one during
which they took more than --max-others cores is repeated after a quiet moment (--retries times at
most; the quietest attempt is kept).
"""
from __future__ import annotations

import argparse
import datetime
import multiprocessing
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pydicom  # noqa: E402
import pydicom.encaps  # noqa: E402

from data_prep import decode  # noqa: E402
from data_prep.decode import _init_worker, decode_and_resize, decoded  # noqa: E402
from phantom.generate import _write_dicom  # noqa: E402
from phantom.anatomy import film, film_pose, patient_anatomy  # noqa: E402

POOL_CHUNK = 4  # decoded()'s chunksize: results come back a chunk at a time
DISTINCT = 4  # distinct noisy native films; the other files are byte copies of them
ENCODED = 2  # of which so many are compressed for each syntax (JPEG 2000 encodes take a second each)
# name: (transfer syntax UID, encoder command or "pydicom", reference decoder)
SYNTAXES = {
    "native": ("1.2.840.10008.1.2.1", None, "dcmj2pnm"),
    "jpeg-lossless-sv1": ("1.2.840.10008.1.2.4.70", ["dcmcjpeg", "+e1"], "dcmj2pnm"),
    "jpeg-lossless-sv6": ("1.2.840.10008.1.2.4.57", ["dcmcjpeg", "+el", "+sv", "6"], "dcmj2pnm"),
    "jpeg-extended-12bit": ("1.2.840.10008.1.2.4.51", ["dcmcjpeg", "+ee", "+q", "90"], "dcmj2pnm"),
    "jpeg-ls-lossless": ("1.2.840.10008.1.2.4.80", ["dcmcjpls", "+el"], "dcml2pnm"),
    "jpeg-ls-near-2": ("1.2.840.10008.1.2.4.81", ["dcmcjpls", "+en", "+md", "2"], "dcml2pnm"),
    "rle": ("1.2.840.10008.1.2.5", ["dcmcrle"], "dcmj2pnm"),
    "jpeg2000-lossless": ("1.2.840.10008.1.2.4.90", "pydicom", "opj_decompress"),
    "jpeg2000-ratio-10": ("1.2.840.10008.1.2.4.91", "pydicom", "opj_decompress"),
}
LOSSLESS = {"native", "jpeg-lossless-sv1", "jpeg-lossless-sv6", "jpeg-ls-lossless", "rle", "jpeg2000-lossless"}


def make_files(directory: Path, n: int, rows: int, cols: int, distinct: int = DISTINCT) -> list[Path]:
    """n native films: `distinct` noisy versions of one phantom film, the rest byte copies."""
    rng = np.random.default_rng(0)
    base = film((rows, cols), patient_anatomy(rng), film_pose(rng), lambda *_: None, rng)
    paths = []
    for i in range(min(n, distinct)):
        noisy = np.clip(base + rng.normal(0, 0.01, base.shape), 0, 1)
        path = directory / f"{i}.dcm"
        _write_dicom(path, noisy, {"name": "BENCH^X", "id": f"B{i}", "birth_date": "19700101", "sex": "F"}, rng)
        paths.append(path)
    return paths + copies(paths, directory, n)


def copies(originals: list[Path], directory: Path, n: int) -> list[Path]:
    """Byte copies (own page-cache pages, unlike hard links) up to n files in all."""
    extra = []
    for i in range(len(originals), n):
        extra.append(directory / f"{i}.dcm")
        shutil.copyfile(originals[i % len(originals)], extra[-1])
    return extra


def encode(name: str, natives: list[Path], directory: Path) -> tuple[list[Path], str | None]:
    """Compressed copies of the native films; ([], why) when the encoder is missing or fails."""
    uid, encoder, _ = SYNTAXES[name]
    directory.mkdir()
    outs = [directory / f"{i}.dcm" for i in range(len(natives))]
    if encoder == "pydicom":
        try:
            for src, dst in zip(natives, outs):
                ds = pydicom.dcmread(src)
                ratio = {} if uid.endswith(".90") else {"j2k_cr": [10]}
                ds.compress(uid, encoding_plugin="pylibjpeg", **ratio)  # pylibjpeg-openjpeg's encoder
                ds.save_as(dst, enforce_file_format=True)
        except Exception as exc:  # noqa: BLE001 - missing plugin, unsupported options
            return [], f"pydicom could not encode ({type(exc).__name__}: {exc})"
        return outs, None
    if shutil.which(encoder[0]) is None:
        return [], f"{encoder[0]} not installed (apt-get install dcmtk)"
    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(lambda pair: subprocess.run(encoder + [str(pair[0]), str(pair[1])], capture_output=True,
                                                         text=True), zip(natives, outs)))
    failed = [r for r in runs if r.returncode]
    if failed:
        return [], f"{' '.join(encoder)} failed: {failed[0].stderr.strip().splitlines()[:1]}"
    found = str(pydicom.dcmread(outs[0], stop_before_pixels=True).file_meta.TransferSyntaxUID)
    if found != uid:
        return [], f"{' '.join(encoder)} wrote transfer syntax {found}, not {uid}"
    return outs, None


class OthersLoad:
    """CPU used by other processes while the block ran, in cores (all CPUs' busy time from
    /proc/stat less this process's and its children's, reaped or not)."""

    def __enter__(self):
        self.busy, self.own, self.started = _busy_seconds(), _own_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        elapsed = time.perf_counter() - self.started
        self.cores = max((_busy_seconds() - self.busy) - (_own_seconds() - self.own), 0.0) / elapsed
        return False


def _busy_seconds() -> float:
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


def _own_seconds() -> float:
    reaped = sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                   resource.getrusage(resource.RUSAGE_CHILDREN)))
    return reaped + sum(_proc_stat(p.pid)[:2].sum() for p in multiprocessing.active_children())


def _proc_stat(pid: int) -> np.ndarray:
    """user s, system s, minor faults of a live process (/proc/PID/stat, clock-tick resolution)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return np.zeros(3)
    tick = os.sysconf("SC_CLK_TCK")
    return np.array([int(fields[11]) / tick, int(fields[12]) / tick, int(fields[7])])  # utime, stime, minflt


def cpu_now(workers: list) -> np.ndarray:
    """user s, system s, minor faults of the pool's workers, or of this process when there are none."""
    if workers:
        return sum(_proc_stat(w.pid) for w in workers)
    own = resource.getrusage(resource.RUSAGE_SELF)
    return np.array([own.ru_utime, own.ru_stime, own.ru_minflt])


def pin(cores: list[int]) -> None:
    """Every thread of this process onto `cores` (sched_setaffinity(0) moves the calling thread
    only, not OpenCV's pool threads); threads and processes started later inherit it."""
    for task in Path("/proc/self/task").iterdir():
        try:
            os.sched_setaffinity(int(task.name), cores)
        except (ProcessLookupError, PermissionError):  # a thread that just ended
            pass


def pool_of(paths: list[Path], size: int, workers: int):
    """decoded()'s pool branch (data_prep/decode.py), here also for one worker, which decoded()
    would decode in the calling process: the same code per worker whatever their number."""
    if workers > 1:
        yield from decoded(paths, size, workers)
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker) as pool:
        yield from pool.map(decode_and_resize, paths, [size] * len(paths), [8] * len(paths), chunksize=POOL_CHUNK)


def ours(paths: list[Path], size: int, workers: int, cores: list[int], in_process: bool = False) -> dict:
    """Steady images/s on `workers` pool processes pinned to as many cores (or decoded(workers=1)
    in this process, pinned to one core), and their CPU per image over the same stretch."""
    for path in paths:  # every file in the page cache (the VM pages out what is unused for a minute)
        path.read_bytes()
    if in_process:  # a pool's workers warm up in the first round of chunks, which is left out
        list(decoded(paths[:2], size, 1))
    pin(cores[:workers])  # "per core" means it: threads and workers included
    try:
        with OthersLoad() as load:
            started = time.perf_counter()
            times, rejected, marks = [], [], []
            results = decoded(paths, size, 1) if in_process else pool_of(paths, size, workers)
            for i, result in enumerate(results):
                times.append(time.perf_counter())
                if i == 0:
                    pool = multiprocessing.active_children()  # none: decoded in this process
                    first = len(pool) * POOL_CHUNK if pool else 1  # results that came with the start-up
                if i in (first - 1, len(paths) - 1):  # the workers are still alive at the last result
                    marks.append(cpu_now(pool))
                if result[2] is not None:
                    rejected.append(result[2])
    finally:
        pin(cores)
    steady = len(times) - first
    return {"rate": steady / (times[-1] - times[first - 1]) if steady else float("nan"),
            "overall": len(paths) / (times[-1] - started), "first_s": times[0] - started,
            "processes": len(pool) or 1, "rejected": rejected, "others": load.cores,
            "cpu": (marks[-1] - marks[0]) / steady if steady else np.full(3, np.nan)}


def reference(name: str, paths: list[Path], cores: list[int], scratch: Path) -> dict:
    """The reference C decoder, one process per file on one core: images/s, or why not."""
    tool = SYNTAXES[name][2]
    if shutil.which(tool) is None:
        return {"why": f"{tool} not installed"}
    if tool == "opj_decompress":  # a bare JPEG 2000 codestream in, a PGM out (tmpfs)
        inputs = []
        for i, path in enumerate(paths):
            ds = pydicom.dcmread(path)
            inputs.append(scratch / f"{i}.j2k")
            inputs[-1].write_bytes(next(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1)))
        out = (Path("/dev/shm") if Path("/dev/shm").is_dir() else scratch) / f"decode_bench_{os.getpid()}.pgm"
        commands = [[tool, "-quiet", "-i", str(p), "-o", str(out)] for p in inputs]
    else:
        out = None
        commands = [[tool, "+Wi", "1", str(p), "/dev/null"] for p in paths]  # first window, 8-bit PGM
    for path in paths:
        path.read_bytes()
    pin(cores[:1])  # the child processes inherit it
    try:
        subprocess.run(commands[0], capture_output=True)  # warm the binary and its libraries
        with OthersLoad() as load:
            started = time.perf_counter()
            runs = [subprocess.run(c, capture_output=True, text=True) for c in commands]
            elapsed = time.perf_counter() - started
    finally:
        pin(cores)
        if out is not None:
            out.unlink(missing_ok=True)
    failed = [r for r in runs if r.returncode]
    if failed:
        lines = (failed[0].stderr or failed[0].stdout).strip().splitlines()
        return {"why": f"{tool} failed: {lines[0] if lines else failed[0].returncode}"}
    return {"rate": len(commands) / elapsed, "others": load.cores, "tool": tool}


def quietly(run, args) -> dict:
    """run() again, after waiting for a quiet moment, while other processes took more than
    --max-others cores during it (--retries times at most); the quietest attempt."""
    best = None
    for attempt in range(args.retries + 1):
        if attempt:
            wait_for_quiet(args.max_others, timeout_s=60)
        result = run()
        result["attempts"] = attempt + 1
        if best is None or result.get("others", 0) < best.get("others", 0):
            best = result
        if result.get("others", 0) <= args.max_others:
            break
    return best


def wait_for_quiet(max_cores: float, timeout_s: float) -> None:
    """Until the machine (this process idle meanwhile) is busy for under max_cores over a second."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        busy = _busy_seconds()
        time.sleep(1.0)
        if _busy_seconds() - busy < max_cores:
            return


def files_for(seconds_per_image: float, budget_s: float, chunk: int, lo: int, hi: int) -> int:
    """About budget_s of single-core decoding, a whole number of rounds of chunks."""
    n = int(budget_s / max(seconds_per_image, 1e-6))
    return max(lo, min(hi, n // chunk * chunk))


def measure(name: str, natives: list[Path], tmp: Path, args, chunk: int, cores: list[int]) -> dict:
    uid = SYNTAXES[name][0]
    row = {"name": name, "uid": uid}
    started = time.perf_counter()
    originals, why = (natives, None) if name == "native" else encode(name, natives[:ENCODED], tmp / name)
    if why:
        return {**row, "why": why, "line": f"{name}: skipped, {why}"}
    row["mb"] = np.mean([p.stat().st_size for p in originals]) / 1e6
    first = decode_and_resize(originals[0], args.size)  # also warms this syntax's decoder
    if first[2] is not None:
        return {**row, "why": f"rejected: {first[2]}", "line": f"{name}: our decoder rejects it: {first[2]}"}
    timer = time.perf_counter()
    check = decode_and_resize(originals[0], args.size)
    seconds = time.perf_counter() - timer
    native = decode_and_resize(natives[0], args.size)[0]
    row["max_diff"] = int(np.abs(check[0].astype(int) - native.astype(int)).max())  # 8-bit levels vs native
    if name in LOSSLESS and row["max_diff"]:
        row["why"] = f"lossless but differs from the native decode by {row['max_diff']} levels"
    lo = max(args.min_files, 2 * chunk)  # a round of chunks besides the first, left out as start-up
    n = max(lo, args.n // chunk * chunk) if name == "native" else files_for(seconds, args.seconds, chunk, lo, args.n)
    directory = tmp / f"{name}-copies"
    directory.mkdir()
    paths = [directory / p.name for p in originals]
    for src, dst in zip(originals, paths):
        shutil.copyfile(src, dst)
    paths += copies(paths, directory, n)
    os.sync()  # no write-back competing with the timed reads
    row["n"] = n
    row["ours"] = {w: quietly(lambda w=w: ours(paths, args.size, w, cores), args) for w in args.workers}
    if name in args.in_process:
        row["in_process"] = quietly(lambda: ours(paths, args.size, 1, cores, in_process=True), args)
    with tempfile.TemporaryDirectory() as scratch:
        row["ref"] = quietly(lambda: reference(name, paths[:args.reference_files], cores, Path(scratch)), args)
    shutil.rmtree(directory)
    parts = [_describe(f"{w} worker{'s' if w > 1 else ''}", r, n) for w, r in row["ours"].items()]
    if "in_process" in row:
        parts.append(_describe("in-process (decoded(workers=1))", row["in_process"], n))
    ref = row["ref"]
    parts.append(f"{ref['tool']}: {ref['rate']:.1f}/s (others {ref['others']:.2f} cores, attempt {ref['attempts']})"
                 if "rate" in ref else f"reference: {ref['why']}")
    head = (f"{name} ({uid}, {row['mb']:.1f} MB a file, {n} files, max diff vs native {row['max_diff']}; "
            f"{time.perf_counter() - started:.0f} s)")
    return {**row, "line": head + ":\n  " + "\n  ".join(parts)}


def _describe(label: str, r: dict, n: int) -> str:
    if r["rejected"]:
        return f"{label}: {len(r['rejected'])} of {n} rejected ({r['rejected'][0]}), no throughput"
    return (f"{label}: {r['rate']:.1f}/s steady ({r['overall']:.1f} with {r['first_s']:.2f} s to the first image); "
            f"per image {r['cpu'][0] * 1e3:.1f} ms user {r['cpu'][1] * 1e3:.1f} ms sys {r['cpu'][2]:.0f} minor faults; "
            f"others {r['others']:.2f} cores, attempt {r['attempts']}")


def table(rows: list[dict], workers: list[int]) -> str:
    one, many = min(workers), max(workers)
    head = (f"| syntax | UID | MB a file | files | ours, {one} worker | ours, {many} workers | speed-up "
            f"| reference, 1 core | max diff vs native (8-bit) | others' load (cores) |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in rows:
        if "ours" not in row:
            out.append(f"| {row['name']} | {row['uid']} | | | {row['why']} | | | | | |")
            continue
        a, b = row["ours"][one], row["ours"][many]
        cell = (lambda r: "rejected" if r["rejected"] else f"{r['rate']:.1f}")
        speedup = "" if a["rejected"] or b["rejected"] else f"{b['rate'] / a['rate']:.2f}x"
        ref = row["ref"]
        ref_cell = f"{ref['rate']:.1f} ({ref['tool']})" if "rate" in ref else ref["why"]
        loads = "/".join(f"{row['ours'][w]['others']:.2f}" for w in (one, many))
        loads += f"/{ref['others']:.2f}" if "rate" in ref else ""
        out.append(f"| {row['name']} | {row['uid']} | {row['mb']:.1f} | {row['n']} | {cell(a)} | {cell(b)} | {speedup} "
                   f"| {ref_cell} | {row['max_diff']}{' (!)' if 'why' in row else ''} | {loads} |")
    for row in rows:
        if "in_process" in row and not row["in_process"]["rejected"]:
            out.append(f"\n{row['name']}, decoded(workers=1) in the calling process: {row['in_process']['rate']:.1f} "
                       f"images/s (others {row['in_process']['others']:.2f} cores)")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="native files (at most this many per syntax)")
    parser.add_argument("--rows", type=int, default=2500)
    parser.add_argument("--cols", type=int, default=2000)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--syntaxes", nargs="+", default=["all"], help=f"'all' or some of {list(SYNTAXES)}")
    parser.add_argument("--in-process", nargs="*", default=["native"],
                        help="syntaxes also measured with decoded(workers=1), in this process")
    parser.add_argument("--seconds", type=float, default=6.0,
                        help="single-core decoding time to aim at per compressed syntax (sets its file count)")
    parser.add_argument("--min-files", type=int, default=24, help="files per compressed syntax at least")
    parser.add_argument("--reference-files", type=int, default=6, help="files per syntax for the reference decoder")
    parser.add_argument("--max-others", type=float, default=0.2,
                        help="repeat a measurement during which other processes used more than this many cores")
    parser.add_argument("--retries", type=int, default=2, help="at most this many repeats per measurement")
    args = parser.parse_args()
    names = list(SYNTAXES) if args.syntaxes == ["all"] else args.syntaxes
    unknown = set(names) - set(SYNTAXES)
    if unknown:
        parser.error(f"unknown syntaxes {sorted(unknown)}; expected 'all' or some of {list(SYNTAXES)}")
    cores = sorted(os.sched_getaffinity(0))
    if max(args.workers) > len(cores):
        parser.error(f"--workers {max(args.workers)} but only {len(cores)} cores to pin them to")
    chunk = POOL_CHUNK * max(args.workers)  # whole rounds of chunks: no worker idles at the end
    decode.PARALLEL_MIN_IMAGES = 0  # workers > 1 means the pool here, whatever the number of files
    here = Path(__file__).resolve().parents[1]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=here)
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "bench/decode_bench.py", "data_prep"],
                           capture_output=True, text=True, cwd=here).stdout.strip()
    print(f"{datetime.date.today()}, commit {commit.stdout.strip() or '?'}{' + local changes' if dirty else ''}; "
          f"{args.rows}x{args.cols} 12-bit MONOCHROME1 films to {args.size} px; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"load average {os.getloadavg()[0]:.2f} at the start", flush=True)
    rows, begun = [], time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="decode_bench_") as tmp:
        natives = make_files(Path(tmp), DISTINCT, args.rows, args.cols)
        for name in names:
            rows.append(measure(name, natives, Path(tmp), args, chunk, cores))
            print(rows[-1]["line"], flush=True)
    print(f"\n{time.perf_counter() - begun:.0f} s in all\n")
    print(table(rows, args.workers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
