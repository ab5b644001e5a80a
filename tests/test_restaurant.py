import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from pipeline.config import ClosedPeriod, RestaurantConfig
from pipeline.dialog.restaurant import Problem, Restaurant

JST = ZoneInfo("Asia/Tokyo")
NOW = dt.datetime(2026, 11, 20, 10, 0, tzinfo=JST)  # a Friday morning
WEEKDAY = dt.date(2026, 11, 24)  # Tuesday
SATURDAY = dt.date(2026, 11, 28)
LABOUR_THANKSGIVING = dt.date(2026, 11, 23)  # Monday, public holiday
COMING_OF_AGE = dt.date(2027, 1, 11)  # Monday, public holiday


@pytest.fixture
def r() -> Restaurant:
    return Restaurant(RestaurantConfig())


def _t(s: str) -> dt.time:
    return dt.time.fromisoformat(s)


def _both_languages(p: Problem) -> None:
    assert set(p.message) == {"ja", "en"}
    assert all(p.message.values())


# ---- calendar ------------------------------------------------------------------------------------

def test_local_now_converts_aware_and_keeps_naive(r):
    utc = dt.datetime(2026, 11, 20, 16, 0, tzinfo=dt.UTC)
    assert r.local_now(utc) == dt.datetime(2026, 11, 21, 1, 0, tzinfo=JST)
    assert r.local_now(utc).date() == dt.date(2026, 11, 21)
    assert r.local_now(dt.datetime(2026, 11, 20, 9, 0)) == dt.datetime(2026, 11, 20, 9, 0, tzinfo=JST)


def test_weekday_saturday_and_public_holiday_hours(r):
    assert r.hours(WEEKDAY).open == _t("11:00") and r.hours(WEEKDAY).close == _t("22:00")
    assert r.hours(SATURDAY).open == _t("10:00") and r.hours(SATURDAY).close == _t("23:00")
    for holiday in (LABOUR_THANKSGIVING, COMING_OF_AGE):
        assert r.is_holiday(holiday)
        assert r.hours(holiday) == r.cfg.weekend_hours
    assert not r.is_holiday(WEEKDAY)


def test_no_holiday_calendar_when_country_is_null():
    r = Restaurant(RestaurantConfig(holidays_country=None))
    assert not r.is_holiday(LABOUR_THANKSGIVING)
    assert r.hours(LABOUR_THANKSGIVING) == r.cfg.weekday_hours


def test_unknown_holiday_country_is_a_clear_error():
    with pytest.raises(ValueError, match="holidays_country"):
        Restaurant(RestaurantConfig(holidays_country="XX"))


def test_new_year_closure_wraps_the_year(r):
    assert r.closed_reason(dt.date(2026, 12, 28)) is None
    for d in (dt.date(2026, 12, 29), dt.date(2026, 12, 31), dt.date(2027, 1, 1), dt.date(2027, 1, 3)):
        assert r.closed_reason(d) == "new_year"
        assert r.hours(d) is None
        assert r.slot_times(d) == []
    assert r.closed_reason(dt.date(2027, 1, 4)) is None
    assert r.hours(dt.date(2027, 1, 4)) is not None


def test_weekly_closing_and_non_wrapping_periods():
    r = Restaurant(RestaurantConfig(closed_weekdays=[1],
                                    closed_periods=[ClosedPeriod(start="08-13", end="08-16", reason="")]))
    assert r.closed_reason(WEEKDAY) == "weekly_closing"
    assert r.closed_reason(dt.date(2026, 8, 14)) == "closed"
    assert r.closed_reason(dt.date(2026, 8, 17)) is None
    assert r.closed_reason(dt.date(2026, 12, 30)) is None


def test_slot_grid_ends_an_hour_before_closing(r):
    weekday = r.slot_times(WEEKDAY)
    assert weekday[0] == _t("11:00") and weekday[-1] == _t("21:00")
    assert _t("11:30") in weekday and len(weekday) == 21
    saturday = r.slot_times(SATURDAY)
    assert saturday[0] == _t("10:00") and saturday[-1] == _t("22:00")
    assert r.slot_times(LABOUR_THANKSGIVING)[-1] == _t("22:00")


