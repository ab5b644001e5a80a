"""Answering questions about the restaurant from the FAQ entries in config.yaml."""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipeline.config import FAQEntry
from pipeline.dialog.understand.text import normalize


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
                answer = entry.answer.get(language) or next(iter(entry.answer.values()), "")
                best = FAQMatch(entry.id, answer, score)
        return best
