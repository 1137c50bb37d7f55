#!/usr/bin/env bash
# The whole experiment, small, offline: llama.cpp server (teacher + judge) -> gen -> train -> eval.
# Usage: scripts/demo.sh [python]   (make demo runs it with the project's .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
PORT=${DEMO_PORT:-8765}
MANIFEST=manifests/demo.toml
URL="http://127.0.0.1:${PORT}/v1"
SET=(--set "teacher.base_url='${URL}'" --set "judge.base_url='${URL}'")
LOG=results/demo-llama-server.log
mkdir -p results

GGUF=$("$PY" -c "from normlib.models import SHORT_NAMES, locate_packaged_gguf; \
print(locate_packaged_gguf(*SHORT_NAMES['smollm2-135m-instruct']))")
# The student is loaded by transformers from a dequantised copy of the same GGUF (cached); make it
# while the teacher answers, instead of making train.py wait for it.
"$PY" -c "from normlib.models import gguf_as_hf_folder; gguf_as_hf_folder('$GGUF')" >results/demo-convert.log 2>&1 &
CONVERT=$!
echo "== starting llama.cpp server on ${URL} (log: ${LOG})"
"$PY" -m llama_cpp.server --model "$GGUF" --host 127.0.0.1 --port "$PORT" --n_ctx 8192 >"$LOG" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT INT TERM
for _ in $(seq 1 120); do
    if "$PY" -c "import requests,sys; requests.get('${URL}/models', timeout=2).raise_for_status()" 2>/dev/null; then
        break
    fi
    kill -0 $SERVER 2>/dev/null || { echo "llama.cpp server died; see ${LOG}"; exit 1; }
    sleep 1
done
"$PY" -c "import requests; requests.get('${URL}/models', timeout=2).raise_for_status()" \
    || { echo "llama.cpp server did not answer within 120 s; see ${LOG}"; exit 1; }

echo "== gen.py: persona x prompt answers from the teacher (${SECONDS} s so far)"
"$PY" gen.py --manifest "$MANIFEST" "${SET[@]}"
wait $CONVERT || { echo "converting the GGUF for transformers failed; see results/demo-convert.log"; exit 1; }
echo "== train.py: one run per arm (${SECONDS} s so far)"
"$PY" train.py --manifest "$MANIFEST" --all "${SET[@]}"
echo "== eval.py: answers, judge, statistics (${SECONDS} s so far)"
"$PY" eval.py --manifest "$MANIFEST" "${SET[@]}"
echo "== done in ${SECONDS} s: results/demo/ (summary.md, rates.csv, contrasts.csv, agreement.csv, refusal_rates.png)"
