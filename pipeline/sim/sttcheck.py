"""``voicebot stt-check``: does a shortened whisper encoder window transcribe as well as 30 s?

faster-whisper pads every utterance to Whisper's 30 s encoder window, so a two-second turn costs
the encoder as much as thirty seconds of speech. ``stt.window_s`` shortens that window (see
:func:`pipeline.speech.stt.encoder_window`), but Whisper was trained on 30 s windows only. With real weights
(whisper tiny.en, espeak-ng speech through a simulated phone line) windows of 6-15 s transcribed as
well as 30 s, while 4 s, or a window fitted tightly to a short utterance, made the decoder repeat
itself until the token cap. :meth:`~pipeline.speech.stt.FasterWhisperSTT.transcribe` therefore checks each
decode with :func:`~pipeline.speech.stt.degenerate` and, when it looped, decodes again on 30 s.

This command lets anyone with real model files check that on their own model and, with
``--audio DIR``, their own recordings. Each clip is decoded on each window (30 s always among them,
as the reference) with the decoding the bot uses, and reported:

- the error rate against the reference text: word error rate for English (lowercased, punctuation
  dropped, number words as digits, every digit one word), character error rate for Japanese (NFKC,
  no spaces or punctuation). Whisper writes 十九時 or 19時 where a reference says じゅうくじ, so the
  Japanese rate overstates errors; compare windows with each other, not with zero;
- agreement: whether the text, so normalised, is the same as the 30 s window's;
- loops: whether ``degenerate()`` says the decode repeated itself;
- the time the decode took;
- the error rate after retry: what ``transcribe()`` would return, the 30 s text wherever the
  window looped (and its time: both decodes).

Without ``--audio`` the clips are synthetic: reservation-call lines spoken by espeak-ng in two or
three voices and speeds, through a simulated phone line (8 kHz mu-law), with the silence the bot's
turn detector leaves around a turn. Random-weight models, such as the test models, transcribe
noise: their error rates mean nothing, only the command's plumbing and timings do.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
import wave
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pipeline.config import Config, load_config
from pipeline.sim.bench import LEAD_S, SCRIPT, SR, Line
from pipeline.sim.phone import phone_line
from pipeline.sim.score import edit_distance, units
from pipeline.sim.voices import espeak
from pipeline.speech.stt import WHISPER_SAMPLE_RATE, FasterWhisperSTT, degenerate, prepare_audio, token_cap

log = logging.getLogger(__name__)

#: silence after each synthetic line: what the turn detector leaves after the end of speech
TRAIL_S = 0.45
DEFAULT_WINDOWS = "30,10,8,6"
#: whisper's own window; 30 on the command line means "no shortening"
FULL_WINDOW_S = 30.0
#: (espeak-ng voice, words per minute) each synthetic line is spoken in
VOICES: dict[str, tuple[tuple[str, int], ...]] = {
    "en": (("en-us", 175), ("en", 150), ("en-us+f3", 160)),
    "ja": (("ja", 175), ("ja", 140)),
}
RANDOM_WEIGHTS_NOTE = ("random-weight models (such as the test models) transcribe noise: their error rates "
                       "are meaningless")

#: English reservation-call lines: the text is what whisper should write, ``spoken`` what espeak reads
EN_LINES = (
    Line("I'd like to book a table for four on Friday at 7 pm.", "I'd like to book a table for four on Friday at 7 pm."),
    Line("Do you have a table for two tomorrow evening?", "Do you have a table for two tomorrow evening?"),
    Line("December 24th, for eight people.", "December twenty fourth, for eight people."),
    Line("Can we come at 6:30 instead?", "Can we come at six thirty instead?"),
    Line("My name is Tanaka.", "My name is Tanaka."),
    Line("My phone number is 090 1234 5678.",
         "My phone number is zero nine zero, one two three four, five six seven eight."),
    Line("Yes, that's right.", "Yes, that's right."),
    Line("No, make it six people instead.", "No, make it six people instead."),
    Line("Sorry, I meant Saturday, not Friday.", "Sorry, I meant Saturday, not Friday."),
    Line("Do you have parking?", "Do you have parking?"),
    Line("Is there a vegetarian menu?", "Is there a vegetarian menu?"),
    Line("What time do you close on Sundays?", "What time do you close on Sundays?"),
    Line("It's a birthday, could you prepare a cake?", "It's a birthday, could you prepare a cake?"),
    Line("One of us has a nut allergy.", "One of us has a nut allergy."),
    Line("Can I bring a baby? We need a high chair.", "Can I bring a baby? We need a high chair."),
    Line("No, that's all. Thank you.", "No, that's all. Thank you."),
)

#: Japanese lines beyond the bench's booking script, in the same style (text, then kana for espeak)
JA_EXTRA_LINES = (
    Line("明日の夜7時に4名で予約したいです", "あしたの よる しちじに よんめいで よやくしたいです"),
    Line("土曜日の18時半は空いていますか", "どようびの じゅうはちじはんは あいていますか"),
    Line("3人です", "さんにんです"),
    Line("鈴木と申します", "すずきと もうします"),
    Line("電話番号は080-9876-5432です", "でんわばんごうは ゼロハチゼロ、キューハチナナロク、ゴーヨンサンニーです"),
    Line("いいえ、5名に変更してください", "いいえ、ごめいに へんこうしてください"),
    Line("すみません、金曜日ではなく土曜日です", "すみません、きんようびではなく どようびです"),
    Line("駐車場はありますか", "ちゅうしゃじょうは ありますか"),
    Line("子供用の椅子はありますか", "こどもようの いすは ありますか"),
    Line("アレルギーがあるのですが大丈夫ですか", "アレルギーが あるのですが だいじょうぶですか"),
    Line("何時まで営業していますか", "なんじまで えいぎょうしていますか"),
    Line("誕生日のお祝いで利用します", "たんじょうびの おいわいで りようします"),
    Line("はい、それでお願いします", "はい、それで おねがいします"),
)


def script_lines(language: str) -> tuple[Line, ...]:
    return EN_LINES if language == "en" else (*SCRIPT, *JA_EXTRA_LINES)


class CheckError(Exception):
    """A problem with the command's input: the message is printed as is, ``code`` is the exit code."""

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


