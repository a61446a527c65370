"""Checkpoints: our format round-trips, loading never runs code, imports are strict, writes are
atomic."""

import os
import pathlib
import pickle
import stat

import pytest
import torch

from bmtard.core.errors import BmtardError, CheckpointError
from bmtard.core.io import remove_stale_temporaries, sha256_file, write_atomic, write_json
from bmtard.models import build_model
from bmtard.models.checkpoint import (
    FORMAT,
    CheckpointInfo,
    ModelSpec,
    TrainingRecord,
    check_fits_data,
    check_role,
    extract_state_dict,
    import_state_dict,
    load_model,
    role_of,
    save_model,
)

ARCH, CLASSES, WIDTH = "resnet18", 10, 0.125
SPEC = ModelSpec(ARCH, WIDTH, CLASSES)


def _save(path, model, width: float = WIDTH, record: TrainingRecord | None = None) -> None:
    save_model(
        path, ModelSpec(ARCH, width, CLASSES), model.state_dict(), record or TrainingRecord()
    )


def _model(width: float = WIDTH, arch: str = ARCH, seed: int = 0) -> torch.nn.Module:
    """A tiny model whose BN buffers are not at their defaults (one train-mode forward)."""
    torch.manual_seed(seed)
    model = build_model(arch, CLASSES, width)
    model.train()
    with torch.no_grad():
        model(torch.rand(4, 3, 32, 32))
    return model.eval()


def _fixed_input() -> torch.Tensor:
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(123))


