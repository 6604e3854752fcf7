"""The environment of test processes: XLA flags for a number of fake CPU devices."""
import os
import re

# XLA:CPU compiles one small kernel per fusion, and the suite is mostly that. Backend optimisation level 0 about halves
# the compile time of the tiny test models (which run about as fast), and the older fusion emitters take about a
# quarter less again (the tiny U-Net's train step: 7.8 -> 5.4 s). Emitting the kernels as one LLVM module instead of
# splitting it for parallel codegen takes a fifth less CPU time again (2.68 -> 2.07 s for that step, 1.28 -> 1.09 s
# for its init; the suite's two workers keep both cores busy anyway). Bit-exactness tests compare runs under the same
# flags.
FAST_COMPILE = ('--xla_backend_optimization_level=0', '--xla_cpu_use_fusion_emitters=false',
                '--xla_cpu_parallel_codegen_split_count=1')
# XLA:CPU's default level, for a program whose time goes into running a long loop rather than compiling it:
# jax.jit(f, compiler_options=FULL_OPTIMISATION). Level 0 runs a 500-step stochastic Heun loop 10x slower.
FULL_OPTIMISATION = {'xla_backend_optimization_level': 3}


def xla_flags(devices, base=None):
  """XLA_FLAGS for `devices` fake CPU devices (1: the default one), the fast-compile flags and the other flags of
  `base` (default: this process's XLA_FLAGS)."""
  base = os.environ.get('XLA_FLAGS', '') if base is None else base
  flags = re.sub(r'--xla_force_host_platform_device_count=\d+', '', base).split()
  flags = [f for f in flags if f not in FAST_COMPILE] + list(FAST_COMPILE)
  if devices > 1:
    flags.append(f'--xla_force_host_platform_device_count={devices}')
  return ' '.join(flags)


def env_with_devices(devices, **extra):
  """os.environ for a subprocess with `devices` fake CPU devices, plus `extra` variables."""
  return dict(os.environ, XLA_FLAGS=xla_flags(devices), **extra)
