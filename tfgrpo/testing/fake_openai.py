"""A stdlib-only, OpenAI-compatible chat-completions server for tests and demo mode.

The server never talks to a real model: a *responder* (``Callable[[dict], Reply]``)
decides what the "model" says, given the raw chat-completions request body.  The
same responder contract is used by :class:`tfgrpo.testing.scripted.ScriptedChatModel`,
so one responder can drive both the in-process fake and the HTTP fake.

Endpoints (with or without the ``/v1`` prefix):

* ``POST /v1/chat/completions`` -- a ``chat.completion`` JSON body, or an SSE stream
  of ``chat.completion.chunk`` events when ``"stream": true`` (the last event before
  ``data: [DONE]`` always carries ``usage``, with empty ``choices``).
* ``GET /v1/models`` -- one model, ``fake``.
* ``GET /health`` -- ``200 {"status": "ok"}``.

Fault injection is consumed per chat-completions request, in arrival order: queued
faults (``fail_next`` / ``malformed_next`` / ``hang_next``) are served first-in
first-out, one per request; otherwise ``fail_rate`` decides with a seeded RNG that
draws exactly one number per request, so runs are reproducible.

Run standalone with ``python -m tfgrpo.testing.fake_openai --port 8000``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import logging
import random
import signal
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypedDict, cast

__all__ = [
    "FAKE_MODEL_ID",
    "FakeOpenAIServer",
    "Reply",
    "Responder",
    "ResponderLike",
    "ToolCallSpec",
    "echo_responder",
    "estimate_reply_tokens",
    "estimate_request_tokens",
    "estimate_tokens",
    "forced_tool_name",
    "last_user_text",
    "main",
    "message_text",
    "normalize_reply",
    "reply_tool_calls_as_openai",
    "request_key",
    "tool_call_id",
    "tool_names",
]

logger = logging.getLogger(__name__)

FAKE_MODEL_ID = "fake"


class ToolCallSpec(TypedDict):
    """One tool call a responder wants the model to make.

    ``arguments`` may be a ``str`` so tests can send malformed JSON on purpose.
    """

    name: str
    arguments: dict[str, Any] | str


class Reply(TypedDict, total=False):
    """What the fake model says: text content and/or tool calls."""

    content: str
    tool_calls: list[ToolCallSpec]
    # "length": the reply was cut off at max_tokens (default: "tool_calls" with calls, else "stop")
    finish_reason: str


Responder = Callable[[dict], Reply]
"""Maps an OpenAI chat-completions request body to a :class:`Reply`."""

ResponderLike = Callable[[dict[str, Any]], Any]
"""What the fakes accept: any callable returning a Reply-shaped mapping (or a ``str``);
the return value is validated at call time by :func:`normalize_reply`."""


# ---------------------------------------------------------------------------
# Helpers shared with ScriptedChatModel
# ---------------------------------------------------------------------------


def estimate_tokens(text: str) -> int:
    """Crude token estimate: ``len(text) // 4``, never less than 1."""
    return max(1, len(text) // 4)


def message_text(content: Any) -> str:
    """Flatten OpenAI message ``content`` (str, None or a list of parts) to text."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "".join(parts)
    return str(content)


def _request_text(body: dict) -> str:
    chunks: list[str] = []
    for msg in body.get("messages") or []:
        if not isinstance(msg, dict):
            continue
        chunks.append(message_text(msg.get("content")))
        for tc in msg.get("tool_calls") or []:
            fn = (tc or {}).get("function") or {}
            chunks.append(str(fn.get("name") or ""))
            chunks.append(str(fn.get("arguments") or ""))
    if body.get("tools"):
        chunks.append(json.dumps(body["tools"], sort_keys=True, default=str))
    return "".join(chunks)


def estimate_request_tokens(body: dict) -> int:
    """Prompt-token estimate for a request body (message text + tool schemas)."""
    return estimate_tokens(_request_text(body))


def _arguments_str(arguments: dict[str, Any] | str) -> str:
    if isinstance(arguments, str):
        return arguments
    return json.dumps(arguments, ensure_ascii=False)


def estimate_reply_tokens(reply: Reply) -> int:
    """Completion-token estimate for a reply (content + tool names + arguments)."""
    text = reply.get("content", "") or ""
    for tc in reply.get("tool_calls", []) or []:
        text += tc["name"] + _arguments_str(tc.get("arguments", {}))
    return estimate_tokens(text)


def request_key(body: dict) -> str:
    """Stable identity of a call: sha256 of canonical JSON of the prompt-relevant fields.

    Covers ``messages``, ``tools``, ``tool_choice`` and ``seed`` only, so two
    processes making the same logical call (e.g. before and after a crash) agree.
    """
    payload = {k: body.get(k) for k in ("messages", "tools", "tool_choice", "seed")}
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def tool_call_id(key: str, index: int) -> str:
    """Deterministic tool-call id for the ``index``-th tool call answering ``key``."""
    digest = hashlib.sha256(f"{key}:{index}".encode()).hexdigest()
    return f"call_{digest[:24]}"


def tool_names(body: dict) -> list[str]:
    """Names of the function tools offered in a request body."""
    names: list[str] = []
    for tool in body.get("tools") or []:
        if isinstance(tool, dict):
            fn = tool.get("function")
            if isinstance(fn, dict) and isinstance(fn.get("name"), str):
                names.append(fn["name"])
    return names


def forced_tool_name(body: dict) -> str | None:
    """Name of the function the request forces the model to call, if any.

    Handles ``{"type": "function", "function": {"name": ...}}`` (what
    ``ChatOpenAI.with_structured_output(method="function_calling")`` sends), the
    flat ``{"type": "function", "name": ...}`` form, and ``"required"`` / ``"any"``
    when exactly one tool is offered (what ``BaseChatModel.with_structured_output``
    produces through ``bind_tools(tool_choice="any")``).
    """
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        fn = choice.get("function")
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            return str(fn["name"])
        if isinstance(choice.get("name"), str):
            return str(choice["name"])
        return None
    if choice in ("required", "any") or choice is True:
        names = tool_names(body)
        if len(names) == 1:
            return names[0]
    return None


def last_user_text(body: dict) -> str:
    """Text of the last ``user`` message in a request body ('' if none)."""
    for msg in reversed(body.get("messages") or []):
        if isinstance(msg, dict) and msg.get("role") == "user":
            return message_text(msg.get("content"))
    return ""


def echo_responder(body: dict) -> Reply:
    """Default responder: echo the last user message, or call a forced tool with ``{}``."""
    name = forced_tool_name(body)
    if name is not None:
        return {"content": "", "tool_calls": [{"name": name, "arguments": {}}]}
    return {"content": "echo: " + last_user_text(body)}


def normalize_reply(reply: Any) -> Reply:
    """Validate a responder's return value (a bare ``str`` is accepted as content)."""
    if isinstance(reply, str):
        return {"content": reply}
    if not isinstance(reply, Mapping):
        raise TypeError(f"responder must return a Reply dict, got {type(reply)!r}")
    content = reply.get("content", "")
    if content is None:
        content = ""
    if not isinstance(content, str):
        raise TypeError("Reply.content must be a str")
    calls: list[ToolCallSpec] = []
    for tc in reply.get("tool_calls") or []:
        if not isinstance(tc, dict) or not isinstance(tc.get("name"), str):
            raise TypeError(f"invalid tool call in Reply: {tc!r}")
        args = tc.get("arguments", {})
        if args is None:
            args = {}
        if not isinstance(args, dict | str):
            raise TypeError("tool call arguments must be a dict or a str")
        calls.append({"name": tc["name"], "arguments": args})
    out: Reply = {"content": content}
    if calls:
        out["tool_calls"] = calls
    finish = reply.get("finish_reason")
    if finish is not None:
        if finish not in ("stop", "length", "tool_calls"):
            raise TypeError(f"Reply.finish_reason must be stop, length or tool_calls, got {finish!r}")
        out["finish_reason"] = finish
    return out


def finish_of(reply: Reply) -> str:
    """The reply's finish_reason: as the responder set it, else from whether it calls tools."""
    return reply.get("finish_reason") or ("tool_calls" if reply.get("tool_calls") else "stop")


def reply_tool_calls_as_openai(reply: Reply, key: str) -> list[dict[str, Any]]:
    """The reply's tool calls in OpenAI wire format (ids derived from ``key``)."""
    return [
        {
            "id": tool_call_id(key, i),
            "type": "function",
            "function": {
                "name": tc["name"],
                "arguments": _arguments_str(tc.get("arguments", {})),
            },
        }
        for i, tc in enumerate(reply.get("tool_calls", []) or [])
    ]


def _load_responder(spec: str) -> ResponderLike:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"--responder must look like 'module:function', got {spec!r}")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{spec!r} is not callable")
    return cast(ResponderLike, obj)


