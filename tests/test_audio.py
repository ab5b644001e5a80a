"""pipeline.audio: mu-law bit for bit, and a resampler that gives the same samples fed 20 ms at a
time as fed the whole signal, so that the phone path has no seam at every frame.

The seam test measures what is left of a steady tone once everything periodic at the tone's period
is taken out: the resampler's output of a tone is exactly periodic, and a seam every 20 ms (or at
every reply chunk) is not. FastRTC's own phone path fails the same measure; it is run here too.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from pipeline.audio import (
    CUTOFF,
    HALF_TAPS,
    KAISER_BETA,
    PHONE_RATE,
    Resampler,
    mulaw_decode,
    mulaw_encode,
    resample,
    to_float32,
    to_int16,
    to_mono_float32,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # the reference G.711 FastRTC uses (Python < 3.13)

#: what is left of a tone outside its period, at most, where nothing puts a seam in it
SEAMLESS_DB = -80.0
RATE_PAIRS = [(8000, 16000), (24000, 8000), (22050, 8000), (48000, 8000), (16000, 8000), (44100, 16000)]


def aperiodic_db(x: np.ndarray, period: int, skip: int) -> float:
    """Energy of ``x`` not periodic with ``period`` samples, relative to its whole energy (dB),
    leaving out ``skip`` samples at each end (a stream's start and end are not steady)."""
    x = np.asarray(x, np.float64)[skip : len(x) - skip]
    rows = x[: len(x) // period * period].reshape(-1, period)
    rest = rows - rows.mean(axis=0)
    return 10 * math.log10(max(float((rest**2).sum()), 1e-30) / float((rows**2).sum()))


def tone(freq: float, rate: int, seconds: float, amplitude: float = 0.3) -> np.ndarray:
    n = np.arange(int(rate * seconds))
    return (amplitude * np.sin(2 * np.pi * freq * n / rate)).astype(np.float32)


def level_db(x: np.ndarray, rate: int, freq: float) -> float:
    """The amplitude of ``freq`` in ``x`` (a whole number of its cycles), in dB re full scale."""
    n = np.arange(len(x))
    c = np.abs(np.dot(np.asarray(x, np.float64), np.exp(-2j * np.pi * freq * n / rate))) * 2 / len(x)
    return 20 * math.log10(max(c, 1e-12))


def in_frames(stream: Resampler, x: np.ndarray, size: int) -> np.ndarray:
    return np.concatenate([stream.process(x[i : i + size]) for i in range(0, len(x), size)] + [stream.flush()])


# ---------------------------------------------------------------------------------------- mu-law
def test_mulaw_matches_g711_as_audioop_computes_it_for_every_sample():
    pcm = np.arange(-32768, 32768, dtype=np.int16)
    assert mulaw_encode(pcm) == audioop.lin2ulaw(pcm.tobytes(), 2)
    every_code = bytes(range(256))
    assert mulaw_decode(every_code).tobytes() == audioop.ulaw2lin(every_code, 2)
    assert mulaw_decode(mulaw_encode(mulaw_decode(every_code))).tobytes() == audioop.ulaw2lin(every_code, 2)


def test_mulaw_encodes_float_audio_clipped_to_full_scale():
    assert mulaw_encode(np.array([2.0, -2.0, 1.0, 0.0], np.float32)) == audioop.lin2ulaw(
        np.array([32767, -32768, 32767, 0], np.int16).tobytes(), 2)


def test_sample_formats_convert_both_ways_and_mix_channels():
    pcm = np.array([-32768, -1, 0, 1, 32767], np.int16)
    assert np.array_equal(to_int16(to_float32(pcm)), pcm)
    assert np.array_equal(to_int16(np.array([1.5, -1.5])), [32767, -32768])  # clipped, never wrapped
    stereo = np.stack([np.full(4, 0.5, np.float32), np.zeros(4, np.float32)])
    assert np.allclose(to_mono_float32(stereo), 0.25) and np.allclose(to_mono_float32(stereo.T), 0.25)
    with pytest.raises(ValueError):
        to_mono_float32(np.array([np.nan], np.float32))


# ------------------------------------------------------------------------------------ resampling
@pytest.mark.parametrize(("rate_in", "rate_out"), RATE_PAIRS)
def test_resampling_in_20ms_frames_equals_resampling_the_whole_signal(rate_in, rate_out):
    x = np.random.default_rng(rate_in + rate_out).standard_normal(rate_in + 37).astype(np.float32) * 0.3
    whole = resample(x, rate_in, rate_out)
    assert whole.size == math.ceil(x.size * rate_out / rate_in)
    streamed = in_frames(Resampler(rate_in, rate_out), x, rate_in // 50)
    assert streamed.size == whole.size
    assert np.abs(streamed - whole).max() < 1e-6
    # any split will do, single samples and empty pieces included: no seam at a frame's edge
    sizes = np.random.default_rng(1).integers(0, 700, 200)
    stream, pieces, at = Resampler(rate_in, rate_out), [], 0
    for size in sizes:
        pieces.append(stream.process(x[at : at + size]))
        at += size
    pieces += [stream.process(x[at:]), stream.flush()]
    assert np.abs(np.concatenate(pieces) - whole).max() < 1e-6


@pytest.mark.parametrize(("rate_in", "rate_out"), [(8000, 16000), (24000, 8000), (22050, 8000)])
def test_the_whole_signal_is_filtered_as_resample_poly_does_with_the_documented_filter(rate_in, rate_out):
    """Independent one-shot reference: scipy's polyphase resampler with the Kaiser-windowed sinc
    described in pipeline.audio (same alignment: output n is input time n / rate_out)."""
    signal = pytest.importorskip("scipy.signal")
    g = math.gcd(rate_in, rate_out)
    up, down = rate_out // g, rate_in // g
    half = HALF_TAPS * max(up, down)
    n = np.arange(-half, half + 1)
    h = np.sinc(CUTOFF / max(up, down) * n) * np.kaiser(2 * half + 1, KAISER_BETA)
    x = np.random.default_rng(7).standard_normal(rate_in // 2)
    reference = signal.resample_poly(x, up, down, window=h / h.sum())
    assert np.abs(in_frames(Resampler(rate_in, rate_out), x, rate_in // 50) - reference).max() < 1e-5


def test_resampling_keeps_the_telephone_band_and_removes_what_would_alias():
    # 24 kHz -> 8 kHz: 3 kHz passes; 5 kHz would fold onto 3 kHz and is filtered out first
    assert abs(level_db(resample(tone(3000, 24000, 1.0), 24000, PHONE_RATE), PHONE_RATE, 3000) - level_db(
        tone(3000, 8000, 1.0), 8000, 3000)) < 0.1
    assert level_db(resample(tone(5000, 24000, 1.0, 0.9), 24000, PHONE_RATE), PHONE_RATE, 3000) < -75
    # 8 kHz -> 16 kHz: the tone stays where it was, and its image above 4 kHz is gone
    up = resample(tone(3000, 8000, 1.0), 8000, 16000)
    assert abs(level_db(up, 16000, 3000) - level_db(tone(3000, 8000, 1.0), 8000, 3000)) < 0.1
    assert level_db(up, 16000, 5000) < -75
    # and the 16 kHz samples are those of the tone itself (the filter is aligned, not delayed)
    assert np.abs(up[200:-200] - tone(3000, 16000, 1.0)[200:-200]).max() < 0.01


def test_equal_rates_pass_through_and_bad_rates_are_refused():
    x = np.linspace(-1, 1, 100, dtype=np.float32)
    assert np.array_equal(Resampler(16000, 16000).process(x), x)
    assert np.array_equal(resample(x, 8000, 8000), x)
    for bad in (0, -8000, 8000.5, True, "8000", 44101):
        with pytest.raises(ValueError):
            Resampler(bad, 16000)


# ------------------------------------------------------------------------ the phone path, both ways
def test_caller_audio_in_20ms_frames_reaches_16khz_without_a_seam_at_every_frame():
    """8 kHz mu-law frames, as Twilio sends them, resampled frame by frame to 16 kHz: the tone
    (500 Hz, 32 samples a cycle at 16 kHz) comes out exactly periodic. FastRTC's own websocket
    path resamples each frame on its own and leaves a seam 50 times a second."""
    librosa = pytest.importorskip("librosa")
    from fastrtc.utils import audio_to_float32, audio_to_int16

    pcm8 = mulaw_decode(mulaw_encode(tone(500, PHONE_RATE, 2.0)))
    frames = [pcm8[i : i + 160] for i in range(0, pcm8.size, 160)]
    stream = Resampler(PHONE_RATE, 16000)
    ours = np.concatenate([to_int16(stream.process(to_float32(f))) for f in frames])
    assert aperiodic_db(ours, 32, 320) < SEAMLESS_DB
    assert abs(level_db(to_float32(ours[320:-320]), 16000, 500) - level_db(to_float32(pcm8), 8000, 500)) < 0.1
    # what fastrtc/websocket.py does with each media message
    fastrtc = np.concatenate([audio_to_int16(librosa.resample(audio_to_float32(f), orig_sr=8000, target_sr=16000))
                              for f in frames])
    assert aperiodic_db(fastrtc, 32, 320) > SEAMLESS_DB + 20


def test_bot_audio_in_half_second_chunks_reaches_8khz_mulaw_without_a_seam_at_every_chunk():
    """The bot's 24 kHz audio, handed out 0.5 s at a time, resampled as one stream and encoded
    as Twilio plays it: exactly periodic. FastRTC's ``convert_to_mulaw`` resamples each chunk
    on its own."""
    from fastrtc.websocket import convert_to_mulaw

    bot = tone(1000, 24000, 3.0)
    chunks = [bot[i : i + 12000] for i in range(0, bot.size, 12000)]
    stream = Resampler(24000, PHONE_RATE)
    ours = np.concatenate([mulaw_decode(mulaw_encode(stream.process(c))) for c in chunks])
    assert aperiodic_db(ours, 8, 80) < SEAMLESS_DB
    fastrtc = np.concatenate([mulaw_decode(convert_to_mulaw(c, 24000, PHONE_RATE)) for c in chunks])
    assert aperiodic_db(fastrtc, 8, 80) > SEAMLESS_DB + 20
