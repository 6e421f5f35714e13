"""codeswitch: an event-sourced LLM gateway for coding CLIs."""

__version__ = "0.1.0"
