/*
 * Shared state of the OpenCL plug-in: the device list, one context per platform, and one
 * default in-order command queue per device.
 */
#ifndef EDGECOMPILE_OPENCL_RUNTIME_OPENCL_COMMON_H_
#define EDGECOMPILE_OPENCL_RUNTIME_OPENCL_COMMON_H_

#include <tvm/ffi/error.h>

#include <mutex>
#include <string>
#include <vector>

#include "cl_loader.h"

#define EDGECOMPILE_CL_CALL(expr)                                                           \
  do {                                                                                      \
    ::edgecompile::ocl::cl_int cl_err_ = (expr);                                            \
    if (cl_err_ != ::edgecompile::ocl::CL_SUCCESS) {                                        \
      TVM_FFI_THROW(RuntimeError) << "OpenCL error " << cl_err_ << " ("                     \
                                  << ::edgecompile::ocl::ErrorString(cl_err_) << ") in " #expr; \
    }                                                                                       \
  } while (0)

namespace edgecompile {
namespace ocl {

struct DeviceEntry {
  cl_platform_id platform{nullptr};
  cl_device_id id{nullptr};
  cl_context context{nullptr};
  cl_command_queue queue{nullptr};
  std::string name;
  std::string version;  // CL_DEVICE_VERSION, e.g. "OpenCL 1.2 pocl"
};

class Workspace {
 public:
  /*! \brief The process-wide workspace; devices are discovered on first use. */
  static Workspace* Global();
  /*! \brief Discover platforms/devices once; never throws (errors go to init_error). */
  void Init();
  size_t NumDevices() {
    Init();
    return devices_.size();
  }
  /*! \brief Device entry for a TVM device id; throws when out of range. */
  const DeviceEntry& Device(int device_id);
  /*!
   * \brief The queue work for a device goes to: the stream set through TVM's stream API
   *        (TVMFFIEnvSetStream) when there is one, else the device's default queue.
   */
  cl_command_queue Queue(int device_id);
  const std::string& init_error() const { return init_error_; }

 private:
  std::once_flag once_;
  std::vector<DeviceEntry> devices_;
  std::string init_error_;
};

/*! \brief Device id selected by DeviceAPI::SetDevice on this thread. */
int& CurrentDeviceId();

}  // namespace ocl
}  // namespace edgecompile

#endif  // EDGECOMPILE_OPENCL_RUNTIME_OPENCL_COMMON_H_
