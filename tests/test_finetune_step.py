"""Exact large-batch contrastive gradients from micro-batches (GradCache with RNG replay)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from ferroclip.finetune.step import MicroBatch, contrastive_backward  # noqa: E402
from ferroclip.finetune.towers import Towers  # noqa: E402
from ferroclip.losses import CLIPContrastiveLoss, SigLIPLoss  # noqa: E402

VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8)
TEXT = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, vocab_size=99, max_position_embeddings=16)


def _model(family: str, dropout: float = 0.0):
    from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

    torch.manual_seed(0)
    drop = dict(attention_dropout=dropout, dropout=dropout) if family == "clip" else dict(attention_dropout=dropout)
    if family == "clip":
        cfg = CLIPConfig(text_config=dict(TEXT, **drop, eos_token_id=2), vision_config=dict(VISION, **drop), projection_dim=24)
        return CLIPModel(cfg)
    cfg = SiglipConfig(text_config=dict(TEXT, **drop, eos_token_id=2, pad_token_id=1), vision_config=dict(VISION, **drop))
    return SiglipModel(cfg)


def _batch(n: int, seed: int = 1) -> MicroBatch:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 99, (n, 8), generator=g)
    ids[:, -1] = 2  # CLIP pools at the eos token
    return MicroBatch(torch.randn(n, 3, 32, 32, generator=g), ids, torch.ones(n, 8, dtype=torch.long))


def _split(b: MicroBatch, k: int) -> list[MicroBatch]:
    n = len(b) // k
    return [MicroBatch(b.pixel_values[i * n:(i + 1) * n], b.input_ids[i * n:(i + 1) * n], b.attention_mask[i * n:(i + 1) * n]) for i in range(k)]


def _loss(family: str, towers: Towers):
    if family == "clip":
        fn = CLIPContrastiveLoss()
        return lambda i, t: fn(i, t, logit_scale=towers.logit_scale.exp())
    fn2 = SigLIPLoss()
    return lambda i, t: fn2(i, t, logit_scale=towers.logit_scale.exp(), logit_bias=towers.logit_bias)


def _grads(family: str, micro: int, accum: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Gradients of one step, and the weights after an SGD step with them."""
    towers = Towers(_model(family)).train()
    batch = _batch(micro * accum)
    contrastive_backward(towers, _split(batch, accum), _loss(family, towers))
    grads = {n: p.grad.detach().clone() for n, p in towers.model.named_parameters() if p.grad is not None}
    torch.optim.SGD(towers.parameters(), lr=0.1).step()
    return grads, {k: v.detach().clone() for k, v in towers.model.state_dict().items()}


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_accumulated_step_equals_the_full_batch_step(family: str) -> None:
    g_full, w_full = _grads(family, 16, 1)
    g_acc, w_acc = _grads(family, 4, 4)
    assert g_full.keys() == g_acc.keys() and len(g_full) > 20
    # Every gradient to float rounding, relative to its own size; plus a floor of float32
    # rounding (one eps) at the model's gradient scale, for tensors whose exact gradient is zero
    # (attention's key bias: softmax ignores a shift), where only rounding residue remains.
    floor = float(torch.finfo(torch.float32).eps) * max(g.abs().max().item() for g in g_full.values())
    for k in g_full:
        scale = g_full[k].abs().max().item()
        assert (g_full[k] - g_acc[k]).abs().max().item() <= 1e-4 * scale + floor, k
    initial = _model(family).state_dict()
    assert max((w_full[k] - initial[k]).abs().max().item() for k in w_full) > 1e-3  # the step moved
    assert max((w_full[k] - w_acc[k]).abs().max().item() for k in w_full) < 1e-6


def test_averaging_micro_batch_losses_would_differ() -> None:
    """The check above can fail: the Trainer-style average over micro-batches is not it."""
    towers = Towers(_model("clip")).train()
    batch = _batch(16)
    loss = _loss("clip", towers)
    for mb in _split(batch, 4):
        (0.25 * loss(towers.encode_image(mb.pixel_values), towers.encode_text(mb.input_ids, mb.attention_mask))["loss"]).backward()
    naive = {n: p.grad.clone() for n, p in towers.named_parameters() if p.grad is not None}
    towers.zero_grad()
    contrastive_backward(towers, _split(batch, 4), loss)
    exact = {n: p.grad.clone() for n, p in towers.named_parameters() if p.grad is not None}
    assert max((naive[k] - exact[k]).abs().max().item() for k in exact) > 1e-4


def test_dropout_masks_are_replayed() -> None:
    """With dropout on, the replayed pass draws the masks of the first pass: the gradient
    equals back-propagating the big-batch loss through the very forward passes whose
    features the loss saw (one graph over all micro-batches, same RNG start)."""
    towers = Towers(_model("clip", dropout=0.3)).train()
    batch = _split(_batch(12), 3)
    loss = _loss("clip", towers)
    torch.manual_seed(7)
    contrastive_backward(towers, batch, loss)
    cached = {n: p.grad.clone() for n, p in towers.named_parameters() if p.grad is not None}
    rng_after = torch.get_rng_state()
    towers.zero_grad()
    torch.manual_seed(7)
    imgs, txts = zip(*[(towers.encode_image(mb.pixel_values), towers.encode_text(mb.input_ids, mb.attention_mask)) for mb in batch])
    loss(torch.cat(imgs).float(), torch.cat(txts).float())["loss"].backward()
    ref = {n: p.grad.clone() for n, p in towers.named_parameters() if p.grad is not None}
    assert torch.equal(rng_after, torch.get_rng_state())  # the RNG ends where one pass leaves it
    assert max((cached[k] - ref[k]).abs().max().item() for k in ref) < 1e-5
    # and without restoring the RNG (open_clip's accumulation) the masks differ
    towers.zero_grad()
    torch.manual_seed(8)
    imgs2 = [towers.encode_image(mb.pixel_values) for mb in batch]
    assert not torch.allclose(torch.cat(imgs2), torch.cat(imgs))


def test_locked_tower_gets_no_gradient_and_is_not_replayed() -> None:
    towers = Towers(_model("clip", dropout=0.2))
    towers.lock(image=True, text=False)
    towers.train()
    assert not towers.image_trainable and towers.text_trainable
    assert not towers.model.vision_model.training
    contrastive_backward(towers, _split(_batch(8), 2), _loss("clip", towers))
    assert all(p.grad is None for p in towers.model.vision_model.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in towers.model.text_model.parameters())


def test_partial_unlock_trains_only_the_last_layers() -> None:
    towers = Towers(_model("clip"))
    towers.lock(image=True, text=False, image_unlocked_layers=1)
    layers = towers.model.vision_model.encoder.layers
    assert not any(p.requires_grad for p in layers[0].parameters())
    assert all(p.requires_grad for p in layers[1].parameters())
    assert all(p.requires_grad for p in towers.model.visual_projection.parameters())
    assert not towers.model.vision_model.embeddings.patch_embedding.weight.requires_grad
