"""Data files -> lists of dict records: JSONL, JSON lists, parquet (.gz allowed), GSM8K, MATH.

Records the pipeline reads: {"text"} for pretraining, {"prompt", "response"} for SFT; task
records also carry "answer" (the reference final answer, a string) and "task".
"""

import gzip
import io
import json
import math
import operator
import os
import pathlib
import re
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Sequence

import numpy as np
from absl import logging

from r1jax import files, text

ON_ERROR = ("raise", "skip")


class DataError(ValueError):
    """A data file that cannot be read as asked; the message names the file (and line)."""


def _check_file(path) -> pathlib.Path:
    path = pathlib.Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder, not a data file")
    if path.exists() and not path.is_file():  # a FIFO, a socket, a device
        raise DataError(f"{path}: not a regular file (a data file is read by offset, twice)")
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    return path


# What a file named .gz that is not (whole) gzip raises while it is read.
_GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)


def _gzipped(path: pathlib.Path) -> bool:
    """Named .gz (any case), or starting with gzip's magic bytes (a .jsonl that is gzip)."""
    if path.name.lower().endswith(".gz"):
        return True
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _format_name(path: pathlib.Path) -> str:
    """The file's name in lower case without a .gz: what tells its format."""
    return path.name.lower().removesuffix(".gz")


def _numbered_lines(path: pathlib.Path, file=None) -> Iterator[tuple[int, bytes]]:
    """(line number, raw bytes) of a file (.gz ok), or of the open binary `file` (plain) named
    `path`; a broken .gz raises DataError."""
    if file is not None:
        yield from enumerate(file, start=1)
        return
    opener = gzip.open if _gzipped(path) else open
    try:
        with opener(path, "rb") as f:
            yield from enumerate(f, start=1)
    except _GZIP_ERRORS as e:
        raise DataError(f"{path}: not a readable gzip file ({e})") from e


def _decode(raw: bytes, where: str, *, first: bool) -> str:
    """UTF-8 text of `raw` (a byte-order mark at the start of a file is dropped)."""
    try:
        return raw.decode("utf-8-sig" if first else "utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{where}: not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start}); "
            "re-encode the file as UTF-8"
        ) from None


def _count(stats: dict | None, key: str, n: int = 1) -> None:
    if stats is not None:
        stats[key] = stats.get(key, 0) + n


def _reject(message: str, on_error: str, stats: dict | None) -> None:
    """Raises DataError, or (on_error='skip') counts the row and keeps its first messages."""
    if on_error == "raise":
        raise DataError(message)
    _count(stats, "skipped")
    if stats is not None and len(stats.setdefault("errors", [])) < 10:
        stats["errors"].append(message)


def _check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")


# What a malformed-JSON error adds for a file not named .jsonl (a .csv or .txt, say).
_READ_AS_JSONL = (
    "; read as JSON lines, as any file whose name ends in neither .json nor .parquet (each "
    "optionally .gz)"
)


# What a JSON value nested past Python's recursion limit (~1000 levels) is called.
_TOO_DEEP = "JSON nested too deeply to read (past Python's recursion limit)"
# What a malformed line holding a carriage return not before its newline adds.
_LONE_CR = (
    "; the line holds a carriage return (\\r): a file whose lines end in \\r alone reads as one "
    "line (convert its line endings to \\n)"
)


def _jsonl_rows(path: pathlib.Path, on_error: str, stats: dict | None) -> Iterator[tuple]:
    """(location 'file:line', row dict) for each good line; blank lines are ignored."""
    return ((where, row) for where, row, _, _ in _jsonl_entries(path, on_error, stats))


