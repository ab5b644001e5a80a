"""Caller speech for tests: espeak-ng (``apt-get install espeak-ng``), cached, from
:mod:`pipeline.sim.voices`. Not a conftest: import it.

espeak-ng is robotic but silero-vad takes it for speech (max probability ~1.0), which is what the
VAD and turn-taking tests need; nothing here judges what was said.
"""

from pipeline.sim.voices import ESPEAK, ESPEAK_MISSING, SAMPLE_RATE, cache_dir, noise, silence, speech

__all__ = ["ESPEAK", "ESPEAK_MISSING", "SAMPLE_RATE", "cache_dir", "noise", "silence", "speech"]
