"""Every test process sees 8 fake CPU devices, so mesh and sharding code runs as on 8 accelerators.

Compiled programs are cached on disk across tests and the subprocesses they start (the same
tiny models are compiled many times otherwise), and XLA:CPU compiles them without its backend optimisations
(tests/processes.py): about half the compile time of the tiny test models, which then run as fast.
"""
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.processes import xla_flags  # pylint: disable=wrong-import-position

os.environ['XLA_FLAGS'] = xla_flags(8)
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(tempfile.gettempdir(), 'diffusion-tests-jax-cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')