def _jsonl_entries(path: pathlib.Path, on_error: str, stats: dict | None, file=None) -> Iterator:
    """(location 'file:line', row dict, byte offset, byte length) for each good line (the
    offsets count the decompressed bytes of a .gz)."""
    offset = 0
    for lineno, raw in _numbered_lines(path, file):
        start, offset = offset, offset + len(raw)
        where = f"{path}:{lineno}"
        try:
            line = _decode(raw, where, first=lineno == 1)
        except DataError as e:
            _reject(str(e), on_error, stats)
            continue
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            named = _format_name(path).endswith((".jsonl", ".ndjson"))
            hint = "" if named else _READ_AS_JSONL
            if "\r" in line.rstrip("\r\n"):
                hint += _LONE_CR
            _reject(f"{where}: malformed JSON ({e.msg} at column {e.colno}){hint}", on_error, stats)
            continue
        except RecursionError:
            _reject(f"{where}: {_TOO_DEEP}", on_error, stats)
            continue
        except ValueError as e:  # an integer past Python's 4300 digits
            _reject(f"{where}: unreadable JSON value ({e})", on_error, stats)
            continue
        if not isinstance(row, dict):
            hint = "; a JSON list of rows is read from a file named .json" if lineno == 1 else ""
            _reject(
                f"{where}: expected a JSON object, got {type(row).__name__}{hint}", on_error, stats
            )
            continue
        if _proper_text(where, row, on_error, stats):
            yield where, row, start, len(raw)


def read_jsonl(path, *, on_error: str = "raise", stats: dict | None = None) -> list[dict]:
    """Rows of a JSONL file (.gz ok); bad lines raise DataError (file:line) or are skipped.

    `stats`, when given, gets "rows" (kept), "skipped" and "errors" (the first few messages).
    """
    _check_on_error(on_error)
    rows = [row for _, row in _jsonl_rows(_check_file(path), on_error, stats)]
    _count(stats, "rows", len(rows))
    return rows


def _json_list_rows(path: pathlib.Path, on_error: str = "raise", stats=None) -> list[tuple]:
    content = _decode(b"".join(raw for _, raw in _numbered_lines(path)), str(path), first=True)
    try:
        data = json.loads(content)
    except json.JSONDecodeError as e:
        hint = (
            "; one JSON object a line is read from a file named .jsonl"
            if "Extra data" in e.msg
            else ""
        )
        raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg}){hint}") from e
    except RecursionError:
        raise DataError(f"{path}: {_TOO_DEEP}") from None
    except ValueError as e:
        raise DataError(f"{path}: unreadable JSON value ({e})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of objects, got {type(data).__name__}")
    rows = []
    for i, row in enumerate(data):
        where = f"{path}[{i}]"
        if not isinstance(row, dict):
            _reject(f"{where}: expected a JSON object, got {type(row).__name__}", on_error, stats)
        elif _proper_text(where, row, on_error, stats):
            rows.append((where, row))
    return rows


def _proper_text(where: str, row, on_error: str, stats: dict | None) -> bool:
    """False (raising or counting) if a string in the row holds a lone surrogate: JSON's
    "\\ud800" escape decodes to one, which no tokenizer can encode (it failed later, inside a
    reader thread, with no file or line)."""
    bad = _lone_surrogate(row)
    if bad is None:
        return True
    _reject(
        f"{where}: a string holds the lone surrogate {bad!r} (not valid Unicode)", on_error, stats
    )
    return False


def _lone_surrogate(value):
    """The first lone surrogate in a JSON value's strings (keys included), or None. (A loop, not
    recursion: json.loads reads values nested nearly as deep as Python's recursion limit.)"""
    pending = [value]
    while pending:
        value = pending.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as e:
                return value[e.start]
        elif isinstance(value, dict):
            pending.extend(reversed([*value.keys(), *value.values()]))
        elif isinstance(value, list):
            pending.extend(reversed(value))
    return None


def read_json_list(path, *, on_error: str = "raise", stats: dict | None = None) -> list[dict]:
    """Rows of a file holding one JSON list of objects (.gz ok)."""
    _check_on_error(on_error)
    return [row for _, row in _json_list_rows(_check_file(path), on_error, stats)]


