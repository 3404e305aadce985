"""The LightningModule: where the model and the data meet."""

from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from constellation_kit.data.packing import IGNORE_INDEX
from constellation_kit.errors import ConfigError
from constellation_kit.model.balance import BalanceLoss
from constellation_kit.model.chunked_loss import chunked_linear_cross_entropy
from constellation_kit.model.flops import training_flops_per_token
from constellation_kit.model.layout import SequenceLayout
from constellation_kit.model.router import RouterOutput
from constellation_kit.model.transformer import Transformer, TransformerOutput
from constellation_kit.train import moe_terms
from constellation_kit.train.param_groups import weight_decay_groups

NetworkFactory = Callable[[int], Transformer]
"""Builds the network from the vocabulary size (which the data decides)."""
OptimizerFactory = Callable[[Iterable], Optimizer]
"""Builds the optimizer from parameter groups; its ``lr`` is the peak LR."""
SchedulerFactory = Callable[[Optimizer, int], LRScheduler]
"""Builds the per-step LR scheduler from the optimizer and the run's total optimizer steps."""


class LanguageModel(L.LightningModule):
    """Next-token prediction over packed sequences.

    Takes batches of (B, T) ``tokens``, ``targets`` and ``document_ids`` and minimises the mean
    cross-entropy of the targets (positions marked -100 excluded). Logs ``train/loss`` and
    ``train/lr`` (on the steps the logger writes), ``val/loss`` and ``val/accuracy`` (top-1 over
    non-ignored targets).

    The network is injected as a factory and built in :meth:`configure_model`, on whatever device
    the strategy's context makes the default: a sharding strategy
    (:class:`~constellation_kit.train.FSDP2Strategy`) builds it on the meta device, then shards the
    modules :meth:`parallel_parts` names before any weight exists in full.

    Args:
        network: factory for the network, called with the vocabulary size.
        vocab_size: the tokenizer's vocabulary; the CLI links it from ``data.vocab_size``.
        optimizer: factory for the optimizer, called with the parameter groups (weight decay off
            for norms, biases and embeddings; see :func:`weight_decay_groups`).
        scheduler: factory for the LR schedule, called with the optimizer and the total steps.
        balance: router balance pieces (:mod:`constellation_kit.model.balance`); each adds
            ``coefficient × value`` to the training loss and logs ``value`` as ``moe/<name>``.
            ``train/loss`` and ``val/loss`` stay the language-model loss alone, comparable across
            variants. MoE layers also log load telemetry under ``moe/...``.
        loss_chunk_size: compute the loss through the LM head this many tokens at a time, never
            materialising a micro-batch's full logits (see :mod:`constellation_kit.model.chunked_loss`);
            ``None`` computes all logits at once (fastest at small vocabularies and batches).
        init_from: a transformers checkpoint directory on local disk (Mixtral-, Mellum- or Llama-class)
            to start the network from instead of a random initialisation; its config must match the
            network's (see :mod:`constellation_kit.interop`). Read rank by rank under FSDP2. A resumed
            run's checkpoint overwrites it.
    """

    not_hyperparameters: tuple[str, ...] = ("network", "optimizer", "scheduler", "balance")
    """Constructor arguments that are factories or modules, left out of ``hparams``."""

    def __init__(
        self,
        network: NetworkFactory,
        vocab_size: int,
        optimizer: OptimizerFactory = torch.optim.AdamW,
        scheduler: SchedulerFactory | None = None,
        balance: list[BalanceLoss] | None = None,
        loss_chunk_size: int | None = None,
        init_from: str | None = None,
    ) -> None:
        super().__init__()
        self.network_factory = network
        self.vocab_size = vocab_size
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.balance = list(balance or [])
        self.loss_chunk_size = loss_chunk_size
        self.init_from = init_from
        # Factories and modules are not hyperparameters: the CLI saves the full config instead. Lightning
        # collects a subclass's arguments here too, so a subclass names its own in `not_hyperparameters`.
        self.save_hyperparameters(ignore=list(self.not_hyperparameters), logger=False)
        self.network: Transformer | None = None
        self._last_batch_shape: tuple[int, int] | None = None
        self._flops_per_token: dict[int, float] = {}
        self._telemetry_to_write: dict[str, torch.Tensor] | None = None

    def check_config(self) -> None:
        """Build the network once on the meta device (no memory, any size) and discard it.

        Raises the network's own :class:`ConfigError` (sizes that do not divide, ...) before a
        trainer spends time setting up; the CLI calls it right after instantiation.
        """
        with torch.device("meta"):
            network = self.network_factory(self.vocab_size)
        self.check_init_from(network)

    def check_init_from(self, network: Transformer) -> None:
        """Raise a :class:`ConfigError` if ``init_from`` names a checkpoint ``network`` (meta is fine) cannot hold."""
        if self.init_from is not None:
            from constellation_kit.interop.init_from import check_fits  # lazy: only needed with init_from

            check_fits(network, self.init_from)

    def configure_model(self) -> None:
        """Build the network (on the default device: the meta device under a sharding strategy).

        A network built in memory starts from ``init_from`` right away; a meta-device one once the
        strategy has sharded and materialised it (it calls :meth:`load_initial_weights`).
        """
        if self.network is not None:
            return
        self.network = self.network_factory(self.vocab_size)
        if not any(p.is_meta for p in self.network.parameters()):
            self.load_initial_weights()

    def parallel_parts(self) -> list[nn.Module]:
        """The modules a sharding strategy parallelizes, each its own FSDP root: here the network.

        Each part's ``blocks`` are checkpointed, compiled and sharded one by one
        (:func:`constellation_kit.train.parallelize.parallelize`); a subclass adds its own parts.
        """
        return [self.network]

    def load_initial_weights(self) -> None:
        """Load ``init_from`` into the (built, possibly sharded) network; nothing when it is unset."""
        # Only under a trainer: load_trained_model builds the module bare and loads its own weights.
        if self.init_from is not None and self._trainer is not None:
            from constellation_kit.interop.init_from import load_pretrained  # lazy: safetensors is needed only here

            load_pretrained(self.network, self.init_from)

    def forward(
        self,
        tokens: torch.Tensor,
        document_ids: torch.Tensor | None = None,
        embeddings: torch.Tensor | None = None,
        edit_embeddings: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Token ids (B, T) -> logits (B, T, vocab); ``embeddings`` (B, T, d_model) replace the token
        embeddings, or ``edit_embeddings`` rewrites them inside the network's forward."""
        layout = None if document_ids is None else SequenceLayout.from_document_ids(document_ids)
        output = self.network(tokens, layout, embeddings=embeddings, edit_embeddings=edit_embeddings)
        return self.network.logits(output.hidden)

    def embedding_editor(self, batch: dict[str, torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """How ``batch``'s token embeddings (B, T, d_model) become the network's input; ``None``: unchanged.

        The hook a multimodal subclass overrides to write encoder outputs over placeholder tokens.
        It is called inside the network's forward (see :meth:`Transformer.forward`).
        """
        return None

    def _network_output(self, batch: dict[str, torch.Tensor]) -> TransformerOutput:
        """The network's hidden states and aux for a batch, its embeddings edited by :meth:`embedding_editor`."""
        layout = SequenceLayout.from_document_ids(batch["document_ids"])
        return self.network(batch["tokens"], layout, edit_embeddings=self.embedding_editor(batch))

    def _loss(
        self, batch: dict[str, torch.Tensor], logits_needed: bool = True
    ) -> tuple[torch.Tensor, list[tuple[int, RouterOutput]], torch.Tensor | None]:
        """The language-model loss, each MoE layer's ``(layer_index, RouterOutput)``, and the logits (B, T, V).

        In training with ``loss_chunk_size`` the loss is computed chunk by chunk and the logits,
        never materialised, are ``None``; without ``logits_needed``, on a CPU, they are ``None`` too
        (only the scored positions' logits are computed).
        """
        output = self._network_output(batch)
        routing = moe_terms.routing_layers(output.aux)
        if self.loss_chunk_size and self.training:
            loss = chunked_linear_cross_entropy(
                output.hidden, self.network.head_weight, batch["targets"], self.network.vocab_size, self.loss_chunk_size
            )
            return loss, routing, None
        if not logits_needed and output.hidden.device.type == "cpu":
            # Training discards the logits: only the scored positions go through the head, the same
            # mean over the same targets. A multimodal batch's placeholders are a quarter of its
            # positions (tiny.yaml), and the head is the largest matmul there. CPU only: on an
            # accelerator the boolean index would make the host wait for the device every micro-batch.
            scored = batch["targets"] != IGNORE_INDEX  # (B, T)
            logits = self.network.logits(output.hidden[scored])  # (n, V)
            return F.cross_entropy(logits.float(), batch["targets"][scored]), routing, None
        logits = self.network.logits(output.hidden)  # (B, T, V)
        # fp32 log-softmax whatever the autocast: bf16 loses the small probabilities.
        loss = F.cross_entropy(logits.flatten(0, 1).float(), batch["targets"].flatten(), ignore_index=IGNORE_INDEX)
        return loss, routing, logits

    @property
    def flops_per_batch(self) -> float | None:
        """Training FLOPs of the last training micro-batch on this device, for Lightning's ThroughputMonitor.

        Counts active parameters, not total (an MoE token passes through k of E experts), plus
        attention (:func:`constellation_kit.model.flops.training_flops_per_token`).
        """
        if self._last_batch_shape is None:
            return None
        batch, seq_len = self._last_batch_shape
        if seq_len not in self._flops_per_token:
            self._flops_per_token[seq_len] = training_flops_per_token(self.network, seq_len)
        return batch * seq_len * self._flops_per_token[seq_len]

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor | dict:
        self._last_batch_shape = tuple(batch["tokens"].shape)
        loss, routing, _ = self._loss(batch, logits_needed=False)
        written = self._logger_writes_this_step()
        if written:
            # sync_dist: the logged value is the global batch's loss at any world size (one scalar
            # all-reduce per written step, negligible beside the gradients' collectives).
            self.log("train/loss", loss, prog_bar=True, sync_dist=True)
            self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], prog_bar=True)
        if not routing:
            return loss
        balance, values = moe_terms.balance_terms(self.balance, routing)
        if balance is not None:
            loss = loss + balance
        if written:
            # Tensors, not numbers: Lightning converts them (one host sync) only when it writes a log line.
            self.log_dict(values)
            self._telemetry_to_write = moe_terms.telemetry(routing)
        # Every micro-batch's balance values also go to callbacks, in the step's outputs.
        return {"loss": loss, moe_terms.BALANCE_KEY: {k: v.detach() for k, v in values.items()},
                **moe_terms.step_outputs(routing)}

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._write_telemetry()

    def _write_telemetry(self) -> None:
        """Hand a written step's MoE load telemetry straight to the loggers, at the step Lightning writes.

        6 × (MoE layers + 1) values: through ``self.log`` they cost ~0.5 ms each in Lightning's result
        collection, 14 ms a written step for tiny's 3 layers and ~100 ms at 32; here one host sync
        for all (after the optimizer step, where Lightning syncs to write its own metrics too) and
        one logger call. The step number is Lightning's for this batch, as its LearningRateMonitor
        uses. These values are not in ``trainer.callback_metrics``.
        """
        metrics, self._telemetry_to_write = self._telemetry_to_write, None
        if not metrics:
            return
        values = torch.stack(list(metrics.values())).tolist()
        step = self.trainer.fit_loop.epoch_loop._batches_that_stepped
        for logger in self.trainer.loggers:
            logger.log_metrics(dict(zip(metrics, values, strict=True)), step=step)

    def _logger_writes_this_step(self) -> bool:
        """Whether Lightning will write this training step's logged values to the loggers.

        Each ``self.log`` costs Lightning ~0.5 ms of Python here (its result collection builds the
        metric's metadata and updates a torchmetrics state), and the MoE metrics are 6 × (MoE layers + 1)
        load statistics plus the balance values a step: logged on every step they were 4% of the tiny
        model's step time on a CPU (``benchmarks/trainer_overhead.py``), for values the logger discards
        ``log_every_n_steps - 1`` times in ``log_every_n_steps``. So they, ``train/loss`` and
        ``train/lr`` are computed and logged only on the steps that are written: the question
        Lightning's own LearningRateMonitor and ThroughputMonitor ask, and no micro-batch but an
        accumulation's last (whose values Lightning writes); the load telemetry then bypasses
        ``self.log`` altogether (:meth:`_write_telemetry`). The ``callback_metrics`` entries, and the
        progress bar's ``train/loss``, are therefore as fresh as the last written step (the recipes
        refresh the bar every ``log_every_n_steps`` anyway); a callback that needs every
        micro-batch's loss or balance values reads them from the step's outputs (``"loss"``,
        :data:`moe_terms.BALANCE_KEY`).
        """
        trainer = self._trainer
        if trainer is None or not trainer.training or trainer.fast_dev_run:
            return True
        try:
            if trainer.fit_loop._should_accumulate():
                return False
            return trainer._logger_connector.should_update_logs
        except AttributeError:  # a Lightning without these internals: log every step, as before
            return True

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict | None:
        loss, routing, logits = self._loss(batch)
        self.log("val/loss", loss, prog_bar=True, sync_dist=True)
        # Top-1 accuracy over the scored targets: for synthetic tasks (MQAR, passkey) only answers are scored.
        scored = batch["targets"] != IGNORE_INDEX
        correct = (logits.argmax(dim=-1) == batch["targets"]) & scored
        accuracy = correct.sum() / scored.sum().clamp(min=1)
        self.log("val/accuracy", accuracy, sync_dist=True, batch_size=int(scored.sum().clamp(min=1)))
        return moe_terms.step_outputs(routing) if routing else None

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.log("test/loss", self._loss(batch)[0], sync_dist=True)

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """The most likely next token at every position, (B, T)."""
        return self(batch["tokens"], batch["document_ids"]).argmax(dim=-1)

    def configure_optimizers(self):
        # The whole module, not just the network: a subclass's encoders and projectors train too.
        optimizer = self.optimizer_factory(weight_decay_groups(self))
        if self.scheduler_factory is None:
            return optimizer
        total_steps = self.trainer.estimated_stepping_batches
        if total_steps == float("inf"):
            raise ConfigError("the LR schedule needs a finite run: set trainer.max_steps (or trainer.max_epochs)")
        scheduler = self.scheduler_factory(optimizer, int(total_steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

