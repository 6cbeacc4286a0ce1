"""Jinja page templates and the page script, shipped inside the package as `reporter.templates`."""
