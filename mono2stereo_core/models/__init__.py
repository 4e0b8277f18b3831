"""mono2stereo_core.models"""
