"""Chat clients for teachers and judges: OpenAI-compatible and Anthropic over plain HTTP, and local.

One interface for all three: `client.map(requests, on_result, on_attempt)` runs a list of
ChatRequests (concurrently over HTTP, in batches locally) and calls `on_result(request, result)` as
each finishes. HTTP behaviour (docs/design.md, section 3):
- 408/409/429/5xx, timeouts, dropped connections and malformed bodies are retried with exponential
  backoff and full jitter, at least as long as `Retry-After` says;
- a 429 closes a gate shared by every worker, so the whole pool slows down, not one thread;
- other 4xx fail at once with the server's message (a bad key or model name burns no retries);
  401/403/404 stop the whole job, since every later request would fail the same way;
- only standard request fields are sent (vLLM silently ignores unknown ones);
- the API key is read from the environment variable the manifest names, sent in a header, and
  scrubbed from every error message we keep.
"""
from __future__ import annotations

import email.utils
import math
import os
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import requests

RETRY_STATUSES = {408, 409, 429}
FATAL_STATUSES = {401, 403, 404}
ANTHROPIC_URL = "https://api.anthropic.com"
ANTHROPIC_VERSION = "2023-06-01"


class LLMConfigError(ValueError):
    """Raised before any work when an endpoint cannot be used (e.g. its API key variable is unset)."""


class FatalLLMError(RuntimeError):
    """An error every further request would repeat (bad key, unknown model): stop the job."""


class ServerUnreachable(FatalLLMError):
    """Not one request reached the server: it is down, or base_url is wrong."""


UNREACHABLE_AFTER = 3  # requests that failed to connect (after their retries), with no success, before giving up


@dataclass
class ChatRequest:
    key: str  # caller's id for the request
    user: str
    system: str | None = None
    temperature: float = 0.7
    top_p: float = 1.0
    max_tokens: int = 400
    stop: list[str] | None = None  # completions protocol: stop strings
    seed: int | None = None  # completions protocol: sampling seed (vLLM and OpenAI honour it)
    json_schema: dict | None = None  # openai protocol: constrain the answer (response_format json_object + schema)


@dataclass
class ChatResult:
    ok: bool
    text: str = ""
    finish_reason: str = ""  # stop | length | content_filter | refusal | "" (failed)
    status: int | None = None  # HTTP status of the last attempt
    usage: dict = field(default_factory=dict)
    latency_s: float = 0.0  # of the last attempt
    attempts: int = 0
    error: str = ""
    error_kind: str = ""  # rate_limited | server_error | timeout | connection | malformed | bad_request | auth | ...


def read_api_key(env_name: str, role: str) -> str:
    """The key from the environment, without surrounding whitespace (a Windows .env leaves a \\r). A key with
    characters an HTTP header cannot carry is refused here, with a message that never shows the key."""
    if not env_name:
        return ""
    key = os.environ.get(env_name, "").strip()
    if not key:
        raise LLMConfigError(f"[{role}] api_key_env = '{env_name}', but the environment variable {env_name} is not "
                             f"set; export it before running (the key is never read from a file)")
    if not all(0x21 <= ord(c) <= 0x7E for c in key):
        raise LLMConfigError(f"[{role}] the environment variable {env_name} holds characters an API key cannot have "
                             f"(a space, line break or non-ASCII character inside it); set it again (the value is "
                             f"not shown here)")
    return key


