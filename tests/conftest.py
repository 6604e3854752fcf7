"""Every test process sees 8 fake CPU devices, so mesh and sharding code runs as on 8 accelerators.

The tiny models of tests/tiny.py train on one of them. Compiled programs are cached on disk across tests and the
subprocesses they start (the same tiny models are compiled many times otherwise), and XLA:CPU compiles them with the
fast-compile flags of tests/processes.py. `pytest --compile-times` shows where each test's time went
(tests/compile_times.py).
"""
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tests.processes import xla_flags  # pylint: disable=wrong-import-position

os.environ['XLA_FLAGS'] = xla_flags(8)
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(tempfile.gettempdir(), 'diffusion-tests-jax-cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')

pytest_plugins = ['tests.compile_times']  # pytest --compile-times
