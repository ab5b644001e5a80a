"""The bot's sentences, one module per language; tables keyed by language for the dialog code."""

from __future__ import annotations

from pipeline.dialog.phrases import en, ja

_LANGS = {"ja": ja, "en": en}

QUESTIONS = {k: m.QUESTIONS for k, m in _LANGS.items()}
HINTS = {k: m.HINTS for k, m in _LANGS.items()}
PHRASES = {k: m.PHRASES for k, m in _LANGS.items()}
LABELS = {k: m.LABELS for k, m in _LANGS.items()}
MESSAGES = {k: m.MESSAGES for k, m in _LANGS.items()}


def stock_phrases(lang: str) -> list[str]:
    """Every question, hint and phrase the rules agent says in ``lang``, placeholders and all."""
    return [text for table in (QUESTIONS, HINTS, PHRASES) for text in table.get(lang, {}).values() if text]
