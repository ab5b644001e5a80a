"""Dialog acts: what a caller is doing with an utterance, apart from the values it carries.

Each act is one pattern over the normalised text, Japanese and English side by side. They are
independent; the dialog policy decides which wins (a question that names a slot fills nothing, a
wait is never a failed answer, an end is confirmed before the call is dropped).
"""

from __future__ import annotations

import re

from pipeline.dialog.understand.answers import is_correction, parse_yes_no
from pipeline.dialog.understand.text import normalize

QUESTION = re.compile(
    r"[?？]|(?:ます|です|でしょう|ありません|ない|できます|いけます|ある)か|教えて|知りたい|聞きたい|"
    r"\b(?:what|when|where|how|do you|does|is there|are there|can i|can you|could you|which)\b",
    re.IGNORECASE,
)




def looks_like_question(text: str) -> bool:
    return bool(QUESTION.search(normalize(text)))


WAIT = re.compile(
    r"ちょっと待って|ちょっとお待ち|少々お待ち|少し待って|お待ちください|待ってください|待って(?:ね|て)?$|確認します|確認するので"
    r"|調べます|見てみます|手帳を|ちょっと(?:確認|調べ)"
    r"|\bhold on\b|\bwait a (?:sec(?:ond)?|moment|minute|bit)\b|\bone (?:sec(?:ond)?|moment|minute)\b|\bjust a (?:sec(?:ond)?|moment|minute)\b"
    r"|\blet me (?:check|see|look|think)\b|\bgive me a (?:sec(?:ond)?|moment|minute)\b|^wait\b",
    re.I,
)
REPEAT = re.compile(
    r"もう一度|もう1度|もういちど|もう一回|もう1回|繰り返|くりかえ|聞こえませ|聞こえなかった|聞き取れ|なんておっしゃ|何ておっしゃ|なんて言"
    r"|何て言|なんでしょう|^え[?？]?$|^はい[?？]$"
    r"|\brepeat\b|\bpardon\b|\bsay (?:that|it) again\b|\bcome again\b|\bdidn'?t (?:catch|hear|get) (?:that|it|you)\b"
    r"|\bone more time\b|\bwhat was that\b|\bwhat did you say\b|^sorry[?]?$|^what[?]?$",
    re.I,
)
CANCEL_BOOKING = re.compile(
    r"(?:予約|よやく)\S{0,6}(?:キャンセル|取り消|とりけし|取消)|(?:キャンセル|取り消し|取消し?)(?:したい|をしたい|して|をお願い|お願い|します|させて|できます|したく)"
    r"|\bcancel (?:my|our|the|a|this) (?:reservation|booking|table)\b|\b(?:want|like|need|have) to cancel\b"
    r"|\bcancel(?:ling)? (?:my|our) \w+ (?:reservation|booking)\b",
    re.I,
)
#: a wish to book, with no details yet (「予約をお願いしたいんですが」, "I'd like to make a reservation")
BOOK = re.compile(
    r"(?:予約|よやく)(?:を|が|の)?\s*(?:お願い|おねがい|したい|取りたい|とりたい|入れたい|いれたい|できます|可能|頼みたい)"
    r"|\b(?:make|book|have|get)\s+(?:a|an)\s+(?:reservation|booking|table)\b"
    r"|\b(?:like|want|need)\s+to\s+(?:book|reserve)\b|\breserve\s+a\s+table\b",
    re.I,
)
CHANGE_BOOKING = re.compile(
    r"(?:予約|よやく)(?:を|の|内容を?)?\S{0,8}(?:変更|変え|かえ|ずらし|動かし)"
    r"|予約(?:して|しており|した|を入れて|をして)(?:いる|います|おります|た|ある)?.{0,12}(?:変更|変え|ずらし)"
    r"|\b(?:change|move|modify|reschedule|update|amend) (?:my|our|the|a|this) (?:reservation|booking|table)\b"
    r"|\b(?:change|move|reschedule)\b.{0,30}\b(?:my|our) (?:reservation|booking)\b",
    re.I,
)
CHECK_BOOKING = re.compile(
    r"予約(?:内容)?(?:を|の)?(?:確認|かくにん)(?:を)?(?:したい|させて|お願い|して|できます)|予約(?:が|は)(?:取れて|入って)(?:いる|います|ます)か"
    r"|予約(?:した|して(?:いる|ます))内容"
    r"|\b(?:check|confirm|verify|look up) (?:my|our|the) (?:reservation|booking)\b|\bwhat time is (?:my|our) (?:reservation|booking)\b"
    r"|\bdo (?:i|we) have a (?:reservation|booking)\b",
    re.I,
)
PERSON = re.compile(
    r"(?:お店|店|スタッフ|人間|担当|店長|係|従業員|店員|オペレーター)(?:の)?(?:方|人|者|さん)?(?:と|に)?(?:話|はな|代わ|かわ|つな|繋)"
    r"|人(?:間)?と話したい|人に代わ|オペレーター"
    r"|\b(?:talk|speak) (?:to|with) (?:someone|somebody|a person|a human|a real person|the staff|staff|a manager|the manager|the restaurant|a member of staff)\b"
    r"|\b(?:real|actual|live) (?:person|human)\b|\boperator\b|\bhuman please\b|\btransfer me\b",
    re.I,
)
END = re.compile(
    r"さようなら|さよなら|失礼します|失礼いたします|切ります|やめます|やめておきます|やめとき|やめる|もういいです|予約はいいです"
    r"|予約(?:は)?(?:しません|しない|やめ)|予約は大丈夫|また(?:かけ|電話)し(?:ます|なおし)|かけ直します"
    r"|(?:今日|本日|今回|今)は(?:結構|けっこう)"
    r"|\bbye\b|goodbye|never ?mind|forget it|\bcancel (?:it|this|that)\b|don'?t want to (?:book|make)|\bno longer\b|hang up"
    r"|\bi'?ll call (?:back|again)\b",
    re.I,
)
NONE = re.compile(
    r"^(?:いいえ|いえ|いや)?[、,。\s]*(?:特に|とくに)?(?:ない|ないです|ありません|ございません|なし|なしで|無し|大丈夫(?:です)?|結構です|けっこうです|結構|"
    r"以上(?:です|で(?:大丈夫|結構)?|に(?:なり|な)ます|となります)?|いらないです|いらない|いりません|不要です|必要ありません|何もないです|何もありません|なにもないです|大丈夫でございます)"
    r"(?:です)?[、,。.!！\s]*(?:ありがとうございます)?[。.!！\s]*$"
    r"|^(?:いいえ|いえ|いや)[、,。.!！\s]*$"
    r"|^(?:no|nope|nah|none|nothing|no thanks?|no thank you|not really|nothing else|that'?s all|that'?s it|i'?m good|we'?re good|all good"
    r"|nothing special|no requests?|no special requests?)[\s,.!]*(?:thanks?|thank you)?[\s.!]*$",
    re.I,
)
# "予約番号はR-KTWKX8です": a reservation number as the store writes it (R- and six letters or digits)
RESERVATION_ID = re.compile(r"(?<![A-Za-z0-9])R\s*[-ー−]?\s*([A-Z0-9]{6})(?![A-Za-z0-9])")


