/*
 * DeviceAPI for kDLOpenCL, registered as the global function "device_api.opencl" (the name
 * tvm::runtime::DeviceAPIManager looks up: "device_api." + DLDeviceType2Str(kDLOpenCL)).
 *
 * Data pointers handed to TVM are cl_mem handles; kernels receive them as buffer arguments.
 */
#include <tvm/ffi/extra/c_env_api.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/reflection/registry.h>
#include <tvm/runtime/device_api.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <vector>

#include "opencl_common.h"

namespace edgecompile {
namespace ocl {

using tvm::runtime::DeviceAttrKind;

namespace {

std::string DeviceString(cl_device_id dev, cl_device_info key) {
  const CLApi& cl = API();
  size_t size = 0;
  if (cl.GetDeviceInfo(dev, key, 0, nullptr, &size) != CL_SUCCESS || size == 0) return "";
  std::string s(size, '\0');
  if (cl.GetDeviceInfo(dev, key, size, &s[0], nullptr) != CL_SUCCESS) return "";
  while (!s.empty() && s.back() == '\0') s.pop_back();
  return s;
}

template <typename T>
T DeviceValue(cl_device_id dev, cl_device_info key) {
  T value{};
  API().GetDeviceInfo(dev, key, sizeof(T), &value, nullptr);
  return value;
}

// Which device types to expose: EDGECOMPILE_OPENCL_DEVICE_TYPE=gpu|cpu|accelerator|all.
// Default: GPUs when the machine has any, else every device (pocl's CPU device, for example).
std::vector<cl_device_type> WantedDeviceTypes() {
  const char* env = std::getenv("EDGECOMPILE_OPENCL_DEVICE_TYPE");
  std::string v = env ? env : "";
  if (v == "gpu") return {CL_DEVICE_TYPE_GPU};
  if (v == "cpu") return {CL_DEVICE_TYPE_CPU};
  if (v == "accelerator") return {CL_DEVICE_TYPE_ACCELERATOR};
  if (v == "all") return {CL_DEVICE_TYPE_ALL};
  return {CL_DEVICE_TYPE_GPU, CL_DEVICE_TYPE_ALL};
}

}  // namespace

int& CurrentDeviceId() {
  static thread_local int device_id = 0;
  return device_id;
}

Workspace* Workspace::Global() {
  static Workspace* inst = new Workspace();  // leaked on purpose: no teardown-order hazards
  return inst;
}

void Workspace::Init() {
  std::call_once(once_, [this]() {
    const CLApi& cl = API();
    if (!cl.loaded) {
      init_error_ = cl.origin;
      return;
    }
    cl_uint nplat = 0;
    cl_int err = cl.GetPlatformIDs(0, nullptr, &nplat);
    if (err != CL_SUCCESS || nplat == 0) {
      init_error_ = std::string("clGetPlatformIDs found no platform (") + ErrorString(err) + ")";
      return;
    }
    std::vector<cl_platform_id> platforms(nplat);
    cl.GetPlatformIDs(nplat, platforms.data(), nullptr);
    for (cl_device_type type : WantedDeviceTypes()) {
      for (cl_platform_id p : platforms) {
        cl_uint ndev = 0;
        if (cl.GetDeviceIDs(p, type, 0, nullptr, &ndev) != CL_SUCCESS || ndev == 0) continue;
        std::vector<cl_device_id> ids(ndev);
        cl.GetDeviceIDs(p, type, ndev, ids.data(), nullptr);
        cl_context_properties props[] = {CL_CONTEXT_PLATFORM,
                                         reinterpret_cast<cl_context_properties>(p), 0};
        cl_context ctx = cl.CreateContext(props, ndev, ids.data(), nullptr, nullptr, &err);
        if (err != CL_SUCCESS) {
          init_error_ += std::string("clCreateContext: ") + ErrorString(err) + "; ";
          continue;
        }
        for (cl_device_id d : ids) {
          DeviceEntry e;
          e.platform = p;
          e.id = d;
          e.context = ctx;
          e.queue = cl.CreateCommandQueue(ctx, d, 0, &err);
          if (err != CL_SUCCESS) {
            init_error_ += std::string("clCreateCommandQueue: ") + ErrorString(err) + "; ";
            continue;
          }
          e.name = DeviceString(d, CL_DEVICE_NAME);
          e.version = DeviceString(d, CL_DEVICE_VERSION);
          devices_.push_back(e);
        }
      }
      if (!devices_.empty()) break;
    }
    if (devices_.empty() && init_error_.empty()) init_error_ = "no OpenCL device found";
  });
}

const DeviceEntry& Workspace::Device(int device_id) {
  Init();
  if (device_id < 0 || static_cast<size_t>(device_id) >= devices_.size()) {
    TVM_FFI_THROW(RuntimeError) << "OpenCL device " << device_id << " does not exist ("
                                << devices_.size() << " device(s) found"
                                << (init_error_.empty() ? "" : ": " + init_error_) << ")";
  }
  return devices_[device_id];
}

cl_command_queue Workspace::Queue(int device_id) {
  const DeviceEntry& e = Device(device_id);
  void* stream = TVMFFIEnvGetStream(kDLOpenCL, device_id);
  return stream != nullptr ? static_cast<cl_command_queue>(stream) : e.queue;
}

class OpenCLDeviceAPI final : public tvm::runtime::DeviceAPI {
 public:
  void SetDevice(DLDevice dev) final { CurrentDeviceId() = dev.device_id; }

