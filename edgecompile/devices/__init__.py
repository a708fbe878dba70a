"""Where artifacts run and how we reach them: device specs, RPC services we start, the tracker
protocol, the emulated arm64 device and the OpenCL runtime plug-in's sources. No TVM import:
what needs TVM's runtime (sessions, loading the plug-in) is in edgecompile.backend.

- spec.py: DeviceSpec, this host / one RPC server / a tracker key;
- net.py: host:port parsing, free ports, reachability probes, process-group kill;
- tracker.py: TVM's tracker protocol (summary, keys, lease) in plain Python;
- services.py: a tracker and native RPC servers started on this machine;
- emulated/: the emulated arm64 device (qemu-user + an arm64 rootfs with TVM's runtime);
- opencl_runtime/: our OpenCL runtime plug-in for the PyPI TVM (C++ sources and their build).
"""
