"""Other normalisations: per-example norms, Batch Renormalization, whitening and its compact,
sparse and projected forms."""

from .perexample import GroupNorm, InstanceNorm, LayerNorm, group_norm, instance_norm, layer_norm

__all__ = ["GroupNorm", "InstanceNorm", "LayerNorm", "group_norm", "instance_norm", "layer_norm"]
