"""The parallelize step over a multimodal module's parts: network, encoders and projectors alike.

One 2-process gloo run checks both precisions:

- bf16 mixed precision, as xl.yaml trains: every parameter of every part is sharded, every FSDP
  unit carries the one policy (bf16 parameters, fp32 reduction), the encoders' blocks are
  checkpointed one by one, and the state-dict keys are the single-device module's;
- fp32 (exact): one step of the sharded module, each rank on half the batch, gives the loss and
  every gradient of the same module on the whole batch in one process, within rtol 1e-5 / atol 1e-6
  (reduction order only); a frozen encoder stays frozen and in eval mode, and its pretrained weights
  (``weights_path``) are what each rank's shards hold.

The halves of the batch lay out the same placeholders and scored tokens, so the mean of the ranks'
losses is the whole batch's (see docs/scale.md on what changes with the world size).
"""

import os
from functools import partial

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper, checkpoint_wrapper
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor

from constellation_kit.model import AudioEncoder, GroupedQueryAttention, MLPProjector, TimmVisionEncoder, Transformer
from constellation_kit.model.audio_encoder import EncoderBlock
from constellation_kit.train import MultimodalLanguageModel
from constellation_kit.train.parallelize import materialize, parallelize_module
from conftest import free_port

VOCAB, IMAGE_ID, AUDIO_ID = 40, 1, 2
TINY_VIT = {"img_size": 32, "patch_size": 8, "depth": 2, "embed_dim": 32, "num_heads": 2}


def make_model(freeze_vision: bool = False, vision_weights: str | None = None) -> MultimodalLanguageModel:
    return MultimodalLanguageModel(
        network=partial(Transformer, d_model=32, n_layers=2, attention=partial(GroupedQueryAttention, n_heads=2)),
        vocab_size=VOCAB,
        vision_encoder=partial(TimmVisionEncoder, num_tokens=4, backbone_kwargs=TINY_VIT, weights_path=vision_weights),
        audio_encoder=partial(AudioEncoder, width=16, n_layers=2, n_heads=2, num_tokens=3),
        vision_projector=partial(MLPProjector, hidden_dim=24),
        freeze_vision_encoder=freeze_vision,
    )


def half_batch(seed: int) -> dict[str, torch.Tensor]:
    """Two rows: an image item, text, an audio item, text; then text, an image item, text. Same layout for every seed."""
    generator = torch.Generator().manual_seed(seed)
    layout = torch.tensor([[IMAGE_ID] * 4 + [5, 6, 0] + [AUDIO_ID] * 3 + [7, 8, 0, 0],
                           [9, 10, 11, 0] + [IMAGE_ID] * 4 + [12, 13, 14, 0, 0, 0]])
    text = (layout > AUDIO_ID) | (layout == 0)
    tokens = torch.where(text, torch.randint(3, VOCAB, layout.shape, generator=generator), layout)
    targets = torch.roll(tokens, -1, dims=1)
    targets[(targets == IMAGE_ID) | (targets == AUDIO_ID)] = -100
    return {
        "tokens": tokens, "targets": targets, "document_ids": torch.zeros_like(tokens),
        "image": torch.randn(2, 3, 32, 32, generator=generator), "image_mask": tokens == IMAGE_ID,
        "audio": torch.randn(1, 1600, generator=generator), "audio_mask": tokens == AUDIO_ID,
    }


