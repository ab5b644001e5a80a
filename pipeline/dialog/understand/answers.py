"""Answers that are not values: yes and no, a request or none, a correction."""

from __future__ import annotations

import logging
import re

from pipeline.dialog.understand.text import normalize

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- yes / no

_YES_DESPITE_NEG_RE = re.compile(
    r"間違いない|間違いありません|間違いございません|問題ない|問題ありません|問題ございません|\bno problem\b|\bno worries\b"
    r"|\bnot a problem\b|\bwhy not\b|\bnothing wrong\b"
)
_NEUTRAL_RE = re.compile(
    r"\bnot sure\b|\bi don't know\b|\bno idea\b|わかりません|分かりません|わからない|分からない"
)
_NO_RE = re.compile(
    r"(?:大丈夫|そう|正しい|合って|あって|いい|良い)?\s*(?:じゃない|ではない|じゃありません|ではありません|じゃないです|でない)"
    r"|合ってない|合っていない|合っていません|あってない|あっていません|正しくない|正しくありません"
    r"|いいえ|いえ|いや(?!ー|、?お願い)|違[いうっ]|ちが[いうっ]|間違|まちが|ううん|だめ|ダメ|駄目|嫌|ノー"
    r"|\b(?:that's |that is |it's |it is )?not (?:right|correct|quite|it|really|that|ok|okay|good|fine)\b|\bthat's not\b"
    r"|\bno\b|\bnope\b|\bnah\b|\bwrong\b|\bincorrect\b"
    r"|\bisn't (?:right|correct)\b|\bdon't\b|\bnegative\b"
)
_YES_RE = re.compile(
    r"はい|はーい|ええ(?!っ?と|ーと)|うん|お願い|大丈夫|そうです|そうだ|そう(?:ですね|ね)?$|^そう|合って|あってます|あっています"
    r"|正しい|その通り|そのとおり|いいです|いいですよ|良いです|いいよ|オッケー|オーケー|了解|承知|かしこまりました|それで"
    r"|\byes\b|\byeah\b|\byep\b|\byup\b|\bcorrect\b|\bright\b|\bsure\b|\bplease\b|\bperfect\b|\bsounds good\b|\bgo ahead\b"
    r"|\bfine\b|\bgreat\b|\balright\b|\ball right\b|\babsolutely\b|\bexactly\b|\bdefinitely\b|\bof course\b|\bok\b|\bokay\b"
    r"|\bconfirm(?:ed)?\b|\bgood\b|\bthat's it\b|\bthat works\b|\byes please\b"
)


_REPEAT_RE = re.compile(
    r"もう一度|もう1度|もういちど|もう一回|もう1回|繰り返|聞こえ|聞き取れ|なんて|何て"
    r"|\brepeat\b|\bpardon\b|\bsay (?:that|it) again\b|\bcome again\b|\bdidn't (?:catch|hear)\b|\bone more time\b"
)


def parse_yes_no(text: str) -> bool | None:
    t = normalize(text).lower()
    # "もう一度お願いします" is a request to hear the read-back again, not a yes
    if not t or _REPEAT_RE.search(t):
        return None
    yes = False
    if _YES_DESPITE_NEG_RE.search(t):
        yes = True
        t = _YES_DESPITE_NEG_RE.sub(" ", t)
    t = _NEUTRAL_RE.sub(" ", t)
    no = bool(_NO_RE.search(t))
    t = _NO_RE.sub(" ", t)
    yes = yes or bool(_YES_RE.search(t.strip()))
    if yes == no:
        return None
    return yes


# --------------------------------------------------------------------------- notes and "no requests"

