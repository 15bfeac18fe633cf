"""Training-time modules, as in ``captum.module``: the synchronization regularizers.

Paper: Han et al., "Synchronization-Inspired Interpretable Neural Networks", IEEE TNNLS 2024,
doi:10.1109/TNNLS.2023.3297672. Uses no Captum code.
"""

from captum_ext.module.sync import (
    CapturedOutput,
    LocalActivationConsistencyLoss,
    SynchronizationLoss,
    capture_output,
    expected_positions,
)

__all__ = [
    "LocalActivationConsistencyLoss",
    "SynchronizationLoss",
    "capture_output",
    "CapturedOutput",
    "expected_positions",
]
