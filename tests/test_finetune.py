"""Whole-model fine-tuning end to end on tiny random CLIP/SigLIP models and a planted task."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("safetensors")

from ferroclip.errors import ConfigError  # noqa: E402
from ferroclip.finetune import FinetuneConfig, finetune  # noqa: E402

from ._captions import shapes_dataset  # noqa: E402
from ._models import tiny_clip, tiny_siglip  # noqa: E402


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shapes_dataset(tmp_path_factory.mktemp("shapes"))


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_clip(tmp_path_factory.mktemp("clip") / "m", image_size=32)


@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny SigLIP whose logit scale and bias start where SigLIP pre-training starts
    (log 10, -10), as a real checkpoint's trained ones would be, not at HF's (0, 0)."""
    import math

    from transformers import SiglipModel

    path = tiny_siglip(tmp_path_factory.mktemp("siglip") / "m", image_size=32)
    model = SiglipModel.from_pretrained(path)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(10.0))
        model.logit_bias.fill_(-10.0)
    model.save_pretrained(path)
    return path


def _cfg(model: Path, data: Path, out: Path, **kw: object) -> FinetuneConfig:
    base: dict[str, object] = dict(
        model_name=str(model), data_path=str(data), output_dir=str(out), batch_size=16, learning_rate=1e-3,
        num_epochs=100, warmup_steps=5, eval_steps=1000, save_steps=1000, logging_steps=10, num_workers=1,
        train_split=0.8, val_split=0.2, test_split=0.0, weight_decay=0.0, augment_images=False,
        wise_ft_alphas=[0.0, 0.5, 1.0],
    )
    base.update(kw)
    return FinetuneConfig(**base)  # type: ignore[arg-type]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_finetuning_learns_the_planted_task(family: str, shapes: Path, clip_dir: Path, siglip_dir: Path, tmp_path: Path) -> None:
    model = clip_dir if family == "clip" else siglip_dir
    # Long enough to learn the task well on every model seed tried, not just the one used:
    # model seeds 0-3 reached i2t and t2i R@1 of 11-15 of 19 (from a base of 3-6 of 76).
    lr, steps = (1e-3, 120) if family == "clip" else (3e-3, 300)
    res = finetune(_cfg(model, shapes, tmp_path / "out", max_steps=steps, learning_rate=lr, learnable_temp=True, eval_steps=50),
                   progress=False)
    base, best = res.metrics["base"], res.metrics["best"]["metrics"]
    chance = 1.0 / 19  # 19 validation images
    assert base["val_r1"] < 3 * chance
    assert best["i2t_R@1"] > 6 * chance and best["t2i_R@1"] > 6 * chance, (base, best)
    assert res.metrics["loss_type"] == ("contrastive" if family == "clip" else "sigmoid")
    # the output dir: an HF model dir with the history, metrics, curves and WiSE-FT report
    out = res.output_dir
    for name in ("config.json", "model.safetensors", "history.json", "metrics.json", "training_curves.png",
                 "wise_ft.json", "wise_ft.md", "wise_ft.png", "finetune_config.yaml"):
        assert (out / name).is_file(), name
    wise = json.loads((out / "wise_ft.json").read_text())
    r1 = {row["alpha"]: row["val_r1"] for row in wise["alphas"]}
    assert r1[0.0] == pytest.approx(base["val_r1"])  # alpha 0 is the base model
    assert r1[1.0] == pytest.approx(best["val_r1"])  # alpha 1 is the fine-tuned one
    assert wise["chosen_alpha"] in r1


def test_output_dir_loads_and_embeds_like_the_trained_model(shapes: Path, clip_dir: Path, tmp_path: Path) -> None:
    import ferroclip

    res = finetune(_cfg(clip_dir, shapes, tmp_path / "out", max_steps=4, val_split=0.0, train_split=1.0), progress=False)
    assert res.best_checkpoint is None  # no validation: the top level is the last step
    from transformers import CLIPModel

    trained = CLIPModel.from_pretrained(res.output_dir).eval()
    loaded = ferroclip.load_model(res.output_dir, device="cpu")
    texts = ["a small red circle at the top left", "bottom right: large square, blue"]
    got = loaded.encode_texts(texts)
    with torch.no_grad():
        tok = loaded.tokenizer(texts, padding=True, return_tensors="pt")
        ref = trained.get_text_features(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])
        ref = getattr(ref, "pooler_output", ref)
    ref = torch.nn.functional.normalize(ref, dim=-1).numpy()
    assert np.abs(got - ref).max() < 1e-5
    before = ferroclip.load_model(clip_dir, device="cpu").encode_texts(texts)
    assert np.abs(before - got).max() > 1e-3  # training changed the model


