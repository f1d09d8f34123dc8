"""A unit's model and LoRAs as files on this node, which is all that rendering is handed.

Plans carry references (`tiny`, `tiny:NAME`, s3:// URLs) because a unit may render on any
node; each node turns them into local files here, so farm/render never touches storage.
"""

from __future__ import annotations

from farm.plan.items import Adapter


def resolve_model_path(model: str) -> str:
    """`tiny` built (once per farm home); other references unchanged.

    An s3:// folder stays a URL: workers may run on other nodes, and each node fetches
    its own copy (local_model_path) rather than the driver downloading it.
    """
    if model == "tiny":
        from farm.render.tiny import ensure_tiny

        return str(ensure_tiny())
    return model


def local_model_path(model_path: str, fingerprint: str | None = None) -> str:
    """What the pipeline loads from on this node: s3:// folders and checkpoint files
    fetched into the cache (a checkpoint checked against the sha256 its fingerprint
    starts with)."""
    if model_path.startswith("s3://"):
        from farm.families.single_file import is_checkpoint_ref
        from farm.storage.fetch import fetch_dir, fetch_file

        if is_checkpoint_ref(model_path):
            return str(fetch_file(model_path, fingerprint[:64] if fingerprint else None))
        return str(fetch_dir(model_path, fingerprint))
    return resolve_model_path(model_path)


def local_lora_path(adapter: Adapter) -> str:
    """The adapter's .safetensors file on this node: a demo LoRA written, an s3:// one fetched."""
    if adapter.path.startswith("tiny:"):
        from farm.loras.demo import demo_lora_path

        # Written on first use: the same bytes (and sha256) in every farm home.
        return str(demo_lora_path(adapter.path))
    if adapter.path.startswith("s3://"):
        from farm.storage.fetch import fetch_file

        # Fetched once per node and checked against the sha256 of the plan.
        return str(fetch_file(adapter.path, adapter.sha256))
    return adapter.path
