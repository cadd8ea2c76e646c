"""LoRA+ SFT: LoRA whose B matrices learn ``loraplus_lr_ratio`` times faster than A.

Hayou, Ghosh and Yu (2024), "LoRA+: Efficient Low Rank Adaptation of Large Models"
(arXiv:2402.12354): with one learning rate for A and B, B (initialised to zero) learns
too slowly in wide models; a larger rate for B converges faster. Everything else is
:mod:`train.lora`: same data, same loss, same manifest. The optimiser is peft's
``create_loraplus_optimizer`` (AdamW with per-group rates), passed to the trainer.
"""

from __future__ import annotations

from train.trainer import RunContext
from train.config import LoraPlusTrainConfig
from train.lora import train_lora
from classify.registry import AdapterVersion


def loraplus_optimizer(model, config: LoraPlusTrainConfig):
    """AdamW with lr for A (and embeddings) and ``lr x ratio`` for the B matrices."""
    import torch
    from peft.optimizers import create_loraplus_optimizer

    return create_loraplus_optimizer(
        model=model, optimizer_cls=torch.optim.AdamW, lr=config.learning_rate,
        loraplus_lr_ratio=config.loraplus_lr_ratio)


def train_loraplus(config: LoraPlusTrainConfig,
                   context: RunContext | None = None) -> AdapterVersion | None:
    """Train one LoRA+ adapter and publish it."""
    return train_lora(config, context, optimizer_factory=loraplus_optimizer)