# ---------------------------------------------------------------------------
# HTTP server
# ---------------------------------------------------------------------------


class _Fault:
    __slots__ = ("kind", "status", "seconds", "retry_after")

    def __init__(
        self, kind: str, status: int = 500, seconds: float = 0.0, retry_after: str | None = None
    ) -> None:
        self.kind = kind  # "fail" | "malformed" | "hang"
        self.status = status
        self.seconds = seconds
        self.retry_after = retry_after  # a Retry-After header value to send with a "fail"


class _Aborted(Exception):
    """The server stopped while the request was held/hanging: drop the connection."""


_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    408: "timeout",
    429: "rate_limit_exceeded",
}


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr: tuple[str, int], fake: FakeOpenAIServer) -> None:
        self.fake = fake
        # listen() backlog: a fan-out of hundreds of simultaneous connections overflows the default 5
        # (the kernel then drops SYNs and clients wait a 1 s retransmit)
        self.request_queue_size = fake.backlog
        super().__init__(addr, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer
    server_version = "FakeOpenAI/0.1"
    _on_commit: Callable[[], None] | None = None

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("fake-openai %s - " + format, self.address_string(), *args)

    # -- plumbing --------------------------------------------------------------

    def _route(self) -> str:
        path = self.path.split("?", 1)[0].rstrip("/")
        if path.startswith("/v1/"):
            path = path[3:]
        return path

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.close_connection = True
        self._write_last(body)

    def _write_last(self, data: bytes) -> None:
        """Write the final bytes of a response, committing it just before the last byte.

        The client cannot finish reading before the commit hook ran, so once a client
        call returns, ``completed`` / ``in_flight`` already account for it.
        """
        self.wfile.write(data[:-1])
        self.wfile.flush()
        commit = self._on_commit
        if commit is not None:
            commit()
        self.wfile.write(data[-1:])
        self.wfile.flush()

    def _send_json(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(obj).encode("utf-8"), headers=headers)

    def _send_error(
        self, status: int, message: str, code: str | None = None, retry_after: str | None = None
    ) -> None:
        err_type = _ERROR_TYPES.get(status, "server_error")
        headers = {"retry-after": "0", "retry-after-ms": "0"} if status == 429 else None
        if retry_after is not None:
            headers = {"retry-after": retry_after}
        self._send_json(
            status,
            {
                "error": {
                    "message": message,
                    "type": err_type,
                    "param": None,
                    "code": code or err_type,
                }
            },
            headers=headers,
        )

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            data = bytearray()
            while True:
                line = self.rfile.readline()
                size = int(line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(data)
                data += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    # -- verbs -------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        route = self._route()
        if route == "/health":
            self._send_json(200, {"status": "ok"})
        elif route == "/models":
            self._send_json(
                200,
                {
                    "object": "list",
                    "data": [
                        {
                            "id": FAKE_MODEL_ID,
                            "object": "model",
                            "created": 0,
                            "owned_by": "tfgrpo",
                        }
                    ],
                },
            )
        else:
            self._send_error(404, f"unknown path {self.path}")

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        route = self._route()
        raw = self._read_body()
        if route != "/chat/completions":
            self._send_error(404, f"unknown path {self.path}")
            return
        try:
            body = json.loads(raw.decode("utf-8") or "null")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            self._send_error(400, f"request body is not valid JSON: {exc}")
            return
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            self._send_error(400, "request body must be an object with 'messages'")
            return
        fake = self.server.fake
        fake._enter(body)
        committed = False

        def commit() -> None:
            nonlocal committed
            if not committed:
                committed = True
                fake._finish(body, completed=True)

        self._on_commit = commit
        try:
            self._chat(fake, body)
        except _Aborted:
            self.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        finally:
            self._on_commit = None
            if not committed:
                fake._finish(body, completed=False)

    def _chat(self, fake: FakeOpenAIServer, body: dict) -> None:
        fault = fake._next_fault()
        fake._wait_hold(body)
        latency = fake._latency()
        if latency > 0:
            fake._sleep(latency)
        if fault is not None and fault.kind == "hang":
            fake._sleep(fault.seconds)
            fault = None
        if fault is not None and fault.kind == "fail":
            message = f"injected failure ({fault.status})"
            self._send_error(fault.status, message, retry_after=fault.retry_after)
            return
        stream = bool(body.get("stream"))
        if fault is not None and fault.kind == "malformed":
            if stream:
                payload = b'data: {"id": "chatcmpl-broken", "choices": [\n\ndata: [DONE]\n\n'
                self._send(200, payload, content_type="text/event-stream")
            else:
                self._send(200, b'{"id": "chatcmpl-broken", "object": "chat.comp')
            return
        try:
            reply = normalize_reply(fake.responder(body))
        except Exception as exc:  # responder bugs surface as a 500 to the client
            logger.exception("fake-openai responder failed")
            self._send_error(500, f"responder error: {type(exc).__name__}: {exc}")
            return
        fake._count_usage(_usage(body, reply))
        if stream:
            self._stream_reply(body, reply)
        else:
            self._send_json(200, _completion(body, reply))

    def _stream_reply(self, body: dict, reply: Reply) -> None:
        key = request_key(body)
        cid = "chatcmpl-" + uuid.uuid4().hex
        created = int(time.time())
        model = body.get("model") or FAKE_MODEL_ID

        def chunk(delta: dict, finish: str | None) -> dict:
            return {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }

        events: list[dict] = [chunk({"role": "assistant", "content": ""}, None)]
        content = reply.get("content", "")
        step = 16
        for i in range(0, len(content), step):
            events.append(chunk({"content": content[i : i + step]}, None))
        calls = reply_tool_calls_as_openai(reply, key)
        for i, tc in enumerate(calls):
            events.append(
                chunk(
                    {
                        "tool_calls": [
                            {
                                "index": i,
                                "id": tc["id"],
                                "type": "function",
                                "function": {
                                    "name": tc["function"]["name"],
                                    "arguments": "",
                                },
                            }
                        ]
                    },
                    None,
                )
            )
            args = tc["function"]["arguments"]
            for j in range(0, len(args), step):
                events.append(
                    chunk(
                        {"tool_calls": [{"index": i, "function": {"arguments": args[j : j + step]}}]},
                        None,
                    )
                )
        events.append(chunk({}, finish_of(reply)))
        events.append(
            {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [],
                "usage": _usage(body, reply),
            }
        )
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        for ev in events:
            self.wfile.write(b"data: " + json.dumps(ev).encode("utf-8") + b"\n\n")
            self.wfile.flush()
        self._write_last(b"data: [DONE]\n\n")


def _usage(body: dict, reply: Reply) -> dict[str, int]:
    prompt = estimate_request_tokens(body)
    completion = estimate_reply_tokens(reply)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }


def _completion(body: dict, reply: Reply) -> dict[str, Any]:
    calls = reply_tool_calls_as_openai(reply, request_key(body))
    message: dict[str, Any] = {
        "role": "assistant",
        "content": reply.get("content", ""),
        "refusal": None,
    }
    if calls:
        message["tool_calls"] = calls
    return {
        "id": "chatcmpl-" + uuid.uuid4().hex,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": body.get("model") or FAKE_MODEL_ID,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": None,
                "finish_reason": finish_of(reply),
            }
        ],
        "usage": _usage(body, reply),
        "system_fingerprint": "fp_fake",
    }


