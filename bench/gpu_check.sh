#!/usr/bin/env bash
# One command for a lent GPU machine (issue 22): install, then the CUDA checks and figures, in 8 minutes.
#
#   bash bench/gpu_check.sh [OUT_DIR]     # OUT_DIR: default $OUT if set, else ./gpu-check-out
#
# Steps, each under its own timeout (and all of them under GPU_CHECK_BUDGET_S, 465 s from the start):
#   install        make install (builds .venv from constraints.txt; nothing to do when it is up to date)
#   probe          torch, CUDA, the GPU (env.json, nvidia_smi.txt)
#   cuda_tests     tests/trainables/test_cuda.py and every other CUDA-only test (found by bench/gpu_check_summary.py
#                  cuda-tests: the skip markers naming cuda), junit XML in cuda_tests.xml and -rA in the log
#   train_speed_*  bench/train_speed.py, resnet50 and densenet121 at 512 px, batch 16 and the largest batch
#                  that fits ('max'): images/s, share of the epoch waiting for data, GPU utilisation
#                  (nvidia-smi every 100 ms), peak memory
#   seed_weights   ImageNet files in torchvision's published layout into a temporary TORCH_HOME
#                  (tests/published_weights.py), as tests/smoke_sweeps.py does: the machine is offline
#   smoke_sweep    python -m sweeper.run --spec paper --smoke on CUDA (gpus_per_trial and gpus_per_stage
#                  GPU_CHECK_GPUS_PER_TRIAL, default 0.125: 8 trials share the GPU; device=cuda), offline;
#                  the DB and the report copied to OUT_DIR/sweep, nvidia-smi sampled every 500 ms
#   predict_cuda   python -m sweeper.predict --device cuda --explain on a few of the sweep's raw images
#   predict_cpu    the same on --device cpu; the probabilities' max abs difference goes into the JSON
#   summary        OUT_DIR/gpu_check.json (bench/gpu_check_summary.py summarize): every figure and status
#
# A step that fails or times out is recorded and the next one runs. Without CUDA every CUDA step is
# recorded as "skipped: no CUDA" and the script exits 0. Exit 1 when a step that ran failed.
# GPU_CHECK_CPU_PLUMBING=1 (only without CUDA): run the same plumbing on the CPU, small (train_speed at
# 32 px, a one-cell smoke sweep, predict on cpu), to try this script on a laptop.
# GPU_CHECK_INSTALL=0 leaves out make install (a shared checkout whose .venv someone else is using).
set -uo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-${OUT:-./gpu-check-out}}  # relative to where the command runs
mkdir -p "$out/logs" || exit 2
out=$(cd "$out" && pwd)
cd "$repo" || exit 2
: > "$out/steps.jsonl"
: > "$out/gpu_check.log"

budget=${GPU_CHECK_BUDGET_S:-465}
gpus_per_trial=${GPU_CHECK_GPUS_PER_TRIAL:-0.125}
predict_images=${GPU_CHECK_PREDICT_IMAGES:-4}
plumbing=${GPU_CHECK_CPU_PLUMBING:-0}
start_s=$(date +%s)
deadline=$((start_s + budget))
work=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
ray_tmp=$(mktemp -d /tmp/rgcXXXXXX)  # a short path: Ray's sockets live there
sampler_pid=""
failed=0

