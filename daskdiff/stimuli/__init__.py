"""Stimuli layer: image-set generators (noise, photos, crops, frames, class selection, adversarial) and their registry."""