# ============================================================================================ clips
@dataclass(frozen=True)
class Clip:
    name: str
    audio: np.ndarray  # float32 mono at 16 kHz, as prepare_audio gives it
    reference: str | None  # what was said; None: no reference (agreement and loops only)
    voice: str | None = None  # espeak-ng voice@speed of a synthetic clip

    @property
    def duration_s(self) -> float:
        return self.audio.size / WHISPER_SAMPLE_RATE


def read_wav(path: Path) -> tuple[int, np.ndarray]:
    """``(rate, int16 samples shaped (N, channels))`` of a 16-bit PCM wav."""
    try:
        with wave.open(str(path), "rb") as w:
            if w.getsampwidth() != 2:
                raise CheckError(f"{path}: {8 * w.getsampwidth()}-bit samples; stt-check reads 16-bit PCM wav")
            rate, channels = w.getframerate(), w.getnchannels()
            data = w.readframes(w.getnframes())
    except (wave.Error, EOFError, OSError) as e:
        raise CheckError(f"{path}: not a readable 16-bit PCM wav ({e})") from None
    pcm = np.frombuffer(data[: len(data) // (2 * channels) * 2 * channels], dtype="<i2")
    return rate, pcm.reshape(-1, channels)


def recording_clips(folder: Path, language: str, limit: int | None = None) -> list[Clip]:
    """Every ``*.wav`` in ``folder`` (sorted), each with the text of its sibling ``.txt`` when there is one."""
    if not folder.is_dir():
        raise CheckError(f"--audio {folder}: no such folder", code=2)
    wavs = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".wav" and p.is_file())
    if not wavs:
        raise CheckError(f"--audio {folder}: no .wav files in it (each NAME.wav with its text in NAME.txt)", code=2)
    clips = []
    for path in wavs[:limit]:
        rate, pcm = read_wav(path)
        try:
            x = prepare_audio(pcm[:, 0] if pcm.shape[1] == 1 else pcm, rate)
        except ValueError as e:
            raise CheckError(f"{path}: {e}") from None
        reference = None
        txt = path.with_suffix(".txt")
        if txt.is_file():
            try:
                reference = txt.read_text(encoding="utf-8").strip() or None
            except (OSError, UnicodeDecodeError) as e:
                raise CheckError(f"{txt}: cannot read the reference text as UTF-8 ({e})") from None
            if reference is not None and not units(reference, language):
                log.warning("%s: the reference has nothing to score once normalised; using no reference", txt)
                reference = None
        else:
            log.info("%s: no %s beside it, so no error rate for this clip", path, txt.name)
        clips.append(Clip(path.name, x, reference))
    return clips


def speak(text: str, voice: str, speed: int) -> tuple[int, np.ndarray]:
    """espeak-ng's ``(rate, int16 mono)`` for ``text``, or a CheckError saying what to do instead."""
    try:
        return espeak(text, voice, speed)
    except RuntimeError as e:
        raise CheckError(f"{e}. Or pass --audio DIR with your own recordings") from None


def synthetic_clips(language: str, limit: int | None = None) -> list[Clip]:
    """The first ``limit`` lines for ``language``, each in every voice of :data:`VOICES`, through a
    phone line, with :data:`~pipeline.sim.bench.LEAD_S` of silence before and :data:`TRAIL_S` after."""
    lines = script_lines(language)[:limit]
    jobs = [(i, line, voice, speed) for voice, speed in VOICES[language] for i, line in enumerate(lines, 1)]

    def one(job: tuple[int, Line, str, int]) -> Clip:
        i, line, voice, speed = job
        speech = phone_line(*speak(line.spoken, voice, speed))
        audio = np.concatenate([np.zeros(int(LEAD_S * SR), np.int16), speech, np.zeros(int(TRAIL_S * SR), np.int16)])
        return Clip(f"{language}{i:02d} {voice}@{speed}", prepare_audio(audio, SR), line.text, f"{voice}@{speed}")

    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(one, jobs))