cleanup() {
    [ -n "$sampler_pid" ] && kill "$sampler_pid" 2>/dev/null
    if [ "${GPU_CHECK_KEEP_WORK:-0}" = 1 ]; then
        echo "[gpu_check] work folder kept: $work (and Ray's $ray_tmp)" >&2
    else
        rm -rf "$work" "$ray_tmp"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { echo "[gpu_check $(date -u +%H:%M:%S)] $*" | tee -a "$out/gpu_check.log"; }
now() { date +%s.%N; }
seconds_since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# record NAME STATUS RC WALL TIMEOUT LOG: one line of steps.jsonl (values are ours: no quoting needed)
record() {
    printf '{"name": "%s", "status": "%s", "rc": %s, "wall_s": %s, "timeout_s": %s, "log": "%s"}\n' \
        "$1" "$2" "${3:-null}" "${4:-null}" "${5:-null}" "${6:-}" >> "$out/steps.jsonl"
}

skip() {  # skip NAME REASON
    record "$1" "skipped: $2"
    say "$1: skipped: $2"
}

# run_step NAME CAP RESERVE -- COMMAND...: COMMAND under a timeout of CAP s, or less so that RESERVE s
# remain before the deadline for the steps after it; stdout and stderr in logs/NAME.log
run_step() {
    local name=$1 cap=$2 reserve=$3
    shift 4
    local left=$((deadline - $(date +%s) - reserve))
    local limit=$((cap < left ? cap : left))
    if [ "$limit" -lt 10 ]; then
        record "$name" "skipped: out of time"
        say "$name: skipped: out of time (${budget} s budget)"
        return 1
    fi
    say "$name: running (timeout ${limit} s): $*"
    local began rc wall status
    began=$(now)
    timeout -k 10 "$limit" "$@" > "$out/logs/$name.log" 2>&1 < /dev/null
    rc=$?
    wall=$(seconds_since "$began")
    case $rc in
        0) status=ok ;;
        124|137) status="timeout after ${limit} s" ;;
        *) status="failed (exit $rc)" ;;
    esac
    [ "$rc" -ne 0 ] && failed=1
    record "$name" "$status" "$rc" "$wall" "$limit" "logs/$name.log"
    say "$name: $status (${wall} s)"
    return "$rc"
}

say "output folder $out, budget ${budget} s, work folder $work"

# -- install ---------------------------------------------------------------------------------------
if [ "${GPU_CHECK_INSTALL:-1}" = 1 ]; then
    run_step install "${GPU_CHECK_INSTALL_S:-90}" 300 -- make install
else
    skip install "GPU_CHECK_INSTALL=0"
fi
py=${GPU_CHECK_PYTHON:-}
if [ -z "$py" ]; then
    if [ -x .venv/bin/python ] && timeout 120 .venv/bin/python -c "import torch" > /dev/null 2>&1; then
        py=$repo/.venv/bin/python
    elif timeout 120 python3 -c "import torch, torchvision, ray" > /dev/null 2>&1; then
        py=$(command -v python3)
        say "the .venv has no usable torch: using $py (has torch, torchvision, ray)"
    fi
fi
summary_py=$(command -v python3 || echo "${py:-python3}")  # the summary needs the standard library only

# -- probe -----------------------------------------------------------------------------------------
cuda=0
if [ -z "$py" ]; then
    record probe "failed (no Python with torch: .venv missing or broken)" 1
    say "probe: failed: no Python with torch (.venv missing or broken, no torch in python3)"
    failed=1
else
    cat > "$work/probe.py" <<'EOF'
import json, os, platform, subprocess, sys
import torch
env = {"python": sys.executable, "python_version": platform.python_version(), "torch": torch.__version__,
       "torch_cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(), "cpus": os.cpu_count(),
       "cuda_available": torch.cuda.is_available(), "hostname": platform.node()}
if env["cuda_available"]:
    props = torch.cuda.get_device_properties(0)
    env.update(device_count=torch.cuda.device_count(), device=props.name, capability=f"{props.major}.{props.minor}",
               memory_gib=props.total_memory / 2**30, bf16=torch.cuda.is_bf16_supported())
try:
    env["git"] = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                                timeout=10).stdout.strip()
except (OSError, subprocess.SubprocessError):
    pass
open(sys.argv[1], "w").write(json.dumps(env, indent=1))
print(json.dumps(env))
EOF
    run_step probe 90 0 -- "$py" "$work/probe.py" "$out/env.json"
    grep -q '"cuda_available": true' "$out/env.json" 2>/dev/null && cuda=1
fi
if command -v nvidia-smi > /dev/null; then
    timeout 30 nvidia-smi > "$out/nvidia_smi.txt" 2>&1
    timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >> "$out/nvidia_smi.txt" 2>&1
