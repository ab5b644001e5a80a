"""KokoroTTS through the real kokoro-onnx + misaki code on the fake model; speech text; sentences."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import TTSConfig
from pipeline.speech.tts import (
    CACHE_MAX_CHARS,
    TTS,
    KokoroTTS,
    SentenceSplitter,
    make_tts,
    normalize_for_speech,
    split_sentences,
)


@pytest.fixture(scope="module")
def tts(test_config) -> KokoroTTS:
    engine = make_tts(test_config.tts, test_config.path)
    engine.warmup()
    return engine


# ------------------------------------------------------------------------------------ synthesis
@pytest.mark.parametrize(
    "lang,text",
    [("ja", "ご予約ありがとうございます。12月24日の19時半、3名様ですね。"),
     ("en", "Thank you for calling. Your table for three is at 7:30 pm on December 24th.")],
)
def test_synthesizes_audible_float32_in_both_languages(tts, lang, text):
    audio = tts.synthesize(text, lang)
    assert isinstance(tts, TTS) and tts.sample_rate == 24000
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert audio.size > 0.5 * tts.sample_rate and np.abs(audio).max() > 0.1


def test_stream_yields_one_chunk_per_sentence(tts):
    chunks = list(tts.stream("はい。承知しました！ご予約は19:30ですね？", "ja"))
    assert len(chunks) == 3
    assert all(rate == 24000 and audio.dtype == np.float32 and audio.size for rate, audio in chunks)
    en = list(tts.stream("Hello. Mr. Tanaka, your table is ready! See you at 7 p.m. tomorrow.", "en"))
    assert len(en) == 3


def test_japanese_goes_through_misaki_phonemes(tts):
    # The fake model's output length is proportional to the phoneme count: a longer reading is longer audio.
    short = tts.synthesize("はい。", "ja")
    long = tts.synthesize("はい、かしこまりました。", "ja")
    assert long.size > short.size > 0
    phonemes = tts.phonemes("12月24日の19時30分", "ja")
    assert "ʥɨːɲi" in phonemes and "joʔka" in phonemes  # 24日 read as ニジューヨッカ, not "nijuuyon ka"
    assert not any(c.isdigit() for c in phonemes)
    name = tts.phonemes("AI-SHIFTです", "ja")  # the configured reading, not spelled out letter by letter
    assert "ɕiɸɯto" in name and not any(c.isascii() and c.isupper() for c in name)


@pytest.mark.parametrize("text", ["", "   ", "！？", "...", "🙂👍", "**", "https://example.com"])
@pytest.mark.parametrize("lang", ["ja", "en"])
def test_nothing_to_say_gives_empty_audio_not_an_error(tts, text, lang):
    assert tts.synthesize(text, lang).size == 0
    assert list(tts.stream(text, lang)) == []


def test_unknown_language_and_voice_are_clear_errors(tts, test_config):
    with pytest.raises(ValueError, match="unsupported speech language"):
        tts.synthesize("hola", "es")
    cfg = TTSConfig(**{**test_config.tts.model_dump(), "voice": {"ja": "jf_nobody", "en": "af_heart"}})
    with pytest.raises(ValueError, match="jf_nobody"):
        make_tts(cfg, test_config.path)
    with pytest.raises(FileNotFoundError, match="voicebot models download"):
        KokoroTTS(test_config.tts, test_config.path("missing.onnx"), test_config.path(test_config.tts.voices))


def test_speed_changes_duration(test_config):
    slow = KokoroTTS(TTSConfig(**{**test_config.tts.model_dump(), "speed": 0.5}),
                     test_config.path(test_config.tts.model), test_config.path(test_config.tts.voices))
    fast = KokoroTTS(TTSConfig(**{**test_config.tts.model_dump(), "speed": 2.0}),
                     test_config.path(test_config.tts.model), test_config.path(test_config.tts.voices))
    assert slow.synthesize("Good evening.", "en").size > 2 * fast.synthesize("Good evening.", "en").size


# ------------------------------------------------------------------------------------ speech text
@pytest.mark.parametrize(
    "text,lang,expected",
    [
        ("電話番号は090-1234-5678です。", "ja", "電話番号はゼロ キュウ ゼロ の イチ ニー サン ヨン の ゴー ロク ナナ ハチです。"),
        ("09012345678", "ja", "ゼロ キュウ ゼロ の イチ ニー サン ヨン の ゴー ロク ナナ ハチ"),
        ("０３−１２３４−５６７８", "ja", "ゼロ サン の イチ ニー サン ヨン の ゴー ロク ナナ ハチ"),
        ("03-1234-5678 2名", "ja", "ゼロ サン の イチ ニー サン ヨン の ゴー ロク ナナ ハチ 2名"),
        ("Call 090-1234-5678.", "en", "Call zero nine zero, one two three four, five six seven eight."),
        ("+81 90 1234 5678", "en", "zero nine zero, one two three four, five six seven eight"),
        ("0312345678", "en", "zero three, one two three four, five six seven eight"),
        ("0120-123-456", "en", "zero one two zero, one two three, four five six"),
        ("19:30に3名様で", "ja", "午後7時半に3名様で"),
        ("19時30分", "ja", "19時半"),
        ("11:00", "ja", "午前11時"),
        ("at 19:30", "en", "at 7:30 pm"),
        ("at 12:00 or 00:15", "en", "at noon or 12:15 am"),
        ("at 7:30 p.m.", "en", "at 7:30 pm."),
        ("2026-12-24の19:00", "ja", "12月24日の午後7時"),
        ("On 2026-12-24.", "en", "On December 24th."),
        ("2026-12-22, 2026-12-23, 2026-12-11", "en", "December 22nd, December 23rd, December 11th"),
        ("3名", "ja", "3名"),
        ("11時〜22時", "ja", "11時から22時"),
        ("It is 3.5 km, 1,500 yen, 12345 steps.", "en", "It is 3.5 km, 1,500 yen, 12345 steps."),
        ("**Great!** See [the menu](https://x.jp/m) at https://example.com 🙂👍🏽", "en", "Great! See the menu at"),
        ("# ご案内\n- 3名様\n- `19時`", "ja", "ご案内\n3名様\n19時"),
        ("", "ja", ""),
        ("  \n ", "en", ""),
    ],
)
def test_normalize_for_speech(text, lang, expected):
    assert normalize_for_speech(text, lang) == expected


def test_normalize_leaves_numbers_that_are_not_phone_numbers():
    assert normalize_for_speech("予約番号は12345678です", "ja") == "予約番号は12345678です"
    assert normalize_for_speech("1234567890", "en") == "1234567890"  # 10 digits, but no leading 0


# ------------------------------------------------------------------------------------ sentences
@pytest.mark.parametrize(
    "text,expected",
    [
        ("はい。承知しました！ご予約は「19時」ですね？", ["はい。", "承知しました！", "ご予約は「19時」ですね？"]),
        ("「ありがとう。」", ["「ありがとう。」"]),
        ("Hello Mr. Tanaka. It costs 3.5 dollars. OK?! Yes.",
         ["Hello Mr. Tanaka.", "It costs 3.5 dollars.", "OK?!", "Yes."]),
        ("See you at 7 p.m. tomorrow. Bye.", ["See you at 7 p.m. tomorrow.", "Bye."]),
        ("See you at 7 p.m. Thank you.", ["See you at 7 p.m.", "Thank you."]),
        ("Visit example.com today", ["Visit example.com today"]),
        ("first line\nsecond line", ["first line", "second line"]),
        ("", []),
    ],
)
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


def test_splitter_emits_each_sentence_as_soon_as_it_is_complete():
    splitter = SentenceSplitter()
    assert splitter.feed("はい、") == []
    assert splitter.feed("承知しました。") == []  # a closing 」 could still follow
    assert splitter.feed("ご予約") == ["はい、承知しました。"]
    assert splitter.feed("は3") == []
    assert splitter.feed(".5時間ですか？ Sure. Mr") == ["ご予約は3.5時間ですか？", "Sure."]
    assert splitter.feed(". Tanaka") == []  # "Mr." is not an end
    assert splitter.flush() == "Mr. Tanaka"
    assert splitter.flush() == ""


def test_splitter_fed_one_character_at_a_time_matches_the_whole_text():
    text = "Hello Mr. Tanaka. Your table is at 7 p.m. tomorrow. はい。わかりました！ OK? 3.5 km."
    splitter, out = SentenceSplitter(), []
    for ch in text:
        out += splitter.feed(ch)
    out.append(splitter.flush())
    assert out == split_sentences(text)
    assert out == ["Hello Mr. Tanaka.", "Your table is at 7 p.m. tomorrow.", "はい。", "わかりました！", "OK?", "3.5 km."]


@pytest.mark.parametrize("text, pieces", [
    ("12月24日、木曜日の午後7時、2名様ですね。ご予約のお名前をお伺いできますか。",
     ["12月24日、", "木曜日の午後7時、2名様ですね。", "ご予約のお名前をお伺いできますか。"]),
    ("はい、19時に3名様ですね。", ["はい、19時に3名様ですね。"]),  # 「はい、」 is too short to go alone
    ("田中様ですね。ご連絡先をお願いします。", ["田中様ですね。", "ご連絡先をお願いします。"]),  # no comma first
    ("Thursday, December 24th at 7 pm, got it. Your name?", ["Thursday,", "December 24th at 7 pm, got it.",
                                                           "Your name?"]),
    ("That is 12,000 yen, please.", ["That is 12,000 yen,", "please."]),  # a comma inside a number stays
])
def test_the_first_piece_of_a_reply_ends_at_its_first_long_enough_clause(text, pieces):
    splitter, out = SentenceSplitter(first_clause_chars=6), []
    for ch in text:  # as an LLM streams it
        out += splitter.feed(ch)
    rest = splitter.flush()
    assert [*out, *([rest] if rest else [])] == pieces
    whole = SentenceSplitter(first_clause_chars=6)
    rest = whole.flush() if not (got := whole.feed(text)) else whole.flush()
    assert [*got, *([rest] if rest else [])] == pieces  # and when the text comes at once


def test_the_first_clause_goes_out_as_soon_as_its_comma_arrives():
    splitter = SentenceSplitter(first_clause_chars=6)
    assert splitter.feed("12月24日") == []
    assert splitter.feed("、木曜") == ["12月24日、"]
    assert splitter.feed("日の午後7時、2名様ですね。ご") == ["木曜日の午後7時、2名様ですね。"]  # later: sentences


def test_a_long_run_without_a_stop_is_cut_at_a_comma():
    text = "、".join(["とても長い文章が続きます"] * 30)
    pieces = split_sentences(text, max_chars=60)
    assert len(pieces) > 1 and all(len(p) <= 60 for p in pieces)
    assert "".join(pieces) == text


def _piece(tts: KokoroTTS, text: str, lang: str = "ja") -> np.ndarray:
    (_, audio), = tts.stream(text, lang)
    return audio


def test_a_short_piece_said_before_is_replayed_from_the_cache(test_config):
    tts = make_tts(test_config.tts.model_copy(update={"cache_size": 2}), test_config.path)
    first = tts.synthesize("かしこまりました。", "ja")
    again = tts.synthesize("かしこまりました。", "ja")
    assert np.array_equal(first, again) and first.size
    assert tts.stats.synthesized == 1 and tts.stats.cache_hits == 1
    cached = _piece(tts, "かしこまりました。")
    assert cached is _piece(tts, "かしこまりました。") and not cached.flags.writeable  # shared, read-only
    tts.synthesize("ありがとうございます。", "ja")
    tts.synthesize("田中様ですね。", "ja")
    before = tts.stats.synthesized
    tts.synthesize("かしこまりました。", "ja")  # the least recently used of three went
    assert tts.stats.synthesized == before + 1
    long = "本日はお電話をいただきまして誠にありがとうございますご予約の内容を確認いたします。"
    assert len(long) > CACHE_MAX_CHARS  # one-off read-backs are not kept
    tts.synthesize(long, "ja")
    tts.synthesize(long, "ja")
    assert tts.stats.synthesized == before + 3
    off = make_tts(test_config.tts.model_copy(update={"cache_size": 0}), test_config.path)
    off.synthesize("かしこまりました。", "ja")
    off.synthesize("かしこまりました。", "ja")
    assert off.stats.synthesized == 2 and off.stats.cache_hits == 0


# ------------------------------------------------------------------------------------ pre-rendering
@pytest.fixture
def own_model(tmp_path, test_config):
    """A fake kokoro of this test's own, so that its disk cache (next to the model) is this test's too."""
    from pipeline.sim.testmodels import build_fake_kokoro, build_voices

    build_fake_kokoro(tmp_path / "kokoro.onnx")
    build_voices(tmp_path / "voices.bin")

    def make() -> KokoroTTS:
        return KokoroTTS(test_config.tts, tmp_path / "kokoro.onnx", tmp_path / "voices.bin")

    return make


def test_prerendered_pieces_are_kept_on_disk_for_the_next_start(own_model, tmp_path):
    first = own_model()
    with first.prerendering():
        rendered = first.synthesize("かしこまりました。", "ja")
    assert first.stats.synthesized == 1 and first.stats.disk_writes == 1
    assert len(list((tmp_path / "tts-cache").rglob("*.npy"))) == 1
    restarted = own_model()
    with restarted.prerendering():
        again = restarted.synthesize("かしこまりました。", "ja")
    assert np.array_equal(again, rendered)
    assert restarted.stats.disk_hits == 1 and restarted.stats.synthesized == 0
    restarted.synthesize("かしこまりました。", "ja")  # a call finds it in memory now
    assert restarted.stats.cache_hits == 1 and restarted.stats.synthesized == 0


def test_a_thread_named_tts_prerender_is_prerendering(own_model):
    import threading

    tts = own_model()
    worker = threading.Thread(target=tts.synthesize, args=("かしこまりました。", "ja"), name="tts-prerender")
    worker.start()
    worker.join()
    assert tts.stats.disk_writes == 1


def test_what_calls_say_is_never_written_to_disk(own_model, tmp_path):
    tts = own_model()
    tts.synthesize("田中様ですね。", "ja")  # live: a caller's name
    assert tts.stats.synthesized == 1 and tts.stats.disk_writes == 0
    assert not list(tmp_path.glob("tts-cache/**/*.npy"))
    with tts.prerendering():  # nor a long one-off piece while pre-rendering
        tts.synthesize("本日はお電話をいただきまして誠にありがとうございますご予約の内容を確認いたします。", "ja")
    assert tts.stats.disk_writes == 0


def test_a_changed_model_file_starts_a_fresh_disk_cache(own_model, tmp_path):
    import os

    tts = own_model()
    with tts.prerendering():
        tts.synthesize("かしこまりました。", "ja")
    old = {p.name for p in (tmp_path / "tts-cache").iterdir()}
    os.utime(tmp_path / "kokoro.onnx", ns=(1, 1))  # a new download of the model
    changed = own_model()
    with changed.prerendering():
        changed.synthesize("かしこまりました。", "ja")
    assert changed.stats.disk_hits == 0 and changed.stats.synthesized == 1
    new = {p.name for p in (tmp_path / "tts-cache").iterdir()}
    assert len(new) == 1 and not new & old  # the earlier renders are gone


def test_a_damaged_disk_cache_entry_is_rendered_again(own_model, tmp_path, caplog):
    import logging

    tts = own_model()
    with tts.prerendering():
        tts.synthesize("かしこまりました。", "ja")
    (entry,) = (tmp_path / "tts-cache").rglob("*.npy")
    np.save(entry, np.full(100, 7.0, np.float32))  # not audio
    again = own_model()
    with caplog.at_level(logging.WARNING, logger="pipeline.speech.tts"), again.prerendering():
        audio = again.synthesize("かしこまりました。", "ja")
    assert audio.size and np.abs(audio).max() <= 1.0
    assert again.stats.disk_hits == 0 and again.stats.synthesized == 1
    assert any("is not audio" in r.getMessage() for r in caplog.records)


def test_an_unwritable_disk_cache_is_logged_once_and_synthesis_goes_on(own_model, tmp_path, caplog):
    import logging

    (tmp_path / "tts-cache").write_text("a file where the folder should be")
    tts = own_model()
    with caplog.at_level(logging.WARNING, logger="pipeline.speech.tts"), tts.prerendering():
        assert tts.synthesize("かしこまりました。", "ja").size
        assert tts.synthesize("ありがとうございます。", "ja").size
    assert tts.stats.disk_writes == 0 and tts.stats.synthesized == 2
    assert sum("TTS disk cache off" in r.getMessage() for r in caplog.records) == 1
