"""The phone line cap across workers: ``server.max_calls`` counted in the reservations database.

Every ``voicebot serve`` worker on one ``store.url`` takes a line for each phone call in the
``call_lines`` table (:meth:`~pipeline.store.ReservationStore.take_line`, under one row lock, so two
workers never both get the last line) and gives it back when the call's socket closes. A line is a
lease: while a worker holds lines it renews them every third of ``server.line_lease_s`` in one
statement; a worker that dies (killed, its host gone) stops renewing, and its lines are taken back
by the next worker that takes a line after ``line_lease_s`` without a renewal.

Every database call runs in a worker thread: the event loop carrying the calls' audio never waits
on the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket

from pipeline.store import ReservationStore, StoreError

log = logging.getLogger(__name__)


def worker_name() -> str:
    """This process among the workers: host, pid and a random part (a pid is reused after a restart)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


class SharedLines:
    """The lines this worker holds of ``cap`` shared by every worker on ``store``'s database.

    Used from the server's event loop: the set of held lines is only touched there.
    """

    def __init__(self, store: ReservationStore, cap: int, lease_s: float, *, worker: str | None = None):
        self.store = store
        self.cap = cap
        self.lease_s = lease_s
        self.worker = worker or worker_name()
        self.held: set[str] = set()
        self._renewing: asyncio.Task | None = None

    async def take(self, call_id: str) -> bool:
        """A line for ``call_id``; False when all ``cap`` are in use (or the database failed: logged)."""
        try:
            ok = await asyncio.to_thread(self.store.take_line, call_id, self.cap, worker=self.worker,
                                         stale_s=self.lease_s)
        except StoreError as e:
            log.error("call %s: refused, the lines in use cannot be counted: %s", call_id, e)
            return False
        if not ok:
            log.warning("call %s: refused, all %d lines are taken across the workers (server.max_calls)",
                        call_id, self.cap)
            return False
        self.held.add(call_id)
        task = self._renewing
        if task is None or task.done() or task.get_loop() is not asyncio.get_running_loop():
            self._renewing = asyncio.create_task(self._renew(), name="line-leases")
        return True

    async def release(self, call_id: str) -> None:
        self.held.discard(call_id)
        try:
            await asyncio.to_thread(self.store.release_line, call_id)
        except StoreError as e:
            log.warning("call %s: its line could not be given back (%s); it is freed when its lease of "
                        "%g s runs out", call_id, e, self.lease_s)

    async def _renew(self) -> None:
        """Renew this worker's leases while it holds any."""
        while self.held:
            await asyncio.sleep(self.lease_s / 3)
            if not self.held:
                break
            before = set(self.held)
            try:
                renewed = await asyncio.to_thread(self.store.touch_lines, self.worker)
            except StoreError as e:
                log.warning("the leases of %d lines could not be renewed: %s", len(self.held), e)
                continue
            # lines given back meanwhile leave ``held`` before the database; lines taken meanwhile only add
            expected = len(before & self.held)
            if renewed < expected:
                # another worker took them back: this one went longer than line_lease_s without renewing
                log.warning("%d of this worker's %d lines had run out of their lease (server.line_lease_s %g s): "
                            "their calls go on uncounted", expected - renewed, expected, self.lease_s)

    async def close(self) -> None:
        task, self._renewing = self._renewing, None
        if task is not None and not task.done():
            if task.get_loop() is asyncio.get_running_loop():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            else:  # started by an earlier server run in this process, on its own loop
                with contextlib.suppress(RuntimeError):  # that loop is closed: the task is gone with it
                    task.get_loop().call_soon_threadsafe(task.cancel)
        for call_id in list(self.held):
            await self.release(call_id)
