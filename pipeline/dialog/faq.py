"""Answering questions about the restaurant from the FAQ entries in config.yaml."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipeline.config import FAQEntry
from pipeline.dialog.understand.text import normalize

#: a Japanese question: 「…ありますか」「…教えてください」
_JA_QUESTION = re.compile(r"(?:か|かね|ですか|ますか|でしょうか|ください)[?？。]?$|[?？]$")


@dataclass(frozen=True)
class FAQMatch:
    id: str
    answer: str
    score: int


class FAQ:
    def __init__(self, entries: list[FAQEntry]):
        self.entries = entries

    def topics(self) -> list[str]:
        return [e.id for e in self.entries]

    def match(self, question: str, language: str) -> FAQMatch | None:
        """The entry whose keywords (in either language) the question mentions most; None if none does."""
        text = normalize(question).lower()
        if not text:
            return None
        best: FAQMatch | None = None
        for entry in self.entries:
            score = 0
            for words in entry.keywords.values():
                for word in words:
                    w = word.lower()
                    if re.fullmatch(r"[a-z ]+", w):
                        if re.search(rf"\b{re.escape(w)}\b", text):
                            score += len(w)
                    elif w in text:
                        score += len(w) * 2  # one kanji carries about as much as two latin letters
            # an entry can be named by its id too ("parking", "hours")
            if re.search(rf"\b{re.escape(entry.id.lower())}\b", text):
                score += len(entry.id)
            if score and (best is None or score > best.score):
                best = FAQMatch(entry.id, self._answer(entry, language), score)
        return best or self._by_sound(text, language)

    @staticmethod
    def _answer(entry: FAQEntry, language: str) -> str:
        return entry.answer.get(language) or next(iter(entry.answer.values()), "")

    def _by_sound(self, text: str, language: str) -> FAQMatch | None:
        """A Japanese question whose words whisper wrote in near-sounding kanji (「通社長がありますか」 for
        駐車場はありますか): the entry with a keyword of four morae or more within a slip per two and a half
        morae of a stretch of the question's reading. Only a question: a request or an answer is no FAQ."""
        if not _JA_QUESTION.search(text):
            return None
        from pipeline.dialog.understand.sound import morae, nearest, reading

        heard = morae(reading(text[:80]))
        best: tuple[float, FAQEntry] | None = None
        for entry in self.entries:
            for word in entry.keywords.get("ja", []):
                target = reading(word)
                if len(morae(target)) < 4:
                    continue
                d = nearest(heard, target, 0.4 * len(morae(target)), lambda _after: True)
                if d is not None and (best is None or d < best[0]):
                    best = (d, entry)
        return FAQMatch(best[1].id, self._answer(best[1], language), 1) if best else None
