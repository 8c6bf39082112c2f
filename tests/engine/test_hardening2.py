"""Hardening, round two (issue 17): nothing lost, nothing silent, no raw errors, resource limits.

Each test fails when the protection it covers is removed: a failed write keeps the old file, a held lock delays
an episode write, bad weights are refused before loading, an inflating archive is refused before reading.
"""

from __future__ import annotations

import errno
import json
import sqlite3
import threading
import time
from pathlib import Path

import pytest
import torch
from test_cli import TINY, assert_one_line_error, one_torch_thread, run_cli, run_json  # noqa: F401

from engine.outputs import OutputError, write_atomic
from engine.store import RunStore


@pytest.fixture
def home(tmp_path, monkeypatch):
    path = tmp_path / "home"
    path.mkdir()
    monkeypatch.setenv("TOPOPRUNE_HOME", str(path))
    monkeypatch.chdir(tmp_path)
    return path


def _save_tiny(path: Path, arch: str = "cifar_resnet20", **kw) -> Path:
    from engine.checkpoints import save_checkpoint
    from engine.zoo import build_model

    return save_checkpoint(path, build_model(arch, width=0.25), arch=arch, dataset="shapes10", num_classes=10,
                           width=0.25, **kw)


def _plan_file(path: Path, model: str = "cifar_resnet20") -> Path:
    from engine.pruning import PruningPlan

    path.write_text(PruningPlan(model=model, keep={}).to_json())
    return path


# ----------------------------------------------------------------------------------------------- no data lost
def _full_disk(tmp: Path) -> None:
    tmp.write_bytes(b"half a file")
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_write_keeps_the_old_file_and_leaves_no_partial(tmp_path):
    target = tmp_path / "model.pt"
    target.write_bytes(b"the previous model")
    with pytest.raises(OutputError, match=r"^cannot write .*model\.pt: no space left on the device; free some"):
        write_atomic(target, _full_disk)
    assert target.read_bytes() == b"the previous model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_save_checkpoint_is_atomic_when_torch_save_fails(tmp_path, monkeypatch):
    from engine.checkpoints import save_checkpoint
    from engine.zoo import build_model

    target = _save_tiny(tmp_path / "ck.pt")
    before = target.read_bytes()

    def failing_save(obj, f, *args, **kwargs):  # torch.save's zip writer wraps the OSError in a RuntimeError
        Path(f).write_bytes(b"PK truncated")
        try:
            raise OSError(errno.EROFS, "Read-only file system")
        except OSError as exc:
            raise RuntimeError("[enforce fail at inline_container.cc] PytorchStreamWriter failed writing") from exc

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OutputError, match=r"cannot write .*ck\.pt: the file system is read-only"):
        save_checkpoint(target, build_model("cifar_resnet20", width=0.25), arch="cifar_resnet20",
                        dataset="shapes10", num_classes=10, width=0.25)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt"]


def test_export_refuses_to_overwrite_without_force_and_a_folder_always(home, capsys, tmp_path):
    plan = _plan_file(tmp_path / "plan.json")
    out = tmp_path / "m.pt"
    out.write_bytes(b"keep me")
    base = ["export", "--plan", str(plan), *TINY, "--format", "state_dict"]
    code, _, err = run_cli([*base, "--out", str(out)], capsys)
    assert_one_line_error(code, err, r"--out .*m\.pt already exists; pass --force to replace it")
    assert out.read_bytes() == b"keep me"
    code, _, err = run_cli([*base, "--out", str(tmp_path)], capsys)
    assert_one_line_error(code, err, r"--out .* is a folder; give a file name inside it")
    result = run_json([*base, "--out", str(out), "--force"], capsys)
    assert Path(result["path"]) == out.resolve() and out.read_bytes() != b"keep me"
    assert isinstance(torch.load(out, weights_only=True), dict)
    assert not [p for p in tmp_path.iterdir() if "partial" in p.name]


def test_train_checks_its_output_before_any_training(home, capsys, tmp_path, monkeypatch):
    import engine.services

    def no_training(*args, **kwargs):
        raise AssertionError("training started before --out was checked")

    monkeypatch.setattr(engine.services, "train_baseline", no_training)
    out = tmp_path / "ck.pt"
    out.write_bytes(b"yesterday's model")
    code, _, err = run_cli(["train", "cifar_resnet20", *TINY, "--epochs", "1", "--out", str(out)], capsys)
    assert_one_line_error(code, err, r"--out .*ck\.pt already exists; pass --force")
    code, _, err = run_cli(["train", "cifar_resnet20", *TINY, "--epochs", "1", "--out", str(tmp_path)], capsys)
    assert_one_line_error(code, err, r"is a folder")
    assert out.read_bytes() == b"yesterday's model"


