import os

# Tests share the 2 cores with TVM's own thread pool; keep PyTorch from oversubscribing.
os.environ.setdefault("OMP_NUM_THREADS", "2")
