"""The configuration tree: one pydantic model per section of ``config.yaml``.

``load_config(path)`` reads the YAML file, applies ``VOICEBOT__SECTION__KEY`` overrides from the
environment, validates everything at once and raises :class:`ConfigError` whose message names the
bad key and what it expects.  Relative paths (model files, the SQLite database) are resolved against
the directory of the config file, so a config written next to its models works from any cwd.
"""

from __future__ import annotations

import datetime as dt
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

PROJECT_ROOT = Path(__file__).resolve().parent.parent
ENV_PREFIX = "VOICEBOT__"


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message is meant for the user."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _parse_hhmm(value: Any) -> dt.time:
    if isinstance(value, dt.time):
        return value
    if isinstance(value, int):  # YAML 1.1 reads an unquoted 11:00 as sexagesimal 660
        return dt.time(value // 60, value % 60)
    if isinstance(value, str):
        try:
            hh, mm = value.strip().split(":")
            return dt.time(int(hh), int(mm))
        except ValueError:
            pass
    raise ValueError(f"expected a time as HH:MM, got {value!r}")


HHMM = Annotated[dt.time, Field(json_schema_extra={"format": "HH:MM"})]


_DIAL_SEPARATORS = re.compile(r"[\s\-\u2010-\u2015\u30fc().]")


def e164(value: Any) -> str:
    """A phone number as Twilio dials it (+ and digits): ``+81312345678`` as it is, a Japanese
    ``03-1234-5678`` with its country code. Raises ValueError for anything else."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = f"+{value}"  # YAML reads an unquoted +81312345678 as a number
    if not isinstance(value, str):
        raise ValueError(f"expected a phone number such as +81312345678 or 03-1234-5678, got {value!r}")
    text = _DIAL_SEPARATORS.sub("", value)
    if re.fullmatch(r"\+[1-9]\d{7,14}", text):
        return text
    if re.fullmatch(r"0[1-9]\d{8,9}", text):
        return "+81" + text[1:]
    raise ValueError(f"expected a phone number such as +81312345678 or 03-1234-5678, got {value!r}")


class Hours(_Section):
    open: HHMM
    close: HHMM

    _v = field_validator("open", "close", mode="before")(lambda cls, v: _parse_hhmm(v))

    @model_validator(mode="after")
    def _order(self) -> Hours:
        if self.close <= self.open:
            raise ValueError("close must be after open")
        return self


class ClosedPeriod(_Section):
    """A yearly closure, inclusive, as MM-DD; it may wrap the new year (12-29 .. 01-03)."""

    start: str
    end: str
    reason: str = ""

    @field_validator("start", "end")
    @classmethod
    def _mmdd(cls, v: str) -> str:
        try:
            dt.date(2000, int(v[:2]), int(v[3:5]))
            assert len(v) == 5 and v[2] == "-"
        except (ValueError, AssertionError, TypeError):
            raise ValueError(f"expected MM-DD, got {v!r}") from None
        return v


class FAQEntry(_Section):
    id: str
    keywords: dict[str, list[str]] = Field(default_factory=dict, description="language -> words that select it")
    answer: dict[str, str] = Field(description="language -> answer text")


def _default_faq() -> list[FAQEntry]:
    return [
        FAQEntry(
            id="hours",
            keywords={"ja": ["営業時間", "何時から", "何時まで", "定休日", "休み", "開店", "閉店"],
                      "en": ["hours", "open", "close", "closing", "opening", "holiday"]},
            answer={"ja": "平日は11時から22時まで、土日祝日は10時から23時まで営業しております。12月29日から1月3日までは年末年始のためお休みです。",
                    "en": "We are open from 11 am to 10 pm on weekdays, and from 10 am to 11 pm on weekends and public holidays. We are closed for the New Year, from December 29th to January 3rd."},
        ),
        FAQEntry(
            id="access",
            keywords={"ja": ["場所", "アクセス", "住所", "駅", "行き方", "どこ"],
                      "en": ["where", "address", "station", "access", "located", "location", "get there"]},
            answer={"ja": "渋谷駅から徒歩5分、道玄坂の途中にございます。",
                    "en": "We are a five-minute walk from Shibuya Station, on Dogenzaka."},
        ),
        FAQEntry(
            id="parking",
            keywords={"ja": ["駐車場", "車", "パーキング"], "en": ["parking", "park", "car"]},
            answer={"ja": "専用の駐車場はございません。お近くのコインパーキングをご利用ください。",
                    "en": "We have no parking of our own; there are paid car parks nearby."},
        ),
        FAQEntry(
            id="payment",
            keywords={"ja": ["支払", "カード", "クレジット", "現金", "電子マネー", "paypay", "ペイペイ", "決済"],
                      "en": ["pay", "payment", "card", "credit", "cash"]},
            answer={"ja": "現金のほか、各種クレジットカードと電子マネーをご利用いただけます。",
                    "en": "We take cash, all major credit cards and electronic money."},
        ),
        FAQEntry(
            id="allergies",
            keywords={"ja": ["アレルギー", "食材", "ベジタリアン", "グルテン", "卵", "小麦", "そば"],
                      "en": ["allergy", "allergies", "allergic", "vegetarian", "vegan", "gluten"]},
            answer={"ja": "アレルギーのある食材は、ご予約の際にお知らせいただければ対応いたします。",
                    "en": "Tell us about any allergies when you book and the kitchen will adapt your dishes."},
        ),
        FAQEntry(
            id="cancellation",
            keywords={"ja": ["キャンセル", "取り消"], "en": ["cancel", "cancellation"]},
            answer={"ja": "キャンセルやご変更は、前日までにお電話でご連絡ください。当日のキャンセルはキャンセル料を頂く場合がございます。",
                    "en": "Please call us by the day before to cancel or change a booking; a same-day cancellation may be charged."},
        ),
        FAQEntry(
            id="private_room",
            keywords={"ja": ["個室", "半個室", "貸切", "貸し切り"],
                      "en": ["private room", "private dining", "private", "exclusive"]},
            answer={"ja": "個室はございませんが、4名様までの半個室をご用意できます。ご希望の際はご予約時にお申し付けください。",
                    "en": "We have no private rooms, but we have semi-private booths for up to four; just ask when you book."},
        ),
        FAQEntry(
            id="courses",
            keywords={"ja": ["コース", "料金", "値段", "いくら", "予算", "価格", "メニュー", "料理"],
                      "en": ["course", "courses", "price", "prices", "how much", "cost", "menu", "set menu", "tasting"]},
            answer={"ja": "コースはお一人様5,000円と8,000円の2種類で、アラカルトもございます。",
                    "en": "We have two set courses, at 5,000 and 8,000 yen per person, and an à la carte menu."},
        ),
        FAQEntry(
            id="children",
            keywords={"ja": ["子供", "子ども", "こども", "お子様", "キッズ", "赤ちゃん", "ベビーカー", "子連れ", "お子さん"],
                      "en": ["kids", "kid", "children", "child", "baby", "high chair", "stroller", "kids menu", "children's menu"]},
            answer={"ja": "お子様連れも歓迎です。お子様メニューとお子様用の椅子をご用意しております。",
                    "en": "Children are welcome: we have a children's menu and high chairs."},
        ),
        FAQEntry(
            id="corkage",
            keywords={"ja": ["持ち込み", "持込", "持ちこみ", "ワインを持って", "持参"],
                      "en": ["corkage", "bring our own", "bring my own", "byo", "own wine", "own bottle"]},
            answer={"ja": "お飲み物のお持ち込みは、1本につき2,000円の持ち込み料で承っております。",
                    "en": "You may bring your own wine for a corkage fee of 2,000 yen a bottle."},
        ),
        FAQEntry(
            id="dress_code",
            keywords={"ja": ["ドレスコード", "服装", "格好", "カジュアル"],
                      "en": ["dress code", "dress", "wear", "casual", "formal"]},
            answer={"ja": "ドレスコードは特にございません。普段着でお気軽にお越しください。",
                    "en": "There is no dress code: come as you are."},
        ),
        FAQEntry(
            id="smoking",
            keywords={"ja": ["喫煙", "禁煙", "たばこ", "タバコ", "煙草"],
                      "en": ["smoking", "smoke", "cigarette"]},
            answer={"ja": "店内は全席禁煙です。",
                    "en": "The whole restaurant is non-smoking."},
        ),
        FAQEntry(
            id="accessibility",
            keywords={"ja": ["車椅子", "車いす", "車イス", "バリアフリー", "段差", "エレベーター"],
                      "en": ["wheelchair", "accessible", "accessibility", "step-free", "elevator", "lift"]},
            answer={"ja": "店内はバリアフリーで、車椅子のままお席までお越しいただけます。",
                    "en": "The restaurant is step-free and wheelchair accessible."},
        ),
    ]


class RestaurantConfig(_Section):
    name: str = "AI-SHIFT"
    timezone: str = "Asia/Tokyo"
    weekday_hours: Hours = Hours(open=dt.time(11), close=dt.time(22))
    weekend_hours: Hours = Field(
        default=Hours(open=dt.time(10), close=dt.time(23)),
        description="Saturdays, Sundays and public holidays",
    )
    holidays_country: str | None = Field(default="JP", description="public-holiday calendar; null for none")
    closed_periods: list[ClosedPeriod] = Field(
        default_factory=lambda: [ClosedPeriod(start="12-29", end="01-03", reason="new_year")]
    )
    closed_weekdays: list[int] = Field(default_factory=list, description="0=Monday .. 6=Sunday")
    min_party_size: int = Field(default=1, ge=1)
    max_party_size: int = Field(default=4, ge=1)
    slot_minutes: int = Field(default=30, gt=0, le=240)
    last_booking_before_close_minutes: int = Field(default=60, ge=0)
    tables_per_slot: int = Field(default=3, ge=1)
    booking_horizon_days: int = Field(default=60, ge=1)
    min_lead_minutes: int = Field(default=30, ge=0, description="how soon before a slot one may still book it")
    phone: str = "03-1234-5678"
    transfer_number: str | None = Field(
        default=None,
        description="where a phone call is put through when the caller asks for a person (Twilio's REST API "
                    "needed); a Japanese number (03-1234-5678) or +E.164, dialled as +E.164; null = say `phone`",
    )
    faq: list[FAQEntry] = Field(default_factory=_default_faq)

    @field_validator("transfer_number", mode="before")
    @classmethod
    def _transfer(cls, v: Any) -> str | None:
        return None if v is None else e164(v)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {v!r} (expected an IANA name such as Asia/Tokyo)") from None
        return v

    @field_validator("closed_weekdays")
    @classmethod
    def _weekdays(cls, v: list[int]) -> list[int]:
        if any(d < 0 or d > 6 for d in v):
            raise ValueError("weekdays are 0 (Monday) to 6 (Sunday)")
        return v

    @model_validator(mode="after")
    def _sizes(self) -> RestaurantConfig:
        if self.max_party_size < self.min_party_size:
            raise ValueError("max_party_size must be at least min_party_size")
        return self


class StoreConfig(_Section):
    url: str = Field(default="sqlite:///data/reservations.db", description="SQLAlchemy URL")


class AgentConfig(_Section):
    kind: Literal["auto", "rules", "llm"] = "auto"
    language: Literal["ja", "en"] = "ja"
    max_failures: int = Field(default=3, ge=1, description="failed attempts at one slot before the bot stops asking")


class LLMConfig(_Section):
    base_url: str | None = Field(default=None, description="OpenAI-compatible endpoint; null = no LLM")
    model: str = "gpt-4o-mini"
    api_key_env: str = Field(default="OPENAI_API_KEY", description="environment variable holding the key")
    temperature: float = Field(default=0.2, ge=0, le=2)
    max_tool_steps: int = Field(default=6, ge=1)
    timeout_s: float = Field(default=10.0, gt=0, description="cap on one whole streamed request")
    first_token_timeout_s: float = Field(
        default=1.5, gt=0, description="longest wait for the first byte of an answer, and between streamed pieces")
    silence_budget_s: float = Field(
        default=2.0, gt=0,
        description="longest a caller waits on a failing model before the rules agent answers the turn")
    retries: int = Field(default=1, ge=0, description="retries of a failed request, within silence_budget_s")
    max_consecutive_faults: int = Field(
        default=2, ge=1, description="faulty turns in a row after which the rules agent finishes the call")
    max_tokens: int = Field(default=300, gt=0)

    def api_key(self) -> SecretStr:
        return SecretStr(os.environ.get(self.api_key_env, "not-needed"))


def _speech_server_url(value: str | None) -> str | None:
    """An OpenAI-compatible API root (``http://host:8000/v1``), without its trailing slash."""
    if value is None:
        return None
    value = value.strip().rstrip("/")
    if not re.fullmatch(r"https?://[^\s/]+(/\S*)?", value):
        raise ValueError(f"expected the server's API root, e.g. http://127.0.0.1:8000/v1, got {value!r}")
    return value


def _needs_url(section: str, provider: str, base_url: str | None) -> None:
    if provider == "openai" and not base_url:
        raise ValueError(f"{section}.provider openai needs {section}.base_url: the server's API root, "
                         "e.g. http://127.0.0.1:8000/v1")


class STTConfig(_Section):
    provider: Literal["faster-whisper", "openai"] = Field(
        default="faster-whisper",
        description="faster-whisper: in this process (`local` says the same); openai: an OpenAI-compatible "
                    "server's /v1/audio/transcriptions (speaches, vLLM, ...) at base_url",
    )
    model: str = Field(default="base", description="a size name (tiny, base, small, ...) or a local directory")
    device: Literal["cpu", "cuda", "auto"] = "cpu"
    compute_type: str = "int8"
    language: Literal["ja", "en", "auto"] = "ja"
    detect_languages: list[Literal["ja", "en"]] = Field(
        default_factory=lambda: ["ja", "en"],
        description="the languages a caller may open in: until 2 s of the caller's speech have been heard, each "
                    "turn is decoded in whichever of these whisper hears in it and the turns before it (and the "
                    "call switches to it); [] = always the call's language",
    )
    beam_size: int = Field(default=1, ge=1)
    hotwords: list[str] = Field(default_factory=lambda: ["AI-SHIFT", "予約"])
    cpu_threads: int = Field(default=0, ge=0, description="0 = library default")
    num_workers: int = Field(
        default=1, ge=1, le=16,
        description="faster-whisper workers: how many transcriptions (calls) run in parallel, each on cpu_threads",
    )
    window_s: float | None = Field(
        default=10.0, ge=6, le=30,
        description="encode this many seconds (or the utterance, if longer) instead of whisper's 30 s window; "
                    "null = 30 s. Below 6 s real whisper weights loop; a looping decode is redone on 30 s",
    )
    base_url: str | None = Field(
        default=None, description="provider openai: the server's API root, e.g. http://127.0.0.1:8000/v1")
    remote_model: str | None = Field(
        default=None,
        description="provider openai: the model the server is asked for; null = stt.model, a size name "
                    "as its faster-whisper repository (base -> Systran/faster-whisper-base)",
    )
    api_key_env: str = Field(
        default="SPEECH_API_KEY", description="provider openai: the environment variable holding the server's key")
    timeout_s: float = Field(
        default=5.0, gt=0, le=120,
        description="provider openai: longest wait for a transcription; longer is an STT failure (an apology)")
    remote_hotwords: bool = Field(
        default=False,
        description="provider openai: send the hotwords as a `hotwords` field (speaches takes it; the "
                    "OpenAI API does not)",
    )

    _local = field_validator("provider", mode="before")(
        lambda cls, v: "faster-whisper" if v == "local" else v)
    _url = field_validator("base_url", mode="before")(lambda cls, v: _speech_server_url(v))

    @model_validator(mode="after")
    def _remote(self) -> STTConfig:
        _needs_url("stt", self.provider, self.base_url)
        return self


class TTSConfig(_Section):
    provider: Literal["kokoro", "openai"] = Field(
        default="kokoro",
        description="kokoro: kokoro-onnx in this process (`local` says the same); openai: an OpenAI-compatible "
                    "server's /v1/audio/speech (Kokoro-FastAPI, speaches, ...) at base_url",
    )
    model: str = "models/kokoro-v1.0.onnx"
    voices: str = "models/voices-v1.0.bin"
    voice: dict[str, str] = Field(default_factory=lambda: {"ja": "jf_alpha", "en": "af_heart"})
    speed: float = Field(default=1.0, ge=0.5, le=2.0, description="kokoro accepts 0.5 to 2.0")
    cache_size: int = Field(
        default=256, ge=0, le=100_000,
        description="synthesised short sentences kept for reuse; the bot's fixed phrases are rendered into it at "
                    "start-up; 0 = off",
    )
    first_clause_chars: int = Field(
        default=6, ge=0, le=200,
        description="a reply's first piece ends at its first comma once it has this many characters, so "
                    "that the caller hears it sooner; 0 = whole sentences",
    )
    ack_after_s: float = Field(
        default=1.3, ge=0.0, le=10.0,
        description="a reply that has not begun this long after the caller stopped talking (a name weighed "
                    "against the common surnames, a slow LLM or a busy CPU) starts with a short "
                    "acknowledgement (「はい。」, \"Okay.\"), rendered at start-up; 0 = never",
    )
    readings: dict[str, dict[str, str]] = Field(
        default_factory=lambda: {"ja": {"AI-SHIFT": "エーアイシフト"}},
        description="language -> {written: spoken}: how to say names the G2P would spell out letter by letter",
    )
    base_url: str | None = Field(
        default=None, description="provider openai: the server's API root, e.g. http://127.0.0.1:8880/v1")
    remote_model: str = Field(default="kokoro", description="provider openai: the model the server is asked for")
    api_key_env: str = Field(
        default="SPEECH_API_KEY", description="provider openai: the environment variable holding the server's key")
    timeout_s: float = Field(
        default=10.0, gt=0, le=120,
        description="provider openai: longest wait for one piece's audio; longer is a TTS fault (the apology)")
    response_format: Literal["pcm", "wav"] = Field(
        default="pcm", description="provider openai: pcm (16-bit mono at remote_sample_rate) or wav")
    remote_sample_rate: int = Field(
        default=24000, ge=8000, le=48000,
        description="provider openai: the sample rate of the server's pcm (kokoro: 24000); wav says its own",
    )

    _local = field_validator("provider", mode="before")(lambda cls, v: "kokoro" if v == "local" else v)
    _url = field_validator("base_url", mode="before")(lambda cls, v: _speech_server_url(v))

    @model_validator(mode="after")
    def _remote(self) -> TTSConfig:
        _needs_url("tts", self.provider, self.base_url)
        return self


#: silero v5+ takes 512-sample windows at 16 kHz: every duration below is counted in these
VAD_WINDOW_MS = 32


class VADConfig(_Section):
    threshold: float = Field(default=0.5, gt=0, lt=1, description="silero speech probability that starts speech")
    hysteresis: float = Field(
        default=0.15, ge=0, lt=1, description="speech goes on until the probability drops below threshold - this",
    )
    min_speech_ms: int = Field(default=96, ge=VAD_WINDOW_MS, le=500,
                               description="voiced time an utterance needs to be a turn")
    onset_ms: int = Field(default=128, ge=VAD_WINDOW_MS, le=1000,
                          description="voiced time after which the caller is talking (barge-in)")
    end_silence_ms: int = Field(default=450, le=5000, description="trailing silence that ends a turn")
    end_silence_phone_ms: int = Field(default=1100, le=5000,
                                      description="the same while a phone number is asked for")
    end_silence_short_ms: int = Field(default=300, le=5000,
                                      description="the same after a yes/no question")
    speculative_pause_ms: int = Field(
        default=160, ge=0, description="trailing silence that starts transcribing early; 0 = never",
    )
    num_threads: int = Field(default=1, ge=1, le=16, description="onnxruntime threads of the shared silero model")
    turn_model: str | None = Field(
        default=None, description="end-of-turn model file (Smart Turn v3.2 ONNX), classified at each short pause; "
                                  "null = silence alone",
    )
    turn_threshold: float = Field(default=0.5, gt=0, lt=1,
                                  description="the model's probability at and above which the turn is complete")
    turn_complete_silence_ms: int = Field(default=200, le=5000,
                                          description="trailing silence that ends a turn the model calls complete")
    turn_incomplete_silence_ms: int = Field(default=1500, le=10000,
                                            description="trailing silence that ends a turn it calls incomplete")
    turn_incomplete_phone_silence_ms: int = Field(
        default=2000, le=10000, description="the same while a phone number is read out",
    )
    prepare_reply: bool = Field(
        default=True, description="once a short pause's early words leave nothing hanging, the rules agent answers "
                                  "them on a copy of the dialog state and the reply's first clause is synthesised "
                                  "ahead (used when the turn ends on those words)",
    )
    backchannels: bool = Field(default=True, description="a short burst while the bot speaks is judged "
                                                         "(backchannel or barge-in) instead of stopping it at once")
    backchannel_max_ms: int = Field(default=448, ge=VAD_WINDOW_MS, le=2000,
                                    description="a burst longer than this from its onset is a barge-in")
    backchannel_gap_ms: int = Field(default=96, ge=VAD_WINDOW_MS, le=1000,
                                    description="silence that ends a burst (its words then decide)")
    backchannel_words_ms: int = Field(
        default=160, ge=0, le=2000,
        description="a burst still going after this long is transcribed so far: a backchannel's first words "
                    "(そう.., なる..) let it run to backchannel_long_ms, other words stop the bot at once; 0 = never",
    )
    backchannel_long_ms: int = Field(default=800, ge=VAD_WINDOW_MS, le=3000,
                                     description="the length limit of a burst whose first words are a backchannel's "
                                                 "(そうですね, なるほど)")
    backchannel_loud_db: float | None = Field(
        default=10.0, ge=0, description="a burst this much louder than the caller's usual level is a barge-in; "
                                        "null = no energy rule",
    )
    # FastRTC's chunked pause detection: the handler no longer uses it (the naive cascade of
    # `voicebot bench` does, with FastRTC's defaults); kept so that ReplyOnPause is built as before.
    audio_chunk_duration: float = Field(default=0.6, gt=0, description="seconds between pause checks")
    started_talking_threshold: float = Field(default=0.2, gt=0)
    speech_threshold: float = Field(default=0.1, gt=0)
    min_silence_duration_ms: int = Field(default=500, ge=0)

    @model_validator(mode="after")
    def _not_deaf(self) -> VADConfig:
        if self.threshold - self.hysteresis <= 0:
            raise ValueError("hysteresis must be less than threshold (speech would never end)")
        # A turn that may end after less silence than the shortest speech it accepts ends inside
        # words (between morae), so callers are cut off and their fragments go unanswered.
        for name in ("end_silence_ms", "end_silence_phone_ms", "end_silence_short_ms"):
            value = getattr(self, name)
            if value < max(self.min_speech_ms, 4 * VAD_WINDOW_MS):
                raise ValueError(f"{name} ({value} ms) must be at least min_speech_ms ({self.min_speech_ms} ms) "
                                 f"and {4 * VAD_WINDOW_MS} ms, or turns end between syllables")
        if self.turn_complete_silence_ms < max(self.min_speech_ms, 4 * VAD_WINDOW_MS):
            raise ValueError(f"turn_complete_silence_ms ({self.turn_complete_silence_ms} ms) must be at least "
                             f"min_speech_ms and {4 * VAD_WINDOW_MS} ms, or turns end between syllables")
        if self.turn_incomplete_silence_ms < self.turn_complete_silence_ms:
            raise ValueError("turn_incomplete_silence_ms must be at least turn_complete_silence_ms")
        if self.backchannel_long_ms < self.backchannel_max_ms:
            raise ValueError("backchannel_long_ms must be at least backchannel_max_ms")
        shortest = min(self.end_silence_ms, self.end_silence_short_ms)
        if self.speculative_pause_ms and self.speculative_pause_ms >= shortest:
            raise ValueError(f"speculative_pause_ms ({self.speculative_pause_ms}) must be below the shortest "
                             f"end_silence ({shortest} ms), or 0 to turn speculation off")
        return self


#: time the spoken goodbye at ``max_call_s`` needs before FastRTC's silent ``time_limit_s`` cut
CALL_LIMIT_MARGIN_S = 30


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=7860, gt=0, lt=65536)
    concurrency_limit: int = Field(default=4, ge=1, description="browser (WebRTC) calls FastRTC serves at once")
    time_limit_s: float = Field(
        default=660, gt=0,
        description="FastRTC's hard cut of a browser call, without a word: a backstop above max_call_s",
    )
    max_call_s: float = Field(
        default=600, ge=0, description="longest call, phone or browser; then a spoken goodbye and hang-up; 0 = none",
    )
    max_calls: int | None = Field(
        default=None, ge=1,
        description="calls at once, phone and browser together; more get a spoken busy message; "
                    "phone calls are counted across every `voicebot serve` worker on store.url; "
                    "null = concurrency_limit",
    )
    line_lease_s: float = Field(
        default=60, ge=1, le=3600,
        description="a phone call's line in the database (shared by the workers on store.url) is renewed every "
                    "third of this; a worker that dies without giving its lines back loses them after this long",
    )
    silence_prompt_s: float = Field(
        default=8, ge=0, description="caller silence after the bot spoke before it asks whether they are there; 0 = never",
    )
    silence_hangup_s: float = Field(
        default=8, ge=0,
        description="further silence after that prompt (with the prompt off, after the bot spoke) before a "
                    "goodbye and hang-up; 0 = never",
    )

    @model_validator(mode="after")
    def _limits(self) -> ServerConfig:
        if self.max_calls is None:
            self.max_calls = self.concurrency_limit
        if self.max_call_s and self.time_limit_s < self.max_call_s + CALL_LIMIT_MARGIN_S:
            raise ValueError(
                f"time_limit_s ({self.time_limit_s:g}) must be at least max_call_s ({self.max_call_s:g}) + "
                f"{CALL_LIMIT_MARGIN_S} s: FastRTC cuts browser calls at time_limit_s without a word, so the "
                "spoken goodbye at max_call_s must come first")
        return self


class ModelsConfig(_Section):
    dir: str = "models"


class LoggingConfig(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    call_log: str | None = Field(
        default="data/calls.jsonl",
        description="JSONL file getting one line per voice turn (timings, texts) and per call end; null = off",
    )
    mask_pii: bool = Field(default=True, description="mask phone numbers and callers' names in the process log")
    call_log_retention_days: float | None = Field(
        default=30, ge=0,
        description="call-log lines older than this are pruned; 0 = write no transcripts and keep nothing; null = forever",
    )
    call_log_mask_pii: bool = Field(default=False, description="mask phone numbers and names in the call log too")


class TwilioConfig(_Section):
    validate_: bool = Field(
        default=True, alias="validate",
        description="check X-Twilio-Signature (needs TWILIO_AUTH_TOKEN) and gate the media websocket",
    )
    public_url: str | None = Field(
        default=None, description="the https://host[/prefix] Twilio calls, when a proxy sits in front; null = as received",
    )
    trust_proxy: bool = Field(default=False, description="honour X-Forwarded-Proto/-Host from the proxy in front")
    stream_token_ttl_s: float = Field(default=60, gt=0, description="how long the TwiML's stream token stays valid")
    max_pending_tokens: int = Field(default=1000, ge=1, description="stream tokens issued and not yet used, at most")
    account_sid: str | None = Field(
        default=None,
        description="the account's SID (AC...) for Twilio's REST API (transfers, texts); $TWILIO_ACCOUNT_SID wins",
    )
    rest_timeout_s: float = Field(default=10, gt=0, le=60, description="longest wait for one Twilio REST request")
    dtmf_pause_s: float = Field(
        default=2.0, gt=0, le=10, description="keys pressed on the phone end after # or this long without a key",
    )
    sms_confirmations: bool = Field(
        default=False,
        description="text the caller's own number (caller ID) after a booking, change or cancellation on the phone",
    )
    sms_from: str | None = Field(
        default=None, description="the texts' sender: a Twilio number (+E.164) or a Messaging Service SID (MG...)",
    )

    # "validate" is a (deprecated) BaseModel method: the field lives under another attribute name.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True, serialize_by_alias=True)

    @property
    def validate(self) -> bool:  # type: ignore[override]
        return self.validate_

    @field_validator("public_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from urllib.parse import urlsplit

        parts = urlsplit(v.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise ValueError("expected the public base URL, e.g. https://bot.example.com")
        return v.strip().rstrip("/")

    @field_validator("account_sid")
    @classmethod
    def _account(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not re.fullmatch(r"AC[0-9a-fA-F]{32}", v.strip()):
            raise ValueError("expected a Twilio account SID: AC followed by 32 hex digits")
        return v.strip()

    @field_validator("sms_from", mode="before")
    @classmethod
    def _sender(cls, v: Any) -> str | None:
        if v is None:
            return v
        if isinstance(v, str) and re.fullmatch(r"MG[0-9a-fA-F]{32}", v.strip()):
            return v.strip()
        try:
            return e164(v)
        except ValueError:
            raise ValueError("expected a Twilio number (+81501234567) or a Messaging Service SID (MG...)") from None

    @model_validator(mode="after")
    def _texts(self) -> TwilioConfig:
        if self.sms_confirmations and not self.sms_from:
            raise ValueError("sms_confirmations needs twilio.sms_from: the Twilio number (or MG... service) texts go from")
        return self


class Config(_Section):
    restaurant: RestaurantConfig = Field(default_factory=RestaurantConfig)
    store: StoreConfig = Field(default_factory=StoreConfig)
    agent: AgentConfig = Field(default_factory=AgentConfig)
    llm: LLMConfig = Field(default_factory=LLMConfig)
    stt: STTConfig = Field(default_factory=STTConfig)
    tts: TTSConfig = Field(default_factory=TTSConfig)
    vad: VADConfig = Field(default_factory=VADConfig)
    server: ServerConfig = Field(default_factory=ServerConfig)
    models: ModelsConfig = Field(default_factory=ModelsConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    twilio: TwilioConfig = Field(default_factory=TwilioConfig)

    #: directory relative paths are resolved against (the config file's folder)
    base_dir: Path = Field(default=PROJECT_ROOT, exclude=True)

    def path(self, value: str | os.PathLike) -> Path:
        """A config path made absolute against the config file's folder."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self.base_dir / p)

    def store_url(self) -> str:
        """``store.url`` with a relative SQLite path resolved against the config folder."""
        url = self.store.url
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
            rel = url[len(prefix):]
            if rel:
                return prefix + str(self.path(rel))
        return url


def _set_path(tree: dict, keys: list[str], value: Any, env_name: str) -> None:
    node = tree
    for key in keys[:-1]:
        nxt = node.get(key)
        if nxt is None:
            nxt = node[key] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"{env_name}: '{key}' is not a section")
        node = nxt
    node[keys[-1]] = value


def apply_env_overrides(tree: dict, environ: dict[str, str] | None = None,
                        sources: dict[tuple[str, ...], str] | None = None) -> dict:
    """Apply ``VOICEBOT__SECTION__KEY=value``; values are read as YAML scalars (``7860``, ``true``, ``[a, b]``).

    ``sources``, when given, gets each overridden key path mapped to the variable that set it.
    """
    environ = os.environ if environ is None else environ
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        keys = [k.lower() for k in name[len(ENV_PREFIX):].split("__") if k]
        if not keys:
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        if isinstance(value, (dt.date, dt.datetime)):
            value = raw
        _set_path(tree, keys, value, name)
        if sources is not None:
            sources[tuple(keys)] = name
    return tree


def _env_source(loc: tuple[str, ...], sources: dict[tuple[str, ...], str]) -> tuple[str | None, list[str]]:
    """The variable that set the value at ``loc`` (or a section above it), else the variables
    that set keys inside ``loc`` (a check across a section's keys)."""
    for n in range(len(loc), 0, -1):
        if loc[:n] in sources:
            return sources[loc[:n]], []
    return None, [name for keys, name in sources.items() if keys[:len(loc)] == loc]


def _describe(err: ValidationError, path: Path, sources: dict[tuple[str, ...], str]) -> str:
    lines, from_file = [], False
    for e in err.errors():
        loc_parts = tuple(str(p) for p in e["loc"])
        loc = ".".join(loc_parts) or "(top level)"
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling; see config.yaml for the keys)"
        var, inside = _env_source(loc_parts, sources)
        if var is not None:
            where = f"{loc} (set by the environment variable {var})"
        else:
            from_file = True
            where = f"{loc} (with {', '.join(sorted(inside))} from the environment)" if inside else loc
        got = e.get("input")
        # A whole section's input (a check across its keys) would bury the message.
        shown = e["type"] != "extra_forbidden" and not isinstance(got, dict)
        lines.append(f"  {where}: {msg} (got {got!r})" if shown else f"  {where}: {msg}")
    # Name the file only when something in it is at fault: an override's error is not the file's.
    head = f"{path}: invalid configuration" if from_file else "invalid configuration from the environment"
    return head + ":\n" + "\n".join(lines)


def default_config_path() -> Path:
    env = os.environ.get("VOICEBOT_CONFIG")
    if env:
        return Path(env)
    cwd = Path.cwd() / "config.yaml"
    return cwd if cwd.exists() else PROJECT_ROOT / "config.yaml"


def load_config(path: str | os.PathLike | None = None, environ: dict[str, str] | None = None) -> Config:
    """Read, override from the environment, and validate. Raises ConfigError with a readable message."""
    p = Path(path) if path is not None else default_config_path()
    tree: dict = {}
    if path is not None or p.exists():
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {p}") from None
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read config file {p}: {e}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {p} is not valid YAML: {e}") from None
        if loaded is None:
            # An empty file is most likely a mistake (a failed copy, the wrong path): running on
            # every default instead would silently open another database, another restaurant.
            raise ConfigError(f"config file {p} is empty (or only comments): expected a mapping of sections "
                              "such as `restaurant:`; see the project's config.yaml")
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {p} must be a mapping of sections, got {type(loaded).__name__}")
        tree = loaded
    sources: dict[tuple[str, ...], str] = {}
    tree = apply_env_overrides(tree, environ, sources)
    tree.pop("base_dir", None)
    try:
        cfg = Config.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_describe(e, p, sources)) from None
    cfg.base_dir = p.resolve().parent
    return cfg