# ============================================================================================ the check
class Decoder(Protocol):
    def decode(self, x: np.ndarray, *, window_s: float | None, max_new_tokens: int | None = None) -> tuple[list, str]:
        ...


def parse_windows(spec: str) -> list[float | None]:
    """``"30,10,8,6"`` -> ``[None, 10.0, 8.0, 6.0]``: 30 s (None, whisper's own) first, always, then the
    rest in the order given, each once."""
    out: list[float | None] = [None]
    for part in spec.split(","):
        if not part.strip():
            continue
        try:
            seconds = float(part)
        except ValueError:
            seconds = math.nan
        if not 1 <= seconds <= FULL_WINDOW_S:  # NaN fails too
            raise CheckError(f"--windows expects seconds from 1 to 30 separated by commas, e.g. {DEFAULT_WINDOWS}; "
                             f"got {part.strip()!r} in {spec!r}", code=2)
        window = None if seconds == FULL_WINDOW_S else seconds
        if window not in out:
            out.append(window)
    if not spec.strip(", "):
        raise CheckError(f"--windows expects seconds from 1 to 30 separated by commas, e.g. {DEFAULT_WINDOWS}", code=2)
    return out


def _rate(edits: int, total: int) -> float | None:
    return round(edits / total, 4) if total else None


