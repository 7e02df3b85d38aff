"""Trajectory optimizers over action sequences: CEM, iCEM, MPPI."""
