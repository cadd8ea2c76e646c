"""Statistics of a dataset directory: per split counts, labels, signal rate by month,
label-source agreement; written as JSON, markdown and a PNG plot.

``dataset_stats(directory)`` reads the splits the manifest lists and computes, per split:
articles, labelled, signals, signal rate, date range, articles per source, and a
histogram by month (articles, labelled, signals, signal rate). When articles carry
label provenance (a ``labels`` list of votes, ``{"source", "label", ...}``, as
:mod:`pipeline.labels` records them) it adds, per label source, how often it voted and
how often it agrees with the final label, and per pair of sources their agreement and
Cohen's kappa on the articles both voted on. When the build ran the link stage, each
split also says how much of its text came from linked pages (``links``: articles by
text origin and fetch status, characters from pages).

``write_stats_report(directory, out_dir)`` writes ``stats.json``, ``stats.md`` and
``stats.png`` (articles and signal rate per month, one colour per split).
"""

from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from itertools import combinations
from pathlib import Path
from typing import Any

from pipeline.article import Article
from pipeline.dataset import load_split, read_manifest

log = logging.getLogger(__name__)

UNDATED_MONTH = "undated"


def publication_month(article: Article) -> str:
    """``YYYY-MM`` of the article's UTC publication day; ``undated`` without one."""
    day = article.published_day()
    return UNDATED_MONTH if day is None else f"{day:%Y-%m}"


def _rate(signals: int, labelled: int) -> float | None:
    return round(signals / labelled, 4) if labelled else None


def _votes(article: Article) -> dict[str, int]:
    """The article's non-abstaining votes by label source, from its ``labels`` field."""
    raw = getattr(article, "labels", None) or (article.model_extra or {}).get("labels")
    if not raw:
        return {}
    if isinstance(raw, dict):  # {source: label} or {source: {"label": ...}}
        raw = [{"source": k, **(v if isinstance(v, dict) else {"label": v})}
               for k, v in raw.items()]
    votes = {}
    for vote in raw:
        vote = vote if isinstance(vote, dict) else vote.model_dump()
        if vote.get("label") in (0, 1):
            votes[str(vote.get("source"))] = int(vote["label"])
    return votes


def cohens_kappa(pairs: list[tuple[int, int]]) -> float | None:
    """Cohen's kappa of two binary raters; None when undefined (no pairs, or both raters
    constant and equal, where chance agreement is 1)."""
    n = len(pairs)
    if not n:
        return None
    observed = sum(a == b for a, b in pairs) / n
    p_a = sum(a for a, _ in pairs) / n
    p_b = sum(b for _, b in pairs) / n
    chance = p_a * p_b + (1 - p_a) * (1 - p_b)
    if chance >= 1:
        return None
    return round((observed - chance) / (1 - chance), 4)


def label_agreement(articles: list[Article]) -> dict[str, Any] | None:
    """Per label source and per pair of sources, agreement on ``articles``; None when
    no article carries votes."""
    voted = [(a, _votes(a)) for a in articles]
    voted = [(a, v) for a, v in voted if v]
    if not voted:
        return None
    per_source: dict[str, dict[str, int]] = defaultdict(Counter)
    pairs: dict[tuple[str, str], list[tuple[int, int]]] = defaultdict(list)
    for article, votes in voted:
        for source, label in votes.items():
            counts = per_source[source]
            counts["votes"] += 1
            counts["signals"] += label
            if article.signal is not None:
                counts["with_final"] += 1
                counts["agree_with_final"] += label == article.signal
        for first, second in combinations(sorted(votes), 2):
            pairs[(first, second)].append((votes[first], votes[second]))
    return {
        "articles_with_votes": len(voted),
        "sources": {source: {
            "votes": c["votes"], "signals": c["signals"],
            "signal_rate": _rate(c["signals"], c["votes"]),
            "agreement_with_final": _rate(c["agree_with_final"], c["with_final"]),
        } for source, c in sorted(per_source.items())},
        "pairs": {f"{a} vs {b}": {
            "both_voted": len(p), "agreement": _rate(sum(x == y for x, y in p), len(p)),
            "cohens_kappa": cohens_kappa(p)} for (a, b), p in sorted(pairs.items())},
    }


