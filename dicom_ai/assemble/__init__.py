"""assemble: decide when a study is complete and gather it for routing."""