def _assert_same_state(a: dict, b: dict) -> None:
    assert list(a) == list(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert torch.equal(a[k], b[k]), k


class Marker:
    """Unpickling this touches ``path``: a stand-in for code run by a malicious checkpoint."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (self.path,))


class Opaque:
    """An arbitrary class instance; weights_only loading must refuse it."""

    def __init__(self) -> None:
        self.value = 3


# --------------------------------------------------------------------------- round trip


def test_save_load_round_trip(tmp_path):
    model = _model()
    assert int(model.state_dict()["bn1.num_batches_tracked"]) == 1  # buffers are non-default
    path = tmp_path / "sub" / "m.pt"  # the folder is created
    record = TrainingRecord(
        stage="test",
        method="standard",
        epoch=3,
        selection="best",
        selected_metrics={"clean_acc": 12.5},
        params={"xs": [1, 2]},
        data={"train": {"sha256": "ab" * 32}},
        teachers={"clean": {"arch": "resnet56", "sha256": "cd" * 32}},
        code={"package_sha256": "ef" * 32, "git_commit": None, "git_dirty": None},
    )
    _save(path, model, record=record)

    loaded, info = load_model(path)
    assert not loaded.training
    _assert_same_state(model.state_dict(), loaded.state_dict())
    x = _fixed_input()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert info == CheckpointInfo(SPEC, sha256_file(path), record)
    assert len(info.sha256) == 64
    assert sorted(os.listdir(path.parent)) == ["m.pt"]


def test_identical_saves_are_identical_bytes(tmp_path):
    """The temporary's random name never ends up inside the archive."""
    model = _model()
    for name in ("a.pt", "b.pt"):
        _save(tmp_path / name, model, record=TrainingRecord(epoch=2))
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()


def test_older_format_with_meta_still_loads(tmp_path):
    path = tmp_path / "v1.pt"
    model = _model()
    torch.save(
        {
            "format": "bmtard.model/1",
            "arch": ARCH,
            "width": WIDTH,
            "num_classes": CLASSES,
            "state_dict": model.state_dict(),
            "meta": {"stage": "distill", "epoch": 4, "unknown_field": 1},
        },
        path,
    )
    _, info = load_model(path)
    assert info.record == TrainingRecord(stage="distill", epoch=4)


def test_saved_file_holds_only_plain_data(tmp_path):
    path = tmp_path / "m.pt"
    _save(path, _model())
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT and raw["record"]["stage"] is None
    assert isinstance(raw["width"], float) and isinstance(raw["num_classes"], int)
    assert all(isinstance(v, torch.Tensor) for v in raw["state_dict"].values())


def test_save_detaches_from_the_live_model(tmp_path):
    model = _model()
    path = tmp_path / "m.pt"
    _save(path, model)
    before = model.state_dict()["linear.weight"].clone()
    with torch.no_grad():
        model.linear.weight.add_(1.0)  # changing the model afterwards does not touch the file
    loaded, _ = load_model(path)
    assert torch.equal(loaded.state_dict()["linear.weight"], before)


# --------------------------------------------------------------------------- weights_only


def test_marker_payload_really_runs_code_without_weights_only(tmp_path):
    """Guards the tests below: the payload does create the marker when loaded unsafely."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"x": Marker(marker)}, path)
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("loader", ["load_model", "import_state_dict"])
def test_loading_never_runs_code(tmp_path, loader):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"x": Marker(marker)}, path)
    with pytest.raises(CheckpointError) as err:
        if loader == "load_model":
            load_model(path)
        else:
            import_state_dict(path, SPEC)
    msg = str(err.value)
    assert msg.startswith(f"{path}: refused or unreadable as a weights-only checkpoint (")
    assert "\n" not in msg
    assert not marker.exists()


def test_code_hidden_in_our_format_meta_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    model = _model()
    payload = {
        "format": FORMAT,
        "arch": ARCH,
        "width": WIDTH,
        "num_classes": CLASSES,
        "state_dict": model.state_dict(),
        "record": {"note": Marker(marker)},
    }
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="weights-only"):
        load_model(path)
    assert not marker.exists()


def test_arbitrary_class_instance_is_refused(tmp_path):
    path = tmp_path / "obj.pt"
    torch.save({"x": Opaque()}, path)
    with pytest.raises(CheckpointError, match="refused or unreadable as a weights-only checkpoint"):
        load_model(path)


def test_garbage_file_is_a_checkpoint_error(tmp_path):
    path = tmp_path / "junk.pt"
    path.write_bytes(b"this is not a torch file")
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    assert str(err.value).startswith(f"{path}: refused or unreadable")
    assert "\n" not in str(err.value)
    assert isinstance(err.value, BmtardError)


# --------------------------------------------------------------------------- import_state_dict


def _wrap(kind: str, state: dict) -> object:
    if kind == "plain":
        return state
    if kind == "wrapped":
        return {"state_dict": state, "epoch": 7, "best_acc": 55.0}
    if kind == "module":
        return {f"module.{k}": v for k, v in state.items()}
    if kind == "wrapped_module":
        return {"model": {f"module.{k}": v for k, v in state.items()}}
    if kind == "ours":
        return None  # written with save_model
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["plain", "wrapped", "module", "wrapped_module", "ours"])
def test_import_state_dict_layouts(tmp_path, kind):
    src = _model(seed=5)
    path = tmp_path / f"{kind}.pt"
    if kind == "ours":
        _save(path, src)
    else:
        torch.save(_wrap(kind, src.state_dict()), path)
    model = import_state_dict(path, SPEC)
    assert not model.training
    _assert_same_state(src.state_dict(), model.state_dict())
    x = _fixed_input()
    with torch.no_grad():
        assert torch.equal(src(x), model(x))


def test_partial_module_prefix_is_not_stripped():
    state = {"module.a": torch.zeros(1), "b": torch.ones(1)}
    assert list(extract_state_dict(state, "f")) == ["module.a", "b"]


def test_no_state_dict_inside_is_an_error(tmp_path):
    path = tmp_path / "notes.pt"
    torch.save({"epoch": 3, "acc": 1.5}, path)
    with pytest.raises(CheckpointError, match=r"notes\.pt: no state_dict"):
        import_state_dict(path, SPEC)


def test_mismatch_lists_missing_unexpected_and_shape_keys(tmp_path):
    state = dict(_model().state_dict())
    del state["conv1.weight"]
    state["extra.weight"] = torch.zeros(2)
    state["linear.weight"] = torch.zeros(5, 64)
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as err:
        import_state_dict(path, SPEC)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg == (
        f"{path} does not fit resnet18: missing: conv1.weight; unexpected: extra.weight; "
        "shape: linear.weight (5, 64) vs (10, 64)"
    )


def test_other_width_lists_shape_mismatches(tmp_path):
    path = tmp_path / "narrow.pt"
    torch.save(_model(width=0.0625).state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        import_state_dict(path, SPEC)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path} does not fit resnet18: shape: conv1.weight (4, 3, 3, 3) vs ")
    assert "(8, 3, 3, 3)" in msg and "bn1.weight (4,) vs (8,)" in msg
    assert "missing" not in msg and "unexpected" not in msg
    assert msg.endswith("(+96 more)")  # 101 mis-shaped tensors, 5 shown


def test_other_arch_lists_missing_keys(tmp_path):
    path = tmp_path / "preact.pt"
    torch.save(_model(arch="preact_resnet18").state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        import_state_dict(path, SPEC)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"{path} does not fit resnet18: missing: bn1.weight, bn1.bias, ")
    assert "layer2.0.shortcut.1.weight" not in msg  # beyond the first 5
    assert "unexpected" not in msg


def test_bmtard_file_of_other_width_does_not_load(tmp_path):
    path = tmp_path / "m.pt"
    _save(path, _model(width=0.0625), width=0.0625)
    with pytest.raises(CheckpointError, match=r"m\.pt does not fit resnet18: shape: conv1"):
        import_state_dict(path, SPEC)
    model, info = load_model(path)  # load_model rebuilds the width it was saved with
    assert info.spec.width == 0.0625 and model.conv1.weight.shape == (4, 3, 3, 3)


# --------------------------------------------------------------------------- bad paths


def test_missing_file(tmp_path):
    path = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    assert str(err.value) == f"{path}: checkpoint not found"
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        import_state_dict(path, SPEC)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_model(tmp_path)  # a folder is not a checkpoint


def test_plain_state_dict_given_to_load_model_points_to_import(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save(_model().state_dict(), path)
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    assert str(err.value) == (
        f"{path}: not a bmtard model file; for a plain state_dict use import_state_dict"
    )


def test_other_format_version_is_not_ours(tmp_path):
    path = tmp_path / "v9.pt"
    torch.save({"format": "bmtard.model/9", "state_dict": {}}, path)
    with pytest.raises(CheckpointError, match="not a bmtard model file"):
        load_model(path)


# --------------------------------------------------------------------------- atomic writes


def test_failed_write_keeps_old_content_and_leaves_no_temp(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old content")

    def writer(tmp: pathlib.Path) -> None:
        assert tmp.parent == tmp_path and tmp != path
        tmp.write_bytes(b"half of the new")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        write_atomic(path, writer)
    assert path.read_bytes() == b"old content"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_failed_write_of_new_file_creates_nothing(tmp_path):
    def writer(tmp: pathlib.Path) -> None:
        tmp.write_bytes(b"x")
        raise KeyboardInterrupt  # also BaseException

    with pytest.raises(KeyboardInterrupt):
        write_atomic(tmp_path / "new.bin", writer)
    assert os.listdir(tmp_path) == []


def test_failed_save_model_keeps_the_previous_model(tmp_path):
    path = tmp_path / "m.pt"
    good = _model(seed=1)
    _save(path, good, record=TrainingRecord(epoch=1))
    digest = sha256_file(path)
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        # a lambda cannot be pickled: torch.save fails after it has started writing
        _save(path, _model(seed=2), record=TrainingRecord(params={"bad": lambda: 0}))
    assert sha256_file(path) == digest
    assert os.listdir(tmp_path) == ["m.pt"]
    loaded, info = load_model(path)
    assert info.record == TrainingRecord(epoch=1)
    _assert_same_state(good.state_dict(), loaded.state_dict())


def test_successful_write_replaces_content(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old")
    write_json(path, {"a": [1, 2]})
    assert path.read_text() == '{\n  "a": [\n    1,\n    2\n  ]\n}\n'
    assert os.listdir(tmp_path) == ["out.json"]


@pytest.mark.parametrize("mask", [0o022, 0o002, 0o077])
def test_new_files_get_umask_permissions(tmp_path, mask):
    old = os.umask(mask)
    try:
        write_atomic(tmp_path / "a.bin", lambda tmp: tmp.write_bytes(b"a"))
        _save(tmp_path / "m.pt", _model())
        write_json(tmp_path / "j.json", {})
    finally:
        os.umask(old)
    expected = 0o666 & ~mask
    for name in ("a.bin", "m.pt", "j.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == expected, name


def test_permissions_follow_the_current_umask(tmp_path):
    """With the process's own umask (usually 022): not mkstemp's 0600."""
    current = os.umask(0)
    os.umask(current)
    write_atomic(tmp_path / "a.bin", lambda tmp: tmp.write_bytes(b"a"))
    mode = stat.S_IMODE((tmp_path / "a.bin").stat().st_mode)
    assert mode == 0o666 & ~current
    if current & 0o066 != 0o066:
        assert mode != 0o600


# --------------------------------------------------------------------------- damaged files


def test_flipped_bit_in_a_weight_is_caught_by_the_crc(tmp_path):
    """torch.load would load it silently; the archive's CRC check refuses it."""
    path = tmp_path / "m.pt"
    model = _model()
    _save(path, model)
    raw = bytearray(path.read_bytes())
    weight = model.state_dict()["linear.weight"].flatten()[:4].numpy().tobytes()
    at = bytes(raw).find(weight)
    assert at > 0
    raw[at + 1] ^= 0x10
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: damaged (") and "fails its CRC check" in msg
    assert "\n" not in msg
    with pytest.raises(CheckpointError, match="fails its CRC check"):
        import_state_dict(path, SPEC)


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, 0.999])
def test_truncated_checkpoint_is_one_line(tmp_path, keep):
    path = tmp_path / "m.pt"
    _save(path, _model())
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep)])
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    assert str(err.value).startswith(f"{path}: ")
    assert "\n" not in str(err.value)


