"""Frames and masks in, instruction records out: loaders, synthetic scenes, overlays, prompts."""
