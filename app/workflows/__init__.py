"""Workflows of the risk engine.

The LangGraph risk workflow lives in :mod:`app.workflows.langgraph`.
"""

from __future__ import annotations
