"""The ``fpn_*`` console scripts, one module each (``setup.py``'s ``entry_points``).

Every command has the same shape: ``build_parser()`` -> parse -> ``config_from_args`` (a frozen
dataclass; every flag checked before any folder is touched) -> the data-roots line -> ``run(config)``.
The commands are the top layer (docs/design.md, "Layers"): the only modules that may import the
report and evaluation from below. ``fpn_import`` stays in :mod:`fpnunet.importer.cli` for now.
"""
