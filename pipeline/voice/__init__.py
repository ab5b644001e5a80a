"""The voice core, one concept per module: turn-taking (:mod:`.turns`), backchannels said over the
bot (:mod:`.backchannel`)."""
