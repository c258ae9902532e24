"""Tokenizers (SentencePiece trained here, HF tokenizer.json built here), templates and tags."""

import json
import time

import numpy as np
import pytest
import tokenizers
import transformers

from r1jax import text
from r1jax.data import world

CORPUS = [
    f"Tom has {a} apples and buys {b} more. <think>{a} + {b} = {a + b}</think> "
    f"<answer>{a + b}</answer>\nThe answer is {a + b}."
    for a in range(3, 40, 3)
    for b in range(2, 30, 4)
] + ["小明有三个苹果。他又买了两个。", "Bonjour, ça va très bien !"]

SAMPLES = [
    "Tom has 12 apples.",
    "<think>3 + 4 = 7</think> <answer>7</answer>",
    "two  spaces,\nnew line\tand tab",
    "小明有五个苹果 — unseen: ζ∑🙂",
]


@pytest.fixture(scope="module")
def sp_tok(tmp_path_factory):
    prefix = tmp_path_factory.mktemp("sp") / "tok"
    return text.SentencePieceTokenizer.train(CORPUS, prefix, vocab_size=320)


def test_sentencepiece_ids_are_fixed_and_tags_are_single_tokens(sp_tok):
    assert (sp_tok.pad_id, sp_tok.bos_id, sp_tok.eos_id) == (text.PAD_ID, text.BOS_ID, text.EOS_ID)
    assert (text.PAD_ID, text.UNK_ID, text.BOS_ID, text.EOS_ID) == (0, 1, 2, 3)
    assert [sp_tok.token_to_id(tag) for tag in text.REASONING_TAGS] == [4, 5, 6, 7]
    for tag in text.REASONING_TAGS:
        assert sp_tok.encode(tag) == [sp_tok.token_to_id(tag)]
    assert sp_tok.token_to_id("no-such-piece") is None
    assert sp_tok.vocab_size == 320
    assert isinstance(sp_tok, text.Tokenizer)


@pytest.mark.parametrize("sample", SAMPLES)
def test_sentencepiece_round_trip_any_text(sp_tok, sample):
    ids = sp_tok.encode(sample)
    assert text.BOS_ID not in ids and text.EOS_ID not in ids
    assert sp_tok.decode(ids) == sample


def test_sentencepiece_concatenation_and_decode_rules(sp_tok):
    a, b = "User: what is 2+2?\nAssistant:", " <think>4</think>"
    # No dummy prefix: pieces encoded apart decode to the joined text.
    assert sp_tok.decode(sp_tok.encode(a) + sp_tok.encode(b)) == a + b
    ids = [sp_tok.bos_id] + sp_tok.encode(a) + [sp_tok.eos_id] + sp_tok.encode(b) + [0, 0]
    assert sp_tok.decode(ids) == a + b  # EOS does not stop decoding; pad is dropped


def test_sentencepiece_training_is_deterministic(tmp_path, sp_tok):
    again = text.SentencePieceTokenizer.train(CORPUS, tmp_path / "again", vocab_size=320)
    assert again.model_proto == sp_tok.model_proto
    assert (tmp_path / "again.model").read_bytes() == sp_tok.model_proto
    other = text.SentencePieceTokenizer.train(CORPUS[:40], tmp_path / "other", vocab_size=320)
    assert other.model_proto != sp_tok.model_proto


def test_sentencepiece_trains_on_lines_longer_than_its_sentence_limit(tmp_path):
    # SentencePiece's trainer skips a sentence over max_sentence_length bytes without a word: a
    # corpus of long one-line chains of thought trained on nothing (or on the short lines only).
    words = [f"w{'zqxjkv'[i % 6]}{i % 7}é" for i in range(20_000)]
    line = " ".join(words)
    assert len(line.encode()) > text.MAX_SENTENCE_BYTES
    tok = text.SentencePieceTokenizer.train([line], tmp_path / "long", vocab_size=300)
    assert tok.decode(tok.encode(line)) == line
    assert len(tok.encode("wz0é wq1é")) < len("wz0é wq1é".encode())  # pieces learned from it
    pieces = list(text._sentence_pieces(line, 1000))
    assert "".join(pieces) == line and all(len(p.encode()) <= 1000 for p in pieces)
    assert all(p.startswith(" ") for p in pieces[1:])  # cut at spaces
    no_space = "é" * 999
    pieces = list(text._sentence_pieces(no_space, 1000))  # 2-byte characters, never split
    assert "".join(pieces) == no_space and [len(p.encode()) for p in pieces] == [1000, 998]