def run_check(stt: Decoder, clips: list[Clip], windows: list[float | None], language: str) -> dict[str, Any]:
    """Decode every clip on every window; ``{"windows": [per-window summary], "rows": [per clip and window]}``.

    ``windows[0]`` must be ``None``: the 30 s reference the others are compared with."""
    if not windows or windows[0] is not None:
        raise ValueError("the first window must be None (whisper's 30 s, the reference)")
    rows: list[dict[str, Any]] = []
    per_clip: list[dict[float | None, dict[str, Any]]] = []
    for n, clip in enumerate(clips, 1):
        log.info("clip %d/%d: %s (%.1f s)", n, len(clips), clip.name, clip.duration_s)
        cap = token_cap(clip.duration_s)
        ref = units(clip.reference, language) if clip.reference else None
        results: dict[float | None, dict[str, Any]] = {}
        for window in windows:
            start = time.perf_counter()
            segments, decoded_language = stt.decode(clip.audio, window_s=window, max_new_tokens=cap)
            ms = (time.perf_counter() - start) * 1000
            text = "".join(s.text for s in segments).strip()
            hyp = units(text, language)
            edits = edit_distance(ref, hyp) if ref is not None else None
            full = results.get(None)
            row = {
                "clip": clip.name, "voice": clip.voice, "duration_s": round(clip.duration_s, 2),
                "reference": clip.reference, "window_s": window, "text": text, "language": decoded_language,
                "ref_units": len(ref) if ref is not None else None, "edits": edits,
                "error_rate": _rate(edits, len(ref)) if ref is not None and edits is not None else None,
                "agree": True if full is None else hyp == full["units"],
                "loop": degenerate(segments, cap), "tokens": sum(len(s.tokens) for s in segments),
                "ms": round(ms, 1),
            }
            rows.append(row)
            results[window] = {**row, "units": hyp}
        per_clip.append(results)

    summaries = []
    for window in windows:
        edits = total = edits_retry = better = worse = agree = loops = 0
        ms: list[float] = []
        ms_retry: list[float] = []
        for results in per_clip:
            r, full = results[window], results[None]
            retried = window is not None and r["loop"]
            after = full if retried else r
            agree += r["agree"]
            loops += r["loop"]
            ms.append(r["ms"])
            ms_retry.append(r["ms"] + (full["ms"] if retried else 0.0))
            if r["edits"] is not None:
                edits += r["edits"]
                edits_retry += after["edits"]
                total += r["ref_units"]
                better += r["edits"] < full["edits"]
                worse += r["edits"] > full["edits"]
        scored = sum(res[None]["edits"] is not None for res in per_clip)
        summaries.append({
            "window_s": window, "clips": len(per_clip), "scored": scored,
            "error_rate": _rate(edits, total),
            "better": better if scored else None, "worse": worse if scored else None,
            "agree": round(agree / len(per_clip), 4) if per_clip else None, "loops": loops,
            "ms": round(float(np.mean(ms)), 1) if ms else None,
            "error_rate_after_retry": _rate(edits_retry, total),
            "ms_after_retry": round(float(np.mean(ms_retry)), 1) if ms_retry else None,
        })
    return {"windows": summaries, "rows": rows}


# ============================================================================================ output
def format_table(result: dict[str, Any]) -> str:
    unit = "WER" if result["language"] == "en" else "CER"

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{v * 100:.1f}%"

    def num(v: Any) -> str:
        return "-" if v is None else str(v)

    header = (f"{'window':14} {unit:>7} {'better':>6} {'worse':>6} {'agree':>6} {'loops':>5} {'ms':>7}"
              f" {unit + ' after retry':>15} {'ms after retry':>14}")
    lines = [
        f"stt-check: {result['model']}, language {result['language']}, {result['clips']} clips: "
        + ("synthetic (espeak-ng voices " + ", ".join(result["voices"]) + ", through a simulated phone line, "
           "8 kHz mu-law)" if result["source"] == "espeak" else f"your recordings in {result['audio']}"),
        "decoding as the bot does: beam {beam_size}, {compute_type} on {device}, hotwords: {hot}".format(
            **result["settings"], hot=" ".join(result["settings"]["hotwords"]) or "none"),
        header,
        "-" * len(header),
    ]
    for w in result["windows"]:
        label = "30 s (ref)" if w["window_s"] is None else f"{w['window_s']:g} s"
        ref = w["window_s"] is None
        lines.append(
            f"{label:14} {pct(w['error_rate']):>7} {'-' if ref else num(w['better']):>6} "
            f"{'-' if ref else num(w['worse']):>6} {pct(w['agree']):>6} {w['loops']:>5} {num(w['ms']):>7} "
            f"{'-' if ref else pct(w['error_rate_after_retry']):>15} {'-' if ref else num(w['ms_after_retry']):>14}")
    lines.append("")
    lines.extend(f"note: {note}" for note in result["notes"])
    return "\n".join(lines)


def _notes(language: str, source: str, scored: int, clips: int) -> list[str]:
    if language == "en":
        unit = (f"WER: word error rate over the {scored} of {clips} clips with a reference (lowercase, no "
                "punctuation, numbers as digits, one word per digit)")
    else:
        unit = (f"CER: character error rate over the {scored} of {clips} clips with a reference (NFKC, no spaces "
                "or punctuation); whisper writing kanji, kana or digits other than the reference's counts as "
                "errors, so compare the windows with each other, and read agree")
    notes = [
        unit,
        "better/worse: clips with fewer/more errors than on 30 s; agree: share of clips whose text (normalised) "
        "is the 30 s text; loops: decodes degenerate() flags (repeats, or the token cap reached)",
        "after retry: what transcribe() returns with stt.window_s set to that window: the 30 s decode wherever "
        "the window looped, and the time of both decodes",
        "a window shorter than a clip encodes the whole clip (encoder_window never cuts audio)",
        RANDOM_WEIGHTS_NOTE,
    ]
    if source == "espeak":
        notes.append(f"synthetic clips: {LEAD_S:g} s of silence, the line, {TRAIL_S:g} s of silence (a turn as the "
                     "turn detector cuts it); espeak-ng is far from a caller's voice: try --audio with recordings")
    return notes


