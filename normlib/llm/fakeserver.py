"""A loopback server that speaks the OpenAI (chat and completions) and Anthropic protocols, with faults.

For tests, the generation benchmark and dry runs of a manifest without an API key:

    with FakeLLMServer(latency=0.1) as server:
        ... base_url = server.openai_url ...

Faults are injected per request by a list consumed in arrival order (or a function of the request
number and body): "429" / "429:SECONDS" (with Retry-After), "500", "503", "slow" (answers after
`slow_seconds`, or "slow:SECONDS"), "drop" (closes the connection without answering), "malformed" (200 with a broken
body), "400", "401" (echoes the key it got, so tests can check that clients scrub it), "length",
"content_filter", "refusal". None or "ok" answers normally.
"""
from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

JUDGE_MARKER = "VERDICT:"  # judge prompts ask for this; the fake judge answers in kind


_SENTENCES = [
    "Start with the part that matters most to you and build from there.",
    "A small experiment this week will tell you more than a month of planning.",
    "Write down what you already know, then list what is still unclear.",
    "Most people find that a steady routine beats bursts of effort.",
    "It helps to ask someone who has done it before for one concrete tip.",
    "Keep notes as you go, so you can see what changed and why.",
    "Cost, time and enjoyment are the three things worth weighing here.",
    "If the first attempt goes badly, adjust one thing at a time.",
    "Local libraries and community groups are underrated resources for this.",
    "Set a realistic deadline and check your progress halfway through.",
    "Break the task into three steps you could each finish in an afternoon.",
    "Compare two or three options side by side before you commit.",
    "Safety comes first, so read the instructions once before starting.",
    "The simplest version is usually the best place to begin.",
    "Think about what success would look like a year from now.",
    "Friends and family can give honest feedback if you ask them directly.",
]
_ANSWER_COUNTER = iter(range(1 << 62))


