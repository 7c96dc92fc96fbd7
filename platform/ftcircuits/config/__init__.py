"""The jobs' validated schemas (``data``, ``discovery``, ``circuitlora``, ``comparison``, ``sweep``,
``dynamics``, ``pipeline``, ``benchmarks``), composed of the engines' own settings types, and the one YAML
loader with dotted overrides (``loading``)."""
