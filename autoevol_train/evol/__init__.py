"""Instruction evolution: evolving methods and their prompts, the answer parser, the failure detector, the
method optimisation loop (`optimize`) and dataset evolution (`evolve`)."""
