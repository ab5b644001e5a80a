"""Where the tests have long imported the scripted OpenAI server from; it lives in
:mod:`pipeline.sim.openai_server` with the other simulated parties."""

from pipeline.sim.openai_server import (
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
