"""Optional integrations with other libraries, one module each, imported on demand.

``import tietorch`` imports none of them. :mod:`tietorch.integrations.transformers` needs
Hugging Face ``transformers`` (``pip install tietorch[hf]``); tietorch loads it by itself the
first time a tensor is tied in a process that has already imported ``transformers``, so its
load-time check covers every tied model there.
"""

from __future__ import annotations

import importlib
import sys

__all__: list[str] = []


def _notify_tie() -> None:
    """Called on every tie: load the integrations whose library the process already uses."""
    if "transformers" in sys.modules and __name__ + ".transformers" not in sys.modules:
        try:
            importlib.import_module(__name__ + ".transformers")
        except ImportError:  # a transformers without the APIs the integration needs
            pass