def test_is_open_at_reads_seven_as_nineteen(r):
    assert not r.is_open_at(_t("07:00"))
    assert r.is_open_at(_t("19:00"))
    assert r.is_open_at(_t("10:00"))  # weekend opening, on no particular day
    assert not r.is_open_at(_t("10:00"), WEEKDAY)
    assert r.is_open_at(_t("21:00"), WEEKDAY)
    assert not r.is_open_at(_t("21:30"), WEEKDAY)
    assert r.is_open_at(_t("22:00"), SATURDAY)
    assert not r.is_open_at(_t("19:00"), dt.date(2026, 12, 31))


def test_next_open_dates_skip_the_closure(r):
    assert r.next_open_dates(dt.date(2026, 12, 28)) == [
        dt.date(2026, 12, 28), dt.date(2027, 1, 4), dt.date(2027, 1, 5)]


def test_nearest_times_by_distance_then_time(r):
    assert r.nearest_times(WEEKDAY, _t("19:15"), n=3) == [_t("19:00"), _t("19:30"), _t("18:30")]
    assert r.nearest_times(WEEKDAY, _t("23:00"), n=2) == [_t("21:00"), _t("20:30")]
    free = lambda d, t: t != _t("19:00")  # noqa: E731
    assert r.nearest_times(WEEKDAY, _t("19:00"), n=2, free=free) == [_t("18:30"), _t("19:30")]


# ---- check_date ----------------------------------------------------------------------------------

def test_a_normal_date_passes(r):
    assert r.check_date(WEEKDAY, NOW) is None
    assert r.check_date(NOW.date(), NOW) is None


def test_past_date_offers_the_next_bookable_dates(r):
    p = r.check_date(dt.date(2026, 11, 19), NOW)
    assert p.code == "past_date"
    assert p.alternatives == ["2026-11-20", "2026-11-21"]
    assert "すでに過ぎております" in p.message["ja"] and "11月20日" in p.message["ja"]
    _both_languages(p)


def test_past_is_judged_in_restaurant_time(r):
    # 16:00 UTC on the 20th is already the 21st in Tokyo.
    p = r.check_date(dt.date(2026, 11, 20), dt.datetime(2026, 11, 20, 16, 0, tzinfo=dt.UTC))
    assert p is not None and p.code == "past_date"


def test_closed_day_offers_open_dates_on_either_side(r):
    now = dt.datetime(2026, 12, 20, 12, 0, tzinfo=JST)
    p = r.check_date(dt.date(2026, 12, 30), now)
    assert p.code == "closed_day"
    assert p.alternatives == ["2026-12-28", "2027-01-04"]
    assert p.message["ja"].startswith("申し訳ございません、12月30日")
    assert "年末年始" in p.message["ja"] and "12月28日、1月4日はいかがでしょうか。" in p.message["ja"]
    assert "New Year" in p.message["en"] and "December 28th or January 4th" in p.message["en"]
    p29 = r.check_date(dt.date(2026, 12, 29), now)
    assert p29.code == "closed_day" and p29.alternatives == ["2026-12-28", "2027-01-04"]


def test_closed_day_right_after_today_offers_later_dates_only(r):
    now = dt.datetime(2026, 12, 28, 23, 0, tzinfo=JST)  # too late for anything on the 28th
    p = r.check_date(dt.date(2026, 12, 31), now)
    assert p.alternatives == ["2027-01-04", "2027-01-05"]


def test_weekly_closing_day_message():
    r = Restaurant(RestaurantConfig(closed_weekdays=[1]))
    p = r.check_date(WEEKDAY, NOW)
    assert p.code == "closed_day" and "定休日" in p.message["ja"]
    assert p.alternatives == ["2026-11-23", "2026-11-25"]


def test_beyond_horizon_names_the_last_bookable_date(r):
    assert r.check_date(dt.date(2027, 1, 19), NOW) is None  # exactly 60 days ahead
    p = r.check_date(dt.date(2027, 1, 20), NOW)
    assert p.code == "beyond_horizon"
    assert p.alternatives == ["2027-01-19"]
    assert "60日先" in p.message["ja"] and "1月19日" in p.message["ja"]
    assert "January 19th" in p.message["en"]