  void GetAttr(DLDevice dev, DeviceAttrKind kind, tvm::ffi::Any* rv) final {
    Workspace* w = Workspace::Global();
    bool exists = dev.device_id >= 0 && static_cast<size_t>(dev.device_id) < w->NumDevices();
    if (kind == tvm::runtime::kExist) {
      *rv = static_cast<int64_t>(exists);
      return;
    }
    if (!exists) return;
    cl_device_id d = w->Device(dev.device_id).id;
    switch (kind) {
      case tvm::runtime::kMaxThreadsPerBlock:
        *rv = static_cast<int64_t>(DeviceValue<size_t>(d, CL_DEVICE_MAX_WORK_GROUP_SIZE));
        break;
      case tvm::runtime::kWarpSize:
        // OpenCL 1.2 has no portable sub-group width; TVM treats 1 as "no warp".
        *rv = static_cast<int64_t>(1);
        break;
      case tvm::runtime::kMaxSharedMemoryPerBlock:
        *rv = static_cast<int64_t>(DeviceValue<cl_ulong>(d, CL_DEVICE_LOCAL_MEM_SIZE));
        break;
      case tvm::runtime::kComputeVersion: {
        // "OpenCL <major>.<minor> <vendor specific>" -> "<major>.<minor>"
        std::string v = w->Device(dev.device_id).version;
        std::istringstream is(v);
        std::string word, num;
        is >> word >> num;
        *rv = tvm::ffi::String(num);
        break;
      }
      case tvm::runtime::kDeviceName:
        *rv = tvm::ffi::String(w->Device(dev.device_id).name);
        break;
      case tvm::runtime::kMaxClockRate:
        *rv = static_cast<int64_t>(DeviceValue<cl_uint>(d, CL_DEVICE_MAX_CLOCK_FREQUENCY));
        break;
      case tvm::runtime::kMultiProcessorCount:
        *rv = static_cast<int64_t>(DeviceValue<cl_uint>(d, CL_DEVICE_MAX_COMPUTE_UNITS));
        break;
      case tvm::runtime::kMaxThreadDimensions: {
        size_t dims[3] = {0, 0, 0};
        API().GetDeviceInfo(d, CL_DEVICE_MAX_WORK_ITEM_SIZES, sizeof(dims), dims, nullptr);
        std::ostringstream os;
        os << "[" << dims[0] << ", " << dims[1] << ", " << dims[2] << "]";
        *rv = tvm::ffi::String(os.str());
        break;
      }
      case tvm::runtime::kApiVersion:
        *rv = static_cast<int64_t>(120);  // the API level this plug-in uses: OpenCL 1.2
        break;
      case tvm::runtime::kDriverVersion:
        *rv = tvm::ffi::String(DeviceString(d, CL_DRIVER_VERSION));
        break;
      case tvm::runtime::kL2CacheSizeBytes:
        *rv = static_cast<int64_t>(DeviceValue<cl_ulong>(d, CL_DEVICE_GLOBAL_MEM_CACHE_SIZE));
        break;
      case tvm::runtime::kTotalGlobalMemory:
        *rv = static_cast<int64_t>(DeviceValue<cl_ulong>(d, CL_DEVICE_GLOBAL_MEM_SIZE));
        break;
      case tvm::runtime::kImagePitchAlignment:
        *rv = static_cast<int64_t>(DeviceValue<cl_uint>(d, CL_DEVICE_IMAGE_PITCH_ALIGNMENT));
        break;
      default:
        break;  // kMaxRegistersPerBlock, kGcnArch, kAvailableGlobalMemory: not known in OpenCL
    }
  }

