"""Diffusion math as small pure functions: schedules, objectives, samplers, guidance."""
