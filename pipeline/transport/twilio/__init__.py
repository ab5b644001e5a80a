"""Twilio: the webhook's signature and the media stream's one-time tokens (:mod:`.auth`), the media
websocket as FastRTC should see it (:mod:`.media`), and the REST API for transfers and texts (:mod:`.rest`)."""
