"""The understanding layer: one caller utterance in, what it means out.

`understand()` gives the values the utterance offers for each slot (with the ambiguities it leaves
open and the numbers that belong to a request) and the dialog acts it performs. It never changes
any state: the dialog policy (the rules agent, or the booking tools on an LLM's behalf) decides what
to take from it, given what was asked.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from pipeline.dialog.understand.acts import RESERVATION_ID, acts_of, is_backchannel, reservation_id
from pipeline.dialog.understand.extract import Analysis, analyze
from pipeline.dialog.understand.names import parse_name
from pipeline.dialog.understand.text import MAX_UTTERANCE, IsOpen

log = logging.getLogger(__name__)

_JA_TEXT = re.compile("[\u3040-\u30ff\u3400-\u9fff]")

__all__ = ["Understanding", "acts_of", "is_backchannel", "reservation_id", "understand"]


@dataclass
class Understanding:
    text: str
    acts: frozenset[str] = frozenset()
    analysis: Analysis = field(default_factory=Analysis)
    reservation_id: str | None = None
    #: the utterance was longer than any caller talks; only its start was read
    truncated: bool = False

    @property
    def values(self) -> dict:
        return self.analysis.values

    def has(self, act: str) -> bool:
        return act in self.acts


def understand(
    text: str,
    today: dt.date,
    *,
    asking: str | None = None,
    is_open: IsOpen | None = None,
    filled: Iterable[str] = (),
) -> Understanding:
    raw = text if isinstance(text, str) else ""
    truncated = len(raw) > MAX_UTTERANCE
    if truncated:
        log.warning("utterance of %d characters: only the first %d are read", len(raw), MAX_UTTERANCE)
        raw = raw[: MAX_UTTERANCE]
    rid = reservation_id(raw)
    # the reservation number is not a date ("R-KTWKX8" has an 8 in it)
    body = RESERVATION_ID.sub(" ", raw) if rid else raw
    acts = acts_of(body)
    analysis = analyze(body, today, expecting=asking, is_open=is_open, filled=filled)
    if "date" not in analysis.values and asking in (None, "date", "manage_date") and _JA_TEXT.search(body):
        from pipeline.dialog.understand.sound import relative_date_by_sound

        days = relative_date_by_sound(body)
        if days is not None:  # 「朝手の18時に」: あさって in the wrong kanji
            analysis.values["date"] = today + dt.timedelta(days=days)
    if "name" in analysis.values and acts & _NOT_A_NAME_ACTS and not parse_name(body):
        # 「やめる」「ちょっと待って」 answer the name question without being a name
        del analysis.values["name"]
        analysis.doubtful_name = False
    return Understanding(text=raw, acts=acts, analysis=analysis, reservation_id=rid, truncated=truncated)


#: acts whose words are never a name said alone (a name with a trigger, 「田中と申します」, still counts)
_NOT_A_NAME_ACTS = frozenset({"end", "wait", "repeat", "person", "cancel_booking", "change_booking", "check_booking",
                              "none", "question"})