def test_today_with_no_time_left_is_too_late(r):
    p = r.check_date(WEEKDAY, dt.datetime(2026, 11, 24, 20, 45, tzinfo=JST))
    assert p.code == "too_late_today"
    assert p.alternatives == ["2026-11-25", "2026-11-26"]
    _both_languages(p)


# ---- check_time ----------------------------------------------------------------------------------

def test_a_bookable_time_passes(r):
    assert r.check_time(WEEKDAY, _t("19:00"), NOW) is None
    assert r.check_time(SATURDAY, _t("22:00"), NOW) is None
    assert r.check_time(LABOUR_THANKSGIVING, _t("10:00"), NOW) is None


def test_outside_hours_offers_the_nearest_bookable_times(r):
    p = r.check_time(WEEKDAY, _t("22:00"), NOW)
    assert p.code == "outside_hours"
    assert p.alternatives == ["21:00", "20:30", "20:00"]
    assert "午前11時から午後9時まで" in p.message["ja"]
    assert "午後8時、午後8時半、午後9時はいかがでしょうか。" in p.message["ja"]
    assert "from 11 am to 9 pm" in p.message["en"]
    early = r.check_time(WEEKDAY, _t("10:00"), NOW)
    assert early.code == "outside_hours" and early.alternatives == ["11:00", "11:30", "12:00"]


def test_weekend_last_booking_is_an_hour_later(r):
    assert r.check_time(WEEKDAY, _t("21:30"), NOW).code == "outside_hours"
    assert r.check_time(SATURDAY, _t("21:30"), NOW) is None
    assert r.check_time(COMING_OF_AGE, _t("21:30"), NOW) is None


def test_off_grid_offers_the_neighbouring_grid_times(r):
    p = r.check_time(WEEKDAY, _t("19:15"), NOW)
    assert p.code == "off_grid"
    assert p.alternatives == ["19:00", "19:30"]
    assert "30分単位" in p.message["ja"] and "午後7時、午後7時半はいかがでしょうか。" in p.message["ja"]
    assert "half hour" in p.message["en"] and "7 pm or 7:30 pm" in p.message["en"]
    assert r.check_time(WEEKDAY, _t("19:20"), NOW).alternatives == ["19:30", "19:00"]


def test_past_time_today_offers_the_next_times_today(r):
    now = dt.datetime(2026, 11, 24, 15, 10, tzinfo=JST)
    p = r.check_time(WEEKDAY, _t("13:00"), now)
    assert p.code == "too_late_today"
    assert p.alternatives == ["16:00", "16:30", "17:00"]
    assert "すでに過ぎております" in p.message["ja"]


def test_min_lead_time_is_enforced(r):
    now = dt.datetime(2026, 11, 24, 15, 10, tzinfo=JST)
    p = r.check_time(WEEKDAY, _t("15:30"), now)  # 20 minutes ahead, 30 required
    assert p.code == "too_late_today"
    assert p.alternatives[0] == "16:00"
    assert "30分前まで" in p.message["ja"] and "30 minutes" in p.message["en"]
    assert r.check_time(WEEKDAY, _t("16:00"), now) is None  # 50 minutes ahead
    exactly = dt.datetime(2026, 11, 24, 15, 30, tzinfo=JST)
    assert r.check_time(WEEKDAY, _t("16:00"), exactly) is None  # exactly the lead


def test_too_late_for_the_last_slot_offers_the_next_day():
    r = Restaurant(RestaurantConfig())
    now = dt.datetime(2026, 11, 24, 20, 10, tzinfo=JST)
    p = r.check_time(WEEKDAY, _t("20:30"), now)  # 20 minutes ahead; only 21:00 is left
    assert p.code == "too_late_today" and p.alternatives == ["21:00"]
    late = dt.datetime(2026, 11, 24, 20, 35, tzinfo=JST)
    p2 = r.check_date(WEEKDAY, late)
    assert p2.code == "too_late_today"


