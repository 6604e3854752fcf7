"""Data: random-access sources -> per-step numpy host batches -> global arrays on the mesh."""
from input_pipeline.loader import StepBatcher, prefetch_batches
from input_pipeline.sources import create_source

__all__ = ['StepBatcher', 'create_source', 'prefetch_batches']
