"""On-device monitoring: latency histograms, system stats, prediction quality, drift, sample capture.

:class:`edge_runtime.monitoring.monitor.Monitor` is the pipeline sink that ties them together and writes
periodic metric records and events into the outbox. Nothing here imports TensorFlow or torch.
"""
