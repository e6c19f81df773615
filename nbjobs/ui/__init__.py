"""Notebook user interface: magics, rich display, dashboard."""
