"""Multi-process fine-tuning (torchrun, gloo on CPU): N ranks x batch b == 1 process x N·b."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
if not torch.distributed.is_available():
    pytest.skip("this torch has no torch.distributed", allow_module_level=True)

from ferroclip.finetune import FinetuneConfig, finetune  # noqa: E402

from ._captions import shapes_dataset  # noqa: E402
from ._models import tiny_clip, tiny_siglip  # noqa: E402

REPO_PYTHON = str(Path(__file__).resolve().parents[1])


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ddp")
    return {"data": shapes_dataset(root / "shapes", limit=48), "clip": tiny_clip(root / "clip", image_size=32),
            "siglip": tiny_siglip(root / "siglip", image_size=32)}


def _yaml(path: Path, model: Path, data: Path, batch: int, **extra: object) -> Path:
    body = dict(model_name=str(model), data_path=str(data), batch_size=batch, learning_rate=1e-4, warmup_steps=1,
                train_split=1.0, val_split=0.0, test_split=0.0, weight_decay=0.0, num_workers=1, augment_images=True,
                crop_scale=[0.8, 1.0], logging_steps=1, wise_ft_alphas=[], max_steps=3, device="cpu")
    body.update(extra)
    path.write_text("\n".join(f"{k}: {v!r}" if isinstance(v, str) else f"{k}: {v}" for k, v in body.items()) + "\n")
    return path


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH")])))
    return env


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path / "model.safetensors"))


def _relative_gap(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], init: dict[str, torch.Tensor]) -> float:
    """|a - b| over the size of the update itself, for the whole model."""
    num = sum(float((a[k] - b[k]).double().pow(2).sum()) for k in a)
    den = sum(float((a[k] - init[k]).double().pow(2).sum()) for k in a)
    assert den > 0
    return (num / den) ** 0.5


@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_two_gloo_ranks_equal_one_process_with_the_global_batch(family: str, setup: dict[str, Path], tmp_path: Path) -> None:
    model, data = setup[family], setup["data"]
    torch.set_num_threads(1)
    one = finetune(FinetuneConfig.from_yaml(_yaml(tmp_path / "one.yaml", model, data, 16)), progress=False)
    two_yaml = _yaml(tmp_path / "two.yaml", model, data, 8)
    r = subprocess.run([sys.executable, "-m", "ferroclip", "finetune", str(two_yaml), "--nproc", "2", "--quiet"],
                       capture_output=True, text=True, env=_env(), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    two = tmp_path / "outputs" / "two"
    a, b = _weights(one.output_dir), _weights(two)
    assert a.keys() == b.keys()
    gap = _relative_gap(a, b, _weights(model))
    print(f"{family}: relative gap {gap:.2e}, max abs {max((a[k] - b[k]).abs().max().item() for k in a):.2e}")
    assert gap < 1e-3, gap
    import json

    hist = json.loads((two / "history.json").read_text())
    assert [h["loss"] for h in hist] == pytest.approx([h["loss"] for h in one.history], rel=1e-4)
    metrics = json.loads((two / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["contrastive_batch"] == 16 and metrics["batch_size"] == 8


STOPPER = """
import sys
from ferroclip.finetune import FinetuneConfig, finetune

class Stop(Exception):
    pass

def stop(info):
    if info.step == int(sys.argv[2]):
        raise Stop
try:
    finetune(FinetuneConfig.from_yaml(sys.argv[1]), progress=False, callbacks=[stop])
except Stop:
    sys.exit(3)
