"""Pure-PyTorch versions of every op, one module per op: the test oracle and the fallback backend.

Each function mirrors its torch.library op argument for argument and output for output: its noise comes from
an explicit rng_state or from the state cifarops.philox.draw_state takes from torch's generator, exactly as
the kernels take it, so the same generator state gives the same numbers on every backend. It computes in the
same precision as the kernels: float64 for float64 tensors, float32 otherwise, rounded once at the end. It
checks nothing itself (backends.op runs the ops' Python checks in front of it) and imports nothing from the
ops it checks.
"""

from __future__ import annotations

from cifarops.reference.common import opmath_dtype  # noqa: F401
from cifarops.reference.shake_drop import (  # noqa: F401
    shake_drop_scale, SHAKE_DROP_STREAMS, shake_drop_backward, shake_drop,
)
from cifarops.reference.stochastic_depth import (  # noqa: F401
    stochastic_depth_backward, stochastic_depth,
)
from cifarops.reference.drop_activation import (  # noqa: F401
    drop_activation_backward, drop_activation, drop_activation_,
)
from cifarops.reference.shake_shake import (  # noqa: F401
    shake_shake_mix, shake_shake_coefficient, _shake_shake_backward, shake_shake,
)
from cifarops.reference.maxout import (  # noqa: F401
    maxout_pieces, draw_exp, maxout_backward, maxout, probabilistic_maxout, probabilistic_maxout_expectation,
)
from cifarops.reference.fractional_max_pool2d import (  # noqa: F401
    FMP_REGIONS, FMP_SEQUENCES, FMP_SAMPLE_STREAM, FMP_SEQUENCE_STREAM, FMP_STREAMS, fmp_sample_from_uniform,
    fmp_drawn_samples, fmp_drawn_boundaries, fmp_resolve_draws, fmp_span, fmp_interval_dtype, fmp_regions,
    fractional_max_pool2d_backward, fractional_max_pool2d_select, fractional_max_pool2d,
)
from cifarops.reference.stochastic_pool2d import (  # noqa: F401
    STOCHASTIC_POOL_STREAMS, stochastic_pool2d_output_size, stochastic_pool2d_sample, stochastic_pool2d_select,
    stochastic_pool2d_backward, stochastic_pool2d_expectation_values, stochastic_pool2d_expectation_backward,
    stochastic_pool2d, stochastic_pool2d_expectation,
)
