"""Fingerprint, planner and memory estimator (installed as ``fpnunet.plans``)."""
from fpnunet.plans.plan import Configuration, MemoryEstimate, NetworkSpec, Plan, TrainingDefaults

__all__ = ["Configuration", "MemoryEstimate", "NetworkSpec", "Plan", "TrainingDefaults"]