"""


def test_resumed_two_rank_run_equals_the_uninterrupted_one(setup: dict[str, Path], tmp_path: Path) -> None:
    model, data = setup["clip"], setup["data"]
    full = _yaml(tmp_path / "full.yaml", model, data, 8, max_steps=4, save_steps=2)
    cut = _yaml(tmp_path / "cut.yaml", model, data, 8, max_steps=4, save_steps=2)
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    r = subprocess.run([*run, "-m", "ferroclip", "finetune", str(full), "--quiet"], capture_output=True, text=True,
                       env=_env(), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    script = tmp_path / "stopper.py"
    script.write_text(STOPPER)
    r = subprocess.run([*run, str(script), str(cut), "3"], capture_output=True, text=True, env=_env(), timeout=600)
    assert r.returncode != 0  # both ranks stopped at step 3, after checkpoint-2
    assert (tmp_path / "outputs" / "cut" / "checkpoint-2").is_dir()
    assert not (tmp_path / "outputs" / "cut" / "model.safetensors").exists()
    r = subprocess.run([*run, "-m", "ferroclip", "finetune", str(cut), "--resume", "--quiet"], capture_output=True,
                       text=True, env=_env(), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = _weights(tmp_path / "outputs" / "full"), _weights(tmp_path / "outputs" / "cut")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6


def test_two_ranks_validate_on_shares_with_the_single_process_metrics(setup: dict[str, Path], tmp_path: Path) -> None:
    """Each rank embeds half of the validation images and captions; the all-gathered Recall@K
    (base model and every evaluation) equals the single process's on the whole set. The
    eval batch (3) does not divide a rank's share, so the padded, trimmed gather is exercised."""
    import json

    model, data = setup["clip"], setup["data"]
    torch.set_num_threads(1)
    extra = dict(train_split=0.7, val_split=0.3, eval_steps=1, eval_batch_size=3)
    one = finetune(FinetuneConfig.from_yaml(_yaml(tmp_path / "one.yaml", model, data, 16, **extra)), progress=False)
    two_yaml = _yaml(tmp_path / "two.yaml", model, data, 8, **extra)
    r = subprocess.run([sys.executable, "-m", "ferroclip", "finetune", str(two_yaml), "--nproc", "2", "--quiet"],
                       capture_output=True, text=True, env=_env(), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    two = tmp_path / "outputs" / "two"
    metrics = json.loads((two / "metrics.json").read_text())
    assert metrics["base"] == pytest.approx(one.metrics["base"], abs=1e-9)
    val = lambda hist: [h for h in hist if "val_r1" in h]  # noqa: E731
    got, want = val(json.loads((two / "history.json").read_text())), val(one.history)
    assert len(want) == 3 and [h["step"] for h in got] == [h["step"] for h in want]
    for g, w in zip(got, want):
        assert g == pytest.approx(w, abs=1e-9)
    assert metrics["best"]["step"] == one.metrics["best"]["step"]


SHARDED_EVAL = """
import json, sys
import numpy as np
import torch
from ferroclip.finetune.distributed import from_env
from ferroclip.finetune.evaluate import EvalSet, evaluate_retrieval

class Towers(torch.nn.Module):  # fixed random towers that count the rows they embed
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = torch.randn(3 * 4 * 4, 8, generator=g)
        self.e = torch.randn(50, 8, generator=g)
        self.rows = {"image": 0, "text": 0}
    def encode_image(self, x):
        self.rows["image"] += len(x)
        return x.flatten(1) @ self.w
    def encode_text(self, ids, mask):
        self.rows["text"] += len(ids)
        return (self.e[ids] * mask[..., None]).sum(1)

rng = np.random.default_rng(1)
n_img, n_txt = 13, 21  # neither divides by the ranks or the batch: uneven, padded shares
data = EvalSet(pixel_values=rng.standard_normal((n_img, 3, 4, 4)).astype(np.float32),
               tokens={"input_ids": rng.integers(0, 50, (n_txt, 5)), "attention_mask": np.ones((n_txt, 5), np.int64)},
               text_to_image=np.arange(n_txt) % n_img,
               labels=np.arange(n_img) % 3, class_tokens={"input_ids": rng.integers(0, 50, (6, 5)),
                                                          "attention_mask": np.ones((6, 5), np.int64)}, num_templates=2)
ctx = from_env(torch.device("cpu"))
towers = Towers()
sharded = evaluate_retrieval(towers, data, device=torch.device("cpu"), batch_size=4, dist=ctx)
rows = dict(towers.rows)
full = evaluate_retrieval(Towers(), data, device=torch.device("cpu"), batch_size=4)
json.dump({"sharded": sharded, "full": full, "rows": rows}, open(f"{sys.argv[1]}.{ctx.rank}.json", "w"))
"""


def test_sharded_evaluation_embeds_each_rows_once_across_ranks(tmp_path: Path) -> None:
    """Each of 2 ranks embeds only its share (13 images, 21 captions + 6 prompts split
    unevenly) and gets exactly the single-process Recall@K and zero-shot accuracy."""
    import json

    script = tmp_path / "sharded_eval.py"
    script.write_text(SHARDED_EVAL)
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
                        str(tmp_path / "out")], capture_output=True, text=True, env=_env(), timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"out.{i}.json").read_text()) for i in range(2)]
    assert [d["rows"]["image"] for d in ranks] == [6, 7]
    assert [d["rows"]["text"] for d in ranks] == [10 + 3, 11 + 3]  # captions + class prompts
    for d in ranks:
        assert set(d["sharded"]) == set(d["full"]) and "zero_shot_acc" in d["full"]
        assert d["sharded"] == pytest.approx(d["full"], abs=1e-12)
