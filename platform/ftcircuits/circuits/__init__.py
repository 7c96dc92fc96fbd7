"""Circuits: the graph of a model, EAP-IG attribution, selection, evaluation, file format."""
