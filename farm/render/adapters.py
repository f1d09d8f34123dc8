"""LoRA adapters loaded into a pipeline, cached by file sha256, activated per batch."""

from __future__ import annotations

from collections.abc import Sequence

from farm.sweep import Adapter


def adapter_name(adapter: Adapter) -> str:
    # Content-addressed: two spec names for one file share one loaded adapter.
    return f"lora_{adapter.sha256[:16]}"


class AdapterSet:
    """The adapters loaded into one pipeline and the strengths currently set."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.loaded: set[str] = set()
        self.loads = 0
        self.enabled = True

    def ensure(self, adapters: Sequence[Adapter]) -> list[Adapter]:
        """Load the adapters the pipeline lacks; returns those it loaded."""
        new = []
        for adapter in adapters:
            name = adapter_name(adapter)
            if name not in self.loaded:
                path = adapter.path
                if path.startswith("s3://"):
                    from farm.fetch import fetch_file

                    # Fetched once per node and checked against the sha256 of the plan.
                    path = str(fetch_file(path, adapter.sha256))
                self.pipe.load_lora_weights(path, adapter_name=name, use_safetensors=True)
                self.loaded.add(name)
                self.loads += 1
                new.append(adapter)
        return new

    def activate(self, weights: Sequence[tuple[Adapter, float]]) -> None:
        """Make exactly these adapters active at these strengths; none means no LoRA.

        Strengths go through set_adapters: a cross_attention_kwargs scale of 0 would
        silently reset every adapter to 1.0 for later calls.
        """
        if not weights:
            if self.loaded and self.enabled:
                self.pipe.disable_lora()
                self.enabled = False
            return
        if not self.enabled:
            self.pipe.enable_lora()
            self.enabled = True
        self.pipe.set_adapters(
            [adapter_name(a) for a, _ in weights], [float(w) for _, w in weights]
        )
