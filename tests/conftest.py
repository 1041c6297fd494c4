import os

import torch
from hypothesis import HealthCheck, settings

torch.set_num_threads(min(2, os.cpu_count() or 1))
settings.register_profile(
    "tietorch",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("tietorch")

# The recorder of the Keras fixtures needs TensorFlow, which the suite does not install: it is
# run by hand (tests/keras_fixtures/record.py), never imported for doctests.
collect_ignore = ["keras_fixtures/record.py"]