def test_prune_checks_its_output_folder_and_store_before_any_work(home, capsys, tmp_path, monkeypatch):
    import engine.cli.context as context

    def no_data(self):
        raise AssertionError("data loaded before --out was checked")

    monkeypatch.setattr(context.CommandContext, "data", no_data)
    out = tmp_path / "pruned"
    out.mkdir()
    (out / "plan.json").write_text("{}")
    args = ["prune", "cifar_resnet20", *TINY, "--method", "uniform", "--budget", "0.5"]
    code, _, err = run_cli([*args, "--out", str(out)], capsys)
    assert_one_line_error(code, err, r"plan\.json already exists; pass --force")
    code, _, err = run_cli([*args, "--out", str(out / "plan.json")], capsys)
    assert_one_line_error(code, err, r"is a file, not a folder")
    (home / "runs.sqlite").write_bytes(b"not a database at all" * 300)
    code, _, err = run_cli([*args, "--out", str(tmp_path / "new")], capsys)
    assert_one_line_error(code, err, r"runs\.sqlite is corrupt")
    assert (out / "plan.json").read_text() == "{}" and not (tmp_path / "new").exists()


def test_an_episode_write_waits_out_a_lock_held_past_the_busy_timeout(tmp_path):
    path = tmp_path / "runs.sqlite"
    with RunStore(path, timeout_s=0.1, retry_s=20) as store:
        run_id = store.create_run(method="random", model="cifar_resnet20", dataset="shapes10")
        holder = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock for 6 busy timeouts
        release = threading.Timer(0.6, lambda: holder.execute("COMMIT"))
        release.start()
        try:
            start = time.monotonic()
            index = store.add_episode(run_id, reward=1.0, val_acc=50.0)
            waited = time.monotonic() - start
        finally:
            release.join()
            holder.close()
        assert index == 0 and waited >= 0.5
        assert [e.val_acc for e in store.episodes(run_id)] == [50.0]


def test_the_readme_states_the_overwrite_rule():
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "--force" in readme and "never overwrit" in readme.lower()


# ----------------------------------------------------------------------------------------------- nothing silent
def _tiny_state() -> dict[str, torch.Tensor]:
    from engine.zoo import build_model

    return build_model("cifar_resnet20", width=0.25).state_dict()


def test_weights_with_nan_or_inf_are_refused_unless_allowed(home, capsys, tmp_path):
    state = _tiny_state()
    state["conv1.weight"][0, 0, 0, 0] = float("nan")
    state["fc.weight"][0, 0] = float("inf")
    ck = tmp_path / "diverged.pt"
    torch.save(state, ck)
    code, _, err = run_cli(["info", "cifar_resnet20", *TINY, "--checkpoint", str(ck)], capsys)
    assert_one_line_error(code, err, r"holds NaN or Inf values in 2 tensors \(conv1\.weight, fc\.weight\); .*"
                                     r"pass --allow-nonfinite to load it anyway")
    code, out, err = run_cli(["info", "cifar_resnet20", *TINY, "--checkpoint", str(ck), "--allow-nonfinite",
                              "--json"], capsys)
    assert code == 0 and json.loads(out)["params"] > 0
    assert err.strip().splitlines() == [err.strip()] and err.startswith("topoprune: warning: ")
    assert "NaN or Inf values in 2 tensors" in err


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.uint8])
def test_integer_or_bool_tensors_where_floats_belong_are_refused_naming_the_dtype(tmp_path, dtype):
    from engine.checkpoints import load_checkpoint
    from engine.errors import CheckpointError

    state = _tiny_state()
    state["conv1.weight"] = state["conv1.weight"].to(dtype)
    ck = tmp_path / "ints.pt"
    torch.save(state, ck)
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(CheckpointError, match=rf"tensor conv1\.weight is {name}, but the model holds float32"):
        load_checkpoint(ck, arch="cifar_resnet20", width=0.25)


# ----------------------------------------------------------------------------------------------- resource limits
def _deflated_copy(src: Path, dst: Path) -> Path:
    import zipfile

    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename), compress_type=zipfile.ZIP_DEFLATED)
    return dst


def test_a_compressed_checkpoint_is_refused_before_it_inflates(tmp_path, monkeypatch):
    from engine.checkpoints import load_checkpoint
    from engine.errors import CheckpointError

    state = _tiny_state()
    state["fc.bias"] = torch.zeros(16 << 20, dtype=torch.uint8)  # 16 MiB of zeros deflate to ~16 KiB
    plain = tmp_path / "plain.pt"
    torch.save(state, plain)
    bomb = _deflated_copy(plain, tmp_path / "bomb.pt")
    plain.unlink()
    assert bomb.stat().st_size < 2 << 20

    def no_load(*args, **kwargs):
        raise AssertionError("torch.load ran on an inflating archive")

    monkeypatch.setattr(torch, "load", no_load)
    with pytest.raises(CheckpointError, match=r"bomb\.pt was refused: its archive declares [\d,]+ bytes of "
                                              r"content in a [\d,]+-byte file"):
        load_checkpoint(bomb, arch="cifar_resnet20", width=0.25)


def test_a_large_stored_checkpoint_is_mapped_not_read_before_its_shapes_are_checked(tmp_path, monkeypatch):
    from engine.checkpoints import load_checkpoint
    from engine.errors import CheckpointError

    state = _tiny_state()
    state["fc.weight"] = torch.zeros(4096, 4096)  # 64 MiB where the architecture has 10 x 64
    ck = tmp_path / "big.pt"
    torch.save(state, ck)
    calls = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: calls.append(k.get("mmap")) or real_load(*a, **k))
    with pytest.raises(CheckpointError, match=r"shape mismatches .*fc\.weight: checkpoint \(4096, 4096\)"):
        load_checkpoint(ck, arch="cifar_resnet20", width=0.25)
    assert calls == [True]
