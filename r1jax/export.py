"""Exports an r1jax run's params to a Hugging Face folder (config.json, safetensors, tokenizer).

  python -m r1jax.export RUN_DIR OUT_DIR [--step N]

The folder loads in `transformers` (Qwen2/Qwen3/Llama) and back in r1jax
(`--config.model.init_from`). RL runs export their policy. The run's tokenizer
(tokenizer.model, or the HF tokenizer.json and its config files) is copied beside the weights,
with a chat_template that renders the prompt template the run trained with
(`text.hf_chat_template`), and a generation_config.json naming its stop ids where the run kept
none.

A SentencePiece model trained here exports as a tokenizer.json with the same ids for any text
but the literal names of its control pieces: "<s>", "</s>", "<pad>", "<unk>" typed in a text read
as those ids there (as in every Hugging Face tokenizer), where the run encoded them as plain
characters.
"""

import argparse
import json
import pathlib
import sys

import jax
from absl import logging

from r1jax import configlib, files, text
from r1jax.model import config as model_config
from r1jax.model import hf_io, transformer
from r1jax.train import checkpoint


def run_model_config(run_dir: pathlib.Path) -> model_config.ModelConfig:
    """The resolved model config an r1jax run saved in its config.json."""
    return configlib.load_resolved(run_dir, language_model=True)[0]


def export(run_dir, out_dir, *, step: int | None = None) -> pathlib.Path:
    """Writes the run's params (latest or `step`) and tokenizer to OUT_DIR; returns it."""
    run_dir, out_dir = pathlib.Path(run_dir), pathlib.Path(out_dir)
    if configlib.is_run_dir(out_dir):
        # The export's config.json would replace the run's own (and a tokenizer.json beside a
        # tokenizer.model would change the run's tokenizer): the run could not resume or export.
        raise ValueError(
            f"{out_dir}: OUT_DIR holds an r1jax run (its config.json), which the export would "
            "overwrite; give another folder"
        )
    cfg = run_model_config(run_dir)
    abstract = jax.eval_shape(lambda k: transformer.init_params(cfg, k), jax.random.key(0))
    params = checkpoint.restore_params(run_dir, abstract, step=step)
    # The run's tokenizer first (its SentencePiece model, or the HF tokenizer files it kept),
    # then the model, whose config.json save_hf writes last: an export cut short has none.
    (out_dir / "config.json").unlink(missing_ok=True)
    for name in (
        "tokenizer.model",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
        "generation_config.json",
    ):
        if (run_dir / name).exists():
            files.write_atomic(out_dir / name, (run_dir / name).read_bytes())
        else:  # an earlier export's file here would be read with this run's
            (out_dir / name).unlink(missing_ok=True)
    if (run_dir / "tokenizer.model").exists() and not (run_dir / "tokenizer.json").exists():
        # A SentencePiece model trained here: transformers' AutoTokenizer would convert it with
        # a dummy prefix (other ids); a tokenizer.json gives the run's own ids, BOS included.
        sp = text.SentencePieceTokenizer.load(run_dir / "tokenizer.model")
        try:
            files.write_atomic(out_dir / "tokenizer.json", sp.to_hf_json())
        except text.TokenizerError as e:
            logging.warning("export: only tokenizer.model written: %s", e)
        else:
            config = {"tokenizer_class": "PreTrainedTokenizerFast", **sp.special_tokens()}
            files.write_json(out_dir / "tokenizer_config.json", config, sort_keys=False)
    # transformers reads a chat_template.jinja (an earlier tokenizer.save_pretrained here)
    # before tokenizer_config.json's: another run's template, also where this run has none.
    (out_dir / "chat_template.jinja").unlink(missing_ok=True)
    _write_chat_template(out_dir, configlib.trained_template(configlib.load_resolved(run_dir)[1]))
    _write_generation_config(out_dir)
    hf_io.save_hf(out_dir, cfg, params)
    return out_dir


def _write_generation_config(out_dir: pathlib.Path) -> None:
    """A generation_config.json naming the tokenizer's BOS, stop ids and pad, where the run kept
    none (a SentencePiece model trained here): without it transformers' generate() never
    stops at EOS."""
    path = out_dir / "generation_config.json"
    if path.exists():
        return
    tokenizer = text.load_tokenizer(out_dir)
    stops = list(text.stop_ids(tokenizer))
    config = {"eos_token_id": stops[0] if len(stops) == 1 else stops}
    if tokenizer.bos_id is not None:
        config["bos_token_id"] = int(tokenizer.bos_id)
    config["pad_token_id"] = int(tokenizer.pad_id)
    files.write_json(path, config, sort_keys=False)


def _write_chat_template(out_dir: pathlib.Path, template: str | None) -> None:
    """Sets tokenizer_config.json's chat_template to the run's own template, so that
    apply_chat_template prompts the model as it was trained (a base model's tokenizer carries
    its own template, e.g. '<|im_start|>user', which this model never saw)."""
    if template is None or not (out_dir / "tokenizer.json").exists():
        return
    tokenizer = text.load_tokenizer(out_dir)
    prefix = text.bos_ids(tokenizer)
    if prefix not in ([], [tokenizer.bos_id]):
        logging.warning("export: no chat_template written (texts start with ids %s)", prefix)
        return
    path = out_dir / "tokenizer_config.json"
    config = json.loads(path.read_text()) if path.exists() else {}
    if config.get("chat_template"):
        logging.info("export: the tokenizer's chat_template replaced by the run's %r", template)
    config["chat_template"] = text.hf_chat_template(template, bos=bool(prefix))
    files.write_json(path, config, sort_keys=False)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--step", type=int, default=None, help="checkpoint step (default latest)")
    args = parser.parse_args(argv)
    try:
        print(export(args.run_dir, args.out_dir, step=args.step))
    except (FileNotFoundError, NotADirectoryError, ValueError) as e:  # a wrong folder or step
        # (NotADirectoryError: OUT_DIR is a file, or under one): one line, no trace
        sys.exit(f"r1jax.export: {e}")
    except Exception as e:  # OSError, or safetensors' own error for the same full disk
        if not checkpoint.is_out_of_space(e):
            raise
        # Each file is written whole or not at all (a temporary file, then a rename).
        sys.exit(
            f"r1jax.export: no space left on the device writing {args.out_dir} ({e}): free "
            "space there and run it again"
        )


if __name__ == "__main__":
    main()
