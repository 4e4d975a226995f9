"""One task's lifecycle, start to end, for every way a task runs: the server's workers (over the
store), and `ref2img generate` and `ref2img mcp` in-process (over `MemoryLedger`). No SQLAlchemy,
no FastAPI: this room is what the CLI and the MCP server share with the server."""

from ref2img.lifecycle.memory import FolderOutputs, MemoryLedger, MemoryTask
from ref2img.lifecycle.runner import Outcome, RunContext, run_task
from ref2img.lifecycle.task import (
    CLOUD,
    GENERATE,
    LOCAL,
    RECOGNIZE,
    REPAINT,
    ROUTES,
    Ledger,
    LedgerError,
    Outputs,
    RemoteRoute,
    TaskView,
)

__all__ = [
    "CLOUD",
    "GENERATE",
    "LOCAL",
    "RECOGNIZE",
    "REPAINT",
    "ROUTES",
    "FolderOutputs",
    "Ledger",
    "LedgerError",
    "MemoryLedger",
    "MemoryTask",
    "Outcome",
    "Outputs",
    "RemoteRoute",
    "RunContext",
    "TaskView",
    "run_task",
]
