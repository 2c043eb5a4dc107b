"""The admin service layer: one implementation of every admin operation.

``AdminService`` holds the operations; ``Principal`` says who calls and
``PERMISSIONS`` what each role may do; ``api.service.commands`` holds the typed
commands. Two front ends call it: the HTTP routes in ``api/routes``, and
``DatabaseAdmin`` (``api.cli.database``), the CLI's break-glass mode.
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
