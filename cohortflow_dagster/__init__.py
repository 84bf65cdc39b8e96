"""cohortflow's Dagster shell: the code location over the pure core ``cohortflow``.

The shell's parts are the repository's top-level folders, installed as this package's
subpackages (``pyproject.toml``, ``[tool.setuptools] package-dir``): ``assets/``
(``cohortflow_dagster.assets``), ``resources/``, ``io_managers/``, ``sensors/`` and
``cli/``. Here live the code location (``definitions.py``) and the two leaf modules every
part imports: the partitions (``partitions.py``) and the metadata helpers
(``metadata.py``).
"""
