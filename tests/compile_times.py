"""`pytest --compile-times`: where each test's time went.

After the usual summary, one line per test, slowest first: its seconds (setup, call and teardown), the seconds of
them its process spent tracing, lowering and compiling (XLA, or loading from the persistent cache), and the programs
that took over 0.3 s to compile. A test's subprocesses are not counted. Works under pytest-xdist: the figures travel
with each report.
"""
import pytest

EVENTS = {
    '/jax/core/compile/jaxpr_trace_duration': 'trace',
    '/jax/core/compile/jaxpr_to_mlir_module_duration': 'lower',
    '/jax/core/compile/backend_compile_duration': 'compile',
}
PHASES = ('trace', 'lower', 'compile')
_current = {'programs': []}  # this process's figures since the last report


def pytest_addoption(parser):
  parser.addoption('--compile-times', action='store_true',
                   help="report each test's seconds of tracing, lowering and compiling, and its slow compiles")


def pytest_configure(config):
  if not config.getoption('--compile-times'):
    return
  import jax  # pylint: disable=import-outside-toplevel

  def listener(event, duration, fun_name='', **_):
    phase = EVENTS.get(event)
    if phase:
      _current[phase] = _current.get(phase, 0.0) + duration
      if phase == 'compile' and duration > 0.3:
        _current['programs'].append(f'{fun_name}:{duration:.1f}')

  jax.monitoring.register_event_duration_secs_listener(listener)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
  outcome = yield
  if item.config.getoption('--compile-times'):
    outcome.get_result().user_properties.append(('compile_times', dict(_current)))
    _current.clear()
    _current['programs'] = []


def pytest_terminal_summary(terminalreporter, config):
  if not config.getoption('--compile-times'):
    return
  rows = {}
  for reports in terminalreporter.stats.values():
    for report in reports:
      for name, figures in getattr(report, 'user_properties', ()):
        if name != 'compile_times':
          continue
        row = rows.setdefault(report.nodeid, {'total': 0.0, 'programs': []})
        row['total'] += report.duration
        row['programs'] += figures['programs']
        for phase in PHASES:
          row[phase] = row.get(phase, 0.0) + figures.get(phase, 0.0)
  columns = ('total',) + PHASES
  terminalreporter.write_sep('=', 'seconds per test: total, trace, lower, compile; programs over 0.3 s to compile')
  sums = [sum(row.get(c, 0.0) for row in rows.values()) for c in columns]
  terminalreporter.write_line(' '.join(f'{s:8.2f}' for s in sums) + '  all tests')
  for nodeid, row in sorted(rows.items(), key=lambda item: -item[1]['total']):
    figures = ' '.join(f'{row.get(c, 0.0):8.2f}' for c in columns)
    terminalreporter.write_line(f"{figures}  {nodeid} {' '.join(row['programs'])}".rstrip())
