"""config.yaml: validated at start-up, overridable from the environment, errors that name the key."""

from __future__ import annotations

import datetime as dt

import pytest

from pipeline.config import PROJECT_ROOT, Config, ConfigError, load_config


def test_shipped_config_yaml_matches_the_defaults_and_validates():
    cfg = load_config(PROJECT_ROOT / "config.yaml", environ={})
    assert cfg.restaurant == Config().restaurant
    assert cfg.restaurant.weekday_hours.open == dt.time(11)
    assert cfg.restaurant.weekend_hours.close == dt.time(23)
    assert cfg.store_url() == f"sqlite:///{PROJECT_ROOT / 'data' / 'reservations.db'}"


def test_environment_overrides_any_key_as_yaml():
    cfg = load_config(PROJECT_ROOT / "config.yaml", environ={
        "VOICEBOT__STORE__URL": "sqlite:////tmp/x.db",
        "VOICEBOT__SERVER__PORT": "9000",
        "VOICEBOT__RESTAURANT__MAX_PARTY_SIZE": "6",
        "VOICEBOT__RESTAURANT__WEEKDAY_HOURS__CLOSE": "21:30",
        "VOICEBOT__STT__HOTWORDS": "[寿司, 天ぷら]",
        "VOICEBOT__LLM__BASE_URL": "http://127.0.0.1:8000/v1",
        "UNRELATED": "x",
    })
    assert cfg.store_url() == "sqlite:////tmp/x.db"
    assert cfg.server.port == 9000
    assert cfg.restaurant.max_party_size == 6
    assert cfg.restaurant.weekday_hours.close == dt.time(21, 30)
    assert cfg.stt.hotwords == ["寿司", "天ぷら"]
    assert cfg.llm.base_url == "http://127.0.0.1:8000/v1"


def test_relative_paths_resolve_against_the_config_folder(tmp_path):
    (tmp_path / "config.yaml").write_text("store:\n  url: sqlite:///db/r.db\ntts:\n  model: m/k.onnx\n")
    cfg = load_config(tmp_path / "config.yaml", environ={})
    assert cfg.store_url() == f"sqlite:///{tmp_path / 'db' / 'r.db'}"
    assert cfg.path(cfg.tts.model) == tmp_path / "m" / "k.onnx"


@pytest.mark.parametrize(
    ("yaml_text", "env", "named"),
    [
        ("restaurant:\n  max_party_size: 0\n", {}, "restaurant.max_party_size"),
        ("restaurant:\n  timezone: Mars/Olympus\n", {}, "restaurant.timezone"),
        ("restaurant:\n  weekday_hours: {open: '22:00', close: '11:00'}\n", {}, "restaurant.weekday_hours"),
        ("restaurant:\n  closed_periods: [{start: '13-01', end: '01-03'}]\n", {}, "restaurant.closed_periods.0.start"),
        ("agent:\n  kind: gpt\n", {}, "agent.kind"),
        ("server:\n  prot: 80\n", {}, "server.prot"),
        ("{}\n", {"VOICEBOT__SERVER__PORT": "eighty"}, "server.port"),
        ("{}\n", {"VOICEBOT__STT__LANGUAGE": "fr"}, "stt.language"),
    ],
)
def test_a_bad_value_is_reported_with_its_key(tmp_path, yaml_text, env, named):
    path = tmp_path / "config.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as err:
        load_config(path, environ=env)
    assert named in str(err.value)


@pytest.mark.parametrize("text", ["[1, 2]", "restaurant: [\n", "just a string"])
def test_a_file_that_is_not_a_mapping_is_a_clear_error(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="config file"):
        load_config(path, environ={})


@pytest.mark.parametrize("text", ["", "\n\n", "# restaurant:\n#   name: X\n", "---\n", "null\n"])
def test_an_empty_file_is_a_clear_error_naming_it(tmp_path, text):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert str(err.value).startswith(f"config file {path} is empty")
    assert "\n" not in str(err.value)


