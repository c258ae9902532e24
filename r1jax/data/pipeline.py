"""grain pipelines: records -> tokens -> packed rows -> numpy batches for the trainer.

Shapes: B rows, T time (seq_len), L one example's length (L <= T).

A batch is a dict of numpy arrays, each [B, T]:
  inputs      int32   token ids fed to the model
  targets     int32   the next token: the loss predicts targets[t] from inputs[..t]
  loss_mask   float32 1 where targets[t] is trained (SFT: response tokens and the final EOS;
                      pretrain: every real token), 0 for prompt tokens and padding
  segment_ids int32   1, 2, ... per packed example, 0 for padding
  positions   int32   position within its example (restarts at 0 for each packed example)
"""

import math
import os
import threading
from collections.abc import Sequence

import grain
import numpy as np

from r1jax import text
from r1jax.data import sources

KINDS = ("pretrain", "sft")
# The string fields a record of each kind needs (alternatives), as sources.read_records and
# sources.JsonlRecords check them: pretraining reads text, else prompt and response.
REQUIRED_FIELDS = {
    "pretrain": (("text",), ("prompt", "response")),
    "sft": (("prompt", "response"),),
}
BATCH_KEYS = ("inputs", "targets", "loss_mask", "segment_ids", "positions")
_SEQ_KEYS = ("inputs", "targets", "loss_mask")


def _example(ids: list[int], trained_from: int, seq_len: int) -> dict:
    """Shifted arrays of one example; the token ids[i] is trained iff i >= trained_from."""
    truncated = len(ids) > seq_len + 1
    ids_L = np.asarray(ids[: seq_len + 1], dtype=np.int32)
    mask_L = (np.arange(1, len(ids_L)) >= trained_from).astype(np.float32)
    return {
        "inputs": ids_L[:-1],
        "targets": ids_L[1:],
        "loss_mask": mask_L,
        "truncated": np.bool_(truncated),
    }


def _bos(tokenizer) -> list[int]:
    return text.bos_ids(tokenizer)


def tokenize_pretrain(record: dict, tokenizer: text.Tokenizer, seq_len: int) -> list[dict]:
    """[BOS] text EOS as rows of at most seq_len + 1 tokens, every target trained: a document
    longer than a row continues in the next ones (each starts with the token the one before
    predicted last), so every token of it is trained once.

    The text is record['text'], else prompt and response joined by a newline.
    """
    if record.get("text") is not None:  # a table's row may hold text null beside a pair
        body = record["text"]
    elif "prompt" in record and "response" in record:
        body = f"{record['prompt']}\n{record['response']}"
    else:
        raise KeyError(
            f"pretrain record needs 'text' (or 'prompt' and 'response'): {record!r:.200}"
        )
    ids = _bos(tokenizer) + tokenizer.encode(body) + [tokenizer.eos_id]
    if len(ids) < 2:  # an empty text and no BOS: EOS alone has nothing to predict it
        return []
    starts = range(0, max(1, len(ids) - 1), seq_len)
    return [_example(ids[start : start + seq_len + 1], 1, seq_len) for start in starts]