class FakeOpenAIServer:
    """OpenAI-compatible chat-completions server on ``127.0.0.1`` for tests.

    Example::

        with FakeOpenAIServer(my_responder) as server:
            llm = ChatOpenAI(model="fake", base_url=server.base_url,
                             api_key="x", max_retries=0)
            llm.invoke("hi")
            assert len(server.completed) == 1

    Requests released because the server is stopping (held by :meth:`hold`, or
    sleeping in latency / :meth:`hang_next`) get no response: their connection
    is dropped, like a crashed provider, and they are not added to ``completed``.
    """

    def __init__(
        self,
        responder: ResponderLike = echo_responder,
        *,
        latency: float = 0.0,
        latency_max: float | None = None,
        fail_rate: float = 0.0,
        fail_status: int = 500,
        seed: int = 0,
        port: int = 0,
        backlog: int = 128,
        record: str | None = None,
    ) -> None:
        if not 0.0 <= fail_rate <= 1.0:
            raise ValueError("fail_rate must be within [0, 1]")
        self.responder: ResponderLike = responder
        self.latency = float(latency)
        # with latency_max, each request takes a seeded uniform draw in [latency, latency_max]: some
        # finish after the client gave up (a provider still answers, and usually bills, those)
        self.latency_max = None if latency_max is None else float(latency_max)
        self._latency_rng = random.Random(seed + 1)
        self.fail_rate = float(fail_rate)
        self.fail_status = int(fail_status)
        self.seed = seed
        self.backlog = int(backlog)
        self._port = port
        self._record = open(record, "a", encoding="utf-8") if record else None  # noqa: SIM115
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._rng = random.Random(seed)
        self._faults: deque[_Fault] = deque()
        self._requests: list[dict] = []
        self._completed: list[dict] = []
        self._in_flight = 0
        self._max_in_flight = 0
        self._usage = {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        self._hold_predicate: Callable[[dict], bool] | None = None
        self._hold_generation = 0
        self._held = 0
        self._stopping = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> FakeOpenAIServer:
        """Bind and serve in a daemon thread. Returns ``self``."""
        if self._httpd is not None:
            return self
        self._stopping.clear()
        self._httpd = _HTTPServer(("127.0.0.1", self._port), self)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-openai-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; held/hanging requests are released and dropped. Idempotent."""
        httpd = self._httpd
        if httpd is None:
            return
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None
        if self._record is not None:
            self._record.close()
            self._record = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._httpd is not None

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("server not started")
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1`` -- pass as ``base_url`` to OpenAI clients."""
        return f"http://127.0.0.1:{self.port}/v1"

    # -- fault injection ---------------------------------------------------------

    def fail_next(self, n: int = 1, status: int = 500, retry_after: float | str | None = None) -> None:
        """Answer the next ``n`` chat requests with HTTP ``status`` and an error body; with
        ``retry_after``, also a ``Retry-After`` header of that value (seconds, or an HTTP date)."""
        header = None if retry_after is None else str(retry_after)
        with self._lock:
            self._faults.extend(_Fault("fail", status=status, retry_after=header) for _ in range(n))

    def malformed_next(self, n: int = 1) -> None:
        """Answer the next ``n`` chat requests with a 200 whose body is invalid JSON."""
        with self._lock:
            self._faults.extend(_Fault("malformed") for _ in range(n))

    def hang_next(self, n: int = 1, seconds: float = 30.0) -> None:
        """Delay the next ``n`` chat requests by ``seconds`` before answering normally."""
        with self._lock:
            self._faults.extend(_Fault("hang", seconds=seconds) for _ in range(n))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    # -- gate ----------------------------------------------------------------------

    def hold(self, predicate: Callable[[dict], bool] | None = None) -> None:
        """Block matching chat requests (all if ``predicate`` is None) until :meth:`release`."""
        with self._lock:
            self._hold_predicate = predicate if predicate is not None else _always

    def release(self) -> None:
        """Let every held request proceed and stop holding new ones."""
        with self._cond:
            self._hold_predicate = None
            self._hold_generation += 1
            self._cond.notify_all()

    def held_count(self) -> int:
        """Number of requests blocked by :meth:`hold` right now."""
        with self._lock:
            return self._held

    def wait_for_held(self, n: int = 1, timeout: float = 5.0) -> bool:
        """Wait until at least ``n`` requests are held; True on success."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._held < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    # -- accounting --------------------------------------------------------------

    @property
    def requests(self) -> list[dict]:
        """Chat request bodies received, in arrival order (a snapshot copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def completed(self) -> list[dict]:
        """Chat request bodies whose response was written, error responses included.

        A request is recorded just before the last byte of its response is sent, so
        it is already listed when the client's call returns. Requests dropped because
        the server stopped (held or hanging) or the client disconnected are not.
        """
        with self._lock:
            return list(self._completed)

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    @property
    def max_in_flight(self) -> int:
        """Peak number of chat requests being processed concurrently."""
        with self._lock:
            return self._max_in_flight

    @property
    def usage_totals(self) -> dict[str, int]:
        """What a provider would bill: the ``usage`` of every answer sent (``calls``: how many), error
        responses and broken bodies excluded."""
        with self._lock:
            return dict(self._usage)

    def reset_stats(self) -> None:
        """Forget recorded requests, usage totals and the in-flight peak."""
        with self._lock:
            self._usage = dict.fromkeys(self._usage, 0)
            self._requests.clear()
            self._completed.clear()
            self._max_in_flight = self._in_flight

    request_key = staticmethod(request_key)

    # -- used by the handler -------------------------------------------------------

    def _enter(self, body: dict) -> None:
        with self._lock:
            if self._record is not None:  # one JSON line per chat request (benchmarks replay them)
                self._record.write(json.dumps(body) + "\n")
                self._record.flush()
            self._requests.append(body)
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)

    def _finish(self, body: dict, *, completed: bool) -> None:
        with self._lock:
            self._in_flight -= 1
            if completed:
                self._completed.append(body)

    def _count_usage(self, usage: dict[str, int]) -> None:
        with self._lock:
            self._usage["calls"] += 1
            for key, value in usage.items():
                self._usage[key] = self._usage.get(key, 0) + value

    def _next_fault(self) -> _Fault | None:
        with self._lock:
            draw = self._rng.random()  # exactly one draw per request: reproducible
            if self._faults:
                return self._faults.popleft()
            if self.fail_rate > 0 and draw < self.fail_rate:
                return _Fault("fail", status=self.fail_status)
            return None

    def _latency(self) -> float:
        if self.latency_max is None:
            return self.latency
        with self._lock:
            return self._latency_rng.uniform(self.latency, self.latency_max)

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Wait until no chat request is being processed (abandoned ones finish too); True on success."""
        deadline = time.monotonic() + timeout
        while self.in_flight:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def _sleep(self, seconds: float) -> None:
        if self._stopping.wait(seconds):
            raise _Aborted

    def _wait_hold(self, body: dict) -> None:
        with self._lock:
            predicate = self._hold_predicate
            generation = self._hold_generation
        if predicate is None or not predicate(body):
            return
        with self._cond:
            if self._hold_generation != generation:
                return
            self._held += 1
            self._cond.notify_all()
            try:
                while self._hold_generation == generation and not self._stopping.is_set():
                    self._cond.wait(0.5)
            finally:
                self._held -= 1
        if self._stopping.is_set():
            raise _Aborted


def _always(_body: dict) -> bool:
    return True


# ---------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tfgrpo.testing.fake_openai",
        description="Serve a fake OpenAI-compatible chat-completions API on 127.0.0.1.",
    )
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds per call")
    parser.add_argument(
        "--latency-max", type=float, default=None, help="seconds per call drawn in [--latency, this]"
    )
    parser.add_argument("--fail-rate", type=float, default=0.0)
    parser.add_argument("--fail-status", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backlog", type=int, default=128, help="listen() backlog for big fan-outs")
    parser.add_argument("--record", default=None, help="append every chat request body to this JSONL file")
    parser.add_argument(
        "--responder",
        default=None,
        help="'module:function' responder (default: echo_responder)",
    )
    args = parser.parse_args(argv)
    responder = _load_responder(args.responder) if args.responder else echo_responder
    server = FakeOpenAIServer(
        responder,
        latency=args.latency,
        latency_max=args.latency_max,
        fail_rate=args.fail_rate,
        fail_status=args.fail_status,
        seed=args.seed,
        port=args.port,
        backlog=args.backlog,
        record=args.record,
    )
    server.start()

    def _on_sigterm(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _on_sigterm)
    print(f"listening on {server.base_url}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