# ============================================================================================ CLI
def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``voicebot stt-check``."""
    p = subparsers.add_parser(
        "stt-check", help="does a shorter whisper encoder window (stt.window_s) transcribe as well as 30 s?",
        description="Decodes clips (synthetic espeak-ng phone calls, or your recordings) on whisper's 30 s window "
                    "and on shorter ones, and reports per window the error rate, agreement with 30 s, decoder "
                    "loops, time, and the error rate after the 30 s retry transcribe() does on a loop.")
    p.add_argument("--config", help="path to config.yaml")
    p.add_argument("--model", type=Path, default=None,
                   help="a faster-whisper (CTranslate2) model directory (default: the configured stt.model)")
    p.add_argument("--language", choices=["ja", "en"], default=None,
                   help="default: stt.language (ja when it is auto)")
    p.add_argument("--windows", default=DEFAULT_WINDOWS,
                   help=f"encoder windows in seconds, 1 to 30, comma-separated (default {DEFAULT_WINDOWS}); "
                        "30 is whisper's own window, the reference, always included")
    p.add_argument("--audio", type=Path, default=None, metavar="DIR",
                   help="your recordings: every NAME.wav (16-bit PCM, any rate, mono or stereo) in DIR, its "
                        "reference text in NAME.txt (optional); default: synthetic espeak-ng clips")
    p.add_argument("--limit", type=int, default=None, metavar="N",
                   help="only the first N lines (synthetic, in each voice) or recordings")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.set_defaults(func=cmd_stt_check)
    return p


def model_dir(cfg: Config, model: Path | None) -> Path:
    """The model directory to check; :class:`CheckError` (exit 1) when it holds no model."""
    from pipeline.speech.models import whisper_dir

    path = model if model is not None else whisper_dir(cfg)
    if not (path / "model.bin").is_file():
        if model is not None:
            raise CheckError(f"no faster-whisper model in {path} (model.bin missing): pass --model a CTranslate2 "
                             "whisper directory, or leave it out and run `voicebot models download` for stt.model")
        raise CheckError(f"no faster-whisper model in {path} (model.bin missing) for stt.model "
                         f"{cfg.stt.model!r}: run `voicebot models download`, or pass --model DIR")
    return path


def cmd_stt_check(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(args.config)
    try:
        return _stt_check(cfg, args)
    except CheckError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.code


def _stt_check(cfg: Config, args: argparse.Namespace) -> int:
    windows = parse_windows(args.windows)
    if args.limit is not None and args.limit < 1:
        raise CheckError("--limit must be at least 1", code=2)
    language = args.language or ("ja" if cfg.stt.language == "auto" else cfg.stt.language)
    path = model_dir(cfg, args.model)
    if args.audio is not None:
        clips, source = recording_clips(args.audio, language, args.limit), "recordings"
    else:
        clips, source = synthetic_clips(language, args.limit), "espeak"
    stt = FasterWhisperSTT(cfg.stt.model_copy(update={"language": language, "window_s": None}), path)
    stt.warmup()  # the first decode's lazy initialisation would count against the first window
    print(f"stt-check: {len(clips)} clips x {len(windows)} windows on {path} ...", file=sys.stderr)
    start = time.perf_counter()
    checked = run_check(stt, clips, windows, language)
    scored = sum(c.reference is not None for c in clips)
    result = {
        "model": str(path), "language": language, "clips": len(clips), "source": source,
        "audio": str(args.audio) if args.audio is not None else None,
        "voices": [f"{v}@{s}" for v, s in VOICES[language]] if source == "espeak" else None,
        "unit": "word" if language == "en" else "character",
        "settings": {"beam_size": cfg.stt.beam_size, "compute_type": cfg.stt.compute_type, "device": cfg.stt.device,
                     "cpu_threads": cfg.stt.cpu_threads, "hotwords": list(cfg.stt.hotwords)},
        "elapsed_s": round(time.perf_counter() - start, 1),
        "notes": _notes(language, source, scored, len(clips)),
        **checked,
    }
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print(format_table(result))
    return 0
