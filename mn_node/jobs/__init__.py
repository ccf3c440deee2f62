"""Jobs: manifests, blueprints, executor tasks, coordinators (docs/architecture.md, "Jobs")."""
