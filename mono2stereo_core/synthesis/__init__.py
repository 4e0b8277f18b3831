"""mono2stereo_core.synthesis"""
