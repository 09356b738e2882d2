"""prioritize: turn findings into a reading priority and publish it where radiologists look."""
