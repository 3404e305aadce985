"""Scoring against brute force: batched, length-sorted log-likelihoods equal a token-by-token loop."""

import pytest
import torch
import torch.nn.functional as F

from constellation_kit.eval.caption_suite import CaptionChoiceSuite
from constellation_kit.eval.scoring import Request, Scorer, encode_pair, multiple_choice_scores
from constellation_kit.eval.task import MultipleChoiceItem
from constellation_kit.trained_model import load_trained_model
from conftest import last_checkpoint

PAIRS = [("def main():\n    ", "return 0"), ("import", " os"), ("x = [1, 2,", " 3]"), ("", "class Foo:"),
         ("for i in range(10):\n", "    print(i)"), ("a", " b c d e f g")]


@pytest.fixture(scope="module")
def trained(tiny_run):
    return load_trained_model(last_checkpoint(tiny_run[0]))


def brute_force(module, tokens: list[int], continuation: int) -> tuple[float, bool]:
    """Sum of log p(token | everything before it) over the last ``continuation`` tokens, one forward per token."""
    total, greedy = 0.0, True
    for position in range(len(tokens) - continuation, len(tokens)):
        with torch.no_grad():
            logits = module(torch.tensor([tokens[:position]]))[0, -1]  # (V,): the next token after the prefix alone
        log_probs = F.log_softmax(logits.double(), dim=-1)
        total += float(log_probs[tokens[position]])
        greedy &= int(logits.argmax()) == tokens[position]
    return total, greedy


def test_batched_loglikelihoods_equal_a_token_by_token_loop(trained) -> None:
    scorer = Scorer(trained.module, trained.tokenizer, trained.datamodule, batch_size=4)  # 6 requests: a ragged last batch
    requests = [scorer.encode(context, continuation) for context, continuation in PAIRS]
    scored = scorer.loglikelihoods(requests)
    for request, (ll, greedy) in zip(requests, scored):
        expected, expected_greedy = brute_force(trained.module, request.context + request.continuation, len(request.continuation))
        assert ll == pytest.approx(expected, abs=1e-3), request
        assert greedy == expected_greedy
    # Each context's trailing whitespace moves to the continuation, and an empty context is end-of-text.
    assert requests[0].context == trained.tokenizer.encode("def main():").ids
    assert requests[3].context == [scorer.eos_id]


def test_a_too_long_row_keeps_its_last_tokens(trained) -> None:
    scorer = Scorer(trained.module, trained.tokenizer, max_length=8)
    request = Request(list(range(5, 25)), [30, 31, 32])
    (ll, _), = scorer.loglikelihoods([request])
    whole = request.context + request.continuation
    assert ll == pytest.approx(brute_force(trained.module, whole[-9:], 3)[0], abs=1e-3)


def test_media_items_score_as_each_row_alone(trained, tiny_run) -> None:
    """A batch mixing picture, sound and text rows gives each row what it gets scored alone (batch of one)."""
    datamodule = tiny_run[0].datamodule  # set up: it holds the grounding questions
    items = [*CaptionChoiceSuite("image", 2).build(datamodule).items, *CaptionChoiceSuite("audio", 2).build(datamodule).items,
             MultipleChoiceItem("import", ("os", "sys"), 0)]
    batched = Scorer(trained.module, trained.tokenizer, datamodule, batch_size=32)
    alone = Scorer(trained.module, trained.tokenizer, datamodule, batch_size=1)
    requests = [r for item in items for r in batched.multiple_choice_requests(item)]
    assert sum(r.media is not None for r in requests) == 4 * 4
    together = [ll for ll, _ in batched.loglikelihoods(requests)]
    separately = [ll for ll, _ in alone.loglikelihoods(requests)]
    assert together == pytest.approx(separately, abs=1e-3)
    # The picture matters: the same caption after another picture scores differently.
    swapped = Request(requests[4].context, requests[0].continuation, requests[4].media)
    assert abs(alone.loglikelihoods([swapped])[0][0] - separately[0]) > 1e-4


def test_acc_norm_divides_by_characters_not_bytes_or_tokens() -> None:
    item = MultipleChoiceItem("q", ("ééé", "abcde"), answer=1)  # 3 characters in 6 UTF-8 bytes; 5 characters
    # Per character -1.1 vs -1.0 picks choice 1; per byte it would be -0.55 vs -1.0 and pick choice 0.
    assert multiple_choice_scores(item, [-3.3, -5.0]) == {"acc": 0.0, "acc_norm": 1.0}
    assert multiple_choice_scores(item, [-2.9, -5.0]) == {"acc": 0.0, "acc_norm": 0.0}


def test_pairs_split_as_the_harness_splits_them(trained) -> None:
    from lm_eval.api.model import TemplateLM

    class Reference(TemplateLM):  # the harness's own _encode_pair over our tokenizer
        eot_token_id = 0
        tok_encode = staticmethod(lambda s, **_: trained.tokenizer.encode(s, add_special_tokens=False).ids)
        _loglikelihood_tokens = loglikelihood_rolling = generate_until = None

    for context, continuation in [("def f(x):  ", "return x"), ("a = 1\n", "b"), ("print(", "'hi')")]:
        assert encode_pair(trained.tokenizer, context, continuation) == Reference()._encode_pair(context, continuation)
