"""What a misheard answer may have been: readings, and the answers to weigh against what whisper wrote.

Whisper base on a phone line writes the right sound in the wrong kanji (あさって → 「朝って」, 鈴木 →
「続き」), or a near sound (2名 → 「耳で」, 4人 → 「やみんで」). Two things help, both driven by what
the bot asked:

- :func:`reading` gives a text's katakana reading (Open JTalk's), so that a word can be found by
  its sound: a relative date in the wrong kanji (「朝って」 is あさって), キャンセル or 変更 misheard after
  予約, a common surname the name whisper wrote sounds like.
- :func:`alternatives` lists the answers the caller may have given instead of what whisper wrote,
  when that text does not answer the question: every party size the restaurant takes, the times
  it is open, the dates said in words, yes and no, and common surnames that sound like the name
  whisper wrote. The recogniser scores each on the turn's own audio (``STTContext.expect``,
  :meth:`pipeline.speech.stt.FasterWhisperSTT.transcribe`) and keeps one only when whisper finds it about
  as likely as its own text, so nothing is taken that the audio does not support; every value is
  read back to the caller before it is booked.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import re
import threading
import unicodedata
from collections.abc import Callable, Sequence

log = logging.getLogger(__name__)

_KATAKANA = re.compile("[\u30a1-\u30fa\u30fc]+")
_lock = threading.Lock()  # Open JTalk's front end is not thread-safe


def kana_of(text: str) -> str:
    """Open JTalk's kana for ``text`` as it gives it (punctuation kept), one caller at a time (its
    front end is not thread-safe); raises what the front end raises."""
    import pyopenjtalk

    with _lock:
        return pyopenjtalk.g2p(text, kana=True)


@functools.lru_cache(maxsize=4096)
def reading(text: str) -> str:
    """The katakana reading of Japanese ``text`` (Open JTalk's), without punctuation or spaces; ""
    when there is none or the front end fails (a missing dictionary must not cost a call)."""
    text = unicodedata.normalize("NFKC", text or "").strip()[:200]
    if not text:
        return ""
    try:
        kana = kana_of(text)
    except Exception:  # noqa: BLE001 - no reading is an answer, not an error
        log.debug("no reading for %r", text, exc_info=True)
        return ""
    return "".join(_KATAKANA.findall(kana))


#: what a booking is done with, by sound: a word whisper wrote in near-sounding kanji or kana
#: (「パンセル」 for キャンセル, 「健康」 for 変更) still names it after 予約 when a wish follows it
_BOOKING_WORDS = (("キャンセル", "cancel_booking"), ("トリケシ", "cancel_booking"), ("ヘンコー", "change_booking"))
_WISH_AFTER = ("シタイ", "シテ", "ヲオネガイ", "オネガイ", "デキ", "サセテ", "ヲシタイ")
_SMALL = frozenset("ャュョァィゥェォヮ")


def morae(kana: str) -> list[str]:
    """A reading cut into morae: a small kana belongs to the one before it (キャ, ジュ)."""
    out: list[str] = []
    for ch in kana:
        if ch in _SMALL and out:
            out[-1] += ch
        else:
            out.append(ch)
    return out


def booking_act_by_sound(text: str) -> str | None:
    """``cancel_booking`` or ``change_booking`` when ``text`` mentions 予約 and, by its reading, has a
    stretch within one slip of キャンセル, 取り消し or 変更 (a mora more or less) followed by a wish (したい, をお願い, できます);
    else None."""
    if "予約" not in text and "よやく" not in text:
        return None
    heard = morae(reading(text[:80]))
    for word, act in _BOOKING_WORDS:
        if nearest(heard, word, 1, lambda after: after.startswith(_WISH_AFTER), start=1) is not None:
            return act
    return None


#: relative dates whisper writes in near-sounding kanji (あさって -> 「朝って」「朝手」), by reading:
#: the word, how many days from today, and the slips allowed
_RELATIVE_BY_SOUND = (("シアサッテ", 3, 1), ("アサッテ", 2, 1), ("ミョーゴニチ", 2, 1))


def relative_date_by_sound(text: str) -> int | None:
    """Days from today of a relative date ``text`` says by its sound only (「朝手の18時」: あさって,
    2), or None; the word must stand before a particle or the end (の, に, で, は, です)."""
    heard = morae(reading(text[:80]))
    found = [(d, days) for word, days, slips in _RELATIVE_BY_SOUND
             if (d := nearest(heard, word, slips, lambda after: not after or after[0] in "ノニデハ")) is not None]
    return min(found, key=lambda f: f[0])[1] if found else None  # on a tie, the longer word (シアサッテ)


def nearest(heard: list[str], word: str, slips: float, fits: Callable[[str], bool], *, start: int = 0) -> float | None:
    """The least distance of ``word`` to a stretch of ``heard`` (morae) one mora shorter, as long or
    one longer than it, followed by what ``fits`` (the next five morae, joined), if within ``slips``;
    else None."""
    target = morae(word)
    n = len(target)
    best: float | None = None
    for size in (n - 1, n, n + 1):
        for i in range(start, len(heard) - size + 1):
            if not fits("".join(heard[i + size:i + size + 5])):
                continue
            d = distance(heard[i:i + size], target)
            if d <= slips and (best is None or d < best):
                best = d
    return best


def _base(kana: str) -> str:
    """The kana without its voicing mark (ダ -> タ, パ -> ハ)."""
    return unicodedata.normalize("NFD", kana)[0]


def distance(a: str | Sequence[str], b: str | Sequence[str]) -> float:
    """Edit distance between two readings (strings of kana, or lists of morae), a change of voicing
    alone (タ/ダ, ハ/バ/パ) and a long vowel mark missing or added counting half; O(len(a) * len(b)),
    for short readings."""
    def gap(kana: str) -> float:
        return 0.5 if kana == "ー" else 1.0  # a long vowel is often lost or heard where there is none

    prev = [0.0]
    for cb in b:
        prev.append(prev[-1] + gap(cb))
    for ca in a:
        cur = [prev[0] + gap(ca)]
        for j, cb in enumerate(b, 1):
            sub = 0.0 if ca == cb else 0.5 if _base(ca) == _base(cb) and ca[1:] == cb[1:] else 1.0
            cur.append(min(prev[j] + gap(ca), cur[j - 1] + gap(cb), prev[j - 1] + sub))
        prev = cur
    return prev[-1]


#: Common Japanese surnames (about the 260 most frequent). A name whisper wrote that sounds like
#: one of these is weighed against it on the audio; any other name is still taken as heard (and
#: read back in katakana for the caller to correct).
SURNAMES: tuple[str, ...] = tuple("""
佐藤 鈴木 高橋 田中 伊藤 渡辺 山本 中村 小林 加藤 吉田 山田 佐々木 山口 松本 井上 木村 林 斎藤 清水
山崎 森 池田 橋本 阿部 石川 山下 中島 石井 小川 前田 岡田 長谷川 藤田 後藤 近藤 村上 遠藤 青木 坂本
福田 太田 西村 藤井 金子 岡本 藤原 中野 三浦 原田 中川 松田 竹内 小野 田村 中山 和田 石田 森田 上田
原 内田 柴田 酒井 宮崎 横山 高木 安藤 宮本 大野 小島 谷口 今井 工藤 高田 増田 丸山 杉山 村田 大塚
新井 小山 平野 藤本 河野 上野 野口 武田 松井 千葉 岩崎 菅原 木下 久保 佐野 野村 松尾 市川 菊地 杉本
古川 大西 島田 水野 桜井 高野 吉川 山内 西田 飯田 西川 小松 北村 安田 五十嵐 川口 平田 関 中田
久保田 服部 東 岩田 土屋 川崎 福島 本田 辻 樋口 秋山 田口 永井 山中 中西 吉村 川上 石原 大橋 松岡
馬場 浜田 森本 星野 矢野 浅野 大久保 松下 吉岡 小池 野田 荒木 大谷 内藤 松浦 熊谷 黒田 尾崎 永田
川村 望月 田辺 松村 荒井 堀 大島 平井 早川 菅野 栗原 西山 広瀬 横田 石橋 萩原 岩本 片山 関口 宮田
大石 本間 須藤 高山 岡崎 小田 伊東 鎌田 上原 篠原 小西 松原 福井 古田 大森 小泉 成田 南 奥村 内山
沢田 川島 桑原 三宅 片岡 富田 杉浦 岡 八木 奥田 小沢 松永 北川 関根 河合 平山 牧野 白石 今村 寺田
青山 中尾 小倉 渋谷 上村 小野寺 大山 足立 岡村 坂口 天野 多田 佐久間 根本 豊田 田島 飯塚 角田 村山
武藤 西 白井 宇野 吉野 堀内 松山 宮下 安井 野崎 竹田 山根 嶋田 長田 宮内 浅井 広田 金田 大川 川田
""".split())


@functools.lru_cache(maxsize=1)
def _surname_readings() -> tuple[tuple[str, str], ...]:
    out = []
    for kanji in SURNAMES:
        kana = reading(kanji)
        if kana:
            out.append((kanji, kana))
    return tuple(out)


def common_surname(name: str) -> str | None:
    """The common surname ``name`` reads as (「砂糖」, 「さとう」 and 「サトウ」 -> 佐藤), or None."""
    if name in SURNAMES:
        return name
    heard = reading(name)
    if not heard:
        return None
    return next((kanji for kanji, kana in _surname_readings() if kana == heard), None)


def sounds_like_surnames(name: str, limit: int = 8) -> list[str]:
    """The names, a common surname in place of a near-sounding start of ``name`` (「続き」 →
    「鈴木」, 「キムだタクヤ」 → 「木村タクヤ」), nearest first, at most ``limit``; [] when no
    surname is near, or ``name`` already starts with one."""
    heard = reading(name)
    if not heard or any(name.startswith(k) for k in SURNAMES):
        return []
    scored: list[tuple[float, int, str]] = []
    for kanji, kana in _surname_readings():
        # a two-mora surname only as an exact start; longer ones with a slip per two morae
        allowed = 0.0 if len(kana) <= 2 else len(kana) / 2
        for cut in sorted({len(kana) - 1, len(kana), len(kana) + 1}, key=lambda c: abs(c - len(kana))):
            if cut < 1 or cut > len(heard):
                continue
            d = distance(heard[:cut], kana)
            rest = heard[cut:]
            if d == 0 and not rest:
                return []  # the heard name is this surname, in other kanji or kana: keep it as heard
            if len(rest) == 1:
                rest = ""  # 「また投げて」「よしだぜ」: one mora left is what whisper kept of です
            if rest and rest[0] in _NOT_A_START:
                continue  # what is left must be a given name, not a stray mora
            if d <= allowed:
                # a whole name near a surname before a surname with a given name left over
                scored.append((d + 0.5 * len(rest), abs(cut - len(kana)), kanji + rest))
                break
    scored.sort(key=lambda s: s[:2])
    return list(dict.fromkeys(s[2] for s in scored))[:limit]


#: a heard name this many morae long or shorter may be a surname whisper made a word of
_SWEEP_MORAE = 6
#: the most common surnames weighed against such a word: a sweep costs ~6 ms a candidate on a
#: 2-core CPU, paid before the reply (all ~260 took 1.7 s in a live call; the rarer ones are still
#: weighed when they sound near, see ``sounds_like_surnames``)
SWEPT_SURNAMES = 120


#: the polite ending a surname is said with, alone in the rest of the turn
_NAME_ENDING = re.compile(r"^(?:です|と申します|でございます)[。.!！ ]*$")


def _sweep_surnames(name: str, text: str) -> bool:
    """Whether every common surname is to be weighed against ``name`` (what whisper wrote for the
    name asked for, as ``parse_name_answer`` read it from ``text``): it is short, it is no common
    surname in any writing and starts with none, and it is all there was to the turn but a polite
    ending (「一応です」)."""
    heard = reading(name)
    if not heard or len(heard) > _SWEEP_MORAE:
        return False
    if not _NAME_ENDING.match(text[text.find(name) + len(name):]):
        return False  # a bare word (「など」) is no name said; 「また投げて」 is near enough to be weighed anyway
    if common_surname(name) is not None or any(name.startswith(k) for k in SURNAMES):
        return False
    return not any(heard.startswith(kana) for _kanji, kana in _surname_readings())


#: kana no word starts with (a long vowel, a small kana, the moraic n)
_NOT_A_START = frozenset("ーッャュョァィゥェォン")

_WEEKDAYS_JA = ("月", "火", "水", "木", "金", "土", "日")


def _party_ja(lo: int, hi: int) -> list[str]:
    out = ["ひとり", "ふたり"] + [f"{n}名" for n in range(lo, hi + 1)]
    return out + [f"{n}人" for n in range(max(lo, 3), hi + 1)]  # 一人, 二人 are ひとり, ふたり


#: the hours most bookings are for: their half hours and evening forms are weighed too
_DINNER = range(17, 22)


def _times_ja(hours: Sequence[int]) -> list[str]:
    """About 20 forms: every bookable hour, and the half hours and 「夜N時」 of the dinner hours (the
    cost of weighing grows with the candidates: ~25 ms each on 2 cores)."""
    out = [f"{h}時" for h in hours]
    out += [f"{h}時半" for h in hours if h in _DINNER]
    return out + [f"夜{h - 12}時" for h in hours if h in _DINNER and h >= 18]


def _dates_ja() -> list[str]:
    return ["今日", "明日", "あさって"] + [f"{week}の{w}曜日" for week in ("今週", "来週") for w in _WEEKDAYS_JA]


#: the words a short Japanese answer ends with, after its value (「…でお願いします」「…です」); what
#: whisper wrote from the first of them on is kept on every candidate, so that a candidate differs
#: from whisper's text only where the value was misheard
_JA_ENDING = re.compile(r"(?:で|に|から)?(?:お願い|おねがい|です|と申し|といい|でいい|で大丈夫|に行き|にし|で)")
_JA_LEAD = re.compile(r"^(?:(?:えー+と?|えっと|あの+ー*|あー+|うーん|んー+)[、,\s]*)+")


def _framed(text: str, cores: Sequence[str]) -> list[str]:
    """Each core in ``text``'s frame: its leading filler and its ending kept (「えーと、耳で」 and 2名
    → 「えーと、2名で」)."""
    lead = m.group(0) if (m := _JA_LEAD.match(text)) else ""
    body = text[len(lead):].rstrip("。.!?！？ ")
    m = _JA_ENDING.search(body, 1)
    tail = body[m.start():] if m else "です"
    if not tail.startswith(("で", "に", "から")) and not tail.startswith("です"):
        tail = "で" + tail
    return [f"{lead}{core}{tail}" for core in cores]


_MONTH_DAY = re.compile(r"(\d{1,2})月(\d{1,2})日")


def _framed_date(text: str, cores: Sequence[str]) -> list[str]:
    """Each date in place of the month and day whisper wrote (「12月1日です」 → 「12月5日です」)."""
    norm = unicodedata.normalize("NFKC", text)
    m = _MONTH_DAY.search(norm)
    if m is None:
        return _framed(text, cores)
    return [norm[:m.start()] + core + norm[m.end():] for core in cores]


def phone_repairs(digits: str) -> list[str]:
    """Valid numbers one doubled or dropped digit away from ``digits`` (whisper hears サンサンサンサン
    as five 3s, or four as three): every single deletion of a digit, a run of one digit made one
    longer, and the border of two runs moved by a digit;
    only the valid ones (:func:`~pipeline.dialog.understand.phone.is_valid_phone`), grouped as whisper
    writes them (090-3333-4444)."""
    from pipeline.dialog.speech import group_phone
    from pipeline.dialog.understand.phone import is_valid_phone

    if not digits.isdigit() or not 9 <= len(digits) <= 12:
        return []
    out = [digits[:i] + digits[i + 1:] for i in range(len(digits))]
    # a digit is doubled only inside a run of it (サンサンサンサン heard as three 3s): a dropped digit
    # elsewhere could be any digit, and is asked again rather than guessed
    out += [digits[:i + 1] + digits[i:] for i in range(len(digits) - 1) if digits[i] == digits[i + 1]]
    # two runs side by side with their border a digit off (サンサンサンサン、ヨンヨンヨンヨン heard as five
    # 3s and three 4s): the digit at the border belongs to the other run
    for i in range(1, len(digits)):
        a, b = digits[i - 1], digits[i]
        if a != b and i >= 2 and digits[i - 2] == a:
            out.append(digits[:i - 1] + b + digits[i:])
        if a != b and i + 1 < len(digits) and digits[i + 1] == b:
            out.append(digits[:i] + a + digits[i + 1:])
    return [group_phone(d) for d in dict.fromkeys(out) if is_valid_phone(d)]


_YES_NO = {"ja": ["はい", "はい、お願いします", "いいえ", "いいえ、違います"],
           "en": ["yes", "yes, please", "no", "no, that's wrong"]}


#: the usual answers to "any requests?" that are none: a short request whisper made of them
#: (「Nor it went.」 for "no requests") is weighed against them
_NO_REQUEST = {"ja": ["特にありません", "ありません", "大丈夫です"],
               "en": ["no requests", "nothing, thank you", "no", "none"]}
#: a request this long, or naming what requests are about, is taken as said
_NOTE_WEIGHED_CHARS = 16


def request_is_clear(text: str) -> bool:
    """Whether ``text``, heard as a request, is surely one: long, or naming what requests are about.
    A short one that names nothing may be a misheard "none" (「Nor it went.」 for "no requests")."""
    from pipeline.dialog.understand.answers import _NOTE_KEYWORDS_RE

    return len(text) > _NOTE_WEIGHED_CHARS or bool(_NOTE_KEYWORDS_RE.search(text.lower()))


def _party_en(lo: int, hi: int) -> list[str]:
    words = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
    return [f"{w} people" if n > 1 else "just one" for n, w in enumerate(words, 1) if lo <= n <= hi]


#: a time as whisper writes it in English: "11 pm", "7:30 p.m.", "8PM"
_EN_TIME = re.compile(r"\b\d{1,2}(?::\d{2})?\s*(?:[ap]\.?\s?m\b\.?)", re.IGNORECASE)


def _times_en(hours: Sequence[int]) -> list[str]:
    out = []
    for h in hours:
        twelve, half = (h - 1) % 12 + 1, "pm" if h >= 12 else "am"
        out += [f"{twelve} {half}", f"{twelve}:30 {half}"]
    return out


#: what a question's answer is about, for the questions that expect the same kind as a slot's
_ASKING_LIKE = {"manage_date": "date", "manage_confirm": "confirm"}


def alternatives(text: str, asking: str | None, language: str | None, *, answered: Callable[[str], bool],
                 party: tuple[int, int] = (1, 10), hours: Sequence[int] = range(11, 23),
                 days: Callable[[str], list[str]] | None = None) -> list[str]:
    """The answers to weigh against ``text`` (what whisper wrote for a turn that answers
    ``asking``), or [] when ``answered(text)`` says it already answers, or there is nothing to weigh.

    ``party`` is the smallest and largest party the restaurant takes (a few more are offered so that
    a too-large party is heard as such), ``hours`` the hours it takes bookings at.
    """
    asking = _ASKING_LIKE.get(asking or "", asking)
    if asking == "name" and language != "en":
        # a name always answers; one that sounds like a common surname is weighed against it
        from pipeline.dialog.understand.names import parse_name_answer

        parsed = parse_name_answer(text)
        name = parsed or text.strip("。、.!！ ")
        others = sounds_like_surnames(name)
        if parsed and _sweep_surnames(name, text):
            # a word, not a name (「一応です」 for 伊藤です, 「早速です」 for 鈴木です): every common surname is
            # weighed, the near-sounding ones first (the recogniser sweeps a list this long quickly)
            others = list(dict.fromkeys([*others, *SURNAMES[:SWEPT_SURNAMES]]))
        after = text[text.find(name) + len(name):] if name in text else ""
        if not after.strip("。、.!！？? "):
            # 「また投げて」 for 渡辺です: a surname in place of a name with a mora of です left gets its です back
            others = [o + "です" if o in SURNAMES else o for o in others]
        return [text.replace(name, other, 1) if name in text else other for other in others]
    if not asking or answered(text):
        return []
    lo, hi = party
    hi = min(max(hi + 2, lo), 20)
    if asking == "confirm":
        # a read-back also meets the request question's answer from a caller still on it
        lang = "en" if language == "en" else "ja"
        return list(dict.fromkeys([*_YES_NO[lang], *_NO_REQUEST[lang][:1]]))
    if asking == "note":
        return list(_NO_REQUEST["en" if language == "en" else "ja"])
    if asking == "phone":
        digits = "".join(ch for ch in unicodedata.normalize("NFKC", text) if ch.isdigit())
        tail = "です" if language != "en" and text.rstrip("。. ").endswith("です") else ""
        return [f"{number}{tail}" for number in phone_repairs(digits)]
    if language == "en":
        table = {"party_size": lambda: _party_en(lo, hi), "time": lambda: _times_en(hours)}
        make = table.get(asking)
        if make is None:
            return []
        m = _EN_TIME.search(text) if asking == "time" else None
        # a time said in a sentence ("a table tomorrow at 11 pm for 2"), each in place of the one heard
        return [text[:m.start()] + c + text[m.end():] for c in make()] if m else make()
    if asking == "date" and days is not None and (other_days := days(text)):
        return _framed_date(text, other_days)
    table = {"party_size": lambda: _party_ja(lo, hi), "time": lambda: _times_ja(hours), "date": _dates_ja}
    make = table.get(asking)
    return _framed(text, make()) if make is not None else []



#: dialog acts that answer a question with something other than its value
_MEANT = frozenset({"cancel_booking", "change_booking", "check_booking", "question", "person", "end", "wait",
                    "repeat", "correct", "affirm", "deny", "none", "book"})


def expectation(asking: str | None, language: str | None, *, today: dt.date, party: tuple[int, int] = (1, 10),
                hours: Sequence[int] = range(11, 23), yes_no: bool = False,
                heard_wrong: Sequence[str] = (), choices: Sequence[object] = ()) -> Callable[[str], list[str]] | None:
    """What the recogniser weighs against its text for a turn that answers ``asking`` (see
    :data:`pipeline.speech.stt.STTContext.expect`); ``yes_no``: the bot's last question was a yes-or-no one
    (「山田様でよろしいでしょうか」), whatever slot it is about. None when nothing is expected."""
    if yes_no:
        asking = "confirm"
    if not asking:
        return None
    from pipeline.dialog.understand import understand
    from pipeline.dialog.understand.transcript import clean_transcript

    slot = _ASKING_LIKE.get(asking, asking)

    def answered(text: str) -> bool:
        u = understand(text, today, asking=asking)
        if slot in u.values and repr(u.values[slot]) in heard_wrong:
            return False  # the value the caller corrected, heard again: weighed against the others
        if u.acts & _MEANT:
            return True  # the caller meant something else than a value: nothing to weigh
        if slot == "confirm":
            return bool(u.acts & {"affirm", "deny"})
        if slot == "note":
            return request_is_clear(text)  # a short one naming nothing may be a misheard "none"
        if slot == "phone":
            from pipeline.dialog.understand.phone import is_valid_phone, repair_phone

            digits = u.values.get("phone") or ""
            # a group of a number said in parts answers too; a whole one must be a number, and one
            # that whisper wrote in groups must not have a group after the first longer than the four
            # digits every such group has (「090-33333-444」 is 0903333 4444 with a digit heard twice)
            groups = re.findall(r"\d+", unicodedata.normalize("NFKC", text))
            if len(digits) >= 9 and any(len(g) > 4 for g in groups[1:]):
                return False
            return bool(digits) and (len(digits) < 9 or is_valid_phone(repair_phone(digits)))
        return slot in u.values

    def other_days(text: str) -> list[str]:
        # the caller corrected a date whisper keeps hearing the same wrong way (「12月5日」 as
        # 「12月1日」): every other day of the month it heard is weighed
        m = _MONTH_DAY.search(unicodedata.normalize("NFKC", text))
        if not heard_wrong or m is None or not 1 <= int(m.group(1)) <= 12:
            return []
        from pipeline.dialog.understand.dates import _next_month_day

        month = int(m.group(1))
        out = []
        for day in range(1, 32):
            value = _next_month_day(today, month, day)
            if value is not None and value.month == month and repr(value) not in heard_wrong:
                out.append(f"{month}月{day}日")
        return out

    said_choices = [said for c in choices if (said := _said_ja(c))] if language != "en" else []

    def expect(raw: str) -> list[str]:
        if said_choices:
            # 「12月5日、土曜日でしょうか、それとも12月12日…」: the options, each in whisper's frame
            text = clean_transcript(raw, language or "ja")
            u = understand(text, today, asking=asking)
            if u.values.get(slot) in choices or u.acts & _MEANT:
                return []
            return _framed(text, said_choices)
        text = clean_transcript(raw, language or "ja")
        others = alternatives(text, asking, language, answered=answered, days=other_days, party=party, hours=hours)
        if asking in _CORRECTING and language != "en" and (named := _misheard_name(text, understand(text, today))):
            # 「いえ、人です」 to the read-back: a no and a word said where a name goes is the name, misheard
            return [*others, *(text.replace(named, surname, 1) for surname in SURNAMES[:SWEPT_SURNAMES])]
        return others

    return expect


#: questions a caller may answer by correcting the name: the read-back and "what is to be corrected?"
_CORRECTING = frozenset({"confirm", "correction"})
_DENY_START = re.compile(r"^(?:(?:いいえ|いえ|いや|違います|ちがいます)[、。,. ]*)+")


def _misheard_name(text: str, u) -> str | None:
    """The word X of ``text`` (said to the read-back or to "what is to be corrected?") where a name
    would go, to weigh every common surname against: a bare 「Xです」 or 「Xと申します」 after an
    optional no, understood as nothing else (no value but the name, no act but the no), X short and
    no common surname."""
    from pipeline.dialog.understand.names import parse_name_answer

    if set(u.values) - {"name"} or u.acts - {"deny"}:
        return None
    rest = _DENY_START.sub("", text.strip())
    name = parse_name_answer(rest)
    if not name or not rest.startswith(name) or not _sweep_surnames(name, rest):
        return None
    return name


def _said_ja(value: object) -> str | None:
    """A date, time or party size as a caller says it (12月5日, 19時半, 3名)."""
    if isinstance(value, dt.date):
        return f"{value.month}月{value.day}日"
    if isinstance(value, dt.time):
        return f"{value.hour}時" + ("半" if value.minute == 30 else f"{value.minute}分" if value.minute else "")
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value}名"
    return None


def restaurant_ranges(cfg) -> tuple[tuple[int, int], range]:
    """The party sizes and booking hours to expect, from the restaurant's configuration
    (:class:`pipeline.config.RestaurantConfig`)."""
    hours = [h for h in (cfg.weekday_hours, cfg.weekend_hours) if h is not None]
    first = min(h.open.hour for h in hours) if hours else 11
    last = max(h.close.hour for h in hours) if hours else 23
    return (cfg.min_party_size, cfg.max_party_size), range(first, max(first + 1, last))
