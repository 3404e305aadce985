"""The examples in docs/moe.md run: a new balance piece and a new router are one class each."""

import importlib
import re
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO


@pytest.fixture
def doc_examples(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    text = (REPO / "docs" / "moe.md").read_text()
    blocks = re.findall(r"```python\n# (my_project/\w+\.py)\n(.*?)```", text, re.S)
    assert len(blocks) == 2
    (tmp_path / "my_project").mkdir()
    (tmp_path / "my_project" / "__init__.py").write_text("")
    for path, code in blocks:
        (tmp_path / path).write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for name in [m for m in sys.modules if m.startswith("my_project")]:
        del sys.modules[name]


def test_doc_balance_piece_and_router_work_in_an_moe_layer(doc_examples) -> None:
    from constellation_kit.model import MoEFeedForward
    from constellation_kit.train.moe_terms import balance_terms

    balance = importlib.import_module("my_project.balance")
    router = importlib.import_module("my_project.router")
    layer = MoEFeedForward(16, num_experts=4, expert_hidden_dim=8,
                           router=lambda d, e: router.JitterRouter(d, e, top_k=2, eps=0.01))
    _, routing = layer(torch.randn(2, 5, 16))
    total, values = balance_terms([balance.RouterEntropyBonus(coefficient=0.5)], [(0, routing)])
    assert -torch.log(torch.tensor(4.0)) <= values["moe/neg_router_entropy"] <= 0
    torch.testing.assert_close(total, 0.5 * values["moe/neg_router_entropy"])
