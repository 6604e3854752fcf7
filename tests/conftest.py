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

# The slowest tests of docs/results.md start first: pytest-xdist hands out tests in collection order, where these
# came last (tests/training/), and the suite waited on one of them while the other worker was idle. (Not the noisy
# classifier's: the module fixture it builds serves its neighbours, which would then train it again on the other
# worker.)
SLOW_FIRST = (
    'tests/training/test_multihost.py::test_two_hosts',
    'tests/training/test_reliability.py::test_sigterm',
    'tests/jobs/test_super_res.py::test_a_digit_upsampler',
    'tests/jobs/test_eval_jobs.py::test_fid_stats_then_fid',
    'tests/training/test_train.py::test_loss_falls',
    'tests/jobs/test_ablate.py::test_train_then_sample',
    'tests/training/test_train.py::test_step_on_8_devices',
)


def pytest_collection_modifyitems(items):
  items.sort(key=lambda item: not item.nodeid.startswith(SLOW_FIRST))  # stable: the rest keep their order
