"""Tokenizers (SentencePiece trained here, Hugging Face tokenizer.json), prompt templates, tags.

Token ids of a SentencePiece model trained by `SentencePieceTokenizer.train` are fixed:
pad=0, unk=1, bos=2, eos=3, then the user-defined symbols (<think>, </think>, <answer>,
</answer>, ...), then the 256 byte-fallback pieces, then the learned pieces.
"""

import io
import itertools
import json
import pathlib
from collections.abc import Iterable, Iterator, Sequence
from typing import Protocol, runtime_checkable

import sentencepiece
import tokenizers
from absl import logging

from r1jax import files

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
ANSWER_OPEN = "<answer>"
ANSWER_CLOSE = "</answer>"
REASONING_TAGS = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


class TokenizerError(ValueError):
    """A tokenizer file that cannot be used; the message names the file."""


@runtime_checkable
class Tokenizer(Protocol):
    """What the rest of r1jax needs from a tokenizer."""

    vocab_size: int
    bos_id: int | None  # put before every text unless the tokenizer has `prefix_ids` (see bos_ids)
    eos_id: int
    pad_id: int

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, with no BOS or EOS added."""
        ...

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; pad ids are dropped, nothing else (EOS included) stops decoding."""
        ...

    def token_to_id(self, piece: str) -> int | None:
        """The id of one vocabulary piece, or None when it is not a single token."""
        ...


MAX_SENTENCE_BYTES = 1 << 16  # SentencePiece's trainer skips longer sentences without a word


def _sentence_pieces(line: str, limit: int) -> Iterator[str]:
    """`line` cut into pieces of at most `limit` UTF-8 bytes, at a space where one is in the
    second half of a piece, else at a character boundary (a long chain of thought on one line
    would otherwise be left out of tokenizer training)."""
    data = line.encode()
    while len(data) > limit:
        cut = limit
        while data[cut] & 0xC0 == 0x80:  # a continuation byte: back to the character's start
            cut -= 1
        space = data.rfind(b" ", 0, cut)
        cut = space if space > limit // 2 else cut
        yield data[:cut].decode()
        data = data[cut:]
    if data:
        yield data.decode()


