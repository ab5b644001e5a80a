"""How a call reaches the voice core: FastRTC (:mod:`.fastrtc`, browser and phone), Twilio's parts
(:mod:`.twilio`), and the line cap shared by the server's workers (:mod:`.lines`)."""