def _retry_after_seconds(value: str | None) -> float | None:
    """Seconds from a Retry-After header (a number or an HTTP date); None when absent or unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            parsed = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if parsed is None:
            return None
        if parsed.tzinfo is None:
            return None
        seconds = parsed.timestamp() - time.time()
    return max(0.0, seconds) if math.isfinite(seconds) else None


class RateGate:
    """Shared by all workers: after a 429 nobody sends until the gate reopens. Waits end early when the job is
    stopped (Ctrl-C, a fatal error), and the pause is announced once per closing."""

    def __init__(self, announce: Callable[[str], None] | None = None):
        self._open_at = 0.0
        self._lock = threading.Lock()
        self._announce = announce
        self._announced_until = 0.0

    def close_for(self, seconds: float) -> None:
        with self._lock:
            self._open_at = max(self._open_at, time.monotonic() + seconds)
            if self._announce is not None and self._open_at > self._announced_until + 1.0 and seconds >= 5:
                self._announced_until = self._open_at
                self._announce(f"rate limited; pausing {seconds:.0f} s")

    def wait(self, stop: threading.Event | None = None) -> None:
        while True:
            with self._lock:
                delay = self._open_at - time.monotonic()
            if delay <= 0:
                return
            if stop is not None:
                if stop.wait(min(delay, 1.0)):
                    return
            else:
                time.sleep(min(delay, 1.0))


def _openai_payload(endpoint, req: ChatRequest) -> tuple[str, dict, dict]:
    messages = []
    if req.system and endpoint.system_prompt == "system":
        messages.append({"role": "system", "content": req.system})
    user = req.user if not req.system or endpoint.system_prompt == "system" else f"{req.system}\n\n{req.user}"
    messages.append({"role": "user", "content": user})
    body = {"model": endpoint.model, "messages": messages, "temperature": req.temperature,
            "max_tokens": req.max_tokens}
    if req.top_p != 1.0:
        body["top_p"] = req.top_p
    if req.json_schema is not None:
        body["response_format"] = {"type": "json_object", "schema": req.json_schema}
    return endpoint.base_url.rstrip("/") + "/chat/completions", body, {}


def _openai_parse(data: dict) -> tuple[str, str, dict]:
    choice = data["choices"][0]
    message = choice.get("message") or {}
    text = message.get("content") or ""
    finish = choice.get("finish_reason") or "stop"
    if message.get("refusal"):
        finish, text = "refusal", message["refusal"]
    usage = data.get("usage") or {}
    return text, finish, {"input_tokens": usage.get("prompt_tokens"), "output_tokens": usage.get("completion_tokens")}


def _completions_payload(endpoint, req: ChatRequest) -> tuple[str, dict, dict]:
    """Plain completions: the prompt is already formatted with normlib's own template."""
    body = {"model": endpoint.model, "prompt": req.user, "max_tokens": req.max_tokens,
            "temperature": req.temperature}
    if req.stop:
        body["stop"] = req.stop
    if req.seed is not None:
        body["seed"] = req.seed
    if req.top_p != 1.0:
        body["top_p"] = req.top_p
    return endpoint.base_url.rstrip("/") + "/completions", body, {}


def _completions_parse(data: dict) -> tuple[str, str, dict]:
    choice = data["choices"][0]
    usage = data.get("usage") or {}
    return (choice.get("text") or "", choice.get("finish_reason") or "stop",
            {"input_tokens": usage.get("prompt_tokens"), "output_tokens": usage.get("completion_tokens")})


def _anthropic_payload(endpoint, req: ChatRequest) -> tuple[str, dict, dict]:
    user = req.user if not req.system or endpoint.system_prompt == "system" else f"{req.system}\n\n{req.user}"
    body = {"model": endpoint.model, "max_tokens": req.max_tokens, "temperature": req.temperature,
            "messages": [{"role": "user", "content": user}]}
    if req.system and endpoint.system_prompt == "system":
        body["system"] = req.system
    if req.top_p != 1.0:
        body["top_p"] = req.top_p
    base = (endpoint.base_url or ANTHROPIC_URL).rstrip("/")
    url = base + ("/messages" if base.endswith("/v1") else "/v1/messages")
    return url, body, {"anthropic-version": ANTHROPIC_VERSION}


def _anthropic_parse(data: dict) -> tuple[str, str, dict]:
    text = "".join(block.get("text", "") for block in data["content"] if block.get("type") == "text")
    finish = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
              "refusal": "refusal"}.get(data.get("stop_reason"), data.get("stop_reason") or "stop")
    usage = data.get("usage") or {}
    return text, finish, {"input_tokens": usage.get("input_tokens"), "output_tokens": usage.get("output_tokens")}


