"""Recognition on a phone line, measured where it matters: does the understanding layer read the
right date, time, party size, phone number and name from what whisper wrote?

    uv run python -m pipeline.sim.recognition --model DIR [--voices 2] [--limit N] [--json]

Callers are Open JTalk voices (``pyopenjtalk.tts``: not the bot's voice), brought to a telephone
talker's level and carried over a simulated phone line (8 kHz, G.711 mu-law, resampled once each
way with :mod:`pipeline.audio`'s filter), with the silence the turn detector leaves around a turn.
Each line is an answer to one of the bot's questions (:data:`LINES`: dates, times, party sizes,
phone numbers whole and in groups, names, yes/no, requests, changes and cancellations) and is
transcribed three times through the bot's own :meth:`~pipeline.speech.stt.FasterWhisperSTT.transcribe`:
without a dialog context, with the context the call gives it (what the bot asked, the restaurant's
name), and with that context's expected answers weighed on the audio as a call does
(:func:`pipeline.dialog.understand.sound.expectation`). Reported for each:

- CER by writing: characters of the cleaned transcript against the line as written (NFKC, no
  punctuation): 十九時 against 19時 counts as errors, as it does for the parsers;
- CER by sound: the same on Open JTalk's katakana readings (:mod:`pipeline.sim.score`): a name in
  the wrong kanji but the right sound is right;
- slot accuracy: of the values the line carries (:attr:`Said.expect`), how many the understanding
  layer reads from the cleaned transcript as the bot would (``understand(text, asking=...)``, a
  phone number repaired as the rules agent does; a name compared by its reading); and how many
  lines have every value right;
- false turns: of a few non-speech clips (silence, line noise, a breath-like burst), how many left
  words after :func:`~pipeline.dialog.understand.transcript.clean_transcript`.

Nothing is downloaded: ``--model`` is a CTranslate2 whisper folder (default: the configured
``stt.model``). On random-weight test models the figures mean nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.sim.phone import at_level, phone_line
from pipeline.sim.score import edit_distance, error_count, reading, units
from pipeline.sim.voices import Voice, noise, silence

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
#: silence before a line (the caller draws breath after the bot stops) and after it (what the turn
#: detector leaves once the caller stops)
LEAD_S = 0.3
TRAIL_S = 0.45
#: the day the lines are said on: a Tuesday, so 来週の金曜日 is 2026-12-11
TODAY = dt.date(2026, 12, 1)
#: the caller voices, in order; ``--voices N`` takes the first N
VOICES = (
    Voice("openjtalk", speed=1.0, pitch=0.0),
    Voice("openjtalk", speed=1.15, pitch=-3.0),
    Voice("openjtalk", speed=0.9, pitch=3.0),
)


@dataclass(frozen=True)
class Said:
    """One caller line: ``text`` as Open JTalk reads it (and as whisper should write it), the
    question it answers (``asking``: what ``state.asking`` holds), and the values the understanding
    layer must read from it: ``date`` "YYYY-MM-DD", ``time`` "HH:MM", ``party_size``, ``phone``
    (digits, or one group of them), ``name`` (compared by reading), ``note`` (a word the request
    must contain), ``yes`` (True/False), ``act`` (a dialog act)."""

    text: str
    asking: str | None
    expect: dict[str, Any] = field(default_factory=dict)


#: Reservation answers of every kind. None of their values is in the prompts of
#: :data:`pipeline.speech.stt.PROMPTS` (which hold other dates, times and numbers), so the context cannot
#: win by copying its example.
LINES: tuple[Said, ...] = (
    # dates
    Said("12月10日でお願いします", "date", {"date": "2026-12-10"}),
    Said("明後日です", "date", {"date": "2026-12-03"}),
    Said("今週の土曜日", "date", {"date": "2026-12-05"}),
    Said("来週の水曜日でお願いします", "date", {"date": "2026-12-09"}),
    Said("12月18日、金曜日です", "date", {"date": "2026-12-18"}),
    Said("1月8日は空いていますか", "date", {"date": "2027-01-08"}),
    Said("20日でお願いします", "date", {"date": "2026-12-20"}),
    Said("あさってです", "date", {"date": "2026-12-03"}),
    Said("明日の予約をしたいのですが", "date", {"date": "2026-12-02"}),
    # times
    Said("18時でお願いします", "time", {"time": "18:00"}),
    Said("夜8時半", "time", {"time": "20:30"}),
    Said("19時30分からお願いします", "time", {"time": "19:30"}),
    Said("午後6時です", "time", {"time": "18:00"}),
    Said("7時でお願いします", "time", {"time": "19:00"}),
    Said("12時半に行きます", "time", {"time": "12:30"}),
    Said("20時です", "time", {"time": "20:00"}),
    Said("夜の8時で", "time", {"time": "20:00"}),
    Said("18時半です", "time", {"time": "18:30"}),
    # party sizes
    Said("2名です", "party_size", {"party_size": 2}),
    Said("4人でお願いします", "party_size", {"party_size": 4}),
    Said("ひとりです", "party_size", {"party_size": 1}),
    Said("大人3人です", "party_size", {"party_size": 3}),
    Said("6名でお願いします", "party_size", {"party_size": 6}),
    Said("5人で行きます", "party_size", {"party_size": 5}),
    # phone numbers, whole and in groups
    Said("090-3456-7812です", "phone", {"phone": "09034567812"}),
    Said("080-2468-1357です", "phone", {"phone": "08024681357"}),
    Said("電話番号は070-5555-0123です", "phone", {"phone": "07055550123"}),
    Said("03-6789-0123です", "phone", {"phone": "0367890123"}),
    Said("携帯は080-9876-5432です", "phone", {"phone": "08098765432"}),
    Said("ゼロキューゼロ、ニーサンヨンゴ、ロクナナハチキュー", "phone", {"phone": "09023456789"}),
    Said("ゼロキューゼロサンサンサンサンヨンヨンヨンヨンです", "phone", {"phone": "09033334444"}),
    Said("090の", "phone", {"phone": "090"}),
    Said("3456の", "phone", {"phone": "3456"}),
    Said("7812です", "phone", {"phone": "7812"}),
    # names
    Said("鈴木です", "name", {"name": "鈴木"}),
    Said("佐藤と申します", "name", {"name": "佐藤"}),
    Said("山田花子です", "name", {"name": "山田花子"}),
    Said("高橋でお願いします", "name", {"name": "高橋"}),
    Said("渡辺です", "name", {"name": "渡辺"}),
    Said("伊藤と申します", "name", {"name": "伊藤"}),
    Said("小林です", "name", {"name": "小林"}),
    Said("中村太郎です", "name", {"name": "中村太郎"}),
    # yes / no, to the read-back
    Said("はい", "confirm", {"yes": True}),
    Said("はい、大丈夫です", "confirm", {"yes": True}),
    Said("いいえ", "confirm", {"yes": False}),
    Said("いいえ、違います", "confirm", {"yes": False}),
    Said("はい、お願いします", "confirm", {"yes": True}),
    Said("それで大丈夫です", "confirm", {"yes": True}),
    # requests, and none
    Said("特にありません", "note", {"act": "none"}),
    Said("結構です", "anything_else", {"act": "none"}),
    Said("誕生日なのでケーキを用意してほしいです", "note", {"note": "ケーキ"}),
    Said("窓際の席がいいです", "note", {"note": "窓際"}),
    Said("卵アレルギーの者が1名おります", "note", {"note": "アレルギー"}),
    Said("子供用の椅子をお願いします", "note", {"note": "椅子"}),
    # several items at once, as a first answer
    Said("12月12日の18時に4名でお願いします", "date", {"date": "2026-12-12", "time": "18:00", "party_size": 4}),
    Said("明日の夜7時に2名で予約したいです", "date", {"date": "2026-12-02", "time": "19:00", "party_size": 2}),
    Said("来週の金曜日の19時半に3人で", "date", {"date": "2026-12-11", "time": "19:30", "party_size": 3}),
    # calls about a booking
    Said("予約をキャンセルしたいのですが", "date", {"act": "cancel_booking"}),
    Said("予約の時間を変更したいです", "date", {"act": "change_booking"}),
)


# ============================================================================================ audio
def caller_audio(text: str, voice: Voice) -> np.ndarray:
    """``text`` in ``voice`` as the bot's STT receives it from a phone call: int16 at 16 kHz, at a
    telephone talker's level, through 8 kHz mu-law, with the silence around a turn."""
    rate, pcm = voice.render(text)
    line = phone_line(rate, at_level(pcm, sample_rate=rate))
    return np.concatenate([silence(LEAD_S), line, silence(TRAIL_S)])


