"""Orders: placed in a view's transaction, shipped by a task that runs only if it committed."""
