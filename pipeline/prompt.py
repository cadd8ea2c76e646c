"""The one place where an article becomes the model's prompt.

Training (the SFT/DPO/RL views), the in-process backend and the vLLM backend all call
:func:`encode_prompt`; nothing else formats prompts. It returns the token ids as well
as the text, so every consumer feeds the model exactly the same tokens: training
appends the label token, serving asks for the probabilities of the two label tokens
at the next position.

Article text is always plain text to the model. The title and text are strangers'
words: a page that writes ``<|im_end|><|im_start|>assistant`` must not close the user
turn and forge an answer. Before rendering, every string the tokenizer would parse as
one of its added (control) tokens is broken with a zero-width space after its first
character (:func:`plain_text`), so it tokenises as ordinary characters on every path:
the ids :func:`encode_prompt` returns (SFT rows, the in-process backend, vLLM, which
receives those ids) and its text (DPO/RL rows, re-tokenised by TRL) alike. An article
that holds no such string renders exactly the ids it always did, so adapters trained
before this rule behave the same.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Literal

from pipeline.article import Article

if TYPE_CHECKING:  # transformers is heavy; only the type is needed here
    from transformers import PreTrainedTokenizerBase

SIGNAL_INSTRUCTION = (
    "You screen news for investors. An item is an investment signal when it reports an "
    "event that stands out for its time: unusual or exceptional rather than routine "
    "business, likely to have a lasting effect or to be carried through successfully, "
    "and important to a whole industry or to the world economy rather than to a "
    "single office or product line. Read the item and answer with only 1 if it is an investment signal or 0 if it "
    "is not."
)
"""The system instruction, in the project's own words."""

SHORT_INSTRUCTION = "Investment signal? Answer 1 or 0."
"""The system instruction of adapters trained with ``prompt_style: short``. The full
instruction is what an un-tuned model needs to know the task; a tuned adapter learns the
task from its labels, and the full instruction's tokens are about half of a 192-token
training prompt (computed at every step, trained on never). The template still gets a
system message: without one SmolLM2's chat template inserts its own."""

PromptStyle = Literal["full", "short"]
"""Which instruction a prompt carries: ``full`` (:data:`SIGNAL_INSTRUCTION`, the base
model's and older adapters') or ``short`` (:data:`SHORT_INSTRUCTION`)."""

INSTRUCTIONS: dict[str, str] = {"full": SIGNAL_INSTRUCTION, "short": SHORT_INSTRUCTION}

SIGNAL_TOKEN = "1"
"""Completion that means 'investment signal'."""

NOT_SIGNAL_TOKEN = "0"
"""Completion that means 'not an investment signal'."""

BASE_NAME = "base"
"""The one name of the un-tuned base model everywhere: the API's ``adapter`` field and
answers, the model vLLM serves it under, evaluation rows and the CLI's defaults."""

DEFAULT_MAX_PROMPT_TOKENS = 512
"""Longest prompt (template included) fed to the model; longer texts are cut."""

# Upper bound of characters per token when pre-cutting huge texts before tokenizing
# them (a 1 MB article would otherwise be tokenized whole just to be thrown away).
_MAX_CHARS_PER_TOKEN = 16


@dataclass(frozen=True)
class EncodedPrompt:
    """An article rendered for the model."""

    token_ids: list[int]
    text: str
    truncated: bool
    """True when part of the article's text was cut to fit ``max_prompt_tokens``."""


@dataclass(frozen=True)
class LabelTokens:
    """Token ids of the two answers."""

    not_signal: int
    signal: int


def label_token_ids(tokenizer: PreTrainedTokenizerBase) -> LabelTokens:
    """Ids of the two label tokens; raises if either is not a single token."""
    ids = {}
    for label in (NOT_SIGNAL_TOKEN, SIGNAL_TOKEN):
        encoded = tokenizer.encode(label, add_special_tokens=False)
        if len(encoded) != 1:
            raise ValueError(
                f"label {label!r} is {len(encoded)} tokens in this tokenizer "
                f"({encoded}); the classifier needs single-token labels"
            )
        ids[label] = encoded[0]
    if ids[SIGNAL_TOKEN] == ids[NOT_SIGNAL_TOKEN]:
        raise ValueError("the two label tokens map to the same id")
    return LabelTokens(not_signal=ids[NOT_SIGNAL_TOKEN], signal=ids[SIGNAL_TOKEN])


ZERO_WIDTH_SPACE = "\u200b"
"""What :func:`plain_text` inserts to break a control-token string: invisible, and
tokenised as ordinary bytes."""

CHAT_MARKUP = ("<|",)
"""Openings of chat-markup tokens in the common templates (ChatML's ``<|im_start|>``,
``<|endoftext|>``, Llama 3's ``<|eot_id|>``): broken in every message, so a teacher LLM
behind a chat API that renders a template cannot be handed forged turns either."""


@lru_cache(maxsize=32)
def _marker_pattern(markers: tuple[str, ...]) -> re.Pattern[str] | None:
    # Longest first, so a marker that contains another is broken as the longer one.
    usable = sorted({m for m in markers if len(m) > 1}, key=len, reverse=True)
    return re.compile("|".join(map(re.escape, usable))) if usable else None


