"""Keys the caller presses (Twilio's DTMF events) as the answer they stand for in the dialog.

A number is typed digit by digit and ended with # (or a pause, which the transport detects); 1 and 2
answer a yes/no question. The result is handed to the agent as the caller's words, so both agents and
every rule about what an answer may fill apply to it unchanged.
"""

from __future__ import annotations

from pipeline.dialog.state import DialogState

#: what the bot is waiting for when 1 and 2 mean yes and no
_YES_NO_PENDING = {"end", "change", "name", "caller_id"}


def awaits_yes_no(state: DialogState) -> bool:
    pend = (state.pending or {}).get("kind")
    return (pend in _YES_NO_PENDING or state.awaiting_confirmation
            or state.asking in ("confirm", "manage_confirm"))


def keypad_text(state: DialogState, keys: str) -> str | None:
    """The utterance that ``keys`` (digits, *, # as pressed) stands for now; None for nothing."""
    pressed = "".join(k for k in keys if k in "0123456789*#").rstrip("#")
    if not pressed:
        return None
    offered = (state.pending or {}).get("kind") == "caller_id"
    if state.asking in ("phone", "manage_phone") and not (offered and pressed in ("1", "2")):
        # a lone 1 or 2 is never a phone number: at the caller-ID offer it is the yes or no
        return pressed.replace("*", "")
    if awaits_yes_no(state) and pressed in ("1", "2"):
        yes = pressed == "1"
        if state.language == "ja":
            return "はい" if yes else "いいえ"
        return "yes" if yes else "no"
    return pressed.replace("*", "")
