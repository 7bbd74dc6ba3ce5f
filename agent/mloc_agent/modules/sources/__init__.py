"""Where a task's inputs come from, for every family: models (hub, local, URL, a finished task's
outputs), documents and question lists."""
