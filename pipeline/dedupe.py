"""Deduplication: drop exact copies and near-copies of an article, keep the earliest.

The same story reaches the pipeline many times: a wire story syndicated by several
outlets (new first sentence, an added footer), a newsletter re-sent with a fixed typo,
the same item in a feed and in an e-mail. Training on copies over-weights them and,
worse, leaks a test-window article into the training window through its earlier copy.

Articles are visited in keep-priority order (earliest ``date_published`` first) and
each is checked twice against the articles kept so far:

* **Exact** duplicates share a :func:`content_hash`: the sha256 of title and text after
  normalisation (Unicode NFKC, case-folded, punctuation dropped, whitespace collapsed).
* **Near** duplicates are found with MinHash + LSH (Broder 1997; Leskovec, Rajaraman &
  Ullman, *Mining of Massive Datasets*, ch. 3). An article is a set of word 5-shingles
  (every run of 5 consecutive normalised words of title + text); ``threshold`` is the
  **estimated Jaccard similarity of those shingle sets** above which two articles count
  as copies. Rewriting a run of ``r`` words replaces about ``r + 4`` shingles and adding
  ``f`` words adds about ``f``, so at 0.8 an ``N``-word copy is caught while
  ``N >= 9 (r + 4) + 4 f``: a rewritten 25-word first sentence plus a 15-word footer
  needs about 320 words. Two different articles on the same story share names and
  figures but very few 5-word runs (Jaccard well under 0.1), so they stay apart.

``datasketch`` provides both parts. Each shingle set becomes a ``MinHash`` (``num_perm``
permutations, the fixed :data:`MINHASH_SEED`, shingles hashed as UTF-8 bytes), whose
estimate has standard error ``sqrt(J(1-J)/num_perm)``, about 0.025 at J=0.8 with the
default 256 permutations. A ``MinHashLSH`` index of the kept articles returns *candidates*; its band
shape is chosen by datasketch, weighted towards recall (:data:`LSH_WEIGHTS`). Candidates
are approximate, so each is *verified* with ``MinHash.jaccard`` against ``threshold``
before an article is declared a copy: LSH only decides which pairs get compared.

An article of at most ``shingle`` words is a single shingle (all its words), so a short
item is a near copy only of one with the very same word sequence (e.g. words moved
between title and text); an article with no words at all is compared by exact hash only.

Grouping is greedy ("leader" clustering) rather than transitive: an article is compared
only with articles already kept (only those enter the LSH index), so every dropped
article is itself similar to the one it is recorded against, and a chain A~B~C of
gradual edits never merges A with a C it does not resemble.
"""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, time, timezone
from typing import Any, Literal

import numpy as np
from datasketch import MinHash, MinHashLSH

from pipeline.article import Article

log = logging.getLogger(__name__)

MINHASH_SEED = 20240603
"""Fixed seed of the MinHash permutations: the same article always gets the same
signature, so runs are reproducible and signatures could be stored and compared later."""
DEFAULT_NUM_PERM = 256
"""MinHash permutations when a caller does not choose: standard error of the similarity
estimate about 0.025 at J=0.8. The pipeline's dedupe stage and the ingestion service
both default to it."""
LSH_WEIGHTS = (0.05, 0.95)
"""``(false positive, false negative)`` weights for datasketch's choice of LSH bands. A
missed candidate is a copy left in the data, a spurious one costs one signature
comparison, so recall comes first: with 128 permutations a pair exactly at the 0.8
threshold becomes a candidate with probability about 0.95 (datasketch's default, equal
weights, gives about 0.4)."""


# Everything that is neither a word character nor whitespace is punctuation here
# (\w is Unicode-aware, so accented letters and non-Latin scripts are kept).
_PUNCTUATION = re.compile(r"[^\w\s]+")
_UNDERSCORES = re.compile(r"_+")


