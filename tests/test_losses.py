"""Every loss of ferroclip.losses against a hand-written reference (plain loops over numpy)."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from ferroclip.losses import (  # noqa: E402
    CLIPContrastiveLoss,
    DomainSpecificLoss,
    HardNegativeMiningLoss,
    MultiScaleLoss,
    SigLIPLoss,
    TemperatureScheduler,
)

SEED_KEYS = {"loss", "image_to_text_loss", "text_to_image_loss"}


def _emb(n: int = 6, d: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g, dtype=torch.float64)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _ref_infonce_dir(logits: np.ndarray, weights: np.ndarray | None = None) -> float:
    """-mean_i log(e^{l_ii} / sum_j w_ij e^{l_ij}), with w_ii = 1."""
    n = len(logits)
    total = 0.0
    for i in range(n):
        denom = 0.0
        for j in range(n):
            w = 1.0 if weights is None or i == j else weights[i, j]
            denom += w * math.exp(logits[i, j])
        total += -(logits[i, i] - math.log(denom))
    return total / n


def _cos(img: torch.Tensor, txt: torch.Tensor) -> np.ndarray:
    return _unit(img.numpy()) @ _unit(txt.numpy()).T


def test_clip_contrastive_matches_reference_and_seed_keys() -> None:
    img, txt = _emb()
    out = CLIPContrastiveLoss(temperature=0.07)(img, txt)
    assert SEED_KEYS <= out.keys()
    logits = _cos(img, txt) / 0.07
    i2t, t2i = _ref_infonce_dir(logits), _ref_infonce_dir(logits.T)
    assert out["image_to_text_loss"].item() == pytest.approx(i2t, rel=1e-6)
    assert out["text_to_image_loss"].item() == pytest.approx(t2i, rel=1e-6)
    assert out["loss"].item() == pytest.approx(0.5 * (i2t + t2i), rel=1e-6)
    assert out["temperature"].item() == pytest.approx(0.07, rel=1e-6)


def test_clip_scale_is_clamped_at_100_and_learnable_temperature_gets_gradient() -> None:
    img, txt = _emb()
    out = CLIPContrastiveLoss()(img, txt, logit_scale=torch.tensor(1000.0, dtype=torch.float64))
    logits = _cos(img, txt) * 100.0
    assert out["image_to_text_loss"].item() == pytest.approx(_ref_infonce_dir(logits), rel=1e-6)
    fixed = CLIPContrastiveLoss(temperature=0.07)
    assert not fixed.log_scale.requires_grad
    loss = CLIPContrastiveLoss(temperature=0.07, learnable_temp=True)
    loss(img.float(), txt.float())["loss"].backward()
    assert loss.log_scale.grad is not None and loss.log_scale.grad.abs().item() > 0


def test_siglip_matches_reference_and_is_initialised_like_siglip() -> None:
    img, txt = _emb()
    fn = SigLIPLoss()
    assert fn.log_scale.item() == pytest.approx(math.log(10.0))
    assert fn.bias.item() == pytest.approx(-10.0)
    assert fn.log_scale.requires_grad and fn.bias.requires_grad
    scale, bias = 7.0, -3.0
    out = fn(img, txt, logit_scale=torch.tensor(scale, dtype=torch.float64), logit_bias=torch.tensor(bias, dtype=torch.float64))
    assert SEED_KEYS <= out.keys()
    cos = _cos(img, txt)
    n = len(cos)
    ref = 0.0
    for i in range(n):
        for j in range(n):
            z = 1.0 if i == j else -1.0
            ref += math.log1p(math.exp(-z * (scale * cos[i, j] + bias)))
    assert out["loss"].item() == pytest.approx(ref / n, rel=1e-6)
    # the bias learns: its gradient is not zero at SigLIP's init
    fn(img.float(), txt.float())["loss"].backward()
    assert fn.bias.grad is not None and fn.bias.grad.abs().item() > 0


@pytest.mark.parametrize("strategy", ["hard", "semi-hard", "weighted"])
def test_hard_negative_mining_matches_reference(strategy: str) -> None:
    img, txt = _emb(n=7, seed=3)
    ratio, weight, temp = 0.5, 3.0, 0.1
    out = HardNegativeMiningLoss(temperature=temp, hard_negative_ratio=ratio, mining_strategy=strategy, hard_negative_weight=weight)(img, txt)
    assert SEED_KEYS | {"hard_negative_count", "hard_negative_ratio_actual"} <= out.keys()
    logits = _cos(img, txt) / temp
    n = len(logits)
    k = math.ceil(ratio * (n - 1))

    def weights(lg: np.ndarray) -> tuple[np.ndarray, int]:
        w = np.ones((n, n))
        count = 0
        for i in range(n):
            negs = [j for j in range(n) if j != i]
            if strategy == "weighted":
                e = np.array([math.exp(lg[i, j]) for j in negs])
                p = e / e.sum()
                for j, pj in zip(negs, p):
                    w[i, j] = 1 + (weight - 1) * (n - 1) * pj
                    count += int(pj > 1 / (n - 1))
                continue
            if strategy == "semi-hard":
                negs = [j for j in negs if lg[i, j] < lg[i, i]]
            for j in sorted(negs, key=lambda j: -lg[i, j])[:k]:
                w[i, j] = weight
                count += 1
        return w, count

    w1, c1 = weights(logits)
    w2, c2 = weights(logits.T)
    i2t, t2i = _ref_infonce_dir(logits, w1), _ref_infonce_dir(logits.T, w2)
    assert out["image_to_text_loss"].item() == pytest.approx(i2t, rel=1e-6)
    assert out["text_to_image_loss"].item() == pytest.approx(t2i, rel=1e-6)
    assert int(out["hard_negative_count"]) == c1 + c2
    assert out["hard_negative_ratio_actual"].item() == pytest.approx((c1 + c2) / (2 * n * (n - 1)))
    assert c1 + c2 > 0


def test_hard_negative_with_weight_one_is_clip() -> None:
    img, txt = _emb()
    a = HardNegativeMiningLoss(temperature=0.07, hard_negative_weight=1.0, mining_strategy="hard")(img, txt)["loss"]
    b = CLIPContrastiveLoss(temperature=0.07)(img, txt)["loss"]
    assert a.item() == pytest.approx(b.item(), rel=1e-12)


def test_domain_specific_is_additive_margin_infonce() -> None:
    img, txt = _emb()
    out = DomainSpecificLoss(domain="medical", temperature=0.07, domain_weight=1.5)(img, txt)
    assert SEED_KEYS <= out.keys()
    m = 0.2 * 1.5
    cos = _cos(img, txt) - m * np.eye(len(img))
    logits = cos / 0.07
    assert out["loss"].item() == pytest.approx(0.5 * (_ref_infonce_dir(logits) + _ref_infonce_dir(logits.T)), rel=1e-6)
    general = DomainSpecificLoss(domain="general")(img, txt)["loss"]
    assert general.item() == pytest.approx(CLIPContrastiveLoss()(img, txt)["loss"].item(), rel=1e-12)
    with pytest.raises(ValueError, match="unknown domain"):
        DomainSpecificLoss(domain="astrology")


def test_multi_scale_is_weighted_sum_over_temperatures() -> None:
    img, txt = _emb()
    out = MultiScaleLoss(scales=[1.0, 0.5], base_temperature=0.1, scale_weights=[3.0, 1.0], normalize_weights=True)(img, txt)
    assert SEED_KEYS | {"scale_losses", "temperatures"} <= out.keys()
    cos = _cos(img, txt)
    per = [0.5 * (_ref_infonce_dir(cos / t) + _ref_infonce_dir(cos.T / t)) for t in (0.1, 0.05)]
    assert out["scale_losses"].tolist() == pytest.approx(per, rel=1e-6)
    assert out["temperatures"].tolist() == pytest.approx([0.1, 0.05], rel=1e-6)
    assert out["loss"].item() == pytest.approx(0.75 * per[0] + 0.25 * per[1], rel=1e-6)
    raw = MultiScaleLoss(scales=[1.0, 0.5], base_temperature=0.1, scale_weights=[3.0, 1.0], normalize_weights=False)(img, txt)
    assert raw["loss"].item() == pytest.approx(3 * per[0] + per[1], rel=1e-6)
    with pytest.raises(ValueError, match="entries"):
        MultiScaleLoss(scales=[1.0], scale_weights=[1.0, 2.0])


def test_temperature_schedules_at_chosen_steps() -> None:
    def sched(kind: str) -> TemperatureScheduler:
        return TemperatureScheduler(0.07, 0.01, 0.1, warmup_steps=10, total_steps=110, schedule_type=kind)  # type: ignore[arg-type]

    assert [sched("constant").value(s) for s in (0, 50, 500)] == pytest.approx([0.07] * 3)
    w = sched("warmup")
    assert [w.value(s) for s in (0, 5, 10, 100)] == pytest.approx([0.1, 0.085, 0.07, 0.07])
    c = sched("cosine")
    assert [c.value(s) for s in (0, 10, 60, 110, 1000)] == pytest.approx([0.1, 0.07, 0.04, 0.01, 0.01])
    e = sched("exponential")
    assert [e.value(s) for s in (10, 60, 110)] == pytest.approx([0.07, 0.07 * (1 / 7) ** 0.5, 0.01])
    a = TemperatureScheduler(0.07, 0.01, 0.1, schedule_type="adaptive", patience=2, threshold=0.01, decay=0.5)
    temps = [a.step(i, loss=1.0) for i in range(6)]  # a flat loss: no improvement, so it sharpens
    assert temps == pytest.approx([0.07, 0.07, 0.07, 0.035, 0.035, 0.0175])
    b = TemperatureScheduler(0.07, 0.01, 0.1, schedule_type="adaptive", patience=2, decay=0.5)
    for i in range(3):
        b.step(i, loss=1.0)
    state = b.state_dict()
    c2 = TemperatureScheduler(0.07, 0.01, 0.1, schedule_type="adaptive", patience=2, decay=0.5)
    c2.load_state_dict(state)
    assert [c2.step(i, loss=1.0) for i in range(3, 6)] == pytest.approx(temps[3:])
    with pytest.raises(ValueError, match="schedule_type"):
        TemperatureScheduler(schedule_type="linear")  # type: ignore[arg-type]


def test_scheduler_drives_the_loss_temperature() -> None:
    loss = CLIPContrastiveLoss(temperature=0.07)
    loss.temperature = 0.05
    assert loss.temperature == pytest.approx(0.05)
    img, txt = _emb()
    assert loss(img, txt)["temperature"].item() == pytest.approx(0.05)