class HttpClient:
    def __init__(self, endpoint, api_key: str = "", backoff_base: float = 1.0, backoff_cap: float = 60.0,
                 completions: bool = False, role: str = "server"):
        """`completions=True` talks to an OpenAI-compatible /completions endpoint (eval of a served checkpoint).
        `role` names the server in errors ("teacher", "judge", "eval server")."""
        self.endpoint = endpoint
        self.role = role
        self._api_key = api_key
        self.backoff_base, self.backoff_cap = backoff_base, backoff_cap
        self.max_retry_after = float(getattr(endpoint, "max_retry_after", 300.0))
        self.gate = RateGate(lambda message: print(f"{role}: {message}", file=sys.stderr, flush=True))
        self._local = threading.local()
        if completions:
            self._payload, self._parse = _completions_payload, _completions_parse
            self._auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        elif endpoint.backend == "openai":
            self._payload, self._parse = _openai_payload, _openai_parse
            self._auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        else:
            self._payload, self._parse = _anthropic_payload, _anthropic_parse
            self._auth = {"x-api-key": api_key} if api_key else {}

    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def _scrub(self, text: str) -> str:
        """Remove the key from a message, also as an exception's repr() quotes it (escaped) and
        piecewise where a line break split it."""
        if not self._api_key:
            return text
        forms = {self._api_key, self._api_key.encode("unicode_escape").decode("ascii")}
        forms |= {part for part in self._api_key.splitlines() if len(part.strip()) >= 6}
        for form in sorted(forms, key=len, reverse=True):
            text = text.replace(form, "[api key removed]")
        return text

    def _sleep(self, seconds: float, stop: threading.Event | None) -> bool:
        """Sleep, waking early when the job stops; True when it stopped."""
        if stop is None:
            time.sleep(seconds)
            return False
        return stop.wait(seconds)

    def _backoff(self, attempt: int) -> float:
        return random.uniform(0, min(self.backoff_cap, self.backoff_base * 2 ** attempt))

    def complete(self, req: ChatRequest, on_attempt: Callable[[ChatRequest, ChatResult], None] | None = None,
                 stop: threading.Event | None = None) -> ChatResult:
        url, body, headers = self._payload(self.endpoint, req)
        headers = {**headers, **self._auth, "Content-Type": "application/json"}
        result = ChatResult(ok=False)
        for attempt in range(self.endpoint.max_retries + 1):
            if stop is not None and stop.is_set():
                result.error_kind = result.error_kind or "cancelled"
                return result
            self.gate.wait(stop)
            if stop is not None and stop.is_set():
                result.error_kind = result.error_kind or "cancelled"
                return result
            start = time.monotonic()
            wait = self._backoff(attempt)
            result = ChatResult(ok=False, attempts=attempt + 1)
            try:
                resp = self._session().post(url, json=body, headers=headers, timeout=self.endpoint.timeout)
                result.status = resp.status_code
                result.latency_s = time.monotonic() - start
                if resp.status_code == 200:
                    try:
                        result.text, result.finish_reason, result.usage = self._parse(resp.json())
                        result.ok = True
                    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
                        result.error_kind, result.error = "malformed", f"unreadable response body: {e!r}"[:300]
                else:
                    message = self._scrub(resp.text[:500])
                    result.error = f"HTTP {resp.status_code}: {message}"
                    retry_after = _retry_after_seconds(resp.headers.get("Retry-After"))
                    if retry_after is not None and retry_after > self.max_retry_after:
                        result.error_kind = "rate_limited" if resp.status_code == 429 else "server_error"
                        result.error = (f"HTTP {resp.status_code}: the server asked to wait {retry_after:.0f} s, more "
                                        f"than max_retry_after ({self.max_retry_after:.0f} s); rerun later "
                                        f"(finished requests are kept)")
                        if on_attempt:
                            on_attempt(req, result)
                        return result
                    if resp.status_code == 429:
                        result.error_kind = "rate_limited"
                        wait = max(wait, retry_after or 0.0)
                        self.gate.close_for(wait)
                    elif resp.status_code in RETRY_STATUSES or resp.status_code >= 500:
                        result.error_kind = "server_error" if resp.status_code >= 500 else f"http_{resp.status_code}"
                        wait = max(wait, retry_after or 0.0)
                    else:
                        result.error_kind = "auth" if resp.status_code in (401, 403) else \
                            "not_found" if resp.status_code == 404 else "bad_request"
                        if on_attempt:
                            on_attempt(req, result)
                        return result  # fail fast, no retries
            except requests.Timeout:
                result.latency_s = time.monotonic() - start
                result.error_kind, result.error = "timeout", f"no answer within {self.endpoint.timeout} s"
            except requests.ConnectionError as e:
                result.latency_s = time.monotonic() - start
                result.error_kind, result.error = "connection", self._scrub(str(e))[:300]
                self._local.__dict__.pop("session", None)  # a fresh connection pool next time
            except requests.RequestException as e:  # e.g. InvalidHeader, InvalidURL: retrying changes nothing
                result.latency_s = time.monotonic() - start
                result.error_kind = "bad_request"
                result.error = self._scrub(f"{type(e).__name__}: {e}")[:300]
                if on_attempt:
                    on_attempt(req, result)
                return result
            if on_attempt:
                on_attempt(req, result)
            if result.ok:
                return result
            if attempt < self.endpoint.max_retries and self._sleep(wait, stop):
                result.error_kind = "cancelled"
                return result
        return result

    def map(self, reqs: list[ChatRequest], on_result: Callable[[ChatRequest, ChatResult], None],
            on_attempt: Callable[[ChatRequest, ChatResult], None] | None = None) -> None:
        """Run all requests with at most `concurrency` in flight. Raises FatalLLMError (after the requests in
        flight finish) when the server rejects our credentials or model."""
        stop = threading.Event()
        fatal: list[ChatResult] = []
        unreachable: list[ChatResult] = []
        reached = threading.Event()
        lock = threading.Lock()
        give_up_after = min(len(reqs), UNREACHABLE_AFTER)

        def work(req: ChatRequest):
            if stop.is_set():
                return
            result = self.complete(req, on_attempt, stop)
            if result.error_kind == "cancelled":
                return
            if result.status is not None:
                reached.set()
            if result.status in FATAL_STATUSES:
                fatal.append(result)
                stop.set()
            if result.error_kind == "connection" and not reached.is_set():
                with lock:
                    unreachable.append(result)
                    if len(unreachable) >= give_up_after:
                        stop.set()  # the server is down or the URL is wrong: retrying the rest changes nothing
            on_result(req, result)

        with ThreadPoolExecutor(max_workers=self.endpoint.concurrency) as pool:
            futures = [pool.submit(work, r) for r in reqs]
            try:
                for f in futures:
                    f.result()
            except BaseException:
                stop.set()
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        url = self.endpoint.base_url or ANTHROPIC_URL
        if fatal:
            raise FatalLLMError(f"the {self.role} ({self.endpoint.backend} server at {url}) refused the request "
                                f"({fatal[0].error}); check the model name and the API key variable")
        if not reached.is_set() and len(unreachable) >= give_up_after > 0:
            raise ServerUnreachable(
                f"could not connect to the {self.role} at {url}: all {len(unreachable)} requests sent failed to "
                f"connect, each after {self.endpoint.max_retries} retries (last error: {unreachable[-1].error[:200]}). "
                f"Is the server running, and is base_url right?")