def plain_text(text: str, markers: Iterable[str]) -> str:
    """``text`` with every occurrence of each of ``markers`` broken by a
    :data:`ZERO_WIDTH_SPACE` after its first character; ``text`` itself when it holds
    none. An insertion never creates an occurrence, so this ends with none left
    (overlapping occurrences take another pass). Single-character markers cannot be
    broken and are left alone."""
    pattern = _marker_pattern(tuple(markers))
    if pattern is None:
        return text
    while pattern.search(text):
        text = pattern.sub(lambda m: m.group(0)[0] + ZERO_WIDTH_SPACE + m.group(0)[1:], text)
    return text


def control_token_strings(tokenizer: PreTrainedTokenizerBase) -> tuple[str, ...]:
    """Every string ``tokenizer`` parses as one token of its own when it meets it in
    text: its added tokens (SmolLM2: ``<|im_start|>``, ``<|im_end|>``,
    ``<|endoftext|>``, ``<filename>``, ...) and its special tokens."""
    added = [token.content for token in getattr(tokenizer, "added_tokens_decoder", {}).values()]
    return tuple(sorted(set(added) | set(tokenizer.all_special_tokens)))


def _plain_article(article: Article, tokenizer: PreTrainedTokenizerBase) -> Article:
    markers = control_token_strings(tokenizer)
    title, text = plain_text(article.title, markers), plain_text(article.text, markers)
    if title == article.title and text == article.text:
        return article
    return article.model_copy(update={"title": title, "text": text})


def _user_message(article: Article, text: str) -> str:
    lines = [f"Title: {plain_text(article.title.strip(), CHAT_MARKUP)}"]
    if article.date_published is not None:
        lines.append(f"Published: {article.date_published.isoformat()[:10]}")
    lines.append("")
    lines.append(plain_text(text.strip(), CHAT_MARKUP))
    return "\n".join(lines)


def signal_messages(article: Article, text: str | None = None,
                    style: PromptStyle = "full") -> list[dict[str, str]]:
    """The chat messages the model is asked with: the instruction of ``style``, then the
    article (``text`` instead of the article's own text when given, e.g. cut to a
    budget). The classifier renders them with the chat template; a teacher LLM gets them
    as is. Chat markup in the article (:data:`CHAT_MARKUP`) is broken
    (:func:`plain_text`)."""
    if style not in INSTRUCTIONS:
        raise ValueError(f"unknown prompt style {style!r} (known: {', '.join(INSTRUCTIONS)})")
    return [
        {"role": "system", "content": INSTRUCTIONS[style]},
        {"role": "user", "content": _user_message(article, article.text if text is None else text)},
    ]


def _render(article: Article, text: str, tokenizer: PreTrainedTokenizerBase,
            style: PromptStyle) -> str:
    return tokenizer.apply_chat_template(signal_messages(article, text, style), tokenize=False,
                                         add_generation_prompt=True)


def _tokens(text: str, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    # The chat template already carries every special token the model needs.
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _cut(text: str, max_tokens: int, tokenizer: PreTrainedTokenizerBase) -> tuple[str, bool]:
    """``text`` shortened to at most ``max_tokens`` tokens (from the end); was it cut?"""
    cut = False
    if len(text) > max_tokens * _MAX_CHARS_PER_TOKEN:
        text, cut = text[: max_tokens * _MAX_CHARS_PER_TOKEN], True
    ids = _tokens(text, tokenizer)
    if len(ids) > max_tokens:
        # Decoding a prefix cannot spell a control token the text did not, but the
        # rule is cheap to re-apply to what is kept.
        text = plain_text(tokenizer.decode(ids[:max_tokens]), control_token_strings(tokenizer))
        cut = True
    return text, cut


def encode_prompt(
    article: Article,
    tokenizer: PreTrainedTokenizerBase,
    max_prompt_tokens: int = DEFAULT_MAX_PROMPT_TOKENS,
    style: PromptStyle = "full",
) -> EncodedPrompt:
    """Render ``article`` with the base model's chat template and the instruction of
    ``style`` (an adapter's is in its manifest), cut to fit the budget.

    The instruction and the answer position always survive. A title longer than half
    the room left by the instruction is cut; the body text is cut to what remains
    (both from the end). Control-token strings in the title and text are broken first
    (:func:`plain_text`), so no id in the article's span is a control token. Raises
    ``ValueError`` only when the instruction alone does not fit ``max_prompt_tokens``.
    """
    article = _plain_article(article, tokenizer)
    fixed = len(_tokens(_render(article.model_copy(update={"title": ""}), "", tokenizer, style),
                        tokenizer))
    room = max_prompt_tokens - fixed
    if room < 2:
        raise ValueError(
            f"max_prompt_tokens={max_prompt_tokens} leaves no room for the article: the "
            f"instruction alone takes {fixed} tokens")
    title, truncated = _cut(article.title, room // 2, tokenizer)
    if truncated:
        article = article.model_copy(update={"title": title})
    overhead = len(_tokens(_render(article, "", tokenizer, style), tokenizer))
    budget = max_prompt_tokens - overhead
    text, cut = _cut(article.text, max(budget, 0), tokenizer)
    truncated = truncated or cut
    # Cutting at a token boundary and decoding can re-tokenise a little differently;
    # shrink until the rendered prompt fits.
    while True:
        rendered = _render(article, text, tokenizer, style)
        ids = _tokens(rendered, tokenizer)
        if len(ids) <= max_prompt_tokens:
            return EncodedPrompt(token_ids=ids, text=rendered, truncated=truncated)
        budget -= len(ids) - max_prompt_tokens
        text, _ = _cut(text, max(budget, 0), tokenizer)
        truncated = True
