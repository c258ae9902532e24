"""The whole R1 recipe, stage after stage (r1jax/pipeline.py), ending with one table.

tiny: the small world on 2 CPU cores (21-34 minutes measured, README), from the shipped base:
  r1jax --config=configs/pipeline.py:tiny --workdir=runs/r1-pipeline
Stages (each in WORKDIR/<name>; a finished stage is skipped when the command is run again, a
killed one resumes from its checkpoints):
  r1_zero            GRPO on the base, accuracy + format rewards      (configs/r1_zero.py)
  reward_model       Bradley-Terry on the world's preference pairs    (configs/reward_model.py)
  cold_start         chains of thought from r1_zero, SFT of the base  (configs/cold_start.py)
  reasoning_rl       GRPO + language-consistency reward               (configs/reasoning_rl.py)
  rejection_sampling correct, readable samples + general data  (rejection_sampling.py)
  sft_all            SFT of the base on that mix                      (configs/sft_all.py)
  all_domain_rl      rule rewards + reward model, routed per prompt   (configs/all_domain_rl.py)
  distill            SFT of a smaller student on the final model      (configs/distill.py:tiny)
  student_rl         the same student trained by GRPO directly        (configs/distill.py:tiny_rl)
Then every model is evaluated on the same held-out problems and general prompts: WORKDIR/
table.md, table.json, table.png. Override any stage field, e.g.
  --config.stages.reasoning_rl.train.steps=80 --config.stages.reasoning_rl.rl.rewards.language=1.0
Real models: run the stage configs one by one (each has qwen2.5-1.5b and qwen2.5-7b-tpu
variants), or build a pipeline the same way from them (`stage_configs` below, with real-model
variants and paths).
"""

import ml_collections

from configs import (
    all_domain_rl,
    base,
    cold_start,
    distill,
    r1_zero,
    reasoning_rl,
    rejection_sampling,
    reward_model,
    sft_all,
)
from configs import eval as eval_config

ORDER = (
    "r1_zero",
    "reward_model",
    "cold_start",
    "reasoning_rl",
    "rejection_sampling",
    "sft_all",
    "all_domain_rl",
    "distill",
    "student_rl",
)


def stage_configs(size: str) -> ml_collections.ConfigDict:
    """Each stage's own config, wired to its inputs by '@stage' references."""
    s = ml_collections.ConfigDict()
    s.r1_zero = r1_zero.get_config(size)
    s.reward_model = reward_model.get_config(size)
    s.cold_start = cold_start.get_config(size)
    s.cold_start.collect.model = "@r1_zero"
    s.reasoning_rl = reasoning_rl.get_config(size)
    s.reasoning_rl.model.init_from = "@cold_start"
    s.rejection_sampling = rejection_sampling.get_config(size)
    s.rejection_sampling.collect.model = "@reasoning_rl"
    s.sft_all = sft_all.get_config(size)
    s.sft_all.data.train = "@rejection_sampling/dataset.jsonl"
    s.all_domain_rl = all_domain_rl.get_config(size)
    s.all_domain_rl.model.init_from = "@sft_all"
    s.all_domain_rl.rl.reward_model.path = "@reward_model"
    s.distill = distill.get_config(size)
    s.distill.collect.model = "@all_domain_rl"
    s.distill.collect.reward_model = "@reward_model"
    if size == "tiny":
        s.student_rl = distill.get_config("tiny_rl")
        for name in ("r1_zero", "reasoning_rl", "all_domain_rl", "student_rl"):
            s[name].data.eval = ""  # the pipeline's table evaluates every stage the same way
            s[name].train.checkpoint_every = 20
        s.r1_zero.train.steps = 60
    return s


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    """Variants: tiny (the small world on a CPU)."""
    if arg != "tiny":
        raise ValueError(
            f"configs/pipeline.py: unknown variant {arg!r} (tiny; for real models run the "
            "stage configs' qwen2.5-1.5b / qwen2.5-7b-tpu variants)"
        )
    c = base.get_config()
    c.stage = "pipeline"
    eval_config.world_eval(c)  # the held-out world problems, the world template
    c.eval.max_problems = 100
    c.eval.num_samples = 16
    c.eval.ks = (1, 2, 4, 8, 16)
    c.eval.max_new_tokens = 80
    c.eval.prompts_per_batch = 50
    # No config.tokenizer.path: each table row is evaluated with its own model's tokenizer (a
    # student's may not be the teacher's).
    c.stages = stage_configs(arg)
    c.pipeline = ml_collections.ConfigDict()
    c.pipeline.order = ORDER
    # (label, model) rows of the final table; '@name' is a stage's output folder.
    c.pipeline.table = (
        ("base", base.WORLD_BASE),
        ("r1_zero", "@r1_zero"),
        ("cold_start", "@cold_start"),
        ("reasoning_rl", "@reasoning_rl"),
        ("sft_all", "@sft_all"),
        ("all_domain_rl", "@all_domain_rl"),
        ("student_base", base.WORLD_STUDENT),
        ("student_distill", "@distill"),
        ("student_rl", "@student_rl"),
    )
    c.pipeline.reward_model = "@reward_model"  # scores every row's answers to general prompts
    c.pipeline.general_eval = "general_test"  # held-out general prompts (world.dataset)
    c.pipeline.general_problems = 64
    c.pipeline.general_samples = 4
    # What the recipe predicts, stated with this run's numbers in table.md: (metric, row, row).
    c.pipeline.checks = (
        ("language_consistency", "cold_start", "reasoning_rl"),
        ("language_consistency", "r1_zero", "reasoning_rl"),
        ("pass@1", "base", "r1_zero"),
        ("pass@1", "student_rl", "student_distill"),
        ("general/rm_score", "sft_all", "all_domain_rl"),
    )
    return c
