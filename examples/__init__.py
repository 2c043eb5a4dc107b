"""Runnable examples of flagrail.

``exam_platform`` replays the incident (``flagrail demo incident``).
"""
