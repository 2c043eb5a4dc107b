"""Unleash interop: the pure mapping between flagrail states and Unleash features.

``flags.unleash.client`` (the SDK backed by an Unleash server) needs the optional
``UnleashClient`` package and is imported on its own, never from here.
"""

from flags.unleash.mapping import (
    API_VERSION,
    TENANT_FIELD,
    feature_from_state,
    features_payload,
    state_from_feature,
)

__all__ = [
    "API_VERSION",
    "TENANT_FIELD",
    "feature_from_state",
    "features_payload",
    "state_from_feature",
]