def non_speech() -> list[tuple[str, np.ndarray]]:
    """Clips with no words in them, as a turn detector might still pass on: whisper must write nothing."""
    rng = np.random.default_rng(7)
    burst = noise(0.6, dbfs=-30.0, seed=3).astype(np.float64)
    burst *= np.hanning(burst.size) * (1 + 0.3 * rng.standard_normal(burst.size))  # a breath: noise swelling and fading
    breath = np.clip(burst, -32768, 32767).astype(np.int16)
    t = np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE
    hum = (3000 * np.sin(2 * np.pi * 50 * t)).astype(np.int16)  # mains hum on the line
    clips = [
        ("silence", silence(1.0)),
        ("line noise -50 dBFS", noise(1.5, dbfs=-50.0, seed=1)),
        ("line noise -40 dBFS", noise(1.5, dbfs=-40.0, seed=2)),
        ("line noise -35 dBFS", noise(2.0, dbfs=-35.0, seed=5)),
        ("breath", np.concatenate([silence(LEAD_S), breath, silence(TRAIL_S)])),
        ("hum", hum),
    ]
    return [(name, phone_line(SAMPLE_RATE, pcm)) for name, pcm in clips]


# ============================================================================================ slots
def heard_values(text: str, asking: str | None, today: dt.date = TODAY,
                 is_open: Callable[[dt.time], bool] | None = None) -> dict[str, Any]:
    """What the understanding layer reads from ``text`` when the bot asked ``asking``, in
    :attr:`Said.expect`'s terms, taken as the rules agent takes it (a phone number repaired, a
    request in the caller's words, yes and no from the dialog acts)."""
    from pipeline.dialog.understand import understand
    from pipeline.dialog.understand.phone import repair_phone
    from pipeline.dialog.understand.text import normalize

    u = understand(text, today, asking=asking, is_open=is_open)
    values = u.values
    out: dict[str, Any] = {"acts": sorted(u.acts)}
    if "date" in values:
        out["date"] = values["date"].isoformat()
    if "time" in values:
        out["time"] = values["time"].strftime("%H:%M")
    if "party_size" in values:
        out["party_size"] = values["party_size"]
    if "phone" in values:
        out["phone"] = repair_phone(values["phone"])  # as the rules agent and the tools take it
    if "name" in values:
        out["name"] = values["name"]
    if "note" in values:
        out["note"] = values["note"]
    elif asking == "note" and not u.acts & {"none", "deny", "affirm", "question"} and len(normalize(text)) >= 4:
        out["note"] = normalize(text)  # a request in the caller's words, as the rules agent takes it
    out["yes"] = True if u.has("affirm") else False if u.has("deny") else None  # as the rules agent reads it
    return out