class SentencePieceTokenizer:
    """A SentencePiece model; `train` builds one whose tags are single tokens."""

    def __init__(self, model_proto: bytes):
        self.model_proto = bytes(model_proto)
        self._sp = sentencepiece.SentencePieceProcessor(model_proto=self.model_proto)
        self._continuation_sp = None  # made on first use (encode_continuation)
        self.vocab_size = int(self._sp.get_piece_size())
        bos = self._sp.bos_id()
        self.bos_id = bos if bos >= 0 else None
        self.eos_id = int(self._sp.eos_id())
        pad = self._sp.pad_id()
        # Models trained elsewhere may have no pad piece; padding is masked, so any id will do.
        self.pad_id = int(pad) if pad >= 0 else self.eos_id
        if self.eos_id < 0:
            raise ValueError("SentencePiece model has no EOS piece (eos_id < 0)")

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        model_prefix: str | pathlib.Path,
        *,
        vocab_size: int,
        model_type: str = "bpe",
        user_defined_symbols: Sequence[str] = REASONING_TAGS,
        character_coverage: float = 0.9995,
        seed: int = 0,
        num_threads: int = 1,
    ) -> "SentencePieceTokenizer":
        """Trains on `texts` and writes `{model_prefix}.model`; same corpus and seed, same bytes."""
        if model_type not in ("bpe", "unigram"):
            raise ValueError(f"model_type must be 'bpe' or 'unigram', got {model_type!r}")
        # Lines, not documents: SentencePiece treats each sentence as one unit, and a newline
        # inside one would be an unseen character (it still encodes, through byte fallback).
        sentences = (
            piece
            for t in texts
            for line in t.split("\n")
            if line.strip()
            for piece in _sentence_pieces(line, MAX_SENTENCE_BYTES)
        )
        first = next(sentences, None)
        if first is None:  # SentencePiece said only "INTERNAL: ... [!sentences_.empty()]"
            raise TokenizerError("no text to train on: every text is empty or blank")
        writer = io.BytesIO()
        sentencepiece.set_random_generator_seed(seed)
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=itertools.chain([first], sentences),
            model_writer=writer,
            vocab_size=vocab_size,
            model_type=model_type,
            user_defined_symbols=list(user_defined_symbols),
            byte_fallback=True,
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            character_coverage=character_coverage,
            # Exact round trips: no NFKC, keep spaces, and no dummy prefix so that
            # encode(a) + encode(b) decodes to a + b (prompt and response are encoded apart).
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            allow_whitespace_only_pieces=True,
            split_digits=True,
            hard_vocab_limit=False,
            max_sentence_length=MAX_SENTENCE_BYTES,
            num_threads=num_threads,
            minloglevel=2,
        )
        tok = cls(writer.getvalue())
        tok.save(pathlib.Path(f"{model_prefix}.model"))
        return tok

    @classmethod
    def load(cls, path: str | pathlib.Path) -> "SentencePieceTokenizer":
        """Reads a `.model` file."""
        path = pathlib.Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"SentencePiece model not found: {path}")
        try:
            return cls(path.read_bytes())
        except (RuntimeError, ValueError) as e:  # sentencepiece raises RuntimeError on junk
            raise TokenizerError(f"{path}: not a usable SentencePiece model ({e})") from None

    def save(self, path: str | pathlib.Path) -> None:
        """Writes the serialized model (a `.model` file)."""
        files.write_atomic(path, self.model_proto)  # a resumed run reuses the one it trained

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, with no BOS or EOS added."""
        return list(self._sp.encode(text, out_type=int))

    def encode_continuation(self, text: str) -> list[int]:
        """Token ids of `text` where it follows other text (an SFT response after its prompt):
        without the dummy prefix of models that keep their whitespace (Llama-2 / Mistral
        style), which would put a '\u2581' no whole-text encoding has at the start of every
        response. Models that also remove extra whitespace (SentencePiece's defaults) encode
        as `encode`: the response's leading space is dropped there and the prefix puts it
        back, as in the whole text."""
        if self._continuation_sp is None:
            from sentencepiece import sentencepiece_model_pb2  # needs protobuf (grain's)

            proto = sentencepiece_model_pb2.ModelProto()
            proto.ParseFromString(self.model_proto)
            self._continuation_sp = self._sp
            spec = proto.normalizer_spec
            if spec.add_dummy_prefix and not spec.remove_extra_whitespaces:
                spec.add_dummy_prefix = False
                self._continuation_sp = sentencepiece.SentencePieceProcessor(
                    model_proto=proto.SerializeToString()
                )
        return list(self._continuation_sp.encode(text, out_type=int))

    def to_hf_json(self) -> str:
        """This model as a Hugging Face tokenizer.json giving the same ids (BOS first, as r1jax
        encodes every text) and the same text back: for transformers, vLLM and any reader of
        tokenizer.json. BPE merges are ranked by the merged piece's score, as SentencePiece
        merges; unigram keeps its scores; user-defined pieces (<think>, ...) stay whole."""
        from sentencepiece import sentencepiece_model_pb2  # needs protobuf (grain's dependency)

        proto = sentencepiece_model_pb2.ModelProto()
        proto.ParseFromString(self.model_proto)
        if proto.normalizer_spec.add_dummy_prefix:
            # Models trained elsewhere (Llama-2 style): tokenizers' normalizers run on each
            # stretch between added tokens, so a prepended '\u2581' would follow every <think>.
            raise TokenizerError(
                "a SentencePiece model with a dummy prefix is not converted to tokenizer.json "
                "(its ids would differ after added tokens); keep its tokenizer.model"
            )
        pieces = list(proto.pieces)
        normal, unknown, control, user = 1, 2, 3, 4  # ModelProto.SentencePiece.Type
        vocab = {p.piece: i for i, p in enumerate(pieces)}
        unk = next(i for i, p in enumerate(pieces) if p.type == unknown)
        if proto.trainer_spec.model_type == proto.trainer_spec.BPE:
            merges = []
            for i, p in enumerate(pieces):
                if p.type != normal:
                    continue
                halves = [(p.piece[:k], p.piece[k:]) for k in range(1, len(p.piece))]
                local = sorted(
                    (h for h in halves if h[0] in vocab and h[1] in vocab),
                    key=lambda h: (vocab[h[0]], vocab[h[1]]),
                )
                merges += [(-p.score, i, left, right) for left, right in local]
            model = tokenizers.models.BPE(
                vocab=vocab,
                merges=[(left, right) for *_, left, right in sorted(merges)],
                unk_token=pieces[unk].piece,
                fuse_unk=True,
                byte_fallback=True,
            )
        else:
            scores = [(p.piece, p.score) for p in pieces]
            model = tokenizers.models.Unigram(scores, unk_id=unk, byte_fallback=True)
        tok = tokenizers.Tokenizer(model)
        normalize = [tokenizers.normalizers.Replace(" ", "\u2581")]
        decode = [
            tokenizers.decoders.Replace("\u2581", " "),
            tokenizers.decoders.ByteFallback(),
            tokenizers.decoders.Fuse(),
        ]
        tok.normalizer = tokenizers.normalizers.Sequence(normalize)
        tok.decoder = tokenizers.decoders.Sequence(decode)
        specials = [p.piece for p in pieces if p.type in (control, unknown)]
        tok.add_special_tokens(
            [tokenizers.AddedToken(t, special=True, normalized=False) for t in specials]
        )
        users = [p.piece for p in pieces if p.type == user]
        tok.add_tokens([tokenizers.AddedToken(t, special=False, normalized=False) for t in users])
        if self.bos_id is not None:
            bos = pieces[self.bos_id].piece
            tok.post_processor = tokenizers.processors.TemplateProcessing(
                single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, self.bos_id)]
            )
        return tok.to_str()

    def special_tokens(self) -> dict:
        """eos/bos/pad/unk as tokenizer_config.json entries."""
        piece = lambda i: None if i is None or i < 0 else self._sp.id_to_piece(i)  # noqa: E731
        return {
            "eos_token": piece(self.eos_id),
            "bos_token": piece(self.bos_id),
            "pad_token": piece(self.pad_id),
            "unk_token": piece(self._sp.unk_id()),
        }

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`, pad dropped; control pieces (BOS, EOS) decode to nothing, and so do ids
        past the vocabulary (a model's embedding may have more rows than the tokenizer has
        pieces, `check_fits`; SentencePiece raised on them, the HF decoder drops them)."""
        n = self.vocab_size
        return self._sp.decode([int(i) for i in ids if int(i) != self.pad_id and 0 <= int(i) < n])

    def token_to_id(self, piece: str) -> int | None:
        """The id of `piece`, or None when the model has no such piece."""
        idx = self._sp.piece_to_id(piece)
        return None if idx == self._sp.unk_id() and piece != self._sp.id_to_piece(idx) else idx

    def token_bytes(self) -> list[bytes]:
        """The bytes each id adds to `decode`'s text (see `token_bytes`): a byte piece its byte,
        a control piece or pad nothing, the unknown piece SentencePiece's surface, any other its
        text with the meta symbol as a space."""
        sp, out = self._sp, []
        for i in range(self.vocab_size):
            piece = sp.id_to_piece(i)
            if i == self.pad_id or sp.is_control(i) or sp.is_unused(i):
                out.append(b"")
            elif sp.is_byte(i):  # "<0x0A>"
                out.append(bytes([int(piece[3:5], 16)]))
            elif sp.is_unknown(i):
                out.append(sp.decode([i]).encode("utf-8"))  # " \u2047 " by default
            else:
                out.append(piece.replace(_META, " ").encode("utf-8"))
        return out


def check_fits(tokenizer: Tokenizer, vocab_size: int) -> None:
    """Raises TokenizerError (a ValueError) when the tokenizer has ids the model has no embedding
    row for: the embedding lookup and the loss would silently clamp them to the last row."""
    if tokenizer.vocab_size > vocab_size:
        raise TokenizerError(
            f"the tokenizer has {tokenizer.vocab_size} ids but the model's vocab_size is "
            f"{vocab_size}: use the model's own tokenizer, or a config.model.vocab_size of at "
            f"least {tokenizer.vocab_size}"
        )


def _special_content(value) -> str | None:
    """A tokenizer_config.json special token: a string, an AddedToken dict, or null."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _first_id(value) -> int | None:
    if isinstance(value, list):
        return int(value[0]) if value else None
    return int(value) if isinstance(value, int) else None


def _read_json(path: pathlib.Path) -> dict:
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(value, dict):
        raise TokenizerError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value


def _without_prefix_space(spec, changed: list):
    """A tokenizer.json section (normalizer / pre-tokenizer) with what puts a space before a
    text removed: Prepend normalizers, Metaspace's prepend scheme, ByteLevel's
    add_prefix_space. `changed` gets an entry per removal."""
    if not isinstance(spec, dict):
        return spec
    kind = spec.get("type")
    if kind == "Prepend":
        changed.append(kind)
        return None
    if kind == "Sequence":
        key = "normalizers" if "normalizers" in spec else "pretokenizers"
        parts = [_without_prefix_space(s, changed) for s in spec.get(key) or []]
        return {**spec, key: [s for s in parts if s is not None]}
    if kind == "Metaspace" and spec.get("prepend_scheme", "always") != "never":
        changed.append(kind)
        return {**spec, "prepend_scheme": "never", "add_prefix_space": False}
    if kind == "ByteLevel" and spec.get("add_prefix_space"):
        changed.append(kind)
        return {**spec, "add_prefix_space": False}
    return spec


_COMMON_EOS = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|im_end|>")


class HFTokenizer:
    """A Hugging Face `tokenizer.json`, with eos/bos/pad from the files beside it
    (special_tokens_map.json, tokenizer_config.json, generation_config.json, config.json)."""

    def __init__(self, path: str | pathlib.Path):
        path = pathlib.Path(path)
        folder = path if path.is_dir() else path.parent
        file = folder / "tokenizer.json" if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"no tokenizer.json at {file}")
        try:
            self._tok = tokenizers.Tokenizer.from_file(str(file))
        except Exception as e:  # tokenizers raises a bare Exception on a malformed file
            raise TokenizerError(f"{file}: not a readable tokenizer.json ({e})") from None
        self._continuation = None  # made on first use (encode_continuation)
        self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
        # Control tokens (special added tokens): their text in a data string encodes as them.
        # The R1 tags are the recipe's own (its templates name them; a tokenizer may hold them).
        r1_tags = (THINK_OPEN, THINK_CLOSE, ANSWER_OPEN, ANSWER_CLOSE)
        self._special = {
            i: t.content
            for i, t in self._tok.get_added_tokens_decoder().items()
            if t.special and t.content not in r1_tags
        }
        self._warned_special = False
        tok_cfg = _read_json(folder / "tokenizer_config.json")
        # Older folders name their special tokens in special_tokens_map.json, which wins over
        # tokenizer_config.json in transformers' loading too.
        special_map = _read_json(folder / "special_tokens_map.json")
        for key in ("eos_token", "bos_token", "pad_token"):
            if key in special_map:
                tok_cfg[key] = special_map[key]
        gen_cfg = _read_json(folder / "generation_config.json")
        model_cfg = _read_json(folder / "config.json")
        named = _special_content(tok_cfg.get("eos_token"))
        eos = self._id_of(named)
        if named and eos is None:  # the files disagree: guessing another EOS would go unnoticed
            raise TokenizerError(
                f"{file}: eos_token {named!r} of tokenizer_config.json is not in its vocabulary"
            )
        for candidate in (gen_cfg.get("eos_token_id"), model_cfg.get("eos_token_id")):
            eos = eos if eos is not None else _first_id(candidate)
        for piece in _COMMON_EOS:
            eos = eos if eos is not None else self._tok.token_to_id(piece)
        if eos is None:
            raise TokenizerError(
                f"{file}: cannot find the EOS token (set eos_token in tokenizer_config.json)"
            )
        self.eos_id = int(eos)
        # Every id generation stops on: EOS and generation_config.json's others (Llama-3.1 and
        # Qwen2.5 instruct models end turns with one token and text with another).
        # Without a generation_config.json, config.json's list (what transformers derives its
        # generation config from).
        extra = gen_cfg.get("eos_token_id", model_cfg.get("eos_token_id"))
        extra = extra if isinstance(extra, list) else [extra]
        self.stop_ids = tuple(
            dict.fromkeys([self.eos_id] + [int(i) for i in extra if isinstance(i, int)])
        )
        bos = self._id_of(_special_content(tok_cfg.get("bos_token")))
        if bos is None and "bos_token" not in tok_cfg:
            bos = _first_id(gen_cfg.get("bos_token_id", model_cfg.get("bos_token_id")))
        # What goes before a text is what this tokenizer.json's post-processor adds, as in
        # transformers' tokenizer(text): Llama-3's <|begin_of_text|>, nothing for Qwen2 or for
        # SmolLM2, whose bos_token <|im_start|> names a token it never adds by itself.
        self.prefix_ids = self._added_prefix()
        if bos is None and self.prefix_ids:
            bos = self.prefix_ids[0]
        self.bos_id = bos
        pad = self._id_of(_special_content(tok_cfg.get("pad_token")))
        # Without a pad token, pad with EOS (what Qwen and Llama recipes do); padding is masked.
        self.pad_id = int(pad) if pad is not None else self.eos_id
        for name, value in [(n, getattr(self, n)) for n in ("eos_id", "bos_id", "pad_id")] + [
            ("a stop id", i) for i in self.stop_ids
        ]:
            if value is not None and not 0 <= value < self.vocab_size:
                raise TokenizerError(
                    f"{folder}: {name} {value} (from its config files) is not an id of the "
                    f"{self.vocab_size}-token vocabulary of {file.name}"
                )

    def _id_of(self, piece: str | None) -> int | None:
        return None if piece is None else self._tok.token_to_id(piece)

    def _added_prefix(self) -> tuple[int, ...]:
        """The ids the post-processor puts before a text (add_special_tokens=True)."""
        for probe in ("Hello", "a", "0"):
            plain = self._tok.encode(probe, add_special_tokens=False).ids
            if not plain:
                continue
            full = self._tok.encode(probe, add_special_tokens=True).ids
            for k in range(len(full) - len(plain) + 1):
                if full[k : k + len(plain)] == plain:
                    return tuple(int(i) for i in full[:k])
        return ()

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, with no BOS or EOS added. The text of a control token
        (<|im_end|>) in it is that token, as in transformers' tokenizer(text): a warning the
        first time (r1jax's templates hold none but the R1 tags, so it came from the data)."""
        return self._noted(list(self._tok.encode(text, add_special_tokens=False).ids))

    def _noted(self, ids: list[int]) -> list[int]:
        if not self._warned_special and self._special:
            found = sorted({self._special[i] for i in ids if i in self._special})
            if found:
                self._warned_special = True
                logging.warning(
                    "a text to encode holds the text of control token(s) %s, which encodes as "
                    "the token itself (an EOS inside a response ends it there): right for data "
                    "written in the model's chat format (template 'none'), else clean the data",
                    ", ".join(found),
                )
        return ids

    def encode_continuation(self, text: str) -> list[int]:
        """Token ids of `text` where it follows other text (an SFT response after its prompt):
        without the space a Llama-2-style tokenizer.json puts before every text (a Prepend
        normalizer, Metaspace's prepend scheme, ByteLevel's add_prefix_space)."""
        if self._continuation is None:
            spec = json.loads(self._tok.to_str())
            changed: list = []
            for section in ("normalizer", "pre_tokenizer"):
                spec[section] = _without_prefix_space(spec.get(section), changed)
            self._continuation = (
                tokenizers.Tokenizer.from_str(json.dumps(spec)) if changed else self._tok
            )
        return self._noted(list(self._continuation.encode(text, add_special_tokens=False).ids))

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; pad is dropped unless it doubles as EOS."""
        keep = [int(i) for i in ids if int(i) != self.pad_id or self.pad_id == self.eos_id]
        return self._tok.decode(keep, skip_special_tokens=False)

    def token_to_id(self, piece: str) -> int | None:
        """The id of `piece`, or None when it is not in the vocabulary."""
        return self._tok.token_to_id(piece)

    def token_bytes(self) -> list[bytes] | None:
        """The bytes each id adds to `decode`'s text (see `token_bytes`), for the decoders whose
        tokens map to bytes one by one: byte-level BPE (GPT-2's byte alphabet; Qwen, Llama 3)
        and the SentencePiece style (the meta symbol a space, <0xNN> pieces a byte; Llama 2,
        Mistral). None for any other decoder. Added tokens go through the decoder as the others
        do (as in `tokenizers`: a token with a character outside the byte alphabet is its own
        UTF-8)."""
        spec = json.loads(self._tok.to_str())
        decoder = spec.get("decoder") or {}
        parts = decoder.get("decoders") if decoder.get("type") == "Sequence" else [decoder]
        kinds = {d.get("type") for d in parts or []}
        # The character that stands for a space: Metaspace's replacement, or what a Replace
        # decoder turns into " " (Llama 2's "\u2581").
        meta = next(
            (
                d.get("replacement") if d.get("type") == "Metaspace" else d["pattern"]["String"]
                for d in parts or []
                if d.get("type") == "Metaspace"
                or (
                    d.get("type") == "Replace"
                    and d.get("content") == " "
                    and isinstance(d.get("pattern"), dict)
                    and isinstance(d["pattern"].get("String"), str)
                )
            ),
            None,
        )
        if kinds == {"ByteLevel"}:
            to_byte = _unicode_to_byte()

            def piece_bytes(piece: str) -> bytes:
                if all(c in to_byte for c in piece):
                    return bytes(to_byte[c] for c in piece)
                return piece.encode("utf-8")
        elif meta is not None and kinds <= {
            "Metaspace",
            "Replace",
            "ByteFallback",
            "Fuse",
            "Strip",
        }:
            byte_fallback = "ByteFallback" in kinds

            def piece_bytes(piece: str) -> bytes:
                if (
                    byte_fallback
                    and len(piece) == 6
                    and piece.startswith("<0x")
                    and piece[-1] == ">"
                ):
                    return bytes([int(piece[3:5], 16)])
                return piece.replace(meta, " ").encode("utf-8")
        else:
            return None
        drop = () if self.pad_id == self.eos_id else (self.pad_id,)
        out = []
        for i in range(self.vocab_size):
            piece = self._tok.id_to_token(i)
            out.append(b"" if i in drop or piece is None else piece_bytes(piece))
        return out

    def special_tokens(self) -> dict:
        """eos/bos/pad as tokenizer_config.json entries naming the tokens this tokenizer
        resolved (from whichever config file gave them): a tokenizer.json beside a
        tokenizer_config.json holding them loads with the same ids."""
        piece = lambda i: None if i is None else self._tok.id_to_token(i)  # noqa: E731
        return {
            "eos_token": piece(self.eos_id),
            "bos_token": piece(self.bos_id),
            "pad_token": piece(self.pad_id),
        }


def encode_continuation(tokenizer, text: str) -> list[int]:
    """Token ids of `text` where it follows other text (a response after its prompt, encoded
    apart): `tokenizer.encode_continuation` where the tokenizer has one, else `encode`. Equal to
    `encode` for tokenizers without a dummy prefix (byte-level BPE, models trained here)."""
    method = getattr(tokenizer, "encode_continuation", None)
    return method(text) if method is not None else tokenizer.encode(text)


def bos_ids(tokenizer) -> list[int]:
    """The ids every text starts with: an HF tokenizer's `prefix_ids` (what its post-processor
    adds), else [bos_id] when the tokenizer has a BOS (SentencePiece models), else []."""
    prefix = getattr(tokenizer, "prefix_ids", None)
    if prefix is not None:
        return list(prefix)
    return [] if tokenizer.bos_id is None else [tokenizer.bos_id]


def without_bos(tokenizer, ids: list[int]) -> list[int]:
    """`ids` less the `bos_ids` they start with, for the encoders that put `bos_ids` first: a
    text that writes the BOS token itself (data in a chat format whose template opens with
    bos_token, as Llama 3's) would start with it twice, where apply_chat_template has it once."""
    prefix = bos_ids(tokenizer)
    return ids[len(prefix) :] if prefix and ids[: len(prefix)] == prefix else ids


def prompt_ids(tokenizer, template: str, prompt: str) -> list[int]:
    """Token ids of `prompt` in `template`, without a BOS it writes itself (`without_bos`): what
    SFT, RL and the reward model put after `bos_ids`."""
    return without_bos(tokenizer, tokenizer.encode(apply_template(template, prompt)))


def with_eos(tokenizer, ids: list[int]) -> list[int]:
    """`ids` ending in EOS, appended unless they end with it already: a response in the model's
    chat format that writes its end-of-turn token (the EOS) would end with it twice, where
    apply_chat_template has it once."""
    return ids if ids[-1:] == [tokenizer.eos_id] else [*ids, tokenizer.eos_id]


_META = "\u2581"  # SentencePiece's meta symbol for a space


def _unicode_to_byte() -> dict[str, int]:
    """Byte-level BPE's alphabet (GPT-2's bytes_to_unicode), character -> byte."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    others = [b for b in range(256) if b not in printable]
    chars = [*printable, *(256 + k for k in range(len(others)))]
    return {chr(c): b for b, c in zip(printable + others, chars, strict=True)}


def token_bytes(tokenizer) -> list[bytes] | None:
    """Per token id, the bytes it adds to a decoded text (the sampler's stop strings compare
    them), or None where that cannot be told for this tokenizer. Joined, a completion's ids
    give the UTF-8 of its `decode`, except that a SentencePiece-style decode drops the first
    token's leading space, and that where the bytes are not valid UTF-8 decoders differ: a
    byte-fallback tokenizer.json turns a whole run of <0xNN> tokens that is not valid UTF-8
    into U+FFFD characters, ASCII bytes in it included (so a stop string among them ends a
    sample whose text does not show it; a trained model rarely writes such runs)."""
    method = getattr(tokenizer, "token_bytes", None)
    return method() if method is not None else None


def stop_ids(tokenizer) -> tuple[int, ...]:
    """The ids that end a generation: the tokenizer's EOS and any others its configuration names
    (an HF generation_config.json's eos_token_id list)."""
    return tuple(getattr(tokenizer, "stop_ids", None) or (tokenizer.eos_id,))


def load_tokenizer(path: str | pathlib.Path) -> Tokenizer:
    """A `.model` file (SentencePiece), or a tokenizer.json / a folder holding one (HF)."""
    path = pathlib.Path(path)
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            return HFTokenizer(path)
        if (path / "tokenizer.model").is_file():
            return SentencePieceTokenizer.load(path / "tokenizer.model")
        raise FileNotFoundError(f"{path}: folder has neither tokenizer.json nor tokenizer.model")
    if path.suffix == ".model":
        return SentencePieceTokenizer.load(path)
    if path.suffix == ".json":
        return HFTokenizer(path)
    if not path.exists():
        raise FileNotFoundError(f"tokenizer not found: {path}")
    raise TokenizerError(
        f"{path}: not a tokenizer (expected a .model file, tokenizer.json or a folder)"
    )


# ---- templates -------------------------------------------------------------------------------

R1_ZERO_TEMPLATE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant "
    "solves it. The assistant first thinks about the reasoning process in the mind and then "
    "provides the user with the answer. The reasoning process and answer are enclosed within "
    "<think> </think> and <answer> </answer> tags, respectively, i.e., <think> reasoning "
    "process here </think> <answer> answer here </answer>. User: {prompt}. Assistant:"
)

# The same structure (User/Assistant, think then answer tags) in 20 words for the built-in small
# world (r1jax.data.world): the paper's wording is ~190 tokens of a 512-piece vocabulary, more
# than the 128-token context a tiny CPU model affords.
WORLD_TEMPLATE = (
    "A conversation between User and Assistant. The Assistant thinks in <think> </think> and "
    "answers in <answer> </answer>. User: {prompt} Assistant:"
)

# A new template: its name here (configlib validates against this tuple), its text in
# apply_template, and in response_text how its completions begin (the others end in
# "Assistant:", so a response starts with a space); hf_chat_template follows apply_template.
TEMPLATES = ("chat", "r1_zero", "world", "none")


def r1_zero_prompt(question: str) -> str:
    """The DeepSeek-R1-Zero prompt (paper, Table 1) around `question`."""
    return R1_ZERO_TEMPLATE.format(prompt=question.strip())


def chat_prompt(question: str, *, system: str | None = None) -> str:
    """Plain chat prompt: optional 'System: …' line, 'User: …', then 'Assistant:' (no space)."""
    head = f"System: {system.strip()}\n" if system else ""
    return f"{head}User: {question.strip()}\nAssistant:"


def apply_template(template: str, question: str, *, system: str | None = None) -> str:
    """The prompt text for a template name in TEMPLATES ('none' leaves the question as is)."""
    if template == "chat":
        return chat_prompt(question, system=system)
    if template == "r1_zero":
        return r1_zero_prompt(question)
    if template == "world":
        return WORLD_TEMPLATE.format(prompt=question.strip())
    if template == "none":
        return question
    raise ValueError(f"unknown template {template!r}; expected one of {TEMPLATES}")


def response_text(template: str, response: str) -> str:
    """The completion as trained: a space after 'Assistant:' templates, raw for 'none'."""
    return response if template == "none" else " " + response.strip()


def chat_example(
    question: str, response: str, *, system: str | None = None, template: str = "chat"
) -> str:
    """A whole SFT example as one string: the templated prompt followed by the response."""
    return apply_template(template, question, system=system) + response_text(template, response)


def hf_chat_template(template: str, *, bos: bool) -> str:
    """A Jinja chat template (tokenizer_config.json's `chat_template`) that renders `template`
    as r1jax trains and samples it: [BOS] + apply_template(prompt); an assistant turn adds
    response_text(response) + EOS. So transformers' apply_chat_template(messages,
    add_generation_prompt=True) gives the prompt text r1jax's RL and evaluation sample from.

    One user turn (optionally answered) for r1_zero / world / none; 'chat' also takes a system
    message and further turns (not trained: joined by a newline)."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; expected one of {TEMPLATES}")

    def say(literal: str) -> str:  # Jinja output of a string literal
        return "{{ " + json.dumps(literal, ensure_ascii=False) + " }}"

    def fail(message: str) -> str:
        return "{{ raise_exception(" + json.dumps(message) + ") }}"

    q, mark = "\x00Q\x00", "\x00S\x00"
    before, after = apply_template(template, q).split(q)  # after: the generation prompt
    resp_before, resp_after = response_text(template, q).split(q)
    content = "{{ m['content'] }}" if template == "none" else "{{ m['content'] | trim }}"
    if template == "chat":
        head = apply_template(template, q, system=mark).split(before + q)[0]
        sys_before, sys_after = head.split(mark)
        system = say(sys_before) + "{{ messages[0]['content'] | trim }}" + say(sys_after)
        next_turn = "{%- if loop.index0 > 0 -%}" + say("\n") + "{%- endif -%}"
        limit = ""
    else:
        system = fail(f"the {template} template has no system message")
        next_turn = ""
        limit = (
            "{%- if turns | length > 2 -%}"
            + fail(f"the {template} template takes one user turn")
            + "{%- endif -%}"
        )
    has_system = "messages and messages[0]['role'] == 'system'"
    return "".join(
        [
            f"{{%- if {has_system} -%}}{{%- set turns = messages[1:] -%}}",
            "{%- else -%}{%- set turns = messages -%}{%- endif -%}",
            limit,
            "{{ bos_token }}" if bos else "",
            f"{{%- if {has_system} and messages[0]['content'] -%}}{system}{{%- endif -%}}",
            "{%- for m in turns -%}",
            "{%- if m['role'] == 'user' and loop.index0 % 2 == 0 -%}",
            next_turn + say(before) + content,
            "{%- elif m['role'] == 'assistant' and loop.index0 % 2 == 1 -%}",
            say(after + resp_before) + content + say(resp_after) + "{{ eos_token }}",
            "{%- else -%}",
            fail("turns must alternate user and assistant, starting with user"),
            "{%- endif -%}",
            "{%- endfor -%}",
            "{%- if add_generation_prompt -%}" + say(after) + "{%- endif -%}",
        ]
    )


def format_reasoning(think: str, answer: str) -> str:
    """'<think>…</think> <answer>…</answer>', the R1 response format."""
    return f"{THINK_OPEN}{think.strip()}{THINK_CLOSE} {ANSWER_OPEN}{answer.strip()}{ANSWER_CLOSE}"


def first_tagged(text: str, open_tag: str, close_tag: str) -> str | None:
    """Content of the first `open_tag…close_tag` pair (re.search of open(.*?)close), in linear
    time: that regex rescans to the end from every unclosed opening tag."""
    start = text.find(open_tag)
    if start < 0:
        return None
    # No close after the first open means none after any later open either.
    end = text.find(close_tag, start + len(open_tag))
    return text[start + len(open_tag) : end] if end >= 0 else None


def last_tagged(
    text: str, open_tag: str = ANSWER_OPEN, close_tag: str = ANSWER_CLOSE
) -> str | None:
    """Content of the last `open_tag…close_tag` pair: the last match `re.findall` would give for
    open(.*?)close, in linear time (that regex is quadratic on many unclosed opening tags)."""
    found, pos = None, 0
    while True:
        start = text.find(open_tag, pos)
        end = text.find(close_tag, start + len(open_tag)) if start >= 0 else -1
        if end < 0:
            return found
        found, pos = text[start + len(open_tag) : end], end + len(close_tag)


def split_reasoning(text: str) -> tuple[str | None, str | None]:
    """(first closed think block, last closed answer block), stripped; None where absent."""
    think = first_tagged(text, THINK_OPEN, THINK_CLOSE)
    answer = last_tagged(text, ANSWER_OPEN, ANSWER_CLOSE)
    return (
        think.strip() if think is not None else None,
        answer.strip() if answer is not None else None,
    )
