"""The ``process.Process`` service: spawning, streaming, input and signals."""