  void* AllocDataSpace(DLDevice dev, size_t nbytes, size_t alignment,
                       DLDataType type_hint) final {
    const DeviceEntry& e = Workspace::Global()->Device(dev.device_id);
    cl_int err = CL_SUCCESS;
    // A zero-sized cl_mem is invalid; hand out a 1-byte buffer for empty tensors.
    cl_mem mem = API().CreateBuffer(e.context, CL_MEM_READ_WRITE, std::max<size_t>(nbytes, 1),
                                    nullptr, &err);
    if (err != CL_SUCCESS) {
      TVM_FFI_THROW(RuntimeError) << "clCreateBuffer(" << nbytes << " bytes) failed: "
                                  << ErrorString(err);
    }
    return mem;
  }

  void FreeDataSpace(DLDevice dev, void* ptr) final {
    if (ptr == nullptr) return;
    // No clFinish needed: OpenCL defers the deletion until queued commands using it are done.
    EDGECOMPILE_CL_CALL(API().ReleaseMemObject(static_cast<cl_mem>(ptr)));
  }

  void StreamSync(DLDevice dev, TVMStreamHandle stream) final {
    cl_command_queue q = stream != nullptr ? static_cast<cl_command_queue>(stream)
                                           : Workspace::Global()->Queue(dev.device_id);
    EDGECOMPILE_CL_CALL(API().Finish(q));
  }

  TVMStreamHandle CreateStream(DLDevice dev) final {
    const DeviceEntry& e = Workspace::Global()->Device(dev.device_id);
    cl_int err = CL_SUCCESS;
    cl_command_queue q = API().CreateCommandQueue(e.context, e.id, 0, &err);
    EDGECOMPILE_CL_CALL(err);
    return q;
  }

  void FreeStream(DLDevice dev, TVMStreamHandle stream) final {
    if (stream == nullptr) return;
    API().Finish(static_cast<cl_command_queue>(stream));
    EDGECOMPILE_CL_CALL(API().ReleaseCommandQueue(static_cast<cl_command_queue>(stream)));
  }

  void SyncStreamFromTo(DLDevice dev, TVMStreamHandle event_src,
                        TVMStreamHandle event_dst) final {
    // Everything queued on src completes before anything later on dst starts.
    cl_command_queue src = event_src != nullptr ? static_cast<cl_command_queue>(event_src)
                                                : Workspace::Global()->Queue(dev.device_id);
    EDGECOMPILE_CL_CALL(API().Finish(src));
  }

