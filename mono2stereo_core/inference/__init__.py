"""mono2stereo_core.inference"""
