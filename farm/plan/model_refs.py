"""Model references: `tiny`, a local diffusers folder, an s3:// folder or a hub id."""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

from farm.families import Model
from farm.tiny.identity import TINY_FINGERPRINT

WEIGHT_SUFFIXES = (".safetensors", ".json", ".txt", ".model")


def model_name(model: str) -> str:
    """The short name written as `Model:` in the infotext."""
    if model == "tiny":
        return "tiny"
    return Path(model.rstrip("/")).name or model


def model_fingerprint(model: str) -> str:
    """A sha256 that changes whenever the model's weights or configs change."""
    if model == "tiny":
        return TINY_FINGERPRINT
    if model.startswith("s3://"):
        from farm.storage.fetch import s3_dir_fingerprint
        from farm.storage.store import StoreError

        try:
            return s3_dir_fingerprint(model)
        except StoreError as err:
            raise StoreError(f"model: {err}") from None
    path = Path(model)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES)
        stats = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
        return _dir_fingerprint(str(path.resolve()), stats)
    # A hub id: only its name is known before it is fetched.
    return hashlib.sha256(model.encode()).hexdigest()


@lru_cache(maxsize=16)
def _dir_fingerprint(root: str, stats: tuple) -> str:
    digest = hashlib.sha256()
    for file, _, _ in stats:
        sha = hashlib.sha256()
        with open(file, "rb") as f:
            while chunk := f.read(1 << 22):
                sha.update(chunk)
        rel = Path(file).relative_to(root).as_posix()
        digest.update(json.dumps([rel, sha.hexdigest()]).encode())
    return digest.hexdigest()


def model_hash(fingerprint: str) -> str:
    """The 10-hex `Model hash:` of the infotext."""
    return fingerprint[:10]


def read_model(model: str) -> Model:
    """The model's family and denoiser config, from its diffusers configs: a local folder,
    an s3:// folder (two small files fetched) or a hub id. Raises SpecError when the
    configs cannot be read or name a family farm does not render."""
    from farm.families import FamilyError, identify, read_folder, tiny_model
    from farm.spec import SpecError

    where = f"model: {model}"
    try:
        if model == "tiny":
            return tiny_model()
        if model.startswith("s3://"):
            return _read_s3(model, where)
        path = Path(model)
        if path.exists():
            if not path.is_dir():
                raise FamilyError(f"{where} is a file; give a diffusers model folder")
            return read_folder(path, where)
        index, config = _read_hub(model, where)
        return identify(index, config, where)
    except FamilyError as err:
        raise SpecError(str(err)) from None


def _read_s3(model: str, where: str) -> Model:
    from farm.families import FamilyError, denoiser_of, identify
    from farm.storage.fetch import fetch_file
    from farm.storage.store import StoreError

    root = model.rstrip("/")
    try:
        index = _json(fetch_file(f"{root}/model_index.json"), where)
        name = denoiser_of(index)
        config = _json(fetch_file(f"{root}/{name}/config.json"), where) if name in index else {}
    except StoreError as err:
        raise FamilyError(f"{where}: cannot read its configs ({err})") from None
    return identify(index, config, where)


def _read_hub(model: str, where: str) -> tuple[dict, dict]:
    """model_index.json and the denoiser's config of a hub id, when the hub is reachable
    (or the files are in the hub's local cache)."""
    from farm.families import FamilyError, denoiser_of

    try:
        from huggingface_hub import hf_hub_download

        index = _json(Path(hf_hub_download(model, "model_index.json")), where)
        name = denoiser_of(index)
        config = (_json(Path(hf_hub_download(model, f"{name}/config.json")), where)
                  if name in index else {})  # fmt: skip
    except FamilyError:
        raise
    except Exception as err:  # offline, unknown repo, gated: all say the same to a user
        reason = str(err).splitlines()[0][:160] if str(err) else type(err).__name__
        raise FamilyError(f"{where} is not a local folder, and its configs cannot be read "
                          f"from the Hugging Face hub ({reason}); give a diffusers model "
                          "folder") from None  # fmt: skip
    return index, config


def _json(path: Path, where: str) -> dict:
    from farm.families import FamilyError

    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        raise FamilyError(f"{where}: {path.name} is not JSON") from None
    if not isinstance(value, dict):
        raise FamilyError(f"{where}: {path.name} is not a mapping")
    return value
