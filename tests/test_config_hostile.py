"""Hostile or careless presets: one clear ConfigError, at once, never a hang or a traceback."""

import time

import pytest

from clara.config import load_config
from clara.errors import ConfigError

# 9 levels of 9 aliases each: 9**9 (about 387 million) leaves once expanded, from under 500 bytes
BOMB = 'a: &a ["x","x","x","x","x","x","x","x","x"]\n' + "".join(
    f"{n}: &{n} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n" for p, n in zip("abcdefgh", "bcdefghi"))


def test_an_alias_bomb_is_refused_at_once(tmp_path):
    preset = tmp_path / "bomb.yaml"
    preset.write_text(BOMB)
    assert len(BOMB) < 500
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"bomb.yaml: line 2: YAML aliases"):
        load_config(preset)
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("content, message", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", "not a text file"),
    (b"train: {lr: 1e-3\n  max_steps", "invalid YAML"),
    (b"- just\n- a list\n", "top level must be a mapping"),
    (b"train:\n  lr: 1e-3\n\x00\n", "NUL bytes"),
])
def test_garbage_presets_are_one_line_errors(tmp_path, content, message):
    preset = tmp_path / "bad.yaml"
    preset.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as e:
        load_config(preset)
    assert "\n" not in str(e.value) and "bad.yaml" in str(e.value)


def test_an_alias_in_an_override_stays_text():
    # an override value is YAML too; an alias there is not expanded (nor an error): it is the string as given
    with pytest.raises(ConfigError, match=r"train.lr': expected a number, got '\*a'"):
        load_config(None, ["train.lr=*a"])