def test_sentencepiece_training_on_blank_texts_says_so(tmp_path):
    # SentencePiece's own error was "INTERNAL: src/trainer_interface.cc(467) [!sentences_.empty()]".
    with pytest.raises(text.TokenizerError, match="every text is empty or blank"):
        text.SentencePieceTokenizer.train(["", " \n\t", "\r\n"], tmp_path / "x", vocab_size=300)
    assert not (tmp_path / "x.model").exists()


def test_sentencepiece_unigram_and_save_load(tmp_path):
    uni = text.SentencePieceTokenizer.train(
        CORPUS, tmp_path / "uni", vocab_size=360, model_type="unigram"
    )
    assert uni.decode(uni.encode(SAMPLES[3])) == SAMPLES[3]
    uni.save(tmp_path / "copy" / "tokenizer.model")
    loaded = text.load_tokenizer(tmp_path / "copy")  # a folder holding tokenizer.model
    assert isinstance(loaded, text.SentencePieceTokenizer)
    assert loaded.encode(SAMPLES[0]) == uni.encode(SAMPLES[0])
    assert text.load_tokenizer(tmp_path / "uni.model").model_proto == uni.model_proto
    with pytest.raises(ValueError, match="model_type"):
        text.SentencePieceTokenizer.train(CORPUS, tmp_path / "x", vocab_size=300, model_type="wp")


def _build_hf_folder(folder, *, with_config=True):
    """A tiny byte-level BPE tokenizer.json (and tokenizer_config.json) made here."""
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|pad|>", "<think>", "</think>", "<answer>", "</answer>"]
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    if with_config:
        config = {"eos_token": "<|endoftext|>", "pad_token": {"content": "<|pad|>"}}
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def test_hf_tokenizer_matches_transformers(tmp_path):
    folder = _build_hf_folder(tmp_path / "hf")
    tok = text.load_tokenizer(folder)
    assert isinstance(tok, text.HFTokenizer)
    assert (tok.eos_id, tok.pad_id, tok.bos_id) == (0, 1, None)
    assert tok.token_to_id("<think>") == 2
    ref = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"))
    for sample in SAMPLES:
        ids = tok.encode(sample)
        assert ids == ref.encode(sample, add_special_tokens=False)
        assert tok.decode(ids) == sample == ref.decode(ids)
    ids = tok.encode("a") + [tok.eos_id] + tok.encode("b") + [tok.pad_id]
    assert tok.decode(ids) == "a<|endoftext|>b"
    assert text.load_tokenizer(folder / "tokenizer.json").vocab_size == tok.vocab_size


def test_control_token_text_in_data_is_warned_about_once(tmp_path, caplog):
    # As transformers' tokenizer(text), "<|endoftext|>" in a text is the EOS token: a
    # response holding it trained an EOS in its middle, silently. The R1 tags are not warned
    # about (the templates name them; this tokenizer holds them as special tokens).
    tok = text.HFTokenizer(_build_hf_folder(tmp_path / "hf"))
    with caplog.at_level("WARNING"):
        assert tok.encode("<think>a</think> <answer>b</answer>").count(2) == 1
        assert "control token" not in caplog.text
        assert tok.eos_id in tok.encode("an answer<|endoftext|> and more")
        assert tok.pad_id in tok.encode_continuation("x<|pad|>")
    assert caplog.text.count("control token") == 1 and "<|endoftext|>" in caplog.text


def test_hf_tokenizer_eos_from_generation_config(tmp_path):
    folder = _build_hf_folder(tmp_path / "hf", with_config=False)
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [3, 0]}))
    tok = text.HFTokenizer(folder)
    assert tok.eos_id == 3 and tok.pad_id == 3  # pad falls back to EOS
    assert text.stop_ids(tok) == (3, 0)
    # Without generation_config.json, config.json's list (transformers stops on all of them).
    (folder / "generation_config.json").unlink()
    (folder / "config.json").write_text(json.dumps({"eos_token_id": [3, 0]}))
    assert text.stop_ids(text.HFTokenizer(folder)) == (3, 0)


