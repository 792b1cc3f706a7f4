"""chipmatch components: the library behind the pipeline stages.

Nothing in here reads config files, starts Ray Tune or talks to MLflow directly (that is
`pipelines/` and `components.tracking`). Importing a module has no side effects.
"""
