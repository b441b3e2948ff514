"""Projection heads learn planted structure, losses behave, checkpoints round-trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ferroclip.train import HeadsConfig, build_model, evaluate_heads, load_checkpoint, split_images, train_heads  # noqa: E402
from ferroclip.train.config import HEAD_TYPES, LOSS_TYPES  # noqa: E402
from ferroclip.train.data import PairedEmbeddings  # noqa: E402
from ferroclip.losses import infonce_loss  # noqa: E402
from ferroclip.train.losses import FeatureQueue, Objective  # noqa: E402

from ._train_data import planted  # noqa: E402


@pytest.fixture(scope="module")
def parts():
    data = planted(n_images=200, noise=0.8, seed=1)
    split = split_images(data, val=0.2, test=0.2, seed=0)
    return {k: split.part(data, k) for k in ("train", "val", "test")}


def _cfg(head: str, loss: str, epochs: int = 25, **training) -> HeadsConfig:
    return HeadsConfig.from_dict({
        "model": {"type": head, "output_dim": 32, "hidden_dim": 64, "num_heads": 4, "num_layers": 1, "num_tokens": 4},
        "loss": {"type": loss, "queue_size": 96, "temperature": 0.07},
        "training": {"batch_size": 32, "learning_rate": 3e-3, "num_epochs": epochs, "patience": 50,
                     "progress": False, "device": "cpu", "monitor": "val_r1", "num_threads": 1, **training},
    })


@pytest.mark.parametrize("loss", LOSS_TYPES)
@pytest.mark.parametrize("head", HEAD_TYPES)
def test_every_head_and_loss_learns_held_out_images(parts, head, loss):
    cfg = _cfg(head, loss)
    test = parts["test"]
    chance = 1.0 / len(test.images)
    untrained = evaluate_heads(build_model(cfg, test.image_dim, test.text_dim).eval(), test, plots=False)
    res = train_heads(cfg, parts["train"], parts["val"])
    got = evaluate_heads(res.model, test, plots=False)
    # 40 held-out images: chance R@1 is 0.025; a random head sits near it.
    assert untrained["r1_mean"] < 6 * chance
    assert got["i2t_R@1"] >= 8 * chance and got["t2i_R@1"] >= 6 * chance, got
    assert got["r1_mean"] >= untrained["r1_mean"] + 0.2, (got, untrained)


def test_shuffled_pairs_do_not_learn(parts):
    """Control: the same training with captions assigned to random images stays near chance."""
    tr = parts["train"]
    rng = np.random.default_rng(0)
    shuffled = PairedEmbeddings(tr.images, tr.texts, tr.image_ids, rng.permutation(tr.text_to_image))
    res = train_heads(_cfg("mlp", "infonce"), shuffled, parts["val"])
    got = evaluate_heads(res.model, parts["test"], plots=False)
    assert got["r1_mean"] < 4.0 / len(parts["test"].images)


def test_queue_is_reset_when_feature_width_changes():
    q = FeatureQueue(8)
    q.push(torch.randn(5, 16), torch.randn(5, 16), torch.arange(5))
    assert q.view(16, torch.device("cpu"))[0].shape == (5, 16)
    img, txt, ids = q.view(12, torch.device("cpu"))  # a new trial with output_dim=12
    assert img.shape == (0, 12) and ids.shape == (0,)
    q.push(torch.randn(3, 12), torch.randn(3, 12), torch.arange(3))
    q.push(torch.randn(7, 12), torch.randn(7, 12), torch.arange(3, 10))
    img, _, ids = q.view(12, torch.device("cpu"))
    assert img.shape == (8, 12) and sorted(ids.tolist()) == [2, 3, 4, 5, 6, 7, 8, 9]  # FIFO keeps the newest 8


def test_queue_infonce_matches_reference_and_masks_same_image():
    """One objective reused across output widths (as in tuning) stays correct."""
    cfg = _cfg("siglip", "queue_infonce")
    obj = Objective("queue_infonce", queue_size=64)
    for out_dim in (16, 8):
        cfg.model.output_dim = out_dim
        model = build_model(cfg, 6, 10)
        x1, t1 = torch.randn(4, 6), torch.randn(4, 10)
        first = obj(model, x1, t1, torch.arange(4))  # empty queue → plain InfoNCE
        img, txt = model.encode_image(x1), model.encode_text(t1)
        assert torch.allclose(first, infonce_loss(img, txt, model.scale()))
        x2, t2, ids2 = torch.randn(4, 6), torch.randn(4, 10), torch.tensor([0, 7, 8, 9])  # image 0 is queued already
        second = obj(model, x2, t2, ids2)
        i2, tx2, s = model.encode_image(x2), model.encode_text(t2), model.scale()
        neg_t, neg_i = txt[1:], img[1:]  # queue minus image 0 (same image as row 0 of the batch)...
        rows = []
        for r in range(4):
            qt = txt if r else neg_t  # ...but only for row 0; other rows see all four queued pairs
            qi = img if r else neg_i
            li = torch.cat([s * i2[r] @ tx2.T, s * i2[r] @ qt.T])
            lt = torch.cat([s * tx2[r] @ i2.T, s * tx2[r] @ qi.T])
            rows.append(0.5 * (torch.logsumexp(li, 0) - li[r] + torch.logsumexp(lt, 0) - lt[r]))
        assert torch.allclose(second, torch.stack(rows).mean(), atol=1e-5)


def test_checkpoint_reloads_to_identical_outputs(parts, tmp_path):
    cfg = _cfg("cross_modal", "momentum_distill", epochs=3)
    res = train_heads(cfg, parts["train"], parts["val"], out_dir=tmp_path)
    for name in ("model.safetensors", "checkpoint.json", "loss_history.json", "training_curves.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    history = json.loads((tmp_path / "loss_history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    again = load_checkpoint(tmp_path)
    x = parts["test"]
    np.testing.assert_array_equal(again.project_images(x.images), res.model.project_images(x.images))
    np.testing.assert_array_equal(again.project_texts(x.texts), res.model.project_texts(x.texts))
    meta = json.loads((tmp_path / "checkpoint.json").read_text())
    assert meta["epoch"] == res.best_epoch


def test_checkpoint_with_foreign_weights_is_rejected(parts, tmp_path):
    from ferroclip.errors import DataError

    train_heads(_cfg("mlp", "infonce", epochs=1), parts["train"], parts["val"], out_dir=tmp_path, plots=False)
    blob = bytearray((tmp_path / "model.safetensors").read_bytes())
    blob[-1] ^= 0xFF
    (tmp_path / "model.safetensors").write_bytes(bytes(blob))
    with pytest.raises(DataError, match="do not match"):
        load_checkpoint(tmp_path)


def test_early_stopping_and_training_is_reproducible(parts):
    cfg = _cfg("mlp", "infonce", epochs=40, patience=2, monitor="val_loss", learning_rate=0.05)
    a = train_heads(cfg, parts["train"], parts["val"])
    b = train_heads(cfg, parts["train"], parts["val"])
    assert a.stopped_early and len(a.history) < 40
    assert len(a.history) == a.best_epoch + 2  # stopped after `patience` epochs without improvement
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]


def test_evaluation_writes_metrics_and_maps(parts, tmp_path):
    res = train_heads(_cfg("clip", "infonce", epochs=2), parts["train"], parts["val"])
    m = evaluate_heads(res.model, parts["test"], tmp_path)
    assert json.loads((tmp_path / "metrics.json").read_text()) == m
    assert {"i2t_R@1", "i2t_R@5", "i2t_R@10", "t2i_R@10", "i2t_median_rank", "t2i_median_rank"} <= set(m)
    assert (tmp_path / "pca.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "tsne.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_wrong_dims_are_reported(parts):
    from ferroclip.errors import ShapeError

    tr = parts["train"]
    other = PairedEmbeddings(tr.images[:, :16].copy(), tr.texts, tr.image_ids, tr.text_to_image)
    with pytest.raises(ShapeError, match="16/48-d"):
        train_heads(_cfg("mlp", "infonce", epochs=1), tr, other)
    model = build_model(_cfg("mlp", "infonce"), 32, 48)
    with pytest.raises(ShapeError, match=r"\(rows, 32\)"):
        model.project_images(np.zeros((3, 16), np.float32))


def test_seed_siglip_temperature_at_the_clamp_still_learns(parts):
    """Seed 002's SigLIP head: ``temperature: 0.01`` starts at CLIP's clamp (scale 100); the
    learnable temperature must get a gradient and move."""
    cfg = HeadsConfig.from_dict({
        "model": {"type": "siglip", "output_dim": 32, "dropout": 0.0, "learnable_temp": True},
        "loss": {"type": "siglip", "temperature": 0.01},
        "training": {"batch_size": 32, "learning_rate": 1e-2, "num_epochs": 2, "patience": 50,
                     "progress": False, "device": "cpu", "num_threads": 1},
    })
    train = parts["train"]
    model = build_model(cfg, train.image_dim, train.text_dim)
    start = float(model.logit_scale.detach())
    assert float(model.scale().detach()) == pytest.approx(100.0, rel=1e-5)
    objective = Objective(cfg.loss_type)
    first = np.unique(train.text_to_image, return_index=True)[1][:32]  # one caption per image
    img = torch.from_numpy(np.ascontiguousarray(train.images[train.text_to_image[first]]))
    txt = torch.from_numpy(np.ascontiguousarray(train.texts[first]))
    objective(model, img, txt, torch.from_numpy(train.text_to_image[first])).backward()
    assert model.logit_scale.grad is not None and float(model.logit_scale.grad.abs()) > 0
    res = train_heads(cfg, train, parts["val"])
    assert abs(float(res.model.logit_scale.detach()) - start) > 1e-4
    # CLIP's usual start (0.07) keeps CLIP's clamp at 100.
    clip = build_model(_cfg("clip", "infonce"), train.image_dim, train.text_dim)
    assert clip.max_log_scale == pytest.approx(np.log(100.0))


def test_default_output_dir_is_per_config_file(tmp_path, monkeypatch):
    """Seed 002 loops ``for config in configs/*.yaml``: each must get results/<stem>."""
    configs = tmp_path / "configs"
    configs.mkdir()
    for name in ("clip", "siglip"):
        (configs / f"{name}.yaml").write_text(f"model:\n  type: {name}\n")
    (configs / "pinned.yaml").write_text("model:\n  type: mlp\noutput_dir: out/here\n")
    monkeypatch.chdir(tmp_path)
    outs = {c.stem: HeadsConfig.from_yaml(c).output_dir for c in sorted(configs.glob("*.yaml"))}
    assert outs["clip"] == str(tmp_path / "results" / "clip")
    assert outs["siglip"] == str(tmp_path / "results" / "siglip")
    assert outs["pinned"] == str(configs / "out" / "here")  # an explicit one still resolves against its file


PLUGIN = '''
import torch
import torch.nn.functional as F
from torch import nn
from ferroclip.train.registry import register_head, register_loss, register_metric


class TransformerProjectionHead(nn.Module):  # seed 002's "Adding New Models" example
    def __init__(self, input_dim, output_dim, num_layers, num_heads, dropout=0.1):
        super().__init__()
        layer = nn.TransformerEncoderLayer(input_dim, num_heads, dropout=dropout, batch_first=True)
        self.transformer = nn.TransformerEncoder(layer, num_layers)
        self.projection = nn.Linear(input_dim, output_dim)

    def forward(self, x):
        return self.projection(self.transformer(x.unsqueeze(1)).squeeze(1))


register_head("transformer", lambda cfg, in_dim: TransformerProjectionHead(in_dim, cfg.output_dim, cfg.num_layers, 2))


@register_loss("custom")
def custom_loss(image_proj, text_proj, scale):
    logits = scale * image_proj @ text_proj.T
    target = torch.arange(len(logits), device=logits.device)
    return F.cross_entropy(logits, target)


@register_metric("mean_diag_cos")
def mean_diag_cos(images, texts, text_to_image):
    return float((images[text_to_image] * texts).sum(1).mean())
'''


def test_user_head_loss_and_metric_registered_from_a_yaml_config(parts, tmp_path):
    (tmp_path / "my_plugin.py").write_text(PLUGIN)
    (tmp_path / "transformer.yaml").write_text(
        "plugins: [my_plugin.py]\n"
        "model: {type: transformer, output_dim: 16, num_layers: 1}\n"
        "loss: {type: custom, temperature: 0.07}\n"
        "training: {batch_size: 32, learning_rate: 3.0e-3, num_epochs: 3, progress: false, device: cpu, num_threads: 1}\n"
        "output_dir: out\n"
    )
    cfg = HeadsConfig.from_yaml(tmp_path / "transformer.yaml")
    assert cfg.model.type == "transformer" and cfg.loss_type == "custom"
    res = train_heads(cfg, parts["train"], parts["val"])
    assert type(res.model.image_head).__name__ == "TransformerProjectionHead"
    got = evaluate_heads(res.model, parts["test"], plots=False)
    assert "mean_diag_cos" in got and -1.0 <= got["mean_diag_cos"] <= 1.0
    from ferroclip.errors import ConfigError
    from ferroclip.train.registry import register_head

    with pytest.raises(ConfigError, match="built in"):
        register_head("mlp", lambda cfg, d: None)
    (tmp_path / "bad.yaml").write_text("model: {type: transfomer}\n")
    with pytest.raises(ConfigError, match="register_head"):
        HeadsConfig.from_yaml(tmp_path / "bad.yaml")
