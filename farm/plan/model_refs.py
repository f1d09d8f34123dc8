"""Model references: `tiny`, a local diffusers folder, an s3:// folder, a hub id, or one
`.safetensors` checkpoint (local or s3://), alone or with the folder it loads with."""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path, PurePosixPath

from farm.families import Model
from farm.families.single_file import is_checkpoint_ref
from farm.storage.hashes import cached_sha256
from farm.tiny.identity import TINY_FINGERPRINT

WEIGHT_SUFFIXES = (".safetensors", ".json", ".txt", ".model")


def model_name(model: str) -> str:
    """The short name written as `Model:` in the infotext: a checkpoint's file stem, as
    A1111 writes it."""
    if model == "tiny":
        return "tiny"
    if is_checkpoint_ref(model):
        return PurePosixPath(model).name[: -len(".safetensors")]
    return Path(model.rstrip("/")).name or model


def model_fingerprint(model: str, folder: str | None = None) -> str:
    """A sha256 that changes whenever the model's weights or configs change.

    A checkpoint file's is its own sha256 (so its first 10 digits are A1111's `Model
    hash`), with the fingerprint of the folder it loads with after a `+` when the spec
    names one: that folder's configs or weights change the pictures too."""
    if model == "tiny":
        return TINY_FINGERPRINT
    if is_checkpoint_ref(model):
        digest = cached_sha256(_checkpoint_path(model))
        return digest if folder is None else f"{digest}+{model_fingerprint(folder)}"
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
        # Each file's hash is kept in the node cache: a base folder's T5 is read once.
        rel = Path(file).relative_to(root).as_posix()
        digest.update(json.dumps([rel, cached_sha256(file)]).encode())
    return digest.hexdigest()


def model_hash(fingerprint: str) -> str:
    """The 10-hex `Model hash:` of the infotext (a checkpoint's: its sha256's first 10)."""
    return fingerprint[:10]


def read_model(model: str, folder: str | None = None, folder_key: str | None = None) -> Model:
    """The model's family and denoiser config, from its diffusers configs: a local folder,
    an s3:// folder (two small files fetched) or a hub id; or from a checkpoint file's
    header, checked against the configs it loads with (`folder`, named in the spec as
    `model.{folder_key}`, or the family's standard ones). Raises SpecError when the
    configs cannot be read, name a family farm does not render, or do not fit the file."""
    from farm.families import FamilyError, identify, read_folder, tiny_model
    from farm.spec import SpecError

    where = f"model: {model}"
    try:
        if model == "tiny":
            return tiny_model()
        if is_checkpoint_ref(model):
            return _read_checkpoint(model, folder, folder_key)
        if model.startswith("s3://"):
            return _read_s3(model, where)
        path = Path(model)
        if path.exists():
            if not path.is_dir():
                raise FamilyError(f"{where} is a file; give a diffusers model folder or a "
                                  ".safetensors checkpoint")  # fmt: skip
            return read_folder(path, where)
        index, config = _read_hub(model, where)
        return identify(index, config, where)
    except FamilyError as err:
        raise SpecError(str(err)) from None


def _read_checkpoint(model: str, folder: str | None, folder_key: str | None) -> Model:
    from farm.families.single_file import checkpoint_model

    field = {"config": "model.file", "base": "model.transformer"}.get(folder_key or "", "model")
    return checkpoint_model(_checkpoint_path(model, field), f"{field}: {model}", folder,
                            f"model.{folder_key}" if folder_key else "")  # fmt: skip


def _checkpoint_path(model: str, field: str = "model") -> Path:
    """A checkpoint file on this machine: an s3:// one fetched once into the node cache."""
    if not model.startswith("s3://"):
        return Path(model)
    from farm.spec import SpecError
    from farm.storage.fetch import fetch_file
    from farm.storage.store import StoreError

    try:
        return fetch_file(model)
    except StoreError as err:
        raise SpecError(f"{field}: {err}") from None


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
