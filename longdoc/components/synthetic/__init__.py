"""The embedded sample data (`longdoc sample`): a seeded generator of a long-document corpus
and of the five task data sets in their official on-disk formats. May import `core`."""