def _vowel(kana: str) -> str:
    name = unicodedata.name(kana, "")
    return name[-1] if name.startswith("KATAKANA LETTER") and name[-1] in "AIUEO" else ""


def same_sound(a: str, b: str) -> bool:
    """Whether two names sound alike when the bot says them: their readings, with long vowels
    however written (さとお, サトウ and 佐藤 are all sato:)."""

    def sound(name: str) -> str:
        out: list[str] = []
        for c in reading(name):
            prev = _vowel(out[-1]) if out else ""
            if prev and (c == {"O": "ウ", "E": "イ"}.get(prev) or _vowel(c) == prev and c in "アイウエオ"):
                continue  # a long vowel: おう, えい, ああ
            out.append(c)
        return "".join(out)

    return sound(a) == sound(b)


def slot_hits(expect: dict[str, Any], got: dict[str, Any]) -> dict[str, bool]:
    """For each expected value, whether ``got`` (:func:`heard_values`) has it."""
    hits: dict[str, bool] = {}
    for key, want in expect.items():
        if key == "name":
            have = got.get("name")
            hits[key] = bool(have) and same_sound(have, want)
        elif key == "note":
            hits[key] = want in (got.get("note") or "")
        elif key == "act":
            hits[key] = want in got.get("acts", ())
        else:
            hits[key] = got.get(key) == want
    return hits


