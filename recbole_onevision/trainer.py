"""Plugin trainers: ``<Model>Trainer`` here is picked for ``<Model>`` by the registry."""
