"""The context type every servicer method receives (one alias, so handlers stay typed)."""

from __future__ import annotations

from typing import Any, TypeAlias

import grpc

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
