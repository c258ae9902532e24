"""Test-time evaluation of any checkpoint: pass@1 over n samples (T=0.6, top-p 0.95), pass@k,
maj@k, greedy pass@1, format / reasoning / truncation rates, per-kind breakdowns.

model.init_from is an r1jax run folder (its model shape, tokenizer and prompt template are
used; RUN/checkpoints/STEP: that step, else the newest), or a Hugging Face folder. Writes
WORKDIR/eval.json, eval_samples.jsonl and test_time_compute.png, and logs a short table.

GSM8K test (1319 problems, 8 samples each):
  r1jax --config=configs/eval.py:gsm8k --workdir=runs/eval-gsm8k --config.model.init_from=runs/sft
MATH-500 (16 samples each, 4096 new tokens):
  r1jax --config=configs/eval.py:math500 --workdir=runs/eval-math500 \
      --config.model.init_from=/models/Qwen2.5-Math-1.5B
HumanEval (164 code problems, 16 samples each, 4096 new tokens; each sample's program runs
the problem's tests in the bubblewrap sandbox, in config.eval.grade_workers processes):
  r1jax --config=configs/eval.py:humaneval --workdir=runs/eval-humaneval \
      --config.model.init_from=/models/DeepSeek-R1-Distill-Qwen-1.5B
HumanEval as base models are scored (the completion protocol: the raw stub is the prompt, no
template; each sample ends at HumanEval's stop sequences, config.eval.stop_strings, and is cut
there; greedy pass@1 and pass@k at T=0.2, top-p 0.95, at most 512 new tokens):
  r1jax --config=configs/eval.py:humaneval_completion --workdir=runs/eval-humaneval-base \
      --config.model.init_from=/models/Qwen2.5-1.5B
AIME 2024 (30 problems, 64 samples each as in the R1 paper, 8192 new tokens):
  r1jax --config=configs/eval.py:aime24 --workdir=runs/eval-aime24 \
      --config.model.init_from=runs/r1zero-1.5b
The built-in world's held-out problems (CPU, a minute or two; generated in memory), e.g. the
shipped base model (--config.model.init_from=r1jax/assets/world_base) or an R1-Zero run:
  r1jax --config=configs/eval.py:world --workdir=runs/eval-world --config.model.init_from=RUN
Any run: add --config.eval.max_problems=50 for a quick look, --config.eval.num_samples=4 for
fewer samples (larger ks are dropped), --config.eval.template=chat to override the template.
"""

import ml_collections

from configs import base
from r1jax.rewards import tasks

VARIANTS = ("gsm8k", "math500", "humaneval", "humaneval_completion", "aime24", "world")


def real(c: ml_collections.ConfigDict) -> None:
    """A real model on one GPU: bfloat16, the paper's sampling, R1-Zero template by default.

    R1 samples k = 16 answers a MATH problem and 64 an AIME one at T 0.6, top-p 0.95, up to
    32,768 new tokens; the budgets here (4096, 8192) are the RL stages' one-GPU ones."""
    c.model.dtype = "bfloat16"
    c.model.param_dtype = "bfloat16"
    c.data.format = "math"


def world_eval(c: ml_collections.ConfigDict) -> None:
    """The small world's held-out protocol (also configs/r1_zero.py:tiny's before/after)."""
    c.data.format = "world"
    c.data.eval = "test"  # world.dataset("test"): problems never in the corpus or RL prompts
    c.eval.template = "world"
    c.eval.num_samples = 64
    c.eval.ks = (1, 2, 4, 8, 16, 32, 64)
    c.eval.max_problems = 200
    c.eval.max_new_tokens = 64  # world responses stay under ~67 tokens; the context is 128
    c.eval.prompts_per_batch = 32
    c.eval.grade_workers = 0  # string comparisons: worker processes would only add start-up


def get_config(arg: str = "gsm8k") -> ml_collections.ConfigDict:
    """Variants: gsm8k, math500, humaneval, humaneval_completion, aime24 (../shared/data), world
    (the built-in world)."""
    c = base.get_config()
    c.stage = "eval"
    if arg == "gsm8k":
        real(c)
        c.data.format = "gsm8k"
        c.data.eval = base.data_path("gsm8k_test.jsonl")
        c.eval.num_samples = 8
        c.eval.ks = (1, 2, 4, 8)
        c.eval.max_new_tokens = 1024
        c.eval.prompts_per_batch = 32
    elif arg == "math500":
        real(c)
        c.data.eval = base.data_path("math500_test.jsonl")
        c.eval.num_samples = 16
        c.eval.ks = (1, 2, 4, 8, 16)
        c.eval.max_new_tokens = 4096
        c.eval.prompts_per_batch = 8
    elif arg == "humaneval":
        real(c)
        c.data.format = "humaneval"  # the model sees an instruction around each code stub
        c.data.eval = base.data_path("HumanEval.jsonl.gz")
        c.eval.num_samples = 16
        c.eval.ks = (1, 2, 4, 8, 16)
        c.eval.max_new_tokens = 4096
        c.eval.prompts_per_batch = 8
    elif arg == "humaneval_completion":
        real(c)
        c.data.format = "humaneval_completion"  # the raw stub; the model continues it
        c.data.eval = base.data_path("HumanEval.jsonl.gz")
        c.eval.template = "none"  # a chat or R1-Zero template would wrap the code in prose
        c.eval.temperature = 0.2  # the Codex paper's pass@1 temperature (greedy is also run)
        c.eval.num_samples = 16
        c.eval.ks = (1, 2, 4, 8, 16)
        c.eval.max_new_tokens = 512  # a function body, ended by HumanEval's stop sequences
        c.eval.stop_strings = tasks.COMPLETION_STOPS  # (the grader cuts the text at them too)
        c.eval.prompts_per_batch = 16
    elif arg == "aime24":
        real(c)
        c.data.eval = base.data_path("aime24_test.jsonl")
        c.eval.num_samples = 64
        c.eval.ks = (1, 2, 4, 8, 16, 32, 64)
        c.eval.max_new_tokens = 8192
        c.eval.prompts_per_batch = 1  # 64 rows of 8192 tokens; one prompt a device on a mesh
    elif arg == "world":
        world_eval(c)
    else:
        raise ValueError(f"configs/eval.py: unknown variant {arg!r} (one of {VARIANTS})")
    return c
