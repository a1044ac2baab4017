"""The entry scripts' command line, checked before Hydra runs: a misspelled key is one line
naming the closest known setting."""

import difflib
import re

from edmips.core.cli import PACKAGE


def check_command_line(config_name: str, argv: list[str]) -> None:
    """Refuse, in one line naming the closest known setting, a misspelled key. Hydra refuses
    `target_bit=2` itself, but with the hint `+target_bit=2`, which adds a setting that nothing
    reads: an added `+key` is refused here too, unless its node builds an object
    (`+trainer.limit_val_batches=2` reaches the Trainer, which refuses what it does not take)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException, MissingConfigException
    from omegaconf import OmegaConf

    overrides = [a for a in argv if "=" in a and not a.startswith("-")]
    added = [a for a in overrides if a.startswith("+") and not a.startswith("+hydra.")]
    with initialize_config_dir(str(PACKAGE.parent / "conf"), version_base="1.3"):
        try:
            cfg = compose(config_name, [a for a in overrides if a not in added])
        except MissingConfigException as e:  # a group's option that does not exist
            if not e.options or not e.missing_cfg_file:
                return  # Hydra's own message says what is wrong
            group, name = e.missing_cfg_file.rsplit("/", 1)
            raise SystemExit(
                f"error: {group}={name}: no such {group}; choose from {', '.join(e.options)}"
            ) from None
        except ConfigCompositionException as e:
            unknown = re.search(r"Could not override '([^']+)'", str(e))
            if unknown is None:
                return  # Hydra's own message says what is wrong
            key, cfg = unknown[1], _compose_without(compose, config_name, overrides, unknown[1])
        else:
            keys = [a.split("=", 1)[0].lstrip("+") for a in added]
            unread = [k for k in keys if not _builds_an_object(cfg, k)]
            if not unread:
                return
            key = unread[0]
    known = _keys(OmegaConf.to_container(cfg, resolve=False)) if cfg is not None else []
    close = difflib.get_close_matches(key, known, n=1)
    listed = f" (python {config_name}.py --help lists them)"
    hint = f": did you mean {close[0]}?" if close else listed
    raise SystemExit(f"error: {key} is not a setting of {config_name}.py{hint}")


def _builds_an_object(cfg, key: str) -> bool:
    """Whether `key` is added under a node that builds an object (`_target_`), which refuses
    what it does not take; anywhere else an added key is read by nothing."""
    from omegaconf import DictConfig, OmegaConf

    parent = key.rsplit(".", 1)[0] if "." in key else ""
    node = OmegaConf.select(cfg, parent) if parent else None
    return isinstance(node, DictConfig) and "_target_" in node


def _compose_without(compose, config_name: str, overrides: list[str], key: str):
    """The config without the override of `key` (None where it still does not compose)."""
    rest = [a for a in overrides if a.lstrip("+~").split("=", 1)[0] != key]
    try:
        return compose(config_name, rest)
    except Exception:
        return None


def _keys(node, prefix: str = "") -> list[str]:
    """Every key of a config, dotted (`search.warmup_epochs`)."""
    if not isinstance(node, dict):
        return []
    keys = []
    for k, v in node.items():
        keys += [f"{prefix}{k}", *_keys(v, f"{prefix}{k}.")]
    return keys
