"""Run time: artifacts loaded on a device and measured.

- load.py: an artifact's library on this host or on an RPC device;
- verify.py: TVM and ONNX Runtime against PyTorch; compare.py: engines side by side;
- bench.py: latency statistics, cold start, per-kernel profile; evaluate.py + dataset.py: accuracy;
- results.py: the JSON-lines records; matrix.py + farm_job.py: every model x target over a farm.
"""
