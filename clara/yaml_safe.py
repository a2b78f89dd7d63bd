"""Reading YAML that a user hands us (presets, overrides): plain data, bounded work, one-line errors.

YAML aliases are refused: a few hundred bytes of nested aliases (a "billion laughs") expand to
gigabytes when the loaded data is walked, and no preset needs them. YAML 1.1 reads ``3e-4`` (no dot)
as a string; such scalars become floats.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from clara.errors import ConfigError

_SCI_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


class _NoAliasLoader(yaml.SafeLoader):
    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise ConfigError(f"line {mark.line + 1}: YAML aliases (*name) are not accepted in a config; "
                              "write the value out")
        return super().compose_node(parent, index)


def _sci_floats(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _sci_floats(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_sci_floats(v) for v in obj]
    if isinstance(obj, str) and _SCI_FLOAT.match(obj):
        return float(obj)
    return obj


def yaml_text(text: str, where: str) -> Any:
    """Plain data from YAML ``text``; ``where`` (a file, an override) starts each error message."""
    try:
        return _sci_floats(yaml.load(text, Loader=_NoAliasLoader))
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: invalid YAML ({e})".replace("\n", " ")) from None


def load_yaml(path: str | Path) -> dict:
    """A YAML file whose top level is a mapping (a preset)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not a text file (byte {e.start} is not UTF-8); give a YAML preset") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    if "\x00" in text:
        raise ConfigError(f"{path}: not a text file (it holds NUL bytes); give a YAML preset")
    data = yaml_text(text, str(path)) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data
