from functools import partial

from constellation_kit.model import GroupedQueryAttention, SwiGLU, Transformer
from constellation_kit.train import weight_decay_groups


def test_norms_biases_and_embeddings_are_not_decayed() -> None:
    model = Transformer(
        100,
        d_model=16,
        n_layers=1,
        attention=partial(GroupedQueryAttention, n_heads=2, bias=True),
        feed_forward=partial(SwiGLU, hidden_dim=32),
    )
    decay, no_decay = weight_decay_groups(model)
    assert "weight_decay" not in decay  # takes the optimizer's configured value
    assert no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    not_decayed = {names[id(p)] for p in no_decay["params"]}
    assert "token_embedding.weight" in not_decayed
    assert "blocks.0.attention.q_proj.bias" in not_decayed
    assert "blocks.0.attention_norm.weight" in not_decayed
    assert "final_norm.weight" in not_decayed
    assert decayed == {
        "blocks.0.attention.q_proj.weight",
        "blocks.0.attention.kv_proj.weight",
        "blocks.0.attention.out_proj.weight",
        "blocks.0.feed_forward.gate_up_proj.weight",
        "blocks.0.feed_forward.down_proj.weight",
        "lm_head.weight",
    }
    assert len(decayed) + len(not_decayed) == len(list(model.parameters()))


def test_a_timm_backbones_declared_exemptions_are_not_decayed() -> None:
    import timm
    from torch import nn

    class Wrapper(nn.Module):  # the backbone deep in the tree, as in the vision encoder
        def __init__(self) -> None:
            super().__init__()
            self.backbone = timm.create_model(
                "vit_tiny_patch16_224", img_size=32, patch_size=8, depth=1, embed_dim=32, num_heads=2,
                reg_tokens=2, pretrained=False, num_classes=0,
            )
            self.head = nn.Linear(32, 8)

    model = Wrapper()
    decay, no_decay = weight_decay_groups(model)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    not_decayed = {names[id(p)] for p in no_decay["params"]}
    # 3-D, so only the backbone's own no_weight_decay() keeps them out of decay.
    assert {"backbone.pos_embed", "backbone.cls_token", "backbone.reg_token"} <= not_decayed
    assert "head.weight" in decayed and "backbone.blocks.0.attn.qkv.weight" in decayed
    assert "backbone.patch_embed.proj.weight" in decayed
    assert len(decayed) + len(not_decayed) == len(list(model.parameters()))
