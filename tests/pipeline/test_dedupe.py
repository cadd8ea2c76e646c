"""Exact and near-duplicate detection (content hash, datasketch MinHash + LSH), keeping
the earliest."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from datetime import date, datetime, timedelta, timezone

import pytest
from datasketch import MinHash, MinHashLSH

from pipeline.article import Article
from pipeline.dedupe import (
    LSH_WEIGHTS,
    MINHASH_SEED,
    content_hash,
    deduplicate,
    shingles,
)

UTC = timezone.utc

ORIGINAL_TEXT = """\
Castellan Foods has agreed to buy Orchard Lane, the organic snack maker, for $1.2bn in
cash, including debt, the two companies said on Wednesday, in the largest packaged-food
deal in North America so far this year.

The offer of $38 a share is a 31 per cent premium to Orchard Lane's closing price on
Tuesday. The board of Orchard Lane has unanimously recommended it, and the founding
Whitaker family, which controls 22 per cent of the shares, has agreed to vote in favour.

Castellan, which makes breakfast cereals and frozen meals, has been looking for growth
outside its core brands as shoppers move towards snacks sold as healthier. Orchard Lane's
dried-fruit bars and lentil crisps are stocked by most large grocery chains in the United
States and Canada, and its sales grew 18 per cent last year to $410m.

Chief executive Dana Pruitt said the acquisition would add to earnings per share in the
first full year and that Castellan expected annual cost savings of about $45m by 2026,
mostly from purchasing and distribution. She said there were no plans to close Orchard
Lane's two bakeries in Oregon.

The deal will be financed with cash on hand and a new $900m term loan arranged by two
banks. Castellan said it would pause share buybacks for eighteen months to bring its
leverage back below three times earnings before interest, tax, depreciation and
amortisation.

Orchard Lane was founded in 1998 by Ruth and Samuel Whitaker, who sold dried apples from
a farm stand outside Eugene before supplying local health-food shops. The company listed
in 2015 and has since expanded into frozen fruit and oat-based drinks, although the bars
still account for more than half of its revenue. It employs about 1,100 people.

The acquisition is Castellan's third in two years, after it bought a Mexican tortilla
maker and a Canadian frozen-pizza brand. Investors have questioned whether the company is
paying too much for growth: its shares have lagged the wider consumer-staples index by
about 12 percentage points since the start of last year, and its own cereal volumes fell
for a fifth consecutive quarter.

Under the terms of the agreement, Orchard Lane would owe Castellan a break fee of $36m if
it accepted a rival offer, while Castellan would pay $60m if regulators blocked the deal.
Lawyers for both sides expect a second request for information from the Federal Trade
Commission, which has taken a closer interest in food mergers since last year, but said
the two companies overlap in only a handful of products.

Analysts said the price was full but defensible. The deal is expected to close in the
fourth quarter, subject to antitrust approval and a vote by Orchard Lane shareholders.
Shares in Castellan fell 2 per cent in early trading, while Orchard Lane jumped 27 per cent.
"""

# A syndicating outlet rewrote the opening sentence and appended its own footer.
SYNDICATED_TEXT = ORIGINAL_TEXT.replace(
    """Castellan Foods has agreed to buy Orchard Lane, the organic snack maker, for $1.2bn in
cash, including debt, the two companies said on Wednesday, in the largest packaged-food
deal in North America so far this year.""",
    """In a move that surprised few in the industry, cereal giant Castellan Foods is set to
acquire snack maker Orchard Lane, in the largest packaged-food deal in North America so
far this year.""",
) + """
Distributed by the Harbour Street Ledger wire. Copyright 2024 Harbour Street Ledger Ltd.
All rights reserved.
"""

# The same event, reported independently: same names and figures, different words.
SAME_TOPIC_TEXT = """\
Orchard Lane is being sold. The Oregon-based maker of lentil crisps and fruit bars will
become part of Castellan Foods after its board backed a $38-a-share bid, valuing the
business at about $1.2bn once borrowings are counted.

For Castellan, best known for its cereals, the purchase is a bet that snacking will keep
growing faster than breakfast. Dana Pruitt, its chief executive, told investors on a call
that the two bakeries would stay open and that savings would come from buying ingredients
and trucking together.

