"""The restaurant's rules: when it is open, which slots can be booked, and for how many.

Every check returns ``None`` or a :class:`Problem` whose message already offers the caller
alternatives, so the rules agent can speak it as is and the LLM agent can relay it; the
machine-readable ``alternatives`` let either agent act on the caller's "the first one, please".

All date/time checks take ``now`` explicitly (aware, or naive meaning restaurant-local) so that
``voicebot chat --now`` and the tests are reproducible.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

import holidays

from pipeline.config import Hours, RestaurantConfig
from pipeline.dialog import parse
from pipeline.dialog.speech import (
    group_phone,
    say_date,
    say_duration,
    say_list,
    say_party,
    say_time,
)

log = logging.getLogger(__name__)

FreeFn = Callable[[dt.date, dt.time], bool]

#: how far the date searches look before giving up (a restaurant closed for a whole year)
_SEARCH_DAYS = 400

_CLOSED_REASONS = {
    "new_year": {"ja": "年末年始のため", "en": " for the New Year holidays"},
    "weekly_closing": {"ja": "定休日のため", "en": ", our regular closing day"},
}


@dataclass(frozen=True)
class Problem:
    """Why a requested date, time, party size or phone number cannot be booked.

    ``alternatives`` holds dates as ``YYYY-MM-DD``, times as ``HH:MM`` (on the requested date),
    a time on another date as ``YYYY-MM-DDTHH:MM``, and party sizes as digits; best first.
    """

    code: str
    message: dict[str, str]
    alternatives: list[str] = field(default_factory=list)


def _on_date_en(d: dt.date, today: dt.date, weekday: bool = False) -> str:
    """``on December 21st``, but ``tomorrow, December 21st``: no "on" before a relative day."""
    text = say_date(d, "en", today, weekday=weekday)
    return text if text != say_date(d, "en", weekday=weekday) else f"on {text}"


def _hhmm(t: dt.time) -> str:
    return t.strftime("%H:%M")


def _minutes(t: dt.time) -> int:
    return t.hour * 60 + t.minute


def _from_minutes(m: int) -> dt.time:
    return dt.time(m // 60, m % 60)


class Restaurant:
    def __init__(self, cfg: RestaurantConfig):
        self.cfg = cfg
        self.name = cfg.name
        self.tz = ZoneInfo(cfg.timezone)
        self._holidays: holidays.HolidayBase | None = None
        if cfg.holidays_country:
            try:
                self._holidays = holidays.country_holidays(cfg.holidays_country)
            except NotImplementedError:
                raise ValueError(
                    f"restaurant.holidays_country: unknown country code {cfg.holidays_country!r} "
                    "(expected an ISO 3166 code such as JP, or null for no public holidays)"
                ) from None
        # The holidays object fills in each year lazily on first lookup, mutating itself; calls
        # can come from several call handlers' threads at once.
        self._holiday_lock = threading.Lock()

    # ---- calendar -------------------------------------------------------------------------------

    def local_now(self, now: dt.datetime | None = None) -> dt.datetime:
        """``now`` as an aware datetime in the restaurant's timezone (naive input is already local)."""
        if now is None:
            return dt.datetime.now(self.tz)
        if now.tzinfo is None:
            return now.replace(tzinfo=self.tz)
        return now.astimezone(self.tz)

    def _today(self, now: dt.datetime | None) -> dt.date:
        return self.local_now(now).date()

    def closed_reason(self, d: dt.date) -> str | None:
        md = (d.month, d.day)
        for p in self.cfg.closed_periods:
            start = (int(p.start[:2]), int(p.start[3:5]))
            end = (int(p.end[:2]), int(p.end[3:5]))
            inside = start <= md <= end if start <= end else (md >= start or md <= end)
            if inside:
                return p.reason or "closed"
        if d.weekday() in self.cfg.closed_weekdays:
            return "weekly_closing"
        return None

    def is_holiday(self, d: dt.date) -> bool:
        if self._holidays is None:
            return False
        with self._holiday_lock:
            return d in self._holidays

    def hours(self, d: dt.date) -> Hours | None:
        if self.closed_reason(d) is not None:
            return None
        if d.weekday() >= 5 or self.is_holiday(d):
            return self.cfg.weekend_hours
        return self.cfg.weekday_hours

    def _last_slot(self, h: Hours) -> int:
        return _minutes(h.close) - self.cfg.last_booking_before_close_minutes

    def slot_times(self, d: dt.date) -> list[dt.time]:
        h = self.hours(d)
        if h is None:
            return []
        return [_from_minutes(m) for m in range(_minutes(h.open), self._last_slot(h) + 1, self.cfg.slot_minutes)]

    def is_open_at(self, t: dt.time, d: dt.date | None = None) -> bool:
        """Whether ``t`` lies in the bookable range (open .. last booking) of ``d``.

        Without a date, on weekday or weekend/holiday hours alike: the parser uses this to decide
        that "7時" means 19:00 at a restaurant that opens at 11.
        """
        if d is not None:
            kinds = [self.hours(d)]
        else:
            kinds = [self.cfg.weekday_hours, self.cfg.weekend_hours]
        m = _minutes(t)
        return any(h is not None and _minutes(h.open) <= m <= self._last_slot(h) for h in kinds)

    def next_open_dates(self, start: dt.date, n: int = 3) -> list[dt.date]:
        """The first ``n`` open days from ``start`` (inclusive), by the calendar alone."""
        out: list[dt.date] = []
        d = start
        for _ in range(_SEARCH_DAYS):
            if len(out) >= n:
                break
            if self.hours(d) is not None:
                out.append(d)
            d += dt.timedelta(days=1)
        return out

    def nearest_times(self, d: dt.date, t: dt.time, n: int = 3, free: FreeFn | None = None) -> list[dt.time]:
        """Grid times of ``d`` (free ones, when ``free`` is given) closest to ``t``, best first."""
        return self._nearest(self.slot_times(d), d, t, n, free)

    @staticmethod
    def _nearest(times: list[dt.time], d: dt.date, t: dt.time, n: int, free: FreeFn | None) -> list[dt.time]:
        target = _minutes(t)
        cands = [s for s in times if free is None or free(d, s)]
        cands.sort(key=lambda s: (abs(_minutes(s) - target), _minutes(s)))
        return cands[:n]

    # ---- what can still be booked, given the clock ----------------------------------------------

    def _lead_cutoff(self, now: dt.datetime | None) -> dt.datetime:
        return self.local_now(now) + dt.timedelta(minutes=self.cfg.min_lead_minutes)

    def _at(self, d: dt.date, t: dt.time) -> dt.datetime:
        return dt.datetime.combine(d, t, tzinfo=self.tz)

    def bookable_times(self, d: dt.date, now: dt.datetime | None = None) -> list[dt.time]:
        """Grid times of ``d`` that are not closer to ``now`` than the minimum lead."""
        cutoff = self._lead_cutoff(now)
        return [t for t in self.slot_times(d) if self._at(d, t) >= cutoff]

    def horizon_end(self, now: dt.datetime | None = None) -> dt.date:
        """The last date one may book (inclusive)."""
        return self._today(now) + dt.timedelta(days=self.cfg.booking_horizon_days)

    def is_bookable_date(self, d: dt.date, now: dt.datetime | None = None) -> bool:
        today = self._today(now)
        if d < today or d > self.horizon_end(now) or self.hours(d) is None:
            return False
        return d != today or bool(self.bookable_times(d, now))

    def next_bookable_dates(self, start: dt.date, now: dt.datetime | None = None, n: int = 3) -> list[dt.date]:
        """Like :meth:`next_open_dates`, but within the horizon and skipping a today already over."""
        out: list[dt.date] = []
        d = max(start, self._today(now))
        end = self.horizon_end(now)
        while d <= end and len(out) < n:
            if self.is_bookable_date(d, now):
                out.append(d)
            d += dt.timedelta(days=1)
        return out

    def _dates_around(self, d: dt.date, now: dt.datetime | None) -> list[dt.date]:
        """The bookable day before ``d`` and the one after; two after when none is before."""
        before: dt.date | None = None
        today = self._today(now)
        c = d - dt.timedelta(days=1)
        while c >= today:
            if self.is_bookable_date(c, now):
                before = c
                break
            c -= dt.timedelta(days=1)
        after = self.next_bookable_dates(d + dt.timedelta(days=1), now, n=2)
        picked = ([before] + after[:1]) if before else after[:2]
        return sorted(picked)

    # ---- checks -----------------------------------------------------------------------------------

    def _say_dates(self, dates: list[dt.date], lang: str) -> str:
        return say_list([say_date(x, lang, weekday=False) for x in dates], lang)

    def _offer(self, alts_text: str, lang: str, fallback: dict[str, str]) -> str:
        if not alts_text:
            return fallback[lang]
        return f"{alts_text}はいかがでしょうか。" if lang == "ja" else f"Would {alts_text} work for you?"

    def check_date(self, d: dt.date, now: dt.datetime | None = None) -> Problem | None:
        """Past, beyond the booking horizon, closed, or today with no bookable time left."""
        today = self._today(now)
        other_day = {"ja": "別の日付をお願いできますでしょうか。", "en": "Could you choose another date?"}
        if d < today:
            alts = self.next_bookable_dates(today, now, n=2)
            return Problem(
                "past_date",
                {lang: (f"申し訳ございません、{say_date(d, lang)}はすでに過ぎております。" if lang == "ja"
                        else f"I'm sorry, {say_date(d, lang)} has already passed. ")
                 + self._offer(self._say_dates(alts, lang), lang, other_day) for lang in ("ja", "en")},
                [x.isoformat() for x in alts],
            )
        end = self.horizon_end(now)
        if d > end:
            last = next((c for c in (end - dt.timedelta(days=i) for i in range((end - today).days + 1))
                         if self.is_bookable_date(c, now)), None)
            limit = last or end
            days = self.cfg.booking_horizon_days
            return Problem(
                "beyond_horizon",
                {"ja": f"申し訳ございません、ご予約は{days}日先の{say_date(limit, 'ja')}まで承っております。"
                       "それまでの日付でお願いできますでしょうか。",
                 "en": f"I'm sorry, we take bookings up to {days} days ahead, until {say_date(limit, 'en')}. "
                       "Could you choose a date up to then?"},
                [last.isoformat()] if last else [],
            )
        reason = self.closed_reason(d)
        if reason is not None:
            alts = self._dates_around(d, now)
            why = _CLOSED_REASONS.get(reason, {"ja": "", "en": ""})
            return Problem(
                "closed_day",
                {"ja": f"申し訳ございません、{say_date(d, 'ja', today)}は{why['ja']}お休みをいただいております。"
                       + self._offer(self._say_dates(alts, "ja"), "ja", other_day),
                 "en": f"I'm sorry, we are closed {_on_date_en(d, today, weekday=True)}{why['en']}. "
                       + self._offer(self._say_dates(alts, "en"), "en", other_day)},
                [x.isoformat() for x in alts],
            )
        if d == today and not self.bookable_times(d, now):
            alts = self.next_bookable_dates(today + dt.timedelta(days=1), now, n=2)
            return Problem(
                "too_late_today",
                {"ja": "申し訳ございません、本日のご予約の受付は終了いたしました。"
                       + self._offer(self._say_dates(alts, "ja"), "ja", other_day),
                 "en": "I'm sorry, we can no longer take bookings for today. "
                       + self._offer(self._say_dates(alts, "en"), "en", other_day)},
                [x.isoformat() for x in alts],
            )
        return None

    def check_time(self, d: dt.date, t: dt.time, now: dt.datetime | None = None,
                   free: FreeFn | None = None) -> Problem | None:
        """Whether ``t`` on ``d`` can be booked: the date's own problem first, then outside hours,
        too soon (past, or within the minimum lead), off the slot grid, and, when ``free`` is
        given, fully booked."""
        p = self.check_date(d, now)
        if p is not None:
            return p
        t = t.replace(second=0, microsecond=0, tzinfo=None)
        h = self.hours(d)
        assert h is not None  # check_date rejected closed days
        today = self._today(now)
        bookable = self.bookable_times(d, now)
        retry_time = {"ja": "別のお時間をお願いできますでしょうか。", "en": "Could you choose another time?"}

        def times_problem(code: str, ja: str, en: str, times: list[dt.time]) -> Problem:
            shown = sorted(times)  # spoken in clock order; the alternatives stay best first
            return Problem(code, {
                "ja": ja + self._offer(say_list([say_time(x, "ja") for x in shown], "ja"), "ja", retry_time),
                "en": en + self._offer(say_list([say_time(x, "en") for x in shown], "en"), "en", retry_time),
            }, [_hhmm(x) for x in times])

        if not self.is_open_at(t, d):
            first, last = h.open, _from_minutes(self._last_slot(h))
            alts = self._nearest(bookable, d, t, 3, free)
            return times_problem(
                "outside_hours",
                f"申し訳ございません、{say_date(d, 'ja', today, weekday=False)}のご予約は"
                f"{say_time(first, 'ja')}から{say_time(last, 'ja')}までのお時間で承っております。",
                f"I'm sorry, {_on_date_en(d, today)} we take bookings "
                f"from {say_time(first, 'en')} to {say_time(last, 'en')}. ",
                alts,
            )

        if self._at(d, t) < self._lead_cutoff(now):
            return self._too_soon(d, t, now, free)

        if (_minutes(t) - _minutes(h.open)) % self.cfg.slot_minutes:
            alts = self._nearest(bookable, d, t, 2, free)
            step = self.cfg.slot_minutes
            en_step = {30: "on the hour and half hour", 60: "on the hour"}.get(step, f"every {step} minutes")
            return times_problem(
                "off_grid",
                f"申し訳ございません、ご予約は{say_duration(step, 'ja')}単位で承っております。",
                f"I'm sorry, we take bookings {en_step}. ",
                alts,
            )

        if free is not None and not free(d, t):
            return self.fully_booked(d, t, now, free)
        return None

    def _too_soon(self, d: dt.date, t: dt.time, now: dt.datetime | None, free: FreeFn | None) -> Problem:
        lead = self.cfg.min_lead_minutes
        if self._at(d, t) <= self.local_now(now):
            ja = f"申し訳ございません、本日の{say_time(t, 'ja')}はすでに過ぎております。"
            en = f"I'm sorry, {say_time(t, 'en')} today has already passed. "
        else:
            ja = f"申し訳ございません、ご予約はご来店の{say_duration(lead, 'ja')}前までとなっております。"
            en = f"I'm sorry, bookings must be made at least {say_duration(lead, 'en')} in advance. "
        later = [x for x in self.bookable_times(d, now) if free is None or free(d, x)]
        if later:
            times = later[:3]
            alts = [_hhmm(x) for x in times]
            ja += self._offer("本日の" + say_list([say_time(x, "ja") for x in times], "ja"), "ja", {})
            en += f"Would {say_list([say_time(x, 'en') for x in times], 'en')} today work for you?"
        else:
            nxt, times = None, []
            for c in self.next_bookable_dates(d + dt.timedelta(days=1), now, n=7):
                times = [x for x in self.bookable_times(c, now) if free is None or free(c, x)][:3]
                if times:
                    nxt = c
                    break
            if nxt is None:
                alts = []
                ja += "別の日付をお願いできますでしょうか。"
                en += "Could you choose another date?"
            else:
                alts = [f"{nxt.isoformat()}T{_hhmm(x)}" for x in times]
                today = self._today(now)
                ja += (f"{say_date(nxt, 'ja', today, weekday=False)}の"
                       f"{say_list([say_time(x, 'ja') for x in times], 'ja')}はいかがでしょうか。")
                en += (f"Would {say_list([say_time(x, 'en') for x in times], 'en')} "
                       f"{_on_date_en(nxt, today)} work for you?")
        return Problem("too_late_today", {"ja": ja, "en": en}, alts)

    def fully_booked(self, d: dt.date, t: dt.time, now: dt.datetime | None, free: FreeFn) -> Problem:
        """The slot has no table left; offers the nearest free times that day, else other days."""
        today = self._today(now)
        alts = self._nearest(self.bookable_times(d, now), d, t, 3, free)
        when_ja = f"{say_date(d, 'ja', today, weekday=False)}の{say_time(t, 'ja')}"
        when_en = f"{say_time(t, 'en')} {_on_date_en(d, today)}"
        if alts:
            shown = sorted(alts)
            return Problem("fully_booked", {
                "ja": f"申し訳ございません、{when_ja}は満席となっております。"
                      + self._offer(say_list([say_time(x, "ja") for x in shown], "ja"), "ja", {}),
                "en": f"I'm sorry, {when_en} is fully booked. "
                      + self._offer(say_list([say_time(x, "en") for x in shown], "en"), "en", {}),
            }, [_hhmm(x) for x in alts])
        days = [c for c in self.next_bookable_dates(d + dt.timedelta(days=1), now, n=14)
                if any(free(c, x) for x in self.bookable_times(c, now))][:2]
        fallback = {"ja": "別の日付をお願いできますでしょうか。", "en": "Could you choose another date?"}
        return Problem("fully_booked", {
            "ja": f"申し訳ございません、{say_date(d, 'ja', today, weekday=False)}はすでに満席となっております。"
                  + self._offer(self._say_dates(days, "ja"), "ja", fallback),
            "en": f"I'm sorry, {say_date(d, 'en', today, weekday=False)} is fully booked. "
                  + self._offer(self._say_dates(days, "en"), "en", fallback),
        }, [c.isoformat() for c in days])

    def check_party(self, n: int) -> Problem | None:
        lo, hi = self.cfg.min_party_size, self.cfg.max_party_size
        sizes = [str(i) for i in range(lo, hi + 1)]
        if lo <= n <= hi:
            return None
        if n > hi:
            phone = group_phone(self.cfg.phone)
            return Problem("party_too_large", {
                "ja": f"申し訳ございません、こちらでは{say_party(hi, 'ja')}までのご予約を承っております。"
                      f"{say_party(hi + 1, 'ja')}以上のご予約は、お手数ですが{phone}までお電話ください。",
                "en": f"I'm sorry, we can take bookings for up to {say_party(hi, 'en')} here. "
                      f"For larger groups, please call the restaurant at {phone}.",
            }, sizes)
        rng_ja = say_party(lo, "ja") if lo == hi else f"{say_party(lo, 'ja')}から{say_party(hi, 'ja')}"
        rng_en = say_party(lo, "en") if lo == hi else f"{lo} to {hi} people"
        return Problem("party_too_small", {
            "ja": f"恐れ入りますが、ご予約は{rng_ja}まで承っております。何名様でいらっしゃいますか。",
            "en": f"I'm sorry, we take bookings for {rng_en}. How many people will there be?",
        }, sizes)

    def check_phone(self, digits: str) -> Problem | None:
        """A Japanese number: 10 digits (landline, 0120, 0570) or 11 (mobile, IP phone, 0800)."""
        ok = parse.is_valid_phone(digits)
        if ok:
            return None
        return Problem("invalid_phone", {
            "ja": "恐れ入りますが、お電話番号をうまくお聞き取りできませんでした。"
                  "市外局番から、もう一度お願いできますでしょうか。",
            "en": "I'm sorry, I didn't catch a valid phone number. "
                  "Could you say it again, starting with the area code?",
        }, [])