def test_load_tokenizer_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.model"):
        text.load_tokenizer(tmp_path / "nothing.model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither tokenizer.json nor tokenizer.model"):
        text.load_tokenizer(tmp_path / "empty")
    (tmp_path / "vocab.txt").write_text("a\n")
    with pytest.raises(ValueError, match="vocab.txt: not a tokenizer"):
        text.load_tokenizer(tmp_path / "vocab.txt")


def test_corrupt_tokenizer_files_name_the_file(tmp_path):
    (tmp_path / "junk.model").write_bytes(b"not a sentencepiece model")
    with pytest.raises(text.TokenizerError, match=r"junk\.model: not a usable SentencePiece"):
        text.load_tokenizer(tmp_path / "junk.model")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(text.TokenizerError, match=r"tokenizer\.json: not a readable tokenizer"):
        text.load_tokenizer(tmp_path / "tokenizer.json")
    folder = _build_hf_folder(tmp_path / "hf", with_config=False)
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|eos|>"}))
    with pytest.raises(
        text.TokenizerError, match="'<\\|eos\\|>' of tokenizer_config.json is not in"
    ):
        text.load_tokenizer(folder)
    for name, value in (("tokenizer_config.json", None), ("config.json", [1, 2])):
        (folder / name).write_text(json.dumps(value))
        with pytest.raises(text.TokenizerError, match=rf"{name}: expected a JSON object, got"):
            text.load_tokenizer(folder)
        (folder / name).unlink()
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": 99999}))
    with pytest.raises(text.TokenizerError, match=r"eos_id 99999 .* not an id of the \d+-token"):
        text.load_tokenizer(folder)


def test_r1_zero_template_is_the_papers():
    paper = (
        "A conversation between User and Assistant. The user asks a question, and the Assistant "
        "solves it. The assistant first thinks about the reasoning process in the mind and then "
        "provides the user with the answer. The reasoning process and answer are enclosed within "
        "<think> </think> and <answer> </answer> tags, respectively, i.e., <think> reasoning "
        "process here </think> <answer> answer here </answer>. User: prompt. Assistant:"
    )
    assert text.R1_ZERO_TEMPLATE.format(prompt="prompt") == paper
    assert text.r1_zero_prompt(" What is 2+2? ").endswith("User: What is 2+2?. Assistant:")
    assert text.apply_template("r1_zero", "q") == text.r1_zero_prompt("q")


def test_chat_templates():
    assert text.chat_prompt("Hi?") == "User: Hi?\nAssistant:"
    assert text.chat_prompt("Hi?", system="Be brief.") == "System: Be brief.\nUser: Hi?\nAssistant:"
    assert text.chat_example("Hi?", "Hello.") == "User: Hi?\nAssistant: Hello."
    assert text.apply_template("none", "raw") == "raw"
    assert text.response_text("none", "x") == "x"
    with pytest.raises(ValueError, match="unknown template 'alpaca'"):
        text.apply_template("alpaca", "q")


def _chat_ids(tokenizer, messages, **kwargs):
    out = tokenizer.apply_chat_template(messages, tokenize=True, **kwargs)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


