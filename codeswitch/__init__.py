"""codeswitch: an event-sourced LLM gateway for coding CLIs."""

from runtime.process import skip_nats_websocket

__version__ = "0.1.0"

skip_nats_websocket()  # before any CLI module imports nats: 10 MB and 0.1 s less per command
