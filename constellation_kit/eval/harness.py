"""The lm-evaluation-harness adapter: any checkpoint as an ``lm_eval`` model, registered as ``constellation-kit``.

::

    import constellation_kit.eval.harness  # registers the model name
    lm_eval.simple_evaluate(model="constellation-kit", model_args="ckpt_path=runs/.../last.ckpt", tasks=[...])
    lm_eval.simple_evaluate(model=ConstellationLM(ckpt_path=...), tasks=[...])

and from the shell, with lm_eval's own arguments (lm_eval 0.4.13 loads no plugins, so its
``lm_eval`` console script cannot know this model; this module registers it, then runs that CLI)::

    python -m constellation_kit.eval.harness run --model constellation-kit --model_args ckpt_path=... --tasks ...

Scoring goes through :class:`~constellation_kit.eval.scoring.Scorer`, the same code as
``constellation-kit eval`` and the in-loop suites: batched, longest first, with a progress bar.
Tokenisation is the harness's own (:class:`lm_eval.api.model.TemplateLM`).
"""

from typing import Any

import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import model_registry, register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm.auto import tqdm

from constellation_kit.errors import ConfigError
from constellation_kit.eval.generation import generate_text
from constellation_kit.eval.scoring import Request, Scorer
from constellation_kit.trained_model import TrainedModel, load_trained_model

MODEL_NAME = "constellation-kit"


class ConstellationLM(TemplateLM):
    """A constellation-kit checkpoint behind the harness's LM interface.

    ``loglikelihood`` (inherited: the harness's tokenisation, then :meth:`_loglikelihood_tokens`),
    ``loglikelihood_rolling`` (whole-document log-likelihood in disjoint windows of ``max_length``)
    and ``generate_until`` (greedy or sampled, cut at the request's ``until`` strings).

    Args:
        ckpt_path: a single-file or sharded checkpoint written by ``constellation-kit fit``.
        trained: an already loaded model instead of ``ckpt_path`` (what ``constellation-kit eval`` passes).
        batch_size: rows per forward call (the harness's ``--batch_size``; ``auto`` means 16).
        max_length: the longest row fed to the model; longer requests keep their last tokens.
            Default: no cut for scoring, and the run's training ``seq_len`` as the rolling window.
        device: where the model runs (``cpu``, ``cuda``, ``cuda:1``).
    """

    def __init__(self, ckpt_path: str | None = None, trained: TrainedModel | None = None, batch_size: int | str = 16,
                 max_length: int | str | None = None, device: str | None = None, **kwargs: Any) -> None:
        super().__init__()
        if trained is None:
            if ckpt_path is None:
                raise ConfigError("the constellation-kit harness model needs model_args ckpt_path=<checkpoint>")
            if device is None or (device.startswith("cuda") and not torch.cuda.is_available()):
                device = "cpu"  # lm_eval's CLI asks for cuda by default; its hf model falls back the same way
            trained = load_trained_model(ckpt_path, device=device)
        self.trained = trained
        self.batch_size = 16 if str(batch_size).startswith("auto") else int(batch_size)
        self.max_length = int(max_length) if max_length not in (None, "", "None") else None
        self.scorer = Scorer(trained.module, trained.tokenizer, trained.datamodule, self.batch_size, self.max_length)
        seq_len = ((trained.config.get("data") or {}).get("init_args") or {}).get("seq_len")
        self.window = self.max_length or int(seq_len or 2048)

    @property
    def eot_token_id(self) -> int:
        return self.scorer.eos_id

    @property
    def max_gen_toks(self) -> int:
        return 256

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        return self.trained.tokenizer.encode(string, add_special_tokens=False).ids

    def tok_decode(self, tokens: list[int], **kwargs: Any) -> str:
        return self.trained.tokenizer.decode(tokens)

    def _loglikelihood_tokens(self, requests: list, disable_tqdm: bool = False, **kwargs: Any) -> list[tuple[float, bool]]:
        """``requests``: ``((context, continuation), context_ids, continuation_ids)`` from the harness."""
        scored = [Request(list(context), list(continuation)) for _, context, continuation in requests]
        results = self.scorer.loglikelihoods(scored, progress=not disable_tqdm)
        for (pair, _, _), result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", pair, result)
        return results

    def loglikelihood_rolling(self, requests: list, disable_tqdm: bool = False) -> list[float]:
        """Each document's total log-likelihood, scored in disjoint windows of :attr:`window` tokens."""
        windows, owners = [], []
        for index, request in enumerate(requests):
            (text,) = request.args
            for context, predicted in map(make_disjoint_window, get_rolling_token_windows(
                    self.tok_encode(text), self.eot_token_id, self.window, 1)):
                windows.append(Request(context, predicted))
                owners.append(index)
        totals = [0.0] * len(requests)
        for owner, (ll, _) in zip(owners, self.scorer.loglikelihoods(windows, progress=not disable_tqdm)):
            totals[owner] += ll
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        """Continuations of each context, stopped at its ``until`` strings; requests with the same settings batch."""
        groups: dict[str, list[int]] = {}
        settings: dict[str, dict[str, Any]] = {}
        for index, request in enumerate(requests):
            context, gen_kwargs = request.args
            options = self._generation_options(dict(gen_kwargs or {}))
            key = repr(sorted(options.items()))
            groups.setdefault(key, []).append(index)
            settings[key] = options
        out = [""] * len(requests)
        for key, indices in tqdm(groups.items(), desc="generating", disable=disable_tqdm):
            prompts = [requests[i].args[0] for i in indices]
            for start in range(0, len(prompts), self.batch_size):
                chunk = indices[start:start + self.batch_size]
                texts = generate_text(self.trained, prompts[start:start + self.batch_size], **settings[key])
                for i, text in zip(chunk, texts):
                    out[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
        return out

    def _generation_options(self, gen_kwargs: dict[str, Any]) -> dict[str, Any]:
        until = gen_kwargs.pop("until", None) or [self.tok_decode([self.eot_token_id])]
        until = [until] if isinstance(until, str) else list(until)
        sample = bool(gen_kwargs.pop("do_sample", False))
        temperature = float(gen_kwargs.pop("temperature", 0.0)) if sample else 0.0
        options: dict[str, Any] = {"max_new_tokens": int(gen_kwargs.pop("max_gen_toks", self.max_gen_toks)),
                                   "temperature": temperature, "stop": until}
        if sample and gen_kwargs.get("top_k") is not None:
            options["top_k"] = int(gen_kwargs["top_k"])
        if sample and gen_kwargs.get("top_p") is not None:
            options["top_p"] = float(gen_kwargs["top_p"])
        return options

    def get_model_info(self) -> dict[str, Any]:
        return {"model_checkpoint": str(self.trained.checkpoint_path), "global_step": self.trained.global_step}


if MODEL_NAME not in model_registry:  # importing twice (python -m, then the package) registers once
    register_model(MODEL_NAME)(ConstellationLM)


def main() -> None:
    """lm_eval's own command line, with ``--model constellation-kit`` known."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    # Run as a script this file is __main__; register the canonical module's class, then hand over.
    import constellation_kit.eval.harness  # noqa: F401

    main()
