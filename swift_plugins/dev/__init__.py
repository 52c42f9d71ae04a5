"""Developer tooling: the tiny offline Qwen3-VL, the demo, doc generators (not what users import)."""
