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

    return save_checkpoint(
        path, build_model(arch, width=0.25), arch=arch, dataset="shapes10", num_classes=10, width=0.25, **kw
    )


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
    with pytest.raises(
        OutputError, match=r"^cannot write .*model\.pt: no space left on the device; free some"
    ):
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
            raise RuntimeError(
                "[enforce fail at inline_container.cc] PytorchStreamWriter failed writing"
            ) from exc

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OutputError, match=r"cannot write .*ck\.pt: the file system is read-only"):
        save_checkpoint(
            target,
            build_model("cifar_resnet20", width=0.25),
            arch="cifar_resnet20",
            dataset="shapes10",
            num_classes=10,
            width=0.25,
        )
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


def test_export_on_a_full_disk_is_one_line_and_keeps_the_old_file(home, capsys, tmp_path, monkeypatch):
    plan = _plan_file(tmp_path / "plan.json")
    out = tmp_path / "m.pt"
    out.write_bytes(b"keep me")
    weights = _save_tiny(tmp_path / "w.pt")
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: _full_disk(Path(f)))
    code, _, err = run_cli(
        ["export", "--plan", str(plan), *TINY, "--checkpoint", str(weights), "--out", str(out), "--force"],
        capsys,
    )
    assert_one_line_error(code, err, r"cannot write .*m\.pt: no space left on the device; free some space")
    assert out.read_bytes() == b"keep me" and not [p for p in tmp_path.iterdir() if "partial" in p.name]


def test_train_checks_its_output_before_any_training(home, capsys, tmp_path, monkeypatch):
    import engine.services

    def no_training(*args, **kwargs):
        raise AssertionError("training started before --out was checked")

    monkeypatch.setattr(engine.services, "train_baseline", no_training)
    out = tmp_path / "ck.pt"
    out.write_bytes(b"yesterday's model")
    code, _, err = run_cli(["train", "cifar_resnet20", *TINY, "--epochs", "1", "--out", str(out)], capsys)
    assert_one_line_error(code, err, r"--out .*ck\.pt already exists; pass --force")
    code, _, err = run_cli(
        ["train", "cifar_resnet20", *TINY, "--epochs", "1", "--out", str(tmp_path)], capsys
    )
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
    assert_one_line_error(
        code,
        err,
        r"holds NaN or Inf values in 2 tensors \(conv1\.weight, fc\.weight\); .*"
        r"pass --allow-nonfinite to load it anyway",
    )
    code, out, err = run_cli(
        ["info", "cifar_resnet20", *TINY, "--checkpoint", str(ck), "--allow-nonfinite", "--json"], capsys
    )
    assert code == 0 and json.loads(out)["params"] > 0
    assert err.strip().splitlines() == [err.strip()] and err.startswith("topoprune: warning: ")
    assert "NaN or Inf values in 2 tensors" in err
    assert not (home / "runs.sqlite").exists()  # info only reads: it never creates (or opens) the store


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.uint8])
def test_integer_or_bool_tensors_where_floats_belong_are_refused_naming_the_dtype(tmp_path, dtype):
    from engine.checkpoints import load_checkpoint
    from engine.errors import CheckpointError

    state = _tiny_state()
    state["conv1.weight"] = state["conv1.weight"].to(dtype)
    ck = tmp_path / "ints.pt"
    torch.save(state, ck)
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(
        CheckpointError, match=rf"tensor conv1\.weight is {name}, but the model holds float32"
    ):
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
    with pytest.raises(
        CheckpointError,
        match=r"bomb\.pt was refused: its archive declares [\d,]+ bytes of "
        r"content in a [\d,]+-byte file",
    ):
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


# ----------------------------------------------------------------------------------------------- no raw errors
@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (
            ["info", "cifar_resnet20", "--input-size", "100000"],
            r"--input-size: 100000 is outside 8\.\.1024 pixels",
        ),
        (["info", "cifar_resnet20", "--input-size", "2"], r"--input-size: 2 is outside 8\.\.1024 pixels"),
        (
            ["info", "cifar_resnet20", "--width", "1e9"],
            r"--width: width multiplier 1e\+09 is above the limit of 8",
        ),
        (["info", "cifar_resnet20", "--width", "inf"], r"--width: expected a finite number > 0, got inf"),
        (
            ["train", "cifar_resnet20", "--epochs", "0", "--out", "x.pt"],
            r"--epochs: expected a number >= 1, got 0",
        ),
        (
            ["search", "cifar_resnet20", "--method", "random", "--budget", "1.5"],
            r"budget 1\.5 is outside \(0, 1\]",
        ),
    ],
)
def test_range_errors_exit_1_in_one_line_before_any_model_is_built(home, capsys, monkeypatch, args, pattern):
    import engine.zoo

    def no_build(*a, **k):
        raise AssertionError("a model was built before the range check")

    monkeypatch.setattr(engine.zoo, "build_model", no_build)
    code, out, err = run_cli(args, capsys)
    assert out == ""
    assert_one_line_error(code, err, pattern)  # exit 1: the one rule for every range error


