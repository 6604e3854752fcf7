"""Tracing GPU programs on a machine without a GPU: jax's probe of the local cuDNN and GPU, replaced.

jax asks the local cuDNN for its version and the GPU for its compute capability before it emits the
cuDNN flash-attention kernel. Inside `pretend_h100_cudnn()` the answers are those of an H100 (compute
capability 9.0) with cuDNN 9.10, so a program traced or lowered for CUDA (`lowering_platforms=('cuda',)`)
is the one the GPU would compile. Nothing can run on the CPU with it: only trace and lower.
"""
import contextlib
from unittest import mock

from jax._src.cudnn import fused_attention_stablehlo as cudnn_attention


@contextlib.contextmanager
def pretend_h100_cudnn():
  with mock.patch.object(cudnn_attention, 'check_cudnn_version', lambda: 91000), \
       mock.patch.object(cudnn_attention, 'check_compute_capability', lambda capability: float(capability) <= 9.0), \
       mock.patch.object(cudnn_attention, 'is_cuda_compute_capability_equal', lambda capability: capability == '9.0'):
    yield
