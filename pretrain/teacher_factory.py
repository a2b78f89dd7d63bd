"""Pick a synthesis teacher by name (DESIGN §4).

    teacher = make_teacher("world")                      # exact, from structured facts
    teacher = make_teacher("cloze")                      # any text: cloze QA, reconstruction, continuation
    teacher = make_teacher("hf", model="out/backbones/smollm2")
    teacher = make_teacher("openai", base_url="http://127.0.0.1:8000/v1", model="qwen")

The factory sits above every teacher module (the interface in :mod:`clara.pretrain.teachers`,
the prompting ones in :mod:`clara.pretrain.prompt_teachers` and
:mod:`clara.pretrain.openai_teacher`), so none of them imports it back.
"""

from __future__ import annotations

from clara.errors import ConfigError
from clara.pretrain.teachers import Teacher, WorldTeacher

TEACHERS = ("world", "cloze", "hf", "openai")


def make_teacher(kind: str, **options) -> Teacher:
    """A teacher by name; options are those of the teacher's constructor."""
    if kind == "world":
        return WorldTeacher(**options)
    if kind == "cloze":
        from clara.pretrain.text_teachers import ClozeTeacher

        return ClozeTeacher(**options)
    if kind == "hf":
        from clara.pretrain.prompt_teachers import HFTeacher

        return HFTeacher(**options)
    if kind == "openai":
        from clara.pretrain.openai_teacher import OpenAITeacher

        return OpenAITeacher(**options)
    raise ConfigError(f"--teacher {kind}: unknown; use one of {', '.join(TEACHERS)}")
