"""Tiny stand-in model files, so that the real model code runs with no model hub.

``build_test_models(DIR)`` (or ``python scripts/make_test_models.py DIR``) writes into DIR:

- ``whisper-tiny-random/``: a random-weight multilingual Whisper in CTranslate2 format, with the
  ``tokenizer.json`` and ``preprocessor_config.json`` faster-whisper reads. It transcribes garbage
  (by design) at the real code path's speed, and honours ``language="ja"``.
- ``kokoro-fake.onnx``: an ONNX graph with kokoro-onnx's exact signature (``tokens`` int64 [1, N],
  ``style`` float32 [1, 256], ``speed`` float32 [1] -> ``audio`` float32 [samples]) that sings one
  sine tone per phoneme token, so output length follows the phonemes and is never silent
  (kokoro-onnx trims silence, so a silent fake would hide bugs as empty audio).
- ``voices.bin``: the voices file (an npz, like ``voices-v1.0.bin``) with ``jf_alpha`` and ``af_heart``.
- ``config.yaml``: a voicebot config pointing at those files with relative paths, the rules agent, and
  the reservations database under DIR.

``build_test_models`` returns the config's path. Needs numpy, ctranslate2 and tokenizers
(faster-whisper's own dependencies) plus ``onnx`` (a dev dependency) for the kokoro graph.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

WHISPER_DIRNAME = "whisper-tiny-random"
KOKORO_FILENAME = "kokoro-fake.onnx"
VOICES_FILENAME = "voices.bin"
VOICE_NAMES = ("jf_alpha", "af_heart")

KOKORO_SAMPLE_RATE = 24000
# 25 ms of tone per phoneme at speed 1.0: long enough that a short sentence is clearly audible.
SAMPLES_PER_TOKEN = 600

# The language tokens in faster-whisper's order (faster_whisper.tokenizer._LANGUAGE_CODES). Written out
# so that building needs no faster-whisper import; only their presence matters to the fixture.
WHISPER_LANGUAGES = (
    "af am ar as az ba be bg bn bo br bs ca cs cy da de el en es et eu fa fi fo fr gl gu ha haw he hi hr ht "
    "hu hy id is it ja jw ka kk km kn ko la lb ln lo lt lv mg mi mk ml mn mr ms mt my ne nl nn no oc pa pl "
    "ps pt ro ru sa sd si sk sl sn so sq sr su sv sw ta te tg th tk tl tr tt uk ur uz vi yi yo zh yue"
).split()


# ---------------------------------------------------------------------------------------------- whisper
def _byte_symbols() -> list[str]:
    """GPT-2's byte -> printable-unicode table, in byte order (what byte-level BPE vocabularies use)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def _whisper_tokenizer(n_text: int = 257):
    """A byte-level tokenizer with real multilingual Whisper's special-token layout.

    ``n_text`` text tokens: the 256 bytes, unreachable padding, then the empty string (50257 gives
    real multilingual Whisper's id layout and its 51866-token vocabulary).

    Text is bytes with no merges (so any string encodes, hotwords included). The empty-string token
    just before ``<|endoftext|>`` is what ctranslate2 takes as the mark of a multilingual model: without
    it the model counts as English-only and ``language="ja"`` is silently replaced by English.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models
    from tokenizers.pre_tokenizers import ByteLevel

    text = [*_byte_symbols(), *[f"<|pad{i}|>" for i in range(n_text - 257)], ""]
    specials = [
        "<|endoftext|>",
        "<|startoftranscript|>",
        *[f"<|{code}|>" for code in WHISPER_LANGUAGES],
        "<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        "<|nocaptions|>",
        "<|notimestamps|>",
    ]
    timestamps = [f"<|{i * 0.02:.2f}|>" for i in range(1501)]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(text)}, merges=[]))
    tok.pre_tokenizer = ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in timestamps])
    return tok


def build_whisper(
    out_dir: str | Path,
    d_model: int = 64,
    layers: int = 2,
    heads: int = 2,
    n_mels: int = 80,
    eot_bias: float | None = 0.3,
    seed: int = 0,
    n_text: int = 257,
) -> Path:
    """A random-weight Whisper in CTranslate2 format (int8), ~1 MB, that transcribes anything as a
    few lowercase letters (``"jjjjjjjj"`` with the defaults) in ~20 ms.

    ``eot_bias`` raises ``<|endoftext|>``'s logit: higher stops sooner (1.0: one letter), 0 and below
    run on to the token cap the way real weights loop on a too-short encoder window (the STT's
    repeat check catches both); ``None`` leaves the logits unsteered
    (the benchmark's real-size models, whose decoding is capped by the caller instead). ``n_text``:
    see ``_whisper_tokenizer``.
    """
    from ctranslate2.specs import whisper_spec

    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    tok = _whisper_tokenizer(n_text)
    vocab = [tok.id_to_token(i) for i in range(tok.get_vocab_size())]
    index = {t: i for i, t in enumerate(vocab)}
    ffn = 4 * d_model

    def rand(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    def layer_norm(spec) -> None:
        spec.gamma, spec.beta = np.ones(d_model, np.float32), np.zeros(d_model, np.float32)

    def linear(spec, n_out: int, n_in: int) -> None:
        spec.weight, spec.bias = rand(n_out, n_in), np.zeros(n_out, np.float32)

    def sinusoids(length: int, channels: int) -> np.ndarray:
        inv = np.exp(-np.log(10000) / (channels // 2 - 1) * np.arange(channels // 2))
        t = np.arange(length)[:, None] * inv[None, :]
        return np.concatenate([np.sin(t), np.cos(t)], axis=1).astype(np.float32)

    spec = whisper_spec.WhisperSpec(layers, heads, layers, heads)
    enc = spec.encoder
    enc.conv1.weight, enc.conv1.bias = rand(d_model, n_mels, 3), np.zeros(d_model, np.float32)
    enc.conv2.weight, enc.conv2.bias = rand(d_model, d_model, 3), np.zeros(d_model, np.float32)
    enc.position_encodings.encodings = sinusoids(1500, d_model)
    layer_norm(enc.layer_norm)
    for lay in enc.layer:
        layer_norm(lay.self_attention.layer_norm)
        linear(lay.self_attention.linear[0], 3 * d_model, d_model)  # fused QKV
        linear(lay.self_attention.linear[1], d_model, d_model)
        layer_norm(lay.ffn.layer_norm)
        linear(lay.ffn.linear_0, ffn, d_model)
        linear(lay.ffn.linear_1, d_model, ffn)

    dec = spec.decoder
    dec.embeddings.weight = rand(len(vocab), d_model)
    dec.position_encodings.encodings = rand(448, d_model)
    layer_norm(dec.layer_norm)
    dec.projection.weight = dec.embeddings.weight  # tied, as in Whisper
    eot = index["<|endoftext|>"]
    if eot_bias is not None:
        # Random logits would mostly pick timestamp or language tokens (1,600 of them against 256
        # bytes), which faster-whisper drops from the text, and stray bytes make invalid UTF-8: steer
        # the decoder to lowercase ASCII letters and, with eot_bias, to stop after a few of them.
        bias = np.full(len(vocab), -20.0, np.float32)
        bias[[index[c] for c in "abcdefghijklmnopqrstuvwxyz"]] = 0.0
        bias[eot] = eot_bias
        dec.projection.bias = bias
    for lay in dec.layer:
        layer_norm(lay.self_attention.layer_norm)
        linear(lay.self_attention.linear[0], 3 * d_model, d_model)
        linear(lay.self_attention.linear[1], d_model, d_model)
        layer_norm(lay.attention.layer_norm)
        linear(lay.attention.linear[0], d_model, d_model)  # queries from the decoder
        linear(lay.attention.linear[1], 2 * d_model, d_model)  # fused keys/values from the encoder
        linear(lay.attention.linear[2], d_model, d_model)
        layer_norm(lay.ffn.layer_norm)
        linear(lay.ffn.linear_0, ffn, d_model)
        linear(lay.ffn.linear_1, d_model, ffn)

    spec.register_vocabulary(vocab)
    cfg = spec.config
    cfg.suppress_ids = []
    # Real Whisper suppresses a leading space and <|endoftext|> at the first step (ids 220 and eot).
    cfg.suppress_ids_begin = [tok.token_to_id("\u0120"), eot]
    cfg.lang_ids = sorted(index[f"<|{code}|>"] for code in WHISPER_LANGUAGES)
    cfg.alignment_heads = [[lay, h] for lay in range(layers // 2, layers) for h in range(heads)]
    spec.validate()
    spec.optimize(quantization="int8")

    out.mkdir(parents=True, exist_ok=True)
    spec.save(str(out))
    tok.save(str(out / "tokenizer.json"))
    (out / "preprocessor_config.json").write_text(
        json.dumps(
            {"feature_size": n_mels, "sampling_rate": 16000, "hop_length": 160, "chunk_length": 30, "n_fft": 400}
        )
    )
    return out


# ----------------------------------------------------------------------------------------------- kokoro
def build_fake_kokoro(path: str | Path, amplitude: float = 0.3, samples_per_token: int = SAMPLES_PER_TOKEN) -> Path:
    """An ONNX graph with kokoro-v1.0.onnx's inputs and output, making a tone per phoneme token.

    audio = (amplitude + 0.05 * tanh(mean(style))) * sin(2 pi (200 + 2 * token) t / 24000), with
    ``samples_per_token / speed`` samples per token: length follows the phoneme count and the speed,
    the voice changes the loudness a little, and no part of it is silent.

    The knobs make a broken model for the synthesis-fault tests: ``amplitude`` 1e12 (the peaks of a
    faulty int8 kernel), ``nan``, 0 (silence) or 1.2 (a loud voice's overshoot, which is speech);
    ``samples_per_token`` 1 (a few milliseconds for a whole sentence).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    def const(name: str, value) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(value), name)

    consts = [
        const("per_token", np.array(samples_per_token, np.float32)),
        const("shape_1", np.array([1], np.int64)),
        const("shape_flat", np.array([-1], np.int64)),
        const("zero", np.array(0.0, np.float32)),
        const("one", np.array(1.0, np.float32)),
        const("base_hz", np.array(200.0, np.float32)),
        const("hz_per_token", np.array(2.0, np.float32)),
        const("rad_per_sample", np.array(2 * np.pi / KOKORO_SAMPLE_RATE, np.float32)),
        const("amp", np.array(amplitude, np.float32)),
        const("amp_voice", np.array(0.05, np.float32)),
        const("axis_2", np.array([2], np.int64)),
    ]
    node = helper.make_node
    nodes = [
        node("Cast", ["tokens"], ["tok_f"], to=TensorProto.FLOAT),  # [1, n]
        node("ReduceMax", ["speed"], ["speed_s"], keepdims=0),
        node("Div", ["per_token", "speed_s"], ["k_f"]),
        node("Floor", ["k_f"], ["k_floor"]),
        node("Cast", ["k_floor"], ["k_i"], to=TensorProto.INT64),
        node("Reshape", ["k_i", "shape_1"], ["k_1"]),
        node("Shape", ["tokens"], ["tok_shape"]),
        node("Concat", ["tok_shape", "k_1"], ["rep_shape"], axis=0),  # [1, n, k]
        node("Unsqueeze", ["tok_f", "axis_2"], ["tok_3d"]),
        node("Expand", ["tok_3d", "rep_shape"], ["tok_rep"]),
        node("Reshape", ["tok_rep", "shape_flat"], ["tok_flat"]),  # [n * k]
        node("Mul", ["tok_flat", "hz_per_token"], ["hz_delta"]),
        node("Add", ["hz_delta", "base_hz"], ["hz"]),
        node("Shape", ["tok_flat"], ["n_samples"]),
        node("Cast", ["n_samples"], ["n_samples_f"], to=TensorProto.FLOAT),
        node("ReduceMax", ["n_samples_f"], ["n_samples_s"], keepdims=0),
        node("Range", ["zero", "n_samples_s", "one"], ["t"]),
        node("Mul", ["t", "hz"], ["cycles"]),
        node("Mul", ["cycles", "rad_per_sample"], ["phase"]),
        node("Sin", ["phase"], ["wave"]),
        node("ReduceMean", ["style"], ["style_mean"], keepdims=0),
        node("Tanh", ["style_mean"], ["style_t"]),
        node("Mul", ["style_t", "amp_voice"], ["amp_delta"]),
        node("Add", ["amp", "amp_delta"], ["gain"]),
        node("Mul", ["wave", "gain"], ["audio"]),
    ]
    graph = helper.make_graph(
        nodes,
        "fake_kokoro",
        [
            helper.make_tensor_value_info("tokens", TensorProto.INT64, [1, "n_tokens"]),
            helper.make_tensor_value_info("style", TensorProto.FLOAT, [1, 256]),
            helper.make_tensor_value_info("speed", TensorProto.FLOAT, [1]),
        ],
        [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["n_samples"])],
        initializer=consts,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="voicebot-tests")
    model.ir_version = 8  # loadable by older onnxruntime builds as well
    onnx.checker.check_model(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def build_voices(path: str | Path, names: tuple[str, ...] = VOICE_NAMES, seed: int = 0) -> Path:
    """An npz of name -> float32 [510, 1, 256] style vectors, the layout of voices-v1.0.bin."""
    rng = np.random.default_rng(seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Writing through a file object keeps numpy from appending ".npz"; np.load sniffs the zip header.
    with path.open("wb") as f:
        np.savez(f, **{n: (rng.standard_normal((510, 1, 256)) * 0.1).astype(np.float32) for n in names})
    return path


# ----------------------------------------------------------------------------------------------- config
CONFIG_TEMPLATE = """\
# Written by the test-model builder (pipeline/sim/testmodels.py): tiny random-weight models for tests,
# not for callers.
# Relative paths resolve against this file's folder.
agent:
  kind: rules
  language: ja
stt:
  provider: faster-whisper
  model: {whisper}
  device: cpu
  compute_type: int8
  language: ja
  beam_size: 1
  cpu_threads: 1
tts:
  provider: kokoro
  model: {kokoro}
  voices: {voices}
  voice:
    ja: jf_alpha
    en: af_heart
  # a late reply's acknowledgement depends on how fast the machine is: off, so that what a test
  # hears does not (tests that are about it turn it on)
  ack_after_s: 0
store:
  url: sqlite:///data/reservations.db
models:
  dir: .
# Local development: no Twilio account behind these models, so `voicebot serve` runs without
# TWILIO_AUTH_TOKEN. Never switch this off on a server that takes real calls.
twilio:
  validate: false
"""


def build_test_models(out_dir: str | Path) -> Path:
    """Write the whisper, kokoro and voices fixtures plus ``config.yaml`` into ``out_dir``; return the config path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    build_whisper(out / WHISPER_DIRNAME)
    build_fake_kokoro(out / KOKORO_FILENAME)
    build_voices(out / VOICES_FILENAME)
    (out / "data").mkdir(exist_ok=True)
    config = out / "config.yaml"
    config.write_text(
        CONFIG_TEMPLATE.format(whisper=WHISPER_DIRNAME, kokoro=KOKORO_FILENAME, voices=VOICES_FILENAME),
        encoding="utf-8",
    )
    log.info("built test models in %s in %.2f s", out, time.perf_counter() - start)
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path, help="folder to write the models and config.yaml into")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    config = build_test_models(args.dir)
    files = sorted(p for p in args.dir.rglob("*") if p.is_file())
    print(f"built in {time.perf_counter() - start:.2f} s: {config}")
    for p in files:
        print(f"  {p.relative_to(args.dir)}  {p.stat().st_size:,} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
