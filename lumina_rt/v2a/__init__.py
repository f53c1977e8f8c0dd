"""Lumina-V2A: synchronized sound for generated videos (config + model, pipeline, codec, soundtrack, eval, train)."""
