"""Twilio's REST API for a phone call: putting the live call through to a person, and texting the
caller their booking.

- :class:`TwilioREST` wraps the ``twilio`` package's ``Client``: :meth:`~TwilioREST.transfer` updates
  the live call with TwiML ``<Response><Dial>NUMBER</Dial></Response>`` (Twilio ends the media stream
  and dials), :meth:`~TwilioREST.send_text` creates a message. Both block (the ``requests`` session
  under the client) and raise :class:`TwilioRESTError` with a masked message: call them off the event
  loop. ``api_base`` sends the client's requests to another server (a Twilio-compatible test double,
  ``pipeline.sim.twilio_rest``) through its own HTTP client, the twilio package's extension point.
- :func:`standing` and :func:`confirmations_due` tell, from a call's dialog state before and after a
  turn, whether the turn booked, changed or cancelled a booking; :func:`confirmation_text` is the
  text sent for it, in the call's language.

Credentials come from the environment (``TWILIO_ACCOUNT_SID``, ``TWILIO_AUTH_TOKEN``, Twilio's own
names) or, for the account SID only, ``twilio.account_sid`` in the config.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from twilio.http.http_client import TwilioHttpClient

from pipeline.privacy import mask_pii

log = logging.getLogger(__name__)

#: Twilio's own names for the variables
ACCOUNT_SID_ENV = "TWILIO_ACCOUNT_SID"
AUTH_TOKEN_ENV = "TWILIO_AUTH_TOKEN"
#: Japanese mobile prefixes: a text to a landline would only fail
MOBILE_PREFIXES = ("070", "080", "090")

# The twilio package logs every request's URL and headers at INFO: kept out of the process log.
_HTTP_LOG = logging.getLogger(__name__ + ".http")
_HTTP_LOG.setLevel(logging.WARNING)


class TwilioRESTError(RuntimeError):
    """A REST request Twilio refused or that did not reach it; the message is masked."""


class _Rebased(TwilioHttpClient):
    """The twilio package's HTTP client, sending every request to ``api_base`` instead of Twilio's hosts
    (same paths, same form): for a Twilio-compatible server such as the tests' loopback one."""

    def __init__(self, api_base: str, timeout_s: float):
        super().__init__(timeout=timeout_s, logger=_HTTP_LOG)
        base = urlsplit(api_base)
        if base.scheme not in ("http", "https") or not base.netloc:
            raise ValueError(f"api_base must be an http(s) URL, got {api_base!r}")
        self._base = base
        if self.session is not None:
            self.session.trust_env = False  # a server named by hand is reached directly, never by proxy

    def request(self, method: str, url: str, *args: Any, **kwargs: Any):
        parts = urlsplit(url)
        url = urlunsplit((self._base.scheme, self._base.netloc, self._base.path.rstrip("/") + parts.path,
                          parts.query, ""))
        return super().request(method, url, *args, **kwargs)


class TwilioREST:
    """The REST requests a phone call makes; thread-safe, blocking."""

    def __init__(self, account_sid: str, auth_token: str, *, api_base: str | None = None, timeout_s: float = 10.0):
        from twilio.rest import Client

        if not account_sid or not auth_token:
            raise ValueError("Twilio's REST API needs the account SID and the auth token")
        http = _Rebased(api_base, timeout_s) if api_base else TwilioHttpClient(timeout=timeout_s, logger=_HTTP_LOG)
        # environment={}: the client must not pick up TWILIO_EDGE/TWILIO_REGION behind our back
        self.client = Client(account_sid, auth_token, http_client=http, environment={})
        self.account_sid = account_sid

    @classmethod
    def from_config(cls, cfg: Any, environ: Mapping[str, str] | None = None) -> TwilioREST | None:
        """The client for ``cfg`` (a :class:`~pipeline.config.Config`) with the environment's
        credentials, or None when either the account SID or the auth token is missing."""
        env = os.environ if environ is None else environ
        sid = (env.get(ACCOUNT_SID_ENV, "").strip() or cfg.twilio.account_sid or "").strip()
        token = env.get(AUTH_TOKEN_ENV, "").strip()
        if not sid or not token:
            return None
        return cls(sid, token, timeout_s=cfg.twilio.rest_timeout_s)

    def transfer(self, call_sid: str, number: str) -> None:
        """Put live call ``call_sid`` through to ``number`` (+E.164)."""
        from twilio.twiml.voice_response import VoiceResponse

        twiml = VoiceResponse()
        twiml.dial(number)
        self._do("transfer", lambda: self.client.calls(call_sid).update(twiml=str(twiml)))

    def send_text(self, to: str, body: str, sender: str) -> str:
        """Text ``body`` to ``to`` (+E.164) from ``sender`` (a number, or a Messaging Service SID);
        returns the message's SID."""
        if sender.startswith("MG"):
            create = lambda: self.client.messages.create(to=to, body=body, messaging_service_sid=sender)  # noqa: E731
        else:
            create = lambda: self.client.messages.create(to=to, body=body, from_=sender)  # noqa: E731
        return str(self._do("text", create).sid)

    @staticmethod
    def _do(what: str, request):
        from twilio.base.exceptions import TwilioRestException

        try:
            return request()
        except TwilioRestException as e:
            # Twilio's own words (e.g. "The 'To' number ... is not a valid phone number") may hold the number
            raise TwilioRESTError(mask_pii(f"{what}: HTTP {e.status}, Twilio error {e.code}: {e.msg}")) from None
        except Exception as e:  # the network, a timeout, a body that is not Twilio's
            raise TwilioRESTError(mask_pii(f"{what}: {type(e).__name__}: {e}")) from None


