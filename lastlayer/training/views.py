"""Views: how two texts that form a positive pair are cut from one document.

Views (strings, so they are independent of the tokenizer):

- ``crop``: two independent random crops of ``sentences_per_crop`` consecutive sentence
  units of the document (González-Márquez, Berens & Kobak 2025).
- ``span``: two independent random spans of 10–50 % of the first 256 words (Contriever's
  ``randomcrop``, on whitespace words instead of tokens).
- ``dropout``: one crop passed twice; the model's dropout (train mode) makes the two
  embeddings differ (SimCSE). Decoder LMs need dropout switched on for this
  (``lastlayer.training.objectives``).

Which maker an ``objective.kind`` uses, and with which settings, is said once, by its
objective in ``lastlayer.training.objectives.OBJECTIVES``; ``make_views`` lives there too.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass

# A sentence ends at . ! or ? followed by whitespace and then an ASCII uppercase letter, a
# digit, a quote or an opening bracket. Deliberately simple: it misses lowercase starts and
# non-ASCII capitals and splits after abbreviations like "Dr. Smith"; the unit normalisation
# below (merge short, cut long) absorbs most of that.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'“‘(\[])")
_WORD = re.compile(r"\S+")

Span = tuple[int, int]  # [start, end) character offsets into the document


@dataclass
class ViewStats:
    """Counters filled while making views; the trainer reports them.

    Attributes:
        documents: Documents turned into a pair of views.
        sentence_crops: Documents whose views are sentence-unit crops.
        token_span_fallbacks: ``crop`` documents too short for two different sentence
            crops, which got word-span views instead (:func:`span_views`).
        dropped_empty: Empty (or whitespace-only) documents skipped by ``make_views``.
        whole_doc_fallbacks: ``dropout`` documents with fewer units than one crop needs,
            whose view is the start of the document.
    """

    documents: int = 0
    sentence_crops: int = 0
    token_span_fallbacks: int = 0
    dropped_empty: int = 0
    whole_doc_fallbacks: int = 0


# ------------------------------------------------------------------------ sentence units


def split_sentences(text: str, min_chars: int = 100, max_chars: int = 250) -> list[str]:
    """Split a document into sentence units of about ``min_chars``–``max_chars`` characters.

    Sentences end at ``[.!?]`` followed by whitespace and an uppercase ASCII letter, a digit,
    a quote or an opening bracket. They are then normalised into units:

    1. A unit shorter than ``min_chars`` is merged with the following sentence (repeatedly).
       A short trailing remainder is merged into the previous unit.
    2. A unit longer than ``max_chars`` is cut at word boundaries into the fewest pieces of
       at most ``max_chars`` characters, of roughly equal length (so 260 characters become
       two of ~130, not 250 + 10). A single word longer than ``max_chars`` is cut hard.

    Units are exact substrings of ``text`` (original whitespace kept inside a unit), so
    consecutive units can be re-joined by slicing the document.

    Args:
        text: The document.
        min_chars: Target minimum unit length (paper: 100).
        max_chars: Hard maximum unit length (paper: 250).

    Returns:
        The units in document order; ``[]`` for an empty document.
    """
    return [text[s:e] for s, e in _unit_spans(text, min_chars, max_chars)]


def _unit_spans(text: str, min_chars: int, max_chars: int) -> list[Span]:
    if not 0 < min_chars <= max_chars:
        raise ValueError(f"need 0 < min_chars <= max_chars, got {min_chars}, {max_chars}")
    # 1. sentences: the stretches between sentence-end whitespace, trimmed to non-space.
    sentences: list[Span] = []
    start = 0
    for m in [*_SENTENCE_END.finditer(text), None]:
        end = m.start() if m else len(text)
        words = list(_WORD.finditer(text, start, end))
        if words:
            sentences.append((words[0].start(), words[-1].end()))
        start = m.end() if m else len(text)

    # 2. merge short units with the following sentence.
    merged: list[Span] = []
    cur: Span | None = None
    for s, e in sentences:
        cur = (cur[0], e) if cur else (s, e)
        if cur[1] - cur[0] >= min_chars:
            merged.append(cur)
            cur = None
    if cur:  # a short tail joins the previous unit; step 3 re-balances if that is too long
        merged[-1:] = [(merged[-1][0], cur[1])] if merged else [cur]

    # 3. cut long units at word boundaries.
    units: list[Span] = []
    for s, e in merged:
        units.extend(_cut(text, s, e, max_chars) if e - s > max_chars else [(s, e)])
    return units


def _cut(text: str, s: int, e: int, max_chars: int) -> list[Span]:
    """Cut ``text[s:e]`` at word boundaries into pieces <= max_chars of about equal length."""
    target = (e - s) / math.ceil((e - s) / max_chars)  # equal share of the fewest pieces
    pieces: list[Span] = []
    cur: Span | None = None
    for m in _WORD.finditer(text, s, e):
        ws, we = m.span()
        while we - ws > max_chars:  # one "word" longer than a unit (URL, sequence): hard cut
            if cur:
                pieces.append(cur)
                cur = None
            pieces.append((ws, ws + max_chars))
            ws += max_chars
        # Cut before this word if its middle lies past the next equal-share boundary
        # (absolute positions, so rounding does not pile up into a tiny last piece), or if
        # it would overflow max_chars.
        boundary = s + (len(pieces) + 1) * target
        if cur and ((ws + we) / 2 > boundary or we - cur[0] > max_chars):
            pieces.append(cur)
            cur = None
        cur = (cur[0], we) if cur else (ws, we)
    if cur:
        pieces.append(cur)
    return pieces


# ------------------------------------------------------------------------------ views


def crop_views(
    doc: str,
    rng: random.Random,
    sentences_per_crop: int = 2,
    min_chars: int = 100,
    max_chars: int = 250,
    stats: ViewStats | None = None,
) -> tuple[str, str]:
    """Two independent random crops of ``sentences_per_crop`` consecutive sentence units.

    Each view is ``doc[start of unit i : end of unit i + sentences_per_crop - 1]`` with ``i``
    drawn uniformly and independently for the two views, as in the paper; so the two views
    coincide with probability ``1 / (n_units - sentences_per_crop + 1)``.

    Short documents: a document with fewer than ``sentences_per_crop + 1`` units has at
    most one possible sentence crop, so it cannot give two different ones. It falls back
    to :func:`span_views` on its words (two independent random word spans) and is counted
    in ``stats.token_span_fallbacks``.

    Args:
        doc: A non-empty document.
        rng: Source of randomness (seeded by the caller for reproducibility).
        sentences_per_crop: Consecutive units per crop (paper: 2).
        min_chars: Sentence-unit minimum, see :func:`split_sentences`.
        max_chars: Sentence-unit maximum, see :func:`split_sentences`.
        stats: Counters to update, if given.

    Returns:
        ``(view_a, view_b)``, both substrings of ``doc``.
    """
    units, n_starts = _crop_starts(doc, sentences_per_crop, min_chars, max_chars, stats)
    if n_starts < 2:
        if stats is not None:
            stats.token_span_fallbacks += 1
        return span_views(doc, rng)
    if stats is not None:
        stats.sentence_crops += 1
    a, b = rng.randrange(n_starts), rng.randrange(n_starts)
    return _join(doc, units, a, sentences_per_crop), _join(doc, units, b, sentences_per_crop)


def span_views(
    doc: str,
    rng: random.Random,
    min_ratio: float = 0.1,
    max_ratio: float = 0.5,
    max_words: int = 256,
    stats: ViewStats | None = None,
) -> tuple[str, str]:
    """Two independent random word spans (Contriever's ``randomcrop``).

    The document is cut to its first ``max_words`` whitespace-separated words; each view is
    a random contiguous span of ``max(1, int(n_words * ratio))`` words, ``ratio`` drawn
    uniformly from ``[min_ratio, max_ratio]``, at a uniform random start. Contriever crops
    tokenizer tokens; we crop whitespace words so the views stay text (substrings of the
    document, original spacing kept) and do not depend on the tokenizer.

    Args:
        doc: A non-empty document.
        rng: Source of randomness.
        min_ratio: Smallest span, as a fraction of the (capped) word count (Contriever 0.1).
        max_ratio: Largest span fraction (Contriever 0.5).
        max_words: Words of the document considered (Contriever: a 256-token chunk).
        stats: Counters to update, if given.

    Returns:
        ``(view_a, view_b)``.
    """
    _check_doc(doc)
    if not 0 < min_ratio <= max_ratio <= 1:
        raise ValueError(f"need 0 < min_ratio <= max_ratio <= 1, got {min_ratio}, {max_ratio}")
    if max_words < 1:
        raise ValueError(f"max_words must be >= 1, got {max_words}")
    words = [m.span() for _, m in zip(range(max_words), _WORD.finditer(doc), strict=False)]
    if stats is not None:
        stats.documents += 1

    def one_span() -> str:
        length = max(1, int(len(words) * rng.uniform(min_ratio, max_ratio)))
        start = rng.randint(0, len(words) - length)
        return doc[words[start][0] : words[start + length - 1][1]]

    return one_span(), one_span()


def dropout_views(
    doc: str,
    rng: random.Random,
    sentences_per_crop: int = 2,
    min_chars: int = 100,
    max_chars: int = 250,
    stats: ViewStats | None = None,
) -> tuple[str, str]:
    """SimCSE views: one random crop, returned twice.

    The crop is ``sentences_per_crop`` consecutive sentence units, as in :func:`crop_views`
    (only one crop is needed here, so ``sentences_per_crop`` units are enough). A document
    with fewer units falls back to its first ``max_chars * sentences_per_crop`` characters
    (cut at a word boundary) and is counted in ``stats.whole_doc_fallbacks``. The two
    embeddings differ only through dropout in the model, which must be in train mode
    (see :func:`enable_dropout` for models that ship with dropout 0).

    Args:
        doc: A non-empty document.
        rng: Source of randomness.
        sentences_per_crop: Consecutive units in the crop.
        min_chars: Sentence-unit minimum, see :func:`split_sentences`.
        max_chars: Sentence-unit maximum, see :func:`split_sentences`.
        stats: Counters to update, if given.

    Returns:
        ``(view, view)``.
    """
    units, n_starts = _crop_starts(doc, sentences_per_crop, min_chars, max_chars, stats)
    if n_starts >= 1:
        if stats is not None:
            stats.sentence_crops += 1
        view = _join(doc, units, rng.randrange(n_starts), sentences_per_crop)
    else:
        if stats is not None:
            stats.whole_doc_fallbacks += 1
        view = _head(doc, max_chars * sentences_per_crop)
    return view, view


def _crop_starts(
    doc: str, sentences_per_crop: int, min_chars: int, max_chars: int, stats: ViewStats | None
) -> tuple[list[Span], int]:
    """A document's sentence units and how many crops of ``sentences_per_crop`` fit in them."""
    _check_doc(doc)
    if sentences_per_crop < 1:
        raise ValueError(f"sentences_per_crop must be >= 1, got {sentences_per_crop}")
    units = _unit_spans(doc, min_chars, max_chars)
    if stats is not None:
        stats.documents += 1
    return units, len(units) - sentences_per_crop + 1


def _join(doc: str, units: list[Span], i: int, n: int) -> str:
    return doc[units[i][0] : units[i + n - 1][1]]


def _head(doc: str, limit: int) -> str:
    """The longest run of whole words from the start of ``doc`` within ``limit`` chars."""
    words = list(_WORD.finditer(doc))
    start, end = words[0].start(), words[0].start() + limit
    last = max((m.end() for m in words if m.end() <= end), default=end)  # hard cut 1st word
    return doc[start:last]


def _check_doc(doc: str) -> None:
    if not isinstance(doc, str) or not doc.strip():
        raise ValueError("cannot make views of an empty document (make_views skips them)")
