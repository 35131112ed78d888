"""The privacy-preserving teacher: requests, privacy guard, Gemini and offline backends, journal, review."""
