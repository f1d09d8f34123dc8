"""Sampler names: the spec's `render.scheduler`, its diffusers class, and A1111's name.

Only names live here (planning checks them without diffusers); farm/render/pipelines.py
makes the scheduler objects.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Sampler:
    diffusers_class: str
    a1111_name: str  # written as "Sampler:" in the infotext
    options: dict = field(default_factory=dict)
    min_steps: int = 1  # fewer steps fail inside diffusers' scheduler


SAMPLERS: dict[str, Sampler] = {
    "euler": Sampler("EulerDiscreteScheduler", "Euler"),
    "euler_a": Sampler("EulerAncestralDiscreteScheduler", "Euler a"),
    "heun": Sampler("HeunDiscreteScheduler", "Heun"),
    "lms": Sampler("LMSDiscreteScheduler", "LMS"),
    "ddim": Sampler("DDIMScheduler", "DDIM"),
    # With 1-3 steps diffusers' PNDMScheduler fails mid-render with a shape error.
    "pndm": Sampler("PNDMScheduler", "PLMS", min_steps=4),
    "unipc": Sampler("UniPCMultistepScheduler", "UniPC"),
    "dpmpp_2m": Sampler("DPMSolverMultistepScheduler", "DPM++ 2M"),
    # Flux.1's and Chroma's own: flow-matching Euler, shifted by the image size as the
    # model's scheduler config says (Forge calls it Euler too).
    "flow_euler": Sampler("FlowMatchEulerDiscreteScheduler", "Euler"),
    "dpmpp_2m_karras": Sampler(
        "DPMSolverMultistepScheduler", "DPM++ 2M Karras", {"use_karras_sigmas": True}
    ),
}
