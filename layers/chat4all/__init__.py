"""Chat4All shared package: domain, services, adapters and channels, built as a Lambda layer."""
