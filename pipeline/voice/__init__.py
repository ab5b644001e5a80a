"""The voice core, one concept per module: a call's turns (:mod:`.call`), what calls share
(:mod:`.runtime`), a turn's timings (:mod:`.timeline`), what the caller heard (:mod:`.playback`), the
lines said outside the agent (:mod:`.phrases`), listening to the caller (:mod:`.listener`, with
:mod:`.detector`, :mod:`.turns` and :mod:`.backchannel`), and the reply prepared ahead
(:mod:`.speculation`). No transport here: FastRTC and Twilio are :mod:`pipeline.transport`'s."""
