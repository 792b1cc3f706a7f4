"""Reporters for training-loop tests."""

from __future__ import annotations

from components.training.loop import LocalReporter


class CrashAfterFirstEpoch(LocalReporter):
    """Stores the first epoch's checkpoint, then stops the run as a crash would."""

    def report(self, metrics, checkpoint):
        super().report(metrics, checkpoint)
        raise KeyboardInterrupt("simulated crash after the first checkpoint")
