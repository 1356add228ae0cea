"""The optional features, one package each (``<name>/``): a feature's routes, services,
settings (a mixin of ``Settings``), models, and its glue with another feature. A feature
reaches the core only through the hooks the core offers; ``registry.py`` lists the features
this project has, in the order they start. See "Adding a feature" in docs/architecture.md."""
