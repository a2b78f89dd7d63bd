from pathlib import Path

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
WIKI_DUMP = FIXTURES / "enwiki-shortened-sample.xml.bz2"


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
    from clara.model.backbone import build_tiny_backbone

    return build_tiny_backbone(tmp_path_factory.mktemp("backbones") / "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_tokenizer_dir):
    from clara.data.corpus import load_tokenizer

    return load_tokenizer(tiny_tokenizer_dir)