@pytest.mark.parametrize("kind", ["sentencepiece", "byte-level"])
@pytest.mark.parametrize("template", text.TEMPLATES)
def test_the_exported_chat_template_renders_the_trained_template(tmp_path, kind, template):
    # An exported model kept its base tokenizer's chat_template ('<|im_start|>user ...') while
    # it was trained on 'User: ...\nAssistant:': transformers users prompted it in a format it
    # never saw. hf_chat_template renders r1jax's own templates; the ids are r1jax's.
    folder = tmp_path / "hf"
    if kind == "sentencepiece":  # BOS first
        sp = text.SentencePieceTokenizer.train(CORPUS * 3, tmp_path / "sp", vocab_size=400)
        folder.mkdir()
        (folder / "tokenizer.json").write_text(sp.to_hf_json())
        config = {"tokenizer_class": "PreTrainedTokenizerFast", **sp.special_tokens()}
    else:  # no BOS
        _build_hf_folder(folder)
        config = {"eos_token": "<|endoftext|>", "pad_token": "<|pad|>"}
    ours = text.load_tokenizer(folder)
    bos = bool(text.bos_ids(ours))
    assert bos == (kind == "sentencepiece")
    config["chat_template"] = text.hf_chat_template(template, bos=bos)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    ref = transformers.PreTrainedTokenizerFast.from_pretrained(folder)
    question, answer = (
        "  Tom has 12 apples. 小明? ",
        " <think>12 + 3 = 15</think> <answer>15</answer> ",
    )
    user = [{"role": "user", "content": question}]
    prompt = text.apply_template(template, question)
    assert _chat_ids(ref, user, add_generation_prompt=True) == text.bos_ids(ours) + ours.encode(
        prompt
    )
    both = user + [{"role": "assistant", "content": answer}]
    rendered = ref.apply_chat_template(both, tokenize=False)
    head = ref.bos_token if bos else ""
    assert rendered == head + text.chat_example(question, answer, template=template) + "<" + (
        "/s>" if bos else "|endoftext|>"
    )
    system = [{"role": "system", "content": "Be brief."}] + user
    if template == "chat":
        assert ref.apply_chat_template(system, tokenize=False, add_generation_prompt=True) == (
            head + text.chat_prompt(question, system="Be brief.")
        )
    else:
        with pytest.raises(Exception, match=f"the {template} template has no system message"):
            ref.apply_chat_template(system, tokenize=False)
        with pytest.raises(Exception, match="takes one user turn"):
            ref.apply_chat_template(both + user, tokenize=False)
    with pytest.raises(Exception, match="must alternate user and assistant"):
        ref.apply_chat_template(user + user, tokenize=False)


def test_format_and_split_reasoning():
    formatted = text.format_reasoning(" step 1\nstep 2 ", "42")
    assert formatted == "<think>step 1\nstep 2</think> <answer>42</answer>"
    assert text.split_reasoning(formatted) == ("step 1\nstep 2", "42")
    assert text.split_reasoning("no tags") == (None, None)
    assert text.split_reasoning("<think>open only <answer>1</answer>") == (None, "1")
    two = "<think>a</think><answer>1</answer> <answer> 2 </answer>"
    assert text.split_reasoning(two) == ("a", "2")


def test_split_reasoning_is_linear_on_unclosed_tags():
    # The open(.*?)close regexes rescanned to the end from every unclosed tag: 640 kB of them
    # took minutes. The answer is also the world task's (`world.final_answer`).
    hostile = "<think><answer>" * 40_000
    start = time.perf_counter()
    assert text.split_reasoning(hostile) == (None, None)
    assert world.final_answer("<answer> 7 </answer>" + hostile) == "7"
    assert time.perf_counter() - start < 1.0


def test_a_run_keeps_its_tokenizer_files(tmp_path):
    """resolve_tokenizer copies the tokenizer into the run, so the run folder alone loads it."""
    import ml_collections

    from r1jax.train import supervised

    def cfg(path="", init_from=""):
        return ml_collections.ConfigDict(
            {"tokenizer": {"path": path, "train_vocab_size": 0}, "model": {"init_from": init_from}}
        )

    hf = _build_hf_folder(tmp_path / "hf")
    sp = text.SentencePieceTokenizer.train(CORPUS, tmp_path / "sp", vocab_size=320)
    for config, want in (
        (cfg(init_from=str(hf)), ["tokenizer.json", "tokenizer_config.json"]),
        (cfg(path=str(hf / "tokenizer.json")), ["tokenizer.json", "tokenizer_config.json"]),
        (cfg(path=str(tmp_path / "sp.model")), ["tokenizer.model"]),
    ):
        run = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
        tok = supervised.resolve_tokenizer(config, run, [])
        assert sorted(p.name for p in run.iterdir()) == want
        again = text.load_tokenizer(run)
        assert again.encode("Work mod 7. <think>") == tok.encode("Work mod 7. <think>")
        assert (again.eos_id, again.bos_id, again.pad_id) == (tok.eos_id, tok.bos_id, tok.pad_id)
    assert sp.vocab_size == 320
    # Resuming that run with another tokenizer is refused: its checkpoint speaks the old ids.
    other = text.SentencePieceTokenizer.train(CORPUS, tmp_path / "sp2", vocab_size=400)
    with pytest.raises(text.TokenizerError, match=r"tokenizer\.model differs from .*sp2\.model"):
        supervised.resolve_tokenizer(cfg(path=str(tmp_path / "sp2.model")), run, [])
    assert text.load_tokenizer(run).vocab_size == 320 != other.vocab_size == 400
    same = supervised.resolve_tokenizer(cfg(path=str(tmp_path / "sp.model")), run, [])
    assert same.vocab_size == 320
    # ... nor with a tokenizer of the other format (the folder would load tokenizer.json next).
    with pytest.raises(text.TokenizerError, match=r"tokenizer\.model: this run folder was made"):
        supervised.resolve_tokenizer(cfg(path=str(hf / "tokenizer.json")), run, [])
    assert not (run / "tokenizer.json").exists()


