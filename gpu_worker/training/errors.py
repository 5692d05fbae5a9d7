"""Errors raised by the training package.

The job runner maps these to a failed version with a readable `error`; they are deliberately
plain exceptions (no HTTP knowledge here).
"""

from __future__ import annotations


class TrainingError(Exception):
    """Base class for everything the training package refuses or fails at."""


class UnsupportedArchitecture(TrainingError):
    """The base GGUF's architecture cannot be trained and exported by this worker."""


class UnsupportedSetting(TrainingError):
    """A training setting asks for something the export path cannot represent."""


class EmptyDataset(TrainingError):
    """No usable training example survived normalization and tokenization."""