fi
if [ "$cuda" = 0 ] && [ -n "$py" ] && timeout 30 nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then
    # a GPU torch cannot use (a driver older than torch's CUDA, a CPU-only wheel) is a failure, not a skip
    record cuda "failed (nvidia-smi lists a GPU but torch.cuda.is_available() is False: see logs/probe.log and nvidia_smi.txt)" 1
    say "cuda: FAILED: nvidia-smi lists a GPU but torch.cuda.is_available() is False (driver too old for torch's CUDA, or a CPU-only torch?)"
    failed=1
fi
mode=cuda
if [ "$cuda" = 0 ]; then
    mode=no-cuda
    [ "$plumbing" = 1 ] && [ -n "$py" ] && mode=cpu-plumbing
    torch_line=$(grep -o '"torch": "[^"]*"' "$out/env.json" 2>/dev/null || echo 'torch not importable')
    if [ "$mode" = cpu-plumbing ]; then
        say "No CUDA: torch.cuda.is_available() is False ($torch_line); GPU_CHECK_CPU_PLUMBING=1: the steps' plumbing runs small on the CPU, the CUDA parts are skipped"
    else
        say "No CUDA: torch.cuda.is_available() is False ($torch_line); skipping the CUDA tests, train_speed, the smoke sweep on CUDA and predict (recorded as 'skipped: no CUDA')"
    fi
fi
printf '{"started_at": "%s", "budget_s": %s, "mode": "%s", "python": "%s", "gpus_per_trial": %s, "out": "%s"}\n' \
    "$(date -u -d "@$start_s" +%Y-%m-%dT%H:%M:%SZ)" "$budget" "$mode" "${py:-none}" "$gpus_per_trial" "$out" \
    > "$out/meta.json"

# -- 1. CUDA-only tests ----------------------------------------------------------------------------
cuda_tests=$("$summary_py" bench/gpu_check_summary.py cuda-tests "$repo" | tr '\n' ' ')
if [ "$mode" = no-cuda ]; then
    skip cuda_tests "no CUDA"
else
    say "CUDA-only tests: $cuda_tests"
    # shellcheck disable=SC2086
    run_step cuda_tests "${GPU_CHECK_TESTS_S:-90}" 0 -- "$py" -m pytest -p no:cacheprovider -rA \
        --basetemp="$work/pytest" --junitxml="$out/cuda_tests.xml" $cuda_tests
fi

# -- 2. training throughput ------------------------------------------------------------------------
mkdir -p "$out/train_speed"
for backbone in resnet50 densenet121; do
    if [ "$mode" = cuda ]; then
        run_step "train_speed_$backbone" "${GPU_CHECK_SPEED_S:-75}" 0 -- "$py" bench/train_speed.py --device cuda \
            --size 512 --batch 16 max --backbones "$backbone" --out "$out/train_speed/$backbone.json"
    elif [ "$mode" = cpu-plumbing ]; then
        run_step "train_speed_$backbone" 120 0 -- "$py" bench/train_speed.py --device cpu --size 32 --images 64 \
            --batch 16 --backbones "$backbone" --threads 2 --out "$out/train_speed/$backbone.json"
    else
        skip "train_speed_$backbone" "no CUDA"
    fi
done

# -- 3. the paper's smoke sweep --------------------------------------------------------------------
home=$work/home
name=paper-smoke-gpu-check
sweep_env=(env TORCH_HOME="$work/torch" CXR_SWEEP_OFFLINE=1 CXR_SWEEP_UNVERIFIED_WEIGHTS=1
           CXR_SWEEP_PSEUDONYM_KEY_FILE="$work/pseudonym.key" RAY_TMPDIR="$ray_tmp" RAY_USAGE_STATS_ENABLED=0)
sweep_args=(--spec paper --smoke --home "$home" --name "$name" --report-bootstrap 50)
if [ "$mode" = cuda ]; then
    sweep_args+=(--set "resources.gpus_per_trial=$gpus_per_trial" --set "resources.gpus_per_stage=$gpus_per_trial"
                 --set resources.device=cuda)