def normalise_text(text: str) -> str:
    """Case-folded words separated by single spaces, punctuation replaced by spaces.

    NFKC first, so a non-breaking space, a full-width letter or a ligature compares
    equal to its plain form. Punctuation becomes a space rather than vanishing, so
    ``"rose.Shares"`` and ``"rose. Shares"`` normalise alike.
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    text = _UNDERSCORES.sub(" ", _PUNCTUATION.sub(" ", text))
    return " ".join(text.split())


def hash_title_and_text(title: str, text: str) -> str:
    """sha256 hex digest of the normalised title and text (see :func:`content_hash`)."""
    # A newline cannot survive normalisation, so it separates the two unambiguously:
    # ("a b", "c") and ("a", "b c") hash differently.
    normalised = f"{normalise_text(title)}\n{normalise_text(text)}"
    return hashlib.sha256(normalised.encode("utf-8")).hexdigest()


def content_hash(article: Article) -> str:
    """sha256 of the article's normalised title + text: equal for exact copies that
    differ only in case, whitespace or punctuation."""
    return hash_title_and_text(article.title, article.text)


def shingles(article: Article, size: int = 5) -> set[str]:
    """The article's word ``size``-shingles over its normalised title followed by text.

    An article shorter than ``size`` words is one shingle (all its words), so short
    items can still match; an article without words has no shingles.
    """
    words = f"{normalise_text(article.title)} {normalise_text(article.text)}".split()
    if len(words) <= size:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i:i + size]) for i in range(len(words) - size + 1)}


@dataclass(frozen=True)
class Duplicate:
    """A dropped article and the kept article it copies."""

    article: Article
    index: int
    """Position of the dropped article in the input."""
    duplicate_of: Article
    kept_index: int
    """Position of the kept article in the input."""
    kind: Literal["exact", "near"]
    similarity: float
    """1.0 for an exact copy; else the MinHash estimate of the shingle-set Jaccard."""


@dataclass
class DedupeResult:
    kept: list[Article]
    """The articles kept, in input order."""
    duplicates: list[Duplicate]
    """One entry per dropped article, in input order."""

    @property
    def exact_count(self) -> int:
        return sum(d.kind == "exact" for d in self.duplicates)

    @property
    def near_count(self) -> int:
        return sum(d.kind == "near" for d in self.duplicates)


def _published_utc(article: Article) -> datetime | None:
    """``date_published`` as an aware UTC datetime: a date is its midnight, and a naive
    datetime is read as UTC (the sources normalise to UTC; old records have no zone)."""
    published = article.date_published
    if published is None:
        return None
    if not isinstance(published, datetime):
        published = datetime.combine(published, time())
    if published.tzinfo is None:
        return published.replace(tzinfo=timezone.utc)
    return published.astimezone(timezone.utc)


def keep_priority(articles: Sequence[Article]) -> list[int]:
    """Input positions, earliest ``date_published`` first; ties in input order.

    Undated articles come after all dated ones (in input order): a copy with a known
    date is provably that early, an undated one is not. This is a total order, so the
    article kept from a group never depends on which pairs happened to be compared.
    """
    far_future = datetime.max.replace(tzinfo=timezone.utc)

    def key(index: int) -> tuple[bool, datetime, int]:
        published = _published_utc(articles[index])
        return (published is None, published or far_future, index)

    return sorted(range(len(articles)), key=key)


def _lsh_index(threshold: float, num_perm: int) -> MinHashLSH:
    """An empty datasketch LSH index for MinHashes of ``num_perm`` values, tuned for
    ``threshold`` with :data:`LSH_WEIGHTS`.

    For thresholds so close to 1 that datasketch's optimiser picks a single band (which
    it then refuses), the bands are set explicitly: a pair that passes verification
    differs in at most ``m`` signature positions, so with ``m + 1`` bands (at least 2)
    one band of such a pair is identical and every such pair is a candidate.
    """
    try:
        return MinHashLSH(threshold=threshold, num_perm=num_perm, weights=LSH_WEIGHTS)
    except ValueError:
        # Same arithmetic as MinHash.jaccard: equal positions / num_perm >= threshold.
        max_differing = max(m for m in range(num_perm) if (num_perm - m) / num_perm >= threshold)
        bands = max(2, max_differing + 1)
        return MinHashLSH(num_perm=num_perm, params=(bands, num_perm // bands))


class NearDuplicateIndex:
    """MinHash signatures of kept articles, queried by LSH and verified on the full
    signature: the one near-copy test of the product (the pipeline's :func:`deduplicate`
    and the ingestion service's index over everything it stored).

    Keys are the caller's (input positions, store ids). Signatures are plain
    ``numpy.uint64`` arrays (:meth:`signature_values`), so a store can keep them and
    rebuild the index without re-hashing any text (:meth:`add_values`).
    """

    def __init__(self, threshold: float = 0.8, num_perm: int = DEFAULT_NUM_PERM,
                 shingle: int = 5):
        if not 0 < threshold <= 1:
            raise ValueError(f"threshold is a Jaccard similarity in (0, 1], got {threshold}")
        if shingle < 1:
            raise ValueError(f"shingle must be >= 1 word, got {shingle}")
        if num_perm < 2:
            raise ValueError(f"num_perm must be >= 2 (LSH needs two bands), got {num_perm}")
        self.threshold, self.num_perm, self.shingle = threshold, num_perm, shingle
        # Copies of one MinHash share its permutations instead of regenerating them
        # (what MinHash.bulk does).
        self._empty = MinHash(num_perm=num_perm, seed=MINHASH_SEED)
        self.lsh = _lsh_index(threshold, num_perm)
        self._signatures: dict[int, MinHash] = {}

    def __len__(self) -> int:
        return len(self._signatures)

    def signature(self, article: Article) -> MinHash | None:
        """The article's MinHash; None for an article without words (exact hash only)."""
        shingle_set = shingles(article, self.shingle)
        if not shingle_set:
            return None
        minhash = self._empty.copy()
        minhash.update_batch(s.encode("utf-8") for s in shingle_set)
        return minhash

    def nearest(self, minhash: MinHash) -> tuple[int, float] | None:
        """(key, similarity) of the indexed article ``minhash`` copies, the most similar
        one at or above ``threshold``; ties go to the smallest key (the earliest kept)."""
        best = None
        # LSH candidates are approximate: verify each on the full signature.
        for key in sorted(self.lsh.query(minhash)):
            similarity = minhash.jaccard(self._signatures[key])
            if similarity >= self.threshold and (best is None or similarity > best[1]):
                best = (key, similarity)
        return best

    def add(self, key: int, minhash: MinHash) -> None:
        self.lsh.insert(key, minhash)
        self._signatures[key] = minhash

    @staticmethod
    def signature_values(minhash: MinHash) -> bytes:
        """The signature as bytes, for storage beside the article."""
        return minhash.hashvalues.astype(np.uint64).tobytes()

    def add_values(self, key: int, raw: bytes) -> bool:
        """Index a stored signature; False (skipped) when it has another length."""
        values = np.frombuffer(raw, dtype=np.uint64)
        if len(values) != self.num_perm:
            return False
        self.add(key, MinHash(num_perm=self.num_perm, seed=MINHASH_SEED,
                              hashvalues=values.copy(), scheme=self._empty.scheme))
        return True


def deduplicate(
    articles: Sequence[Article],
    threshold: float = 0.8,
    num_perm: int = DEFAULT_NUM_PERM,
    shingle: int = 5,
) -> DedupeResult:
    """Drop exact and near-duplicate articles, keeping the earliest copy of each.

    ``threshold``: estimated Jaccard similarity of word ``shingle``-shingles (0 < t <= 1)
    at or above which an article is a near-copy of a kept one. ``num_perm``: MinHash
    signature length, at least 2 (more = more precise estimate, slower). An article with
    no words is only ever an exact duplicate.
    """
    index = NearDuplicateIndex(threshold, num_perm, shingle)
    kept_by_hash: dict[str, int] = {}
    duplicate_at: dict[int, Duplicate] = {}

    for position in keep_priority(articles):
        article = articles[position]
        digest = content_hash(article)
        if digest in kept_by_hash:
            original = kept_by_hash[digest]
            duplicate_at[position] = Duplicate(
                article, position, articles[original], original, "exact", 1.0)
            continue
        minhash = index.signature(article)
        if minhash is not None:
            near = index.nearest(minhash)
            if near is not None:
                original, similarity = near
                duplicate_at[position] = Duplicate(
                    article, position, articles[original], original, "near", similarity)
                continue
            index.add(position, minhash)
        kept_by_hash[digest] = position

    result = DedupeResult(
        kept=[a for i, a in enumerate(articles) if i not in duplicate_at],
        duplicates=[duplicate_at[i] for i in sorted(duplicate_at)],
    )
    log.info("dedupe: %d articles, %d kept, %d exact and %d near duplicates dropped "
             "(threshold %.2f, %d bands x %d rows)", len(articles), len(result.kept),
             result.exact_count, result.near_count, threshold, index.lsh.b, index.lsh.r)
    return result


LABEL_FIELDS = ("signal", "gpt_signal")


def carry_labels_from_duplicates(result: DedupeResult) -> tuple[list[Article], dict[str, int]]:
    """The kept articles, each given the labels of its dropped copies where it has none.

    The earliest copy is kept for its date, but a later copy may be the one that was
    labelled (an annotated archive re-filing a wire story): dropping that label would
    lose accepted data. When copies disagree, the kept copy's own label stands (the
    disagreement is counted); among dropped copies the first one in input order wins.
    """
    positions = {id(article): i for i, article in enumerate(result.kept)}
    updates: dict[int, dict[str, Any]] = {}
    counts = {"labels_carried": 0, "label_conflicts": 0}
    for duplicate in result.duplicates:
        position = positions[id(duplicate.duplicate_of)]
        kept = result.kept[position]
        pending = updates.setdefault(position, {})
        for name in LABEL_FIELDS:
            theirs = getattr(duplicate.article, name)
            mine = pending.get(name, getattr(kept, name))
            if theirs is None:
                continue
            if mine is None:
                pending[name] = theirs
                counts["labels_carried"] += 1
            elif mine != theirs:
                counts["label_conflicts"] += 1
                log.warning("copies disagree on %s: %r (kept, %s) vs %r (dropped %r, %s); "
                            "the kept copy's label stands", name, kept.id, mine,
                            duplicate.article.id, theirs)
    articles = [a.model_copy(update=updates[i]) if updates.get(i) else a
                for i, a in enumerate(result.kept)]
    return articles, counts