def test_too_soon_with_nothing_left_today_offers_tomorrow_times():
    r = Restaurant(RestaurantConfig())
    now = dt.datetime(2026, 11, 24, 20, 10, tzinfo=JST)
    full_tonight = lambda d, t: d != WEEKDAY  # noqa: E731
    p = r.check_time(WEEKDAY, _t("20:30"), now, free=full_tonight)
    assert p.code == "too_late_today"
    assert p.alternatives == ["2026-11-25T11:00", "2026-11-25T11:30", "2026-11-25T12:00"]
    assert "明日" in p.message["ja"]
    assert "tomorrow" in p.message["en"]


def test_time_check_reports_the_date_problem_first(r):
    assert r.check_time(dt.date(2026, 12, 31), _t("19:00"), NOW).code == "closed_day"
    assert r.check_time(dt.date(2026, 11, 1), _t("19:00"), NOW).code == "past_date"


def test_fully_booked_offers_the_nearest_free_times(r):
    free = lambda d, t: t not in (_t("19:00"), _t("19:30"))  # noqa: E731
    p = r.check_time(WEEKDAY, _t("19:00"), NOW, free=free)
    assert p.code == "fully_booked"
    assert p.alternatives == ["18:30", "18:00", "20:00"]
    assert "満席" in p.message["ja"] and "fully booked" in p.message["en"]
    assert r.check_time(WEEKDAY, _t("18:30"), NOW, free=free) is None


def test_fully_booked_day_offers_other_days(r):
    p = r.check_time(WEEKDAY, _t("19:00"), NOW, free=lambda d, t: d != WEEKDAY)
    assert p.code == "fully_booked"
    assert p.alternatives == ["2026-11-25", "2026-11-26"]


# ---- party size and phone ------------------------------------------------------------------------

def test_party_sizes_within_limits_pass(r):
    for n in (1, 2, 3, 4):
        assert r.check_party(n) is None


def test_party_too_large_refers_to_the_restaurant_phone(r):
    p = r.check_party(5)
    assert p.code == "party_too_large"
    assert p.alternatives == ["1", "2", "3", "4"]
    assert "4名様までのご予約を承っております" in p.message["ja"]
    assert "03-1234-5678" in p.message["ja"] and "03-1234-5678" in p.message["en"]


def test_party_too_small(r):
    for n in (0, -1):
        p = r.check_party(n)
        assert p.code == "party_too_small" and p.alternatives == ["1", "2", "3", "4"]
        _both_languages(p)
    r2 = Restaurant(RestaurantConfig(min_party_size=2, max_party_size=6))
    assert r2.check_party(1).code == "party_too_small"
    assert "2名様から6名様" in r2.check_party(1).message["ja"]


@pytest.mark.parametrize("ok", ["09012345678", "0312345678", "0451234567", "0120123456", "08001234567",
                                "05012345678"])
def test_valid_japanese_phone_numbers(r, ok):
    assert r.check_phone(ok) is None


@pytest.mark.parametrize("bad", ["", "1234", "9012345678", "091234567", "090123456789", "0012345678",
                                 "03123456789", "090-1234-5678", "０９０１２３４５６７８"])
def test_invalid_phone_numbers(r, bad):
    p = r.check_phone(bad)
    assert p is not None and p.code == "invalid_phone"
    _both_languages(p)


def test_english_messages_say_tomorrow_without_on():
    r = Restaurant(RestaurantConfig(closed_weekdays=[1]))
    monday = dt.datetime(2026, 11, 23, 12, 0, tzinfo=JST)
    closed = r.check_date(WEEKDAY, monday)
    assert "closed tomorrow, Tuesday, November 24th, our regular closing day" in closed.message["en"]
    assert "明日、11月24日火曜日は定休日のため" in closed.message["ja"]
    wed = dt.date(2026, 11, 25)
    late = r.check_time(wed, dt.time(23, 0), dt.datetime(2026, 11, 24, 12, 0, tzinfo=JST))
    assert late.message["en"].startswith("I'm sorry, tomorrow, November 25th we take bookings")
    other = r.check_time(dt.date(2026, 11, 27), dt.time(23, 0), dt.datetime(2026, 11, 24, 12, 0, tzinfo=JST))
    assert other.message["en"].startswith("I'm sorry, on November 27th we take bookings")
