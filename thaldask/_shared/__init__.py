"""Helpers every stage shares: the scheduler rule and task runner (``compute``), the
progress display (``progress``), paths and atomic writes (``paths``)."""
