"""Several `voicebot serve` workers on one database: real processes, real websockets carrying
Twilio's frames, on a SQLite file and on the test PostgreSQL (the ``db_url`` fixture).

What the workers must agree on is in the database: a call signed by one worker streams to another,
a stream token counts once whichever worker sees it, the line cap (``server.max_calls``) holds across
all of them, and a worker that dies gives its lines back when their lease runs out.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import secrets
import time
from pathlib import Path

import pytest

from pipeline.sim.server import ServeProcess
from pipeline.sim.twilio_client import Answer, TwilioCaller, local_socket_url, new_sids, place_call
from pipeline.store import ReservationStore

NOW = "2026-12-01T10:00"
#: one line between all the workers, whose lease is renewed every second
ONE_LINE = {"VOICEBOT__SERVER__MAX_CALLS": "1", "VOICEBOT__SERVER__LINE_LEASE_S": "3",
            "VOICEBOT__SERVER__SILENCE_PROMPT_S": "0", "VOICEBOT__SERVER__SILENCE_HANGUP_S": "0"}
#: generous: the machine running the tests may be busy
ANSWER_S = 60.0


def _servers(workdir: Path, config: Path, db_url: str, n: int, args: tuple[str, ...] = ()) -> list[ServeProcess]:
    token = secrets.token_hex(16)  # one Twilio account: every worker checks the same signatures
    servers = []
    for i in range(n):
        (workdir / f"worker{i}").mkdir()
        servers.append(ServeProcess(workdir / f"worker{i}", NOW, str(config), store_url=db_url, token=token,
                                    env=ONE_LINE, args=args))
    return servers


@pytest.fixture
def two(db_url, test_models_dir, tmp_path):
    """Two `voicebot serve` processes on one database, as two hosts behind a load balancer."""
    servers = _servers(tmp_path, test_models_dir / "config.yaml", db_url, 2)
    try:
        for s in servers:
            s.wait_ready(prerender=False)
        yield servers
    finally:
        for s in servers:
            s.stop()
    for s in servers:
        assert "Traceback" not in s.log_text(), s.log_text()[-3000:]


async def _dial(signer: ServeProcess, streamer: ServeProcess, answer: Answer | None = None,
                call_sid: str | None = None) -> tuple[TwilioCaller, Answer]:
    """The webhook on ``signer`` (unless ``answer`` is given: a token presented again), then the media
    stream to ``streamer``, started with the TwiML's parameters."""
    import websockets

    call_sid = call_sid or new_sids()[1]
    if answer is None:
        answer = await asyncio.to_thread(place_call, signer.base_url, signer.token, call_sid)
    ws = await websockets.connect(local_socket_url(answer.stream_url, streamer.base_url), open_timeout=10)
    caller = TwilioCaller(ws, call_sid=call_sid)
    await caller.start(answer.parameters)
    return caller, answer


def _busy(caller: TwilioCaller) -> bool:
    return any((m.get("mark") or {}).get("name") == "busy" for m in caller.events("mark"))


async def _served(caller: TwilioCaller) -> bool:
    """The bot greets the caller (and it is not the busy message)."""
    t0 = time.monotonic()
    greeted = await caller.wait_answer(t0, ANSWER_S) is not None
    await caller.wait_played(ANSWER_S)
    return greeted and not _busy(caller) and not caller.closed


async def _refused(caller: TwilioCaller) -> bool:
    """Closed as unauthorised (1008) without a single message from the bot."""
    closed = await caller.wait_closed(30)
    return closed and caller.ws.close_code == 1008 and caller.received == []


async def _hang_up(caller: TwilioCaller) -> None:
    await caller.stop()
    await caller.wait_closed(30)
    await caller.close()


def _lines_free(db_url: str, timeout_s: float = 30.0) -> bool:
    with ReservationStore(db_url) as store:
        deadline = time.monotonic() + timeout_s
        while store.lines_in_use() and time.monotonic() < deadline:
            time.sleep(0.1)
        return store.lines_in_use() == 0


def test_a_call_signed_on_one_worker_is_served_by_the_other_and_its_token_counts_once(two):
    a, b = two

    async def flow():
        caller, answer = await _dial(a, b)
        served = await _served(caller)
        await _hang_up(caller)
        # the same token again, to either worker
        again = [(await _dial(a, s, answer, caller.call_sid))[0] for s in (a, b)]
        refused = [await _refused(c) for c in again]
        for c in again:
            await c.close()
        return served, refused

    served, refused = asyncio.run(asyncio.wait_for(flow(), 4 * ANSWER_S))
    assert served
    assert refused == [True, True]
    for s in two:
        assert "phone stream refused: unknown, used or expired token (used)" in s.log_text()
        assert "Twilio webhook refused" not in s.log_text()


