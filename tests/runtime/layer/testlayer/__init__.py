"""A module that only the test layer provides: a function that imports it runs with the layer on its path."""

GREETING = "hello from the layer"