def test_a_tokenizer_other_than_init_froms_own_is_refused(tmp_path):
    # A swapped-in model brings its own ids: training it on another tokenizer's went unnoticed.
    import ml_collections

    from r1jax import configlib
    from r1jax.train import supervised

    def cfg(path, init_from):
        return ml_collections.ConfigDict(
            {"tokenizer": {"path": path, "train_vocab_size": 0}, "model": {"init_from": init_from}}
        )

    hf = _build_hf_folder(tmp_path / "hf")  # the "model" folder's own tokenizer
    text.SentencePieceTokenizer.train(CORPUS, tmp_path / "sp", vocab_size=320)
    with pytest.raises(configlib.ConfigError, match=r"not the tokenizer of model\.init_from"):
        supervised.resolve_tokenizer(cfg(str(tmp_path / "sp.model"), str(hf)), tmp_path / "a", [])
    # Its own tokenizer named explicitly (or a copy) is fine.
    tok = supervised.resolve_tokenizer(cfg(str(hf / "tokenizer.json"), str(hf)), tmp_path / "b", [])
    assert tok.vocab_size == text.load_tokenizer(hf).vocab_size
    # So is the same vocabulary with another end token (an instruct sibling's config files).
    other_eos = _build_hf_folder(tmp_path / "eos", with_config=False)
    (other_eos / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</answer>"}))
    tok = supervised.resolve_tokenizer(cfg(str(other_eos), str(hf)), tmp_path / "c", [])
    assert tok.eos_id != text.load_tokenizer(hf).eos_id


def test_the_run_folder_loads_the_special_ids_the_run_trained_with(tmp_path):
    # EOS named by a file the run does not keep (a lone tokenizer.json's sibling config,
    # generation_config.json) must not fall back to a guess in the run folder.
    import ml_collections

    from r1jax.train import supervised

    cfg = lambda path: ml_collections.ConfigDict(  # noqa: E731
        {"tokenizer": {"path": str(path), "train_vocab_size": 0}, "model": {"init_from": ""}}
    )
    named = _build_hf_folder(tmp_path / "named", with_config=False)
    (named / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</answer>"}))
    generated = _build_hf_folder(tmp_path / "generated", with_config=False)
    (generated / "generation_config.json").write_text(json.dumps({"eos_token_id": [3, 0]}))
    for source, eos in ((named / "tokenizer.json", 5), (generated, 3)):
        run = tmp_path / f"run-{source.parent.name}-{source.name}"
        tok = supervised.resolve_tokenizer(cfg(source), run, [])
        assert tok.eos_id == eos
        assert text.load_tokenizer(run).eos_id == eos  # not <|endoftext|> = 0, a guess
        # Generation stops on every id generation_config.json names, in the run folder too.
        want = (3, 0) if source == generated else (5,)
        assert text.stop_ids(tok) == text.stop_ids(text.load_tokenizer(run)) == want
    # Resuming with the same tokenizer.json but other special tokens is refused.
    (named / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<think>"}))
    with pytest.raises(text.TokenizerError, match=r"eos/bos/pad ids \(5, None, 5\)"):
        supervised.resolve_tokenizer(
            cfg(named / "tokenizer.json"), tmp_path / "run-named-tokenizer.json", []
        )


def test_ids_past_a_sentencepiece_vocabulary_decode_to_nothing(tmp_path):
    # check_fits lets the model's embedding be larger than the tokenizer; a sampled id past the
    # tokenizer's pieces made SentencePiece raise and the run die.
    sp = text.SentencePieceTokenizer.train(CORPUS, tmp_path / "sp", vocab_size=320)
    ids = sp.encode("Work mod 7.")
    assert sp.decode(ids + [sp.vocab_size, 600]) == sp.decode(ids) == "Work mod 7."


@pytest.mark.parametrize(
    "bos_token, adds_bos",
    [
        ("<|begin|>", True),  # Llama-3: the post-processor puts <|begin_of_text|> first
        ("<|begin|>", False),  # SmolLM2: bos_token <|im_start|> named, never added
        (None, False),  # Qwen2: no BOS at all
        (None, True),  # added by the post-processor, named nowhere in the configs
    ],
)
def test_the_bos_put_first_is_what_the_tokenizer_adds(tmp_path, bos_token, adds_bos):
    """Every encoder (SFT rows, RL and evaluation prompts, preference pairs) puts first what
    transformers' tokenizer(text) puts first, not whatever token the configs name BOS."""
    from r1jax.data import pipeline
    from r1jax.rl import rollout

    folder = _build_hf_folder(tmp_path / "hf", with_config=False)
    tok = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.add_special_tokens(["<|begin|>"])
    begin = tok.token_to_id("<|begin|>")
    if adds_bos:
        tok.post_processor = tokenizers.processors.TemplateProcessing(
            single="<|begin|> $A", special_tokens=[("<|begin|>", begin)]
        )
    tok.save(str(folder / "tokenizer.json"))
    config = {"eos_token": "<|endoftext|>", "bos_token": bos_token}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))

    ours = text.load_tokenizer(folder)
    ref = transformers.AutoTokenizer.from_pretrained(folder)
    prompt = "Tom has 12 apples."
    expected = ref(prompt)["input_ids"]
    assert (expected[0] == begin) == adds_bos
    assert text.bos_ids(ours) + ours.encode(prompt) == expected
    assert ours.bos_id == (begin if adds_bos or bos_token else None)
    assert rollout.encode_prompts([{"prompt": prompt}], ours, "none", 64) == [expected]
    row = pipeline.tokenize_sft({"prompt": prompt, "response": "7"}, ours, 64, template="none")
    assert list(row["inputs"][: len(expected)]) == expected


def test_special_tokens_map_names_the_special_tokens_as_in_transformers(tmp_path):
    """A Llama-2-era folder names eos/pad in special_tokens_map.json (which wins over
    tokenizer_config.json in transformers too); a run keeps the same ids."""
    folder = _build_hf_folder(tmp_path / "hf")  # tokenizer_config: eos <|endoftext|>, pad <|pad|>
    (folder / "special_tokens_map.json").write_text(
        json.dumps({"eos_token": "</answer>", "pad_token": {"content": "<think>"}})
    )
    tok = text.load_tokenizer(folder)
    ref = transformers.AutoTokenizer.from_pretrained(folder)
    assert (tok.eos_id, tok.pad_id) == (ref.eos_token_id, ref.pad_token_id) == (5, 2)
    (folder / "tokenizer_config.json").unlink()
    assert text.load_tokenizer(folder).eos_id == 5


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_a_sentencepiece_model_exports_as_a_tokenizer_json_with_its_ids(tmp_path, model_type):
    # Without it, transformers converted tokenizer.model with a dummy prefix: other ids from
    # the first token on, and a Chinese prompt of 10 tokens became 2.
    sp = text.SentencePieceTokenizer.train(
        CORPUS * 3, tmp_path / "sp", vocab_size=400, model_type=model_type
    )
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "tokenizer.json").write_text(sp.to_hf_json())
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **sp.special_tokens()}
    (tmp_path / "hf" / "tokenizer_config.json").write_text(json.dumps(config))
    ref = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    ours = text.load_tokenizer(tmp_path / "hf")
    rows = world.dataset("train", n=100)
    samples = (
        SAMPLES + CORPUS + [r["prompt"] for r in rows] + ["   lead", "trail  ", "", "a<think>b"]
    )
    for sample in samples:
        ids = sp.encode(sample)
        assert ref(sample)["input_ids"] == [sp.bos_id] + ids, sample
        assert text.bos_ids(ours) + ours.encode(sample) == [sp.bos_id] + ids
        assert ref.decode(ids) == sp.decode(ids) == sample
    assert (ref.eos_token_id, ref.pad_token_id) == (sp.eos_id, sp.pad_id)


