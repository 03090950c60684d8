"""Deployment: a trained run exported to ONNX or TorchScript and verified (:mod:`~graft.deploy.export`), ONNX
Runtime's static int8 of that export (:mod:`~graft.deploy.onnx_int8`) with the export folder's torch-free
``predict.py`` (:mod:`~graft.deploy.standalone_predict`, copied verbatim), and the model side of ``graft serve``
(:mod:`~graft.deploy.serving`: decode threads, the batching model thread, request limits)."""
