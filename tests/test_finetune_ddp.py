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