def test_a_dummy_prefix_sentencepiece_model_is_not_converted(tmp_path):
    # tokenizers normalises each stretch between added tokens apart: a prepended '\u2581' would
    # follow every <think> of a Llama-2-style model, so its ids would differ; export keeps only
    # its tokenizer.model.
    import sentencepiece

    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 3),
        model_prefix=str(tmp_path / "llama2"),
        vocab_size=150,
        user_defined_symbols=["<think>"],
        add_dummy_prefix=True,
        minloglevel=2,
    )
    sp = text.load_tokenizer(tmp_path / "llama2.model")
    with pytest.raises(text.TokenizerError, match="dummy prefix"):
        sp.to_hf_json()


def _llama2_style_hf_folder(folder, corpus):
    """A tokenizer.json as Llama-2's: a Prepend('\u2581') normalizer, byte fallback, BOS."""
    tok = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.normalizer = tokenizers.normalizers.Sequence(
        [tokenizers.normalizers.Prepend("\u2581"), tokenizers.normalizers.Replace(" ", "\u2581")]
    )
    tok.decoder = tokenizers.decoders.Sequence(
        [
            tokenizers.decoders.Replace("\u2581", " "),
            tokenizers.decoders.ByteFallback(),
            tokenizers.decoders.Fuse(),
            tokenizers.decoders.Strip(" ", 1, 0),
        ]
    )
    bytes_ = [f"<0x{i:02X}>" for i in range(256)]
    trainer = tokenizers.trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<unk>", "<s>", "</s>", *bytes_]
    )
    tok.train_from_iterator(corpus, trainer)
    folder.mkdir()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    return text.load_tokenizer(folder)


