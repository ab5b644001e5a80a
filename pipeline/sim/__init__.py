"""Simulated parties for testing and measuring the bot: callers (voices, personas, a phone line, a
Twilio media-stream client), loopback servers (an OpenAI-compatible one scripted per request), the
test-model builder, and the commands built on them (``voicebot eval``, the fault soak).

Nothing here is imported by the product's call path; the modules import what they need lazily, so
``import pipeline.sim`` is cheap.
"""
