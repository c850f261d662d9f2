"""Pseudo tags: the tag list a caption implies, for stage one of Mithun et al. (2018).

The rule, deterministic and language-agnostic in its mechanics:

1. NFKC-normalise and lower-case the sentence;
2. take the words: runs of letters, joined by inner apostrophes or hyphens
   (digits, punctuation and symbols are dropped);
3. strip a possessive ``'s``; drop words of one letter and English stop words
   (``STOP_WORDS``: articles, pronouns, auxiliaries, prepositions, conjunctions
   and a few fillers common in captions such as "there" or "some");
4. keep the first occurrence of each word, in sentence order.

``"A man's red bicycle is leaning against the wall."`` gives
``["man", "red", "bicycle", "leaning", "wall"]``.
"""

from __future__ import annotations

import re
import unicodedata

_WORD = re.compile(r"[^\W\d_]+(?:['’\-][^\W\d_]+)*")

STOP_WORDS = frozenset(
    [
        "a",
        "an",
        "the",
        "this",
        "that",
        "these",
        "those",
        "there",
        "here",
        "some",
        "any",
        "each",
        "every",
        "all",
        "both",
        "either",
        "neither",
        "no",
        "not",
        "nor",
        "and",
        "or",
        "but",
        "so",
        "yet",
        "if",
        "then",
        "than",
        "as",
        "because",
        "while",
        "although",
        "though",
        "i",
        "me",
        "my",
        "mine",
        "we",
        "us",
        "our",
        "ours",
        "you",
        "your",
        "yours",
        "he",
        "him",
        "his",
        "she",
        "her",
        "hers",
        "it",
        "its",
        "they",
        "them",
        "their",
        "theirs",
        "one",
        "ones",
        "someone",
        "something",
        "somebody",
        "anyone",
        "anything",
        "is",
        "are",
        "was",
        "were",
        "be",
        "been",
        "being",
        "am",
        "do",
        "does",
        "did",
        "doing",
        "done",
        "have",
        "has",
        "had",
        "having",
        "will",
        "would",
        "shall",
        "should",
        "can",
        "could",
        "may",
        "might",
        "must",
        "of",
        "in",
        "on",
        "at",
        "to",
        "from",
        "by",
        "with",
        "without",
        "into",
        "onto",
        "over",
        "under",
        "above",
        "below",
        "up",
        "down",
        "out",
        "off",
        "near",
        "next",
        "beside",
        "besides",
        "between",
        "among",
        "through",
        "across",
        "along",
        "around",
        "behind",
        "before",
        "after",
        "during",
        "against",
        "toward",
        "towards",
        "upon",
        "within",
        "about",
        "via",
        "per",
        "like",
        "what",
        "which",
        "who",
        "whom",
        "whose",
        "when",
        "where",
        "why",
        "how",
        "very",
        "too",
        "also",
        "just",
        "only",
        "quite",
        "rather",
        "really",
        "much",
        "many",
        "more",
        "most",
        "few",
        "several",
        "other",
        "another",
        "such",
        "own",
        "same",
        "s",
        "t",
    ]
)


def sentence_words(sentence: str) -> list[str]:
    """Lower-cased words of a sentence, possessive 's removed (steps 1-3 before filtering)."""
    text = unicodedata.normalize("NFKC", sentence).lower()
    words = []
    for word in _WORD.findall(text):
        word = word.replace("’", "'")
        if word.endswith("'s"):
            word = word[:-2]
        words.append(word)
    return words


def pseudo_tags(sentence: str) -> list[str]:
    """Content words of ``sentence`` as a tag list (see the module docstring)."""
    seen: dict[str, None] = {}
    for word in sentence_words(sentence):
        if len(word) > 1 and word not in STOP_WORDS:
            seen.setdefault(word, None)
    return list(seen)
