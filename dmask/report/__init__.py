"""The HTML report: figures and the page (rendering only)."""
