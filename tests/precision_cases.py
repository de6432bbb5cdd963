"""The precisions a number-comparing test runs in.

A test that compares numbers states its precision instead of taking what ``--precision auto``
picks on the CPU that runs it (bf16 where the CPU has native bf16, else fp32): it is parametrized
over :data:`PRECISIONS` and passes ``--precision`` explicitly, and its recomputation follows the
training loop's own path (channels-last batches, the run's precision), so one tolerance serves
both. On a CPU without native bf16 the ``bf16`` cases run in slow emulation: keep them to tiny
networks and a few steps.
"""
from __future__ import annotations

PRECISIONS = ("fp32", "bf16")
