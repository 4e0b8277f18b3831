"""mono2stereo_core.mono"""
