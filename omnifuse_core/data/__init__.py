"""Site data layer: the on-disk site format (docs/data-format.md), loaders, validation and federated statistics."""
