"""The shared HTTP client for calls to the upstream service, and an example route using it."""
