"""cohortflow core: the domain logic of the asset graph, with no Dagster import.

Everything here is usable from a notebook or a script; the Dagster shell (``assets/``,
``resources/``, ``io_managers/``, ``sensors/``) only wires it into partitions and runs.
"""

__version__ = "0.1.0"
