"""jaxdl.analysis: local complexity, adversarial attacks, CAMs, prototype scores, calibration.

  lc = jaxdl.analysis.local_complexity(model.apply, variables, x, radius=0.1, num_directions=25)
  x_adv = jaxdl.analysis.pgd(model.apply, variables, x, y, eps=8/255, step_size=2/255,
                             num_steps=10, rng_key=key, clip_min=0.0, clip_max=1.0)

Other analyses live in submodules (`jaxdl.analysis.calibration`, `.cam`, `.prototypes`).
`jaxdl.analysis.local_complexity` is the function; the rest of its module is reached with
`from jaxdl.analysis.local_complexity import random_directions, ...`.
"""

from jaxdl.analysis.adversarial import adversarial_accuracy, fgsm, pgd
from jaxdl.analysis.local_complexity import (decision_boundary_points, local_complexity,
                                             random_directions)

__all__ = ["adversarial_accuracy", "decision_boundary_points", "fgsm", "local_complexity",
           "pgd", "random_directions"]
