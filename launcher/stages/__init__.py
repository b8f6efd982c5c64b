"""Job-side entrypoints that need no NeMo (download). convert/train/export live in recipes/."""
