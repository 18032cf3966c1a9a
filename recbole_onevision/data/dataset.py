"""Plugin dataset classes: ``<Model>Dataset`` here (or the one named by ``dataset_class``
in a config) is built instead of RecBole's default for that model type."""
