"""Smart Turn v3.2 (the real file, from the pipecat-ai wheel in the real-model cache) on Japanese
caller speech over the phone line: finished sentences read as complete, a caller stopping to think
(「明日の、えーと」) as incomplete; and a missing or wrong file is a clear error."""

from __future__ import annotations

import os

import numpy as np
import pytest
from real_models import SKIP_ENV, RealModelsMissing, locate

from pipeline.audio import to_float32
from pipeline.sim.phone import phone_line
from pipeline.sim.voices import openjtalk
from pipeline.speech.turn import SmartTurn, TurnModelError


@pytest.fixture(scope="module")
def model():
    try:
        return SmartTurn(locate().smart_turn)
    except RealModelsMissing as e:
        if os.environ.get(SKIP_ENV) == "0":
            pytest.skip(f"{SKIP_ENV}=0: {e}")
        pytest.fail(str(e), pytrace=False)


def caller(text: str) -> np.ndarray:
    rate, pcm = openjtalk(text)
    heard = to_float32(phone_line(rate, pcm))
    return np.concatenate([heard, np.zeros(3200, np.float32)])  # the 200 ms pause the check runs at


@pytest.mark.parametrize("text", ["明日の19時に3名でお願いします。", "田中です。", "はい、それでお願いします。",
                                  "特にありません。"])
def test_finished_sentences_are_complete(model, text):
    assert model.predict(caller(text)).complete


@pytest.mark.parametrize("text", ["明日の、えーと", "予約をお願いしたいんですけど", "それで、人数は"])
def test_a_caller_who_stops_to_think_is_not_done(model, text):
    assert not model.predict(caller(text)).complete


def test_longer_than_the_window_and_silence_are_fine(model):
    long = np.concatenate([caller("明日の19時に3名でお願いします。")] * 4)
    assert 0.0 <= model.predict(long).probability <= 1.0
    assert 0.0 <= model.predict(np.zeros(16000, np.float32)).probability <= 1.0
    assert model.features(np.zeros(10, np.float32)).shape == (1, 80, 800)


def test_a_missing_or_wrong_file_is_a_clear_error(tmp_path):
    with pytest.raises(TurnModelError, match="not found"):
        SmartTurn(tmp_path / "nothing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(TurnModelError, match="cannot load"):
        SmartTurn(bad)