elif [ "$mode" = cpu-plumbing ]; then
    sweep_args+=(--num-cpus 2 --set 'grid.backbone=["resnet50"]' --set 'grid.recipe=["imagenet"]')
fi
swept=0
if [ "$mode" = no-cuda ]; then
    skip seed_weights "no CUDA"
    skip smoke_sweep "no CUDA"
else
    mkdir -p "$out/sweep"
    printf '%s\n' "from tests.published_weights import seed_published" "for backbone in ('resnet50', 'densenet121'):" \
        "    seed_published(backbone)" "    print('seeded', backbone, flush=True)" > "$work/seed.py"
    if run_step seed_weights 60 0 -- "${sweep_env[@]}" PYTHONPATH="$repo" "$py" "$work/seed.py"; then
        if [ "$mode" = cuda ] && command -v nvidia-smi > /dev/null; then
            nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -lms 500 \
                > "$out/sweep/nvidia_smi.csv" 2>/dev/null &
            sampler_pid=$!
        fi
        run_step smoke_sweep "${GPU_CHECK_SWEEP_S:-240}" 80 -- "${sweep_env[@]}" "$py" -m sweeper.run "${sweep_args[@]}" \
            && swept=1
        [ -n "$sampler_pid" ] && kill "$sampler_pid" 2>/dev/null && wait "$sampler_pid" 2>/dev/null
        sampler_pid=""
        printf '{"name": "%s", "spec": "paper", "command": "python -m sweeper.run %s"}\n' "$name" \
            "$(printf '%s ' "${sweep_args[@]}" | sed "s|$work|WORK|g; s|\"|'|g")" > "$out/sweep/sweep.json"
        # the DB and the report, also from a sweep that timed out (its finished trials are in the DB)
        for f in "$home"/results.db*; do [ -f "$f" ] && cp "$f" "$out/sweep/"; done
        [ -d "$home/reports/$name" ] && cp -r "$home/reports/$name" "$out/sweep/report"
    else
        skip smoke_sweep "the weights could not be seeded (logs/seed_weights.log)"
    fi
fi

# -- 4. predict on CUDA and on the CPU -------------------------------------------------------------
mapfile -t images < <(find "$home/phantom" -path '*target-*' -type f -name '*.dcm' 2>/dev/null | sort | head -n "$predict_images")
for device in cuda cpu; do
    if [ "$mode" = no-cuda ] || { [ "$device" = cuda ] && [ "$mode" != cuda ]; }; then
        skip "predict_$device" "no CUDA"
    elif [ ! -f "$home/results.db" ] || [ "${#images[@]}" = 0 ]; then
        record "predict_$device" "failed (no sweep DB or no images to predict)" 1
        say "predict_$device: failed: no sweep DB or no images (smoke_sweep did not get far enough)"
        failed=1
    else
        [ "$swept" = 1 ] || say "predict_$device: the sweep did not finish; predicting with the trials it completed"
        mkdir -p "$out/predict/$device"
        reserve=0
        [ "$device" = cuda ] && reserve=35  # for predict_cpu
        run_step "predict_$device" "${GPU_CHECK_PREDICT_S:-45}" "$reserve" -- "${sweep_env[@]}" "$py" -m sweeper.predict \
            --db "sqlite:///$home/results.db" --sweep "$name" --device "$device" --workers 1 \
            --explain "$out/predict/$device/gradcam" --out "$out/predict/$device/probabilities.csv" "${images[@]}"
    fi
done

# -- summary ---------------------------------------------------------------------------------------
say "all steps done in $(( $(date +%s) - start_s )) s"
if ! timeout 60 "$summary_py" bench/gpu_check_summary.py summarize "$out"; then
    echo "[gpu_check] the summary failed; the raw records are in $out/steps.jsonl" >&2
    failed=1
fi
echo "[gpu_check] total $(( $(date +%s) - start_s )) s; JSON: $out/gpu_check.json (logs in $out/logs)"
exit "$failed"