def whole_batch(halves: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    # Items are ordered by row, so concatenating the halves' rows and items keeps them matched.
    return {key: torch.cat([half[key] for half in halves]) for key in halves[0]}


def built_on_meta(freeze_vision: bool = False, vision_weights: str | None = None) -> MultimodalLanguageModel:
    """What a sharding strategy's context gives configure_model: every part on the meta device."""
    model = make_model(freeze_vision, vision_weights)
    with torch.device("meta"):
        model.configure_model()
    return model


def fsdp_policies(model: nn.Module) -> set[tuple[torch.dtype | None, torch.dtype | None]]:
    """(param_dtype, reduce_dtype) of every FSDP unit that holds parameters."""
    policies = set()
    for module in model.modules():
        if isinstance(module, FSDPModule):
            group = module._get_fsdp_state()._fsdp_param_group
            if group is not None:
                policies.add((group.mp_policy.param_dtype, group.mp_policy.reduce_dtype))
    return policies


def _both_precisions(rank: int, world_size: int, port: int, vision_weights: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh("cpu", (world_size,))
        _check_bf16_structure(mesh)
        _check_fp32_step(mesh, rank, world_size, vision_weights)
    finally:
        dist.destroy_process_group()


def _check_bf16_structure(mesh) -> None:
    model = built_on_meta()
    parallelize_module(model, mesh, "cpu", activation_checkpointing=True)
    for name, param in model.named_parameters():
        assert isinstance(param, DTensor) and not param.is_meta, name
    assert fsdp_policies(model) == {(torch.bfloat16, torch.float32)}
    units = [module for module in model.modules() if isinstance(module, FSDPModule)]
    # 2 network blocks + network, 2 ViT blocks + ViT, 2 audio blocks + audio, 2 projectors.
    assert len(units) == 11
    vision, audio = model.encoders["image"], model.encoders["audio"]
    for blocks in (model.network.blocks, vision.backbone.blocks, audio.blocks):
        assert all(isinstance(block, CheckpointWrapper) and isinstance(block, FSDPModule) for block in blocks)
    plain = make_model()
    plain.configure_model()
    assert list(model.state_dict()) == list(plain.state_dict())
    # The encoder blocks compute in bf16: the gathered weights are bf16.
    seen = []
    vision.backbone.blocks[0].register_forward_pre_hook(lambda module, args: seen.append(module.attn.qkv.weight.dtype))
    model.train()
    model._loss(half_batch(0))[0].backward()
    assert seen == [torch.bfloat16]
    assert all(p.grad is not None for p in audio.parameters())


def _check_fp32_step(mesh, rank: int, world_size: int, vision_weights: str) -> None:
    # A frozen pretrained backbone, as xl.yaml's CLIP tower: loaded while materialised, at full size.
    sharded = built_on_meta(freeze_vision=True, vision_weights=vision_weights)
    # init_from is loaded once every part holds this rank's initialised shards, and only then.
    loads = []
    sharded.load_initial_weights = lambda: loads.append(not any(p.is_meta for p in sharded.parameters()))
    torch.manual_seed(1)
    parallelize_module(sharded, mesh, "cpu", activation_checkpointing=True, param_dtype=None, reduce_dtype=None)
    before = {name: p.to_local().clone() for name, p in sharded.named_parameters()}
    # A second fit (or a validate) of the same module: its parts are sharded already and stay as they are.
    parallelize_module(sharded, mesh, "cpu", activation_checkpointing=True, param_dtype=None, reduce_dtype=None)
    assert loads == [True]
    assert all(torch.equal(p.to_local(), before[name]) for name, p in sharded.named_parameters())
    reference = built_on_meta(freeze_vision=True, vision_weights=vision_weights)
    torch.manual_seed(1)
    for part in reference.parallel_parts():
        materialize(part, "cpu")
    # Same initial weights at world size 2 as unsharded: materialise inits every part at full size.
    for (name, p), q in zip(sharded.named_parameters(), reference.parameters(), strict=True):
        assert torch.equal(p.full_tensor(), q), name

    vision = sharded.encoders["image"]
    pretrained = torch.load(vision_weights, weights_only=True)
    for name, param in vision.backbone.named_parameters():
        assert torch.equal(param.full_tensor(), pretrained[name.replace("_checkpoint_wrapped_module.", "")]), name
    assert not any(isinstance(block, CheckpointWrapper) for block in vision.backbone.blocks)  # frozen: nothing to recompute
    assert all(isinstance(block, CheckpointWrapper) for block in sharded.encoders["audio"].blocks)
    halves = [half_batch(seed) for seed in range(world_size)]
    for model in (sharded, reference):
        model.train()
    assert not vision.training and not any(p.requires_grad for p in vision.parameters())
    loss = sharded._loss(halves[rank])[0]
    loss.backward()
    expected = reference._loss(whole_batch(halves))[0]
    expected.backward()
    # The mean of the ranks' losses is the whole batch's; FSDP2 averages the ranks' gradients.
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    torch.testing.assert_close(mean_loss / world_size, expected.detach(), rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(sharded.named_parameters(), reference.parameters(), strict=True):
        if not q.requires_grad:
            assert p.grad is None and q.grad is None, name
            continue
        assert q.grad is not None and q.grad.abs().max() > 0, name
        torch.testing.assert_close(p.grad.full_tensor(), q.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_encoders_and_projectors_shard_under_the_networks_policy_and_step_like_one_process(tmp_path) -> None:
    torch.manual_seed(3)
    torch.save(TimmVisionEncoder(backbone_kwargs=TINY_VIT).backbone.state_dict(), tmp_path / "vit.pt")
    mp.spawn(_both_precisions, args=(2, free_port(), str(tmp_path / "vit.pt")), nprocs=2, join=True)


class NoStrategyTrainer:
    """A trainer whose every attribute raises: the module must build without asking what runs it."""

    def __getattr__(self, name: str):
        raise AssertionError(f"configure_model read trainer.{name}")


def test_configure_model_builds_on_the_context_device_without_reading_the_strategy() -> None:
    model = make_model()
    model._trainer = NoStrategyTrainer()
    with torch.device("meta"):
        model.configure_model()
    parts = model.parallel_parts()
    assert parts == [model.network, model.encoders["image"], model.encoders["audio"], model.projectors["image"],
                     model.projectors["audio"]]
    assert all(p.is_meta for part in parts for p in part.parameters())
    assert not any(isinstance(module, FSDPModule) for module in model.modules())  # sharding is the strategy's


@pytest.mark.parametrize("checkpointed", [False, True])
def test_encoder_blocks_compile_as_one_graph_and_match_eager(checkpointed: bool) -> None:
    vit_block = TimmVisionEncoder(backbone_kwargs=TINY_VIT).backbone.blocks[0]
    for block, shape in ((vit_block, (2, 17, 32)), (EncoderBlock(16, 2), (2, 9, 16))):
        torch._dynamo.reset()
        x = torch.randn(shape, requires_grad=True)
        wrapped = checkpoint_wrapper(block) if checkpointed else block
        # fullgraph: a graph break raises instead of silently splitting the block.
        compiled = torch.compile(wrapped, fullgraph=True, backend="aot_eager")
        results = []
        for run in (compiled, block):
            block.zero_grad()
            x.grad = None
            out = run(x)
            F.mse_loss(out, torch.zeros_like(out)).backward()
            results.append((out.detach(), x.grad.clone(), [p.grad.clone() for p in block.parameters()]))
        (out, x_grad, grads), (expected_out, expected_x_grad, expected_grads) = results
        torch.testing.assert_close(out, expected_out, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(x_grad, expected_x_grad, rtol=1e-5, atol=1e-6)
        for grad, expected in zip(grads, expected_grads, strict=True):
            torch.testing.assert_close(grad, expected, rtol=1e-5, atol=1e-6)
