"""The virtkit Python SDK: everything the CLI does, through virtkitd's REST API."""

from virtkit.client.client import Client, ExecResult, connect

__all__ = ["Client", "ExecResult", "connect"]
