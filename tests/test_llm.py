"""HTTP clients against a loopback server with injected faults: what is retried, what fails fast."""
import threading
import time

import pytest

from normlib.llm.fakeserver import FakeLLMServer
from normlib.llm.clients import ChatRequest, FatalLLMError, HttpClient, LLMConfigError, make_client
from normlib.core.manifest import EndpointConfig

KEY = "sk-test-SECRET-123456"


def endpoint(server, backend="openai", **kw):
    base = server.openai_url if backend == "openai" else server.anthropic_url
    return EndpointConfig(backend=backend, model="fake", base_url=base, timeout=kw.pop("timeout", 2.0),
                          max_retries=kw.pop("max_retries", 4), **kw)


def client(server, backend="openai", **kw):
    return HttpClient(endpoint(server, backend, **kw), api_key=KEY, backoff_base=0.01)


REQ = ChatRequest(key="r1", user="What is a meadow?", system="You are kind.", max_tokens=50)


@pytest.mark.parametrize("backend", ["openai", "anthropic"])
def test_both_protocols_answer_and_send_only_standard_fields(backend):
    with FakeLLMServer() as server:
        result = client(server, backend).complete(REQ)
        assert result.ok and "meadow" in result.text and result.finish_reason == "stop" and result.attempts == 1
        body, headers = server.seen[0]["body"], server.seen[0]["headers"]
    if backend == "openai":
        assert set(body) == {"model", "messages", "temperature", "max_tokens"}
        assert body["messages"][0] == {"role": "system", "content": "You are kind."}
        assert headers["Authorization"] == f"Bearer {KEY}"
    else:
        assert set(body) == {"model", "messages", "temperature", "max_tokens", "system"}
        assert headers["x-api-key"] == KEY and headers["anthropic-version"]


def test_system_prompt_can_be_folded_into_the_user_turn():
    with FakeLLMServer() as server:
        client(server, system_prompt="fold_into_user").complete(REQ)
        messages = server.seen[0]["body"]["messages"]
    assert [m["role"] for m in messages] == ["user"]
    assert messages[0]["content"].startswith("You are kind.\n\nWhat is a meadow?")


@pytest.mark.parametrize("fault,kind", [("500", "server_error"), ("503", "server_error"), ("malformed", "malformed"),
                                        ("drop", "connection"), ("429:0.05", "rate_limited")])
def test_transient_faults_are_retried(fault, kind):
    with FakeLLMServer(faults=[fault, fault]) as server:
        attempts = []
        result = client(server).complete(REQ, on_attempt=lambda r, res: attempts.append(res.error_kind))
        assert result.ok and result.attempts == 3 and server.count == 3
    assert attempts == [kind, kind, ""]


def test_timeout_is_retried():
    # generous margins both ways: a busy 2-core machine may answer the normal retry slowly
    with FakeLLMServer(faults=["slow"], slow_seconds=20) as server:
        kinds = []
        result = client(server, timeout=1.5).complete(REQ, on_attempt=lambda r, res: kinds.append(res.error_kind))
        assert result.ok and kinds[0] == "timeout" and result.attempts >= 2


def test_retry_after_is_obeyed():
    with FakeLLMServer(faults=["429:0.6"]) as server:
        start = time.monotonic()
        result = client(server).complete(REQ)
        assert result.ok and time.monotonic() - start >= 0.6


def test_retries_run_out_with_the_last_error():
    with FakeLLMServer(faults=["500"] * 10) as server:
        result = client(server, max_retries=2).complete(REQ)
        assert not result.ok and result.attempts == 3 and result.error_kind == "server_error" and server.count == 3


@pytest.mark.parametrize("fault,kind", [("400", "bad_request"), ("401", "auth")])
def test_other_4xx_fail_fast_with_the_server_message(fault, kind):
    with FakeLLMServer(faults=[fault]) as server:
        result = client(server).complete(REQ)
        assert not result.ok and result.attempts == 1 and server.count == 1 and result.error_kind == kind
    assert f"HTTP {fault}" in result.error
    assert KEY not in result.error  # the 401 echoes the key; we scrub it
    if fault == "401":
        assert "Incorrect API key" in result.error and "[api key removed]" in result.error


def test_401_stops_the_whole_job():
    with FakeLLMServer(faults=lambda n, body: "401") as server:
        c = client(server, concurrency=2)
        results = []
        reqs = [ChatRequest(key=str(i), user=f"q{i}") for i in range(50)]
        with pytest.raises(FatalLLMError, match="refused the request"):
            c.map(reqs, lambda r, res: results.append(res))
        assert server.count <= 4  # the requests in flight, not all 50


def test_a_failed_request_does_not_sink_the_batch():
    with FakeLLMServer(faults=lambda n, body: "400" if "q3" == body["messages"][-1]["content"] else None) as server:
        results = {}
        client(server, concurrency=4).map([ChatRequest(key=str(i), user=f"q{i}") for i in range(10)],
                                          lambda r, res: results.__setitem__(r.key, res))
    assert sum(r.ok for r in results.values()) == 9 and not results["3"].ok


def test_429_slows_every_worker():
    """One worker's 429 closes the gate for all: no worker sends again until Retry-After has passed."""
    arrivals = []
    lock = threading.Lock()

    def faults(n, body):
        with lock:
            arrivals.append((n, time.monotonic()))
        return "429:0.5" if n == 0 else "slow:0.2"  # others are still in flight when the 429 comes back

    with FakeLLMServer(faults=faults) as server:
        c = client(server, concurrency=4)
        c.map([ChatRequest(key=str(i), user=f"q{i}") for i in range(12)], lambda r, res: None)
    t429 = arrivals[0][1]
    later = [round(t - t429, 3) for n, t in arrivals if n >= 4]  # sent after the first wave
    assert len(arrivals) == 13 and later and min(later) >= 0.5, later


def test_missing_key_is_a_clear_error_before_any_work(monkeypatch):
    monkeypatch.delenv("NORMLIB_TEST_KEY", raising=False)
    ep = EndpointConfig(backend="openai", model="m", base_url="http://127.0.0.1:9/v1", api_key_env="NORMLIB_TEST_KEY")
    with pytest.raises(LLMConfigError, match="NORMLIB_TEST_KEY is not set"):
        make_client(ep, "teacher")
