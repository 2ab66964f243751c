"""Stand-ins for the two things a test cannot have for real: Lambda's context and Lambda's Invoke API."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass
class FakeLambdaContext:
    """The attributes Powertools reads from ``LambdaContext``; set ``remaining_ms`` to move the clock."""

    function_name: str = "pgbkp-test"
    function_version: str = "$LATEST"
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:pgbkp-test"
    memory_limit_in_mb: int = 1024
    aws_request_id: str = "00000000-0000-4000-8000-000000000000"
    log_group_name: str = "/aws/lambda/pgbkp-test"
    log_stream_name: str = "2025/01/15/[$LATEST]0123456789abcdef"
    remaining_ms: int = 900_000

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


@dataclass
class FakeLambdaClient:
    """Records ``invoke`` calls and answers like Lambda does for an accepted asynchronous invocation."""

    calls: list[dict[str, Any]] = field(default_factory=list)
    status: int = 202

    def invoke(self, **kwargs: Any) -> dict[str, Any]:
        self.calls.append(kwargs)
        return {"StatusCode": self.status}

    @property
    def payloads(self) -> list[dict[str, Any]]:
        return [json.loads(c["Payload"]) for c in self.calls]