def test_run_ids_beyond_sqlites_range(home, capsys):
    from engine.store import UnknownRunError

    huge = str(2**64)
    for args in (["runs", huge], ["resume", huge], ["export", huge]):
        code, out, err = run_cli(args, capsys)
        assert_one_line_error(code, err, rf"run id {huge} is beyond the store's range \(1\.\.{2**63 - 1}\)")
    with RunStore() as store, pytest.raises(UnknownRunError, match=rf"no run with id {2**70}"):
        store.get_run(2**70)


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("[" * 100_000 + "]" * 100_000, r"is nested too deeply to be a TopoPrune plan"),
        ('{"keep": {"conv1": 8', r"is not valid JSON"),
        ("\udcff", r"is not a TopoPrune plan"),
    ],
)
def test_malformed_and_deeply_nested_plan_files(home, capsys, tmp_path, text, pattern):
    plan = tmp_path / "plan.json"
    plan.write_text(text, errors="surrogateescape")
    code, out, err = run_cli(["export", "--plan", str(plan), "--model", "cifar_resnet20"], capsys)
    assert out == ""
    assert_one_line_error(code, err, pattern)


@pytest.mark.parametrize(
    "limit", [300, 600]
)  # 32x32 = 1024 pixels: over 2x the limit (error), over it (warning)
def test_decompression_bomb_images_are_refused(tmp_path, monkeypatch, limit):
    from PIL import Image
    from test_cli import make_image_folder

    from engine.data import load_data
    from engine.errors import DataError

    root = make_image_folder(tmp_path / "images", classes=2, train=2, test=1)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(DataError, match=rf"was refused: it declares more pixels than PIL's limit of {limit}"):
        load_data("imagefolder", data_dir=root)


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (["prune", "cifar_resnet20", "--method", "unifrom", "--budget", "0.5"], r"did you mean 'uniform'\?"),
        (["search", "cifar_resnet20", "--method", "randon", "--budget", "0.5"], r"did you mean 'random'\?"),
        (["info", "cifar_vgg61"], r"unknown model 'cifar_vgg61': did you mean 'cifar_vgg16'\?"),
    ],
)
def test_near_miss_names_get_a_suggestion(home, capsys, args, pattern):
    code, _, err = run_cli(args, capsys)
    assert_one_line_error(code, err, pattern)


