"""d2lbn: the MXNet/Gluon companion to the Batch Normalization chapter of D2L."""

from mxnet import npx

# The book's MXNet code uses the NumPy interface; so does every helper here
npx.set_np()

from .functional import batch_norm  # noqa: E402
from .layers import BatchNorm, HybridBatchNorm  # noqa: E402

__all__ = ["BatchNorm", "HybridBatchNorm", "batch_norm"]
__version__ = "0.1.0"
