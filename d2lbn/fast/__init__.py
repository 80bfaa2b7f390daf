"""The fast path: the chapter's BN rearranged for MXNet's fast CPU kernels, and in C++."""

from .compiled import CompiledBatchNorm, CompilerError, batch_norm_cpp, compiled_batch_norm
from .composed import FastBatchNorm, affine, batch_norm_fast, batch_norm_fast_graph, stop_gradient

__all__ = ["CompiledBatchNorm", "CompilerError", "FastBatchNorm", "affine",
           "batch_norm_cpp", "batch_norm_fast", "batch_norm_fast_graph", "compiled_batch_norm",
           "stop_gradient"]
