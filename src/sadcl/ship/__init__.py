"""Shipped artefacts: the model directory (model_dir.py, model_card.py), what every artefact says about itself
(artifact.py), ONNX export (export.py) and int8 quantisation (quantize.py)."""
