"""The exam platform: the incident of ../shared/incident.txt, replayed with flagrail.

``app`` is the service (API-key auth through a flag-gated two-layer cache),
``faults`` the faults injected into its Redis layer, ``loadgen`` the tenants
calling it, ``scenario`` the orchestration of one run and ``report`` what a
run prints. ``flagrail demo incident`` runs it; see api/demo/README.md.
"""
