"""The HTTP API (`finsent-serve`): the app, its request bodies, limits, batching and observability."""
