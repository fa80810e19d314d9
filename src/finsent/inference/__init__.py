"""Running a trained model: what the three deployables share, and the deployables themselves.

Shared, below them: `predictors` (the model on ONNX Runtime or PyTorch, one interface), `settings`
(which model and runtime), `model_version`. The deployables: `api` (`finsent-serve`, the HTTP API),
`predict` (`finsent-predict`, the command), `batch` (`finsent-score`, bulk scoring on Ray).
"""
