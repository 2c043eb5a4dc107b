"""The admin service layer: one implementation of every admin operation.

``AdminService`` holds the operations; ``Principal`` says who calls and
``PERMISSIONS`` what each role may do; ``api.service.commands`` holds the typed
commands; ``DatabaseAdmin`` (``api.service.database``) is the CLI's break-glass
front end on the same service. The HTTP routes in ``api/routes`` are the other.
"""

from __future__ import annotations

from api.service.admin import AdminService, FlagView, Instances, Telemetry
from api.service.principal import PERMISSIONS, Operation, Principal

__all__ = [
    "PERMISSIONS",
    "AdminService",
    "FlagView",
    "Instances",
    "Operation",
    "Principal",
    "Telemetry",
]
