"""What the voice core says on its own, outside the agent: the apology, the busy message, the lines
at the call's limits (too long, gone quiet), after a failed transfer, and the acknowledgement that
starts a late reply."""

from __future__ import annotations

#: said when a turn could not be heard or voiced; it asks again, so the call never goes silent
APOLOGY = {
    "ja": "申し訳ございません、もう一度お願いできますか。",
    "en": "I'm sorry, could you say that again?",
}
#: said when a reply is late (``tts.ack_after_s``): the caller knows they were heard; rendered at start-up
ACK = {
    "ja": "はい。",
    "en": "Okay.",
}
#: said instead of answering when every line is taken (``server.max_calls``); rendered at start-up
BUSY = {
    "ja": "ただいま大変混み合っております。恐れ入りますが、しばらくしてからおかけ直しください。",
    "en": "We're sorry, all our lines are busy right now. Please call again a little later.",
}
#: what the bot says on its own when the call is too long or the caller has gone quiet
LIMIT_GOODBYE = {
    "ja": "申し訳ございません、通話時間の上限となりましたので、お電話を終了させていただきます。",
    "en": "I'm sorry, we've reached the time limit for this call, so I have to end it now.",
}
SILENCE_PROMPT = {
    "ja": "もしもし、お電話聞こえておりますでしょうか。",
    "en": "Hello, can you hear me?",
}
SILENCE_GOODBYE = {
    "ja": "お電話が遠いようですので、失礼させていただきます。",
    "en": "I can't hear you, so I'll end the call now.",
}
#: how a closing line ends: whether the caller's booking stands or they need to call back
KEPT = {
    "ja": "ご予約は承っておりますので、ご安心ください。お電話ありがとうございました。",
    "en": "Your reservation is confirmed. Thank you for calling.",
}
CALL_AGAIN = {
    "ja": "お手数ですが、もう一度おかけ直しください。お電話ありがとうございました。",
    "en": "Please call us again to finish your booking. Thank you for calling.",
}
#: said when the call could not be put through to a person after the bot said it would be
TRANSFER_FAILED = {
    "ja": "申し訳ございません、ただいまおつなぎできませんでした。お手数ですが、{phone}までおかけ直しください。",
    "en": "I'm sorry, I couldn't put you through. Please call us at {phone}.",
}
#: what the silence prompt re-asks when the bot's last line gives nothing to repeat
REASK = {
    "ja": "ご用件をお聞かせいただけますか。",
    "en": "How can I help you?",
}
