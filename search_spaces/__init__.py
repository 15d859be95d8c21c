"""The search spaces shipped with lab (named.yaml and the searchable spaces), as package data.

This folder is the source tree's top-level search_spaces/, installed as the package lab.search_spaces
(pyproject.toml maps it); read it through lab.resources, not by path.
"""