def test_a_response_encoded_after_its_prompt_has_the_whole_texts_ids(tmp_path):
    """Llama-2 / Mistral-style tokenizers put '\u2581' before every text: a response encoded
    apart from its prompt began with an extra '\u2581' piece (every SFT row of such a model
    trained on ids no whole text has, and decoded with a double space)."""
    import sentencepiece

    from r1jax.data import pipeline

    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 3),
        model_prefix=str(tmp_path / "llama2"),
        vocab_size=400,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",  # as Llama-2's
        byte_fallback=True,
        minloglevel=2,
    )
    dummy_sp = text.load_tokenizer(tmp_path / "llama2.model")
    dummy_hf = _llama2_style_hf_folder(tmp_path / "hf", CORPUS * 3)
    plain_sp = text.SentencePieceTokenizer.train(CORPUS, tmp_path / "plain", vocab_size=320)
    records = [{"prompt": f"Tom has {a} apples.", "response": c} for a, c in enumerate(CORPUS)]
    for tok in (dummy_sp, dummy_hf, plain_sp):
        for template in ("chat", "r1_zero"):
            for record in records:
                row = pipeline.tokenize_sft(record, tok, 1024, template=template)
                ids = [int(row["inputs"][0]), *map(int, row["targets"])]
                whole = text.chat_example(record["prompt"], record["response"], template=template)
                assert ids == text.bos_ids(tok) + tok.encode(whole) + [tok.eos_id], whole
                assert tok.decode(ids[len(text.bos_ids(tok)) : -1]) == whole  # no double space
    assert text.encode_continuation(plain_sp, " x y") == plain_sp.encode(" x y")
    # SentencePiece's defaults (dummy prefix and whitespace removal): the response's leading
    # space is removed and the prefix puts it back, as in the whole text; double and trailing
    # spaces are removed alike (with the removal turned off, they were not).
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 3),
        model_prefix=str(tmp_path / "defaults"),
        vocab_size=150,
        minloglevel=2,
    )
    defaults = text.load_tokenizer(tmp_path / "defaults.model")
    for prompt, response in [("Q:", " The  answer is 4.  "), ("Q: x\n", "Tom  has 3 apples. ")]:
        whole = defaults.encode(prompt + response)
        assert defaults.encode(prompt) + text.encode_continuation(defaults, response) == whole


def _check_token_bytes(tok, seed=0, trials=1500):
    """Joined, the token bytes of random id sequences give the UTF-8 of their decode (where
    they are UTF-8 at all; a SentencePiece-style decode drops the text's leading space)."""
    pieces = text.token_bytes(tok)
    assert pieces is not None and len(pieces) == tok.vocab_size
    rng = np.random.default_rng(seed)
    compared = 0
    for _ in range(trials):
        ids = rng.integers(0, tok.vocab_size, rng.integers(1, 10)).tolist()
        try:
            want = b"".join(pieces[i] for i in ids).decode("utf-8")
        except UnicodeDecodeError:
            continue
        got = tok.decode(ids)
        assert got in (want, want[1:] if want.startswith(" ") else want), (ids, got, want)
        compared += 1
    assert compared > trials // 10, compared