class LocalClient:
    """In-process generation with a transformers chat model (the offline default teacher/judge)."""

    def __init__(self, endpoint, root=None, seed: int = 0):
        from normlib.core.models import load_model, load_tokenizer, resolve_model

        self.endpoint = endpoint
        src = resolve_model(endpoint.model, root)
        self.tokenizer = load_tokenizer(src)
        if not getattr(self.tokenizer, "chat_template", None):
            raise LLMConfigError(f"local model '{endpoint.model}' has no chat template; a local teacher or judge must "
                                 f"be an instruct model")
        import torch
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model = load_model(src, dtype=torch.bfloat16 if device == "cuda" else torch.float32, device=device)
        self.seed = seed

    def _encode(self, req: ChatRequest) -> list[int]:
        messages = []
        if req.system and self.endpoint.system_prompt == "system":
            messages.append({"role": "system", "content": req.system})
        user = req.user if not req.system or self.endpoint.system_prompt == "system" else f"{req.system}\n\n{req.user}"
        messages.append({"role": "user", "content": user})
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)

    def map(self, reqs: list[ChatRequest], on_result, on_attempt=None) -> None:
        from normlib.core.sampling import generate_ids

        size = max(1, self.endpoint.batch_size)
        for start in range(0, len(reqs), size):
            batch = reqs[start:start + size]
            began = time.monotonic()
            outs = generate_ids(self.model, self.tokenizer, [self._encode(r) for r in batch],
                                max_new_tokens=batch[0].max_tokens, temperature=batch[0].temperature,
                                seed=self.seed + start, batch_size=size)
            latency = time.monotonic() - began
            for req, (ids, stopped) in zip(batch, outs):
                text = self.tokenizer.decode(ids, skip_special_tokens=True).strip()
                result = ChatResult(ok=True, text=text, finish_reason="stop" if stopped else "length", status=None,
                                    usage={"input_tokens": None, "output_tokens": len(ids)}, latency_s=latency,
                                    attempts=1)
                if on_attempt:
                    on_attempt(req, result)
                on_result(req, result)


def make_client(endpoint, role: str, root=None, seed: int = 0, backoff_base: float = 1.0):
    """The client for a [teacher] or [judge] table; fails before any work if its key is missing."""
    if endpoint.backend == "local":
        return LocalClient(endpoint, root, seed)
    return HttpClient(endpoint, read_api_key(endpoint.api_key_env, role), backoff_base=backoff_base, role=role)
