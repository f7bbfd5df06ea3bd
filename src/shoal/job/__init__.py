"""A job from its file: pure checks (preflight, deploy and the planner share them), the worker, `shoal train`, `shoal deploy`."""
