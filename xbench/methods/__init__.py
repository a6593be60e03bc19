"""Models and explainers, one file per family; importing this package registers them."""

from . import attribution, baselines, ca_stream, cam, cnn, explainer, icn, intr, lrp, relevancy, rise, rollout  # noqa: F401  (registration)
