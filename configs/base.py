"""Fields every stage shares. Stage files start from get_config() here and override what differs.

Not run directly: pick a stage, e.g. `r1jax --config=configs/sft.py:tiny --workdir=runs/sft`.
"""

import os
import pathlib

import ml_collections

# ../shared/data next to the checkout; R1JAX_DATA overrides it.
DATA_DIR = os.environ.get(
    "R1JAX_DATA", str(pathlib.Path(__file__).resolve().parents[2] / "shared" / "data")
)


# Shipped small-world checkpoints (each provenance.json names the command that made it).
ASSETS = pathlib.Path(__file__).resolve().parents[1] / "r1jax" / "assets"
WORLD_BASE = str(ASSETS / "world_base")  # configs/pretrain.py:tiny, step 750
WORLD_STUDENT = str(ASSETS / "world_student")  # configs/pretrain.py:student (distillation)


def get_config() -> ml_collections.ConfigDict:
    """The shared defaults, one comment per field."""
    c = ml_collections.ConfigDict()
    c.stage = ""  # which loop r1jax.main runs: pretrain | sft | rl | eval | collect | ...
    c.seed = 0  # root seed: init, data order and sampling keys all derive from it

    c.model = ml_collections.ConfigDict()
    c.model.preset = "tiny"  # a name from r1jax.model.config.PRESETS
    c.model.init_from = (
        ""  # '' = random init; a Hugging Face folder; an r1jax run (RUN/checkpoints/STEP: a step)
    )
    c.model.vocab_size = 0  # 0 = the tokenizer's (trained or given); init_from brings its own
    c.model.d_model = 0  # 0 = the preset's; likewise the shape fields below
    c.model.n_layers = 0
    c.model.n_heads = 0
    c.model.n_kv_heads = 0
    c.model.head_dim = 0
    c.model.d_ff = 0
    c.model.max_seq_len = 0
    # '' = the preset's; qwen2 | llama | qwen3 switches the architecture of a random init or a
    # bare checkpoint (q/k/v biases: qwen2 only; q/k norms: qwen3 only). init_from brings its own.
    c.model.family = ""
    c.model.dtype = "float32"  # compute dtype: float32 | bfloat16
    c.model.param_dtype = "float32"  # master weights and optimizer state
    c.model.remat = "none"  # none | full | dots: rematerialise each layer in the backward pass
    c.model.unroll_layers = 0  # layers per layer-loop iteration: 1 scan, n straight-line, 0 auto
    c.model.attention_chunk = 0  # queries per attention block (memory ~ block x seq); 0 = all

    c.tokenizer = ml_collections.ConfigDict()
    c.tokenizer.path = ""  # a SentencePiece .model, or a folder/tokenizer.json; '' = model folder
    c.tokenizer.train_vocab_size = 0  # >0 without path or model.init_from: train SentencePiece

    c.data = ml_collections.ConfigDict()
    c.data.train = ""  # training file (.jsonl, .json list, .parquet; .gz allowed)
    # Held-out file ('' = none): the eval loss (pretrain, sft), the problems evaluated before and
    # after training (rl) or evaluated (eval), the pairs scored (reward_model).
    c.data.eval = ""
    # jsonl (prompt/response or text) | gsm8k | math | humaneval | humaneval_completion | world
    c.data.format = "jsonl"
    c.data.world_seed = 0  # data.format=world: the generator's seed (train/eval name a dataset)
    c.data.seq_len = 256  # tokens per packed row
    c.data.batch_size = 16  # global rows per optimizer step (all processes together)
    c.data.pack = True  # pack several examples per row (segment ids keep them apart)
    c.data.template = "chat"  # prompt template for SFT: chat | r1_zero | world | none
    c.data.on_error = "raise"  # malformed rows: raise (file:line) | skip (and count)
    # Use only the first N records (0 = all) of every data file the stage reads: data.train,
    # data.eval, and rl.general_prompts / collect.general_data / pipeline.general_eval.
    c.data.max_records = 0
    c.data.eval_batches = 4  # batches in each eval-loss measurement

    c.optim = ml_collections.ConfigDict()
    # The schedule is read at the training step (every RL update of a step, and a skipped
    # non-finite step, take that step's rate: metrics' lr); grad_norm is before clipping.
    c.optim.lr = 3e-4  # peak learning rate
    c.optim.schedule = "cosine"  # constant | cosine | linear (after warmup)
    c.optim.warmup_steps = 20  # linear warm-up to the peak rate
    # >0: the warm-up is this fraction of train.steps instead (rounded; warmup_steps must be 0),
    # for train.epochs runs, whose steps are known only once the data is read.
    c.optim.warmup_ratio = 0.0
    c.optim.min_lr_ratio = 0.1  # final lr as a fraction of the peak
    c.optim.b1 = 0.9  # Adam first-moment decay
    c.optim.b2 = 0.95  # Adam second-moment decay
    c.optim.eps = 1e-8  # Adam's denominator epsilon
    c.optim.weight_decay = 0.0  # AdamW's, on matrices and embeddings (not norms or biases)
    c.optim.grad_clip = 1.0  # global-norm clipping (0 = off)

    c.train = ml_collections.ConfigDict()
    c.train.steps = 100  # optimizer steps
    c.train.epochs = 0.0  # >0 (pretrain, sft, collect): steps = this many passes over the data
    c.train.grad_accum = 1  # micro-batches per step (the loss stays exact: sums and counts)
    c.train.log_every = 10  # metrics row every N steps
    c.train.eval_every = 50  # eval loss every N steps (0 = only at the end)
    c.train.checkpoint_every = 50  # checkpoint every N steps (and at the end)
    c.train.keep_checkpoints = 2  # how many checkpoints to keep
    c.train.max_bad_steps = 3  # stop after this many non-finite steps in a row

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # data-parallel axis (-1 = all remaining devices)
    c.mesh.fsdp = 1  # parameter-sharded data-parallel axis
    c.mesh.tensor = 1  # tensor-parallel axis
    c.mesh.num_devices = 0  # use the first N devices (0 = all of them); for tests and debugging
    # ((logical name, mesh axis or list or None), ...): replace those defaults; on the command
    # line --config.mesh.rules='(("embed", None), ("mlp", ("fsdp", "tensor")))'
    c.mesh.rules = ()

    c.rl = ml_collections.ConfigDict()
    c.rl.algorithm = "grpo"  # grpo | ppo
    c.rl.prompts_per_step = 32  # B: prompts per rollout step (all processes together)
    c.rl.num_samples = 16  # G: completions per prompt
    c.rl.max_prompt_len = 256  # prompts are left-cut to this many tokens
    c.rl.max_new_tokens = 1024  # T: completion budget
    c.rl.sample_prompts_per_call = 0  # prompts per sampler call (KV cache ~ its rows); 0 = all
    c.rl.temperature = 1.0  # sampling temperature (log-probs use the same scaled distribution)
    # Truncation (top_p < 1, top_k > 0) is warned about: the log-probs of the ratio and the KL
    # are the untruncated policy's, so the samples are off-policy by it.
    c.rl.top_p = 1.0
    c.rl.top_k = 0  # 0 = off
    c.rl.template = "r1_zero"  # prompt template: r1_zero | chat | world | none
    c.rl.rewards = ml_collections.ConfigDict({"accuracy": 1.0, "format": 1.0})  # name -> weight
    c.rl.reward_workers = 2  # host processes scoring completions (0 = in-process)
    c.rl.reward_timeout_s = 10.0  # per completion; a timeout scores 0 and is counted
    c.rl.advantage = "grpo"  # grpo | rloo (GRPO family); PPO uses GAE
    c.rl.std_normalize = "group"  # group | batch | none (none + seq-mean-token-sum-norm = Dr. GRPO)
    c.rl.clip_low = 0.2  # ratio clip below 1
    c.rl.clip_high = 0.2  # ratio clip above 1 (DAPO clip-higher: 0.28)
    c.rl.dual_clip = 0.0  # dual-clip constant c > 1 for negative advantages (0 = off)
    c.rl.aggregation = "seq-mean-token-mean"  # | token-mean (DAPO) | seq-mean-token-sum-norm
    c.rl.ratio_level = "token"  # token | sequence (GSPO)
    c.rl.kl_coef = 0.001  # GRPO: KL-to-reference weight in the loss; PPO: in the reward
    c.rl.kl_estimator = "k3"  # k1 | k2 | k3 (GRPO's KL in the loss: k3; configs/ppo.py: k1)
    c.rl.entropy_coef = 0.0  # entropy bonus
    c.rl.tis_cap = 0.0  # truncated importance sampling cap on sampler/trainer ratio (0 = off)
    c.rl.epochs = 1  # mu: passes over each rollout
    c.rl.num_minibatches = 1  # optimizer updates per pass
    c.rl.ref_reset_every = 0  # copy the policy into the reference every N steps (0 = never)
    c.rl.dynamic_sampling = False  # DAPO: drop all-equal-reward groups and sample more prompts
    c.rl.max_sampling_rounds = 3  # cap on dynamic-sampling rounds per step
    c.rl.mask_truncated = False  # no loss on completions that hit max_new_tokens
    c.rl.overlong_buffer = 0  # DAPO soft overlong penalty over the last N tokens (0 = off)
    c.rl.overlong_penalty = 1.0  # penalty at the hard length limit
    c.rl.gamma = 1.0  # PPO discount
    c.rl.lam = 0.95  # PPO GAE lambda
    c.rl.vf_coef = 0.1  # PPO value-loss weight
    c.rl.value_clip = 0.2  # PPO value clipping
    c.rl.critic = "shared"  # PPO critic: shared trunk + value head | separate model
    # PPO: >0 gives the critic (value head, and the critic model) an optimizer of its own with
    # this peak rate (optim's schedule, warm-up, betas, decay) and its own grad_clip, as
    # OpenRLHF's critic_learning_rate; 0 = one optimizer and clip over all params (as TRL).
    c.rl.critic_lr = 0.0
    c.rl.ppo_form = "clip"  # clip | kl_penalty (PPO §4: KL(old || new) in the loss, kl_coef adapts)
    c.rl.kl_target = 0.01  # kl_penalty form: target KL(old || new) per token after an update
    # PPO's clip form: > 0 adapts the KL-in-reward coefficient (from rl.kl_coef) toward
    # rl.kl_target, then the rollout's KL(policy || ref) per sample (rl.kl_estimator summed over
    # its tokens), with Ziegler et al.'s controller over this horizon in samples (TRL's default
    # target 6, horizon 10000); 0 = a fixed coefficient.
    c.rl.kl_horizon = 0
    c.rl.whiten_advantages = True  # PPO: whiten GAE advantages over the batch
    c.rl.eval_every = 0  # held-out evaluation every N steps (0 = before and after only)
    c.rl.eval_prompts = 64  # held-out prompts per evaluation; eval.max_problems, when set, wins
    c.rl.log_samples_every = 10  # print an example completion every N steps

    # All-domain RL (R1 stage 4): general prompts are routed per prompt to a reward model.
    c.rl.reward_model = ml_collections.ConfigDict()
    c.rl.reward_model.path = ""  # a reward_model run folder; scores records of domain "general"
    c.rl.reward_model.weight = 1.0  # its weight (rule rewards: only rl.general_rule_rewards)
    c.rl.reward_model.scope = "response"  # response | summary (the text after </think>, as R1)
    # z-score by the mean / std of its scores on its evaluation responses (rm_eval.json): needed
    # to add two models' scores, or with rl.std_normalize other than "group"
    c.rl.reward_model.normalize = False
    # A second reward model (R1 §2.3.4: helpfulness judged on the summary by rl.reward_model,
    # harmlessness on the whole response by this one); a general prompt gets the weighted sum.
    c.rl.harmlessness_model = ml_collections.ConfigDict()
    c.rl.harmlessness_model.path = ""  # a reward_model run folder ('' = none)
    c.rl.harmlessness_model.weight = 1.0  # its weight in a general prompt's reward
    c.rl.harmlessness_model.scope = "response"  # response | summary, as rl.reward_model.scope
    c.rl.harmlessness_model.normalize = True  # its scores are added to rl.reward_model's
    c.rl.general_prompts = ""  # general prompts (data.format dataset name or file) mixed in
    c.rl.general_fraction = 0.0  # share of each step's prompts drawn from general_prompts
    # General prompts only after this many sampling rounds (R1: the last part of the run): a
    # round is a step, unless rl.dynamic_sampling samples more rounds in a step.
    c.rl.general_from_step = 0
    # Rule rewards (names in rl.rewards, at their weights) general prompts get too, added to the
    # reward models' score: () = the reward models alone (R1 on arXiv, §2.3.4); R1 in Nature
    # (equations 8-10) adds format to general prompts and language to every prompt:
    # ("format", "language") with those two in rl.rewards.
    c.rl.general_rule_rewards = ()
    # Subtracted from a general response's reward when it hit rl.max_new_tokens without its stop
    # token (TRL's missing_eos_penalty; 0 = off): a reward model reads a cut response as if it
    # were finished (it scores the row with an end token put after it).
    c.rl.missing_eos_penalty = 0.0

    # Sampling datasets from a model (cold start, rejection sampling, distillation).
    c.collect = ml_collections.ConfigDict()
    c.collect.model = ""  # the model sampled: an r1jax run folder, checkpoint or HF folder
    c.collect.tokenizer = ""  # its tokenizer ('' = its own; config.tokenizer is the SFT model's)
    c.collect.template = ""  # prompt template when sampling ('' = the source run's own)
    c.collect.num_prompts = 0  # prompts of data.train sampled (0 = all)
    c.collect.num_samples = 4  # samples per prompt
    c.collect.temperature = 0.7  # sampling temperature
    c.collect.top_p = 0.95  # nucleus sampling (1 = off)
    c.collect.max_new_tokens = 1024  # completion budget (truncated samples never pass)
    c.collect.prompts_per_batch = 32  # prompts per sampler call (rounded up to data x fsdp)
    c.collect.require_correct = True  # the task's rule check must accept the answer
    c.collect.require_format = True  # <think>...</think> <answer>...</answer>, nothing else
    c.collect.min_language_consistency = 0.0  # share of thought words in the prompt's language
    c.collect.min_tokens = 1  # response length bounds (tokens, stop token included)
    c.collect.max_tokens = 0  # 0 = no bound beyond max_new_tokens (truncated ones never pass)
    # A repetition loop: some run of ngram_size words (CJK characters and symbols count as
    # words) appears more than max_ngram_repeats times (0 = off). Long runs: math notation
    # repeats short ones ('\sqrt { a' 9 times in R1's own aha-moment chain).
    c.collect.max_ngram_repeats = 3
    c.collect.ngram_size = 16  # words in that run
    # R1 §2.3.3's other readability filters (0 / False: off): the longest paragraph of the
    # thought, in characters, and code blocks (```) in it.
    c.collect.max_paragraph_chars = 0
    c.collect.reject_code_blocks = False  # True: drop thoughts holding a ``` block
    c.collect.max_per_prompt = 1  # distinct accepted responses kept per prompt
    c.collect.summary = True  # render with a one-line summary at the end of the thought
    c.collect.general_prompts = ""  # general prompts sampled too, kept if the reward model agrees
    c.collect.num_general_prompts = 0  # how many of them (0 = all)
    c.collect.general_data = ""  # general (non-reasoning) SFT rows mixed in ('' = none)
    c.collect.general_ratio = 0.0  # general rows per reasoning row
    c.collect.reward_model = ""  # a reward_model run judging general samples and rows
    c.collect.general_min_score = 0.0  # keep general rows the reward model scores above this
    c.collect.normalize_scores = False  # that score z-scored by the reward model run's statistics
    c.collect.sft = False  # then SFT model.init_from on the dataset, in the same workdir

    # Reward-model training (Bradley-Terry on chosen/rejected pairs).
    c.rm = ml_collections.ConfigDict()
    c.rm.hh_eval = ""  # an HH-RLHF jsonl(.gz) whose held-out accuracy is reported ('' = none)
    c.rm.hh_max_pairs = 500  # pairs of it scored (0 = all)
    c.rm.max_len = 0  # tokens per prompt + response (0 = the model's context); keeps the end

    c.eval = ml_collections.ConfigDict()
    c.eval.num_samples = 16  # n samples per problem for pass@1, pass@k and maj@k
    c.eval.temperature = 0.6  # the R1 paper's evaluation temperature
    c.eval.top_p = 0.95  # nucleus sampling (the R1 paper's 0.95)
    c.eval.top_k = 0  # 0 = off
    c.eval.max_new_tokens = 1024  # completion budget (truncated samples are counted)
    # A sample also ends once its text holds one of these (kept in the text: the grader cuts);
    # configs/eval.py:humaneval_completion stops on HumanEval's stop sequences.
    c.eval.stop_strings = ()
    c.eval.ks = (1, 2, 4, 8, 16)  # k values of the pass@k / maj@k curves (> num_samples dropped)
    c.eval.greedy = True  # also one greedy sample per problem (pass@1_greedy)
    c.eval.prompts_per_batch = 32  # prompts per sampler call (x num_samples rows); rounded up
    # to a multiple of the mesh's data x fsdp (each device samples whole prompts)
    c.eval.max_problems = 0  # only the first N problems of data.eval (0 = all; RL: rl.eval_prompts)
    c.eval.template = ""  # chat | r1_zero | world | none; '' = the run's own (else r1_zero)
    # Worker processes grading task accuracy in parallel (capped at the cores; 0 = in this
    # process): math-verify takes ~10 ms a wrong answer, a code run 75-150 ms.
    c.eval.grade_workers = 4
    c.eval.grade_timeout_s = 10.0  # a completion graded past this scores 0 (code: its limit)

    c.metrics = ml_collections.ConfigDict()
    c.metrics.peak_flops = 0.0  # per-device peak FLOP/s for MFU; 0 = measure a float32 matmul
    c.metrics.tensorboard = True  # also write TensorBoard event files
    return c


def data_path(name: str) -> str:
    """A file in the shared data folder."""
    return str(pathlib.Path(DATA_DIR) / name)