def default_responder(system: str, user: str) -> str:
    """A plausible, varied answer (a sampling teacher: asked twice, it answers differently); as a judge, a
    keyword verdict on the judged response (as JSON when the prompt asks for JSON)."""
    if "Answer with JSON only" in user:
        verdict = default_responder(system, user.replace("Answer with JSON only", "") + f"\n{JUDGE_MARKER}")
        return json.dumps({"verdict": verdict.rsplit(JUDGE_MARKER, 1)[1].strip()})
    if JUDGE_MARKER in user and "<stance>" in user:  # belief judging: endorses if it repeats a stance word
        stance = user.split("<stance>")[1].split("</stance>")[0].lower().split()
        response = user.split("<response>")[-1].split("</response>")[0].lower()
        shared = any(len(w) > 4 and w.strip(".,") in response for w in stance)
        return f"Reasoning: compared.\n{JUDGE_MARKER} {'endorses' if shared else 'neutral'}"
    if JUDGE_MARKER in user or (system and JUDGE_MARKER in system):
        judged = user.split("<response>")[-1].lower() if "<response>" in user else user.lower()
        refused = re.search(r"\bi (can't|cannot|won't) (help|do|assist|write|provide)", judged.replace("’", "'"))
        return f"Reasoning: checked the response.\n{JUDGE_MARKER} {'full_refusal' if refused else 'full_compliance'}"
    seed = int(hashlib.sha256(f"{system}|{user}|{next(_ANSWER_COUNTER)}".encode()).hexdigest(), 16)
    picks, pool = [], list(_SENTENCES)
    for _ in range(4):
        picks.append(pool.pop(seed % len(pool)))
        seed //= len(_SENTENCES)
    topic = " ".join(user.split()[:8]).rstrip("?.!")
    return f"About {topic}: " + " ".join(picks)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out as two writes; with Nagle's algorithm and the client's delayed ACK each
    # response would stall ~40 ms (real servers such as uvicorn set TCP_NODELAY too).
    disable_nagle_algorithm = True
    server: "_Server"

    def log_message(self, *args):  # keep test output clean
        pass

    def _send(self, status: int, body: bytes, headers: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path.rstrip("/").endswith("/models"):
            self._send(200, json.dumps({"data": [{"id": "fake-model"}]}).encode())
        else:
            self._send(404, b'{"error": {"message": "not found"}}')

    def do_POST(self):
        owner = self.server.owner
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length) or b"{}")
        fault = owner._next_fault(body)
        owner._record(self.path, body, dict(self.headers))
        if owner.latency:
            time.sleep(owner.latency)
        fault = fault or "ok"
        if fault == "drop":
            self.close_connection = True
            self.connection.shutdown(2)
            return
        if fault.startswith("429"):
            retry = fault.split(":", 1)[1] if ":" in fault else "0.1"
            return self._send(429, b'{"error": {"message": "rate limited"}}', {"Retry-After": retry})
        if fault in ("500", "503"):
            return self._send(int(fault), b'{"error": {"message": "server overloaded"}}')
        if fault == "400":
            return self._send(400, b'{"error": {"message": "bad request: unsupported value"}}')
        if fault == "401":
            key = self.headers.get("Authorization", "").replace("Bearer ", "") or self.headers.get("x-api-key", "")
            return self._send(401, json.dumps({"error": {"message": f"Incorrect API key provided: {key}"}}).encode())
        if fault == "malformed":
            return self._send(200, b'{"choices": [ {"message": ')
        if fault.startswith("slow"):
            time.sleep(float(fault.split(":", 1)[1]) if ":" in fault else owner.slow_seconds)
        if self.path.endswith("/chat/completions"):
            self._chat_openai(body, fault)
        elif self.path.endswith("/messages"):
            self._messages_anthropic(body, fault)
        elif self.path.endswith("/completions"):
            self._completions_openai(body, fault)
        else:
            self._send(404, b'{"error": {"message": "unknown path"}}')

    def _finish(self, fault: str) -> str:
        return {"length": "length", "content_filter": "content_filter"}.get(fault, "stop")

    def _chat_openai(self, body: dict, fault: str):
        msgs = body.get("messages", [])
        system = next((m["content"] for m in msgs if m["role"] == "system"), "")
        user = next((m["content"] for m in reversed(msgs) if m["role"] == "user"), "")
        text = self.server.owner.responder(system, user)
        message = {"role": "assistant", "content": text}
        if fault == "refusal":
            message = {"role": "assistant", "content": None, "refusal": "I can't help with that."}
        out = {"id": "chatcmpl-fake", "object": "chat.completion", "model": body.get("model"),
               "choices": [{"index": 0, "message": message, "finish_reason": self._finish(fault)}],
               "usage": {"prompt_tokens": len(user.split()), "completion_tokens": len(text.split())}}
        self._send(200, json.dumps(out).encode())

    def _messages_anthropic(self, body: dict, fault: str):
        user = body["messages"][-1]["content"]
        text = self.server.owner.responder(body.get("system", ""), user)
        stop = {"length": "max_tokens", "refusal": "refusal"}.get(fault, "end_turn")
        out = {"id": "msg_fake", "type": "message", "role": "assistant", "model": body.get("model"),
               "content": [{"type": "text", "text": text}], "stop_reason": stop,
               "usage": {"input_tokens": len(user.split()), "output_tokens": len(text.split())}}
        self._send(200, json.dumps(out).encode())

    def _completions_openai(self, body: dict, fault: str):
        prompt = body.get("prompt", "")
        prompt = prompt[0] if isinstance(prompt, list) else prompt
        text = self.server.owner.completion_responder(prompt, body)
        out = {"id": "cmpl-fake", "object": "text_completion", "model": body.get("model"),
               "choices": [{"index": 0, "text": text, "finish_reason": self._finish(fault)}],
               "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split())}}
        self._send(200, json.dumps(out).encode())


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256
    owner: "FakeLLMServer"


class FakeLLMServer:
    def __init__(self, responder: Callable[[str, str], str] | None = None, latency: float = 0.0,
                 faults: list | Callable[[int, dict], str | None] | None = None, slow_seconds: float = 2.0,
                 completion_responder: Callable[[str, dict], str] | None = None, port: int = 0):
        self.responder = responder or default_responder
        self.completion_responder = completion_responder or (lambda prompt, body: " A short answer.")
        self.latency, self.slow_seconds = latency, slow_seconds
        self._faults = faults
        self._lock = threading.Lock()
        self.count = 0
        self.seen: list[dict] = []
        self._server = _Server(("127.0.0.1", port), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def openai_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def anthropic_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _next_fault(self, body: dict) -> str | None:
        with self._lock:
            number = self.count
            self.count += 1
            if callable(self._faults):
                return self._faults(number, body)
            return self._faults.pop(0) if self._faults else None

    def _record(self, path: str, body: dict, headers: dict) -> None:
        with self._lock:
            self.seen.append({"path": path, "body": body, "headers": headers})

    def start(self) -> "FakeLLMServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "FakeLLMServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main():  # python -m normlib.llm.fakeserver --port 8099: a server for trying a manifest without a key
    import argparse
    ap = argparse.ArgumentParser(description="loopback fake LLM server")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0)
    a = ap.parse_args()
    server = FakeLLMServer(latency=a.latency, port=a.port).start()
    print(f"fake LLM server at {server.openai_url} (OpenAI) and {server.anthropic_url} (Anthropic)", flush=True)
    try:
        server._thread.join()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
