"""gRPC runtime shared by the services."""

from foresight.runtime.server import ServiceRuntime, channel_options, run_service, serve

__all__ = ["ServiceRuntime", "channel_options", "run_service", "serve"]
