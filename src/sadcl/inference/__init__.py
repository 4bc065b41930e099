"""Using a trained model: prediction (predict.py, inputs.py, writers.py), the post-processing rule (postprocess.py),
thresholds (thresholds.py), attention maps and label embeddings (attention.py, embeddings.py) and the demo server
(serve.py, serve_api.py, serve_static/)."""
