"""Validated config schemas, one per job (``data``, ``training``, ``discovery``, ``study``,
``benchmarks``), and the one YAML loader with dotted overrides (``loading``)."""
