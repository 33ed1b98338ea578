"""Helpers shared by the test directories (importable as ``helpers``: tests/conftest.py puts
``tests/`` on ``sys.path``).

General-purpose builders (a cohort store, results with planted effects, segmenter checks)
live in :mod:`thaldask.testing`; these modules hold what only the tests need:

* :mod:`helpers.files` -- manifest header and a NIfTI writer;
* :mod:`helpers.store` -- tiny NIfTI cohorts (orientations, manifests) for ingest tests;
* :mod:`helpers.cohort` -- deliberately broken inputs (raw NIfTI headers, manifests);
* :mod:`helpers.cluster` -- test certificates and `dask` processes on 127.0.0.1;
* :mod:`helpers.browser` -- a headless-Chromium driver over the DevTools protocol;
* :mod:`helpers.report` -- hand-built report inputs and an HTML reader.
"""
