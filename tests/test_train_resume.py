"""Heads training interrupted after epoch k and resumed equals the run never interrupted."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from ferroclip.errors import ConfigError  # noqa: E402
from ferroclip.train import HeadsConfig, split_images, train_heads  # noqa: E402
from ferroclip.train.data import PairedEmbeddings  # noqa: E402

from ._train_data import planted  # noqa: E402


@pytest.fixture(scope="module")
def parts():
    data = planted(n_images=120, noise=0.8, seed=3)
    split = split_images(data, val=0.25, test=0.0, seed=0)
    return split.part(data, "train"), split.part(data, "val")


def _cfg(head: str, loss: str, epochs: int = 6, **training) -> HeadsConfig:
    return HeadsConfig.from_dict({
        # dropout > 0: the resumed run must draw the same dropout masks
        "model": {"type": head, "output_dim": 16, "hidden_dim": 32, "num_heads": 2, "num_layers": 1,
                  "num_tokens": 2, "dropout": 0.3},
        "loss": {"type": loss, "queue_size": 40},
        "training": {"batch_size": 16, "learning_rate": 3e-3, "num_epochs": epochs, "patience": 50,
                     "progress": False, "device": "cpu", "monitor": "val_r1", "num_threads": 1, **training},
    })


class Interrupt(Exception):
    pass


def _stop_after(k: int):
    def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
        if epoch == k:
            raise Interrupt(f"stopped after epoch {k}")
    return on_epoch


def _assert_same_run(a, b) -> None:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        # Same ops on the same inputs in the same order on the CPU: equal to the bit.
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)
    assert a.history == b.history
    assert (a.best_epoch, a.best_metrics, a.stopped_early) == (b.best_epoch, b.best_metrics, b.stopped_early)


@pytest.mark.parametrize(("head", "loss"), [("mlp", "infonce"), ("mlp", "queue_infonce"),
                                            ("cross_modal", "momentum_distill"), ("siglip", "sigmoid")])
def test_interrupted_then_resumed_equals_uninterrupted(parts, tmp_path, head, loss):
    train, val = parts
    cfg = _cfg(head, loss)
    whole = train_heads(cfg, train, val, out_dir=tmp_path / "whole", plots=False)
    out = tmp_path / "cut"
    with pytest.raises(Interrupt):
        train_heads(cfg, train, val, out_dir=out, plots=False, on_epoch=_stop_after(2))
    saved = json.loads((out / "resume" / "epoch-0002" / "state.json").read_text())
    assert saved["epoch"] == 2 and len(saved["history"]) == 2 and not saved["finished"]
    # The caller's global RNG is untouched by either run, so drawing here cannot help them agree.
    torch.manual_seed(12345)
    resumed = train_heads(cfg, train, val, out_dir=out, plots=False, resume=True)
    _assert_same_run(whole, resumed)
    assert json.loads((out / "loss_history.json").read_text()) == whole.history
    # The best checkpoint on disk is the one the uninterrupted run wrote.
    assert (out / "model.safetensors").read_bytes() == (tmp_path / "whole" / "model.safetensors").read_bytes()


def test_resume_across_early_stopping_and_of_a_finished_run(parts, tmp_path):
    train, val = parts
    cfg = _cfg("mlp", "infonce", epochs=30, patience=2, monitor="val_loss", learning_rate=0.05)
    whole = train_heads(cfg, train, val, plots=False)
    assert whole.stopped_early and len(whole.history) > 3
    k = len(whole.history) - 2  # interrupted during the patience window
    with pytest.raises(Interrupt):
        train_heads(cfg, train, val, out_dir=tmp_path, plots=False, on_epoch=_stop_after(k))
    resumed = train_heads(cfg, train, val, out_dir=tmp_path, plots=False, resume=True)
    _assert_same_run(whole, resumed)
    # A finished run resumed again trains nothing and returns the same result.
    again = train_heads(cfg, train, val, out_dir=tmp_path, plots=False, resume=True, on_epoch=_stop_after(-1))
    _assert_same_run(whole, again)


def test_corrupt_or_partial_checkpoints_are_passed_over(parts, tmp_path, caplog):
    train, val = parts
    cfg = _cfg("mlp", "queue_infonce")
    whole = train_heads(cfg, train, val, plots=False)
    with pytest.raises(Interrupt):
        train_heads(cfg, train, val, out_dir=tmp_path, plots=False, on_epoch=_stop_after(3))
    root = tmp_path / "resume"
    assert sorted(p.name for p in root.iterdir()) == ["epoch-0002", "epoch-0003"]  # the two newest kept
    blob = bytearray((root / "epoch-0003" / "state.safetensors").read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # epoch 3's tensors altered after the fact
    (root / "epoch-0003" / "state.safetensors").write_bytes(bytes(blob))
    # what a kill during a save leaves: a temp folder, and a folder without its JSON
    shutil.copytree(root / "epoch-0002", root / ".epoch-0004.x1y2.tmp")
    (root / "epoch-0005").mkdir()
    (root / "epoch-0005" / "state.safetensors").write_bytes(b"partial")
    with caplog.at_level(logging.WARNING, logger="ferroclip.train.resume"):
        resumed = train_heads(cfg, train, val, out_dir=tmp_path, plots=False, resume=True)
    skipped = " ".join(r.getMessage() for r in caplog.records)
    assert "epoch-0005" in skipped and "epoch-0003" in skipped and "does not match" in skipped
    _assert_same_run(whole, resumed)  # continued from epoch 2, the newest intact one


def test_changed_config_or_data_refuses_to_resume(parts, tmp_path):
    train, val = parts
    cfg = _cfg("mlp", "infonce")
    with pytest.raises(Interrupt):
        train_heads(cfg, train, val, out_dir=tmp_path, plots=False, on_epoch=_stop_after(2))
    changed = _cfg("mlp", "infonce", learning_rate=1e-2)
    with pytest.raises(ConfigError, match=r"config changed.*training\.learning_rate: 0\.003 -> 0\.01"):
        train_heads(changed, train, val, out_dir=tmp_path, plots=False, resume=True)
    longer = _cfg("mlp", "infonce", epochs=7)  # the LR schedule spans all epochs: not the same run
    with pytest.raises(ConfigError, match="num_epochs"):
        train_heads(longer, train, val, out_dir=tmp_path, plots=False, resume=True)
    other = PairedEmbeddings(train.images[::-1].copy(), train.texts, train.image_ids, train.text_to_image)
    with pytest.raises(ConfigError, match="embeddings differ"):
        train_heads(cfg, other, val, out_dir=tmp_path, plots=False, resume=True)
    # progress and thread count do not change the run: allowed
    quiet = _cfg("mlp", "infonce", num_threads=2)
    train_heads(quiet, train, val, out_dir=tmp_path, plots=False, resume=True)


def test_fresh_run_discards_old_checkpoints_and_resume_needs_out_dir(parts, tmp_path):
    train, val = parts
    with pytest.raises(Interrupt):
        train_heads(_cfg("mlp", "infonce"), train, val, out_dir=tmp_path, plots=False, on_epoch=_stop_after(4))
    other = _cfg("siglip", "sigmoid", epochs=3)
    with pytest.raises(Interrupt):
        train_heads(other, train, val, out_dir=tmp_path, plots=False, on_epoch=_stop_after(1))
    assert sorted(p.name for p in (tmp_path / "resume").iterdir()) == ["epoch-0001"]
    train_heads(other, train, val, out_dir=tmp_path, plots=False, resume=True)  # not refused: old run gone
    with pytest.raises(ConfigError, match="out_dir"):
        train_heads(other, train, val, resume=True)


def test_cli_resume_flag_reaches_the_trainer(monkeypatch, tmp_path):
    from ferroclip.train import cli

    seen = {}

    def fake(cfg, train, val, *, out_dir, resume):
        seen["resume"] = resume
        raise Interrupt

    monkeypatch.setattr("ferroclip.train.trainer.train_heads", fake)
    monkeypatch.setattr(cli, "_data_and_split", lambda cfg: (None, type("S", (), {"part": lambda *a: None})()))
    (tmp_path / "c.yaml").write_text(f"output_dir: {tmp_path / 'o'}\n")
    import argparse

    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    args = parser.parse_args(["heads", "train", str(tmp_path / "c.yaml"), "--resume"])
    with pytest.raises(Interrupt):
        args.func(args)
    assert seen == {"resume": True}