def test_token_bytes_join_to_the_decoded_text(tmp_path):
    folder = _build_hf_folder(tmp_path / "byte_level")
    _check_token_bytes(text.load_tokenizer(folder))
    # Added tokens go through the decoder too: "\u00e9" (in the byte alphabet) is byte 0xE9, the
    # others (a space, a newline: outside it) their own UTF-8.
    tok = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.add_special_tokens(["\u00e9", "<|x y|>"])
    tok.add_tokens(["ab\ncd"])
    tok.save(str(folder / "tokenizer.json"))
    added = text.load_tokenizer(folder)
    ids = [added.token_to_id(t) for t in ("\u00e9", "<|x y|>", "ab\ncd")]
    assert [text.token_bytes(added)[i] for i in ids] == [b"\xe9", b"<|x y|>", b"ab\ncd"]
    _check_token_bytes(added, seed=1)
    _check_token_bytes(_llama2_style_hf_folder(tmp_path / "llama2", CORPUS))
    sp = text.SentencePieceTokenizer.train(CORPUS, tmp_path / "sp", vocab_size=400)
    _check_token_bytes(sp)
    # A decoder whose tokens do not map to bytes one by one: no table (no stops in the sampler).
    tok = tokenizers.Tokenizer(tokenizers.models.WordPiece({"[UNK]": 0, "a": 1, "##b": 2}))
    tok.decoder = tokenizers.decoders.WordPiece()
    tok.save(str(tmp_path / "wordpiece.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "[UNK]"}))
    assert text.token_bytes(text.load_tokenizer(tmp_path / "wordpiece.json")) is None


@pytest.mark.parametrize("response", ["7\n", "7\n<|endoftext|>"])
def test_data_that_writes_the_bos_and_eos_tokens_has_each_once(tmp_path, response):
    """Rows in a chat format whose template opens with bos_token (Llama 3's), read with template
    'none': every encoder has the BOS once, as transformers' apply_chat_template (it was twice);
    a response that ends with the EOS (its end-of-turn) keeps that one (EOS was appended)."""
    from r1jax import evaluation
    from r1jax.data import pipeline
    from r1jax.rewards import preference
    from r1jax.rl import rollout

    folder = _build_hf_folder(tmp_path / "hf", with_config=False)
    tok = tokenizers.Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.add_special_tokens(["<|begin|>"])
    tok.post_processor = tokenizers.processors.TemplateProcessing(
        single="<|begin|> $A", special_tokens=[("<|begin|>", tok.token_to_id("<|begin|>"))]
    )
    tok.save(str(folder / "tokenizer.json"))
    chat = (
        "{{ bos_token }}{% for m in messages %}{{ m['role'] + ':\\n' + m['content'] + '\\n' }}"
        "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'assistant:\\n' }}{% endif %}"
    )
    config = {"eos_token": "<|endoftext|>", "bos_token": "<|begin|>", "chat_template": chat}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    ours, ref = text.load_tokenizer(folder), transformers.AutoTokenizer.from_pretrained(folder)
    user = [{"role": "user", "content": "Tom has 12 apples."}]
    both = user + [{"role": "assistant", "content": "7"}]
    prompt = ref.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    want_prompt = _chat_ids(ref, user, add_generation_prompt=True)
    want_row = _chat_ids(ref, both)
    assert want_prompt.count(ours.bos_id) == 1 and want_row[: len(want_prompt)] == want_prompt
    assert evaluation.encode_prompt(ours, prompt) == want_prompt
    assert rollout.encode_prompts([{"prompt": prompt}], ours, "none", 64) == [want_prompt]
    row = pipeline.tokenize_sft({"prompt": prompt, "response": response}, ours, 64, template="none")
    assert [*row["inputs"], row["targets"][-1]] == want_row
    assert row["loss_mask"].sum() == len(want_row) - len(want_prompt)
    assert preference.tokenize(ours, prompt, response, template="none", max_len=0) == want_row
