"""CLaRa: one causal-LM backbone, three LoRA adapters (compressor, query, generator),
retrieval and generation trained jointly in one continuous space.

The core (this folder) is grouped by concept: ``clara.model``, ``clara.data``, ``clara.world``,
``clara.training``, ``clara.serving``, ``clara.cli``. Stage recipes live in ``clara.pretrain``
(stage 1, SCP), ``clara.joint`` (stage 2) and ``clara.rl`` (stage 3, agentic RL); the kernels in
``clara.kernels``, evaluation in ``clara.eval`` and the end-to-end demo in ``clara.demo``.
The core never imports those (docs/DESIGN.md §1 gives the layers).

The folders ``pretrain/``, ``joint/``, ``rl/``, ``kernels/``, ``eval/`` and ``demo/`` sit beside ``clara/`` in
the checkout and are installed as ``clara.<stage>`` (pyproject's ``package-dir``). They have no
``__init__.py``: a top-level folder that is a regular package shadows any installed distribution
of the same import name whenever the checkout root is on ``sys.path`` (``python -m`` or
``python -m pytest`` from the root), as ``kernels/`` once shadowed Hugging Face's ``kernels``,
which transformers imports. A folder without ``__init__.py`` is only a namespace portion, and
Python prefers a regular package found later on the path. In a wheel each stage is a namespace
folder inside ``clara/``; in a checkout (an editable install, or ``python -m`` from the root)
``_CheckoutStages`` below finds it beside ``clara/``, since setuptools' editable finder does not
resolve a namespace package nested in a regular one.
"""

import sys
from importlib.machinery import ModuleSpec
from pathlib import Path

__version__ = "0.1.0"

STAGES = ("pretrain", "joint", "rl", "kernels", "eval", "demo")


def checkout_root() -> Path | None:
    """The source checkout this package was imported from, or None for an installed wheel."""
    root = Path(__file__).resolve().parent.parent
    try:
        marker = (root / "pyproject.toml").read_text(encoding="utf-8")
    except OSError:
        return None
    return root if 'name = "clara-rag"' in marker else None


class _CheckoutStages:
    """Meta-path finder: ``clara.<stage>`` is the namespace folder ``<checkout>/<stage>/``.

    Appended after the standard finders, so an installed wheel's ``clara/<stage>/`` wins.
    """

    def __init__(self, root: Path):
        self.root = root

    def find_spec(self, fullname: str, path=None, target=None) -> ModuleSpec | None:
        parent, _, stage = fullname.rpartition(".")
        if parent != __name__ or stage not in STAGES or not (self.root / stage).is_dir():
            return None
        spec = ModuleSpec(fullname, None, is_package=True)
        spec.submodule_search_locations = [str(self.root / stage)]
        return spec

    def __eq__(self, other) -> bool:  # one finder per checkout, however often clara is reloaded
        return isinstance(other, _CheckoutStages) and other.root == self.root

    def __hash__(self) -> int:
        return hash(self.root)


_root = checkout_root()
if _root is not None and _CheckoutStages(_root) not in sys.meta_path:
    sys.meta_path.append(_CheckoutStages(_root))
