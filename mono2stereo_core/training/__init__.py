"""mono2stereo_core.training"""
