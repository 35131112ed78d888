"""cme-vlm: distil a teacher LLM's surgical knowledge into a small local vision-language model."""

__version__ = "0.1.0"