def test_stale_temporaries_of_dead_writers_are_removed(tmp_path):
    """A kill during a write leaves .<name>.<pid>.tmp; the next write of that file removes it
    (but never one of a writer that still runs)."""
    path = tmp_path / "m.pt"
    dead = tmp_path / ".m.pt.999999999.tmp"  # no such process
    alive = tmp_path / f".m.pt.{os.getppid()}.tmp"  # our parent runs
    other = tmp_path / ".n.pt.999999999.tmp"  # another file's: left alone
    for p in (dead, alive, other):
        p.write_bytes(b"half")
    _save(path, _model())
    assert sorted(os.listdir(tmp_path)) == sorted(["m.pt", alive.name, other.name])
    assert remove_stale_temporaries(tmp_path / "n.pt") == [other]


# --------------------------------------------------------------------------- what a file is


def test_a_file_records_its_role_dataset_and_input_size(tmp_path):
    """New files say what they are; a file without these fields (an older one) still loads, its
    role taken from its stage (or unknown)."""
    path = tmp_path / "t.pt"
    record = TrainingRecord(stage="robust_teacher", role="robust_teacher", dataset="cifar10",
                            image_size=32)  # fmt: skip
    _save(path, _model(), record=record)
    _, info = load_model(path)
    assert (info.record.role, info.record.dataset, info.record.image_size) == (
        "robust_teacher", "cifar10", 32,
    )  # fmt: skip
    assert role_of(info.record) == "robust_teacher"
    assert role_of(TrainingRecord(stage="distill")) == "student"  # written before roles
    assert role_of(TrainingRecord(stage="clean_teacher")) == "clean_teacher"
    assert role_of(TrainingRecord()) is None  # outside the pipeline


