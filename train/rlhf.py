"""RLHF for the signal task: a reward model, then reinforcement learning against it.

1. **Reward model** (TRL ``RewardTrainer``, Bradley-Terry loss): the base model with a
   one-output score head and LoRA (``task_type=SEQ_CLS``, the head in
   ``modules_to_save``), trained on the preference pairs of
   :func:`pipeline.views.preference_rows` (chosen = the true label's answer).
2. **Policy** (TRL ``RLOOTrainer``, Ahmadian et al. 2024, arXiv:2402.14740, or
   ``GRPOTrainer``, Shao et al. 2024, arXiv:2402.03300): starts from an SFT adapter
   (``init_adapter``: an untuned model that never answers correctly gets zero
   advantage and learns nothing), samples ``num_generations`` short answers per prompt
   and is pushed towards those the reward model scores higher, with a KL penalty
   (``rl_beta``) towards where it started. PPO left TRL in 1.13; RLOO is its
   maintained successor.

The published adapter is the policy (a generative LoRA, loadable by vLLM); the reward
model's adapter and head are kept beside it in ``reward_model/`` for inspection.
"""

from __future__ import annotations

import logging

from train.data import mean_prompt_tokens, preference_pairs
from train.model import load_base_model, lora_config, peft_model
from train.trainer import RunContext, loss_curve, show_loss_progress, trainer_arguments
from train.config import RlhfTrainConfig
from classify.registry import AdapterVersion
from train.run import start_run

log = logging.getLogger(__name__)

# An answer is one label token (+ EOS); room for one more keeps sampling honest
# without paying for long generations on a CPU.
MAX_COMPLETION_TOKENS = 3


def train_reward_model(config: RlhfTrainConfig, rows: list[dict], tokenizer, output_dir):
    """Fit the reward model's LoRA + score head; return (trainer, merged reward model)."""
    from datasets import Dataset
    from peft import get_peft_model
    from trl import RewardConfig, RewardTrainer

    model = load_base_model(config, sequence_classification=True)
    model.config.pad_token_id = tokenizer.pad_token_id
    model = get_peft_model(model, lora_config(config, "SEQ_CLS", modules_to_save=["score"]))
    arguments = trainer_arguments(config, RunContext(), output_dir)
    arguments.update(output_dir=str(output_dir / "trainer"), max_steps=config.reward_steps,
                     learning_rate=config.reward_learning_rate, save_strategy="no")
    trainer = RewardTrainer(model=model, args=RewardConfig(**arguments, max_length=None),
                            train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    show_loss_progress(trainer, "reward model training")
    trainer.train()
    trainer.model.save_pretrained(output_dir)
    reward_model = trainer.model.merge_and_unload()
    reward_model.eval()
    return trainer, reward_model


def train_rlhf(config: RlhfTrainConfig, context: RunContext | None = None) -> AdapterVersion | None:
    """Reward model, then RLOO/GRPO from the SFT adapter; publish the policy adapter."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    # --- load ---------------------------------------------------------------
    run = start_run(config, context)
    tokenizer, staging = run.tokenizer, run.staging
    rows = preference_pairs(run.data, tokenizer, config)

    # --- fit: the reward model ----------------------------------------------
    reward_trainer, reward_model = train_reward_model(
        config, rows, tokenizer, staging / "reward_model")
    reward_history = reward_trainer.state.log_history
    log.info("reward model: accuracy %s", loss_curve(reward_history, "accuracy")[-1:])

    # --- fit: the policy against it -----------------------------------------
    policy = peft_model(config, load_base_model(config))
    config_cls, trainer_cls = ((RLOOConfig, RLOOTrainer) if config.algorithm == "rloo"
                               else (GRPOConfig, GRPOTrainer))
    args = config_cls(**trainer_arguments(config, run.context, staging),
                      num_generations=config.num_generations,
                      max_completion_length=MAX_COMPLETION_TOKENS,
                      temperature=config.temperature, beta=config.rl_beta)
    trainer = trainer_cls(
        model=policy, reward_funcs=reward_model, args=args,
        train_dataset=Dataset.from_list([{"prompt": r["prompt"]} for r in rows]),
        processing_class=tokenizer, reward_processing_classes=tokenizer,
        callbacks=run.context.callbacks)
    show_loss_progress(trainer, f"{config.algorithm} training", key="reward")
    result = trainer.train(resume_from_checkpoint=run.context.resume_from_checkpoint)
    if not trainer.is_world_process_zero():
        return None

    # --- save ---------------------------------------------------------------
    history = trainer.state.log_history
    trainer.model.save_pretrained(staging, selected_adapters=["default"])
    rewards = loss_curve(history, "reward")
    metrics = {
        "steps": result.global_step,
        "train_loss": round(result.training_loss, 6),
        "reward_curve": rewards,
        "first_reward": rewards[0] if rewards else None,
        "last_reward": rewards[-1] if rewards else None,
        "kl_curve": loss_curve(history, "kl"),
        "reward_model": {
            "steps": reward_trainer.state.global_step,
            "loss_curve": loss_curve(reward_history),
            "accuracy_curve": loss_curve(reward_history, "accuracy"),
        },
    }
    seen = mean_prompt_tokens(rows, tokenizer) * (
        2 * config.reward_steps * config.batch_size + result.global_step * config.batch_size)
    extra = {"algorithm": config.algorithm, "reward_model_path": "reward_model"}
    return run.publish(metrics, seen, extra)