def test_a_second_ctrl_c_while_marking_the_run_exits_130_in_one_line(home, capsys, monkeypatch):
    import engine.cli.model_cmds as model_cmds
    from engine.cli import main
    from engine.cli.context import CommandContext

    def interrupted(ctx):
        ctx.active_run_id = 1
        raise KeyboardInterrupt

    def interrupted_again(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(model_cmds, "cmd_info", interrupted)
    monkeypatch.setattr(CommandContext, "mark_interrupted", interrupted_again)
    monkeypatch.setattr(CommandContext, "close", interrupted_again)
    assert main(["info", "cifar_resnet20"]) == 130
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == ["topoprune: interrupted again; stopped at once"]


def test_runs_reads_the_store_without_writing_it(home, capsys):
    import hashlib
    import subprocess
    import sys

    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    with RunStore() as store:
        run_id = store.create_run(method="random", model="cifar_resnet20", dataset="shapes10")
    con = sqlite3.connect(str(home / "runs.sqlite"))
    with con:  # a run whose process has died: a writable open would mark it interrupted
        con.execute("UPDATE runs SET pid = ?, pid_start = NULL WHERE id = ?", (int(gone.stdout), run_id))
    con.close()
    before = hashlib.sha256((home / "runs.sqlite").read_bytes()).hexdigest()
    listing = run_json(["runs"], capsys)
    shown = run_json(["runs", str(run_id)], capsys)
    assert [r["status"] for r in listing["runs"]] == ["interrupted"] == [shown["run"]["status"]]
    assert hashlib.sha256((home / "runs.sqlite").read_bytes()).hexdigest() == before
    with RunStore(mark_interrupted=False) as store:
        assert store.get_run(run_id).status == "running"  # nothing was written by `runs`


# ----------------------------------------------------------------------------------------------- item 5: tests that
# fail when their protection is removed
def test_a_torchscript_archive_is_refused_by_name(home, capsys, tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(torch.nn.Linear(2, 2))
    path = tmp_path / "scripted.pt"
    torch.jit.save(scripted, str(path))
    code, _, err = run_cli(["info", "cifar_resnet20", *TINY, "--checkpoint", str(path)], capsys)
    assert_one_line_error(
        code,
        err,
        r"scripted\.pt was refused: it is a TorchScript archive, which runs code when "
        r"loaded and cannot be pruned; save the weights with torch\.save",
    )


def test_a_shipped_checkpoint_that_still_loads_but_differs_fails_its_sha256(tmp_path, monkeypatch):
    import shutil

    import engine.checkpoints as checkpoints
    from engine.errors import CheckpointError

    assets = Path(checkpoints.assets_dir())
    entry = checkpoints.read_manifest()["models"]["cifar_resnet20"]
    fake = tmp_path / "assets"
    fake.mkdir()
    shutil.copy(assets / checkpoints.MANIFEST_NAME, fake / checkpoints.MANIFEST_NAME)
    saved = torch.load(assets / entry["file"], weights_only=True)
    saved["state_dict"]["conv1.weight"].mul_(-1.0)  # a valid checkpoint, other weights: only the sha256 tells
    torch.save(saved, fake / entry["file"])
    monkeypatch.setattr(checkpoints, "assets_dir", lambda: fake)
    with pytest.raises(
        CheckpointError, match=r"cifar_resnet20\.pt does not match its sha256 in the manifest"
    ):
        checkpoints.load_shipped("cifar_resnet20")
    assert (
        checkpoints.load_shipped("cifar_resnet20", verify=False).model is not None
    )  # it does load otherwise


def test_a_read_waits_for_a_write_in_flight_on_the_shared_connection(tmp_path):
    with RunStore(tmp_path / "runs.sqlite") as store:
        run_id = store.create_run(method="random", model="cifar_resnet20", dataset="shapes10")
        inside, seen = threading.Event(), []

        def write_then_roll_back():
            with pytest.raises(RuntimeError), store._write() as conn:
                conn.execute(
                    "INSERT INTO episodes (run_id, idx, plan, extra, created_at) VALUES (?, 0, 'null', "
                    "'{}', 'now')",
                    (run_id,),
                )
                inside.set()
                time.sleep(0.4)
                raise RuntimeError("the write fails")

        writer = threading.Thread(target=write_then_roll_back)
        writer.start()
        inside.wait(5)
        seen.append(
            len(store.episodes(run_id))
        )  # must not see the uncommitted row through the shared connection
        writer.join()
        assert seen == [0] and store.episodes(run_id) == []


def test_a_store_damaged_inside_a_table_is_refused_on_open(tmp_path):
    from engine.store import StoreCorruptError

    path = tmp_path / "runs.sqlite"
    with RunStore(path) as store:
        run_id = store.create_run(method="m", model="x", dataset="d")
        for i in range(200):
            store.add_episode(run_id, reward=float(i), plan={"keep": {"g": "x" * 400}})
    data = bytearray(path.read_bytes())
    page = 4096
    pages = len(data) // page
    for n in range(pages - 8, pages - 2):  # episode pages only: opening reads the schema and the runs table
        data[n * page : n * page + 16] = b"\xff" * 16
    path.write_bytes(bytes(data))
    detail = r"(integrity check|database disk image is malformed)"  # quick_check's rows, or its own error
    with pytest.raises(StoreCorruptError, match=rf"runs\.sqlite is corrupt \({detail}"):
        RunStore(path)


def test_load_pruned_refuses_an_inflating_archive(tmp_path):
    from engine.errors import CheckpointError
    from engine.pruning import PruningPlan, load_pruned
    from engine.zoo import build_model

    model = build_model("cifar_resnet20", width=0.25)
    state = dict(model.state_dict())
    state["pad"] = torch.zeros(16 << 20, dtype=torch.uint8)
    plain = tmp_path / "plain.pt"
    torch.save(state, plain)
    bomb = _deflated_copy(plain, tmp_path / "pruned.pt")
    with pytest.raises(CheckpointError, match=r"pruned\.pt was refused: its archive declares"):
        load_pruned(
            model, None, PruningPlan(model="cifar_resnet20", keep={}), bomb
        )  # refused before the topology


def test_a_long_lock_delays_a_run_update_too(tmp_path):
    path = tmp_path / "runs.sqlite"
    with RunStore(path, timeout_s=0.1, retry_s=20) as store:
        run_id = store.create_run(method="random", model="cifar_resnet20", dataset="shapes10")
        holder = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        holder.execute("BEGIN IMMEDIATE")
        release = threading.Timer(0.5, lambda: holder.execute("COMMIT"))
        release.start()
        try:
            store.update_run(run_id, extra={"state": "saved"})
        finally:
            release.join()
            holder.close()
        assert store.get_run(run_id).extra["state"] == "saved"
