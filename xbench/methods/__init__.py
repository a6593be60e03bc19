"""Models and explainers, one file per family; importing this package registers them."""

from . import ca_stream, cnn, explainer, intr  # noqa: F401  (registration)
