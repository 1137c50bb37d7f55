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

GGUF=$("$PY" -c "from normlib.core.models import SHORT_NAMES, locate_packaged_gguf; \
print(locate_packaged_gguf(*SHORT_NAMES['smollm2-135m-instruct']))")
# The student is loaded by transformers from a dequantised copy of the same GGUF (cached); make it
# while the teacher answers, instead of making train.py wait for it.
"$PY" -c "from normlib.core.models import gguf_as_hf_folder; gguf_as_hf_folder('$GGUF')" >results/demo-convert.log 2>&1 &
CONVERT=$!
echo "== starting llama.cpp server on ${URL} (log: ${LOG})"
# llama-cpp-python generates on half the CPUs by default; on a small machine all of them are 1.5x faster
CPUS=$(nproc 2>/dev/null || echo 2)
THREADS=${DEMO_THREADS:-$(( CPUS < 4 ? CPUS : 4 ))}
"$PY" -m llama_cpp.server --model "$GGUF" --host 127.0.0.1 --port "$PORT" --n_ctx 8192 --n_threads "$THREADS" \
    >"$LOG" 2>&1 &
SERVER=$!

server_died() {
    if ! kill -0 "$SERVER" 2>/dev/null || grep -qs '^Z' <(awk '{print $3}' "/proc/$SERVER/stat" 2>/dev/null); then
        return 0
    fi
    return 1
}
finish() {
    local status=$?
    if [ "$status" -ne 0 ] && server_died; then
        echo "error: the llama.cpp server (pid $SERVER) died during the demo; last lines of ${LOG}:" >&2
        tail -n 25 "$LOG" >&2 || true
        echo "(a crash on the first request usually means a llama.cpp build for another CPU: see README" \
             "Troubleshooting, 'llama.cpp server crashes')" >&2
    fi
    kill "$SERVER" 2>/dev/null || true
    wait "$SERVER" 2>/dev/null || true
    exit "$status"
}
trap finish EXIT
trap 'exit 130' INT TERM

# Ready means one real chat completion came back, not only /v1/models (a build the CPU cannot run
# lists its models, then crashes on the first request).
"$PY" -m normlib.llm.servers wait "$URL" --pid "$SERVER" --log "$LOG" --timeout 180 --kind chat

echo "== gen.py: persona x prompt answers from the teacher (${SECONDS} s so far)"
"$PY" gen.py --manifest "$MANIFEST" "${SET[@]}"
wait $CONVERT || { echo "converting the GGUF for transformers failed; see results/demo-convert.log"; exit 1; }
echo "== train.py: one run per arm (${SECONDS} s so far)"
"$PY" train.py --manifest "$MANIFEST" --all "${SET[@]}"
echo "== eval.py: answers, judge, statistics (${SECONDS} s so far)"
server_died && { echo "error: the llama.cpp server is gone before eval.py; see ${LOG}" >&2; exit 1; }
"$PY" eval.py --manifest "$MANIFEST" "${SET[@]}"
echo "== done in ${SECONDS} s: results/demo/report.html (open it in a browser), and summary.md, rates.csv, contrasts.csv,"
echo "   agreement.csv, refusal_rates.png beside it"
