"""The reservation being taken during one call: slots, confirmation and outcome."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Literal

Language = Literal["ja", "en"]
SLOT_ORDER: tuple[str, ...] = ("date", "time", "party_size", "name", "phone", "note")


@dataclass
class Slots:
    date: dt.date | None = None
    time: dt.time | None = None
    party_size: int | None = None
    name: str | None = None
    phone: str | None = None  # digits only
    note: str | None = None
    #: the caller has answered the note question (a note, or "no requests")
    note_done: bool = False

    def is_filled(self, slot: str) -> bool:
        if slot == "note":
            return self.note_done or self.note is not None
        return getattr(self, slot) is not None

    def missing(self) -> list[str]:
        return [s for s in SLOT_ORDER if not self.is_filled(s)]

    def to_json(self) -> dict[str, Any]:
        return {
            "date": self.date.isoformat() if self.date else None,
            "time": self.time.strftime("%H:%M") if self.time else None,
            "party_size": self.party_size,
            "name": self.name,
            "phone": self.phone,
            "note": self.note,
        }


@dataclass
class Manage:
    """A call about an existing booking: what the caller wants and how far it got."""

    intent: Literal["check", "change", "cancel"]
    #: the booking found (``Reservation.to_json()``), once found
    booking: dict[str, Any] | None = None
    #: several bookings under one number: the date narrows them down
    phone: str | None = None
    #: a change checked and read back (typed values, only what changes), or a cancellation, waiting for the yes
    proposal: dict[str, Any] | None = None
    proposal_kind: Literal["change", "cancel"] | None = None
    proposed_turn: int | None = None
    #: what the caller asked to change before the booking was found ("予約を20時に変更したい")
    wanted: dict[str, Any] = field(default_factory=dict)
    done: bool = False


@dataclass
class DialogState:
    """Everything about the call that the tools and agents share."""

    language: Language = "ja"
    slots: Slots = field(default_factory=Slots)
    #: the full read-back was given and the bot is waiting for yes/no
    awaiting_confirmation: bool = False
    #: the reservation as booked (``Reservation.to_json()``), once booked
    reservation: dict[str, Any] | None = None
    ended: bool = False
    #: failed attempts per slot (or per "confirm"), to stop re-asking forever
    failures: dict[str, int] = field(default_factory=dict)
    #: what the bot last asked for (a slot name, "confirm", or None)
    asking: str | None = None
    #: caller utterances seen so far; the read-back must come in an earlier turn than the "yes"
    turn: int = 0
    readback_turn: int | None = None
    #: the caller's latest utterance, as transcribed: booking checks the "yes" in it itself
    last_user_text: str = ""
    #: what the bot said last (repeated on request)
    last_prompt: str = ""
    #: a question the rules agent asked that the next answer settles: {"kind": "change"|"end"|"choose"|
    #: "name"|"note_what", ...}
    pending: dict[str, Any] | None = None
    #: the recogniser's best guess at the last turn's answer when it could not take one
    #: (``STTContext.guessed``): asked about before the question is asked again
    guess: str | None = None
    #: the recogniser's next best, when it was about as likely as the guess
    guess_also: str | None = None
    #: guesses the caller said no to (as values' reprs): never asked about again in this call
    guesses_denied: list[str] = field(default_factory=list)
    #: values (reprs, by slot) the caller said again at the read-back as if correcting them: whisper
    #: is taken to mishear what they say, and hears the same wrong value each time (「12月5日」 as
    #: 「12月1日」); not taken the next time it is heard, and the recogniser weighs the others
    heard_wrong: dict[str, list[str]] = field(default_factory=dict)
    #: values (reprs, by slot) the restaurant could not take (outside the hours, fully booked): one
    #: heard again after the caller was told is taken as misheard (``heard_wrong``), not as asked twice
    refused: dict[str, list[str]] = field(default_factory=dict)
    #: the caller's own number as the phone network gave it (digits, a Japanese number), None when withheld
    caller_id: str | None = None
    #: the caller said the number they are calling from is not the one to book with
    caller_id_declined: bool = False
    #: the caller has a keypad (a phone call): the bot may offer it
    keypad: bool = False
    #: the call can be handed to a person (a phone call with `restaurant.transfer_number` set)
    can_transfer: bool = False
    #: the bot told the caller it is putting them through: the transport transfers the call
    transfer_requested: bool = False
    #: what the caller said when asked for their name, in case no try reads as one
    name_heard: str = ""
    #: phone digits given so far in groups across turns ("090の", "1234の", "5678です")
    phone_partial: str = ""
    #: the caller said they want to check, change or cancel a booking (remembered for whichever agent
    #: answers next: a wish told to the LLM survives the rules agent taking over)
    wants_existing: str | None = None
    #: an existing booking the caller is hearing, changing or cancelling
    manage: Manage | None = None

    def snapshot(self) -> dict[str, Any]:
        return self.slots.to_json()
