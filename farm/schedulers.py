"""Sampler names: the spec's `render.scheduler`, its diffusers class, and A1111's name."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Sampler:
    diffusers_class: str
    a1111_name: str  # written as "Sampler:" in the infotext
    options: dict = field(default_factory=dict)


SAMPLERS: dict[str, Sampler] = {
    "euler": Sampler("EulerDiscreteScheduler", "Euler"),
    "euler_a": Sampler("EulerAncestralDiscreteScheduler", "Euler a"),
    "heun": Sampler("HeunDiscreteScheduler", "Heun"),
    "lms": Sampler("LMSDiscreteScheduler", "LMS"),
    "ddim": Sampler("DDIMScheduler", "DDIM"),
    "pndm": Sampler("PNDMScheduler", "PLMS"),
    "unipc": Sampler("UniPCMultistepScheduler", "UniPC"),
    "dpmpp_2m": Sampler("DPMSolverMultistepScheduler", "DPM++ 2M"),
    "dpmpp_2m_karras": Sampler(
        "DPMSolverMultistepScheduler", "DPM++ 2M Karras", {"use_karras_sigmas": True}
    ),
}


def make_scheduler(name: str, config: dict):
    """A fresh diffusers scheduler of the named kind, from a pipeline's scheduler config."""
    import diffusers

    sampler = SAMPLERS[name]
    cls = getattr(diffusers, sampler.diffusers_class)
    return cls.from_config(config, **sampler.options)
