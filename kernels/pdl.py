"""Programmatic dependent launch (Hopper and later), for the kernels of a decode step.

A kernel launched as the programmatic dependent of the one before it in the stream may start once every program of
that one has passed `gdc_launch_dependents`: it reads what no kernel of the step writes (weights, the step's payload
copied in before) and then waits in `gdc_wait` until the kernel before it has finished and its writes are visible.
At one token a step, each of a layer's small kernels then hides most of the next one's launch and first loads
behind its own tail. A kernel launched this way must call `gdc_wait` before it reads any kernel's output.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl


# False before the first launch: every kernel launched plainly. For measurements only: under the profiler a
# dependent kernel's time includes its wait, so only then do the kernels' times add up to the step
ENABLED = True


@functools.cache
def pdl_options(device: torch.device) -> dict:
    """Keyword arguments of a kernel launch with a USE_PDL constexpr: on where the GPU has the feature."""
    on = ENABLED and device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 9
    return {"USE_PDL": True, "launch_pdl": True} if on else {"USE_PDL": False}


@triton.jit
def wait_for_previous_kernel(USE_PDL: tl.constexpr):
    """The end of what a dependent kernel may do early; lets the next kernel start its own early part."""
    if USE_PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
