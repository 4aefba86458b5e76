#!/usr/bin/env bash
# The device check of issue 21, from the repository root, on one GPU, in under 8 minutes:
#
#     bash benchmarks/gpu_check.sh [OUT_DIR]        # default OUT_DIR: gpu_check_out/
#
# 1. the machine: nvidia-smi, torch / CUDA / cuDNN versions;
# 2. `pytest -m cuda tests/test_cuda.py` (at most PYTEST_TIMEOUT s, default 300; about 3 min expected on an H200),
#    output in OUT_DIR/pytest.txt;
# 3. the GPU table (benchmarks/bench_gpu.py, at most TABLE_TIMEOUT s, default 170; about 2-3 min expected):
#    s4-r50 at 512 and avss-pvt2 at 224, the authors' way (fp32, reference, batch 1, model alone) against the default
#    (auto precision, fast, batch 32: model alone, decode alone, whole run), frames/s and peak GPU memory, 8 videos
#    x 30 s at 640x360 sampled at 2 fps (480 frames a preset; 96 of them at batch 1), written to OUT_DIR/gpu_table.md
#    with the pytest result appended, output in OUT_DIR/table.txt.
#
# 4. only when ORT_GPU_TIMEOUT is set (seconds; it adds that much): the exported ONNX file on onnxruntime's CUDA and
#    TensorRT providers (benchmarks/bench_ort_gpu.py; needs onnxruntime-gpu), appended to OUT_DIR/gpu_table.md.
#
# Settings from the environment: PYTHON (default .venv/bin/python), PYTEST_TIMEOUT, TABLE_TIMEOUT, GPU_CHECK_SMOKE,
# ORT_GPU_TIMEOUT.
# The default timeouts add up to 470 s + start-up: under 8 minutes even when both run to their limit. Exit status: 0 when
# pytest passed and the table was made; 1 when pytest failed or timed out (the table is still made); 3 when only
# the table failed; 2 when there is no usable GPU (nothing run). GPU_CHECK_SMOKE=1 runs the same steps with a
# CPU-sized table (tiny preset; pytest then skips every test): a check of this script on a machine without a GPU.
set -euo pipefail

OUT_DIR="${1:-gpu_check_out}"
PYTHON="${PYTHON:-.venv/bin/python}"
PYTEST_TIMEOUT="${PYTEST_TIMEOUT:-300}"
TABLE_TIMEOUT="${TABLE_TIMEOUT:-170}"
SMOKE="${GPU_CHECK_SMOKE:-0}"

if [[ ! -f pyproject.toml || ! -d avsegcli ]]; then
    echo "error: run from the repository root (bash benchmarks/gpu_check.sh [OUT_DIR])" >&2
    exit 2
fi
mkdir -p "$OUT_DIR"
START=$SECONDS
stamp() { echo "[$((SECONDS - START)) s] $*"; }

stamp "== machine"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi || echo "(nvidia-smi failed)"
else
    echo "(nvidia-smi not found)"
fi
"$PYTHON" - <<'EOF'
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN "
      f"{torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}, "
      f"CUDA available: {torch.cuda.is_available()}, devices: {torch.cuda.device_count()}")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"  cuda:{i} {p.name}, {p.total_memory / 2**30:.1f} GiB, compute capability {p.major}.{p.minor}")
EOF
if [[ "$SMOKE" != "1" ]] && ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "error: CUDA is not available to $PYTHON: nothing to check (GPU_CHECK_SMOKE=1 checks this script on a CPU)" >&2
    exit 2
fi

stamp "== pytest -m cuda tests/test_cuda.py (at most ${PYTEST_TIMEOUT} s)"
T=$SECONDS
pytest_rc=0
timeout --signal=INT --kill-after=30 "$PYTEST_TIMEOUT" \
    "$PYTHON" -m pytest -m cuda tests/test_cuda.py -q -p no:cacheprovider -n 0 2>&1 | tee "$OUT_DIR/pytest.txt" \
    || pytest_rc=$?
pytest_seconds=$((SECONDS - T))
if [[ $pytest_rc -eq 124 ]]; then
    echo "pytest TIMED OUT after ${PYTEST_TIMEOUT} s" | tee -a "$OUT_DIR/pytest.txt"
fi
stamp "pytest: exit status $pytest_rc in ${pytest_seconds} s"

stamp "== GPU table (at most ${TABLE_TIMEOUT} s)"
T=$SECONDS
table_rc=0
if [[ "$SMOKE" == "1" ]]; then
    table_args=(--device cpu --presets tiny --videos 2 --seconds 4 --batch 4 --reference-frames 4 --warmup 1)
else
    table_args=(--device cuda --presets s4-r50 avss-pvt2 --batch 32 --videos 8 --seconds 30 --fps 2 --reference-frames 96)
fi
rm -f "$OUT_DIR/gpu_table.md"
timeout --signal=INT --kill-after=30 "$TABLE_TIMEOUT" \
    "$PYTHON" benchmarks/bench_gpu.py "${table_args[@]}" --markdown "$OUT_DIR/gpu_table.md" 2>&1 \
    | tee "$OUT_DIR/table.txt" || table_rc=$?
table_seconds=$((SECONDS - T))
stamp "table: exit status $table_rc in ${table_seconds} s"
if [[ ! -s "$OUT_DIR/gpu_table.md" ]]; then
    printf '# GPU table (issue 21)\n\nNo row was measured: bench_gpu.py exited with status %s after %s s (see table.txt).\n' \
        "$table_rc" "$table_seconds" > "$OUT_DIR/gpu_table.md"
elif [[ $table_rc -ne 0 ]]; then
    printf '\n**Incomplete**: bench_gpu.py exited with status %s after %s s (see table.txt); the rows above were measured.\n' \
        "$table_rc" "$table_seconds" >> "$OUT_DIR/gpu_table.md"
fi

if [[ -n "${ORT_GPU_TIMEOUT:-}" && "$SMOKE" != "1" ]]; then
    stamp "== onnxruntime GPU providers (at most ${ORT_GPU_TIMEOUT} s)"
    timeout --signal=INT --kill-after=30 "$ORT_GPU_TIMEOUT" "$PYTHON" benchmarks/bench_ort_gpu.py --preset s4-r50 --batch 8 \
        --markdown "$OUT_DIR/ort_gpu.md" 2>&1 | tee "$OUT_DIR/ort_gpu.txt" || echo "bench_ort_gpu.py: exit status $? (see ort_gpu.txt)"
    if [[ -s "$OUT_DIR/ort_gpu.md" ]]; then
        { echo; cat "$OUT_DIR/ort_gpu.md"; } >> "$OUT_DIR/gpu_table.md"
    fi
fi

summary="$(grep -E '(passed|failed|error|skipped|no tests ran)' "$OUT_DIR/pytest.txt" | tail -n 1 || true)"
{
    printf '\n## pytest -m cuda tests/test_cuda.py\n\n'
    printf -- '- exit status %s in %s s%s\n' "$pytest_rc" "$pytest_seconds" "$([[ $pytest_rc -eq 124 ]] && echo ' (timed out)')"
    printf -- '- %s\n' "${summary:-no summary line (see pytest.txt)}"
    printf -- '- whole check: %s s\n' "$((SECONDS - START))"
} >> "$OUT_DIR/gpu_table.md"

stamp "== done: $OUT_DIR/gpu_table.md, $OUT_DIR/pytest.txt, $OUT_DIR/table.txt"
cat "$OUT_DIR/gpu_table.md"
if [[ $pytest_rc -ne 0 ]]; then
    exit 1
fi
if [[ $table_rc -ne 0 ]]; then
    exit 3
fi
exit 0
