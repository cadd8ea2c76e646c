"""The prompt is built in one place and is byte-identical in training and serving."""

import pytest

from pipeline.article import Article
from pipeline.prompt import (NOT_SIGNAL_TOKEN, SHORT_INSTRUCTION, SIGNAL_INSTRUCTION,
                             SIGNAL_TOKEN, encode_prompt, label_token_ids)

ARTICLE = Article(id=7, title="Acme to buy Beta", date_published="1987-04-02T10:00:00",
                  text="Acme Corp said it agreed to acquire Beta Inc for 12 mln dlrs.", signal=1)


def test_label_tokens_are_single_distinct_tokens(tokenizer):
    labels = label_token_ids(tokenizer)
    assert tokenizer.decode([labels.signal]) == SIGNAL_TOKEN
    assert tokenizer.decode([labels.not_signal]) == NOT_SIGNAL_TOKEN


def test_prompt_uses_chat_template_and_instruction(tokenizer):
    prompt = encode_prompt(ARTICLE, tokenizer)
    assert prompt.text.startswith("<|im_start|>system\n" + SIGNAL_INSTRUCTION)
    assert "Title: Acme to buy Beta\nPublished: 1987-04-02" in prompt.text
    assert prompt.text.endswith("<|im_start|>assistant\n")
    assert tokenizer.decode(prompt.token_ids) == prompt.text
    assert not prompt.truncated


def test_training_rows_and_served_prompts_are_the_same_tokens(tokenizer):
    """SFT rows = served prompt + [label, EOS], with loss only on the answer."""
    from pipeline.views import sft_token_rows as sft_records

    articles = [ARTICLE, Article(id=8, title="Quarterly dividend", text="Qtly div 10 cts.",
                                 signal=0)]
    rows = sft_records(articles, tokenizer, max_prompt_tokens=256)
    labels = label_token_ids(tokenizer)
    for article, row in zip(articles, rows):
        served = encode_prompt(article, tokenizer, 256).token_ids
        n = len(served)
        assert row["input_ids"][:n] == served
        answer = labels.signal if article.signal else labels.not_signal
        assert row["input_ids"][n:] == [answer, tokenizer.eos_token_id]
        assert row["completion_mask"] == [0] * n + [1, 1]


def test_long_text_is_cut_to_budget_and_flagged(tokenizer):
    huge = Article(id=9, title="Huge", text="word " * 250_000)  # ~1.25 MB
    prompt = encode_prompt(huge, tokenizer, max_prompt_tokens=300)
    assert prompt.truncated
    assert len(prompt.token_ids) <= 300
    assert prompt.text.endswith("<|im_start|>assistant\n")  # answer position survives


def test_huge_title_is_cut_too(tokenizer):
    article = Article(id=10, title="Takeover " * 100_000, text="Body text survives in part.")
    prompt = encode_prompt(article, tokenizer, max_prompt_tokens=200)
    assert prompt.truncated and len(prompt.token_ids) <= 200
    assert "Body text" in prompt.text


def test_budget_too_small_for_instruction_is_an_error(tokenizer):
    with pytest.raises(ValueError, match="leaves no room"):
        encode_prompt(ARTICLE, tokenizer, max_prompt_tokens=20)


def test_short_style_asks_the_same_article_in_fewer_tokens(tokenizer):
    """The short instruction frees the room the full one takes: the same article text,
    uncut, fits a cap the full instruction's prompt would have to cut it for."""
    full = encode_prompt(ARTICLE, tokenizer, 256)
    short = encode_prompt(ARTICLE, tokenizer, 256, "short")
    assert short.text.startswith("<|im_start|>system\n" + SHORT_INSTRUCTION + "<|im_end|>")
    assert SIGNAL_INSTRUCTION not in short.text
    assert full.text.split("<|im_start|>user")[1] == short.text.split("<|im_start|>user")[1]
    saved = len(full.token_ids) - len(short.token_ids)
    assert saved >= 60
    cap = len(short.token_ids)
    assert not encode_prompt(ARTICLE, tokenizer, cap, "short").truncated
    assert encode_prompt(ARTICLE, tokenizer, cap + saved - 1).truncated


def test_training_rows_carry_the_style_they_are_asked_for(tokenizer):
    from pipeline.views import preference_rows, sft_token_rows

    row = sft_token_rows([ARTICLE], tokenizer, 256, "short")[0]
    served = encode_prompt(ARTICLE, tokenizer, 256, "short").token_ids
    assert row["input_ids"][:len(served)] == served
    pair = preference_rows([ARTICLE], tokenizer, 256, "short")[0]
    assert pair["prompt"] == encode_prompt(ARTICLE, tokenizer, 256, "short").text


def test_unknown_prompt_style_is_an_error(tokenizer):
    with pytest.raises(ValueError, match="unknown prompt style 'terse'"):
        encode_prompt(ARTICLE, tokenizer, 256, "terse")
