"""r1jax entry point: `r1jax --config=configs/<stage>.py:<variant> --workdir=DIR [--config.x=y]`."""

import logging as std_logging
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from r1jax import configlib
from r1jax.data import sources

_CONFIG = config_flags.DEFINE_config_file("config", None, "configs/<stage>.py:<variant>")
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: config, metrics, checkpoints.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cfg = _CONFIG.value
    logging.info("stage %s, workdir %s", cfg.stage, _WORKDIR.value)
    try:
        if cfg.stage in ("pretrain", "sft"):
            from r1jax.train import supervised

            supervised.run(cfg, _WORKDIR.value)
        elif cfg.stage == "rl":
            from r1jax.train import rl

            rl.run(cfg, _WORKDIR.value)
        else:
            raise configlib.ConfigError(
                f"config.stage: unknown stage {cfg.stage!r}; expected one of {configlib.STAGES}"
            )
    except (configlib.ConfigError, sources.DataError, FileNotFoundError) as e:
        sys.exit(f"r1jax: {e}")


class _QuietLibraries:
    """Drops the per-file INFO chatter of orbax and grain; their warnings still show."""

    def filter(self, record) -> bool:
        noisy = "/orbax/" in record.pathname or "/grain/" in record.pathname
        return not (noisy and record.levelno < std_logging.WARNING)


def run() -> None:
    """Console-script entry: lets config files import their siblings, then runs the absl app."""
    for arg in sys.argv[1:]:
        if arg.startswith("--config="):
            configlib.add_config_root_to_path(arg.split("=", 1)[1].split(":", 1)[0])
    logging.get_absl_handler().addFilter(_QuietLibraries())
    app.run(main)


if __name__ == "__main__":
    run()