def test_bf16_autocast_on_cpu_trains_float32_weights_in_bf16_arithmetic(shapes: Path, clip_dir: Path, tmp_path: Path) -> None:
    # CPU keeps fp32 unless bf16 is asked for (seed 001's default `mixed_precision: true` is
    # a GPU setting); asked, the towers run under bf16 autocast while the weights, the
    # optimiser and the saved model stay float32.
    kw = dict(max_steps=3, val_split=0.0, train_split=1.0, device="cpu")
    fp32 = finetune(_cfg(clip_dir, shapes, tmp_path / "fp32", **kw), progress=False)
    bf16 = finetune(_cfg(clip_dir, shapes, tmp_path / "bf16", mixed_precision="bf16", **kw), progress=False)
    assert fp32.metrics["precision"] == "fp32" and bf16.metrics["precision"] == "bf16"
    a, b, initial = _weights(fp32.output_dir), _weights(bf16.output_dir), _weights(clip_dir)
    assert a.keys() == b.keys()
    assert all(b[k].dtype == initial[k].dtype for k in b)
    assert all(torch.isfinite(b[k]).all() for k in b)
    # The whole update of each run, as one vector: bf16 arithmetic lands elsewhere than
    # fp32's (autocast really applied) but moves the same way (3 steps from the same weights
    # and batches; Adam's per-weight steps flip on tiny gradients, so not element by element).
    ufp32 = torch.cat([(a[k] - initial[k]).flatten() for k in sorted(a)])
    ubf16 = torch.cat([(b[k] - initial[k]).flatten() for k in sorted(a)])
    assert ubf16.abs().max() > 1e-4  # it trained
    cos = torch.nn.functional.cosine_similarity(ufp32, ubf16, dim=0).item()
    assert not torch.equal(ufp32, ubf16)
    assert cos > 0.95, cos


def test_resumed_run_equals_the_uninterrupted_one(shapes: Path, clip_dir: Path, tmp_path: Path) -> None:
    kw = dict(max_steps=6, save_steps=3, val_split=0.0, train_split=1.0, batch_size=8, gradient_accumulation_steps=2,
              augment_text=True)
    full = finetune(_cfg(clip_dir, shapes, tmp_path / "full", **kw), progress=False)

    class Stop(Exception):
        pass

    def kill_at_4(info: object) -> None:
        if getattr(info, "step") == 4:  # after checkpoint-3, before the next save
            raise Stop

    with pytest.raises(Stop):
        finetune(_cfg(clip_dir, shapes, tmp_path / "cut", **kw), progress=False, callbacks=[kill_at_4])
    with pytest.raises(ConfigError, match="resume"):
        finetune(_cfg(clip_dir, shapes, tmp_path / "cut", **kw), progress=False)
    resumed = finetune(_cfg(clip_dir, shapes, tmp_path / "cut", **kw), resume=True, progress=False)
    a, b = _weights(full.output_dir), _weights(resumed.output_dir)
    assert a.keys() == b.keys()
    worst = max((a[k] - b[k]).abs().max().item() for k in a)
    assert worst == 0.0 or worst < 1e-6, worst
    assert [h["loss"] for h in full.history] == pytest.approx([h["loss"] for h in resumed.history], rel=1e-6)
    initial = _weights(clip_dir)
    assert max((a[k] - initial[k]).abs().max().item() for k in a) > 1e-3


