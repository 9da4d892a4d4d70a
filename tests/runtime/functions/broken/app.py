"""Cannot start: its import fails, as a function with a bad dependency or setting does."""

raise RuntimeError("the configuration is missing")


def lambda_handler(event, context):
    return {}
