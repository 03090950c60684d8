"""Deployment: a trained run exported to ONNX or TorchScript and verified (:mod:`~graft.deploy.export`); the folder
exports that share :mod:`~graft.deploy.bundle` (their checks, timing and writer): ONNX Runtime's static int8
(:mod:`~graft.deploy.onnx_int8`), OpenVINO (:mod:`~graft.deploy.openvino`), TFLite/LiteRT
(:mod:`~graft.deploy.litert`) and Core ML (:mod:`~graft.deploy.coreml`), each with a torch-free example script
(:mod:`~graft.deploy.standalone_predict`, copied verbatim); and the model side of ``graft serve``
(:mod:`~graft.deploy.serving`: decode threads, the batching model thread, request limits)."""
