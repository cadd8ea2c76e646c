"""The views of a labelled split that the training methods consume.

Every view is built from :func:`pipeline.prompt.encode_prompt`, so training, the
dataset files and serving see the same prompt tokens:

- :func:`sft_rows`: prompt + completion (the label token), for LoRA / LoRA+ SFT;
- :func:`preference_rows`: prompt + chosen (the true label) + rejected (the other), for
  DPO and for the reward model's preference pairs;
- :func:`sft_token_rows`: the SFT view pre-tokenised with a completion mask, which is
  what the SFT trainer is fed (a prompt re-tokenised from text can differ by a token
  after a cut, the ids cannot).

Only articles with a known label (``signal`` 0 or 1) appear in a view.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from pipeline.article import Article
from pipeline.prompt import NOT_SIGNAL_TOKEN, SIGNAL_TOKEN, encode_prompt, label_token_ids

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def _labelled(articles: Iterable[Article]) -> list[Article]:
    return [a for a in articles if a.signal is not None]


def _answer(label: int) -> str:
    return SIGNAL_TOKEN if label == 1 else NOT_SIGNAL_TOKEN


def _date(article: Article) -> str | None:
    return article.date_published.isoformat() if article.date_published else None


def sft_rows(articles: Iterable[Article], tokenizer: PreTrainedTokenizerBase,
             max_prompt_tokens: int) -> list[dict[str, Any]]:
    """``{id, date, prompt, completion, label}`` per labelled article (TRL prompt/completion)."""
    return [{
        "id": str(a.id), "date": _date(a),
        "prompt": encode_prompt(a, tokenizer, max_prompt_tokens).text,
        "completion": _answer(a.signal), "label": a.signal,
    } for a in _labelled(articles)]


def preference_rows(articles: Iterable[Article], tokenizer: PreTrainedTokenizerBase,
                    max_prompt_tokens: int) -> list[dict[str, Any]]:
    """``{id, date, prompt, chosen, rejected, label}``: chosen is the true label's answer."""
    return [{
        "id": str(a.id), "date": _date(a),
        "prompt": encode_prompt(a, tokenizer, max_prompt_tokens).text,
        "chosen": _answer(a.signal), "rejected": _answer(1 - a.signal), "label": a.signal,
    } for a in _labelled(articles)]


def sft_token_rows(articles: Iterable[Article], tokenizer: PreTrainedTokenizerBase,
                   max_prompt_tokens: int) -> list[dict[str, list[int]]]:
    """Pre-tokenised SFT rows: prompt ids + [label, EOS]; loss only on those two tokens."""
    labels = label_token_ids(tokenizer)
    rows = []
    for article in _labelled(articles):
        prompt = encode_prompt(article, tokenizer, max_prompt_tokens)
        answer = [labels.signal if article.signal == 1 else labels.not_signal,
                  tokenizer.eos_token_id]
        rows.append({
            "input_ids": prompt.token_ids + answer,
            "completion_mask": [0] * len(prompt.token_ids) + [1] * len(answer),
        })
    return rows
