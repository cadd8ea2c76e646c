"""The views of a labelled split that the training methods consume.

Every view is built from :func:`pipeline.prompt.encode_prompt`, so training, the
dataset files and serving see the same prompt tokens:

- :func:`sft_rows`: prompt + completion (the label token), for LoRA / LoRA+ SFT;
- :func:`preference_rows`: prompt + chosen (the true label) + rejected (the other), for
  DPO and for the reward model's preference pairs;
- :func:`sft_token_rows`: the SFT view pre-tokenised with a completion mask, which is
  what the SFT trainer is fed (a prompt re-tokenised from text can differ by a token
  after a cut, the ids cannot).

Only articles with a known label (``signal`` 0 or 1) appear in a view. ``style`` picks
the instruction (:data:`pipeline.prompt.PromptStyle`); the view files carry the full one.
:func:`write_views` writes them beside a built dataset's splits as
``views/<split>.{sft,dpo,reward}.jsonl``.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import dataset as dataset_files
from pipeline.article import Article
from pipeline.prompt import (NOT_SIGNAL_TOKEN, SIGNAL_TOKEN, PromptStyle, encode_prompt,
                            label_token_ids)
from pipeline.settings import Paths

if TYPE_CHECKING:
    from pipeline.build_config import ViewsConfig
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)


def _labelled(articles: Iterable[Article]) -> list[Article]:
    return [a for a in articles if a.signal is not None]


def _answer(label: int) -> str:
    return SIGNAL_TOKEN if label == 1 else NOT_SIGNAL_TOKEN


def _date(article: Article) -> str | None:
    return article.date_published.isoformat() if article.date_published else None


def sft_rows(articles: Iterable[Article], tokenizer: PreTrainedTokenizerBase,
             max_prompt_tokens: int, style: PromptStyle = "full") -> list[dict[str, Any]]:
    """``{id, date, prompt, completion, label}`` per labelled article (TRL prompt/completion)."""
    return [{
        "id": str(a.id), "date": _date(a),
        "prompt": encode_prompt(a, tokenizer, max_prompt_tokens, style).text,
        "completion": _answer(a.signal), "label": a.signal,
    } for a in _labelled(articles)]


def preference_rows(articles: Iterable[Article], tokenizer: PreTrainedTokenizerBase,
                    max_prompt_tokens: int, style: PromptStyle = "full") -> list[dict[str, Any]]:
    """``{id, date, prompt, chosen, rejected, label}``: chosen is the true label's answer."""
    return [{
        "id": str(a.id), "date": _date(a),
        "prompt": encode_prompt(a, tokenizer, max_prompt_tokens, style).text,
        "chosen": _answer(a.signal), "rejected": _answer(1 - a.signal), "label": a.signal,
    } for a in _labelled(articles)]


def sft_token_rows(articles: Iterable[Article], tokenizer: PreTrainedTokenizerBase,
                   max_prompt_tokens: int,
                   style: PromptStyle = "full") -> list[dict[str, list[int]]]:
    """Pre-tokenised SFT rows: prompt ids + [label, EOS]; loss only on those two tokens."""
    labels = label_token_ids(tokenizer)
    rows = []
    for article in _labelled(articles):
        prompt = encode_prompt(article, tokenizer, max_prompt_tokens, style)
        answer = [labels.signal if article.signal == 1 else labels.not_signal,
                  tokenizer.eos_token_id]
        rows.append({
            "input_ids": prompt.token_ids + answer,
            "completion_mask": [0] * len(prompt.token_ids) + [1] * len(answer),
        })
    return rows


# --- the view files of a dataset build ---------------------------------------------

DEFAULT_TOKENIZER_NAME = "SmolLM2-135M-Instruct"


def _default_tokenizer_dir() -> Path:
    return Paths().models_dir / DEFAULT_TOKENIZER_NAME


VIEW_CHUNK = 256


def reward_rows(dpo_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Preference rows in TRL ``RewardTrainer``'s implicit-prompt format: ``chosen`` and
    ``rejected`` are the full texts (prompt + answer), so the reward model scores the
    whole exchange. Other columns are carried along for bookkeeping."""
    return [{**{k: v for k, v in row.items() if k not in ("prompt", "chosen", "rejected")},
             "chosen": row["prompt"] + row["chosen"],
             "rejected": row["prompt"] + row["rejected"]} for row in dpo_rows]


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    return {"file": f"views/{path.name}", "rows": len(rows),
            "sha256": dataset_files.file_sha256(path)}


def write_views(directory: Path, splits: dict[str, list[Article]], config: ViewsConfig,
                tokenizer: Any = None) -> dict[str, Any]:
    """Write ``views/<split>.{sft,dpo,reward}.jsonl`` for every split into ``directory``;
    return their manifest entries. Only labelled articles make rows."""
    from tqdm import tqdm

    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer_dir = config.tokenizer or _default_tokenizer_dir()
        if not Path(tokenizer_dir).is_dir():
            raise FileNotFoundError(
                f"views need the base model's tokenizer; none at {tokenizer_dir} "
                "(run `signals model prepare` or set views.tokenizer)")
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    out = Path(directory) / "views"
    out.mkdir(parents=True, exist_ok=True)
    entries: dict[str, Any] = {}
    for split, articles in splits.items():
        labelled = [a for a in articles if a.signal is not None]
        sft: list[dict[str, Any]] = []
        dpo: list[dict[str, Any]] = []
        # In chunks, only to show progress: tokenizing ~10,000 prompts takes minutes.
        with tqdm(total=len(labelled), desc=f"views {split}", unit="article") as bar:
            for start in range(0, len(labelled), VIEW_CHUNK):
                chunk = labelled[start:start + VIEW_CHUNK]
                sft += sft_rows(chunk, tokenizer, config.max_prompt_tokens)
                dpo += preference_rows(chunk, tokenizer, config.max_prompt_tokens)
                bar.update(len(chunk))
        entries[split] = {
            "sft": _write_rows(out / f"{split}.sft.jsonl", sft),
            "dpo": _write_rows(out / f"{split}.dpo.jsonl", dpo),
            "reward": _write_rows(out / f"{split}.reward.jsonl", reward_rows(dpo)),
        }
        log.info("views %s: %d sft, %d preference rows", split, len(sft), len(dpo))
    return {"max_prompt_tokens": config.max_prompt_tokens,
            "tokenizer": str(getattr(tokenizer, "name_or_path", "")), "splits": entries}