# ============================================================================================ the run
@dataclass
class Tally:
    """One mode's sums: edits against reference units (by writing and by sound), slot values and
    lines right, non-speech clips that left words."""

    edits: int = 0
    chars: int = 0
    sound_edits: int = 0
    sound_chars: int = 0
    values: int = 0
    values_right: int = 0
    lines: int = 0
    lines_right: int = 0
    false_turns: int = 0
    non_speech: int = 0
    seconds: list[float] = field(default_factory=list)
    by_slot: dict[str, list[int]] = field(default_factory=dict)  # slot -> [right, total]

    def summary(self) -> dict[str, Any]:
        def rate(a: int, b: int) -> float | None:
            return round(a / b, 4) if b else None

        return {
            "cer": rate(self.edits, self.chars),
            "cer_by_sound": rate(self.sound_edits, self.sound_chars),
            "slot_accuracy": rate(self.values_right, self.values),
            "values": self.values,
            "lines_all_right": rate(self.lines_right, self.lines),
            "lines": self.lines,
            "by_slot": {k: {"right": r, "of": n} for k, (r, n) in sorted(self.by_slot.items())},
            "false_turns": self.false_turns,
            "non_speech_clips": self.non_speech,
            "ms_mean": round(1000 * float(np.mean(self.seconds)), 1) if self.seconds else None,
        }


#: a transcriber: audio (int16, 16 kHz) and the dialog context or None -> the raw transcript text
Transcribe = Callable[[np.ndarray, Any], str]


def run(transcribe: Transcribe, context_for: Callable[..., Any], *,
        lines: Sequence[Said] = LINES, voices: Sequence[Voice] = VOICES[:2],
        modes: Sequence[str] = ("plain", "context", "weighed"),
        is_open: Callable[[dt.time], bool] | None = None, language: str = "ja") -> dict[str, Any]:
    """Transcribe every line in every voice once per mode ("plain": no context; "context":
    ``context_for(asking)``; "weighed": ``context_for(asking, weigh=True)``, the context with the
    expected answers weighed on the audio), clean the text, score it, and read its slots."""
    from pipeline.dialog.understand.transcript import clean_transcript

    tallies = {mode: Tally() for mode in modes}
    rows: list[dict[str, Any]] = []
    clips = [(said, voice, caller_audio(said.text, voice)) for voice in voices for said in lines]
    for n, (said, voice, audio) in enumerate(clips, 1):
        log.info("line %d/%d: %s (%s)", n, len(clips), said.text, voice.describe())
        row: dict[str, Any] = {"line": said.text, "asking": said.asking, "voice": voice.describe(),
                               "expect": said.expect}
        for mode in modes:
            context = None if mode == "plain" else context_for(said.asking, weigh=mode == "weighed")
            start = time.perf_counter()
            raw = transcribe(audio, context)
            tally = tallies[mode]
            tally.seconds.append(time.perf_counter() - start)
            text = clean_transcript(raw, language)
            ref = units(said.text, language)
            tally.edits += edit_distance(ref, units(text, language))
            tally.chars += len(ref)
            by_sound = error_count(said.text, text, language)
            tally.sound_edits += by_sound.edits
            tally.sound_chars += by_sound.total
            got = heard_values(text, said.asking, is_open=is_open)
            hits = slot_hits(said.expect, got)
            tally.values += len(hits)
            tally.values_right += sum(hits.values())
            tally.lines += 1
            tally.lines_right += all(hits.values())
            for slot, ok in hits.items():
                right_total = tally.by_slot.setdefault(slot, [0, 0])
                right_total[0] += ok
                right_total[1] += 1
            row[mode] = {"raw": raw, "text": text, "hits": hits,
                         "got": {k: v for k, v in got.items() if k in said.expect or k == "acts"}}
        rows.append(row)
    for name, audio in non_speech():
        for mode in modes:
            context = None if mode == "plain" else context_for("date", weigh=mode == "weighed")
            raw = transcribe(audio, context)
            text = clean_transcript(raw, language)
            tallies[mode].non_speech += 1
            tallies[mode].false_turns += bool(text)
            rows.append({"line": None, "non_speech": name, "mode": mode, "raw": raw, "text": text})
    return {"modes": {mode: t.summary() for mode, t in tallies.items()}, "rows": rows,
            "clips": len(clips), "lines": len(lines), "voices": [v.describe() for v in voices]}


