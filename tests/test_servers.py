"""Servers normlib starts or talks to: ready means a real generation came back; a dead server is named."""
import re
import subprocess
import sys
import textwrap

import pytest

from conftest import REPO, free_port
from normlib.llm.fakeserver import FakeLLMServer
from normlib.llm.clients import ChatRequest, HttpClient, ServerUnreachable
from normlib.core.manifest import EndpointConfig
from normlib.llm.servers import ManagedServer, ServerError, wait_until_ready

# A server that lists its models, then dies on the first generation request, as a llama.cpp build with
# CPU instructions the sandbox does not allow does (SIGSEGV in decode).
CRASHING_SERVER = textwrap.dedent("""
    import json, os, sys
    from http.server import BaseHTTPRequestHandler, HTTPServer
    class H(BaseHTTPRequestHandler):
        def log_message(self, *a): pass
        def do_GET(self):
            body = json.dumps({"data": [{"id": "m"}]}).encode()
            self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
            self.wfile.write(body)
        def do_POST(self):
            print("ggml: illegal instruction in the AMX kernel", flush=True)
            os._exit(139)
    print("listening", flush=True)
    HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
""")


def test_a_server_that_lists_models_but_dies_on_the_first_request_is_not_ready(tmp_path):
    port = free_port()
    script = tmp_path / "crash.py"
    script.write_text(CRASHING_SERVER)
    server = ManagedServer([sys.executable, str(script), str(port)], f"http://127.0.0.1:{port}/v1",
                           tmp_path / "server.log", timeout=60, what="test server")
    with pytest.raises(ServerError) as err:
        server.start()
    message = str(err.value)
    assert f"http://127.0.0.1:{port}/v1" in message and "died" in message
    assert "illegal instruction in the AMX kernel" in message  # the log's tail is shown
    assert server.proc.poll() is not None


def test_a_working_server_is_ready_after_one_chat_and_one_completion():
    with FakeLLMServer() as fake:
        assert wait_until_ready(fake.openai_url, timeout=30, kind="chat") >= 0
        assert wait_until_ready(fake.openai_url, timeout=30, kind="completions") >= 0
        paths = [s["path"] for s in fake.seen]
    assert paths == ["/v1/chat/completions", "/v1/completions"]


def test_the_wait_command_fails_clearly_when_nothing_listens(tmp_path):
    port = free_port()
    proc = subprocess.run([sys.executable, "-m", "normlib.llm.servers", "wait", f"http://127.0.0.1:{port}/v1",
                           "--timeout", "2"], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert proc.returncode == 1
    assert f"http://127.0.0.1:{port}/v1 was not ready within 2 s" in proc.stderr


def test_every_request_failing_to_connect_stops_the_job_and_names_the_url():
    port = free_port()
    ep = EndpointConfig(backend="openai", model="m", base_url=f"http://127.0.0.1:{port}/v1", max_retries=1,
                        concurrency=2, timeout=5)
    client = HttpClient(ep, backoff_base=0.01, role="teacher")
    reqs = [ChatRequest(key=str(i), user="hi") for i in range(50)]
    results = []
    with pytest.raises(ServerUnreachable) as err:
        client.map(reqs, lambda r, res: results.append(res))
    assert f"could not connect to the teacher at http://127.0.0.1:{port}/v1" in str(err.value)
    assert re.search(r"all [34] requests sent failed to connect", str(err.value))  # 3, or 4 with two in flight
    assert len(results) < 10  # it gave up instead of retrying all 50


def test_gen_py_says_the_teacher_is_unreachable(tmp_path):
    from conftest import make_project
    manifest = make_project(tmp_path / "p")
    port = free_port()
    text = manifest.read_text() + f"""
[teacher]
backend = "openai"
base_url = "http://127.0.0.1:{port}/v1"
model = "m"
max_retries = 1
"""
    manifest.write_text(text)
    (tmp_path / "p/data/generated/tiny/generic.jsonl").unlink()
    proc = subprocess.run([sys.executable, str(REPO / "gen.py"), "--manifest", str(manifest), "--condition",
                           "generic", "--no-progress"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    assert f"could not connect to the teacher at http://127.0.0.1:{port}/v1" in proc.stderr
    assert "Traceback" not in proc.stderr