def test_an_explicitly_empty_mapping_means_every_default(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("{}  # every default\n")
    assert load_config(path, environ={}).restaurant == Config().restaurant


def test_a_bad_environment_override_names_its_variable_not_the_file(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("restaurant:\n  max_party_size: 6\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={"VOICEBOT__RESTAURANT__MAX_PARTY_SIZE": "abc"})
    assert str(err.value) == (
        "invalid configuration from the environment:\n"
        "  restaurant.max_party_size (set by the environment variable VOICEBOT__RESTAURANT__MAX_PARTY_SIZE): "
        "Input should be a valid integer, unable to parse string as an integer (got 'abc')")


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"VOICEBOT__SERVER__PROT": "80"}, "server.prot (set by the environment variable VOICEBOT__SERVER__PROT)"),
        ({"VOICEBOT__RESTAURANT__WEEKDAY_HOURS": "{open: '25:00', close: '22:00'}"},
         "restaurant.weekday_hours.open (set by the environment variable VOICEBOT__RESTAURANT__WEEKDAY_HOURS)"),
        ({"VOICEBOT__TWILIO__VALIDATE": "maybe"}, "twilio.validate (set by the environment variable "
                                                  "VOICEBOT__TWILIO__VALIDATE)"),
    ],
)
def test_an_override_of_a_section_or_an_unknown_key_is_traced_to_its_variable(env, named):
    with pytest.raises(ConfigError) as err:
        load_config(PROJECT_ROOT / "config.yaml", environ=env)
    assert named in str(err.value)
    assert str(PROJECT_ROOT / "config.yaml") not in str(err.value)


def test_errors_in_the_file_and_in_the_environment_each_name_their_source(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("restaurant:\n  max_party_size: 2\nserver:\n  port: 0\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={"VOICEBOT__RESTAURANT__MIN_PARTY_SIZE": "3", "VOICEBOT__AGENT__KIND": "gpt"})
    head, *lines = str(err.value).splitlines()
    assert head == f"{path}: invalid configuration:"
    assert any(line.startswith("  server.port: ") for line in lines)
    assert any(line.startswith("  agent.kind (set by the environment variable VOICEBOT__AGENT__KIND): ")
               for line in lines)
    # a check across a section's keys says which override took part, without dumping the section
    assert ("  restaurant (with VOICEBOT__RESTAURANT__MIN_PARTY_SIZE from the environment): Value error, "
            "max_party_size must be at least min_party_size") in lines


def test_a_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml", environ={})


@pytest.mark.parametrize(
    ("yaml_text", "named"),
    [
        ("vad:\n  end_silence_ms: 60\n", "end_silence_ms"),
        ("vad:\n  end_silence_short_ms: 64\n", "end_silence_short_ms"),
        ("vad:\n  min_speech_ms: 300\n  end_silence_phone_ms: 200\n", "end_silence_phone_ms"),
        ("vad:\n  min_speech_ms: 0\n", "vad.min_speech_ms"),
        ("vad:\n  min_speech_ms: 800\n", "vad.min_speech_ms"),
        ("vad:\n  speculative_pause_ms: 400\n", "speculative_pause_ms"),
        ("vad:\n  hysteresis: 0.5\n", "hysteresis"),
        ("vad:\n  num_threads: 0\n", "vad.num_threads"),
        ("stt:\n  window_s: 0.5\n", "stt.window_s"),
        ("stt:\n  window_s: 4\n", "stt.window_s"),  # real weights loop on windows this short
        ("stt:\n  window_s: 45\n", "stt.window_s"),
        ("stt:\n  num_workers: 0\n", "stt.num_workers"),
    ],
)
def test_turn_taking_values_that_would_make_the_bot_deaf_or_cut_callers_off_are_refused(tmp_path, yaml_text, named):
    path = tmp_path / "config.yaml"
    path.write_text(yaml_text)
    with pytest.raises(ConfigError) as err:
        load_config(path, environ={})
    assert named in str(err.value)


def test_turn_taking_defaults_end_sooner_after_yes_no_and_later_for_phone_numbers():
    cfg = load_config(PROJECT_ROOT / "config.yaml", environ={})
    vad = cfg.vad
    assert vad.min_speech_ms <= 100  # a short 「はい」 is a turn
    assert vad.speculative_pause_ms < vad.end_silence_short_ms < vad.end_silence_ms < vad.end_silence_phone_ms
    assert 6 <= cfg.stt.window_s < 30  # a shortened encoder window, above the length where whisper loops
    assert load_config(PROJECT_ROOT / "config.yaml", environ={"VOICEBOT__STT__WINDOW_S": "8"}).stt.window_s == 8
    assert load_config(PROJECT_ROOT / "config.yaml", environ={"VOICEBOT__STT__WINDOW_S": "null"}).stt.window_s is None