 protected:
  void CopyDataFromTo(const void* from, size_t from_offset, void* to, size_t to_offset,
                      size_t size, DLDevice dev_from, DLDevice dev_to, DLDataType type_hint,
                      TVMStreamHandle stream) final {
    if (size == 0) return;
    const CLApi& cl = API();
    Workspace* w = Workspace::Global();
    auto queue_of = [&](DLDevice d) {
      return stream != nullptr ? static_cast<cl_command_queue>(stream) : w->Queue(d.device_id);
    };
    bool src_cl = dev_from.device_type == kDLOpenCL;
    bool dst_cl = dev_to.device_type == kDLOpenCL;
    if (src_cl && dst_cl) {
      const DeviceEntry& a = w->Device(dev_from.device_id);
      const DeviceEntry& b = w->Device(dev_to.device_id);
      if (a.context == b.context) {
        EDGECOMPILE_CL_CALL(cl.EnqueueCopyBuffer(
            queue_of(dev_from), static_cast<cl_mem>(const_cast<void*>(from)),
            static_cast<cl_mem>(to), from_offset, to_offset, size, 0, nullptr, nullptr));
        // The copy ran on the source's queue; the destination's queue must not overtake it.
        if (dev_from.device_id != dev_to.device_id) {
          EDGECOMPILE_CL_CALL(cl.Finish(queue_of(dev_from)));
        }
      } else {  // different platforms: stage through the host
        std::vector<char> host(size);
        EDGECOMPILE_CL_CALL(cl.EnqueueReadBuffer(
            w->Queue(dev_from.device_id), static_cast<cl_mem>(const_cast<void*>(from)), CL_TRUE,
            from_offset, size, host.data(), 0, nullptr, nullptr));
        EDGECOMPILE_CL_CALL(cl.EnqueueWriteBuffer(w->Queue(dev_to.device_id),
                                                  static_cast<cl_mem>(to), CL_TRUE, to_offset,
                                                  size, host.data(), 0, nullptr, nullptr));
      }
    } else if (src_cl && dev_to.device_type == kDLCPU) {
      EDGECOMPILE_CL_CALL(cl.EnqueueReadBuffer(
          queue_of(dev_from), static_cast<cl_mem>(const_cast<void*>(from)), CL_TRUE, from_offset,
          size, static_cast<char*>(to) + to_offset, 0, nullptr, nullptr));
    } else if (dev_from.device_type == kDLCPU && dst_cl) {
      EDGECOMPILE_CL_CALL(cl.EnqueueWriteBuffer(
          queue_of(dev_to), static_cast<cl_mem>(to), CL_TRUE, to_offset, size,
          static_cast<const char*>(from) + from_offset, 0, nullptr, nullptr));
    } else {
      TVM_FFI_THROW(RuntimeError) << "OpenCL: unsupported copy from device type "
                                  << dev_from.device_type << " to " << dev_to.device_type;
    }
  }
};

TVM_FFI_STATIC_INIT_BLOCK() {
  // Another OpenCL runtime (a TVM build with USE_OPENCL, or this plug-in from a second path)
  // already registered: keep it, since registering a name twice would abort the dlopen.
  if (tvm::ffi::Function::GetGlobal("device_api.opencl").has_value()) return;
  namespace refl = tvm::ffi::reflection;
  refl::GlobalDef()
      .def("device_api.opencl",
           []() -> void* {
             static OpenCLDeviceAPI* inst = new OpenCLDeviceAPI();
             return static_cast<tvm::runtime::DeviceAPI*>(inst);
           })
      // Diagnostics for users: which library was opened and what was found.
      .def("edgecompile.opencl.describe", []() -> tvm::ffi::String {
        Workspace* w = Workspace::Global();
        std::ostringstream os;
        os << "library: " << API().origin << "\n";
        size_t n = w->NumDevices();
        for (size_t i = 0; i < n; ++i) {
          os << "device " << i << ": " << w->Device(static_cast<int>(i)).name << " ("
             << w->Device(static_cast<int>(i)).version << ")\n";
        }
        if (n == 0) os << "no device: " << w->init_error() << "\n";
        return tvm::ffi::String(os.str());
      });
}

}  // namespace ocl
}  // namespace edgecompile
