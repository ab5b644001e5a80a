"""Who answers the caller: building a call's agent (:mod:`.factory`) and the LLM agent (:mod:`.llm`);
the rules agent is :mod:`pipeline.dialog.rules`."""