_NOTE_KEYWORDS_RE = re.compile(
    r"誕生日|バースデー|バースデイ|記念日|アニバーサリー|お祝い|祝い|ケーキ|プレート|サプライズ|花束|プロポーズ"
    r"|アレルギー|アレルギ|食べられ|苦手|抜き|ベジタリアン|ヴィーガン|ビーガン|グルテン|ハラール|宗教"
    r"|窓際|窓側|窓の|個室|半個室|テラス|カウンター|座敷|掘りごたつ|ソファ|奥の席|静かな|禁煙|喫煙"
    r"|子供用|子ども用|こども用|お子様用|キッズチェア|ハイチェア|チャイルドチェア|ベビーチェア|子供椅子|子ども椅子|椅子|いす|イス"
    r"|車椅子|車いす|車イス|ベビーカー|バギー|段差|杖"
    # someone in the party said to be there (「子供が一人いるので」「…の者が1名おります」): about them
    r"|(?:の者|子供|子ども|こども|お子様|お子さん|赤ちゃん|高齢の|年配の)(?:が|は)"
    r"|(?:が|は|な)\s*(?:\d+|[一二三四五六七八九十]+|ひと|ふた)\s*(?:名|人|り)\s*(?:いる|います|いまして|いて|おります|おりまして|居)"
    r"|\bbirthday\b|\banniversar|\bcelebrat|\bcake\b|\bsurprise\b|\bproposal\b|\bpropose\b|\ballerg|\bvegetarian\b|\bvegan\b"
    r"|\bgluten\b|\bhalal\b|\bkosher\b|\bnuts?\b|\bshellfish\b|\bpeanuts?\b|\bdairy\b|\blactose\b|\bcan't eat\b|\bcannot eat\b"
    r"|\bdietary\b|\bwindow\b|\bprivate room\b|\bbooth\b|\bterrace\b|\bpatio\b|\boutside\b|\boutdoor\b|\bquiet\b"
    r"|\bhigh ?chairs?\b|\bbooster\b|\bwheelchairs?\b|\bstroller\b|\bpram\b|\bbuggy\b|\bbaby\b|\bnon-?smoking\b|\bsmoking\b"
    r"|\bcounter\b|\bcorner\b"
)
_NOTE_NEG_AFTER_RE = re.compile(
    r"^[^、。,.]{0,4}?(?:は|も|が)?\s*(?:特に|とくに)?\s*(?:ありません|ない|無い|なし|無し|ございません|いません|大丈夫|不要|いらない|要らない)"
)
_NOTE_NEG_BEFORE_RE = re.compile(
    r"\b(?:no|not|without|don't need|do not need|don't have|do not have|nobody has|no one has|none of us has|no one is|nobody is|don't)\s+(?:any\s+|a\s+|an\s+|the\s+|special\s+|food\s+)*$"
)
_CLAUSE_SPLIT_RE = re.compile(r"[、。,.!?！？]+")
_LEADING_FILLER_RE = re.compile(
    r"^(?:(?:えっと|えーっと|えーと|ええっと|ええと|あのー|あのう|うーんと|うーん)[ー、,。.\s]*"
    r"|(?:あの|その|えー|ええ|えと|まあ|あ|はい|うん|uh|um|uhm|er|erm|so|well|and|also|oh|yes|yeah|okay|ok|actually|but)(?:[ー、,。.\s]+|$))+",
    re.I,
)
_TRAILING_PLEASANTRY_RE = re.compile(
    r"(?:[、,。.\s]*(?:よろしくお願いします|よろしくお願いいたします|以上です|以上|ありがとうございます|that's all|thank you|thanks|please))+[、,。.!\s]*$",
    re.I,
)


def _note_hits(t: str) -> list[re.Match[str]]:
    hits = []
    low = t.lower()
    for m in _NOTE_KEYWORDS_RE.finditer(low):
        if _NOTE_NEG_AFTER_RE.match(low[m.end() : m.end() + 16]):
            continue
        if _NOTE_NEG_BEFORE_RE.search(low[max(0, m.start() - 40) : m.start()]):
            continue
        hits.append(m)
    return hits


def _clean_note(s: str) -> str:
    s = s.strip(" 、,。.")
    s = _LEADING_FILLER_RE.sub("", s)
    s = _TRAILING_PLEASANTRY_RE.sub("", s)
    return s.strip(" 、,。.")


def parse_note(text: str) -> str | None:
    t = normalize(text)
    if not t:
        return None
    hits = _note_hits(t)
    if not hits:
        return None
    # the request starts at the clause holding the first request word: earlier clauses are usually slots
    first = hits[0].start()
    start = 0
    for m in _CLAUSE_SPLIT_RE.finditer(t, 0, first):
        start = m.end()
    note = _clean_note(t[start:])
    return note or None


_NO_REQUEST_RE = re.compile(
    r"特に|とくに|なしで|なし|無し|ないです|ありません|ございません|大丈夫|結構です|結構|以上です|不要|いらない|要らない|いりません"
    r"|必要ない|必要ありません|何もない|なにもない|何もありません|大丈夫です|ノープロブレム"
    r"|\bno\b|\bnothing\b|\bnone\b|\bnope\b|\bnah\b|\bthat's all\b|\bthat is all\b|\bthat's it\b|\bno thanks?\b"
    r"|\bno thank you\b|\bi'm good\b|\bwe're good\b|\ball good\b|\bnot really\b|\bnothing else\b|\bno requests?\b"
    r"|\bnothing special\b|\bi'm fine\b|\bwe're fine\b"
)


def is_no_request(text: str) -> bool:
    t = normalize(text).lower()
    if not t or not _NO_REQUEST_RE.search(t):
        return False
    return parse_note(text) is None


# --------------------------------------------------------------------------- corrections

_CORRECTION_RE = re.compile(
    r"やっぱり|やっぱ|やはり|変更|変えて|変えたい|かえて|じゃなくて|じゃなく|ではなく|でなく|訂正|間違えました|間違えた|まちがえ"
    r"|言い間違|修正|直して|違いました"
    r"|\bactually\b|\bchange\b|\binstead\b|\bmake it\b|\bnot\b.*\bbut\b|\bsorry,? i meant\b|\bi meant\b|\bi mean\b"
    r"|\bcorrection\b|\bscratch that\b|\brather\b|\bmistake\b|\bswitch\b|\bmove it\b"
)


def is_correction(text: str) -> bool:
    t = normalize(text).lower()
    return bool(t and _CORRECTION_RE.search(t))