def _info(**record) -> CheckpointInfo:
    return CheckpointInfo(SPEC, "0" * 64, TrainingRecord(**record))


def test_a_file_of_another_role_is_refused_in_one_line():
    clean = _info(stage="clean_teacher", role="clean_teacher")
    with pytest.raises(CheckpointError) as e:
        check_role("models/robust_teacher.pt", clean, "robust_teacher")
    assert str(e.value) == (
        "models/robust_teacher.pt: holds the clean teacher (its record's role: clean_teacher), "
        "not the robust teacher; give the robust teacher's file"
    )
    with pytest.raises(CheckpointError, match="holds a student .* not the clean teacher"):
        check_role("s.pt", _info(stage="distill"), "clean_teacher")  # an older student file
    check_role("m.pt", _info(), "robust_teacher")  # a file that says nothing: taken as given
    check_role("t.pt", clean, "clean_teacher")


@pytest.mark.parametrize(
    ("record", "classes", "size", "dataset", "message"),
    [
        ({}, 200, 64, "tiny_imagenet", "m.pt: the model of 10 classes, and test.npz has 200 "
         "(tiny_imagenet)"),
        ({"image_size": 64, "dataset": "x64"}, 10, 32, "cifar10", "m.pt: the model of 64x64 "
         "images, x64, and test.npz holds 32x32 images (cifar10)"),
        ({"image_size": 32, "dataset": "other10"}, 10, 32, "cifar10", "m.pt: the model of "
         "other10, and test.npz holds cifar10"),
    ],
)  # fmt: skip
def test_a_model_for_other_images_is_refused_in_one_line(record, classes, size, dataset, message):
    with pytest.raises(CheckpointError) as e:
        check_fits_data("m.pt", _info(**record), where="test.npz", num_classes=classes,
                        image_size=size, dataset=dataset, what="the model")  # fmt: skip
    assert str(e.value) == message
    # what an older file does not record is not checked
    check_fits_data("m.pt", _info(), where="t", num_classes=10, image_size=64, dataset="x")