def tokenize_sft(
    record: dict, tokenizer: text.Tokenizer, seq_len: int, template: str = "chat"
) -> dict:
    """[BOS] template(prompt) response EOS, at most seq_len + 1; only response and EOS trained.

    An example too long for the row first loses the start of its prompt (BOS kept), down to
    half the row, then the end of its response; so every example trains at least one token.
    """
    if "prompt" not in record or "response" not in record:
        raise KeyError(f"sft record needs 'prompt' and 'response': {record!r:.200}")
    head = _bos(tokenizer)
    prompt_ids = text.prompt_ids(tokenizer, template, record["prompt"])
    response = text.response_text(template, record["response"])
    response_ids = text.with_eos(tokenizer, text.encode_continuation(tokenizer, response))
    budget = seq_len + 1
    truncated = len(head) + len(prompt_ids) + len(response_ids) > budget
    if truncated:
        keep = max(budget - len(response_ids), budget // 2) - len(head)
        # The prompt's last `keep` tokens; all of it when it is shorter (a negative start would
        # count from the end and drop a prompt that fits).
        prompt_ids = prompt_ids[max(0, len(prompt_ids) - max(keep, 0)) :]
    example = _example(head + prompt_ids + response_ids, len(head) + len(prompt_ids), seq_len)
    example["truncated"] = np.bool_(truncated)
    return example


def _unpacked_row(example: dict, seq_len: int, pad_id: int) -> dict:
    """One example alone in a row of seq_len, padded."""
    n = len(example["inputs"])
    row = {
        "inputs": np.full(seq_len, pad_id, np.int32),
        "targets": np.full(seq_len, pad_id, np.int32),
        "loss_mask": np.zeros(seq_len, np.float32),
        "segment_ids": np.zeros(seq_len, np.int32),
        "positions": np.zeros(seq_len, np.int32),
    }
    for key in _SEQ_KEYS:
        row[key][:n] = example[key]
    row["segment_ids"][:n] = 1
    row["positions"][:n] = np.arange(n, dtype=np.int32)
    return row


def _from_packed(row: dict) -> dict:
    """grain's packed row -> the batch format (one segment id and position array)."""
    return {
        "inputs": row["inputs"],
        "targets": row["targets"],
        "loss_mask": row["loss_mask"],
        "segment_ids": row["inputs_segment_ids"],
        "positions": row["inputs_positions"],
    }


def _counting(tokenize, stats: dict | None):
    """Wraps a tokenize function (record -> examples): drops the flag, counts examples and
    truncations into stats."""

    lock = threading.Lock()  # grain maps in a pool of reader threads

    def fn(record):
        examples = tokenize(record)
        truncated = sum(bool(example.pop("truncated")) for example in examples)
        if stats is not None:
            with lock:
                stats["examples"] = stats.get("examples", 0) + len(examples)
                stats["truncated"] = stats.get("truncated", 0) + truncated
        return examples

    return fn


def _fails_if_nothing_to_train(tokenize, num_records: int):
    """Wraps tokenize_pretrain: a DataError once two passes (and grain's read-ahead) gave no
    token to train, where the stream of no examples would wait forever for a row."""
    lock, calls, found = threading.Lock(), [0], [False]

    def fn(record):
        examples = tokenize(record)
        with lock:
            calls[0], found[0] = calls[0] + 1, found[0] or bool(examples)
            if not found[0] and calls[0] > 2 * num_records + 64:
                raise sources.DataError(
                    f"none of the {num_records} pretraining records has a token to train "
                    "(every text is empty and the tokenizer adds no BOS)"
                )
        return examples

    return fn


class _Unlist(grain.experimental.FlatMapTransform):
    """A record's list of examples -> the examples (its iterator state resumes inside one)."""

    max_fan_out = 2**31 - 1  # not enforced by FlatMapIterDataset; a document's row count

    def flat_map(self, element):
        return element


def read_options() -> grain.ReadOptions:
    """How grain maps records (tokenizes) ahead of the training loop: a thread a core (at most
    16) and 64 records ahead. grain's defaults (16 threads, 500 records) on 2 cores: packed SFT
    rows of 4096 tokens came 4x slower with a SentencePiece tokenizer (154 against 665 rows/s),
    and a HF tokenizer's first batch after every start or restore took 4.1 s against 0.5 s
    (its encode holds the GIL). The iterator's state is the same either way."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return grain.ReadOptions(num_threads=min(16, cores or 1), prefetch_buffer_size=64)


def _examples(records: grain.MapDataset, tokenize, kind: str) -> grain.IterDataset:
    """Records -> a stream of examples: tokenize maps a record to a list of them (SFT: one,
    mapped alone so that its iterator state keeps the form earlier checkpoints saved)."""
    if kind == "sft":
        return records.map(lambda r: tokenize(r)[0]).to_iter_dataset(read_options())
    mapped = records.map(tokenize).to_iter_dataset(read_options())
    return grain.experimental.FlatMapIterDataset(mapped, _Unlist())


def make_dataset(
    records: Sequence[dict],
    tokenizer: text.Tokenizer,
    *,
    kind: str = "pretrain",
    seq_len: int,
    batch_size: int,
    seed: int,
    shard_index: int = 0,
    shard_count: int = 1,
    pack: bool = True,
    num_epochs: int | None = None,
    template: str = "chat",
    stats: dict | None = None,
) -> grain.IterDataset:
    """Batches (see the module docstring) of this shard's records; deterministic from `seed`.

    1. Take records[shard_index::shard_count] (disjoint across processes).
    2. Shuffle with `seed`, a new order each epoch; repeat num_epochs (None = forever).
    3. Tokenize (see tokenize_sft for long examples; a long pretraining document fills several
       rows, tokenize_pretrain); `stats` counts examples and truncations.
    4. Pack first-fit into rows of seq_len (or pad one example per row), batch, drop remainder.
    The iterator's get_state()/set_state() resume exactly; its state is JSON-serializable.
    """
    _check_args(records, kind, seq_len, batch_size, shard_index, shard_count, template)
    tokenize = _tokenize_fn(kind, tokenizer, seq_len, template)
    # (1) Every process sees every record: all of them stop here together, not one of them
    # (the others would wait for it in their first collective).
    if len(records) < shard_count:
        raise sources.DataError(  # one line from main, not a traceback
            f"{len(records)} records for {shard_count} processes: each process reads its own "
            "share and needs at least one"
        )
    ds = grain.MapDataset.source(records)[shard_index::shard_count]
    if len(ds) == 0:
        raise ValueError(f"shard {shard_index} of {shard_count} has no records ({len(records)})")
    shard_size = len(ds)
    # (2)
    ds = ds.shuffle(seed=seed).repeat(num_epochs)
    # (3)
    if kind == "pretrain":
        tokenize = _fails_if_nothing_to_train(tokenize, shard_size)
    it_ds = _examples(ds, _counting(tokenize, stats), kind)
    # (4)
    return _rows(it_ds, tokenizer, seq_len, batch_size, seed, pack).batch(
        batch_size, drop_remainder=True
    )


def resumable_iterator(ds: grain.IterDataset, kind: str) -> grain.DatasetIterator:
    """iter(ds), whose set_state also takes a pretraining position saved before a document
    could span rows (r1jax before 2026-12-06: no FlatMap level in the state; its next record
    starts at its first row), so those runs resume."""
    it = iter(ds)
    if kind == "pretrain":
        set_state = it.set_state
        it.set_state = lambda state: set_state(_with_row_position(state))
    return it


def _with_row_position(state):
    if not isinstance(state, dict) or "next_index_in_buffer" in state:
        return state
    if "next_index" in state:  # the records' own position, saved without the FlatMap's
        return {"parent": state, "next_index_in_buffer": 0}
    if "parent" in state:
        return {**state, "parent": _with_row_position(state["parent"])}
    return state


def _rows(examples, tokenizer, seq_len: int, batch_size: int, seed: int, pack: bool):
    """Examples -> rows of seq_len: packed first-fit into batch_size bins, or one a row."""
    if not pack:
        return examples.map(lambda ex: _unpacked_row(ex, seq_len, tokenizer.pad_id))
    return grain.experimental.FirstFitPackIterDataset(
        examples,
        length_struct={key: seq_len for key in _SEQ_KEYS},
        num_packing_bins=batch_size,
        seed=seed,
        padding_struct={
            "inputs": tokenizer.pad_id,
            "targets": tokenizer.pad_id,
            "loss_mask": 0.0,
        },
    ).map(_from_packed)


def _check_args(records, kind, seq_len, batch_size, shard_index, shard_count, template):
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if template not in text.TEMPLATES:
        raise ValueError(f"template must be one of {text.TEMPLATES}, got {template!r}")
    if seq_len < 1 or batch_size < 1:
        raise ValueError(f"seq_len and batch_size must be positive: {seq_len}, {batch_size}")
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index} not in [0, shard_count={shard_count})")
    if not len(records):
        raise ValueError("make_dataset: no records")
    _check_records(records, kind)


def _check_records(records, kind: str) -> None:
    """Every record has the string fields `kind` tokenizes: found now, not when the shuffled
    stream first reaches a bad row (possibly hours in, inside a reader thread). A
    sources.JsonlRecords file checked for `kind`'s fields as it was indexed is not read again."""
    if getattr(records, "required", None) == REQUIRED_FIELDS[kind]:
        return
    for i, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise sources.DataError(f"record {i}: expected a dict, got {type(record).__name__}")
        if kind == "pretrain" and record.get("text") is not None:
            names = ("text",)
        else:
            names = ("prompt", "response")
        for name in names:
            value = record.get(name)
            if not isinstance(value, str):
                what = sources.type_phrase(value)
                if value is None:
                    what = "null" if name in record else "missing"
                needs = "'prompt' and 'response'"
                if kind == "pretrain":
                    needs = "'text' (or " + needs + ")"
                raise sources.DataError(
                    f"record {i} of {len(records)}: field {name!r} is {what}; {kind} records "
                    f"need string fields {needs}: {record!r:.200}"
                )


def truncation_count(
    records: Sequence[dict],
    tokenizer: text.Tokenizer,
    *,
    kind: str,
    seq_len: int,
    template: str = "chat",
    limit: int = 2000,
) -> tuple[int, int]:
    """(truncated, checked): how many of up to `limit` records, evenly spaced, are longer than
    a row of seq_len. An SFT example that long loses the start of its prompt and, past half the
    row, the end of its response with its EOS (`tokenize_sft`); a pretraining document is never
    cut (it continues in the next rows)."""
    sample = spaced_sample(records, limit)
    tokenize = _tokenize_fn(kind, tokenizer, seq_len, template)
    return sum(any(ex["truncated"] for ex in tokenize(r)) for r in sample), len(sample)


def spaced_sample(records: Sequence[dict], limit: int) -> Sequence[dict]:
    """Up to `limit` records, evenly spaced over all of them."""
    return records[:: max(1, len(records) // max(1, limit))][:limit]


def rows_per_epoch(
    records: Sequence[dict],
    tokenizer: text.Tokenizer,
    *,
    kind: str,
    seq_len: int,
    batch_size: int = 1,
    template: str = "chat",
    pack: bool = True,
    limit: int = 2000,
) -> int:
    """Rows of seq_len one pass over `records` fills: one per example unpacked (an SFT record
    is one, a pretraining document one per row it spans); packed, the rows make_dataset's
    first-fit packer (batch_size bins) fills with up to `limit` evenly spaced records, in
    their order, scaled to all of them (gaps included: an example over half a row takes one to
    itself)."""
    if not records or (not pack and kind == "sft"):
        return len(records)
    sample = spaced_sample(records, limit)
    tokenize = _tokenize_fn(kind, tokenizer, seq_len, template)
    examples = _examples(grain.MapDataset.source(sample), tokenize, kind)
    rows = sum(1 for _ in _rows(examples, tokenizer, seq_len, batch_size, 0, pack=pack))
    return max(1, math.ceil(rows * len(records) / len(sample)))


def _tokenize_fn(kind: str, tokenizer, seq_len: int, template: str):
    """record -> its examples for `kind` ("pretrain" or "sft": always one)."""
    if kind == "pretrain":
        return lambda r: tokenize_pretrain(r, tokenizer, seq_len)
    return lambda r: [tokenize_sft(r, tokenizer, seq_len, template)]
