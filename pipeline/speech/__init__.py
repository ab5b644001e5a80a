"""Audio in, words out and back: voice activity (:mod:`.vad`), the end-of-turn model (:mod:`.turn`),
speech to text (:mod:`.stt`), text to speech (:mod:`.tts`, :mod:`.kokoro_fp32`), the same stages on a
speech server (:mod:`.remote`), and the model files (:mod:`.models`)."""