# ============================================================================ confirmations by text
def _booking_key(booking: Mapping[str, Any] | None) -> tuple | None:
    if not booking:
        return None
    return tuple(booking.get(k) for k in ("id", "date", "time", "party_size", "name"))


def standing(state: Any) -> tuple:
    """What a call's dialog state says about bookings now: compare two with :func:`confirmations_due`."""
    manage = getattr(state, "manage", None)
    managed = None if manage is None else (manage.intent, manage.done, _booking_key(manage.booking))
    return _booking_key(getattr(state, "reservation", None)), managed


def confirmations_due(before: tuple, state: Any) -> list[tuple[str, dict[str, Any]]]:
    """``("booked" | "changed" | "cancelled", booking)`` for what happened since ``before``
    (:func:`standing` then) to ``state``."""
    (booked_before, managed_before), (booked_now, managed_now) = before, standing(state)
    due: list[tuple[str, dict[str, Any]]] = []
    if booked_now is not None and booked_now != booked_before:
        due.append(("booked", dict(state.reservation)))
    if managed_now is not None and managed_now != managed_before:
        intent, done, booking = managed_now
        if done and booking is not None and intent in ("change", "cancel"):
            due.append(("changed" if intent == "change" else "cancelled", dict(state.manage.booking)))
    return due


def is_mobile(number: str | None) -> bool:
    """Whether a Japanese number in digits (``09012345678``) is a mobile one, able to take a text."""
    return bool(number) and len(number) == 11 and number.startswith(MOBILE_PREFIXES)


def japanese_e164(number: str) -> str:
    """``09012345678`` as Twilio wants it: ``+819012345678``."""
    return "+81" + number[1:]


_LEAD = {
    "ja": {"booked": "ご予約を承りました。", "changed": "ご予約を変更いたしました。", "cancelled": "ご予約をキャンセルいたしました。"},
    "en": {"booked": "your reservation is confirmed.", "changed": "your reservation has been changed.",
           "cancelled": "your reservation has been cancelled."},
}
_WEEKDAYS = {"ja": "月火水木金土日", "en": ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")}
_MONTHS_EN = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def confirmation_text(kind: str, booking: Mapping[str, Any], language: str, restaurant: Any) -> str:
    """The text for a booking that was ``kind`` ("booked", "changed", "cancelled"): date, time, party,
    name and reservation number, in ``language`` (English for any but Japanese). ``restaurant`` is
    the config's ``restaurant`` section (its name and phone)."""
    d = dt.date.fromisoformat(str(booking["date"]))
    t = dt.time.fromisoformat(str(booking["time"]))
    party, name, rid = int(booking["party_size"]), str(booking["name"]), str(booking["id"])
    if language == "ja":
        return "\n".join([
            f"【{restaurant.name}】{_LEAD['ja'][kind]}",
            f"日時: {d.month}月{d.day}日({_WEEKDAYS['ja'][d.weekday()]}) {t:%H:%M}",
            f"人数: {party}名様",
            f"お名前: {name}様",
            f"予約番号: {rid}",
            f"お問い合わせ: {restaurant.phone}",
        ])
    hour = t.hour % 12 or 12
    when = f"{_WEEKDAYS['en'][d.weekday()]}, {_MONTHS_EN[d.month - 1]} {d.day} at {hour}:{t:%M} {'PM' if t.hour >= 12 else 'AM'}"
    return "\n".join([
        f"{restaurant.name}: {_LEAD['en'][kind]}",
        f"Date: {when}",
        f"Party: {party} {'person' if party == 1 else 'people'}",
        f"Name: {name}",
        f"Reservation number: {rid}",
        f"Questions: {restaurant.phone}",
    ])
