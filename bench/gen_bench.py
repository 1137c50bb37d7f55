"""Teacher-call throughput: 1000 requests at concurrency 32 against a loopback server with 100 ms latency.

The ideal rate is concurrency / latency = 320 requests/s; the target is >= 85% of it. Appends to
bench/RESULTS.md.   python bench/gen_bench.py [--requests 1000 --concurrency 32 --latency 0.1]
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from normlib.llm.fakeserver import FakeLLMServer  # noqa: E402
from normlib.llm.clients import ChatRequest, HttpClient  # noqa: E402
from normlib.core.manifest import EndpointConfig  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--latency", type=float, default=0.1, help="seconds the server waits per request")
    ap.add_argument("--no-record", action="store_true")
    a = ap.parse_args()
    with FakeLLMServer(latency=a.latency) as server:
        ep = EndpointConfig(backend="openai", model="bench", base_url=server.openai_url, concurrency=a.concurrency,
                            timeout=30.0)
        client = HttpClient(ep)
        reqs = [ChatRequest(key=str(i), user=f"Question number {i}?", system="You are helpful.")
                for i in range(a.requests)]
        done = []
        start = time.perf_counter()
        client.map(reqs, lambda r, res: done.append(res.ok))
        seconds = time.perf_counter() - start
    rate, ideal = a.requests / seconds, a.concurrency / a.latency
    line = (f"\n### gen_bench {time.strftime('%Y-%m-%d')}: {platform.machine()}, {a.requests} requests, concurrency "
            f"{a.concurrency}, {a.latency * 1000:.0f} ms latency\n\n{sum(done)} ok in {seconds:.2f} s: "
            f"{rate:.1f} requests/s = {rate / ideal:.1%} of the ideal {ideal:.0f} requests/s (target >= 85%)\n")
    print(line)
    if not a.no_record:
        with open(ROOT / "bench" / "RESULTS.md", "a") as f:
            f.write(line)


if __name__ == "__main__":
    main()