The Whitaker family, which founded Orchard Lane in a garage in 1998 and still owns a
large stake, will support the sale. Competition authorities must still approve it, which
both companies expect by the end of the year. Investors were less enthusiastic than the
sellers: Castellan's stock slipped while Orchard Lane's soared.
"""


def article(id: str, text: str, published: datetime | date | None,
            title: str = "Castellan Foods to buy Orchard Lane for $1.2bn") -> Article:
    return Article(id=id, title=title, text=text, date_published=published, source="test")


def exact_jaccard(a: Article, b: Article) -> float:
    left, right = shingles(a), shingles(b)
    return len(left & right) / len(left | right)


# A pair at true Jaccard ~0.85 is only ~1.5 standard errors of a 128-value estimate above
# the 0.8 threshold, so whether the default signature catches it depends on the seed (it
# misses about one seed in ten). Tests of such borderline pairs use a 512-value signature
# (standard error ~0.016), so that their outcome does not hinge on MINHASH_SEED.
PRECISE = 512


# --------------------------------------------------------------------------- exact


def test_content_hash_ignores_case_whitespace_and_punctuation():
    base = article("a", "Shares rose 4%. The deal closes in Q4.", None)
    variant = article("b", "  shares ROSE 4 %\n\nthe deal closes\tin q4 ", None,
                      title="CASTELLAN FOODS to buy Orchard-Lane for $1.2bn!")
    assert content_hash(base) == content_hash(variant)
    assert len(content_hash(base)) == 64
    assert content_hash(base) != content_hash(article("c", "Shares rose 5%.", None))
    # Words moved between title and text are a different article.
    assert content_hash(Article(id=1, title="a b", text="c")) != content_hash(
        Article(id=2, title="a", text="b c"))


def test_exact_copies_collapse_to_the_earliest():
    original = article("wire", ORIGINAL_TEXT, datetime(2024, 6, 5, 11, 0, tzinfo=UTC))
    reformatted = article("feed", "  " + ORIGINAL_TEXT.upper().replace("\n", "  \n "),
                          datetime(2024, 6, 5, 14, 0, tzinfo=UTC))
    undated = article("mail", ORIGINAL_TEXT.replace(" ", "\t"), None)
    # The later copy comes first in the input: the date decides, not the order.
    result = deduplicate([reformatted, undated, original])
    assert [a.id for a in result.kept] == ["wire"]
    assert [(d.article.id, d.duplicate_of.id, d.kind, d.similarity, d.index, d.kept_index)
            for d in result.duplicates] == [
        ("feed", "wire", "exact", 1.0, 0, 2),
        ("mail", "wire", "exact", 1.0, 1, 2),
    ]
    assert (result.exact_count, result.near_count) == (2, 0)


# --------------------------------------------------------------------------- near


def test_syndicated_copy_is_a_near_duplicate_of_the_earlier_original():
    original = article("ledger", ORIGINAL_TEXT, datetime(2024, 6, 5, 11, 0, tzinfo=UTC))
    syndicated = article("portal", SYNDICATED_TEXT, datetime(2024, 6, 5, 13, 30, tzinfo=UTC),
                         title="Castellan to acquire Orchard Lane in $1.2bn snack deal")
    assert content_hash(original) != content_hash(syndicated)
    true_similarity = exact_jaccard(original, syndicated)
    assert 0.8 < true_similarity < 0.95  # a real near-copy, not an exact one

    result = deduplicate([syndicated, original], num_perm=PRECISE)
    assert [a.id for a in result.kept] == ["ledger"]
    (duplicate,) = result.duplicates
    assert (duplicate.article.id, duplicate.duplicate_of.id, duplicate.kind) == (
        "portal", "ledger", "near")
    assert duplicate.similarity >= 0.8
    assert abs(duplicate.similarity - true_similarity) < 0.1


def test_different_articles_on_the_same_topic_are_kept_apart():
    original = article("ledger", ORIGINAL_TEXT, datetime(2024, 6, 5, 11, 0, tzinfo=UTC))
    other = article("gazette", SAME_TOPIC_TEXT, datetime(2024, 6, 5, 12, 0, tzinfo=UTC),
                    title="Orchard Lane agrees to $1.2bn sale to Castellan Foods")
    assert exact_jaccard(original, other) < 0.05
    result = deduplicate([original, other])
    assert [a.id for a in result.kept] == ["ledger", "gazette"]
    assert result.duplicates == []
    # Even a permissive threshold does not merge them.
    assert deduplicate([original, other], threshold=0.3).duplicates == []


def test_kept_copy_is_the_earliest_dated_one_and_kept_order_is_input_order():
    syndicated_late = article("late", SYNDICATED_TEXT, datetime(2024, 6, 6, tzinfo=UTC))
    unrelated = article("other", SAME_TOPIC_TEXT, None, title="Orchard Lane sale")
    undated_copy = article("undated", ORIGINAL_TEXT, None)
    # A bare date and a naive datetime compare with aware datetimes (read as UTC).
    earliest = article("earliest", ORIGINAL_TEXT + "\nUpdated with share prices.",
                       date(2024, 6, 5))
    naive_middle = article("middle", ORIGINAL_TEXT + "\nCorrects spelling of Pruitt.",
                           datetime(2024, 6, 5, 18, 0))
    articles = [syndicated_late, unrelated, undated_copy, naive_middle, earliest]
    result = deduplicate(articles, num_perm=PRECISE)
    assert [a.id for a in result.kept] == ["other", "earliest"]
    assert {d.article.id: (d.duplicate_of.id, d.kind) for d in result.duplicates} == {
        "late": ("earliest", "near"), "undated": ("earliest", "near"),
        "middle": ("earliest", "near")}
    assert [d.index for d in result.duplicates] == [0, 2, 3]
    assert all(d.kept_index == 4 and d.similarity >= 0.8 for d in result.duplicates)


def test_undated_articles_keep_the_first_seen():
    first = article("first", ORIGINAL_TEXT, None)
    second = article("second", ORIGINAL_TEXT.replace("Wednesday", "Thursday"), None)
    result = deduplicate([first, second])
    assert [a.id for a in result.kept] == ["first"]
    assert result.duplicates[0].duplicate_of.id == "first"


def synthetic_words(rng: random.Random, count: int) -> list[str]:
    syllables = ["ka", "lo", "mer", "tis", "van", "qu", "or", "pel", "dri", "zen", "sa", "um"]
    return ["".join(rng.choice(syllables) for _ in range(rng.randint(2, 4)))
            for _ in range(count)]


def test_grouping_is_not_transitive_every_duplicate_resembles_its_kept_article():
    rng = random.Random(7)
    words = synthetic_words(rng, 400)
    # b edits 6 spread-out words of a; c edits 6 more of b: a~b and b~c, but a !~ c.
    b_words, c_words = list(words), list(words)
    for position in range(20, 400, 66)[:6]:
        b_words[position] = c_words[position] = "editb"
    for position in range(53, 400, 66)[:6]:
        c_words[position] = "editc"
    a, b, c = (article(name, " ".join(w), datetime(2024, 1, day, tzinfo=UTC), title="")
               for name, w, day in (("a", words, 1), ("b", b_words, 2), ("c", c_words, 3)))
    assert exact_jaccard(a, b) > 0.85 and exact_jaccard(b, c) > 0.85
    assert exact_jaccard(a, c) < 0.75

    result = deduplicate([a, b, c], num_perm=512)
    # Chained (union-find) grouping would drop c as a copy of a, which it is not.
    assert [x.id for x in result.kept] == ["a", "c"]
    (duplicate,) = result.duplicates
    assert (duplicate.article.id, duplicate.duplicate_of.id) == ("b", "a")


def originals_and_copies(pairs: int, words_each: int, edits: int,
                         seed: int) -> tuple[list[Article], list[Article]]:
    """``pairs`` unrelated synthetic articles, and a later copy of each with ``edits``
    single words replaced (spread out, so each edit replaces ``shingle`` shingles)."""
    rng = random.Random(seed)
    vocabulary = synthetic_words(rng, 3000)
    start = datetime(2024, 3, 1, tzinfo=UTC)
    originals, copies = [], []
    for number in range(pairs):
        words = rng.sample(vocabulary, words_each)
        originals.append(article(f"o{number}", " ".join(words),
                                 start + timedelta(hours=number), title=""))
        edited = list(words)
        step = words_each // (edits + 1)
        for position in range(step, step * (edits + 1), step):
            edited[position] = "changedword"
        copies.append(article(f"c{number}", " ".join(edited + ["via", "the", "wire"]),
                              start + timedelta(days=30, hours=number), title=""))
    return originals, copies


def test_many_articles_each_with_one_near_copy_are_all_paired():
    originals, copies = originals_and_copies(pairs=40, words_each=160, edits=1, seed=11)
    assert all(exact_jaccard(o, c) > 0.9 for o, c in zip(originals, copies))
    mixed = copies[::2] + originals + copies[1::2]
    result = deduplicate(mixed)
    assert sorted(a.id for a in result.kept) == sorted(a.id for a in originals)
    assert {d.article.id: d.duplicate_of.id for d in result.duplicates} == {
        f"c{n}": f"o{n}" for n in range(40)}
    assert all(d.kind == "near" for d in result.duplicates)


def test_lsh_candidates_are_verified_against_the_threshold():
    # Pairs at true Jaccard ~0.65: well below the 0.8 threshold, yet LSH tuned for recall
    # at 0.8 returns some of them as candidates, which verification must then reject.
    pairs = 20
    originals, copies = originals_and_copies(pairs=pairs, words_each=400, edits=17, seed=5)
    similarities = [exact_jaccard(o, c) for o, c in zip(originals, copies)]
    assert all(0.6 < s < 0.7 for s in similarities)
    index = MinHashLSH(threshold=0.8, num_perm=128, weights=LSH_WEIGHTS)
    signatures = []
    for item in originals + copies:
        signature = MinHash(num_perm=128, seed=MINHASH_SEED)
        signature.update_batch(s.encode("utf-8") for s in shingles(item))
        signatures.append(signature)
    for number in range(pairs):
        index.insert(number, signatures[number])
    candidate_pairs = [n for n in range(pairs) if n in index.query(signatures[pairs + n])]
    assert candidate_pairs  # otherwise this test would not exercise verification

    assert deduplicate(originals + copies).duplicates == []
    # At a lower threshold the same pairs are copies, with a close similarity estimate.
    result = deduplicate(originals + copies, threshold=0.4)
    assert {d.article.id: d.duplicate_of.id for d in result.duplicates} == {
        f"c{n}": f"o{n}" for n in range(pairs)}
    assert all(abs(d.similarity - similarities[int(d.article.id[1:])]) < 0.2
               for d in result.duplicates)


def test_threshold_one_merges_only_identical_shingle_sets():
    title = "Castellan Foods to buy Orchard Lane for $1.2bn"
    original = article("original", ORIGINAL_TEXT, datetime(2024, 6, 5, tzinfo=UTC), title)
    # The same words, one moved from the title into the text: a different content hash.
    moved = article("moved", "$1.2bn " + ORIGINAL_TEXT, datetime(2024, 6, 6, tzinfo=UTC),
                    title.removesuffix(" $1.2bn"))
    # Every "per cent" written as one word: still a close copy, but not an identical one.
    reworded = article("reworded", ORIGINAL_TEXT.replace("per cent", "percent"),
                       datetime(2024, 6, 7, tzinfo=UTC), title)
    assert content_hash(moved) != content_hash(original)
    assert shingles(moved) == shingles(original)
    assert 0.8 < exact_jaccard(reworded, original) < 0.95
    result = deduplicate([original, moved, reworded], threshold=1.0)
    assert [a.id for a in result.kept] == ["original", "reworded"]
    assert [(d.article.id, d.duplicate_of.id, d.kind, d.similarity)
            for d in result.duplicates] == [("moved", "original", "near", 1.0)]


def test_results_are_reproducible_across_runs_and_processes():
    originals, copies = originals_and_copies(pairs=10, words_each=160, edits=1, seed=2)
    articles = copies + originals

    def summary(result):
        return ([a.id for a in result.kept],
                [[d.article.id, d.duplicate_of.id, d.kind, d.similarity]
                 for d in result.duplicates])

    first = summary(deduplicate(articles))
    assert len(first[1]) == 10
    # Estimates that differ between pairs, so equal runs are not equal by accident.
    assert len({similarity for *_, similarity in first[1]}) > 1
    assert summary(deduplicate(articles)) == first
    # A fresh interpreter with another string-hash seed gets the same signatures.
    script = (
        "import json, sys\n"
        "from pipeline.article import Article\n"
        "from pipeline.dedupe import deduplicate\n"
        "result = deduplicate([Article.from_record(r) for r in json.load(sys.stdin)])\n"
        "print(json.dumps(([a.id for a in result.kept], [[d.article.id, d.duplicate_of.id,"
        " d.kind, d.similarity] for d in result.duplicates])))\n")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    completed = subprocess.run(
        [sys.executable, "-c", script], input=json.dumps([a.to_record() for a in articles]),
        capture_output=True, text=True, env=env, check=True)
    assert json.loads(completed.stdout) == list(first)


def test_short_and_empty_articles():
    # An article of at most 5 words is one shingle of all its words: a near copy only of
    # the same words, here split differently between title and text.
    short = [Article(id=i, title="Rates held", text="") for i in range(2)]
    moved = Article(id=5, title="Rates", text="held")
    # No words at all: compared by exact hash only.
    empty = [Article(id=10 + i) for i in range(2)]
    punctuation_only = Article(id=12, title="!!!", text="--")
    different_short = Article(id=20, title="Rates cut", text="")
    result = deduplicate(short + [moved] + empty + [punctuation_only, different_short])
    assert [a.id for a in result.kept] == [0, 10, 20]
    assert [(d.article.id, d.duplicate_of.id, d.kind, d.similarity)
            for d in result.duplicates] == [
        (1, 0, "exact", 1.0), (5, 0, "near", 1.0), (11, 10, "exact", 1.0),
        (12, 10, "exact", 1.0)]


def test_invalid_parameters_are_rejected():
    with pytest.raises(ValueError, match="threshold"):
        deduplicate([], threshold=0)
    with pytest.raises(ValueError, match="shingle"):
        deduplicate([], shingle=0)
    with pytest.raises(ValueError, match="num_perm"):
        deduplicate([], num_perm=1)
    assert deduplicate([]).kept == []
