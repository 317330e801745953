"""Helpers shared by the Wan parity scripts: tiny random diffusers models made to matter, and the
dtype conversion that from_pretrained(torch_dtype=...) does (which needs accelerate to run)."""
import copy

import torch


def perturb(model, seed):
    """Adds noise to the vectors (norm weights start at 1, biases at 0) and scale-shift tables so
    that a wrong use of them shows in the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 or "scale_shift_table" in name or name.endswith("gamma"):
                p.add_(0.2 * torch.randn(p.shape, generator=g))
    return model


def as_loaded(model, dtype):
    """A copy of `model` as from_pretrained(torch_dtype=dtype) gives it: every floating parameter and
    buffer converted, except those of _keep_in_fp32_modules (matched by name part, as diffusers
    does), which stay float32."""
    model = copy.deepcopy(model)
    if dtype == torch.float32:
        return model
    keep = model._keep_in_fp32_modules or []
    named = list(model.named_parameters()) + list(model.named_buffers())
    saved = {n: t.detach().clone() for n, t in named if any(k in n.split(".") for k in keep)}
    model.to(dtype)
    with torch.no_grad():
        for n, t in list(model.named_parameters()) + list(model.named_buffers()):
            if n in saved:
                t.data = saved[n]
    return model
