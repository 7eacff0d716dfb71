"""gRPC runtime shared by the services."""

from foresight.runtime.context import Context
from foresight.runtime.server import ServiceRuntime, channel_options, run_service, serve

__all__ = ["Context", "ServiceRuntime", "channel_options", "run_service", "serve"]
