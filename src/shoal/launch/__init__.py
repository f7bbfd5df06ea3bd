"""Starting the worker processes."""