def reservation_id(text: str) -> str | None:
    m = RESERVATION_ID.search(normalize(text))
    if m is None:
        return None
    return "R-" + m.group(1).upper()


def acts_of(text: str) -> frozenset[str]:
    """The acts one utterance performs (several can: 「いいえ、人数を変えて」 is deny and correct)."""
    t = normalize(text).lower().strip()
    acts: set[str] = set()
    if not t:
        return frozenset()
    bare = t.strip("。.!！?？、, ")
    for name, rx in (("wait", WAIT), ("repeat", REPEAT), ("cancel_booking", CANCEL_BOOKING),
                     ("change_booking", CHANGE_BOOKING), ("check_booking", CHECK_BOOKING), ("person", PERSON),
                     ("end", END), ("book", BOOK)):
        if rx.search(t):
            acts.add(name)
    if not acts & {"cancel_booking", "change_booking"}:
        from pipeline.dialog.understand.sound import booking_act_by_sound

        if (act := booking_act_by_sound(t)) is not None:
            acts.add(act)
    if NONE.search(bare) or NONE.search(t):
        acts.add("none")
    yn = parse_yes_no(t)
    if yn is True:
        acts.add("affirm")
    elif yn is False:
        acts.add("deny")
    if looks_like_question(t):
        acts.add("question")
    if is_correction(t):
        acts.add("correct")
    return frozenset(acts)


# What a listener says while the other one talks (aizuchi): it does not take the turn.
_BACKCHANNEL_WORD = (
    r"(?:は[いー]+|はいはい|ええ|え[えー]+|うん|うんうん|ふん|ふんふん|はあ|へえ|ほう|なるほど|そうですね|そうですか|そうそう|そう|"
    r"ですね|確かに|たしかに|了解|わかりました|分かりました|かしこまりました|"
    r"yeah|yes|yep|yup|uh-?huh|m+-?hm+|m+|hmm+|okay|ok|right|sure|i see|got it|alright|all right|ah|oh)"
)
_BACKCHANNEL = re.compile(rf"^(?:{_BACKCHANNEL_WORD}[、,。.!！\s]*)+$", re.IGNORECASE)


def is_backchannel(text: str) -> bool:
    """「はい」「ええ」「なるほど」, "uh-huh", "okay": a listener's word said over the bot, not a turn.
    Anything else in the words (a value, a no, a question) makes it a real interruption."""
    t = normalize(text).lower().strip()
    return bool(t) and len(t) <= 24 and bool(_BACKCHANNEL.match(t))
