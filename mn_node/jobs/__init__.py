"""Jobs: manifests, blueprints, executor tasks, coordinators (DESIGN §6)."""