def test_the_line_cap_holds_across_workers_and_a_freed_line_serves_the_next_call(two, db_url):
    a, b = two

    async def flow():
        first, _ = await _dial(a, a)
        assert await _served(first)
        # the one line is taken on a: b has none to give, whoever signed the call
        refused = []
        for signer, streamer in ((b, b), (a, b), (b, a)):
            caller, _ = await _dial(signer, streamer)
            refused.append(await caller.wait_closed(ANSWER_S) and _busy(caller))
            await caller.close()
        await _hang_up(first)
        assert await asyncio.to_thread(_lines_free, db_url)
        after, _ = await _dial(a, b)
        served_after = await _served(after)
        await _hang_up(after)
        return refused, served_after

    refused, served_after = asyncio.run(asyncio.wait_for(flow(), 8 * ANSWER_S))
    assert refused == [True, True, True]
    assert served_after
    assert "all 1 lines are taken across the workers" in b.log_text()


def test_the_lines_of_a_worker_that_died_are_freed_when_their_lease_runs_out(two, db_url):
    a, b = two

    async def flow():
        held, _ = await _dial(a, a)
        assert await _served(held)
        a.proc.kill()  # no shutdown, no line given back
        a.proc.wait(30)
        with ReservationStore(db_url) as store:
            assert store.lines_in_use(stale_s=3600) == 1  # still in the table
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            caller, _ = await _dial(b, b)
            if await _served(caller):
                await _hang_up(caller)
                return True
            await caller.close()
            await asyncio.sleep(1)
        return False

    assert asyncio.run(asyncio.wait_for(flow(), 4 * ANSWER_S))


def test_serve_workers_runs_processes_sharing_the_port_and_the_cap(test_models_dir, tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    (server,) = _servers(tmp_path, test_models_dir / "config.yaml", url, 1, args=("--workers", "2"))
    try:
        server.wait_ready(prerender=False)
        deadline = time.monotonic() + 300
        while server.log_text().count("Application startup complete") < 2:
            assert server.alive() and time.monotonic() < deadline, server.log_text()[-3000:]
            time.sleep(0.2)

        async def flow():
            first, _ = await _dial(server, server)
            served = await _served(first)
            busy = []
            for _ in range(3):  # whichever worker the kernel hands it to
                caller, _ = await _dial(server, server)
                busy.append(await caller.wait_closed(ANSWER_S) and _busy(caller))
                await caller.close()
            await _hang_up(first)
            return served, busy

        served, busy = asyncio.run(asyncio.wait_for(flow(), 6 * ANSWER_S))
    finally:
        server.stop(timeout_s=60)
    text = server.log_text()
    assert served and busy == [True, True, True]
    assert len(set(re.findall(r"Started server process \[(\d+)\]", text))) == 2, text[-3000:]
    assert "2 workers" in text and "Traceback" not in text
    assert server.proc.returncode == 0


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///file:calls?mode=memory&uri=true"])
def test_serve_workers_refuses_a_database_each_worker_would_have_alone(test_models_dir, monkeypatch, capsys, url):
    from pipeline.cli import main

    monkeypatch.setenv("VOICEBOT__STORE__URL", url)
    monkeypatch.setenv("VOICEBOT__TWILIO__VALIDATE", "false")
    code = main(["serve", "--config", str(test_models_dir / "config.yaml"), "--workers", "2", "--no-download"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "--workers 2 needs a database the workers share" in err and "in memory" in err


def test_serve_workers_must_be_at_least_one(test_models_dir, capsys):
    from pipeline.cli import main

    assert main(["serve", "--config", str(test_models_dir / "config.yaml"), "--workers", "0"]) == 2
    assert "--workers must be at least 1" in capsys.readouterr().err


def test_lines_are_refused_not_handed_out_when_the_database_fails(tmp_path, caplog):
    from pipeline.transport.lines import SharedLines

    path = tmp_path / "lines.db"
    store = ReservationStore(f"sqlite:///{path}")
    lines = SharedLines(store, cap=2, lease_s=60)
    assert asyncio.run(lines.take("MZ-before"))
    store.engine.dispose()
    path.unlink()  # the next connection opens an empty file: no tables

    async def flow():
        taken = await lines.take("MZ-after")
        await lines.release("MZ-before")  # logged; its lease would free it
        await lines.close()
        return taken

    assert asyncio.run(flow()) is False
    assert lines.held == set()
    assert "the lines in use cannot be counted" in caplog.text and "could not be given back" in caplog.text
    store.close()


def test_a_worker_whose_lines_were_taken_back_says_so_at_its_next_renewal(tmp_path, caplog):
    from pipeline.transport.lines import SharedLines

    url = f"sqlite:///{tmp_path / 'lines.db'}"
    mine, other = ReservationStore(url), ReservationStore(url)
    lines = SharedLines(mine, cap=2, lease_s=1.5)

    async def flow():
        assert await lines.take("MZ-mine")
        # another worker, later than this one's lease: the line counts as a dead worker's
        later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=60)
        assert other.take_line("MZ-other", 2, worker="other", stale_s=1.5, now=later)
        deadline = time.monotonic() + 30
        while "had run out of their lease" not in caplog.text and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        await lines.close()

    asyncio.run(flow())
    assert "1 of this worker's 1 lines had run out of their lease" in caplog.text
    mine.close()
    other.close()