def read_parquet(path) -> list[dict]:
    """Rows of a parquet file (needs pyarrow: `pip install pyarrow`)."""
    path = _check_file(path)
    try:
        import pyarrow.parquet as pq  # optional dependency; only parquet files need it
    except ImportError as e:
        raise DataError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from e
    try:
        if _gzipped(path):
            with gzip.open(path) as f:
                return pq.read_table(f).to_pylist()
        return pq.read_table(path).to_pylist()
    # pyarrow's ArrowInvalid is a ValueError; the others come from a broken .gz.
    except (OSError, ValueError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: not a readable parquet file ({e})") from e


def _located_rows(path, on_error: str, stats: dict | None) -> Iterable[tuple]:
    """(location, row) pairs of a .jsonl / .json list / .parquet file (each may end in .gz)."""
    _check_on_error(on_error)
    path = _check_file(path)
    name = _format_name(path)
    if name.endswith(".json"):
        return _json_list_rows(path, on_error, stats)
    if name.endswith(".parquet"):
        return [(f"{path}[{i}]", row) for i, row in enumerate(read_parquet(path))]
    return _jsonl_rows(path, on_error, stats)  # lazily: errors come in file order


def read_records(
    path, *, on_error: str = "raise", stats: dict | None = None, required=()
) -> list[dict]:
    """Rows of a .jsonl, .json (one list) or .parquet file, each possibly .gz, by its name.

    `required`: alternative sets of string fields, e.g. (("text",), ("prompt", "response"));
    a row with none of them complete raises (naming file:line) or is skipped (on_error)."""
    rows = [
        row
        for where, row in _located_rows(path, on_error, stats)
        if _has_text_fields(where, row, required, on_error, stats)
    ]
    _count(stats, "rows", len(rows))
    return rows


def is_plain_jsonl(path) -> bool:
    """Whether read_records reads `path` as JSON lines, not compressed (JsonlRecords can)."""
    path = pathlib.Path(path)
    if _format_name(path).endswith((".json", ".parquet")):
        return False
    return not (path.is_file() and _gzipped(path))


class JsonlRecords(Sequence):
    """The good rows of a plain (not .gz) JSON-lines file, read from the file as they are
    asked for: a sequence of dicts equal to `read_records`' list, holding only two numbers a
    row. One pass at construction checks every row as `read_records` does (errors name
    file:line; on_error, stats and required alike) and notes where each good one lies.

    An SFT file of R1's size (800k long reasoning rows, ~20 GB of JSON) held as dicts took its
    size in memory in every process (8 a GPU host). Rows are read with pread, safe from grain's
    reader threads. The file stays open: one replaced (a new file renamed over it) is not
    seen, one rewritten in place raises DataError when a row is next read. A slice is a view
    of the same file; the object pickles (reopening the file, which must be unchanged).

    index: a file that keeps the pass's result (row offsets, skip counts) for the next start,
    which reads it instead of checking the rows again while the data file's size and mtime,
    `required` and `on_error` are the same (checking runs at ~250 MB/s: 20 GB took every
    process ~80 s at each resume). write_index=False only reads it (a run's other processes).
    """

    def __init__(
        self,
        path,
        *,
        on_error: str = "raise",
        stats: dict | None = None,
        required=(),
        index=None,
        write_index: bool = True,
    ):
        _check_on_error(on_error)
        self.path = _check_file(path)
        if _gzipped(self.path):
            raise DataError(f"{self.path}: a gzip file has no row offsets; use read_records")
        self.required = tuple(tuple(names) for names in required)
        self._fd = _OpenFile(self.path)
        header = json.dumps(
            {
                "version": 1,
                "path": str(self.path.resolve()),
                "stamp": list(self._fd.stamp),
                "required": self.required,
                "on_error": on_error,
            },
            sort_keys=True,
        )
        own = _read_index(index, header) if index is not None else None
        self.from_index = own is not None
        if own is None:
            spans, own = [], {}
            with os.fdopen(os.dup(self._fd.fd), "rb") as f:
                for where, row, start, length in _jsonl_entries(self.path, on_error, own, f):
                    if _has_text_fields(where, row, required, on_error, own):
                        spans.append((start, length))
            own["spans"] = np.asarray(spans, np.int64).reshape(-1, 2)
            if index is not None and write_index:
                _write_index(index, header, own)
        self._spans = own.pop("spans")  # [rows, (offset, length)]
        if own.get("skipped"):
            _count(stats, "skipped", int(own["skipped"]))
        _count(stats, "rows", len(self._spans))
        if stats is not None and own.get("errors"):
            errors = stats.setdefault("errors", [])
            errors += list(own["errors"])[: max(0, 10 - len(errors))]

    def __len__(self) -> int:
        return len(self._spans)

    def __getitem__(self, index):
        if isinstance(index, slice):
            view = object.__new__(JsonlRecords)
            view.__dict__.update(self.__dict__, _spans=self._spans[index])
            return view
        index = operator.index(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"row {index} of {len(self)}")
        start, length = (int(v) for v in self._spans[index])
        raw = self._fd.read(start, length)
        try:
            row = json.loads(raw.decode("utf-8-sig" if start == 0 else "utf-8"))
        except ValueError:  # the check at construction read this line as an object
            row = None
        if not isinstance(row, dict):
            raise DataError(f"{self.path}: row at byte {start} is no longer the row read at start")
        return row

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __getstate__(self):
        return {**self.__dict__, "_fd": None, "_stamp": self._fd.stamp}

    def __setstate__(self, state):
        stamp = state.pop("_stamp")
        self.__dict__.update(state, _fd=_OpenFile(state["path"], stamp))


def _read_index(index, header: str) -> dict | None:
    """A JsonlRecords pass saved in `index` for the same `header`, or None (absent, for another
    file state or settings, or unreadable: the rows are checked again)."""
    try:
        with np.load(index, allow_pickle=False) as saved:
            if str(saved["header"]) != header:
                _warn_if_changed(json.loads(str(saved["header"])), json.loads(header))
                return None
            out = {"spans": saved["spans"].astype(np.int64).reshape(-1, 2)}
            out["skipped"] = int(saved["skipped"])
            out["errors"] = [str(e) for e in saved["errors"]]
            return out
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def _warn_if_changed(old: dict, new: dict) -> None:
    """A warning when the file an index was made of has changed since (a resumed run's saved
    data position then points into other rows)."""
    if old.get("path") == new["path"] and old.get("stamp") != new["stamp"]:
        logging.warning(
            "%s: changed since this run indexed it (size or modification time): a run resumed "
            "from a checkpoint goes on at its saved position in the changed rows",
            new["path"],
        )


def _write_index(index, header: str, own: dict) -> None:
    buffer = io.BytesIO()
    errors = np.asarray(own.get("errors", []), dtype=str)
    np.savez(
        buffer,
        header=np.asarray(header),
        spans=own["spans"],
        skipped=np.asarray(int(own.get("skipped", 0))),
        errors=errors,
    )
    try:
        files.write_atomic(index, buffer.getvalue())
    except OSError as e:  # a read-only or full workdir: the next start checks the rows again
        logging.warning("%s: could not keep the row index (%s)", index, e)


class _OpenFile:
    """A file descriptor, closed with the last records that read through it, and the file's
    (size, mtime) when it was opened: a read after the file changed raises DataError."""

    def __init__(self, path: pathlib.Path, stamp: tuple | None = None):
        self.path = path
        self.fd = os.open(path, os.O_RDONLY)
        self.stamp = self._stamp()
        if stamp is not None and self.stamp != tuple(stamp):
            self.close()
            raise DataError(f"{path}: changed since its rows were indexed (size, mtime)")

    def _stamp(self) -> tuple:
        st = os.fstat(self.fd)
        return st.st_size, st.st_mtime_ns

    def read(self, start: int, length: int) -> bytes:
        if self._stamp() != self.stamp:
            raise DataError(
                f"{self.path}: the file changed while the run read rows from it (it is read as "
                "training goes); replace a data file by writing a new one and renaming it over "
                "the old, or restart the run"
            )
        return os.pread(self.fd, length, start)

    def close(self, _close=os.close) -> None:  # (bound early: at exit `os` may be gone)
        if getattr(self, "fd", -1) >= 0:  # (also when os.open failed)
            _close(self.fd)
            self.fd = -1

    def __del__(self):
        self.close()


def _text(row: dict, name: str) -> bool:
    """A string, and not blank except a pretraining `text` (corpora hold empty documents)."""
    value = row.get(name)
    return isinstance(value, str) and (name == "text" or bool(value.strip()))


def _has_text_fields(where: str, row: dict, required, on_error: str, stats) -> bool:
    """Whether the row has one of the `required` sets of string fields, prompt and response not
    blank (a blank SFT response would train EOS straight after the prompt); else raises or
    counts (_reject)."""
    text_value = row.get("text")
    if any(tuple(names) == ("text",) for names in required) and not isinstance(
        text_value, (str, type(None))
    ):
        # the pipeline pretrains on any non-null text, before a prompt/response beside it
        _reject(
            f"{where}: field 'text' is {type_phrase(text_value)}, not a string",
            on_error,
            stats,
        )
        return False
    if not required or any(all(_text(row, f) for f in names) for names in required):
        return True
    names = required[-1] if text_value is None and len(required) > 1 else required[0]
    name = next(f for f in names if not _text(row, f))
    value = row.get(name)
    what = "missing" if name not in row else "null" if value is None else "blank"
    if not isinstance(value, (str, type(None))):
        what = f"{type_phrase(value)}, not a string"
    needs = " or ".join("+".join(repr(f) for f in alt) for alt in required)
    _reject(f"{where}: field {name!r} is {what} (rows need {needs})", on_error, stats)
    return False


def type_phrase(value) -> str:
    """ "a list", "an int": the type of `value` in a message."""
    name = type(value).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def _fields(where: str, row: dict, names, on_error: str, stats: dict | None, *, types=None) -> bool:
    """True if every field is present, not null, not blank and (with `types`, name -> allowed
    types) of an allowed type; else raises or counts (_reject)."""
    for name in names:
        value = row.get(name)
        if value is None or (isinstance(value, str) and not value.strip()):
            _reject(f"{where}: required field {name!r} is missing or empty", on_error, stats)
            return False
        allowed = (types or {}).get(name)
        # bool is an int to isinstance, but a true/false answer is a broken row, not a number
        if allowed and (not isinstance(value, allowed) or isinstance(value, bool)):
            expected = " or ".join(t.__name__ for t in allowed)
            _reject(
                f"{where}: field {name!r} must be {expected}, got {type(value).__name__} "
                f"{value!r:.60}",
                on_error,
                stats,
            )
            return False
    return True


_TEXT = (str,)
_ANSWER = (str, int, float)  # MATH-style answers: AMC/AIME files hold numbers


_CALC = re.compile(r"<<[^<>]*>>")


def gsm8k_answer(final: str) -> str:
    """The GSM8K final answer as a plain number string ('1,000' -> '1000')."""
    return final.strip().replace(",", "").rstrip(".")


def gsm8k_response(solution: str) -> tuple[str, str]:
    """(SFT response, final answer) from a GSM8K solution ending in '#### <final>'."""
    steps, sep, final = solution.rpartition("####")
    if not sep:
        raise ValueError("no '#### <final answer>' line")
    answer = gsm8k_answer(final)
    if not answer:
        raise ValueError("empty final answer after '####'")
    lines = [_CALC.sub("", line).strip() for line in steps.strip().split("\n")]
    think = "\n".join(line for line in lines if line) + f"\nSo the answer is {answer}."
    return text.format_reasoning(think, answer), answer


def gsm8k_records(path, *, on_error: str = "raise", stats: dict | None = None) -> list[dict]:
    """GSM8K rows -> {prompt, response '<think>steps</think> <answer>N</answer>', answer, task}."""
    records = []
    for where, row in _located_rows(path, on_error, stats):
        types = {"question": _TEXT, "answer": _TEXT}
        if not _fields(where, row, ("question", "answer"), on_error, stats, types=types):
            continue
        try:
            response, answer = gsm8k_response(row["answer"])
        except ValueError as e:
            _reject(f"{where}: field 'answer': {e}", on_error, stats)
            continue
        records.append(
            {"prompt": row["question"], "response": response, "answer": answer, "task": "gsm8k"}
        )
    _count(stats, "rows", len(records))
    return records


def _answer_string(value) -> str:
    """Reference answers as strings; floats that are whole numbers lose their '.0' (AMC)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def math_records(
    path, *, on_error: str = "raise", stats: dict | None = None, solutions: bool = False
) -> list[dict]:
    """MATH-style rows (problem, answer[, solution]) -> {prompt, answer, task='math'[, response]}.

    With a solution, response is '<think>solution</think> <answer>answer</answer>'; a blank one
    is no solution. solutions=True (SFT on the rows) requires one in every row. A numeric answer
    must be finite (JSON files written by Python can hold NaN and Infinity).
    """
    records = []
    for where, row in _located_rows(path, on_error, stats):
        types = {"problem": _TEXT, "answer": _ANSWER, "solution": _TEXT}
        solution = row.get("solution")
        has_solution = not (
            solution is None or (isinstance(solution, str) and not solution.strip())
        )
        names = (
            ("problem", "answer", "solution")
            if has_solution or solutions
            else ("problem", "answer")
        )
        if not _fields(where, row, names, on_error, stats, types=types):
            continue
        if isinstance(row["answer"], float) and not math.isfinite(row["answer"]):
            _reject(f"{where}: field 'answer' is {row['answer']}, not a number", on_error, stats)
            continue
        record = {"prompt": row["problem"], "answer": _answer_string(row["answer"]), "task": "math"}
        if has_solution:
            record["solution"] = solution
            record["response"] = text.format_reasoning(solution, record["answer"])
        records.append(record)
    _count(stats, "rows", len(records))
    return records


# ---- code --------------------------------------------------------------------------------------

# The model-facing text of a HumanEval problem (data.format="humaneval"); {stub} is the record's
# code stub (signature and docstring), which the grader prepends to the completion's program.
CODE_INSTRUCTION = (
    "Complete the following Python function. Write the whole function, its signature included, "
    "in a ```python code block.\n\n```python\n{stub}\n```"
)


def humaneval_records(
    path, *, on_error: str = "raise", stats: dict | None = None, instruction: bool = True
) -> list[dict]:
    """HumanEval rows (task_id, prompt, test, entry_point[, canonical_solution]) -> code records
    {prompt, stub, test, entry_point, task_id, task="code"[, canonical_solution]}.

    instruction=True (data.format="humaneval"): `prompt` is CODE_INSTRUCTION around the row's
    code stub, which is kept as `stub` for the grader (an instruction-following or reasoning
    model answers with the whole function). instruction=False (data.format="humaneval_completion"):
    `prompt` is the stub itself, as HumanEval's completion protocol gives it to a base model to
    continue, and there is no `stub` (the grader cuts a raw continuation at
    `tasks.COMPLETION_STOPS`).
    """
    names = ("task_id", "prompt", "test", "entry_point")
    records = []
    for where, row in _located_rows(path, on_error, stats):
        if not _fields(where, row, names, on_error, stats, types=dict.fromkeys(names, _TEXT)):
            continue
        if not row["entry_point"].isidentifier():
            bad = f"{row['entry_point']!r:.60}"
            _reject(
                f"{where}: field 'entry_point' must be a Python function name, got {bad}",
                on_error,
                stats,
            )
            continue
        record = {name: row[name] for name in names} | {"task": "code"}
        if isinstance(row.get("canonical_solution"), str):
            record["canonical_solution"] = row["canonical_solution"]
        if instruction:
            stub = row["prompt"].rstrip("\n")
            record.update(prompt=CODE_INSTRUCTION.format(stub=stub), stub=row["prompt"])
        records.append(record)
    _count(stats, "rows", len(records))
    return records


# ---- preference pairs ------------------------------------------------------------------------

HH_ASSISTANT = "\n\nAssistant:"


def split_hh_pair(chosen: str, rejected: str) -> tuple[str, str, str]:
    """(prompt, chosen reply, rejected reply) of two HH-RLHF transcripts.

    The prompt is the longest shared start of the two transcripts that ends with an
    '\\n\\nAssistant:' marker (a reply may itself contain the marker), without that marker: the
    bare question for a single human turn, else the 'Human: ...\\n\\nAssistant: ...' transcript.
    Raises ValueError when the transcripts are not two continuations of one conversation.
    """
    for name, value in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(value, str):
            raise ValueError(f"field {name!r} must be a string, got {type(value).__name__}")
        if not value.lstrip().startswith("Human:") or HH_ASSISTANT not in value:
            raise ValueError(
                f"field {name!r} is not a '\\n\\nHuman: ... \\n\\nAssistant: ...' transcript"
            )
    shared = chosen[: len(_common_prefix(chosen, rejected))]
    cut = shared.rfind(HH_ASSISTANT)
    if cut < 0:
        raise ValueError("chosen and rejected share no conversation ending in '\\n\\nAssistant:'")
    end = cut + len(HH_ASSISTANT)
    prompt = chosen[:cut].strip()
    if prompt.count("Human:") == 1 and "Assistant:" not in prompt:
        prompt = prompt.removeprefix("Human:").strip()
    if not prompt:
        raise ValueError("the shared conversation has no human turn")
    return prompt, chosen[end:].strip(), rejected[end:].strip()


def _common_prefix(a: str, b: str) -> str:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return a[:n]


def hh_rlhf_pairs(
    path, *, on_error: str = "raise", stats: dict | None = None, max_pairs: int = 0
) -> list[dict]:
    """HH-RLHF rows {"chosen", "rejected"} (whole transcripts) -> {"prompt", "chosen",
    "rejected", "turns", "source"} with the two final assistant replies (split_hh_pair).

    Malformed rows raise DataError naming file:line or (on_error='skip') are counted; pairs
    whose replies are equal carry no preference and are dropped, counted in stats["identical"].
    `max_pairs` > 0 keeps the first that many pairs.
    """
    pairs = []
    for where, row in _located_rows(path, on_error, stats):
        pair = _hh_pair(where, row, on_error, stats)
        if pair is not None:
            pairs.append(pair)
        if max_pairs and len(pairs) >= max_pairs:
            break
    _count(stats, "rows", len(pairs))
    return pairs


def _hh_pair(where: str, row: dict, on_error: str, stats: dict | None) -> dict | None:
    if not _fields(where, row, ("chosen", "rejected"), on_error, stats):
        return None
    try:
        prompt, chosen, rejected = split_hh_pair(row["chosen"], row["rejected"])
    except ValueError as e:
        _reject(f"{where}: {e}", on_error, stats)
        return None
    if chosen == rejected:
        _count(stats, "identical")
        return None
    turns = prompt.count("Human:") or 1
    return {
        "prompt": prompt,
        "chosen": chosen,
        "rejected": rejected,
        "turns": turns,
        "source": "hh-rlhf",
    }


def is_hh_row(row: dict) -> bool:
    """True for an HH-RLHF row: whole transcripts in chosen/rejected and no separate prompt."""
    return "prompt" not in row and "chosen" in row and "rejected" in row


_PAIR_FIELDS = ("prompt", "chosen", "rejected")


def preference_records(
    path, *, on_error: str = "raise", stats: dict | None = None, max_pairs: int = 0
) -> list[dict]:
    """Pairs {"prompt", "chosen", "rejected", ...} from a file of such rows or of HH-RLHF rows
    (told apart by their keys, row by row); other fields (aspect, domain) are kept. Pairs
    whose replies are equal are dropped and counted in stats["identical"] (both kinds)."""
    pairs = []
    for where, row in _located_rows(path, on_error, stats):
        pair = _hh_pair(where, row, on_error, stats) if is_hh_row(row) else None
        # An empty reply is a reply (HH-RLHF's transcripts have some, kept above): only the
        # prompt must have text.
        if not is_hh_row(row) and _fields(where, row, ("prompt",), on_error, stats):
            missing = [k for k in _PAIR_FIELDS if row.get(k) is None]
            wrong = [k for k in _PAIR_FIELDS if not isinstance(row.get(k), str)]
            if missing:
                _reject(f"{where}: required field {missing[0]!r} is missing", on_error, stats)
            elif wrong:
                _reject(f"{where}: field {wrong[0]!r} must be a string", on_error, stats)
            elif row["chosen"].strip() == row["rejected"].strip():
                _count(stats, "identical")  # no preference, as for HH rows
            else:
                pair = row
        if pair is not None:
            pairs.append(pair)
        if max_pairs and len(pairs) >= max_pairs:
            break
    _count(stats, "rows", len(pairs))
    return pairs