def test_locked_text_tower_does_not_change(shapes: Path, clip_dir: Path, tmp_path: Path) -> None:
    res = finetune(_cfg(clip_dir, shapes, tmp_path / "out", max_steps=3, lock_text=True, val_split=0.0, train_split=1.0), progress=False)
    a, b = _weights(clip_dir), _weights(res.output_dir)
    text = [k for k in a if k.startswith(("text_model.", "text_projection"))]
    vision = [k for k in a if k.startswith(("vision_model.", "visual_projection"))]
    assert text and vision
    assert all(torch.equal(a[k], b[k]) for k in text)
    assert any(not torch.equal(a[k], b[k]) for k in vision)


def test_bad_rows_are_reported_and_good_rows_trained(shapes: Path, clip_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    lines = shapes.read_text().splitlines()
    for line in lines[1:]:
        name = line.split(",")[0]
        (data / name).write_bytes((shapes.parent / name).read_bytes())
    (data / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    extra = ["missing.png,a caption of nothing", "broken.png,a broken file", "red_circle_top_left_small.png,"]
    (data / "data.csv").write_text("\n".join(lines + extra) + "\n")
    res = finetune(_cfg(clip_dir, data / "data.csv", tmp_path / "out", max_steps=8, val_split=0.0, train_split=1.0,
                        batch_size=97 // 2, gradient_accumulation_steps=2), progress=False)
    assert res.steps == 8
    assert res.bad_rows == 2  # the missing file and the empty caption, with file and line
    assert any("data.csv:194" in r and "missing" in r.lower() for r in res.metrics["bad_rows"]), res.metrics["bad_rows"]
    assert any("broken.png" in f for f in res.failed_images), res.failed_images


def test_config_errors_name_the_key_and_the_closest_one(tmp_path: Path) -> None:
    p = tmp_path / "ft.yaml"
    p.write_text("model_name: x\nlearning_rat: 0.1\n")
    with pytest.raises(ConfigError, match=r"ft.yaml.*'learning_rat' \(did you mean 'learning_rate'\?\)"):
        FinetuneConfig.from_yaml(p)
    p.write_text("domain: medical\ndata_path: d.csv\nnum_epochs: 2\n")
    cfg = FinetuneConfig.from_yaml(p)
    assert cfg.learning_rate == 3e-5 and cfg.num_epochs == 2  # the preset fills what the file leaves out
    assert cfg.data_path == str(tmp_path / "d.csv") and cfg.output_dir == str(tmp_path / "outputs" / "ft")
    assert FinetuneConfig.from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()
    with pytest.raises(ConfigError, match="gradient_accumulation_steps"):
        FinetuneConfig.from_dict({"gradient_accumulation_steps": 0})
    with pytest.raises(ConfigError, match="batch_size"):
        FinetuneConfig.from_dict({"batch_size": 1})


def test_cli_fails_fast_on_a_bad_config_and_runs_a_good_one(shapes: Path, clip_dir: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from ferroclip.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("modle_name: x\n")
    assert main(["finetune", str(bad)]) == 2
    assert "did you mean 'model_name'" in capsys.readouterr().err
    good = tmp_path / "ft.yaml"
    good.write_text(
        f"model_name: {clip_dir}\ndata_path: {shapes}\nbatch_size: 16\nlearning_rate: 1.0e-3\nwarmup_steps: 1\n"
        "train_split: 0.8\nval_split: 0.2\ntest_split: 0.0\nnum_workers: 1\naugment_images: false\n"
    )
    assert main(["finetune", str(good), "--max-steps", "2", "--output-dir", str(tmp_path / "o"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "val R@1" in err and (tmp_path / "o" / "model.safetensors").is_file()


def test_augmented_training_is_reproducible_and_learns(shapes: Path, clip_dir: Path, tmp_path: Path) -> None:
    """With the Rust augmentation on, two runs with one seed give the same weights (the
    crops depend on (seed, epoch, sample), not on threads), and training still learns."""
    kw = dict(max_steps=80, augment_images=True, crop_scale=[0.8, 1.0], hflip=0.0, eval_steps=80, learnable_temp=True,
              wise_ft_alphas=[])
    a = finetune(_cfg(clip_dir, shapes, tmp_path / "a", num_workers=1, **kw), progress=False)
    b = finetune(_cfg(clip_dir, shapes, tmp_path / "b", num_workers=2, **kw), progress=False)
    wa, wb = _weights(a.output_dir), _weights(b.output_dir)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    c = finetune(_cfg(clip_dir, shapes, tmp_path / "c", seed=7, **kw), progress=False)
    assert any(not torch.equal(wa[k], _weights(c.output_dir)[k]) for k in wa)
    # val_r1 is the mean of i2t R@1 (19 images) and t2i R@1 (38 captions): steps of 1/76,
    # chance about 0.05. Model seeds 0-3 went from a base of 3-6 steps to 31-37.
    best, base = a.metrics["best"]["metrics"]["val_r1"], a.metrics["base"]["val_r1"]
    assert best >= base + 15 / 76 - 1e-9, (best, base)


def test_lora_trains_only_the_adapted_projections_and_saves_a_merged_model(shapes: Path, clip_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("peft")
    lora = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "init_lora_weights": "gaussian"}
    res = finetune(_cfg(clip_dir, shapes, tmp_path / "out", max_steps=3, lora=lora, val_split=0.0, train_split=1.0), progress=False)
    a, b = _weights(clip_dir), _weights(res.output_dir)
    assert a.keys() == b.keys()  # a plain transformers checkpoint, the adapters merged in
    changed = {k for k in a if not torch.equal(a[k], b[k])}
    assert changed and all(("q_proj.weight" in k or "v_proj.weight" in k) for k in changed), sorted(changed)[:5]


def test_labelled_data_reports_zero_shot_accuracy(shapes: Path, clip_dir: Path, tmp_path: Path) -> None:
    """With label_column, validation adds zero_shot_acc: equal to what the saved model's own
    zero_shot() gives on the validation images, and above chance after training."""
    import csv

    import ferroclip

    from ._captions import COLOURS

    with shapes.open() as fh:
        rows = list(csv.reader(fh))
    labelled = shapes.parent / "labelled.csv"
    with labelled.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*rows[0], "colour"])
        w.writerows([*r, r[0].split("_")[0]] for r in rows[1:])
    templates = ["a photo of a {} shape.", "{}"]
    res = finetune(_cfg(clip_dir, labelled, tmp_path / "out", max_steps=120, learnable_temp=True, eval_steps=60,
                        label_column="colour", zero_shot_templates=templates), progress=False)
    base, best = res.metrics["base"], res.metrics["best"]["metrics"]
    assert 0.0 <= base["zero_shot_acc"] <= 1.0 and "val_zero_shot_acc" in res.history[-1]
    classes = sorted(COLOURS)
    val_ids = json.loads((res.output_dir / "split.json").read_text())["val"]
    model = ferroclip.load_model(res.output_dir, device="cpu")
    zs = model.zero_shot(val_ids, classes, templates=templates, progress=False)
    truth = [Path(p).name.split("_")[0] for p in val_ids]
    assert best["zero_shot_acc"] == pytest.approx(np.mean([p == t for p, t in zip(zs.predicted, truth)]))
    # chance: 0.25 (4 colours); model seeds 0-3 measured 0.21-0.26 -> 0.79-0.95
    assert best["zero_shot_acc"] > 0.6 > base["zero_shot_acc"]
    with pytest.raises(Exception, match="label_column"):
        finetune(_cfg(clip_dir, shapes, tmp_path / "o2", max_steps=1, label_column="colour"), progress=False)


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_training_at_another_resolution(family: str, shapes: Path, clip_dir: Path, siglip_dir: Path, tmp_path: Path) -> None:
    """image_resolution=48 on a 32 px checkpoint: before any step the resized model computes
    what transformers computes at 48 px with interpolate_pos_encoding=True; after training the
    output is a plain 48 px checkpoint that load_model embeds like transformers does."""
    import copy

    from transformers import AutoImageProcessor, AutoModel

    import ferroclip
    from ferroclip.finetune.resolution import resize_position_table

    src = clip_dir if family == "clip" else siglip_dir
    original = AutoModel.from_pretrained(src).eval()
    resized = copy.deepcopy(original)
    resize_position_table(resized, 48)
    pixels = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        want = original.vision_model(pixel_values=pixels, interpolate_pos_encoding=True).pooler_output
        got = resized.vision_model(pixel_values=pixels).pooler_output
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)

    res = finetune(_cfg(src, shapes, tmp_path / "out", max_steps=3, image_resolution=48, wise_ft_alphas=[0.5, 1.0]),
                   progress=False)
    out = res.output_dir
    assert json.loads((out / "config.json").read_text())["vision_config"]["image_size"] == 48
    model = ferroclip.load_model(out, device="cpu")
    assert model.preprocessor.output_size == (48, 48)
    trained = AutoModel.from_pretrained(out).eval()
    proc = AutoImageProcessor.from_pretrained(out, backend="pil")
    from PIL import Image

    files = sorted(shapes.parent.glob("*.png"))[:3]
    with torch.no_grad():
        ref = trained.get_image_features(**proc(images=[Image.open(f) for f in files], return_tensors="pt"))
    ref = torch.nn.functional.normalize(getattr(ref, "pooler_output", ref), dim=-1).numpy()
    emb = model.encode_images([str(f) for f in files], progress=False).embeddings
    assert np.abs(emb - ref).max() < 1e-5
    if (out / "wise_ft").is_dir():  # the interpolated model is a 48 px checkpoint too
        assert ferroclip.load_model(out / "wise_ft", device="cpu").preprocessor.output_size == (48, 48)
    with pytest.raises(ConfigError, match="multiple of the model's patch size"):
        finetune(_cfg(src, shapes, tmp_path / "o2", max_steps=1, image_resolution=50), progress=False)


def test_multi_resolution_batches_draw_their_size_from_the_seed(shapes: Path, clip_dir: Path, tmp_path: Path) -> None:
    """multi_resolution: each batch at one of the sizes, drawn from (seed, epoch, batch), so
    both sizes occur, a repeated call gives the same size, and a run stopped and resumed
    ends with the uninterrupted run's weights; the model runs the other sizes with its
    position table interpolated (as transformers' interpolate_pos_encoding)."""
    from ferroclip.data import load_pairs
    from ferroclip.finetune.loader import PairLoader

    loader = PairLoader(load_pairs(str(shapes)), prepare=lambda *a: None, tokenize=lambda t: {}, batch_size=4,
                        image_hw=(32, 32), image_sizes=[16, 32, 48], seed=3)
    drawn = [loader.image_hw_of(e, i) for e in range(3) for i in range(len(loader))]
    assert set(drawn) == {(16, 16), (32, 32), (48, 48)}
    assert drawn == [loader.image_hw_of(e, i) for e in range(3) for i in range(len(loader))]

    seen: list[tuple[int, ...]] = []
    from ferroclip.finetune import towers as towers_mod

    real = towers_mod.Towers.encode_image

    def spy(self: object, pixel_values: torch.Tensor) -> torch.Tensor:
        seen.append(tuple(pixel_values.shape[-2:]))
        return real(self, pixel_values)  # type: ignore[arg-type]

    kw = dict(max_steps=6, save_steps=3, val_split=0.0, train_split=1.0, batch_size=8, augment_images=True,
              multi_resolution=[16, 48], wise_ft_alphas=[])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(towers_mod.Towers, "encode_image", spy)
        full = finetune(_cfg(clip_dir, shapes, tmp_path / "full", **kw), progress=False)
    assert {(16, 16), (48, 48)} <= set(seen)

    class Stop(Exception):
        pass

    def kill_at_4(info: object) -> None:
        if getattr(info, "step") == 4:
            raise Stop

    with pytest.raises(Stop):
        finetune(_cfg(clip_dir, shapes, tmp_path / "cut", **kw), progress=False, callbacks=[kill_at_4])
    resumed = finetune(_cfg(clip_dir, shapes, tmp_path / "cut", **kw), resume=True, progress=False)
    a, b = _weights(full.output_dir), _weights(resumed.output_dir)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6
    assert json.loads((full.output_dir / "config.json").read_text())["vision_config"]["image_size"] == 32

    with pytest.raises(ConfigError, match="patch size"):
        finetune(_cfg(clip_dir, shapes, tmp_path / "o2", max_steps=1, augment_images=True, multi_resolution=[20]),
                 progress=False)
    with pytest.raises(ConfigError, match="augment_images"):
        finetune(_cfg(clip_dir, shapes, tmp_path / "o3", max_steps=1, multi_resolution=[16, 32]), progress=False)
