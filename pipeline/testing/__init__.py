"""Real stand-ins for external services, for the tests and the benchmark (nothing here is mocked)."""

from pipeline.testing.openai_server import (
    ScriptedOpenAI,
    Step,
    ToolCall,
    booking_policy,
    error,
    hang,
    text,
    tool,
    tools,
)

__all__ = ["ScriptedOpenAI", "Step", "ToolCall", "booking_policy", "error", "hang", "text", "tool", "tools"]