# ============================================================================================ output
def format_report(result: dict[str, Any]) -> str:
    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v * 100:.1f}%"

    out = [
        f"recognition: {result['model']}, {result['lines']} lines x {len(result['voices'])} voices "
        f"({', '.join(result['voices'])}) = {result['clips']} clips over an 8 kHz mu-law line",
        f"{'mode':8} {'CER':>6} {'by sound':>8} {'slots':>14} {'lines right':>14} {'false turns':>11} {'ms':>6}",
    ]
    for mode, s in result["modes"].items():
        slots = f"{pct(s['slot_accuracy'])} of {s['values']}"
        lines = f"{pct(s['lines_all_right'])} of {s['lines']}"
        false = f"{s['false_turns']}/{s['non_speech_clips']}"
        out.append(f"{mode:8} {pct(s['cer']):>6} {pct(s['cer_by_sound']):>8} {slots:>14} {lines:>14} {false:>11} "
                   f"{s['ms_mean'] or 0:>6.0f}")
    out.append("")
    slots = sorted({k for s in result["modes"].values() for k in s["by_slot"]})
    out.append("by slot: " + "; ".join(
        f"{slot} " + " / ".join(
            f"{mode} {s['by_slot'][slot]['right']}/{s['by_slot'][slot]['of']}"
            for mode, s in result["modes"].items() if slot in s["by_slot"])
        for slot in slots))
    misses = [r for r in result["rows"] if r.get("line") and not all(all(r[m]["hits"].values()) for m in result["modes"])]
    if misses:
        out.append("")
        out.append("lines with a value missed (what whisper wrote, cleaned):")
        for r in misses:
            out.append(f"  {r['line']} [{r['voice']}]: " + " | ".join(
                f"{m}: {r[m]['text']!r}{'' if all(r[m]['hits'].values()) else ' x'}" for m in result["modes"]))
    return "\n".join(out)


# ============================================================================================ CLI
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.sim.recognition", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", help="path to config.yaml")
    p.add_argument("--model", type=Path, default=None,
                   help="a faster-whisper (CTranslate2) model directory (default: the configured stt.model)")
    p.add_argument("--voices", type=int, default=2, help=f"caller voices, 1 to {len(VOICES)} (default 2)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="only the first N lines")
    p.add_argument("--json", action="store_true", help="one JSON object instead of the report")
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not 1 <= args.voices <= len(VOICES):
        p.error(f"--voices must be 1 to {len(VOICES)}")

    from pipeline.config import load_config
    from pipeline.dialog.restaurant import Restaurant
    from pipeline.dialog.understand.sound import expectation, restaurant_ranges
    from pipeline.speech.models import whisper_dir
    from pipeline.speech.stt import FasterWhisperSTT, STTContext

    cfg = load_config(args.config)
    path = args.model if args.model is not None else whisper_dir(cfg)
    if not (path / "model.bin").is_file():
        p.error(f"no faster-whisper model in {path} (model.bin missing): pass --model a CTranslate2 whisper folder")
    stt = FasterWhisperSTT(cfg.stt.model_copy(update={"language": "ja"}), path)
    stt.warmup()
    restaurant = Restaurant(cfg.restaurant)
    party, hours = restaurant_ranges(cfg.restaurant)

    def transcribe(audio: np.ndarray, context: STTContext | None) -> str:
        return stt.transcribe(audio, SAMPLE_RATE, context=context).text

    def context_for(asking: str | None, weigh: bool = False) -> STTContext:
        return STTContext(asking=asking, language="ja", words=(cfg.restaurant.name,),
                          expect=expectation(asking, "ja", today=TODAY, party=party, hours=hours) if weigh else None)

    start = time.perf_counter()
    lines = LINES[: args.limit] if args.limit else LINES
    result = run(transcribe, context_for, lines=lines, voices=VOICES[: args.voices],
                 is_open=lambda t: restaurant.is_open_at(t, None))
    result.update(model=str(path), elapsed_s=round(time.perf_counter() - start, 1),
                  settings={"beam_size": cfg.stt.beam_size, "compute_type": cfg.stt.compute_type,
                            "window_s": cfg.stt.window_s, "hotwords": list(cfg.stt.hotwords)})
    sys.stdout.write((json.dumps(result, ensure_ascii=False) if args.json else format_report(result)) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