def split_report(articles: list[Article]) -> dict[str, Any]:
    """Counts, signal rate, sources, month histogram and label agreement of one split."""
    labelled = [a for a in articles if a.signal is not None]
    signals = sum(a.signal for a in labelled)
    by_month: dict[str, Counter] = defaultdict(Counter)
    for article in articles:
        month = by_month[publication_month(article)]
        month["count"] += 1
        if article.signal is not None:
            month["labelled"] += 1
            month["signals"] += article.signal
    days = sorted(day for day in (a.published_day() for a in articles) if day is not None)
    return {
        "count": len(articles),
        "labelled": len(labelled),
        "signals": signals,
        "signal_rate": _rate(signals, len(labelled)),
        "date_from": days[0].isoformat() if days else None,
        "date_to": days[-1].isoformat() if days else None,
        "sources": dict(Counter(a.source or "unknown" for a in articles).most_common()),
        "by_month": {month: {"count": c["count"], "labelled": c["labelled"],
                             "signals": c["signals"],
                             "signal_rate": _rate(c["signals"], c["labelled"])}
                     for month, c in sorted(by_month.items())},
        "label_agreement": label_agreement(articles),
    }


def link_report(articles: list[Article], provenance: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """How much of the articles' text came from linked pages (the link stage's
    provenance, by article id, from the manifest): articles by text origin and fetch
    status, and characters of text from pages against all characters."""
    origins: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    chars = page_chars = 0
    for article in articles:
        chars += len(article.text)
        entry = provenance.get(str(article.id))
        if entry is None:
            continue
        origins[entry["text_origin"]] += 1
        statuses[entry["fetch_status"]] += 1
        if entry["text_origin"] == "page":
            page_chars += len(article.text)
        elif entry["text_origin"] == "both":
            page_chars += min(entry.get("page_chars") or 0, len(article.text))
    from_page = origins["page"] + origins["both"]
    return {"articles": len(articles), "from_page": from_page,
            "from_page_rate": from_page / len(articles) if articles else None,
            "text_origin": dict(sorted(origins.items())),
            "fetch_status": dict(sorted(statuses.items())),
            "chars": chars, "page_chars": page_chars,
            "page_char_share": page_chars / chars if chars else None}


def dataset_stats(directory: Path) -> dict[str, Any]:
    """The stats report of every split of the dataset at ``directory``; with a
    ``links`` section when the build ran the link stage."""
    manifest = read_manifest(directory)
    loaded = {name: load_split(directory, name) for name in manifest.splits}
    splits = {name: split_report(articles) for name, articles in loaded.items()}
    provenance = manifest.links["provenance"] if manifest.links else None
    if provenance is not None:
        for name, articles in loaded.items():
            splits[name]["links"] = link_report(articles, provenance)
    total = sum(s["count"] for s in splits.values())
    labelled = sum(s["labelled"] for s in splits.values())
    signals = sum(s["signals"] for s in splits.values())
    return {
        "dataset": str(Path(directory)),
        "name": manifest.name,
        "version": manifest.version,
        "label_rule": manifest.label_rule,
        "build_counts": manifest.counts,
        "total": {"count": total, "labelled": labelled, "signals": signals,
                  "signal_rate": _rate(signals, labelled)},
        "splits": splits,
    }


# --------------------------------------------------------------------------- rendering


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    def cell(value: Any) -> str:
        if value is None:
            return "–"
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return lines


def stats_markdown(stats: dict[str, Any]) -> str:
    """The report as markdown: a split table, a month table, label agreement."""
    lines = [f"# Dataset {stats['name']} ({stats['version'] or 'unversioned'})", ""]
    if stats.get("label_rule"):
        lines += [f"Label rule: {stats['label_rule']}", ""]
    counts = stats.get("build_counts")
    if counts:
        dedupe = counts["dedupe"]
        lines += [f"Build: {counts['read']} articles read ({counts['skipped_items']} items "
                  f"skipped, {counts['failed_inputs']} inputs failed), {dedupe['exact']} "
                  f"exact + {dedupe['near']} near duplicates dropped, "
                  f"{counts['undated_skipped']} undated left out, {counts['written']} "
                  "written.", ""]
    lines += _table(
        ["split", "articles", "labelled", "signals", "signal rate", "from", "to"],
        [[name, s["count"], s["labelled"], s["signals"], s["signal_rate"], s["date_from"],
          s["date_to"]] for name, s in stats["splits"].items()]
        + [["**all**", stats["total"]["count"], stats["total"]["labelled"],
            stats["total"]["signals"], stats["total"]["signal_rate"], None, None]])
    lines += ["", "## By month", ""]
    lines += _table(["split", "month", "articles", "labelled", "signals", "signal rate"],
                    [[name, month, m["count"], m["labelled"], m["signals"], m["signal_rate"]]
                     for name, s in stats["splits"].items()
                     for month, m in s["by_month"].items()])
    linked = [(name, s["links"]) for name, s in stats["splits"].items() if s.get("links")]
    if linked:
        lines += ["", "## Text from linked pages", ""]
        lines += _table(["split", "articles", "text from a page", "share", "characters",
                         "from pages", "share of characters", "fetch outcomes"],
                        [[name, v["articles"], v["from_page"], v["from_page_rate"], v["chars"],
                          v["page_chars"], v["page_char_share"],
                          ", ".join(f"{k} {n}" for k, n in v["fetch_status"].items())]
                         for name, v in linked])
    agreement = [(name, s["label_agreement"]) for name, s in stats["splits"].items()
                 if s["label_agreement"]]
    if agreement:
        lines += ["", "## Label sources", ""]
        lines += _table(["split", "source", "votes", "signal rate", "agrees with final"],
                        [[name, source, v["votes"], v["signal_rate"], v["agreement_with_final"]]
                         for name, a in agreement for source, v in a["sources"].items()])
        pair_rows = [[name, pair, v["both_voted"], v["agreement"], v["cohens_kappa"]]
                     for name, a in agreement for pair, v in a["pairs"].items()]
        if pair_rows:
            lines += [""] + _table(["split", "sources", "both voted", "agreement", "kappa"],
                                   pair_rows)
    return "\n".join(lines) + "\n"


def plot_stats(stats: dict[str, Any], path: Path) -> None:
    """Articles per month (bars) and signal rate per month (lines), one colour per split."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never a display
    import matplotlib.pyplot as plt

    months = sorted({m for s in stats["splits"].values() for m in s["by_month"]})
    position = {m: i for i, m in enumerate(months)}
    # Temporal splits rarely share a month (the undated split has its own column), so
    # bars are stacked: one column per month, coloured by split.
    stacked = {m: 0 for m in months}
    figure, (counts_axis, rate_axis) = plt.subplots(
        2, 1, figsize=(max(6.0, 0.6 * len(months) + 3), 6.5), sharex=True)
    for number, name in enumerate(stats["splits"]):
        colour = f"C{number % 10}"
        by_month = stats["splits"][name]["by_month"]
        counts_axis.bar([position[m] for m in by_month], [v["count"] for v in by_month.values()],
                        bottom=[stacked[m] for m in by_month], width=0.7, color=colour,
                        label=name)
        for month, values in by_month.items():
            stacked[month] += values["count"]
        rated = [(position[m], v["signal_rate"]) for m, v in by_month.items()
                 if v["signal_rate"] is not None]
        if rated:
            rate_axis.plot([x for x, _ in rated], [r for _, r in rated], marker="o",
                           color=colour, label=name)
    counts_axis.set_ylabel("articles")
    counts_axis.set_title(f"{stats['name']}: articles and signal rate per month")
    # Head-room above the tallest column, so the legend never covers a bar.
    counts_axis.set_ylim(0, max([1, *stacked.values()]) * 1.3)
    counts_axis.legend(title="split", loc="upper left", ncols=min(4, len(stats["splits"])))
    rate_axis.set_ylabel("signal rate (labelled)")
    rate_axis.set_ylim(0, 1)
    rate_axis.set_xticks(range(len(months)), months, rotation=45, ha="right")
    rate_axis.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_stats_report(directory: Path, out_dir: Path | None = None) -> dict[str, Path]:
    """Write ``stats.json``, ``stats.md`` and ``stats.png`` for the dataset at
    ``directory`` into ``out_dir`` (default: the dataset directory); return the paths."""
    stats = dataset_stats(directory)
    out = Path(out_dir) if out_dir is not None else Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "stats.json", "markdown": out / "stats.md", "plot": out / "stats.png"}
    paths["json"].write_text(json.dumps(stats, indent=2) + "\n", encoding="utf-8")
    paths["markdown"].write_text(stats_markdown(stats), encoding="utf-8")
    plot_stats(stats, paths["plot"])
    log.info("stats of %s written to %s", directory, out)
    return paths
