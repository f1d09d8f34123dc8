"""farm: a distributed batch render farm for LoRA strength sweeps."""

__version__ = "0.1.0"
