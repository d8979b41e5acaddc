"""What users run: the command line, plots, reports, tuning, ONNX export and playback."""
