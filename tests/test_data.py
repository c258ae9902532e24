"""Data sources (JSONL/JSON/parquet, GSM8K, MATH) and the grain pipeline's batches."""

import collections
import gzip
import importlib.util
import json
import logging
import os
import pickle
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from r1jax import sharding, text
from r1jax.data import pipeline, sources
from r1jax.train import supervised

# ---- sources -----------------------------------------------------------------------------------


def _write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_read_jsonl_reads_rows_and_gz(tmp_path):
    lines = ['{"text": "a"}', "", '{"text": "b"}']
    assert sources.read_jsonl(_write_lines(tmp_path / "x.jsonl", lines)) == [
        {"text": "a"},
        {"text": "b"},
    ]
    with gzip.open(tmp_path / "x.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write("\n".join(lines))
    assert sources.read_jsonl(tmp_path / "x.jsonl.gz") == [{"text": "a"}, {"text": "b"}]


def test_read_jsonl_malformed_line_names_file_and_line(tmp_path):
    path = _write_lines(tmp_path / "bad.jsonl", ['{"text": "a"}', '{"text": "b"}', '{"text": '])
    with pytest.raises(sources.DataError, match=r"bad\.jsonl:3: malformed JSON"):
        sources.read_jsonl(path)
    stats = {}
    assert sources.read_jsonl(path, on_error="skip", stats=stats) == [{"text": "a"}, {"text": "b"}]
    assert stats["rows"] == 2 and stats["skipped"] == 1
    assert "bad.jsonl:3" in stats["errors"][0]
    not_object = _write_lines(tmp_path / "list.jsonl", ['{"text": "a"}', "[1, 2]"])
    with pytest.raises(sources.DataError, match=r"list\.jsonl:2: expected a JSON object, got list"):
        sources.read_jsonl(not_object)
    with pytest.raises(ValueError, match="on_error"):
        sources.read_jsonl(path, on_error="ignore")
    # A file of another kind is read as JSON lines too, and its error says so (a CSV read
    # "qa.csv:1: malformed JSON" and nothing more).
    csv = _write_lines(tmp_path / "qa.csv", ["question,answer", "1+1,2"])
    with pytest.raises(sources.DataError, match=r"qa\.csv:1: malformed JSON .*read as JSON lines"):
        sources.read_records(csv)


def test_missing_files_name_the_path(tmp_path):
    for reader in (sources.read_jsonl, sources.read_json_list, sources.gsm8k_records):
        with pytest.raises(FileNotFoundError, match="nope.jsonl"):
            reader(tmp_path / "nope.jsonl")


def test_bad_bytes_broken_gzip_and_folders_name_the_file(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'\xef\xbb\xbf{"a": 1}\n{"a": "caf\xe9"}\n{"a": 3}\n')  # BOM, then Latin-1
    with pytest.raises(sources.DataError, match=r"bad\.jsonl:2: not UTF-8 text \(byte 0xe9"):
        sources.read_jsonl(bad)
    stats = {}
    assert sources.read_jsonl(bad, on_error="skip", stats=stats) == [{"a": 1}, {"a": 3}]
    assert stats["skipped"] == 1
    (tmp_path / "list.json").write_bytes(b'[{"a": "\xff"}]')
    with pytest.raises(sources.DataError, match=r"list\.json: not UTF-8"):
        sources.read_json_list(tmp_path / "list.json")
    whole = gzip.compress(b'{"a": 1}\n' * 200)
    for name, data in (("plain.jsonl.gz", b"not gzip"), ("cut.jsonl.gz", whole[: len(whole) // 2])):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(sources.DataError, match=name + ": not a readable gzip file"):
            sources.read_jsonl(tmp_path / name, on_error="skip")
    with pytest.raises(sources.DataError, match="is a folder"):
        sources.gsm8k_records(tmp_path)


def test_fields_of_the_wrong_type_are_refused_not_stringified(tmp_path):
    rows = [
        {"question": "q", "answer": ["2 + 2 #### 4"]},
        {"question": 7, "answer": "#### 4"},
        {"question": "q", "answer": 4},
    ]
    for i, row in enumerate(rows):
        path = _write_lines(tmp_path / f"gsm{i}.jsonl", [json.dumps(row)])
        with pytest.raises(sources.DataError, match=rf"gsm{i}\.jsonl:1: field '\w+' must be str"):
            sources.gsm8k_records(path)
    path = _write_lines(
        tmp_path / "math.jsonl",
        [
            json.dumps({"problem": "p", "answer": 12.0}),
            json.dumps({"problem": "p", "answer": ["1", "2"]}),
            json.dumps({"problem": ["p"], "answer": "1"}),
            json.dumps({"problem": "p", "answer": True}),
            json.dumps({"problem": "p", "answer": "1", "solution": {"steps": 1}}),
        ],
    )
    with pytest.raises(
        sources.DataError, match=r"math\.jsonl:2: field 'answer' must be str or int"
    ):
        sources.math_records(path)
    stats = {}
    assert [r["answer"] for r in sources.math_records(path, on_error="skip", stats=stats)] == ["12"]
    assert stats["skipped"] == 4


def test_read_json_list(tmp_path):
    (tmp_path / "ok.json").write_text('[{"problem": "p", "answer": 1}]')
    assert sources.read_json_list(tmp_path / "ok.json") == [{"problem": "p", "answer": 1}]
    (tmp_path / "dict.json").write_text('{"problem": "p"}')
    with pytest.raises(sources.DataError, match="expected a JSON list"):
        sources.read_json_list(tmp_path / "dict.json")
    (tmp_path / "broken.json").write_text('[{"problem": "p"},\n {"problem": }]')
    with pytest.raises(sources.DataError, match=r"broken\.json:2: malformed JSON"):
        sources.read_json_list(tmp_path / "broken.json")


def test_rows_without_text_fields_or_with_lone_surrogates_follow_on_error(tmp_path, tok):
    # Each bad row names its file and line; with on_error="skip" it is skipped and counted.
    lines = [
        '{"prompt": "a", "response": "b"}',
        '{"prompt": "c"}',
        '{"prompt": "e", "response": 7}',
        '{"prompt": "\\ud800 x", "response": "y"}',  # JSON's escape for a lone surrogate
        '{"prompt": "g", "response": "h"}',
        '{"prompt": "i", "response": " \\n"}',  # blank: it trained EOS right after the prompt
    ]
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(lines) + "\n")
    need = (("prompt", "response"),)
    with pytest.raises(sources.DataError, match=r"m\.jsonl:2: field 'response' is missing"):
        sources.read_records(path, required=need)
    fifo = tmp_path / "fifo.jsonl"  # not a file (it read "not found")
    os.mkfifo(fifo)
    with pytest.raises(sources.DataError, match=r"fifo\.jsonl: not a regular file"):
        sources.read_records(fifo, required=need)
    null = tmp_path / "null.jsonl"  # present but null: said so (it read "missing")
    null.write_text('{"prompt": "a", "response": null}\n')
    with pytest.raises(sources.DataError, match=r"null\.jsonl:1: field 'response' is null"):
        sources.read_records(null, required=need)
    stats = {}
    rows = sources.read_records(path, on_error="skip", stats=stats, required=need)
    assert [r["prompt"] for r in rows] == ["a", "g"] and stats["skipped"] == 4
    assert any("m.jsonl:6: field 'response' is blank" in e for e in stats["errors"])
    # A table's row with text null beside a pair (mixed parquet): pretraining uses the pair.
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(
        '{"text": "t"}\n{"text": null, "prompt": "p", "response": "r"}\n{"text": ""}\n'
    )
    rows = sources.read_records(mixed, required=(("text",), *need))
    assert len(rows) == 3  # an empty document is a corpus's, not an error
    ds = pipeline.make_dataset(rows, tok, kind="pretrain", seq_len=8, batch_size=2, seed=0)
    assert next(iter(ds))["inputs"].shape == (2, 8)
    assert any("m.jsonl:3: field 'response' is an int, not a string" in e for e in stats["errors"])
    assert any("m.jsonl:4: a string holds the lone surrogate" in e for e in stats["errors"])
    with pytest.raises(sources.DataError, match=r"m\.jsonl:4: .*lone surrogate"):
        sources.read_records(path)  # without required fields too
    listed = tmp_path / "l.json"
    listed.write_text('[{"prompt": "a", "response": "b"}, 5, {"prompt": "c", "response": "d"}]')
    with pytest.raises(sources.DataError, match=r"l\.json\[1\]: expected a JSON object"):
        sources.read_records(listed)
    assert len(sources.read_records(listed, on_error="skip", stats={})) == 2


def test_jsonl_records_read_rows_from_the_file_as_they_are_asked(tmp_path, tok):
    # An R1-size SFT file (~20 GB of JSON) was held as dicts in every process; JsonlRecords
    # keeps two numbers a row and reads the row when asked, equal to read_records' list.
    lines = [
        '{"prompt": "caf\u00e9 \u8ba1\u7b97", "response": "b"}',
        "",
        '{"prompt": "c"}',
        "{broken",
        '{"prompt": "e", "response": "f", "extra": [1, {"k": null}]}',
        '{"prompt": "g", "response": "h"}\r',
        '{"prompt": "i", "response": "j"}',
    ]
    path = tmp_path / "sft.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "\n".join(lines).encode())  # a BOM, no final newline
    need = pipeline.REQUIRED_FIELDS["sft"]
    want_stats, stats = {}, {}
    want = sources.read_records(path, on_error="skip", stats=want_stats, required=need)
    rows = sources.JsonlRecords(path, on_error="skip", stats=stats, required=need)
    assert len(rows) == 4 and list(rows) == want and stats == want_stats
    assert rows[-1] == want[-1] and rows[1] == want[1]
    assert list(rows[1::2]) == want[1::2] and list(rows[::-1]) == want[::-1]
    assert len(rows[:2]) == 2 and rows[:2].required == need
    with pytest.raises(IndexError):
        rows[4]
    assert list(pickle.loads(pickle.dumps(rows[1:]))) == want[1:]  # grain worker processes
    with pytest.raises(sources.DataError, match=r"sft\.jsonl:3: field 'response' is missing"):
        sources.JsonlRecords(path, required=need)
    (tmp_path / "x.jsonl.gz").write_bytes(gzip.compress(path.read_bytes()))
    with pytest.raises(sources.DataError, match="no row offsets"):
        sources.JsonlRecords(tmp_path / "x.jsonl.gz")
    # The same batches (and resumed state) as from the list.
    kw = dict(kind="sft", seq_len=8, batch_size=2, seed=3, pack=False)
    got = list(pipeline.make_dataset(rows, tok, num_epochs=3, **kw))
    ref = list(pipeline.make_dataset(want, tok, num_epochs=3, **kw))
    assert len(got) == len(ref) == 6
    for a, b in zip(got, ref, strict=True):
        assert all(np.array_equal(a[k], b[k]) for k in pipeline.BATCH_KEYS)
    # A new file renamed over it is not seen; one rewritten in place stops the read.
    replaced = tmp_path / "new.jsonl"
    replaced.write_text('{"prompt": "z", "response": "z"}\n')
    replaced.replace(path)
    assert rows[0] == want[0]
    held = sources.JsonlRecords(path, required=need)
    path.write_text('{"prompt": "zz", "response": "zz"}\n')
    with pytest.raises(
        sources.DataError, match=r"sft\.jsonl: the file changed while the run read rows"
    ):
        held[0]
    with pytest.raises(sources.DataError, match="changed since its rows were indexed"):
        pickle.loads(pickle.dumps(held))


def test_jsonl_records_held_until_exit_close_quietly(tmp_path):
    # Its file was closed by __del__ at interpreter exit, when `os` may already be gone:
    # "Exception ignored ... AttributeError" after a finished run.
    path = _write_lines(tmp_path / "d.jsonl", ['{"prompt": "a", "response": "b"}'])
    code = (
        "import ml_collections\nfrom r1jax.train import supervised\n"
        "cfg = ml_collections.ConfigDict({'data': {'format': 'jsonl', 'on_error': 'raise', "
        f"'max_records': 0}}}})\nrows = supervised.load_records(cfg, {str(path)!r}, lazy=True)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "Exception ignored" not in out.stderr, out.stderr


def test_pretraining_rows_with_text_not_a_string_are_refused_at_their_line(tmp_path):
    # A pair beside a numeric text passed the file's check and failed in make_dataset (no
    # line), or, unchecked, in a reader thread.
    path = _write_lines(
        tmp_path / "p.jsonl", ['{"text": "a"}', '{"text": 5, "prompt": "p", "response": "r"}']
    )
    need = pipeline.REQUIRED_FIELDS["pretrain"]
    for read in (sources.read_records, sources.JsonlRecords):
        with pytest.raises(sources.DataError, match=r"p\.jsonl:2: field 'text' is an int"):
            read(path, required=need)


def test_load_records_reads_a_plain_jsonl_file_lazily(tmp_path):
    cfg = ml_collections.ConfigDict(
        {"data": {"format": "jsonl", "on_error": "raise", "max_records": 2}}
    )
    rows = [{"prompt": f"p{i}", "response": f"r{i}"} for i in range(3)]
    plain = _write_lines(tmp_path / "d.jsonl", [json.dumps(r) for r in rows])
    listed = tmp_path / "d.json"
    listed.write_text(json.dumps(rows))
    lazy = supervised.load_records(cfg, str(plain), lazy=True)
    assert isinstance(lazy, sources.JsonlRecords) and list(lazy) == rows[:2]
    assert supervised.load_records(cfg, str(listed), lazy=True) == rows[:2]
    assert supervised.load_records(cfg, str(plain)) == rows[:2]


def test_a_kept_row_index_spares_a_restart_the_check_and_follows_the_file(
    tmp_path, monkeypatch, caplog
):
    # Checking rows runs at ~250 MB/s: an R1-size SFT file (20 GB) took every process ~80 s
    # at each resume. The index keeps the check while the file and the settings are the same.
    rows = [{"prompt": f"p{i}", "response": "r"} for i in range(5)]
    path = _write_lines(tmp_path / "d.jsonl", [*map(json.dumps, rows), '{"prompt": "x"}', "{"])
    index = tmp_path / "run" / "data_index" / "d.npz"
    need = (("prompt", "response"),)
    read = lambda **kw: sources.JsonlRecords(path, on_error="skip", **kw)  # noqa: E731
    first_stats, again_stats = {}, {}
    first = read(stats=first_stats, required=need, index=index)
    assert index.exists() and not first.from_index and first_stats["skipped"] == 2
    with monkeypatch.context() as m:
        m.setattr(sources, "_jsonl_entries", lambda *a: pytest.fail("rows checked again"))
        again = read(stats=again_stats, required=need, index=index)
    assert again.from_index and list(again) == list(first) == rows
    assert again_stats == first_stats  # the skipped rows' count and messages carry over
    assert len(read(required=(("prompt",),), index=index)) == 6  # other settings: checked
    assert not read(required=need, index=index).from_index  # (the index now holds those)
    assert read(required=need, index=index).from_index
    assert "changed since this run indexed it" not in caplog.text  # other settings: no note
    with path.open("a") as f:  # the file changed: checked again, and said (a resume's data
        f.write(json.dumps({"prompt": "new", "response": "r"}) + "\n")  # position moved)
    with caplog.at_level("WARNING"):
        changed = read(required=need, index=index)
    assert not changed.from_index and changed[-1]["prompt"] == "new"
    assert f"{path}: changed since this run indexed it" in caplog.text
    index.write_bytes(b"not an index")  # a damaged index: checked again, and rewritten
    assert not read(required=need, index=index).from_index
    assert read(required=need, index=index).from_index
    other = tmp_path / "other.npz"
    assert not read(required=need, index=other, write_index=False).from_index
    assert not other.exists()
    # The stage keeps it in the workdir; load_records reads it there on the next start.
    cfg = ml_collections.ConfigDict(
        {"data": {"format": "jsonl", "on_error": "skip", "max_records": 0}}
    )
    kw = dict(required=need, lazy=True, index_dir=tmp_path / "run" / "data_index")
    assert not supervised.load_records(cfg, str(path), **kw).from_index
    assert list(supervised.load_records(cfg, str(path), **kw)) == list(changed)
    assert supervised.load_records(cfg, str(path), **kw).from_index


def test_json_nested_past_the_recursion_limit_names_its_line_and_can_be_skipped(tmp_path):
    # json.loads raised RecursionError (no file, line, nor skip); a value nested just under
    # the limit passed json.loads and hit it in the lone-surrogate check.
    deep = '{"prompt": ' + "[" * 100_000 + "]" * 100_000 + "}"
    almost = '{"prompt": "p", "response": "r", "x": ' + "[" * 700 + '"ok"' + "]" * 700 + "}"
    path = _write_lines(tmp_path / "d.jsonl", ['{"prompt": "a", "response": "b"}', deep, almost])
    for read in (sources.read_records, sources.JsonlRecords):
        with pytest.raises(sources.DataError, match=r"d\.jsonl:2: JSON nested too deeply"):
            read(path)
        stats = {}
        assert len(read(path, on_error="skip", stats=stats)) == 2 and stats["skipped"] == 1
    listed = tmp_path / "d.json"
    listed.write_text("[" + deep + "]")
    with pytest.raises(sources.DataError, match=r"d\.json: JSON nested too deeply"):
        sources.read_records(listed)


def test_files_read_the_wrong_way_say_why(tmp_path):
    # From the data audit: each raised a bare error, or lost a whole file as one skipped row
    # with no word of the cause.
    big = _write_lines(
        tmp_path / "big.jsonl", ['{"prompt": "a", "response": "b", "n": ' + "9" * 5000 + "}"]
    )
    with pytest.raises(sources.DataError, match=r"big\.jsonl:1: unreadable JSON value .*4300"):
        sources.read_records(big)
    assert sources.read_records(big, on_error="skip", stats={}) == []
    cr = tmp_path / "cr.jsonl"
    cr.write_bytes(b'{"prompt": "a", "response": "b"}\r{"prompt": "c", "response": "d"}\r')
    with pytest.raises(sources.DataError, match=r"cr\.jsonl:1: .*carriage return"):
        sources.read_records(cr)
    listed = _write_lines(tmp_path / "l.jsonl", ['[{"prompt": "a", "response": "b"}]'])
    with pytest.raises(sources.DataError, match=r"got list; a JSON list of rows is read from"):
        sources.read_records(listed)
    lines = tmp_path / "m.json"
    lines.write_text('{"prompt": "a", "response": "b"}\n{"prompt": "c", "response": "d"}\n')
    with pytest.raises(sources.DataError, match=r"m\.json:2: .*read from a file named \.jsonl"):
        sources.read_records(lines)
    # Read as they are: gzip bytes without .gz (not lazily), and names in upper case.
    row = {"prompt": "a", "response": "b"}
    (tmp_path / "z.jsonl").write_bytes(gzip.compress(json.dumps(row).encode()))
    assert sources.read_records(tmp_path / "z.jsonl") == [row]
    assert not sources.is_plain_jsonl(tmp_path / "z.jsonl")
    (tmp_path / "U.JSON").write_text(json.dumps([row]))
    assert sources.read_records(tmp_path / "U.JSON") == [row]


def test_math_rows_with_non_numbers_or_without_solutions_for_sft(tmp_path):
    lines = [
        '{"problem": "p", "answer": NaN}',  # Python's json writes (and reads) NaN and Infinity
        '{"problem": "p", "answer": 1e400}',
        '{"problem": "q", "answer": "3", "solution": "  "}',  # blank: no solution, not a bad row
        '{"problem": "r", "answer": 2, "solution": "1 + 1"}',
    ]
    path = _write_lines(tmp_path / "math.jsonl", lines)
    stats = {}
    rows = sources.math_records(path, on_error="skip", stats=stats)
    assert [r["prompt"] for r in rows] == ["q", "r"] and "response" not in rows[0]
    assert stats["errors"][:2] == [
        f"{path}:1: field 'answer' is nan, not a number",
        f"{path}:2: field 'answer' is inf, not a number",
    ]
    # SFT on MATH rows needs their solutions: refused at the line, not later as "record 1".
    cfg = ml_collections.ConfigDict(
        {"data": {"format": "math", "on_error": "raise", "max_records": 0}}
    )
    with pytest.raises(sources.DataError, match=r"math\.jsonl:1: required field 'solution'"):
        supervised.load_records(cfg, str(path), required=pipeline.REQUIRED_FIELDS["sft"])
    cfg.data.on_error = "skip"
    got = supervised.load_records(cfg, str(path), required=pipeline.REQUIRED_FIELDS["sft"])
    assert [r["prompt"] for r in got] == ["r"]


def test_sft_on_a_format_without_responses_is_one_error_naming_file_and_format(shared_data):
    # HumanEval's reader gives prompts, no responses: SFT stopped in tokenization with a KeyError.
    cfg = ml_collections.ConfigDict(
        {"data": {"format": "humaneval", "on_error": "raise", "max_records": 0}}
    )
    path = str(shared_data / "HumanEval.jsonl.gz")
    with pytest.raises(
        sources.DataError,
        match=r"HumanEval\.jsonl\.gz \(data\.format='humaneval'\): "
        r"record 1: no string field 'response'; this stage's rows need 'prompt'\+'response'",
    ):
        supervised.load_records(cfg, path, required=pipeline.REQUIRED_FIELDS["sft"])
    assert len(supervised.load_records(cfg, path, required=(("prompt",),))) == 164  # RL's need


def test_read_parquet(tmp_path):
    path = tmp_path / "t.parquet"
    if importlib.util.find_spec("pyarrow") is None:
        path.write_bytes(b"PAR1")
        with pytest.raises(sources.DataError, match="needs pyarrow"):
            sources.read_parquet(path)
        return
    import pyarrow
    import pyarrow.parquet

    pyarrow.parquet.write_table(pyarrow.table({"text": ["a", "b"]}), path)
    assert sources.read_parquet(path) == [{"text": "a"}, {"text": "b"}]


def test_gsm8k_records(shared_data):
    records = sources.gsm8k_records(shared_data / "gsm8k_train.jsonl")
    assert len(records) == 7473
    first = records[0]
    assert first["answer"] == "72" and first["task"] == "gsm8k"
    assert first["response"] == (
        "<think>Natalia sold 48/2 = 24 clips in May.\n"
        "Natalia sold 48+24 = 72 clips altogether in April and May.\n"
        "So the answer is 72.</think> <answer>72</answer>"
    )
    raw = [json.loads(line) for line in open(shared_data / "gsm8k_train.jsonl")]
    with_comma = next(i for i, r in enumerate(raw) if "," in r["answer"].split("####")[-1])
    assert records[with_comma]["answer"] == raw[with_comma]["answer"].split("####")[
        -1
    ].strip().replace(",", "")
    for record in records:
        assert "<<" not in record["response"] and "####" not in record["response"]
        assert text.split_reasoning(record["response"])[1] == record["answer"]
        assert "," not in record["answer"]


def test_gsm8k_missing_field_names_file_line_and_field(tmp_path):
    good = json.dumps({"question": "q", "answer": "1+1=<<1+1=2>>2\n#### 2"})
    path = _write_lines(tmp_path / "g.jsonl", [good, json.dumps({"answer": "#### 1"})])
    with pytest.raises(sources.DataError, match=r"g\.jsonl:2: required field 'question'"):
        sources.gsm8k_records(path)
    stats = {}
    records = sources.gsm8k_records(path, on_error="skip", stats=stats)
    assert [r["response"] for r in records] == [
        "<think>1+1=2\nSo the answer is 2.</think> <answer>2</answer>"
    ]
    assert stats == {"skipped": 1, "rows": 1, "errors": [stats["errors"][0]]}
    no_final = _write_lines(tmp_path / "h.jsonl", [json.dumps({"question": "q", "answer": "2"})])
    with pytest.raises(sources.DataError, match=r"h\.jsonl:1: field 'answer': no '####"):
        sources.gsm8k_records(no_final)


def test_math_records(shared_data):
    test = sources.math_records(shared_data / "math500_test.jsonl")
    assert len(test) == 500 and all(r["task"] == "math" for r in test)
    assert all(text.split_reasoning(r["response"])[1] == r["answer"] for r in test)
    # Four rows of the rllm file have a null or empty answer: raise by default, or skip.
    with pytest.raises(sources.DataError, match=r"math_train_rllm\.json\[886\]: required field"):
        sources.math_records(shared_data / "math_train_rllm.json")
    stats = {}
    train = sources.math_records(shared_data / "math_train_rllm.json", on_error="skip", stats=stats)
    assert len(train) == 7470 and stats["skipped"] == 4 and "response" not in train[0]
    amc = sources.math_records(shared_data / "amc23_test.jsonl")
    assert all("." not in r["answer"] for r in amc if r["answer"].replace(".", "").isdigit())


def test_math_missing_field_in_json_list(tmp_path):
    (tmp_path / "m.json").write_text('[{"problem": "p", "answer": "1"}, {"problem": "q"}]')
    with pytest.raises(sources.DataError, match=r"m\.json\[1\]: required field 'answer'"):
        sources.math_records(tmp_path / "m.json")


# ---- pipeline ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gsm8k(shared_data):
    return sources.gsm8k_records(shared_data / "gsm8k_test.jsonl")


@pytest.fixture(scope="module")
def tok(gsm8k, tmp_path_factory):
    corpus = (r["prompt"] + "\n" + r["response"] for r in gsm8k[:400])
    prefix = tmp_path_factory.mktemp("sp") / "gsm8k"
    return text.SentencePieceTokenizer.train(corpus, prefix, vocab_size=512)


def test_tokenize_sft_trains_response_and_eos_only(gsm8k, tok):
    record = gsm8k[0]
    ex = pipeline.tokenize_sft(record, tok, seq_len=1024, template="r1_zero")
    prompt_ids = [tok.bos_id] + tok.encode(text.r1_zero_prompt(record["prompt"]))
    assert not ex["truncated"]
    assert ex["inputs"][0] == tok.bos_id and ex["targets"][-1] == tok.eos_id
    np.testing.assert_array_equal(ex["inputs"][1:], ex["targets"][:-1])
    trained = ex["targets"][ex["loss_mask"] == 1]
    assert tok.decode(trained) == " " + record["response"]
    assert trained[-1] == tok.eos_id
    assert ex["loss_mask"].sum() == len(ex["targets"]) - len(prompt_ids) + 1
    assert (ex["inputs"].dtype, ex["targets"].dtype, ex["loss_mask"].dtype) == (
        np.int32,
        np.int32,
        np.float32,
    )


def test_tokenize_pretrain_and_long_documents(tok):
    (ex,) = pipeline.tokenize_pretrain({"text": "one two three"}, tok, seq_len=64)
    assert ex["inputs"][0] == tok.bos_id and ex["targets"][-1] == tok.eos_id
    assert ex["loss_mask"].tolist() == [1.0] * len(ex["targets"]) and not ex["truncated"]
    # A document longer than a row continues in the next rows: every token trained once (it
    # was cut to its first row, 7% of a long-document corpus trained).
    body = "one two three " * 20
    ids = text.bos_ids(tok) + tok.encode(body) + [tok.eos_id]
    for seq_len in (8, 9, len(ids) - 1, len(ids) - 2):
        rows = pipeline.tokenize_pretrain({"text": body}, tok, seq_len=seq_len)
        assert len(rows) == -(-(len(ids) - 1) // seq_len)
        assert all(len(r["inputs"]) <= seq_len and not r["truncated"] for r in rows)
        assert np.concatenate([r["targets"] for r in rows]).tolist() == ids[1:]
        assert np.concatenate([r["inputs"] for r in rows]).tolist() == ids[:-1]
        assert all(r["loss_mask"].all() for r in rows)
    with pytest.raises(KeyError, match="needs 'text'"):
        pipeline.tokenize_pretrain({"question": "q"}, tok, seq_len=8)


def test_empty_documents_without_bos_make_no_rows_and_an_empty_corpus_fails(tok, tmp_path):
    # A tokenizer that adds no BOS (as Qwen's): an empty text is EOS alone, nothing to train. It
    # made an all-padding row unpacked, and a corpus of only such texts never filled a packed
    # row (the first batch waited forever).
    spec = json.loads(tok.to_hf_json())
    spec["post_processor"] = None
    (tmp_path / "tokenizer.json").write_text(json.dumps(spec))
    no_bos = text.HFTokenizer(tmp_path)
    assert no_bos.bos_id is None and text.bos_ids(no_bos) == []
    assert pipeline.tokenize_pretrain({"text": ""}, no_bos, seq_len=8) == []
    records = [{"text": ""}, {"text": "one"}, {"text": ""}]
    ds = pipeline.make_dataset(
        records, no_bos, kind="pretrain", seq_len=8, batch_size=1, seed=0, num_epochs=1, pack=False
    )
    rows = [b["loss_mask"][0] for b in ds]
    assert len(rows) == 1 and rows[0].sum() == len(no_bos.encode("one"))
    for pack in (False, True):
        ds = pipeline.make_dataset(
            [{"text": ""}] * 3, no_bos, kind="pretrain", seq_len=8, batch_size=2, seed=0, pack=pack
        )
        with pytest.raises(sources.DataError, match="none of the 3 pretraining records"):
            next(iter(ds))


@pytest.mark.parametrize("pack", [True, False])
def test_pretraining_trains_every_token_of_long_documents_and_resumes_inside_one(tok, pack):
    records = [{"text": f"doc {i} " + "one two three " * (3 + 7 * i)} for i in range(5)]
    per_doc = [pipeline.tokenize_pretrain(r, tok, seq_len=16) for r in records]
    want = sorted(tuple(ex["targets"].tolist()) for rows in per_doc for ex in rows)
    ds = pipeline.make_dataset(
        records, tok, kind="pretrain", seq_len=16, batch_size=2, seed=3, num_epochs=1, pack=pack
    )
    got, batches, it = [], [], iter(ds)
    for batch in it:
        batches.append(batch)
        for b in range(2):
            for s in range(1, batch["segment_ids"][b].max() + 1):
                got.append(tuple(batch["targets"][b][batch["segment_ids"][b] == s].tolist()))
    # Every row of every document once (the batch remainder dropped, at most one batch's rows).
    assert set(got) <= set(want) and len(want) - len(got) < 2 * (16 if pack else 1)
    rows = pipeline.rows_per_epoch(
        records, tok, kind="pretrain", seq_len=16, batch_size=2, pack=pack
    )
    assert rows >= sum(len(r) for r in per_doc) // (16 if pack else 1)
    if not pack:
        assert rows == sum(len(r) for r in per_doc)
    # A position saved before documents spanned rows (no FlatMap level; each document one
    # row) resumes where it was: here every document fits a row of 64.
    docs = [{"text": f"doc {i} " + "one two three " * (i % 4)} for i in range(40)]
    assert all(len(pipeline.tokenize_pretrain(r, tok, 64)) == 1 for r in docs)
    short = pipeline.make_dataset(
        docs, tok, kind="pretrain", seq_len=64, batch_size=2, seed=3, pack=pack
    )
    it = pipeline.resumable_iterator(short, "pretrain")
    next(it)
    state = it.get_state()

    def saved_before(node):  # the same position as the old pipeline saved it
        if "next_index_in_buffer" in node:
            finished = node["next_index_in_buffer"] >= 1
            return {"next_index": node["parent"]["next_index"] + finished}
        return {**node, "parent": saved_before(node["parent"])}

    resumed = pipeline.resumable_iterator(short, "pretrain")
    resumed.set_state(saved_before(state))
    for _ in range(3):
        a, b = next(it), next(resumed)
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    # The iterator's state resumes in the middle of a document's rows.
    it = iter(ds)
    next(it)
    state = it.get_state()
    rest = list(it)
    resumed = iter(ds)
    resumed.set_state(state)
    for a, b in zip(rest, list(resumed), strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])


def _segments(batch):
    """(inputs, targets, loss_mask) of each packed example in a batch, checking positions."""
    out = []
    for b in range(batch["inputs"].shape[0]):
        seg_T = batch["segment_ids"][b]
        assert np.all(batch["loss_mask"][b][seg_T == 0] == 0)
        for s in np.unique(seg_T[seg_T > 0]):
            at = seg_T == s
            np.testing.assert_array_equal(batch["positions"][b][at], np.arange(at.sum()))
            out.append(
                tuple(tuple(batch[k][b][at].tolist()) for k in ("inputs", "targets", "loss_mask"))
            )
    return out


def test_packed_sft_batches_hold_exactly_the_tokenized_examples(gsm8k, tok):
    records, seq_len = gsm8k[:60], 512
    stats = {}
    ds = pipeline.make_dataset(
        records, tok, kind="sft", seq_len=seq_len, batch_size=4, seed=0, num_epochs=1, stats=stats
    )
    batches = list(ds)
    for batch in batches:
        assert set(batch) == set(pipeline.BATCH_KEYS)
        for key, dtype in [("inputs", np.int32), ("targets", np.int32), ("loss_mask", np.float32)]:
            assert batch[key].shape == (4, seq_len) and batch[key].dtype == dtype
        assert batch["segment_ids"].dtype == batch["positions"].dtype == np.int32
    expected, truncated = collections.Counter(), 0
    for r in records:
        ex = pipeline.tokenize_sft(r, tok, seq_len, "chat")
        truncated += int(ex.pop("truncated"))
        expected[tuple(tuple(ex[k].tolist()) for k in ("inputs", "targets", "loss_mask"))] += 1
    got = collections.Counter(seg for batch in batches for seg in _segments(batch))
    assert not got - expected  # every packed segment is a whole tokenized example
    assert sum(got.values()) >= len(records) - 6  # drop_remainder loses at most 3 rows
    assert max(b["segment_ids"].max() for b in batches) > 1  # rows hold several examples
    assert stats == {"examples": len(records), "truncated": truncated}


def _record_ids(ds, tok):
    """The 'doc N' numbers in the order the (unpacked, batch_size=1) dataset yields them."""
    return [int(tok.decode(b["inputs"][0][b["segment_ids"][0] > 0]).split()[1]) for b in ds]


def test_sharding_epochs_and_seed(tok):
    records = [{"text": f"doc {i} end"} for i in range(20)]
    kw = dict(kind="pretrain", seq_len=16, batch_size=1, pack=False, num_epochs=1)
    shards = [
        _record_ids(
            pipeline.make_dataset(records, tok, seed=3, shard_index=i, shard_count=2, **kw), tok
        )
        for i in range(2)
    ]
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == list(range(20))
    kw["num_epochs"] = 2
    two = _record_ids(pipeline.make_dataset(records, tok, seed=3, **kw), tok)
    assert sorted(two[:20]) == sorted(two[20:]) == list(range(20))
    assert two[:20] != two[20:]  # each epoch its own order
    assert two == _record_ids(pipeline.make_dataset(records, tok, seed=3, **kw), tok)
    assert two != _record_ids(pipeline.make_dataset(records, tok, seed=4, **kw), tok)


def test_unpacked_rows_hold_one_example_each(gsm8k, tok):
    records, seq_len = gsm8k[:8], 512
    kw = dict(kind="sft", seq_len=seq_len, batch_size=2, pack=False, template="r1_zero")
    batches = list(pipeline.make_dataset(records, tok, seed=0, num_epochs=1, **kw))
    assert len(batches) == 4
    for batch in batches:
        assert batch["segment_ids"].max(axis=1).tolist() == [1, 1]
        assert np.all(batch["inputs"][batch["segment_ids"] == 0] == tok.pad_id)
    expected = set()
    for r in records:
        ex = pipeline.tokenize_sft(r, tok, seq_len, "r1_zero")
        expected.add(tuple(tuple(ex[k].tolist()) for k in ("inputs", "targets", "loss_mask")))
    assert {seg for batch in batches for seg in _segments(batch)} == expected


def test_iterator_state_resumes_exactly(gsm8k, tok):
    def make():
        return pipeline.make_dataset(gsm8k, tok, kind="sft", seq_len=256, batch_size=4, seed=7)

    it = iter(make())
    for _ in range(3):
        next(it)
    state = json.loads(json.dumps(it.get_state()))  # the checkpoint stores it as JSON
    after = [next(it) for _ in range(3)]
    restored = iter(make())
    restored.set_state(state)
    for want, got in zip(after, [next(restored) for _ in range(3)], strict=True):
        for key in pipeline.BATCH_KEYS:
            np.testing.assert_array_equal(want[key], got[key])
    first = next(iter(make()))
    assert not np.array_equal(first["inputs"], after[0]["inputs"])


def test_make_dataset_rejects_bad_arguments(tok):
    records = [{"text": "a"}]
    with pytest.raises(ValueError, match="kind"):
        pipeline.make_dataset(records, tok, kind="rl", seq_len=8, batch_size=1, seed=0)
    with pytest.raises(ValueError, match="template"):
        pipeline.make_dataset(
            records, tok, kind="sft", seq_len=8, batch_size=1, seed=0, template="alpaca"
        )
    with pytest.raises(ValueError, match="shard_index 2"):
        pipeline.make_dataset(
            records, tok, seq_len=8, batch_size=1, seed=0, shard_index=2, shard_count=2
        )
    # Fewer records than processes: every process stops (one alone left the others waiting).
    with pytest.raises(sources.DataError, match="1 records for 2 processes"):
        pipeline.make_dataset(
            records, tok, seq_len=8, batch_size=1, seed=0, shard_index=1, shard_count=2
        )


def test_records_without_their_fields_are_refused_before_training(tok):
    sft = [{"prompt": "a", "response": "b"}, {"prompt": "c"}]
    with pytest.raises(sources.DataError, match=r"record 2 of 2: field 'response' is missing"):
        pipeline.make_dataset(sft, tok, kind="sft", seq_len=16, batch_size=1, seed=0)
    sft[1]["response"] = 5
    with pytest.raises(sources.DataError, match=r"record 2 of 2: field 'response' is an int"):
        pipeline.make_dataset(sft, tok, kind="sft", seq_len=16, batch_size=1, seed=0)
    with pytest.raises(sources.DataError, match=r"record 1 of 1.*'text' \(or 'prompt'"):
        pipeline.make_dataset([{"txt": "a"}], tok, seq_len=16, batch_size=1, seed=0)


def test_long_sft_example_keeps_prompt_tail_and_response(tok):
    record = {"prompt": "word " * 50 + "last", "response": "r"}
    ex = pipeline.tokenize_sft(record, tok, seq_len=32, template="chat")
    assert ex["truncated"] and len(ex["inputs"]) == 32
    assert ex["inputs"][0] == tok.bos_id
    assert tok.decode(ex["inputs"]).endswith("word last\nAssistant: r")
    assert tok.decode(ex["targets"][ex["loss_mask"] > 0]) == " r"
    assert ex["targets"][-1] == tok.eos_id
    long_both = {"prompt": "word " * 50, "response": "answer " * 50}
    ex = pipeline.tokenize_sft(long_both, tok, seq_len=32, template="chat")
    assert len(ex["inputs"]) == 32 and ex["loss_mask"].sum() == 17  # prompt: 33 // 2 tokens
    assert tok.decode(ex["targets"][ex["loss_mask"] > 0]).startswith(" answer answer")
    # A prompt shorter than its share (half the row) is kept whole while the response is cut.
    short = {"prompt": "word " * 3 + "first", "response": "answer " * 80}
    ex = pipeline.tokenize_sft(short, tok, seq_len=64, template="chat")
    prompt_len = len(tok.encode(text.apply_template("chat", short["prompt"])))
    assert ex["truncated"] and 65 // 4 < prompt_len < 65 // 2 - 1  # keep = 31 tokens
    assert ex["inputs"][0] == tok.bos_id
    assert tok.decode(ex["inputs"]).startswith("User: word word word first\nAssistant:")
    stats = {}
    records = [record, {"prompt": "p", "response": "ok"}]
    kw = dict(kind="sft", seq_len=32, batch_size=1, pack=False, num_epochs=1, stats=stats)
    batches = list(pipeline.make_dataset(records, tok, seed=0, **kw))
    assert len(batches) == 2 and stats == {"examples": 2, "truncated": 1}
    trained = sorted(tok.decode(b["targets"][0][b["loss_mask"][0] > 0]) for b in batches)
    assert trained == [" ok", " r"]


def test_records_longer_than_seq_len_are_counted_and_reported(gsm8k, tok, tmp_path, caplog):
    records = gsm8k[:300]
    cut, checked = pipeline.truncation_count(records, tok, kind="sft", seq_len=200, limit=100)
    want = sum(bool(pipeline.tokenize_sft(r, tok, 200)["truncated"]) for r in records[::3])
    assert checked == 100 and cut == want and 0 < cut < checked
    assert pipeline.truncation_count(records, tok, kind="sft", seq_len=4096) == (0, 300)
    cfg = ml_collections.ConfigDict({"stage": "sft", "data": {"seq_len": 64, "template": "chat"}})
    with caplog.at_level(logging.WARNING):
        supervised._report_truncation(cfg, records, tok, tmp_path)
    assert "longer than data.seq_len=64" in caplog.text and "EOS" in caplog.text
    stats = json.loads((tmp_path / "data_stats.json").read_text())
    assert stats["records"] == 300 and stats["longer_than_seq_len"] > 0


def test_the_eval_batches_take_the_largest_seed_validate_allows(gsm8k, tok):
    # The eval order's seed is the run's + 1, past the 2**32 - 1 grain takes (a crash at start).
    data = {"seq_len": 64, "batch_size": 2, "template": "chat", "pack": True, "eval_batches": 1}
    cfg = ml_collections.ConfigDict({"stage": "sft", "seed": 2**32 - 1, "data": data})
    mesh = sharding.make_mesh({"num_devices": 1})
    assert supervised.make_eval_fn(cfg, None, mesh, gsm8k[:4], tok) is not None


def test_train_epochs_sets_the_steps_from_the_data(gsm8k, tok, tmp_path):
    # sft_all / distill say "2 epochs, as R1" of a dataset whose size is known only once it is
    # collected: a fixed train.steps was 3-13 epochs of it.
    records = gsm8k[:200]
    assert pipeline.rows_per_epoch(records, tok, kind="sft", seq_len=256, pack=False) == 200
    rows = pipeline.rows_per_epoch(records, tok, kind="sft", seq_len=256, batch_size=4)
    tokens = sum(len(pipeline.tokenize_sft(r, tok, 256)["inputs"]) for r in records)
    assert rows > -(-tokens // 256)  # first-fit leaves gaps: tokens / seq_len was too few
    # A real pass (shuffled) fills about as many rows.
    kw = dict(kind="sft", seq_len=256, batch_size=4, pack=True, num_epochs=1)
    batches = list(pipeline.make_dataset(records, tok, seed=0, **kw))
    assert abs(4 * len(batches) - rows) <= 0.1 * rows + 4


def test_a_warmup_longer_than_the_steps_epochs_set_is_warned(gsm8k, tok, caplog):
    # validate leaves train.epochs runs alone (their steps come from the data): sft.py's
    # qwen2.5 variants warmed up 50 steps of a ~30-step run, warned nowhere.
    cfg = ml_collections.ConfigDict(
        {
            "stage": "sft",
            "data": {"seq_len": 256, "batch_size": 4, "template": "chat", "pack": True},
            "train": {"epochs": 1.0, "steps": 1000},
            "optim": {"warmup_steps": 50},
        }
    )
    with caplog.at_level(logging.WARNING):
        cfg, rows = supervised._steps_for_epochs(cfg, gsm8k[:40], tok)
    assert cfg.train.steps == -(-rows // 4) < 50
    assert f"warmup_steps=50 >= train.steps={cfg.train.steps}" in caplog.text
